"""In-silico trials (private, re-exported by [`twinjax.cohort`][], whose docs describe the
computation, devices and hosts): [`run_trial`][], the compiled chain per scenario structure,
and the chunking and sharding of the unit axis."""

from __future__ import annotations

import datetime
import hashlib
import math
import os
import re
import time
import warnings
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Literal

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from ._cohort_draws import VirtualCohort
from ._cohort_result import TrialResult
from ._errors import InputError, SolverError
from .dosimetry import reference_mass_kg, sphere_s_value
from .forecast import SOFT_TISSUE_KG_PER_L, Region, Scenario, _cross_s_values
from .models.library import Template
from .radiobiology import Tissue, bed_from_model, ntcp_lkb, tcp


# ------------------------------------------------------------------------------------ devices
def patient_mesh(devices: Sequence[jax.Device] | None = None) -> Mesh:
    """The 1-D mesh [`run_trial`][] shards over: ``jax.sharding.Mesh(devices, ("patients",))``
    with ``Auto`` axes (default all of ``jax.devices()``, every host's after
    ``jax.distributed.initialize()``). Not ``jax.make_mesh`` with ``Explicit`` axes: under those
    ``diffeqsolve``'s implicit solvers fail on JAX 0.10 (module docs)."""
    devs = list(jax.devices() if devices is None else devices)
    if not devs:
        raise InputError("devices is empty; allowed: one or more jax devices")
    return Mesh(np.array(devs), ("patients",))


def _resolve_mesh(mesh) -> Mesh | None:
    if mesh is None:
        return None
    if isinstance(mesh, str) and mesh == "auto":
        return patient_mesh() if len(jax.devices()) > 1 else None
    if not isinstance(mesh, Mesh):
        raise InputError(f"mesh = {mesh!r}; allowed: None, 'auto' or a jax.sharding.Mesh")
    if any(t != jax.sharding.AxisType.Auto for t in mesh.axis_types):
        # Rebuilt with Auto axes (same devices, same names): see module docs.
        mesh = Mesh(mesh.devices, mesh.axis_names)
    return mesh


def _warn_cpu_pool(mesh: Mesh | None) -> None:
    """Forced host devices share XLA:CPU's intra-op pool (module docs): warn when they
    outnumber its threads, before the run can hang."""
    local = (
        []
        if mesh is None
        else [d for d in mesh.devices.flat if d.process_index == jax.process_index()]
    )
    if len(local) < 2 or local[0].platform != "cpu":
        return
    env = os.environ.get("NPROC") or os.environ.get("PORTAGE_NPROC")
    pool = int(env) if env and env.isdigit() else len(os.sched_getaffinity(0))
    if pool < 2 * len(local):
        warnings.warn(
            f"run_trial: {len(local)} CPU devices share XLA's intra-op pool of {pool} threads; "
            "jaxlib's batched LAPACK kernels (the stiff solver's LU factorisations) block pool "
            "threads, and with more devices than free threads the run deadlocks. Set NPROC="
            f"{2 * len(local)} in the environment before JAX starts, or use fewer devices.",
            RuntimeWarning,
            stacklevel=3,
        )


def _place(x: np.ndarray, sharding):
    """A host array onto the devices: split along axis 0 over the mesh, each process supplying
    its own devices' shards (`x` is the same in every process)."""
    if sharding is None:
        return jnp.asarray(x)
    return jax.make_array_from_callback(x.shape, sharding, lambda index: x[index])


def _to_host(x) -> np.ndarray:
    if getattr(x, "is_fully_addressable", True):
        return np.asarray(x)
    from jax.experimental import multihost_utils

    return np.asarray(multihost_utils.process_allgather(x, tiled=True))


# ------------------------------------------------------------------------------------ kernel
#: Compiled chains, reused across calls: (id(template), static structure) -> (template, jit fn).
_KERNELS: OrderedDict = OrderedDict()


def _kernel(tpl: Template, spec: tuple, cross: tuple, rtol, atol, max_steps):
    """The jitted chain for units x scenarios: ``f(params (C,), s_w (C, R), s_phys (C, R),
    vol_cm3 (C, R), schedules (K,)) -> {region: {quantity: (C, K)}}``. `spec`: per region
    ``(name, model groups, tissue, kind)``; `cross`: ``((target, source, S), ...)``."""
    key = (id(tpl), spec, cross, rtol, atol, max_steps)
    hit = _KERNELS.get(key)
    if hit is not None and hit[0] is tpl:
        _KERNELS.move_to_end(key)
        return hit[1]
    model, names = tpl.model, [r[0] for r in spec]
    groups = {r: g for r, g, _, _ in spec}
    tissues = {r: t for r, _, t, _ in spec}
    cross_s: dict = {}
    for target, source, s in cross:
        cross_s.setdefault(target, {})[source] = s

    def unit(p, s_w, s_phys, vol, schedule):
        out = bed_from_model(
            model, tpl.derive(p), schedule, dict(zip(names, s_w, strict=True)), tissues,
            groups=groups, cross_s_values=cross_s or None, rtol=rtol, atol=atol,
            max_steps=max_steps,
        )  # fmt: skip
        res = {}
        for i, (r, _, t, kind) in enumerate(spec):
            o = out[r]
            # Photon cross-dose carries no RBE: physical = own TIA x S_phys + the cross part.
            q = {**o, "weighted_dose_Gy": o["dose_Gy"],
                 "dose_Gy": o["tia_MBqh"] * s_phys[i] + (o["dose_Gy"] - o["tia_MBqh"] * s_w[i])}  # fmt: skip
            if kind == "organ" and isinstance(t, Tissue) and t.lkb is not None:
                q["ntcp"] = ntcp_lkb(o["eqd2_Gy"], lkb=t)
            if kind == "tumour" and isinstance(t, Tissue) and t.alpha_per_Gy is not None:
                q["surviving_fraction"] = jnp.exp(-t.alpha_per_Gy * o["bed_Gy"])
                if t.clonogen_density_per_cm3 is not None:
                    q["tcp"] = tcp(o["bed_Gy"], vol[i], tissue=t)
            res[r] = q
        return res

    over_scenarios = jax.vmap(unit, in_axes=(None, None, None, None, 0))
    fn = jax.jit(jax.vmap(over_scenarios, in_axes=(0, 0, 0, 0, None)))
    _KERNELS[key] = (tpl, fn)
    while len(_KERNELS) > 16:
        _KERNELS.popitem(last=False)
    return fn


# ------------------------------------------------------------------------------------ trials
def run_trial(
    cohort: VirtualCohort,
    scenarios: Sequence[Scenario],
    regions: Mapping[str, Region],
    *,
    chunk_size: int | None = None,
    mesh: Mesh | Literal["auto"] | None = None,
    rbe_alpha: float = 5.0,
    sex: Literal["male", "female"] = "male",
    rtol: float = 1e-6,
    atol: float = 1e-9,
    max_steps: int = 16384,
) -> TrialResult:
    """Every virtual patient (and posterior draw) of `cohort` under every scenario (module docs).

    **Arguments:**
    - `cohort`: a [`VirtualCohort`][].
    - `scenarios`: [`twinjax.forecast.Scenario`][]s with distinct names; a scenario's
      `template` (e.g. an 225Ac variant) must have the cohort template's parameters.
    - `regions`: imaging region -> [`twinjax.forecast.Region`][] (tissue, kind, `mass_kg`,
      `centroid_mm` for photon cross-dose). A region's mass is `Region.mass_kg`, else each
      patient's covariate ``ct_volume_L_<region>`` at 1.05 kg/L, else the ICRP 89 reference
      mass (`sex`). Voxel and tumour-growth forecasts are per patient: use `forecast`.
    - `chunk_size`: units (patient x draw) per compiled call, rounded up to a multiple of the
      mesh's device count; bounds device memory (one chunk computes ``chunk_size x K``
      chains). A batched adaptive solve steps every unit until its slowest one is done, so
      large chunks pay for stragglers; default 32 per device on CPU (measured best between 16
      and 32 on `psma617_reduced`), 512 per device on GPU/TPU, where batches are cheap.
    - `mesh`: None (one device), ``"auto"`` ([`patient_mesh`][] when JAX has several devices)
      or a ``jax.sharding.Mesh`` (the unit axis is split over all of its axes).
    - `rbe_alpha`: RBE of alpha particles and recoils for BED, EQD2, NTCP and TCP.
    - `rtol`, `atol`, `max_steps`: of the ODE solves.

    **Returns:** a [`TrialResult`][].
    """
    t_start = time.perf_counter()
    if not isinstance(cohort, VirtualCohort):
        raise InputError(f"cohort is a {type(cohort).__name__}; allowed: a VirtualCohort")
    scenarios = list(scenarios)
    if not scenarios or not all(isinstance(s, Scenario) for s in scenarios):
        raise InputError(f"scenarios = {scenarios!r}; allowed: one or more Scenario")
    names = [s.name for s in scenarios]
    if len(set(names)) != len(names):
        raise InputError(f"scenario names {names} repeat; allowed: distinct names")
    if not isinstance(regions, Mapping) or not regions:
        raise InputError("regions is empty; allowed: region name -> Region")
    if chunk_size is not None and (
        isinstance(chunk_size, bool)
        or not isinstance(chunk_size, int | np.integer)
        or chunk_size < 1
    ):
        raise InputError(f"chunk_size = {chunk_size!r}; allowed: an integer >= 1 (units)")
    for field, v in (("rbe_alpha", rbe_alpha), ("rtol", rtol), ("atol", atol)):
        if not (isinstance(v, int | float) and math.isfinite(v) and v > 0):
            raise InputError(f"{field} = {v!r}; allowed: a finite number > 0")
    mesh = _resolve_mesh(mesh)
    _warn_cpu_pool(mesh)
    n, s_draws = cohort.n_patients, cohort.n_draws
    spec, masses = [], {}
    for r, reg in regions.items():
        if not isinstance(reg, Region):
            raise InputError(f"regions[{r!r}] is a {type(reg).__name__}; allowed: a Region")
        if reg.voxel_mm is not None or reg.growth is not None:
            raise InputError(
                f"regions[{r!r}] sets voxel_mm or growth; allowed in run_trial: neither (voxel "
                "and tumour-response forecasts are per patient: twinjax.forecast.forecast)"
            )
        for sc in scenarios:
            (sc.template or cohort.template).roi(r)  # unknown regions fail here, naming them
        masses[r] = _mass(r, reg, cohort, sex)
        t = reg.tissue
        spec.append((r, cohort.template.roi(r), t if isinstance(t, Tissue) else tuple(t), reg.kind))
    units = n * (s_draws or 1)
    flat = {k: v.reshape(units) for k, v in cohort.params.items()}
    n_dev = 1 if mesh is None else mesh.devices.size
    if chunk_size is None:
        platform = (jax.devices() if mesh is None else list(mesh.devices.flat))[0].platform
        chunk_size = n_dev * (32 if platform == "cpu" else 512)
    chunk = min(int(chunk_size), units)
    chunk = -(-chunk // n_dev) * n_dev
    n_chunks = -(-units // chunk)
    sharding = None if mesh is None else NamedSharding(mesh, P(tuple(mesh.axis_names)))
    replicated = None if mesh is None else NamedSharding(mesh, P())
    placed = {
        r: np.asarray(reg.centroid_mm, float) for r, reg in regions.items() if reg.centroid_mm
    }
    vol_cm3 = np.repeat(np.stack([masses[r] * 1e3 for r in regions], 1), s_draws or 1, 0)

    # Scenarios of one structure share a compiled function (schedules stacked along K).
    grouped: dict = {}
    for k, sc in enumerate(scenarios):
        tpl = sc.template or cohort.template
        leaves, tree = jax.tree.flatten(sc.schedule)
        grouped.setdefault((id(tpl), tree, tuple(x.shape for x in leaves)), []).append(k)
    values: dict = {r: {} for r in regions}
    for members in grouped.values():
        tpl = scenarios[members[0]].template or cohort.template
        _check_template(tpl, flat, cohort, scenarios[members[0]].name)
        nuc = scenarios[members[0]].schedule.nuclide
        s_w = np.stack([np.asarray(sphere_s_value(nuc, masses[r], rbe_alpha=rbe_alpha))
                        for r in regions], 1)  # fmt: skip
        s_phys = np.stack([np.asarray(sphere_s_value(nuc, masses[r])) for r in regions], 1)
        s_w, s_phys = (np.repeat(x, s_draws or 1, 0) for x in (s_w, s_phys))
        cross = tuple((t, src, float(v)) for t, d in _cross_s_values(nuc, placed).items()
                      for src, v in d.items())  # fmt: skip
        tspec = tuple((r, tpl.roi(r), t, kind) for r, _, t, kind in spec)
        fn = _kernel(tpl, tspec, cross, float(rtol), float(atol), int(max_steps))
        scheds = jax.tree.map(lambda *x: jnp.stack(x), *[scenarios[k].schedule for k in members])
        if replicated is not None:
            scheds = jax.tree.map(lambda x: jax.device_put(x, replicated), scheds)
        out = _run_chunks(fn, flat, s_w, s_phys, vol_cm3, scheds, chunk, n_chunks, units,
                          sharding, [names[k] for k in members], max_steps)  # fmt: skip
        for r in regions:
            for q, v in out[r].items():
                full = values[r].setdefault(q, np.full((units, len(scenarios)), np.nan))
                full[:, members] = v
    for r in regions:  # (units, K) -> (N, K) or (N, K, S)
        for q, v in values[r].items():
            values[r][q] = v if s_draws is None else v.reshape(n, s_draws, -1).transpose(0, 2, 1)
    prov = {
        "cohort": cohort.provenance,
        "template_sha256": _sha256(cohort.template),
        "scenarios": {
            sc.name: {
                "nuclide": sc.schedule.nuclide,
                "time_h": np.asarray(sc.schedule.time_h).tolist(),
                "activity_MBq": np.asarray(sc.schedule.activity_MBq).tolist(),
                "template": (sc.template or cohort.template).name,
            }
            for sc in scenarios
        },
        "compiled_groups": len(grouped),
        "chunk_size": chunk,
        "n_chunks": n_chunks,
        "devices": n_dev,
        "processes": jax.process_count(),
        "platform": jax.devices()[0].platform,
        "rbe_alpha": float(rbe_alpha),
        "rtol": float(rtol),
        "atol": float(atol),
        "wall_time_s": round(time.perf_counter() - t_start, 3),
    }
    return TrialResult(
        scenarios=tuple(names),
        values=values,
        masses_kg=masses,
        nuclides={sc.name: sc.schedule.nuclide for sc in scenarios},
        limits={
            r: tuple(reg.tissue.bed_limits_Gy) if isinstance(reg.tissue, Tissue) else ()
            for r, reg in regions.items()
        },
        provenance=_base_provenance() | prov,
    )


def _mass(r: str, reg: Region, cohort: VirtualCohort, sex) -> np.ndarray:
    """Mass of region `r` per patient (kg), ``(n,)``: as `forecast` (see run_trial)."""
    n = cohort.n_patients
    if reg.mass_kg is not None:
        return np.full(n, float(reg.mass_kg))
    cov = cohort.covariates.get(f"ct_volume_L_{r}")
    if cov is not None:
        if not np.all(cov > 0):
            raise InputError(f"covariates['ct_volume_L_{r}'] has values <= 0; allowed: > 0 (L)")
        return cov * SOFT_TISSUE_KG_PER_L
    return np.full(n, reference_mass_kg(r, sex))


def _check_template(tpl: Template, flat: Mapping, cohort: VirtualCohort, scenario: str) -> None:
    """Every unit's parameters, derived ones included, valid for `tpl`'s model (before any
    solve)."""
    try:
        tpl.model.check_params(tpl.derive(flat))
    except (InputError, KeyError) as err:
        raise InputError(
            f"scenario {scenario!r}: template {tpl.name!r} does not fit the cohort's "
            f"parameters (template {cohort.template.name!r}): {err}"
        ) from None


def _run_chunks(fn, flat, s_w, s_phys, vol, scheds, chunk, n_chunks, units, sharding, names,
                max_steps):  # fmt: skip
    """All chunks through `fn`, two in flight; results ``{region: {quantity: (units, K)}}``."""
    idx = np.minimum(np.arange(n_chunks * chunk), units - 1)  # padding repeats the last unit
    out: dict = {}

    def launch(c):
        sl = idx[c * chunk : (c + 1) * chunk]
        args = ({k: _place(v[sl], sharding) for k, v in flat.items()},
                *(_place(x[sl], sharding) for x in (s_w, s_phys, vol)))  # fmt: skip
        return fn(*args, scheds)

    def collect(c, res):
        lo, hi = c * chunk, min((c + 1) * chunk, units)
        for r, qs in res.items():
            for q, v in qs.items():
                dst = out.setdefault(r, {}).setdefault(q, np.empty((units, v.shape[1])))
                dst[lo:hi] = _to_host(v)[: hi - lo]

    c = 0
    try:
        pending = (0, launch(0))
        for c in range(1, n_chunks):
            nxt = (c, launch(c))
            collect(*pending)
            pending = nxt
        collect(*pending)
    except (eqx.EquinoxRuntimeError, jax.errors.JaxRuntimeError) as err:
        # Under jax.jit Equinox's message arrives inside the runtime error's traceback text.
        text = str(err)
        why = re.search(r"EquinoxRuntimeError: ([^\n]+)", text)
        reason = why.group(1) if why else text.strip().splitlines()[0][:300]
        raise SolverError(
            f"scenarios {names}: an ODE solve failed for a unit in {max(c - 1, 0) * chunk}.."
            f"{min((c + 1) * chunk, units) - 1}: {reason} (max_steps={max_steps}); raise "
            "max_steps or check the cohort's parameters"
        ) from None
    return out


def _sha256(template: Template) -> str | None:
    if template.path is None or not Path(template.path).is_file():
        return None
    return hashlib.sha256(Path(template.path).read_bytes()).hexdigest()


def _base_provenance() -> dict:
    from . import __version__

    return {
        "twinjax_version": __version__,
        "jax_version": jax.__version__,
        "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    }
