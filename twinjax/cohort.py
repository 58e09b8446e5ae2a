"""Virtual cohorts and in-silico trials: N virtual patients x K treatment scenarios (x S draws of
a hierarchical posterior) through the whole chain PBPK -> TIA -> dose -> BED -> NTCP/TCP, in
one vectorised, chunked and shardable computation.

```python
tpl = twinjax.load_template("psma617_reduced")
cohort = virtual_cohort(tpl, 10_000, seed=0, covariates={"weight_kg": weights})
trial = run_trial(cohort, scenarios, {"kidneys": Region(tissue("kidney")), ...}, mesh="auto")
trial.summary()                                          # per scenario: mean, median, 90 % interval
trial.fraction([("kidneys", "bed_Gy", "<=", 40.0)])     # patients within the kidney BED limit
```

**Cohorts.** [`virtual_cohort`][] draws patients from a template (lognormal between-patient
variability around the covariate-adjusted typical values, ``log theta = log typical(cov) +
sigma z``) or from a hierarchical [`twinjax.inference.CohortPosterior`][]: population
hyper-parameters (``mu``, ``omega``, the correlation) from the posterior, then patients from
them, ``log theta = log typical(cov) + mu + omega L eta``, as `fit_cohort`'s model. With
``draws=S`` every patient keeps its ``eta`` under S posterior draws, so a trial carries the
uncertainty of the population itself (an interval over draws of, e.g., the fraction of
patients within a limit).

**Computation.** Each unit (patient, draw) runs [`twinjax.radiobiology.bed_from_model`][]
(repair integrals in the model's ODE, exact G) for every scenario, then LKB NTCP for organs and
TCP for tumours, as [`twinjax.forecast.forecast`][] does for one patient. Scenarios with the
same structure (template, nuclide, number of administrations, infusions) are one compiled
function: their schedules (times, activities, ligand amounts) are a traced argument with a
leading scenario axis, so K scenarios compile once. Units are processed in chunks of
`chunk_size`; the last chunk is padded (with copies of the last unit) so one compiled shape
serves every chunk. At most two chunks are in flight (asynchronous dispatch of the next while
the previous one is copied to the host), which bounds device memory.

**Devices and hosts.** ``mesh="auto"`` shards the unit axis of every chunk over a 1-D
``jax.sharding.Mesh`` of ``jax.devices()`` (axis ``"patients"``, see [`patient_mesh`][]): the
chunk's arrays carry a ``NamedSharding`` and ``jax.jit`` partitions the computation (GSPMD);
each device solves its own units and the only collective is the all-reduce of the batched ODE
loop's "any unit still running" flag. Not ``shard_map``/``pmap``: values traced inside them
carry manual-axis types that Lineax's structure checks reject, so the implicit Diffrax solvers
fail there (``Kvaerno5`` with ``check_vma`` on or off; see `twinjax.inference._chains`), while
the GSPMD path runs every solver. Meshes with ``Explicit`` axes (``jax.make_mesh(...,
axis_types=(AxisType.Explicit,))``) break ``diffeqsolve`` on JAX 0.10.2 in the same way, so a
mesh given with them is rebuilt with ``Auto`` axes over the same devices.

On several hosts, call ``jax.distributed.initialize()`` in every process, then the same code
with the same seed: ``jax.devices()`` spans the hosts, every process builds its own devices'
shards of a chunk from its (identical) copy of the cohort (``jax.make_array_from_callback``) and
receives the full result (``process_allgather``).

CPU devices forced with ``--xla_force_host_platform_device_count`` (for tests) share XLA's
intra-op thread pool, whose size is the number of cores. jaxlib's batched LAPACK kernels (the
LU factorisations of the stiff solver, for matrices past ~60 x 60) split their batch over that
pool and block a pool thread until the parts finish; with as many devices running as there are
threads, every thread blocks and the process deadlocks (JAX 0.10.2, seen on `psma617_reduced`
with 8 devices on 2 cores). Setting ``NPROC`` (read by XLA:CPU for the pool size) to at least
twice the device count before JAX starts avoids it; `run_trial` warns otherwise.

Units: dose, BED, EQD2 Gy; TIA MBq h; mass kg; volume cm^3; probabilities in [0, 1].
"""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import json
import math
import os
import re
import tempfile
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

from ._errors import InputError, SolverError
from .dosimetry import reference_mass_kg, sphere_s_value
from .forecast import SOFT_TISSUE_KG_PER_L, Region, Scenario, _band, _cross_s_values
from .inference.cohort import CohortPosterior
from .models._expr import expr
from .models.library import Template
from .radiobiology import Tissue, bed_from_model, ntcp_lkb, tcp

__all__ = ["TrialResult", "VirtualCohort", "patient_mesh", "run_trial", "virtual_cohort"]


# ------------------------------------------------------------------------------------ cohorts
@dataclasses.dataclass(frozen=True)
class VirtualCohort:
    """Virtual patients of `template`: `params` maps every (non-derived) template parameter to
    an array ``(n,)``, or ``(n, draws)`` for a cohort drawn under several posterior draws
    (canonical units); `covariates` name -> ``(n,)`` (e.g. ``weight_kg``,
    ``ct_volume_L_kidneys``, which sets the kidneys' mass in [`run_trial`][]); `draw_index`
    the posterior draws used (``(draws,)``, or ``(n,)`` with one random draw per patient);
    `provenance`: source, seed (or key data), sizes."""

    template: Template = dataclasses.field(repr=False)
    params: dict[str, np.ndarray] = dataclasses.field(repr=False)
    covariates: dict[str, np.ndarray] = dataclasses.field(default_factory=dict, repr=False)
    draw_index: np.ndarray | None = dataclasses.field(default=None, repr=False)
    provenance: dict = dataclasses.field(default_factory=dict)

    @property
    def n_patients(self) -> int:
        return int(next(iter(self.params.values())).shape[0])

    @property
    def n_draws(self) -> int | None:
        """S for a cohort with a draw axis, else None."""
        x = next(iter(self.params.values()))
        return int(x.shape[1]) if x.ndim == 2 else None

    @classmethod
    def from_params(cls, template: Template, params: Mapping[str, object], *,
                    covariates: Mapping[str, object] | None = None) -> VirtualCohort:  # fmt: skip
        """A cohort of given patients (e.g. fitted ones): `params` name -> ``(n,)`` values in
        canonical units; parameters not given take the (covariate-adjusted) typical values."""
        sizes = {np.shape(v)[0] for v in params.values() if np.ndim(v) == 1}
        if len(sizes) != 1 or any(np.ndim(v) not in (0, 1) for v in params.values()):
            shapes = {k: np.shape(v) for k, v in params.items()}
            raise InputError(
                f"params shapes {shapes}; allowed: scalars or 1-D arrays of one common length n "
                "(patients)"
            )
        n = sizes.pop()
        cov = _check_covariates(covariates, n)
        typical = _typical(template, cov, n)
        for k, v in params.items():
            if k not in typical:
                raise InputError(
                    f"params: {k!r} is not a (non-derived) parameter of template "
                    f"{template.name!r}; allowed: {sorted(typical)}"
                )
            x = np.broadcast_to(np.asarray(v, dtype=float), (n,))
            if not np.all(np.isfinite(x) & (x > 0)):
                raise InputError(f"params[{k!r}] = {x[:5].tolist()}...; allowed: finite, > 0")
            typical[k] = x.copy()
        prov = {"source": "given", "template": template.name, "n_patients": n}
        return cls(template, typical, cov, None, prov)


def virtual_cohort(
    template: Template,
    n: int,
    *,
    seed: int | jax.Array = 0,
    covariates: Mapping[str, object] | None = None,
    posterior: CohortPosterior | None = None,
    draws: int | None = None,
) -> VirtualCohort:
    """`n` virtual patients of `template` (module docs).

    **Arguments:**
    - `template`: a [`Template`][] with a compartmental/PBPK model.
    - `n`: number of patients (>= 1).
    - `seed`: an integer seed or a `jax.random` key; recorded in the provenance.
    - `covariates`: name -> one value or ``(n,)`` values (canonical units: ``weight_kg``,
      ``egfr_L_per_h``, ``ct_volume_L_<region>``, ...); they set each patient's typical values
      through the template's ``covariates:`` formulas.
    - `posterior`: a [`twinjax.inference.CohortPosterior`][] of `template`: patients are drawn
      from its population (module docs) instead of the template's CVs; parameters it did not
      learn keep their typical values, as in its model.
    - `draws`: with `posterior`, S evenly thinned posterior draws per patient (params ``(n,
      S)``); None: one random draw per patient (params ``(n,)``, the posterior predictive
      population).

    **Returns:** a [`VirtualCohort`][].
    """
    if isinstance(n, bool) or not isinstance(n, int | np.integer) or n < 1:
        raise InputError(f"n = {n!r}; allowed: an integer >= 1 (patients)")
    n = int(n)
    key, seed_record = _key(seed)
    if template.spec.model is None:
        raise InputError(f"template {template.name!r} has no compartmental model to simulate")
    cov = _check_covariates(covariates, n)
    typical = _typical(template, cov, n)
    k_eta, k_draw = jax.random.split(key)
    prov: dict = {"template": template.name, "seed": seed_record, "n_patients": n}
    if posterior is None:
        if draws is not None:
            raise InputError(f"draws = {draws!r} needs a posterior; allowed: None without one")
        names = sorted(template.cv)
        sigma = np.array([math.sqrt(math.log1p(template.cv[k] ** 2)) for k in names])
        z = np.asarray(jax.random.normal(k_eta, (n, len(names)), dtype=float))
        params = dict(typical)
        for j, k in enumerate(names):
            params[k] = typical[k] * np.exp(sigma[j] * z[:, j])
        return VirtualCohort(template, params, cov, None, {"source": "template", **prov})
    if not isinstance(posterior, CohortPosterior):
        raise InputError(
            f"posterior is a {type(posterior).__name__}; allowed: a CohortPosterior (fit_cohort)"
        )
    if posterior.template.name != template.name:
        raise InputError(
            f"posterior was fitted with template {posterior.template.name!r}, not "
            f"{template.name!r}; allowed: the posterior's own template"
        )
    mu, omega = posterior.draws("mu"), posterior.draws("omega")  # (T, D)
    total = mu.shape[0]
    if draws is None:
        idx = np.asarray(jax.random.randint(k_draw, (n,), 0, total))
    elif (
        isinstance(draws, bool)
        or not isinstance(draws, int | np.integer)
        or not (1 <= draws <= total)
    ):
        raise InputError(f"draws = {draws!r}; allowed: an integer in 1..{total} or None")
    else:
        idx = np.linspace(0, total - 1, int(draws)).round().astype(int)
    d = len(posterior.names)
    eta = np.asarray(jax.random.normal(k_eta, (n, d), dtype=float))
    if "corr_chol" in posterior.samples:  # correlated: eta_i = L z_i, L of the draw used
        chol = posterior.draws("corr_chol")[idx]
        eta = np.einsum("sij,nj->nsi" if draws else "nij,nj->ni", chol, eta)
    elif draws:
        eta = eta[:, None, :]
    shift = mu[idx] + omega[idx] * eta  # (n, D) or (n, S, D)
    params = {k: (v if draws is None else np.repeat(v[:, None], len(idx), 1))
              for k, v in typical.items()}  # fmt: skip
    for j, k in enumerate(posterior.names):
        t = typical[k] if draws is None else typical[k][:, None]
        params[k] = t * np.exp(shift[..., j])
    post = {
        "data_sha256": posterior.provenance.get("data_sha256"),
        "n_patients": posterior.provenance.get("n_patients"),
        "names": list(posterior.names),
    }
    prov.update(source="posterior", n_draws=None if draws is None else int(draws), posterior=post)
    return VirtualCohort(template, params, cov, idx, prov)


def _key(seed):
    """A PRNG key and what the provenance records of it."""
    if isinstance(seed, bool):
        raise InputError(f"seed = {seed!r}; allowed: an integer >= 0 or a jax.random key")
    if isinstance(seed, int | np.integer):
        if seed < 0:
            raise InputError(f"seed = {seed!r}; allowed: an integer >= 0 or a jax.random key")
        return jax.random.key(int(seed)), int(seed)
    try:
        typed = jnp.issubdtype(seed.dtype, jax.dtypes.prng_key)
        key = seed if typed else jax.random.wrap_key_data(seed)
        if key.shape != ():
            raise ValueError
    except Exception:
        raise InputError(
            f"seed = {seed!r}; allowed: an integer >= 0 or a single jax.random key"
        ) from None
    return key, np.asarray(jax.random.key_data(key)).tolist()


def _check_covariates(covariates, n: int) -> dict[str, np.ndarray]:
    out = {}
    for name, v in (covariates or {}).items():
        x = np.asarray(v, dtype=float)
        if x.ndim > 1 or (x.ndim == 1 and x.shape[0] != n) or not np.all(np.isfinite(x)):
            raise InputError(
                f"covariates[{name!r}] has shape {x.shape}; allowed: one finite value or {n} "
                "finite values (one per patient, canonical units)"
            )
        out[str(name)] = np.broadcast_to(x, (n,)).copy()
    return out


def _typical(template: Template, cov: Mapping[str, np.ndarray], n: int) -> dict[str, np.ndarray]:
    """`Template.personalise` for n patients at once: ``(n,)`` typical values (medians) of every
    non-derived parameter, covariate formulas applied where the covariates are given."""
    spec = template.spec
    out = {k: np.full(n, p.median(f"{template.name}.parameters.{k}"))
           for k, p in spec.parameters.items()}  # fmt: skip
    for name, formula in spec.covariates.items():
        e = expr(formula)
        if all(c in cov for c in e.names):
            v = np.broadcast_to(np.asarray(e({c: jnp.asarray(cov[c]) for c in e.names})), (n,))
            if not np.all(np.isfinite(v) & (v > 0)):
                raise InputError(
                    f"covariates {list(e.names)} give {name} = {formula} <= 0 or non-finite for "
                    f"patients {np.flatnonzero(~(np.isfinite(v) & (v > 0)))[:5].tolist()}; "
                    "allowed: covariates giving positive parameters"
                )
            out[name] = np.array(v, dtype=float)
    return out


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


# ------------------------------------------------------------------------------------ results
_OPS = {"<=": np.less_equal, "<": np.less, ">=": np.greater_equal, ">": np.greater}


@dataclasses.dataclass(frozen=True)
class TrialResult:
    """Outcomes of an in-silico trial: ``values[region][quantity]`` arrays ``(N, K)``, or ``(N,
    K, S)`` for a cohort with posterior draws, scenarios in the order of `scenarios`.
    Quantities: ``tia_MBqh``, ``dose_Gy`` (physical), ``weighted_dose_Gy`` (RBE-weighted),
    ``g``, ``bed_Gy``, ``eqd2_Gy``; ``ntcp`` (organs whose tissue has LKB parameters);
    ``surviving_fraction`` and ``tcp`` (tumours with alpha and a clonogen density). `masses_kg`
    region -> ``(N,)``; `limits` region -> the tissue library's BED limits ``((Gy,
    condition), ...)``."""

    scenarios: tuple[str, ...]
    values: dict[str, dict[str, np.ndarray]] = dataclasses.field(repr=False)
    masses_kg: dict[str, np.ndarray] = dataclasses.field(repr=False)
    nuclides: dict[str, str]
    limits: dict[str, tuple] = dataclasses.field(default_factory=dict)
    provenance: dict = dataclasses.field(default_factory=dict, repr=False)

    @property
    def n_patients(self) -> int:
        return int(next(iter(self.masses_kg.values())).shape[0])

    @property
    def n_draws(self) -> int | None:
        v = next(iter(next(iter(self.values.values())).values()))
        return int(v.shape[2]) if v.ndim == 3 else None

    def get(self, scenario: str, region: str, quantity: str) -> np.ndarray:
        """Values of one scenario: ``(N,)`` or ``(N, S)``."""
        if scenario not in self.scenarios:
            raise InputError(f"scenario = {scenario!r}; allowed: {list(self.scenarios)}")
        if region not in self.values or quantity not in self.values[region]:
            known = {r: sorted(q) for r, q in self.values.items()}
            raise InputError(f"region {region!r}, quantity {quantity!r}; allowed: {known}")
        return self.values[region][quantity][:, self.scenarios.index(scenario)]

    def fraction(self, constraints, level: float = 0.9) -> dict[str, dict[str, float]]:
        """Fraction of patients meeting every constraint, per scenario. `constraints`: one or
        several ``(region, quantity, op, threshold)`` with op ``"<="``, ``"<"``, ``">="`` or
        ``">"``, e.g. ``("kidneys", "bed_Gy", "<=", 40.0)``. Returns ``{scenario: {"fraction"}}``
        and, for a cohort with posterior draws, the ``"median"``, ``"lower"`` and ``"upper"``
        (central `level` interval) of the fraction over the draws."""
        if isinstance(constraints, tuple) and constraints and isinstance(constraints[0], str):
            constraints = [constraints]
        constraints = list(constraints)
        for c in constraints:
            if not (isinstance(c, tuple | list) and len(c) == 4 and c[2] in _OPS
                    and isinstance(c[3], int | float) and math.isfinite(c[3])):  # fmt: skip
                raise InputError(
                    f"constraint {c!r}; allowed: (region, quantity, op, threshold) with op in "
                    f"{list(_OPS)} and a finite threshold"
                )
        if not constraints:
            raise InputError("constraints is empty; allowed: one or more (region, quantity, op, x)")
        lo, hi = _band(level)
        out = {}
        for s in self.scenarios:
            ok = np.ones_like(self.get(s, constraints[0][0], constraints[0][1]), bool)
            for r, q, op, x in constraints:
                ok &= _OPS[op](self.get(s, r, q), x)
            row = {"fraction": float(ok.mean())}
            if ok.ndim == 2:  # per draw: the fraction over patients, then its interval
                a, m, b = np.quantile(ok.mean(axis=0), [lo, 0.5, hi])
                row.update(lower=float(a), median=float(m), upper=float(b))
            out[s] = row
        return out

    def summary(self, level: float = 0.9) -> dict:
        """Per scenario and region: every quantity's ``mean``, ``median`` and central `level`
        interval (``lower``, ``upper``) over patients (and draws); for regions whose tissue has
        BED limits, ``bed_limits``: the fraction of patients within each (see `fraction`)."""
        lo, hi = _band(level)
        out: dict = {}
        for s in self.scenarios:
            out[s] = {}
            for r, qs in self.values.items():
                row: dict = {}
                for q in qs:
                    v = self.get(s, r, q)
                    a, m, b = np.quantile(v, [lo, 0.5, hi])
                    row[q] = {"mean": float(v.mean()), "median": float(m), "lower": float(a),
                              "upper": float(b)}  # fmt: skip
                if self.limits.get(r):
                    row["bed_limits"] = [
                        {"limit_Gy": lim, "condition": cond,
                         **self.fraction((r, "bed_Gy", "<=", lim), level)[s]}
                        for lim, cond in self.limits[r]
                    ]  # fmt: skip
                out[s][r] = row
        return out

    def to_dict(self, level: float = 0.9, *, arrays: bool = False) -> dict:
        """JSON-ready: scenarios, sizes, nuclides, `summary`, provenance (and, with `arrays`,
        every value as nested lists)."""
        d = {
            "scenarios": list(self.scenarios),
            "regions": list(self.values),
            "n_patients": self.n_patients,
            "n_draws": self.n_draws,
            "nuclides": dict(self.nuclides),
            "summary": self.summary(level),
            "provenance": self.provenance,
        }
        if arrays:
            d["values"] = {
                r: {q: v.tolist() for q, v in qs.items()} for r, qs in self.values.items()
            }
            d["masses_kg"] = {r: v.tolist() for r, v in self.masses_kg.items()}
        return d

    def to_netcdf(self, path) -> None:
        """Write every value as netCDF (atomically: temp file + rename): one variable per
        quantity with dims ``(region, patient, scenario[, draw])`` (NaN where a quantity does
        not apply to a region), ``mass_kg`` ``(region, patient)``; provenance, nuclides and
        limits as JSON attributes. Read back with [`TrialResult.from_netcdf`][]."""
        import xarray as xr

        regions = list(self.values)
        dims = ("region", "patient", "scenario") + (("draw",) if self.n_draws else ())
        shape = next(iter(self.values[regions[0]].values())).shape
        data = {}
        for q in sorted({q for qs in self.values.values() for q in qs}):
            arr = np.stack([self.values[r].get(q, np.full(shape, np.nan)) for r in regions])
            data[q] = (dims, arr)
        data["mass_kg"] = (("region", "patient"), np.stack([self.masses_kg[r] for r in regions]))
        attrs = {k: json.dumps(v) for k, v in (("provenance", self.provenance),
                 ("nuclides", self.nuclides), ("limits", self.limits))}  # fmt: skip
        ds = xr.Dataset(data, coords={"region": regions, "scenario": list(self.scenarios)},
                        attrs=attrs)  # fmt: skip
        p = Path(path)
        p.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=p.parent, prefix=f".{p.name}.", suffix=".tmp")
        os.close(fd)
        try:
            ds.to_netcdf(tmp)
            os.chmod(tmp, 0o644)
            os.replace(tmp, p)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    @classmethod
    def from_netcdf(cls, path) -> TrialResult:
        """Read a file written by [`TrialResult.to_netcdf`][]."""
        import xarray as xr

        with xr.open_dataset(path) as ds:
            ds.load()
            regions = [str(r) for r in ds["region"].values]
            values: dict = {r: {} for r in regions}
            for q in ds.data_vars:
                if q == "mass_kg":
                    continue
                arr = np.asarray(ds[q].values)
                for i, r in enumerate(regions):
                    if not np.all(np.isnan(arr[i])):
                        values[r][str(q)] = arr[i]
            masses = {r: np.asarray(ds["mass_kg"].values[i]) for i, r in enumerate(regions)}
            limits = {r: tuple(tuple(x) for x in v)
                      for r, v in json.loads(ds.attrs["limits"]).items()}  # fmt: skip
            return cls(
                scenarios=tuple(str(s) for s in ds["scenario"].values),
                values=values,
                masses_kg=masses,
                nuclides=json.loads(ds.attrs["nuclides"]),
                limits=limits,
                provenance=json.loads(ds.attrs["provenance"]),
            )
