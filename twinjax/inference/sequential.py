"""Sequential assimilation: keep a twin's posterior current as each new scan (or cycle) arrives.

```python
post = twinjax.fit(template, patient, scans_day_0_to_2, noise=noise, method="nuts")
post = twinjax.assimilate(post, scan_day_4)                     # exact: refit, warm-started
post = twinjax.assimilate(post, scan_day_7, method="fast")      # fast: Gaussian update
post.approximation                                              # its measured error
```

Two paths:

- ``method="exact"`` refits on all data so far (the previous posterior's data plus the new rows)
  with the previous fit's engine and options, warm-started: NUTS chains start from the last draw
  of each previous chain (calibration factors of new scans at 1), with the previous adapted step
  size and mass matrix (new scans' calibration factors get their prior variance) and a shorter
  warm-up; MAP/Laplace start their optimiser at the previous mode. The result is the batch
  posterior, up to Monte-Carlo error.
- ``method="fast"`` treats the previous posterior as a Gaussian prior over its latent coordinates
  (its Laplace Gaussian, or the mean and covariance of its draws) and combines it with the
  likelihood of the new rows only ([`gaussian_update`][]: the mode and inverse Hessian of
  prior x new likelihood). One ODE solve per evaluation covers only the new scan times. For a
  linear-Gaussian model this is exact (the sequential posterior equals the batch posterior to
  round-off); otherwise its error is measured against the exact unnormalised posterior on all
  data by Pareto-smoothed importance sampling (Vehtari et al. 2024, JMLR 25:1-58): the Pareto
  shape k-hat (reliable below 0.7), the relative importance-sampling efficiency, and the shift of
  each parameter's and TIA's mean that importance weighting makes, in posterior SDs. These go into
  `Posterior.approximation`.

Assimilation moves forward in time: every new scan must be later than the last assimilated one.
A scan at or before it is an error that says to refit from that scan with [`fit`][]. A new cycle
comes with its patient (`patient=`), whose schedule must extend the previous one.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Literal

import jax
import jax.numpy as jnp
import numpy as np
from numpyro.infer.util import log_density

from .._errors import InputError
from ..imaging.observe import lognormal_sigma
from ..schedule import Schedule
from ._laplace import LatentSpace, find_mode
from .fit import Posterior, _with_deterministics, fit, latent_space
from .model import Observed, calibration_model

__all__ = ["assimilate", "gaussian_update"]


def gaussian_update(
    log_likelihood: Callable, mean, cov, *, start=None
) -> tuple[np.ndarray, np.ndarray]:
    """Laplace update of a Gaussian prior ``N(mean, cov)`` by `log_likelihood` (flat vector ->
    scalar, jit-able): the mode of prior x likelihood and the inverse Hessian there.

    Exact when the log-likelihood is quadratic (linear-Gaussian observations); a Laplace
    approximation otherwise. **Returns:** ``(mean, cov)`` of the updated Gaussian.
    """
    mean = np.asarray(mean, dtype=float)
    cov = np.asarray(cov, dtype=float)
    n = mean.shape[0]
    if cov.shape != (n, n) or not np.all(np.isfinite(cov)) or not np.all(np.isfinite(mean)):
        raise InputError(
            f"prior mean {mean.shape} and covariance {cov.shape} must be finite, (n,) and (n, n)"
        )
    try:
        chol = np.linalg.cholesky(0.5 * (cov + cov.T))
    except np.linalg.LinAlgError:
        raise InputError("prior covariance is not positive definite") from None
    prec = jnp.asarray(np.linalg.inv(chol).T @ np.linalg.inv(chol))
    m = jnp.asarray(mean)

    def potential(u):
        d = u - m
        return 0.5 * d @ prec @ d - log_likelihood(u)

    mode, h = find_mode(potential, mean if start is None else start, what="updated")
    new_cov = np.linalg.inv(h)
    return mode, 0.5 * (new_cov + new_cov.T)


def assimilate(
    posterior: Posterior,
    new_data,
    *,
    method: Literal["exact", "fast"] = "exact",
    patient=None,
    num_warmup: int | None = None,
    num_samples: int | None = None,
    seed: int | None = None,
) -> Posterior:
    """Update `posterior` with `new_data` (see module docs).

    **Arguments:**
    - `posterior`: a [`Posterior`][] from [`fit`][] or from a previous `assimilate`.
    - `new_data`: the new rows (`Observed` or any object with `roi`, `time_h`, `activity_MBq`),
      all later than the last assimilated scan.
    - `method`: ``"exact"`` (warm-started refit on all data) or ``"fast"`` (Gaussian update).
    - `patient`: the patient with an extended schedule (after a new administration); default:
      the previous one.
    - `num_warmup` (exact NUTS; default half the previous warm-up, at least 100), `num_samples`
      (default: as before), `seed` (default: previous seed + 1).

    **Returns:** the updated [`Posterior`][] (data: all rows so far).
    """
    ctx = posterior.context
    if ctx is None:
        raise InputError("posterior has no fit context (it was not made by twinjax.fit)")
    if method not in ("exact", "fast"):
        raise InputError(f"method = {method!r}; allowed: 'exact', 'fast'")
    new = new_data if isinstance(new_data, Observed) else Observed.from_data(new_data)
    old = posterior.observed
    last = float(np.max(old.time_h))
    if float(np.min(new.time_h)) <= last:
        t = float(np.min(new.time_h))
        raise InputError(
            f"new scan at {t:g} h is not after the last assimilated scan ({last:g} h); "
            f"assimilation moves forward in time: refit from the {t:g} h scan with "
            "twinjax.fit(...) on all data"
        )
    patient = ctx.patient if patient is None else patient
    _check_extends(ctx.patient.schedule, getattr(patient, "schedule", None))
    allrows = Observed(
        old.roi + new.roi,
        np.concatenate([old.time_h, new.time_h]),
        np.concatenate([old.activity_MBq, new.activity_MBq]),
    )
    opts = dict(ctx.options)
    if num_samples is not None:
        opts["num_samples"] = num_samples
    opts["seed"] = opts["seed"] + 1 if seed is None else seed
    if method == "exact":
        return _exact(posterior, patient, allrows, opts, num_warmup)
    if dict(patient.covariates) != dict(ctx.patient.covariates):
        raise InputError(
            "the fast path keeps the prior of the previous fit: patient covariates must not "
            "change; use method='exact'"
        )
    return _fast(posterior, patient, new, allrows, opts)


def _check_extends(old: Schedule, new) -> None:
    if not isinstance(new, Schedule):
        raise InputError("patient.schedule must be a twinjax.Schedule")
    n = old.n_administrations
    same = new.n_administrations >= n and all(
        np.allclose(np.asarray(getattr(old, f)), np.asarray(getattr(new, f))[:n], rtol=1e-12)
        for f in ("time_h", "hot_nmol", "cold_nmol", "duration_h")
    )
    if not same or new.nuclide != old.nuclide:
        raise InputError(
            "patient.schedule must extend the schedule of the previous fit (same first "
            f"{n} administrations at {np.asarray(old.time_h).tolist()} h, same nuclide); to "
            "change past administrations refit with twinjax.fit(...)"
        )


def _exact(posterior: Posterior, patient, allrows: Observed, opts: dict, num_warmup):
    ctx = posterior.context
    m = opts.pop("method")
    warm = None
    if m == "nuts":
        prev_warmup = opts["num_warmup"]
        opts["num_warmup"] = max(100, prev_warmup // 2) if num_warmup is None else num_warmup
        warm = _warm_start(posterior, allrows, opts["num_chains"])
    elif posterior.gaussian is not None:
        space = latent_space(posterior.prior, allrows, ctx.noise)
        old_space = latent_space(posterior.prior, posterior.observed, ctx.noise)
        old = {
            k: np.asarray(v)
            for k, v in old_space.unflatten(np.asarray(posterior.gaussian["mean"])[None]).items()
        }
        warm = {"u": np.asarray(space.flatten(_embed(space, old, 0.0), 1))}
    return fit(ctx.template, patient, allrows, noise=ctx.noise, method=m, warm_start=warm, **opts)


def _embed(space: LatentSpace, old_values: dict, fill_cal: float) -> dict:
    """Previous latent values (leading batch axis) in the new layout. Calibration factors are
    ordered by scan time and every new scan is later, so the old scans come first; the new
    scans' log calibration factors take `fill_cal`."""
    out = {}
    for name, shape in space.sites:
        v = np.asarray(old_values[name])
        if name == "log_calibration":
            full = np.full((v.shape[0], *shape), fill_cal)
            full[:, : v.shape[1]] = v
            v = full
        out[name] = v
    return out


def _old_index(space: LatentSpace, old_space: LatentSpace) -> np.ndarray:
    """Positions of the previous layout's entries in the new flat layout."""
    new = space.slices()
    return np.concatenate(
        [
            np.arange(new[k].start, new[k].start + sl.stop - sl.start)
            for k, sl in old_space.slices().items()
        ]
    )


def _warm_start(posterior: Posterior, allrows: Observed, num_chains: int):
    ctx = posterior.context
    space = latent_space(posterior.prior, allrows, ctx.noise)
    old_space = latent_space(posterior.prior, posterior.observed, ctx.noise)
    last = {k: posterior.samples[k][:, -1] for k, _ in old_space.sites}
    n_prev = next(iter(last.values())).shape[0]
    take = np.arange(num_chains) % n_prev
    u = space.flatten(_embed(space, {k: v[take] for k, v in last.items()}, 0.0), 1)
    ad = posterior.adaptation
    imm_old = np.asarray(ad["inverse_mass_matrix"])
    # Old blocks keep their adapted values; new calibration entries get their prior variance.
    idx = _old_index(space, old_space)
    sigma_cal = float(lognormal_sigma(ctx.noise.calibration_cv))
    imm = np.eye(space.size) * sigma_cal**2
    imm[np.ix_(idx, idx)] = imm_old
    return {"u": np.asarray(u), "step_size": ad["step_size"], "inverse_mass_matrix": imm}


def _fast(posterior: Posterior, patient, new: Observed, allrows: Observed, opts: dict):
    ctx = posterior.context
    prior = posterior.prior
    noise = ctx.noise
    old_space = latent_space(prior, posterior.observed, noise)
    space = latent_space(prior, allrows, noise)
    if posterior.gaussian is not None and posterior.gaussian["cov"] is not None:
        mean, cov = posterior.gaussian["mean"], posterior.gaussian["cov"]
    elif posterior.method == "map":
        raise InputError(
            "the fast path needs a posterior with spread: fit with 'laplace', 'svi' or 'nuts'"
        )
    else:
        draws = posterior.latent_draws
        mean, cov = draws.mean(axis=0), np.cov(draws, rowvar=False)
    # Extend the Gaussian with the new scans' calibration factors (their prior: independent).
    sigma_cal = float(lognormal_sigma(noise.calibration_cv)) if noise.calibration_cv > 0 else 0.0
    sl_new = space.slices()
    idx = _old_index(space, old_space)
    m_ext = np.zeros(space.size)
    c_ext = np.eye(space.size) * sigma_cal**2
    m_ext[idx] = mean
    c_ext[np.ix_(idx, idx)] = cov

    new_model = calibration_model(
        ctx.template, prior, patient.schedule, new, noise, rtol=opts["rtol"], atol=opts["atol"]
    )
    n_new_scans = len(new.scan_times)
    cal_new = np.arange(space.size)[sl_new["log_calibration"]][-n_new_scans:] if sigma_cal else None
    z_sl = sl_new["z"]

    def log_likelihood(u):
        sites = {"z": u[z_sl]}
        if cal_new is not None:
            sites["log_calibration"] = u[cal_new]
        lp, _ = log_density(new_model, (), {}, sites)
        # The new model's density carries the priors of z and of the new calibration factors;
        # the Gaussian already holds them: keep the new data's likelihood only.
        lp = lp - _std_normal_logpdf(sites["z"])
        if cal_new is not None:
            lp = (
                lp
                - _std_normal_logpdf(sites["log_calibration"] / sigma_cal)
                + cal_new.size * math.log(sigma_cal)
            )
        return lp

    with jax.numpy_dtype_promotion("standard"):
        mode, new_cov = gaussian_update(log_likelihood, m_ext, c_ext)
        key = jax.random.key(opts["seed"])
        n = opts["num_samples"]
        u = (
            mode
            + np.asarray(jax.random.normal(key, (n, space.size))) @ np.linalg.cholesky(new_cov).T
        )
        full = calibration_model(
            ctx.template,
            prior,
            patient.schedule,
            allrows,
            noise,
            rtol=opts["rtol"],
            atol=opts["atol"],
        )
        samples = _with_deterministics(
            full, space.unflatten(jnp.asarray(u)), jax.random.fold_in(key, 1)
        )
        approx = _is_check(full, space, u, mode, new_cov, samples, prior.names)
    prov = dict(posterior.provenance, method="laplace (fast sequential update)", seed=opts["seed"])
    return dataclasses.replace(
        posterior,
        method="laplace",
        samples=samples,
        sample_stats={},
        diagnostics=None,
        observed=allrows,
        provenance=prov,
        losses=None,
        gaussian={"mean": mode, "cov": new_cov, "sites": space.sites},
        adaptation=None,
        context=dataclasses.replace(
            ctx, patient=patient, options={**ctx.options, "method": "laplace", "seed": opts["seed"]}
        ),
        approximation=approx,
    )


def _std_normal_logpdf(x):
    return -0.5 * jnp.sum(x**2) - 0.5 * x.size * math.log(2 * math.pi)


def _is_check(full_model, space, u, mode, cov, samples, names) -> dict:
    """PSIS of the Gaussian q against the exact unnormalised posterior on all data."""
    import arviz as az

    @jax.jit
    def log_p(vs):
        return jax.lax.map(lambda v: log_density(full_model, (), {}, space.unflatten(v))[0], vs)

    lp = np.asarray(log_p(jnp.asarray(u)))
    d = u - mode
    prec = np.linalg.inv(cov)
    log_q = -0.5 * np.einsum("ni,ij,nj->n", d, prec, d)
    log_w = np.where(np.isfinite(lp), lp - log_q, -np.inf)
    log_w = log_w - np.max(log_w)
    smoothed, k = az.psislw(log_w.copy())
    w = np.exp(smoothed - np.max(smoothed))
    w = w / w.sum()
    shifts = {}
    for name in (*names, *[s for s in samples if s.startswith("tia_")]):
        x = samples[name].reshape(-1)
        sd = x.std()
        shifts[name] = float(abs(np.sum(w * x) - x.mean()) / sd) if sd > 0 else 0.0
    return {
        "pareto_k": float(k),
        "reliable": bool(k < 0.7),
        "is_efficiency": float(1.0 / np.sum(w**2) / w.size),
        "mean_shift_sd": shifts,
        "max_mean_shift_sd": max(shifts.values()),
        "draws": int(w.size),
    }
