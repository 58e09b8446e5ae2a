"""BED straight from a compartmental/PBPK model: the repair integrals ride along with the model's
ODE, so G is exact for the model's own dose-rate curve, over any schedule (cycles with incomplete
repair between them included).

For every region r with self-dose S-value ``S_r`` (Gy/(MBq h)) the dose rate is ``R_r(t) = S_r
A_r(t) + sum_s S_rs A_s(t)``, with ``A_r`` the region's activity and ``S_rs`` optional cross-dose
S-values from other regions. Three states per region are appended to the model's
``[hot, cold, cumulated]`` state and integrated by the same solver, restarted at every
administration as `simulate` does: ``D' = R``, ``q' = R - mu q`` (dose whose damage is not yet
repaired) and ``J' = R q``, so that ``G D^2 = 2 J``. The solve runs `tail_half_lives` physical
half-lives past the last event; after that, the region's activity is closed analytically as the
model's linear system frozen at its final occupancy for D (as `simulate` closes the TIA), and as
one exponential of the same system's current clearance rate for J (its remaining contribution is
of order the square of the remaining activity).

`response_from_model` appends the tumour-response states of `_response` the same way, driven
by the lesion's dose rate: lesion volume and marker without sampling the dose-rate curve.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

from .._errors import InputError
from ..models._simulate import (
    _SOLVER_FAILURES,
    _adjoint,
    _check_inputs,
    _ode_pieces,
    _solver_error,
)
from ..models.compartmental import CompartmentalModel
from ..schedule import Schedule
from ..tandem import Tandem, as_labels
from ._lq import LN2, _check_concrete
from ._response import TumourResponse, _kinetics, _trajectory
from ._tissues import Tissue

__all__ = ["bed_from_model", "response_from_model"]


def bed_from_model(
    model: CompartmentalModel,
    params: Mapping[str, Array | float],
    schedule: Schedule | Tandem,
    s_values_Gy_per_MBqh: Mapping,
    tissues: Mapping[str, Tissue | tuple[float, float]],
    *,
    rbe=1.0,
    groups: Mapping[str, Sequence[str]] | None = None,
    cross_s_values: Mapping | None = None,
    rtol: float = 1e-8,
    atol: float = 1e-12,
    solver=None,
    adjoint="forward",
    max_steps: int = 16384,
    tail_half_lives: float = 10.0,
) -> dict[str, dict[str, Float[Array, ""]]]:
    """Absorbed dose, protraction factor and BED of regions of a model under a schedule.

    **Arguments:**
    - `model`, `params`: as [`twinjax.simulate`][].
    - `schedule`: a [`twinjax.Schedule`][], or a [`twinjax.Tandem`][] of several labels: then
      all labels ride in one ODE and the BED is that of the summed RBE-weighted dose rate, so
      the Lea-Catcheside cross term between the labels' dose-rate curves is included
      (`twinjax.tandem` docs).
    - `s_values_Gy_per_MBqh`: region (an organ/group of the model) -> self-dose S-value (e.g.
      ``sphere_s_value(nuclide, mass_kg)``); for a Tandem, nuclide -> that mapping, every
      label with the same regions.
    - `tissues`: region -> a [`Tissue`][] or ``(alpha_beta_Gy, repair_half_time_h)``.
    - `rbe`: applied to the physical dose (e.g. 5 for alpha emitters); for a Tandem a number
      for all labels or nuclide -> RBE.
    - `groups`: region -> model groups whose activities sum to it (e.g. a template's
      ``roi(region)``); by default each region is the model group of its name.
    - `cross_s_values`: ``{target: {source: S (Gy/(MBq h))}}`` between regions (e.g.
      `twinjax.dosimetry.photon_cross_s_value` of their distance): the target's dose rate
      becomes ``S_t A_t + sum_s S_ts A_s``, so the cross-dose's own time course enters G; for a
      Tandem, nuclide -> that mapping (labels without one have no cross-dose).
    - `rtol`, `atol`, `solver`, `adjoint`, `max_steps`: of the ODE solve (as `simulate`).
    - `tail_half_lives`: physical half-lives (of the longest-lived label) integrated past the
      last administration.

    **Returns:** region -> ``{"dose_Gy", "weighted_dose_Gy", "g", "bed_Gy", "eqd2_Gy",
    "tia_MBqh"}``: physical and RBE-weighted dose (both include the cross-dose), the protraction
    factor of the weighted dose rate, and the region's own TIA (for a Tandem, nuclide -> TIA).
    Differentiable in the parameters, activities and S-values (forward mode by default, as
    `simulate`).
    """
    tandem = isinstance(schedule, Tandem)
    labels = as_labels(schedule)
    for lab in labels:
        params = _check_inputs(model, params, lab)
    per_label_s = _per_label("s_values_Gy_per_MBqh", s_values_Gy_per_MBqh, labels, tandem)
    per_label_cross = _per_label("cross_s_values", cross_s_values, labels, tandem, optional=True)
    per_label_rbe = _per_label("rbe", rbe, labels, tandem, scalar=True)
    regions = list(per_label_s[0])
    if not regions:
        raise InputError("s_values_Gy_per_MBqh is empty; allowed: region -> S (Gy/(MBq h))")
    for lab, sv in zip(labels, per_label_s, strict=True):
        if list(sv) != regions:
            raise InputError(
                f"s_values_Gy_per_MBqh[{lab.nuclide!r}] has regions {list(sv)}; allowed: the "
                f"same regions for every label, {regions}"
            )
    missing = [r for r in regions if r not in tissues]
    if missing:
        raise InputError(
            f"tissues has no entry for regions {missing}; allowed: a Tissue or (alpha_beta_Gy, "
            "repair_half_time_h) per region"
        )
    c = _membership(model, regions, groups)
    ab, mu = [], []
    for r in regions:
        t = tissues[r]
        a, trep = (t.alpha_beta_Gy, t.repair_half_time_h) if isinstance(t, Tissue) else t
        _check_concrete(f"tissues[{r!r}] alpha_beta_Gy", a, "> 0 (Gy)", lambda v: np.all(v > 0))
        _check_concrete(f"tissues[{r!r}] repair_half_time_h", trep, "> 0 (h)",
                        lambda v: np.all(v > 0))  # fmt: skip
        ab.append(jnp.asarray(a, dtype=float))
        mu.append(LN2 / jnp.asarray(trep, dtype=float))
    ab, mu = jnp.stack(ab), jnp.stack(mu)
    n, k, n_lab = model.n_compartments, len(regions), len(labels)
    # Per label: dose rate R_l = MBq/nmol * S_matrix @ C @ hot_l (self-dose on the diagonal,
    # cross-dose off it); the repair integrals follow the summed weighted rate sum_l RBE_l R_l.
    w_phys = []
    for lab, sv, cross, rb in zip(labels, per_label_s, per_label_cross, per_label_rbe, strict=True):
        s = jnp.stack([jnp.asarray(sv[r], dtype=float) for r in regions])
        _check_concrete("s_values_Gy_per_MBqh", s, "finite and > 0 (Gy/(MBq h))",
                        lambda v: np.all(np.isfinite(v) & (v > 0)))  # fmt: skip
        _check_concrete("rbe", rb, "> 0", lambda v: np.all(v > 0))
        w_phys.append(lab.mbq_per_nmol * (_s_matrix(s, cross, regions) @ c))  # (k, n)
    rbes = [jnp.asarray(rb, dtype=float) for rb in per_label_rbe]
    w_w = jnp.concatenate([rb * w for rb, w in zip(rbes, w_phys, strict=True)], axis=1)

    def f_extra(hot, z):
        q = z[k : 2 * k]
        r = w_w @ hot
        return jnp.concatenate([r, r - mu * q, r * q])

    lam = jnp.asarray([lab.decay_constant_per_h for lab in labels])
    times = jnp.asarray([jnp.max(jnp.stack([lab.time_h[-1] for lab in labels]))])
    try:
        _, y, _, a_end = _ode_pieces(
            model, params, schedule, times, lam, rtol, atol, solver, _adjoint(adjoint),
            max_steps, tail_half_lives, True, extra=(3 * k, f_extra),
        )  # fmt: skip
    except _SOLVER_FAILURES as err:  # raised when called outside jit
        raise _solver_error(model, "repair integrals", err, max_steps, rtol, atol) from None
    n_hot = n_lab * n
    hot = y[:n_hot]
    z = y[2 * n_hot + n :]
    dose_w, q, j = z[:k], z[k : 2 * k], z[2 * k :]
    # D tail: the frozen linear system, exactly, per label; J tail: one exponential at the
    # current clearance rate of the weighted dose rate.
    dose, tias, m_hot, tails = 0.0, {}, [], []
    for l, lab in enumerate(labels):
        m = a_end - lam[l] * jnp.eye(n)
        h_l = hot[l * n : (l + 1) * n]
        tail = -jnp.linalg.solve(m, h_l)
        cum = y[n_hot + n + l * n : n_hot + n + (l + 1) * n] + tail
        dose = dose + w_phys[l] @ cum
        tias[lab.nuclide] = lab.mbq_per_nmol * (c @ cum)
        m_hot.append(m @ h_l)
        tails.append(tail)
    dose_w = dose_w + w_w @ jnp.concatenate(tails)
    r_end = w_w @ hot
    safe = jnp.where(r_end > 0, r_end, 1.0)
    k_eff = jnp.where(r_end > 0, -(w_w @ jnp.concatenate(m_hot)) / safe, jnp.min(lam))
    k_eff = jnp.maximum(k_eff, jnp.min(lam))
    j = j + r_end * q / (k_eff + mu) + r_end**2 / (2.0 * k_eff * (k_eff + mu))
    gd2_w = 2.0 * j
    bed = dose_w + gd2_w / ab
    out = {}
    for i, r in enumerate(regions):
        out[r] = {
            "dose_Gy": dose[i],
            "weighted_dose_Gy": dose_w[i],
            "g": gd2_w[i] / dose_w[i] ** 2,
            "bed_Gy": bed[i],
            "eqd2_Gy": bed[i] / (1.0 + 2.0 / ab[i]),
            "tia_MBqh": (
                {nuc: v[i] for nuc, v in tias.items()} if tandem else tias[labels[0].nuclide][i]
            ),
        }
    return out


def _per_label(field, value, labels, tandem, *, optional=False, scalar=False) -> list:
    """`value` for each label: itself for one label, else the entry of each label's nuclide
    (numbers, for `scalar` fields, apply to every label)."""
    if not tandem:
        return [value]
    if value is None and optional:
        return [None] * len(labels)
    if scalar and not isinstance(value, Mapping):
        return [value] * len(labels)
    nuclides = [lab.nuclide for lab in labels]
    if not isinstance(value, Mapping) or (
        not optional and any(nuc not in value for nuc in nuclides)
    ):
        raise InputError(
            f"{field} = {value!r} for a Tandem; allowed: nuclide -> value for each label {nuclides}"
        )
    extra = [key for key in value if key not in nuclides]
    if extra:
        raise InputError(f"{field} has entries for {extra}; allowed: the labels {nuclides}")
    return [value.get(nuc) for nuc in nuclides]


def _s_matrix(s, cross, regions):
    """Self-dose S-values on the diagonal, cross-dose S-values (target row, source column)."""
    s_matrix = jnp.diag(s)
    for target, sources in (cross or {}).items():
        for source, value in sources.items():
            if target not in regions or source not in regions or source == target:
                raise InputError(
                    f"cross_s_values[{target!r}][{source!r}]: allowed: two different regions of "
                    f"s_values_Gy_per_MBqh, {regions}"
                )
            _check_concrete(f"cross_s_values[{target!r}][{source!r}]", value,
                            "finite and >= 0 (Gy/(MBq h))",
                            lambda v: np.all(np.isfinite(v) & (v >= 0)))  # fmt: skip
            i, j = regions.index(target), regions.index(source)
            s_matrix = s_matrix.at[i, j].set(jnp.asarray(value, dtype=float))
    return s_matrix


def _membership(model, regions, groups) -> Array:
    """Region membership as a ``(regions, compartments)`` 0/1 matrix C, so that a region's
    activity is ``MBq/nmol * (C @ hot)``."""
    c = np.zeros((len(regions), model.n_compartments))
    for i, r in enumerate(regions):
        try:
            members = (groups or {}).get(r, (r,))
            c[i, np.concatenate([np.asarray(model.group(g)) for g in members])] = 1.0
        except Exception as err:
            raise InputError(f"region {r!r}: {err}") from None
    return jnp.asarray(c)


def response_from_model(
    model: CompartmentalModel,
    params: Mapping[str, Array | float],
    schedule: Schedule | Tandem,
    s_value_Gy_per_MBqh,
    times_h,
    *,
    tissue: Tissue,
    volume_mL,
    doubling_time_h,
    growth: str = "gompertz",
    carrying_capacity_mL=None,
    clearance_half_time_h=72.0,
    marker_half_life_h=60.0,
    region: str | Sequence[str] = "tumour",
    rbe=1.0,
    alpha_per_Gy=None,
    rtol: float = 1e-8,
    atol: float = 1e-12,
    solver=None,
    adjoint="forward",
    max_steps: int = 16384,
) -> TumourResponse:
    """Lesion volume, viable fraction and marker of a model's lesion under a schedule: the
    response ODE of [`tumour_response`][] (module docs of `_response`) rides along with the
    model's own ODE, driven by the lesion's dose rate ``rbe * S * A(t)``; no dose-rate curve is
    sampled or fitted.

    **Arguments:**
    - `model`, `params`, `schedule`: as [`twinjax.simulate`][]; the lesion is at baseline at the
      first administration (output times before it return the baseline).
    - `s_value_Gy_per_MBqh`: the lesion's self-dose S-value (Gy/(MBq h)); for a
      [`twinjax.Tandem`][], nuclide -> S-value (all labels drive the lesion in one ODE).
    - `times_h`: sorted output times (h, clock of the schedule).
    - `tissue`: the tumour's [`Tissue`][] (its `alpha_per_Gy` must be known).
    - `volume_mL`, `doubling_time_h`, `growth`, `carrying_capacity_mL`,
      `clearance_half_time_h`, `marker_half_life_h`: as [`tumour_response`][].
    - `region`: the model group(s) whose activities sum to the lesion's (e.g. a template's
      ``roi("tumour")``).
    - `rbe`: applied to the dose rate (e.g. 5 for alpha emitters); for a Tandem a number or
      nuclide -> RBE.
    - `alpha_per_Gy`: the lesion's radiosensitivity (1/Gy) in place of the tissue's (e.g. a
      posterior draw of it, `twinjax.outcomes`); traced values are allowed.
    - `rtol`, `atol`, `solver`, `adjoint`, `max_steps`: of the ODE solve (as `simulate`).

    **Returns:** a [`TumourResponse`][]; differentiable in the parameters and activities.
    """
    tandem = isinstance(schedule, Tandem)
    labels = as_labels(schedule)
    for lab in labels:
        params = _check_inputs(model, params, lab)
    if not isinstance(tissue, Tissue) or (tissue.alpha_per_Gy is None and alpha_per_Gy is None):
        raise InputError(
            f"tissue = {tissue!r}; allowed: a Tissue with alpha_per_Gy (e.g. "
            "twinjax.radiobiology.tissue('prostate_cancer')), or give alpha_per_Gy"
        )
    alpha = tissue.alpha_per_Gy if alpha_per_Gy is None else alpha_per_Gy
    t_out = jnp.asarray(times_h, dtype=float)
    _check_concrete("times_h", t_out, "finite and sorted (h), at least one time",
                    lambda x: x.size > 0 and np.all(np.isfinite(x)) and np.all(np.diff(x) >= 0))  # fmt: skip
    s_lab = _per_label("s_value_Gy_per_MBqh", s_value_Gy_per_MBqh, labels, tandem)
    rbe_lab = _per_label("rbe", rbe, labels, tandem, scalar=True)
    for sv, rb in zip(s_lab, rbe_lab, strict=True):
        _check_concrete("s_value_Gy_per_MBqh", sv, "finite and > 0 (Gy/(MBq h))",
                        lambda v: np.all(np.isfinite(v) & (v > 0)))  # fmt: skip
        _check_concrete("rbe", rb, "> 0", lambda v: np.all(v > 0))
    kinetics = _kinetics(
        volume_mL, alpha, tissue.alpha_beta_Gy, tissue.repair_half_time_h,
        doubling_time_h, growth, carrying_capacity_mL, clearance_half_time_h, marker_half_life_h,
    )  # fmt: skip
    members = (region,) if isinstance(region, str) else tuple(region)
    c = _membership(model, ["lesion"], {"lesion": members})[0]
    # Weighted lesion dose rate per nmol of each label in each compartment, labels concatenated.
    per_nmol = jnp.concatenate(
        [
            jnp.asarray(rb, dtype=float) * jnp.asarray(sv, dtype=float) * lab.mbq_per_nmol * c
            for lab, sv, rb in zip(labels, s_lab, rbe_lab, strict=True)
        ]
    )

    def f_extra(hot, z):
        return kinetics(per_nmol @ hot, z)

    lam = jnp.asarray([lab.decay_constant_per_h for lab in labels])
    n = len(labels) * model.n_compartments
    try:
        states, *_ = _ode_pieces(
            model, params, schedule, t_out, lam, rtol, atol, solver, _adjoint(adjoint),
            max_steps, 0.0, True, extra=(4, f_extra),
        )  # fmt: skip
    except _SOLVER_FAILURES as err:  # raised when called outside jit
        raise _solver_error(model, "the tumour response", err, max_steps, rtol, atol) from None
    offset = 2 * n + model.n_compartments
    return _trajectory(t_out, states[:, offset:], volume_mL)
