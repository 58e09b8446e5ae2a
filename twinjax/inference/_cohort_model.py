"""The NumPyro model of a cohort: population hyperparameters -> every patient's parameters ->
batched simulations -> measured activities (see [`twinjax.inference.cohort`][]).

Layout. Patients whose schedules have the same structure (number of administrations, which are
infusions, nuclide) form a *group*; a group is simulated by one `jax.vmap` over the patients'
parameters, schedules and scan times, so the compiled program does not grow with the number of
patients. Within a group, scan times are padded to the group's largest number of scans (by
repeating the last one) and data rows to its largest number of rows; padded rows carry
``mask = False`` and contribute nothing (`LognormalError.log_likelihood` takes the mask).

Gradients. A cohort has many latent coordinates (per patient: D parameters and one calibration
factor per scan) but each simulation depends on only its own patient's D parameters. Forward mode
through the whole log density would push every coordinate's tangent through every patient's ODE
solve. Instead the batched simulator is a `jax.custom_vjp` whose forward pass computes, per
patient, the predicted activities *and* their Jacobian in forward mode (D tangents, Diffrax's
``ForwardMode``, as single-patient fits use); its backward pass contracts the stored Jacobian.
Everything around it (priors, calibration factors, likelihood) is differentiated in reverse mode,
so NUTS runs with ordinary reverse-mode gradients at the cost of D + 1 solves per patient.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist

from ..imaging.observe import LognormalError, lognormal_sigma
from ..models._simulate import simulate
from ..models.library import Template
from .model import Observed

__all__ = ["CohortLayout", "cohort_model"]


@dataclasses.dataclass(frozen=True)
class _Group:
    """Patients sharing one schedule structure, padded to common shapes (numpy, host side)."""

    index: np.ndarray  # (G,) positions of the group's patients in the cohort
    schedule: object  # Schedule with leaves stacked over the group's patients
    base: dict  # parameter -> (G,) covariate-adjusted typical values (not inferred ones)
    times: np.ndarray  # (G, T) scan times, padded by repeating the last
    y: np.ndarray  # (G, R) measured activities (1.0 in padded rows)
    roi: np.ndarray  # (G, R) region index into `CohortLayout.rois` (-1 in padded rows)
    scan: np.ndarray  # (G, R) scan index of each row (0 in padded rows)
    mask: np.ndarray  # (G, R) real rows
    cal: np.ndarray  # (G, T) index into the flat calibration vector (n_scans = padding)


@dataclasses.dataclass(frozen=True)
class CohortLayout:
    """Everything static about a cohort: who is in which group, padded data, typical values."""

    names: tuple[str, ...]
    rois: tuple[str, ...]
    log_typical: np.ndarray  # (P, D) log covariate-adjusted typical values
    groups: tuple[_Group, ...]
    n_scans: int  # real scans in the cohort: the length of the calibration vector

    @classmethod
    def build(cls, template: Template, names, bases, schedules, observed: Sequence[Observed]):
        """`bases`: per patient, the covariate-adjusted parameters (`PopulationPrior.base`)."""
        rois = tuple(sorted({r for o in observed for r in o.rois}))
        log_typ = np.log([[float(b[n]) for n in names] for b in bases])
        fixed = [k for k in template.spec.parameters if k not in names]
        keys: dict = {}
        for i, s in enumerate(schedules):
            leaves, tree = jax.tree.flatten(s)
            keys.setdefault((tree, tuple(np.shape(x) for x in leaves)), []).append(i)
        offsets = np.cumsum([0] + [len(o.scan_times) for o in observed])
        groups = []
        for members in keys.values():
            obs = [observed[i] for i in members]
            n_t = max(len(o.scan_times) for o in obs)
            n_r = max(len(o.roi) for o in obs)
            g = len(members)
            times = np.zeros((g, n_t))
            cal = np.full((g, n_t), offsets[-1])
            y, mask = np.ones((g, n_r)), np.zeros((g, n_r), bool)
            roi, scan = np.full((g, n_r), -1), np.zeros((g, n_r), int)
            for j, (i, o) in enumerate(zip(members, obs, strict=True)):
                st = o.scan_times
                times[j] = np.concatenate([st, np.full(n_t - len(st), st[-1])])
                cal[j, : len(st)] = offsets[i] + np.arange(len(st))
                k = len(o.roi)
                y[j, :k], mask[j, :k] = o.activity_MBq, True
                roi[j, :k] = [rois.index(r) for r in o.roi]
                scan[j, :k] = np.searchsorted(st, o.time_h)
            stacked = jax.tree.map(lambda *x: jnp.stack(x), *[schedules[i] for i in members])
            base = {k: np.array([float(bases[i][k]) for i in members]) for k in fixed}
            groups.append(_Group(np.array(members), stacked, base, times, y, roi, scan, mask, cal))
        return cls(tuple(names), rois, log_typ, tuple(groups), int(offsets[-1]))


#: Largest |log theta - log typical| simulated (a factor of e^10 = 22,026 from the typical
#: value); proposals beyond it are rejected without solving.
_MAX_LOG_DEVIATION = 10.0


def _batched_predictor(template: Template, names, rois, rtol, atol, max_steps):
    """``f(log_theta (G, D), aux) -> (activity (G, n_rois, T), tia (G, n_rois), ok (G,))``
    with a forward-mode Jacobian of the activities per patient (see module docs)."""
    model = template.model

    def one(log_theta, aux):
        base, schedule, times, log_typ = aux
        # NUTS's first steps (step-size search, early warm-up) can propose hyperparameters that
        # put a patient's parameters e^100 away from typical; the implicit solver's linear solves
        # then see inf/NaN, and Lineax raises instead of failing softly. Such points are
        # rejected (-inf, via `success`) and simulated at the typical values instead.
        sane = jnp.all(jnp.abs(log_theta - log_typ) < _MAX_LOG_DEVIATION)
        log_theta = jnp.where(sane, log_theta, log_typ)
        theta = dict(zip(names, jnp.exp(log_theta), strict=True))
        params = template.derive({**base, **theta})
        traj = simulate(
            model,
            params,
            schedule,
            times,
            rtol=rtol,
            atol=atol,
            adjoint="forward",
            max_steps=max_steps,
            throw=False,
        )
        act = jnp.stack([sum(traj.activity(g) for g in template.roi(r)) for r in rois])
        tia = jnp.stack([sum(traj.tia(g) for g in template.roi(r)) for r in rois])
        return act, (act, tia, traj.success & sane)

    @jax.custom_vjp
    def predict(log_theta, aux):
        return jax.vmap(lambda x, a: one(x, a)[1])(log_theta, aux)

    def fwd(log_theta, aux):
        jac, out = jax.vmap(jax.jacfwd(one, has_aux=True))(log_theta, aux)
        # A failed solve is rejected by the model (-inf); keep its gradient finite (0 * NaN).
        jac = jnp.where(jnp.isfinite(jac), jac, 0.0)
        return out, (jac, aux)

    def bwd(res, cot):
        jac, aux = res
        # Only the activities enter the density; TIA and the success flag are reported only.
        g = jnp.einsum("prt,prtd->pd", cot[0], jac)
        return g, jax.tree.map(jnp.zeros_like, aux)

    predict.defvjp(fwd, bwd)
    return predict


def cohort_model(
    template: Template,
    layout: CohortLayout,
    noise: LognormalError,
    *,
    shift_scale: float,
    omega_scale: np.ndarray,
    correlation: bool,
    lkj_concentration: float,
    rtol: float,
    atol: float,
    max_steps: int,
):
    """The NumPyro model function of the cohort. Sites: ``mu`` (D, log shift of the typical
    values), ``omega`` (D, between-patient log-SD), ``eta`` (P, D, standard normal),
    ``corr_chol`` (D, D; with `correlation`), ``calibration_z`` (n_scans, standard normal);
    deterministic: every parameter by name (P,), ``tia_<roi>`` (P,), ``ode_ok``."""
    names, rois = layout.names, layout.rois
    n_p, d = layout.log_typical.shape
    predict = _batched_predictor(template, names, rois, rtol, atol, max_steps)
    sigma_cal = float(lognormal_sigma(noise.calibration_cv)) if noise.calibration_cv > 0 else 0.0
    log_typ = jnp.asarray(layout.log_typical)
    groups = [
        (
            g,
            (
                {k: jnp.asarray(v) for k, v in g.base.items()},
                g.schedule,
                jnp.asarray(g.times),
                jnp.asarray(layout.log_typical[g.index]),
            ),
            jnp.asarray(g.cal),
        )
        for g in layout.groups
    ]

    # One compiled function for everything downstream of the parameters: NumPyro runs the model
    # eagerly to initialise each chain, and eager JAX compiles every primitive separately
    # (hundreds of small compilations, about a minute) where this compiles once.
    @jax.jit
    def data_term(log_theta, log_cal):
        ll, ok = 0.0, jnp.ones(n_p, bool)
        tia = jnp.zeros((n_p, len(rois)))
        for g, aux, cal_index in groups:
            act, g_tia, g_ok = predict(log_theta[g.index], aux)
            cal = jnp.exp(log_cal[cal_index])  # (G, T)
            scan = jnp.asarray(g.scan)
            cal_rows = jnp.take_along_axis(cal, scan, axis=1)
            for r, roi in enumerate(rois):
                pred = jnp.take_along_axis(act[:, r, :], scan, axis=1)
                mask = jnp.asarray(g.mask & (g.roi == r))
                ll = ll + noise.log_likelihood(
                    roi, jnp.asarray(g.y), pred, calibration=cal_rows, mask=mask
                )
            ok = ok.at[g.index].set(g_ok)
            tia = tia.at[g.index].set(g_tia)
        return ll, jnp.all(ok) & jnp.isfinite(ll), tia

    def numpyro_model():
        mu = numpyro.sample("mu", dist.Normal(0.0, shift_scale).expand([d]).to_event(1))
        omega = numpyro.sample("omega", dist.HalfNormal(jnp.asarray(omega_scale)).to_event(1))
        eta = numpyro.sample("eta", dist.Normal(0.0, 1.0).expand([n_p, d]).to_event(2))
        if correlation:
            chol = numpyro.sample("corr_chol", dist.LKJCholesky(d, lkj_concentration))
            numpyro.deterministic("corr", chol @ chol.T)
            eta = eta @ chol.T
        log_theta = log_typ + mu + omega * eta
        for j, name in enumerate(names):
            numpyro.deterministic(name, jnp.exp(log_theta[:, j]))
        if sigma_cal > 0:
            u = numpyro.sample("calibration_z", dist.Normal(0.0, 1.0).expand([layout.n_scans]))
            log_cal = jnp.concatenate([sigma_cal * u.reshape(-1), jnp.zeros(1)])
        else:
            log_cal = jnp.zeros(layout.n_scans + 1)
        ll, all_ok, tia = data_term(log_theta, log_cal)
        numpyro.deterministic("ode_ok", all_ok)
        numpyro.factor("data", jnp.where(all_ok, ll, -jnp.inf))
        for r, roi in enumerate(rois):
            numpyro.deterministic(f"tia_{roi}", tia[:, r])

    return numpyro_model
