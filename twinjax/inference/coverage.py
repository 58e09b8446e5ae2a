"""Interval coverage on simulated patients: do the twin's credible intervals mean what they say?

[`interval_coverage`][] draws virtual patients from a template's population prior, simulates their
scans with the observation model (noise and per-scan calibration factors), calibrates a twin on
each, and counts how often the central credible interval of each region's TIA contains the true
TIA. A calibrated method covers at the nominal rate: with n patients the rate must lie inside the
binomial band (default 99 %) around the nominal level.

All patients share one design (schedule, covariates, scan times and regions), so one compiled log
density serves every patient: the data are an argument of the model (see `calibration_model`).
Engines: ``"laplace"`` (mode + inverse Hessian, see `_laplace`) and ``"nuts"`` (one chain per
patient, NumPyro NUTS compiled once with ``jit_model_args``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Literal

import jax
import jax.numpy as jnp
import numpy as np
import scipy.stats
from numpyro.infer import MCMC, NUTS
from numpyro.infer.util import log_density

from .._errors import InputError
from ..imaging.observe import LognormalError, lognormal_sigma
from ..models._simulate import simulate
from ..models.library import Template
from ._laplace import ModeFinder
from .fit import latent_space
from .model import ATOL, RTOL, Observed, calibration_model
from .priors import PopulationPrior

__all__ = ["CoverageResult", "interval_coverage"]


@dataclasses.dataclass(frozen=True)
class CoverageResult:
    """Per region: true TIA, interval bounds (MBq h) per patient, and the coverage verdict."""

    level: float
    band_level: float
    truth: dict[str, np.ndarray]
    lower: dict[str, np.ndarray]
    upper: dict[str, np.ndarray]
    failed_fits: int

    @property
    def n(self) -> int:
        return len(next(iter(self.truth.values())))

    def rate(self, roi: str) -> float:
        t, lo, hi = self.truth[roi], self.lower[roi], self.upper[roi]
        ok = np.isfinite(lo) & np.isfinite(hi)
        return float(np.mean((lo[ok] <= t[ok]) & (t[ok] <= hi[ok])))

    def band(self) -> tuple[float, float]:
        """Central `band_level` binomial interval of the coverage rate for n patients."""
        a = (1.0 - self.band_level) / 2.0
        lo, hi = scipy.stats.binom.ppf([a, 1.0 - a], self.n, self.level) / self.n
        return float(lo), float(hi)

    def inside_band(self, roi: str) -> bool:
        lo, hi = self.band()
        return lo <= self.rate(roi) <= hi

    def table(self) -> str:
        lo, hi = self.band()
        rows = [
            f"{self.n} patients, nominal {100 * self.level:g} % intervals, "
            f"{100 * self.band_level:g} % binomial band [{100 * lo:.1f}, {100 * hi:.1f}] %"
        ]
        for roi in self.truth:
            verdict = "ok" if self.inside_band(roi) else "OUTSIDE"
            rows.append(f"  {roi:<14} coverage {100 * self.rate(roi):5.1f} %  {verdict}")
        if self.failed_fits:
            rows.append(f"  failed fits: {self.failed_fits}")
        return "\n".join(rows)


def interval_coverage(
    template: Template,
    patient,
    design: Observed,
    noise: LognormalError,
    *,
    rois: Sequence[str] = ("kidneys", "tumour"),
    n_patients: int = 50,
    level: float = 0.9,
    band_level: float = 0.99,
    method: Literal["laplace", "nuts"] = "laplace",
    num_samples: int = 1000,
    num_warmup: int = 500,
    seed: int = 0,
    rtol: float = RTOL,
    atol: float = ATOL,
    true_noise: LognormalError | None = None,
    progress: bool = False,
) -> CoverageResult:
    """Coverage of `level` credible intervals of each region's TIA (see module docs).

    **Arguments:**
    - `patient`: covariates and schedule shared by the virtual patients.
    - `design`: the scans (its `roi` and `time_h`; its activities are ignored).
    - `noise`: the observation model, used both to simulate and to fit.
    - `rois`: regions whose TIA intervals are checked. `n_patients`, `level`, `band_level`.
    - `method`: ``"laplace"`` or ``"nuts"``; `num_samples`, `num_warmup`; `seed`.
    - `true_noise`: simulate with this observation model instead of `noise` (a misspecified
      control: e.g. real noise larger than the fit assumes must show under-coverage).

    **Returns:** a [`CoverageResult`][].
    """
    if method not in ("laplace", "nuts"):
        raise InputError(f"method = {method!r}; allowed: 'laplace', 'nuts'")
    if not (isinstance(n_patients, int) and n_patients >= 2):
        raise InputError(f"n_patients = {n_patients!r}; allowed: an integer >= 2")
    for name, v in (("level", level), ("band_level", band_level)):
        if not (0.0 < v < 1.0):
            raise InputError(f"{name} = {v!r}; allowed: 0 < {name} < 1")
    prior = PopulationPrior.from_template(template, patient.covariates)
    model = calibration_model(
        template, prior, patient.schedule, design, noise, rois=rois, rtol=rtol, atol=atol
    )
    space = latent_space(prior, design, noise)
    groups = {r: template.roi(r) for r in {*design.roi, *rois}}
    key = jax.random.key(seed)
    sim_noise = noise if true_noise is None else true_noise

    truth_and_data = virtual_patients(
        template, prior, patient.schedule, design, sim_noise, rois, rtol, atol
    )

    with jax.numpy_dtype_promotion("standard"):
        keys = jax.random.split(key, n_patients + 1)
        # lax.map, not vmap: XLA's CPU runtime has been seen to hang on large vmapped graphs.
        ys, tias, _ = truth_and_data(keys[1:])
        ys, truth = np.asarray(ys), {r: np.asarray(v) for r, v in tias.items()}
        lower = {r: np.full(n_patients, np.nan) for r in rois}
        upper = {r: np.full(n_patients, np.nan) for r in rois}
        draws_of = _laplace_engine if method == "laplace" else _nuts_engine
        run = draws_of(model, space, num_samples, num_warmup)
        tia_of = _tia_function(template, prior, patient.schedule, space, rois, groups, rtol, atol)
        failed = 0
        q = ((1.0 - level) / 2.0, 1.0 - (1.0 - level) / 2.0)
        for i in range(n_patients):
            try:
                u = run(jax.random.fold_in(keys[0], i), ys[i])
            except Exception:  # a failed fit counts against coverage, it is not skipped
                failed += 1
                continue
            t = tia_of(jnp.asarray(u))
            for r in rois:
                lower[r][i], upper[r][i] = np.quantile(np.asarray(t[r]), q)
            if progress:
                print(f"patient {i + 1}/{n_patients}", flush=True)
    return CoverageResult(level, band_level, truth, lower, upper, failed)


def virtual_patients(template, prior, schedule, design, noise, rois, rtol, atol):
    """Compiled function: keys (n,) -> (data (n, rows) in `design`'s row order, true TIA per
    region (n,), true z (n, dim)). Patients are prior draws; scans get the noise model's errors
    and per-scan calibration factors."""
    scan_index = np.searchsorted(design.scan_times, design.time_h)
    groups = {r: template.roi(r) for r in {*design.roi, *rois}}
    sigma_cal = lognormal_sigma(noise.calibration_cv)

    def one(k):
        kz, kc, kn = jax.random.split(k, 3)
        z = jax.random.normal(kz, (prior.dim,))
        params = template.derive({**prior.base, **prior.theta(z)})
        tr = simulate(template.model, params, schedule, design.scan_times, rtol=rtol, atol=atol)
        cal = jnp.exp(sigma_cal * jax.random.normal(kc, (len(design.scan_times),)))
        y = []
        for i, (roi, s) in enumerate(zip(design.roi, scan_index, strict=True)):
            mu = sum(tr.activity(g)[s] for g in groups[roi])
            y.append(noise.sample(jax.random.fold_in(kn, i), roi, mu, calibration=cal[s]))
        tia = {r: sum(tr.tia(g) for g in groups[r]) for r in rois}
        return jnp.stack(y), tia, z

    # lax.map, not vmap: XLA's CPU runtime has been seen to hang on large vmapped graphs.
    return jax.jit(lambda keys: jax.lax.map(one, keys))


def _laplace_engine(model, space, num_samples, num_warmup):
    def potential(u, y):
        return -log_density(model, (y,), {}, space.unflatten(u))[0]

    finder = ModeFinder(potential)

    def run(key, y):
        mode, h = finder.run(np.zeros(space.size), jnp.asarray(y))
        cov = np.linalg.inv(h)
        eps = np.asarray(jax.random.normal(key, (num_samples, space.size)))
        return mode + eps @ np.linalg.cholesky(0.5 * (cov + cov.T)).T

    return run


def _nuts_engine(model, space, num_samples, num_warmup):
    kernel = NUTS(model, forward_mode_differentiation=True, dense_mass=True)
    mcmc = MCMC(
        kernel,
        num_warmup=num_warmup,
        num_samples=num_samples,
        jit_model_args=True,
        progress_bar=False,
    )
    init = space.unflatten(jnp.zeros(space.size))

    def run(key, y):
        mcmc.run(key, jnp.asarray(y), init_params=init)
        s = mcmc.get_samples()
        return np.asarray(space.flatten(s, 1))

    return run


def _tia_function(template, prior, schedule, space, rois, groups, rtol, atol):
    z_slice = space.slices()["z"]

    def one(u):
        params = template.derive({**prior.base, **prior.theta(u[z_slice])})
        tr = simulate(
            template.model, params, schedule, jnp.asarray([0.0]), rtol=rtol, atol=atol, throw=False
        )
        return {r: sum(tr.tia(g) for g in groups[r]) for r in rois}

    return jax.jit(lambda us: jax.lax.map(one, us))
