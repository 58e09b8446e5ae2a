"""The NumPyro model of one patient: population prior -> PBPK simulation -> measured activities.

[`calibration_model`][] assembles, from a template, a patient's prior, schedule, time-activity data
and an observation model, a NumPyro model function with sites

- ``z`` — standard-normal coordinates of the inferred parameters (see `PopulationPrior`);
- ``log_calibration`` — per-scan log calibration factors (when the observation model has a
  calibration CV), shared by all regions of a scan;
- a ``factor`` with the data log-likelihood, ``-inf`` when the ODE solve fails, so that the
  proposal is rejected (and counted in ``ode_ok``);
- deterministic sites: every inferred parameter by name, ``tia_<roi>`` (MBq h, to infinity) for
  each region, and ``ode_ok``.

The structure (unique scan times, which rows belong to which region) is fixed in Python before
tracing, so the log-density compiles once per fit.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist

from .._errors import InputError
from ..imaging.io import _order_problems
from ..imaging.observe import LognormalError, lognormal_sigma
from ..models._simulate import simulate
from ..models.library import Template
from ..schedule import Schedule
from .priors import PopulationPrior

__all__ = ["ATOL", "RTOL", "Observed", "calibration_model", "forward_jacobian"]

#: Default ODE tolerances of every inference entry point (relative; absolute in nmol). Measured
#: on psma617_reduced (Rodas4, 5 scans, kidneys/salivary/tumour/whole body): the largest
#: relative deviation of a predicted activity or TIA from an rtol = 1e-10 reference is 5e-5,
#: three orders of magnitude below the 10-30 % scan noise, at half the cost of rtol = 1e-5
#: (1e-5 deviation) and a fifth of rtol = 1e-6.
RTOL = 1e-4
ATOL = 1e-7


@dataclasses.dataclass(frozen=True)
class Observed:
    """Measured activities of one patient: one row per (region, scan time).

    `roi` (names), `time_h` (h, on the schedule's clock), `activity_MBq` (MBq); all 1-D.
    """

    roi: tuple[str, ...]
    time_h: np.ndarray
    activity_MBq: np.ndarray

    @classmethod
    def from_data(cls, data) -> Observed:
        """From any object with `roi`, `time_h` and `activity_MBq` (e.g. `TimeActivityData`)."""
        return cls(
            tuple(data.roi), np.asarray(data.time_h, float), np.asarray(data.activity_MBq, float)
        )

    @classmethod
    def design(cls, rois, times_h) -> Observed:
        """A scan design: every region in `rois` imaged at every time in `times_h` (h), in time
        order, with placeholder activities of 1 MBq (for simulators and calibration checks that
        use only the rows' regions and times)."""
        rows = [(r, float(t)) for t in times_h for r in rois]
        return cls(tuple(r for r, _ in rows), np.array([t for _, t in rows]), np.ones(len(rows)))

    def __post_init__(self) -> None:
        n = len(self.roi)
        if n == 0:
            raise InputError("observed data are empty; allowed: at least one measurement")
        if self.time_h.shape != (n,) or self.activity_MBq.shape != (n,):
            raise InputError(
                f"roi ({n}), time_h {self.time_h.shape} and activity_MBq "
                f"{self.activity_MBq.shape} must have the same length"
            )
        bad = ~np.isfinite(self.time_h) | (self.time_h < 0)
        if bad.any():
            i = int(np.argmax(bad))
            raise InputError(f"time_h[{i}] = {self.time_h[i]}; allowed: finite times >= 0 h")
        bad = ~np.isfinite(self.activity_MBq) | (self.activity_MBq < 0)
        if bad.any():
            i = int(np.argmax(bad))
            raise InputError(
                f"activity_MBq[{i}] = {self.activity_MBq[i]} ({self.roi[i]} at "
                f"{self.time_h[i]} h); allowed: finite activities >= 0 MBq"
            )
        problems = _order_problems(
            self.roi, self.time_h, [f"row {i}" for i in range(n)], "sort the rows by time"
        )
        if problems:
            raise InputError("observed data: " + "; ".join(problems[:5]))

    @property
    def rois(self) -> tuple[str, ...]:
        return tuple(sorted(set(self.roi)))

    @property
    def scan_times(self) -> np.ndarray:
        return np.unique(self.time_h)

    def until(self, time_h: float) -> Observed:
        keep = self.time_h <= time_h
        return Observed(
            tuple(np.asarray(self.roi)[keep]), self.time_h[keep], self.activity_MBq[keep]
        )


def forward_jacobian(fn):
    """`fn` (array -> pytree of float arrays) with its derivative computed by forward mode
    through `fn` once per point, whatever differentiates the result.

    The wrapped function carries a ``custom_jvp`` whose rule evaluates the Jacobian of `fn` with
    ``jax.jacfwd`` (one tangent per input coordinate) and returns ``J @ dx``. Two consequences:

    - the ODE solve inside `fn` sees only the tangents of its own inputs (the patient's
      parameters), not those of every latent site of the NumPyro model: under NumPyro's
      forward-mode gradients the Jacobian does not depend on the batched tangents, so ``vmap``
      computes it once, and per-scan calibration factors add no ODE tangents;
    - reverse mode (``jax.grad``, SVI) works too, by transposing the linear rule, without a
      reverse-mode adjoint of the solver; second derivatives (Laplace) nest forward mode.
    """

    @jax.custom_jvp
    def wrapped(x):
        return fn(x)

    @wrapped.defjvp
    def _jvp(primals, tangents):
        (x,), (dx,) = primals, tangents

        def both(x):
            out = fn(x)
            return out, out

        jac, out = jax.jacfwd(both, has_aux=True)(x)
        # A failed solve (NaN outputs) is rejected by the model (-inf); zero its Jacobian so that
        # reverse mode's J^T (0 cotangent) stays finite instead of 0 * NaN.
        jac = jax.tree.map(lambda j: jnp.where(jnp.isfinite(j), j, 0.0), jac)
        return out, jax.tree.map(lambda j: j @ dx, jac)

    return wrapped


def calibration_model(
    template: Template,
    prior: PopulationPrior,
    schedule: Schedule,
    observed: Observed,
    noise: LognormalError,
    *,
    rois: Sequence[str] | None = None,
    adjoint: str = "forward",
    rtol: float = RTOL,
    atol: float = ATOL,
    max_steps: int = 8192,
):
    """Build the NumPyro model function of one patient; see module docs.

    The function takes one optional argument, `activity_MBq`: measured values in the row order
    of `observed` (default: `observed.activity_MBq`). Passing data as an argument lets one
    compiled log density serve many data sets of the same design (simulation-based calibration,
    cohorts, sequential updates with ``jit_model_args=True``).
    `rois` are the regions whose TIA is recorded (default: the observed ones). The ODE solve is
    differentiated in forward mode whatever differentiates the model (see [`forward_jacobian`][]),
    so `adjoint` must support forward mode: ``"forward"`` (default) or ``"direct"``.
    """
    model = template.model
    times = observed.scan_times
    if schedule.n_administrations and float(times[0]) < float(np.asarray(schedule.time_h)[0]):
        raise InputError(
            f"a scan at {times[0]} h precedes the first administration at "
            f"{float(schedule.time_h[0])} h"
        )
    t_admin = np.asarray(schedule.time_h, dtype=float)
    a_admin = np.asarray(schedule.activity_MBq, dtype=float)
    for t, a, roi in zip(observed.time_h, observed.activity_MBq, observed.roi, strict=True):
        given = float(a_admin[t_admin <= t].sum())
        if a > 1.05 * given:
            raise InputError(
                f"activity_MBq = {a:g} ({roi} at {t:g} h) exceeds the {given:g} MBq administered "
                "up to then; allowed: at most the administered activity (+5 % margin); check "
                "the units (MBq, not kBq or Bq)"
            )
    index = {t: i for i, t in enumerate(times)}
    rows = {}
    for roi in observed.rois:
        template.roi(roi)  # unknown regions fail here, before any tracing
        noise.sigma(roi)
        sel = np.array([r == roi for r in observed.roi])
        rows[roi] = (np.array([index[t] for t in observed.time_h[sel]]), np.flatnonzero(sel))
    tia_rois = tuple(rois) if rois is not None else observed.rois
    n_scans = len(times)
    sigma_cal = float(lognormal_sigma(noise.calibration_cv)) if noise.calibration_cv > 0 else 0.0

    default_y = jnp.asarray(observed.activity_MBq)

    def predict(z):
        """z -> (activity per region and scan time, TIA per recorded region, 1.0 if solved)."""
        params = template.derive({**prior.base, **prior.theta(z)})
        traj = simulate(
            model,
            params,
            schedule,
            times,
            rtol=rtol,
            atol=atol,
            adjoint=adjoint,
            max_steps=max_steps,
            throw=False,
        )
        act = {roi: sum(traj.activity(g) for g in template.roi(roi)) for roi in rows}
        tia = jnp.stack([sum(traj.tia(g) for g in template.roi(roi)) for roi in tia_rois])
        return act, tia, traj.success.astype(tia.dtype)

    predict = forward_jacobian(predict)

    def numpyro_model(activity_MBq=None):
        y_all = default_y if activity_MBq is None else activity_MBq
        z = numpyro.sample("z", dist.Normal(0.0, 1.0).expand([prior.dim]).to_event(1))
        for name, value in prior.theta(z).items():
            numpyro.deterministic(name, value)
        act, tia, solved = predict(z)
        if sigma_cal > 0:
            log_cal = numpyro.sample(
                "log_calibration", dist.Normal(0.0, sigma_cal).expand([n_scans]).to_event(1)
            )
            cal = jnp.exp(log_cal)
        else:
            cal = jnp.ones(n_scans)
        ll = 0.0
        for roi, (idx, sel) in rows.items():
            ll = ll + noise.log_likelihood(roi, y_all[sel], act[roi][idx], calibration=cal[idx])
        ok = (solved > 0) & jnp.isfinite(ll)
        numpyro.deterministic("ode_ok", ok)
        numpyro.factor("data", jnp.where(ok, ll, -jnp.inf))
        for k, roi in enumerate(tia_rois):
            numpyro.deterministic(f"tia_{roi}", tia[k])

    return numpyro_model
