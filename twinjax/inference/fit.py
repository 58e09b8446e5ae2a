"""`fit`: one call from template + patient + data to a [`Posterior`][], by NUTS, SVI, MAP or Laplace.

```python
post = twinjax.fit(template, patient, data, noise=LognormalError({...}, calibration_cv=0.05),
                   method="nuts", num_chains=4)
post.diagnostics.verdict        # "ok" or "warn" (R-hat > 1.01, ESS < 100 per chain, divergences)
post.summary()                  # per parameter: mean, sd, 5/50/95 % quantiles, R-hat, ESS
post.save("twin.nc")            # ArviZ InferenceData (netCDF) with provenance
```

Engines:
- ``"nuts"`` — NumPyro NUTS, multi-chain. Gradients use forward mode through the ODE solver
  (``forward_mode_differentiation=True`` with Diffrax's ``ForwardMode``): PBPK fits have a few
  parameters, where forward mode is cheapest. Chains start at the prior median (z = 0) with a
  small jitter, not NumPyro's default uniform(-2, 2), which strands chains on the steep ridges of
  the likelihood. Chains run in parallel when JAX has at least as many devices as chains (on CPU
  call `numpyro.set_host_device_count(n)` before any JAX computation), else sequentially
  (``chain_method="auto"``). Parallel chains are one compiled program per device, run
  concurrently (`twinjax.inference._chains.on_devices`), not NumPyro's ``pmap``, under which the
  implicit (Kvaerno5) solves of the receptor models fail on JAX 0.10.
- ``"svi"`` — stochastic variational inference with a mean-field (``guide="normal"``), full-rank
  (``"mvn"``) or low-rank (``"lowrank"``) Gaussian guide and an Optax Adam optimiser.
- ``"map"`` — the posterior mode (a point-mass guide optimised with Adam).
- ``"laplace"`` — a Gaussian at the mode with the inverse Hessian as covariance.

MAP and Laplace find the mode with BFGS on forward-mode gradients and polish it with exact Newton
steps (see `_laplace`); the Laplace covariance is the inverse of the forward-over-forward Hessian.
SVI differentiates in reverse mode; the ODE solve inside is still differentiated in forward mode
(`calibration_model` wraps it in `forward_jacobian`), so no reverse adjoint of the solver is needed.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Literal

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import optax
from numpyro.infer import MCMC, NUTS, SVI, Trace_ELBO, autoguide
from numpyro.infer.util import log_density

from .._errors import InputError
from .._files import verify_dataset
from ..imaging.observe import LognormalError
from ..models.library import Template
from ..schedule import Schedule
from . import _checkpoint
from ._chains import on_devices
from ._laplace import LatentSpace, find_mode
from .diagnostics import Diagnostics, diagnose
from .model import ATOL, RTOL, Observed, calibration_model
from .priors import PopulationPrior

__all__ = ["Posterior", "SavedPosterior", "fit", "load_posterior"]


@dataclasses.dataclass(frozen=True)
class _Base:
    base: dict


@dataclasses.dataclass(frozen=True)
class SavedPosterior:
    """A posterior read from its netCDF file ([`load_posterior`][]): the draws of every site,
    the inferred parameter `names`, the `template` name, `provenance`, and `prior.base` (the
    patient's typical values of the parameters that were not inferred). Enough for
    `twinjax.forecast.forecast`; refitting needs the original data and `fit`."""

    template: str
    names: tuple[str, ...]
    samples: dict[str, np.ndarray]
    provenance: dict
    prior: _Base

    def draws(self, name: str) -> np.ndarray:
        """All draws of `name`, chains concatenated."""
        if name not in self.samples:
            raise InputError(f"no site {name!r} in the posterior; known: {sorted(self.samples)}")
        x = self.samples[name]
        return x.reshape((-1,) + x.shape[2:])


def load_posterior(path) -> SavedPosterior:
    """Read a posterior written by `Posterior.save` / `twinjax calibrate` (netCDF).

    **Raises:** `InputError` for a missing or unreadable file, or one without the provenance
    needed to rebuild the draws' parameters (written by an older twinjax: refit).
    """
    from pathlib import Path

    import xarray as xr

    p = Path(path)
    if not p.is_file():
        raise InputError(f"posterior file {str(p)!r} does not exist")
    try:
        post = xr.open_dataset(p, group="posterior").load()
    except Exception as err:
        raise InputError(f"{p.name}: not a twinjax posterior netCDF file ({err})") from None
    # Files written before checksums were stored are read unverified.
    verify_dataset(post, p, "posterior", required=False)
    attrs = {k: (json.loads(v) if isinstance(v, str) and v[:1] in "[{" else v)
             for k, v in post.attrs.items()}  # fmt: skip
    missing = [k for k in ("template", "prior_base", "inferred") if k not in attrs]
    if missing:
        raise InputError(
            f"{p.name}: the posterior lacks {missing} in its provenance (written by an older "
            "twinjax or another tool); refit with this version to forecast from it"
        )
    samples = {k: np.asarray(v.values) for k, v in post.data_vars.items()}
    names = tuple(attrs["inferred"])
    absent = [n for n in names if n not in samples]
    if absent:
        raise InputError(f"{p.name}: no draws of the inferred parameters {absent}")
    return SavedPosterior(
        template=str(attrs["template"]),
        names=names,
        samples=samples,
        provenance=attrs,
        prior=_Base({k: float(v) for k, v in attrs["prior_base"].items()}),
    )


@dataclasses.dataclass(frozen=True)
class FitContext:
    """The inputs of a fit other than the data: what a refit on more data needs."""

    template: Template
    patient: object
    noise: LognormalError
    options: dict


@dataclasses.dataclass
class Posterior:
    """Draws of a fit. `samples[name]` has shape ``(chains, draws, ...)`` (one chain for
    SVI/MAP/Laplace draws). `diagnostics` is ``None`` for optimisation-based methods."""

    method: str
    template: str
    names: tuple[str, ...]
    samples: dict[str, np.ndarray]
    sample_stats: dict[str, np.ndarray]
    diagnostics: Diagnostics | None
    observed: Observed
    provenance: dict
    prior: PopulationPrior = dataclasses.field(repr=False)
    losses: np.ndarray | None = dataclasses.field(default=None, repr=False)
    #: Laplace/MAP: ``{"mean", "cov", "sites"}`` in the flat latent space (cov None for MAP).
    gaussian: dict | None = dataclasses.field(default=None, repr=False)
    #: NUTS: the adapted ``{"step_size", "inverse_mass_matrix", "sites"}`` (for warm starts).
    adaptation: dict | None = dataclasses.field(default=None, repr=False)
    #: What produced it (template, patient, noise, fit options): what `assimilate` refits with.
    context: FitContext | None = dataclasses.field(default=None, repr=False)
    #: Approximation error of a fast sequential update (see `twinjax.inference.assimilate`).
    approximation: dict | None = dataclasses.field(default=None, repr=False)

    @property
    def latent_draws(self) -> np.ndarray:
        """All draws in the flat latent layout (`sites` of `gaussian`/`adaptation`): (n, size)."""
        space = latent_space(self.prior, self.observed, self.context.noise)
        return np.asarray(space.flatten({k: self.draws(k) for k, _ in space.sites}, 1))

    def draws(self, name: str) -> np.ndarray:
        """All draws of `name`, chains concatenated."""
        if name not in self.samples:
            raise InputError(f"no site {name!r} in the posterior; known: {sorted(self.samples)}")
        x = self.samples[name]
        return x.reshape((-1,) + x.shape[2:])

    def summary(self, names: Sequence[str] | None = None) -> dict[str, dict[str, float]]:
        """Mean, sd, 5/50/95 % quantiles (and R-hat, bulk/tail ESS for MCMC) per scalar site."""
        names = names or [*self.names, *[k for k in self.samples if k.startswith("tia_")]]
        out = {}
        for n in names:
            d = self.draws(n)
            row = {
                "mean": float(d.mean()),
                "sd": float(d.std(ddof=1)) if d.size > 1 else 0.0,
                "q5": float(np.quantile(d, 0.05)),
                "q50": float(np.quantile(d, 0.5)),
                "q95": float(np.quantile(d, 0.95)),
            }
            if self.diagnostics is not None and n in self.diagnostics.rhat:
                row.update(
                    rhat=self.diagnostics.rhat[n],
                    ess_bulk=self.diagnostics.ess_bulk[n],
                    ess_tail=self.diagnostics.ess_tail[n],
                )
            out[n] = row
        return out

    def to_inference_data(self):
        """ArviZ `InferenceData` with posterior, sample_stats and observed_data groups."""
        import arviz as az
        import xarray as xr

        idata = az.from_dict(
            posterior={k: v for k, v in self.samples.items()},
            sample_stats=self.sample_stats or None,
            attrs={
                k: json.dumps(v) if not isinstance(v, str) else v
                for k, v in self.provenance.items()
            },
        )
        obs = xr.Dataset(
            {
                "activity_MBq": ("row", self.observed.activity_MBq),
                "time_h": ("row", self.observed.time_h),
                "roi": ("row", np.asarray(self.observed.roi, dtype=str)),
            }
        )
        idata.add_groups(observed_data=obs)
        idata.posterior.attrs.update(
            {k: v if isinstance(v, str) else json.dumps(v) for k, v in self.provenance.items()}
        )
        return idata

    def save(self, path) -> None:
        """Write the posterior as netCDF (ArviZ groups), atomically (temp file + rename), with
        the SHA-256 of every group stored in it ([`twinjax._files.write_netcdf`][]);
        [`load_posterior`][] reads it back for forecasts and verifies the checksums."""
        from .._files import write_netcdf

        write_netcdf(path, self.to_inference_data())


def fit(
    template: Template,
    patient,
    data,
    *,
    noise: LognormalError,
    method: Literal["nuts", "svi", "map", "laplace"] = "nuts",
    names: Sequence[str] | None = None,
    cv: Mapping[str, float] | None = None,
    num_chains: int = 4,
    num_warmup: int = 500,
    num_samples: int = 500,
    svi_steps: int = 2000,
    learning_rate: float = 0.02,
    guide: Literal["normal", "mvn", "lowrank"] = "normal",
    dense_mass: bool = True,
    chain_method: Literal["auto", "parallel", "sequential", "vectorized"] = "auto",
    seed: int = 0,
    progress_bar: bool = False,
    rtol: float = RTOL,
    atol: float = ATOL,
    warm_start: dict | None = None,
    checkpoint: str | os.PathLike | None = None,
    checkpoint_every: int = 100,
) -> Posterior:
    """Personalise `template` to one patient from time-activity data (see module docs).

    **Arguments:**
    - `patient`: an object with `covariates` (dict, canonical units) and `schedule`
      (a `Schedule`), e.g. `twinjax.imaging.io.load_patient(...)`.
    - `data`: measured activities (`Observed`, or any object with `roi`, `time_h`,
      `activity_MBq`, e.g. `TimeActivityData`).
    - `noise`: the observation model (per-region CVs, calibration CV, detection limit).
    - `names`, `cv`: parameters to infer and CVs of their priors (default: the template's
      varying parameters and CVs).
    - MCMC: `num_chains`, `num_warmup`, `num_samples`, `dense_mass`, `chain_method`
      (``"auto"``: parallel when there are enough devices, else sequential); SVI/MAP: `svi_steps`, `learning_rate`,
      `guide`; `seed` for reproducibility; `rtol`, `atol` of the ODE solver.
    - `warm_start`: ``{"u": (num_chains, size) initial positions in the flat latent layout,
      "step_size", "inverse_mass_matrix"}`` (NUTS), or ``{"u": (1, size)}``, the optimiser's
      start (MAP, Laplace), as `assimilate` passes it.
    - `checkpoint`: NUTS only: a file path. The chains then run in chunks of `checkpoint_every`
      iterations per chain (warm-up included), and after each chunk the sampler state, the draws
      so far and a fingerprint of the run are written to this file atomically (temp file +
      rename). If the file exists when `fit` starts, the run resumes from it: a fit killed in the
      middle and started again with the same arguments continues where its last chunk ended and,
      on CPU, returns draws bit-identical to an uninterrupted run with the same `seed` (with or
      without a checkpoint). A file of another run (any other template, data, patient, noise,
      prior, seed, chain, warm-up or draw count, chain method, tolerance, warm start, x64
      setting or JAX/NumPyro/twinjax version) is refused with an `InputError` naming the
      fields that differ, as is a truncated or corrupt one; it is never overwritten. The file
      is kept when the run completes: the same call again returns the stored draws without
      sampling; delete it to sample afresh. Refits by `assimilate` do not checkpoint.
    - `checkpoint_every`: iterations per chain between checkpoints (>= 1). Each chunk writes
      the file with all draws so far. Chunk boundaries do not change the draws, so a run may
      resume with another `checkpoint_every`.

    **Returns:** a [`Posterior`][].
    """
    if method not in ("nuts", "svi", "map", "laplace"):
        raise InputError(f"method = {method!r}; allowed: 'nuts', 'svi', 'map', 'laplace'")
    schedule = getattr(patient, "schedule", None)
    if not isinstance(schedule, Schedule):
        raise InputError("patient.schedule must be a twinjax.Schedule")
    for field, v, lo in (
        ("num_chains", num_chains, 1),
        ("num_warmup", num_warmup, 1),
        ("num_samples", num_samples, 1),
        ("svi_steps", svi_steps, 1),
    ):
        if not isinstance(v, int) or v < lo:
            raise InputError(f"{field} = {v!r}; allowed: an integer >= {lo}")
    if isinstance(checkpoint_every, bool) or not isinstance(checkpoint_every, int):
        raise InputError(f"checkpoint_every = {checkpoint_every!r}; allowed: an integer >= 1")
    if checkpoint_every < 1:
        raise InputError(f"checkpoint_every = {checkpoint_every!r}; allowed: an integer >= 1")
    if checkpoint is not None:
        if method != "nuts":
            raise InputError(
                f"checkpoint = {str(checkpoint)!r} with method = {method!r}; checkpoints are "
                "written by method 'nuts' only (pass checkpoint=None)"
            )
        if not isinstance(checkpoint, str | os.PathLike) or not str(checkpoint):
            raise InputError(f"checkpoint = {checkpoint!r}; allowed: a file path or None")
    observed = data if isinstance(data, Observed) else Observed.from_data(data)
    prior = PopulationPrior.from_template(template, patient.covariates, names=names, cv=cv)
    saved = None
    if checkpoint is not None:
        # Read and verify an existing checkpoint before any computation.
        cm = _chain_method(chain_method, num_chains)
        fp = _checkpoint.fingerprint(
            template=template,
            data_sha256=_provenance(template, observed, seed, method, 0.0, 0)["data_sha256"],
            covariates=patient.covariates,
            schedule=schedule,
            noise=noise,
            names=prior.names,
            cv=cv,
            num_chains=num_chains,
            num_warmup=num_warmup,
            num_samples=num_samples,
            dense_mass=dense_mass,
            chain_method=_checkpoint.chain_mode(cm, num_chains),
            seed=seed,
            rtol=rtol,
            atol=atol,
            warm_start=warm_start,
        )
        path = Path(checkpoint)
        saved = (path, fp, checkpoint_every, _checkpoint.load_matching(path, fp))
    model = calibration_model(template, prior, schedule, observed, noise, rtol=rtol, atol=atol)
    space = latent_space(prior, observed, noise)
    traces = _TraceCounter(model)
    stats, diagnostics, losses, gaussian, adaptation = {}, None, None, None, None
    # NumPyro's samplers mix integer and float arrays internally: run them under JAX's standard
    # type promotion even where a user (or a test suite) has made promotion strict.
    with jax.numpy_dtype_promotion("standard"):
        key = jax.random.key(seed)
        t0 = time.perf_counter()
        if method == "nuts":
            samples, stats, adaptation = _nuts(
                traces,
                space,
                key,
                num_chains,
                num_warmup,
                num_samples,
                dense_mass,
                chain_method,
                progress_bar,
                warm_start,
                saved,
            )
            diagnostics = diagnose(samples, stats, names=(*prior.names,), max_tree_depth=10)
        elif method == "svi":
            samples, losses = _optimise(
                traces, method, guide, svi_steps, learning_rate, num_samples, key, space
            )
        else:
            start = None if warm_start is None else np.asarray(warm_start["u"])[0]
            samples, gaussian = _mode(traces, method, num_samples, key, space, start)
    elapsed = time.perf_counter() - t0
    provenance = _provenance(template, observed, seed, method, elapsed, traces.count)
    # What a reader of the file needs to rebuild the draws' full parameter sets (forecasts).
    provenance["covariates"] = {k: float(v) for k, v in patient.covariates.items()}
    provenance["prior_base"] = {k: float(v) for k, v in prior.base.items()}
    provenance["inferred"] = list(prior.names)
    context = FitContext(
        template,
        patient,
        noise,
        dict(
            method=method,
            names=prior.names,
            cv=cv,
            num_chains=num_chains,
            num_warmup=num_warmup,
            num_samples=num_samples,
            svi_steps=svi_steps,
            learning_rate=learning_rate,
            guide=guide,
            dense_mass=dense_mass,
            chain_method=chain_method,
            seed=seed,
            rtol=rtol,
            atol=atol,
        ),
    )
    return Posterior(
        method,
        template.name,
        prior.names,
        samples,
        stats,
        diagnostics,
        observed,
        provenance,
        prior,
        losses,
        gaussian,
        adaptation,
        context,
    )


def latent_space(prior: PopulationPrior, observed: Observed, noise) -> LatentSpace:
    """Layout of the latent sites of `calibration_model` for this prior, data and noise."""
    sites = {"z": np.zeros(prior.dim)}
    if noise.calibration_cv > 0:
        sites["log_calibration"] = np.zeros(len(observed.scan_times))
    return LatentSpace.of(sites)


def _nuts(
    model,
    space,
    key,
    num_chains,
    num_warmup,
    num_samples,
    dense_mass,
    chain_method,
    progress_bar,
    warm,
    checkpoint=None,
):
    """NUTS with chains started near the prior median, or warm-started from `warm`
    (``{"u": (chains, size) positions, "step_size", "inverse_mass_matrix"}``).

    With `checkpoint` ``(path, fingerprint, every, stored checkpoint or None)`` the chains run
    in chunks of `every` iterations, checkpointed to `path` (see `_checkpoint`); the same kernel,
    keys and initial values, so the same draws as `MCMC.run`."""
    kw = {}
    k_init, k_run = jax.random.split(key)
    if warm is None:
        # Jitter the parameters only: the calibration factors start at 1 (their prior median).
        u0 = jnp.zeros((num_chains, space.size))
        z = space.slices()["z"]
        u0 = u0.at[:, z].set(0.1 * jax.random.normal(k_init, (num_chains, z.stop - z.start)))
    else:
        u0 = jnp.asarray(warm["u"])
        kw = {"step_size": float(warm["step_size"])}
        imm = np.asarray(warm["inverse_mass_matrix"])
        block = jnp.asarray(imm if dense_mass else np.diag(imm))
        kw["inverse_mass_matrix"] = {tuple(n for n, _ in space.sites): block}
    kernel = NUTS(model, forward_mode_differentiation=True, dense_mass=dense_mass, **kw)
    cm = _chain_method(chain_method, num_chains)
    fields = ("diverging", "energy", "num_steps")
    if checkpoint is not None:
        path, fp, every, stored = checkpoint
        samples, extra, last = _checkpoint.run_chunked(
            kernel,
            k_run,
            space.unflatten(u0),
            path=path,
            fp=fp,
            resume=stored,
            num_chains=num_chains,
            num_warmup=num_warmup,
            num_samples=num_samples,
            every=every,
            mode=_checkpoint.chain_mode(cm, num_chains),
            fields=fields,
            progress_bar=progress_bar,
        )
        return _nuts_outputs(samples, extra, last.adapt_state, space, dense_mass)
    mcmc = MCMC(
        kernel,
        num_warmup=num_warmup,
        num_samples=num_samples,
        num_chains=num_chains,
        chain_method=cm,
        progress_bar=progress_bar and not callable(cm),
    )
    init = space.unflatten(u0)
    if num_chains == 1:
        init = {k: v[0] for k, v in init.items()}
    mcmc.run(k_run, init_params=init, extra_fields=fields)
    samples = mcmc.get_samples(group_by_chain=True)
    extra = mcmc.get_extra_fields(group_by_chain=True)
    return _nuts_outputs(samples, extra, mcmc.last_state.adapt_state, space, dense_mass)


def _nuts_outputs(samples, extra, adapt, space, dense_mass):
    """Samples, sample stats and the adaptation (for warm starts) of a NUTS run."""
    samples = {k: np.asarray(v) for k, v in samples.items()}
    stats = {
        "diverging": np.asarray(extra["diverging"]),
        "energy": np.asarray(extra["energy"]),
        "tree_depth": np.log2(np.asarray(extra["num_steps"]) + 1).astype(int),
    }
    # What a warm start of the next fit needs: the adapted step size and (inverse) mass matrix,
    # averaged over chains, in the flat latent layout.
    step = np.asarray(adapt.step_size).reshape(-1)
    imm = adapt.inverse_mass_matrix
    if isinstance(imm, dict):  # {tuple of site names: block}; one block over all sites here
        (key_sites, imm), *rest = imm.items()
        assert not rest and list(key_sites) == [n for n, _ in space.sites], key_sites
    imm = np.asarray(imm)
    imm = imm.reshape((-1, *imm.shape[-(2 if dense_mass else 1) :])).mean(axis=0)
    if not dense_mass:
        imm = np.diag(imm)
    adaptation = {
        "step_size": float(np.exp(np.mean(np.log(step)))),
        "inverse_mass_matrix": imm,
        "sites": space.sites,
    }
    return samples, stats, adaptation


def _chain_method(kind: str, num_chains: int):
    if kind not in ("auto", "parallel", "sequential", "vectorized"):
        raise InputError(
            f"chain_method = {kind!r}; allowed: 'auto', 'parallel', 'sequential', 'vectorized'"
        )
    enough = jax.local_device_count() >= num_chains
    if kind == "parallel" and not enough:
        raise InputError(
            f"chain_method = 'parallel' with num_chains = {num_chains} needs as many devices; JAX "
            f"has {jax.local_device_count()} (on CPU call numpyro.set_host_device_count("
            f"{num_chains}) before JAX starts)"
        )
    if kind == "auto":
        kind = "parallel" if enough and num_chains > 1 else "sequential"
    # Not NumPyro's "parallel" (pmap): under pmap the implicit ODE solvers fail (see _chains.py).
    return on_devices if kind == "parallel" else kind


class _TraceCounter:
    """Counts how often the model is traced (it must not grow with the number of draws)."""

    def __init__(self, model):
        self.model = model
        self.count = 0

    def __call__(self, *args, **kwargs):
        self.count += 1
        return self.model(*args, **kwargs)


def _optimise(model, method, guide_kind, steps, lr, num_samples, key, space):
    init = numpyro.infer.init_to_value(values=space.unflatten(jnp.zeros(space.size)))
    cls = {
        "normal": autoguide.AutoNormal,
        "mvn": autoguide.AutoMultivariateNormal,
        "lowrank": autoguide.AutoLowRankMultivariateNormal,
    }
    if guide_kind not in cls:
        raise InputError(f"guide = {guide_kind!r}; allowed: {sorted(cls)}")
    guide = cls[guide_kind](model, init_loc_fn=init, init_scale=0.1)
    optim = numpyro.optim.optax_to_numpyro(optax.adam(lr))
    svi = SVI(model, guide, optim, Trace_ELBO())
    k_run, k_draw = jax.random.split(key)
    result = svi.run(k_run, steps, progress_bar=False)
    latent = guide.sample_posterior(k_draw, result.params, sample_shape=(num_samples,))
    return _with_deterministics(model, latent, k_draw), np.asarray(result.losses)


def _mode(model, method, num_samples, key, space, start=None):
    """MAP or Laplace in the flat latent space (see `_laplace`). Returns samples and the
    Gaussian ``{"mean", "cov", "sites"}`` (covariance ``None`` for MAP)."""

    def potential(u):
        lp, _ = log_density(model, (), {}, space.unflatten(u))
        return -lp

    mode, h = find_mode(potential, np.zeros(space.size) if start is None else start)
    if method == "map":
        u, cov = mode[None], None
    else:
        cov = np.linalg.inv(h)
        cov = 0.5 * (cov + cov.T)
        eps = np.asarray(jax.random.normal(key, (num_samples, space.size)))
        u = mode + eps @ np.linalg.cholesky(cov).T
    latent = space.unflatten(jnp.asarray(u))
    gaussian = {"mean": mode, "cov": cov, "sites": space.sites}
    return _with_deterministics(model, latent, jax.random.fold_in(key, 1)), gaussian


def _with_deterministics(model, latent, key):
    predictive = numpyro.infer.Predictive(model, posterior_samples=latent)
    draws = {**predictive(key), **latent}
    return {k: np.asarray(v)[None] for k, v in draws.items() if k != "data"}


def _provenance(template: Template, observed: Observed, seed, method, elapsed, traces) -> dict:
    from .. import __version__

    tpl_bytes = template.path.read_bytes() if template.path else b""
    data = np.concatenate([observed.time_h, observed.activity_MBq]).tobytes()
    data += "|".join(observed.roi).encode()
    return {
        "twinjax_version": __version__,
        "template": template.name,
        "template_sha256": hashlib.sha256(tpl_bytes).hexdigest(),
        "data_sha256": hashlib.sha256(data).hexdigest(),
        "seed": int(seed),
        "method": method,
        "wall_time_s": round(elapsed, 3),
        "model_traces": int(traces),
    }
