"""Cohorts: hierarchical population learning, or how a clinic turns its own history into priors.

[`fit_cohort`][] fits many patients jointly with partial pooling. For every inferred parameter p
and patient i

    log theta_ip = log typical_p(covariates_i) + mu_p + omega_p eta_ip,    eta_ip ~ Normal(0, 1),

where typical_p(covariates) is the template's (covariate-adjusted) typical value, ``mu_p`` a shift
of it learned from the cohort, and ``omega_p`` the between-patient log-SD, i.e. a lognormal CV of
``sqrt(exp(omega^2) - 1)``. Hyperpriors: ``mu_p ~ Normal(0, shift_scale)`` and
``omega_p ~ HalfNormal(2 sigma_p)`` with ``sigma_p^2 = ln(1 + cv_p^2)`` from the template's CV
(weakly informative: it allows spreads up to about twice the template's). With ``correlation=True``
the eta of a patient are correlated, ``eta_i = L z_i`` with an LKJ(``lkj_concentration``) prior on
the Cholesky factor L. The parameterisation is non-centred (Betancourt & Girolami 2015,
arXiv:1312.0906), which avoids the funnel between omega and eta when patients are sparsely
measured. Every patient keeps the single-patient observation model: lognormal errors per region
and a latent calibration factor per scan (see `calibration_model`).

```python
cohort = fit_cohort(tpl, patients, data, noise=noise, num_chains=4)
cohort.population()                 # per parameter: learned typical value (shift) and CV
cohort.to_template("clinic.yaml", name="psma617_clinic")   # a template that load_template reads
```

Simulation is batched over patients with `jax.vmap` (patients with schedules of different
structure are simulated in separate batches) and differentiated per patient in forward mode; see
`twinjax.inference._cohort_model`. NumPyro runs under standard dtype promotion and starts its
chains near the template's population (mu = 0, omega at the template's CV, eta = 0, small jitter).
"""

from __future__ import annotations

import dataclasses
import hashlib
import time
from collections.abc import Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from numpyro.infer import MCMC, NUTS

from .._errors import InputError
from ..imaging.observe import LognormalError
from ..models.library import Template
from ..schedule import Schedule
from . import _cohort_output
from ._cohort_model import CohortLayout, cohort_model
from .diagnostics import Diagnostics, diagnose
from .fit import _chain_method, _TraceCounter
from .model import ATOL, RTOL, Observed, calibration_model
from .priors import PopulationPrior

__all__ = ["CohortPosterior", "fit_cohort"]


@dataclasses.dataclass
class CohortPosterior:
    """Draws of a cohort fit. `samples[site]` has shape ``(chains, draws, ...)``: ``mu`` and
    ``omega`` ``(.., D)``, ``eta`` ``(.., P, D)``, every parameter by name and ``tia_<roi>``
    ``(.., P)`` (P patients in the order given, D parameters in the order of `names`)."""

    template: Template = dataclasses.field(repr=False)
    names: tuple[str, ...]
    patient_ids: tuple[str, ...]
    samples: dict[str, np.ndarray] = dataclasses.field(repr=False)
    sample_stats: dict[str, np.ndarray] = dataclasses.field(repr=False)
    diagnostics: Diagnostics
    provenance: dict
    #: (P, D) log covariate-adjusted typical values of the template, per patient.
    log_typical: np.ndarray = dataclasses.field(repr=False)

    def draws(self, name: str) -> np.ndarray:
        """All draws of site `name`, chains concatenated: ``(n, ...)``."""
        if name not in self.samples:
            raise InputError(f"no site {name!r} in the posterior; known: {sorted(self.samples)}")
        x = self.samples[name]
        return x.reshape((-1, *x.shape[2:]))

    def population(self) -> dict[str, dict[str, float]]:
        """Per parameter: the learned typical value (``typical``: the template's default typical
        value times ``factor`` = exp(mu); canonical units), the factor and the between-patient
        CV, each as posterior median (``q50``) with 5 % and 95 % quantiles."""
        return _cohort_output.population(self)

    def patient(self, patient: int | str) -> dict[str, np.ndarray]:
        """Draws of one patient's parameters and TIAs (by position or id)."""
        i = _cohort_output.patient_index(self, patient)
        return {
            k: self.draws(k)[:, i]
            for k in (*self.names, *(k for k in self.samples if k.startswith("tia_")))
        }

    def to_template(self, path, *, name: str | None = None, title: str | None = None) -> Template:
        """Write the learned population as a template YAML (atomically) and return it loaded.

        The template is the fitted one with, for every learned parameter, `value` = posterior
        median typical value, `cv` = posterior median between-patient CV, a `source` saying
        how it was learned (twinjax version, date, number of patients, data hash), and any
        covariate formula multiplied by the learned factor exp(mu) (the covariate model is
        kept). `PopulationPrior.from_template` of it is the learned prior (to 6 digits).
        """
        return _cohort_output.write_template(self, path, name=name, title=title)

    def to_inference_data(self):
        """ArviZ `InferenceData` (posterior with ``patient``/``parameter`` dims, sample_stats)."""
        return _cohort_output.inference_data(self)

    def save(self, path) -> None:
        """Write the posterior as netCDF (ArviZ groups), atomically (temp file + rename)."""
        _cohort_output.save_netcdf(self, path)


def fit_cohort(
    template: Template,
    patients: Sequence,
    data: Sequence,
    *,
    noise: LognormalError,
    names: Sequence[str] | None = None,
    cv: Mapping[str, float] | None = None,
    method: str = "nuts",
    shift_scale: float = 1.0,
    correlation: bool = False,
    lkj_concentration: float = 2.0,
    num_chains: int = 4,
    num_warmup: int = 500,
    num_samples: int = 500,
    dense_mass: bool = False,
    chain_method: str = "auto",
    seed: int = 0,
    progress_bar: bool = False,
    rtol: float = RTOL,
    atol: float = ATOL,
    max_steps: int = 8192,
) -> CohortPosterior:
    """Learn a population from many patients (see module docs).

    **Arguments:**
    - `patients`: objects with `covariates` (dict, canonical units) and `schedule` (a
      `Schedule`), e.g. from `twinjax.imaging.io.load_patient`; an optional `patient_id` names them.
    - `data`: one `Observed` (or `TimeActivityData`) per patient, in the same order.
    - `noise`: the observation model (per-region CVs, calibration CV, detection limit).
    - `names`, `cv`: parameters to learn and the CVs that set their omega hyperpriors (default:
      the template's varying parameters and CVs).
    - `method`: ``"nuts"`` (the only engine: optimisation collapses omega to 0 in hierarchical
      models). `shift_scale`: prior SD of the log shifts mu. `correlation`,
      `lkj_concentration`: correlated eta with an LKJ prior.
    - MCMC: `num_chains`, `num_warmup`, `num_samples`, `dense_mass`, `chain_method`, `seed`,
      `progress_bar`; ODE solver: `rtol`, `atol`, `max_steps`.

    **Returns:** a [`CohortPosterior`][].
    """
    names, bases, observed, ids = _check_inputs(
        template, patients, data, noise, names, cv, method, shift_scale, lkj_concentration
    )
    for field, v in (
        ("num_chains", num_chains),
        ("num_warmup", num_warmup),
        ("num_samples", num_samples),
    ):
        if not isinstance(v, int) or v < 1:
            raise InputError(f"{field} = {v!r}; allowed: an integer >= 1")
    cm = _chain_method(chain_method, num_chains)
    cvs = {**template.cv, **(cv or {})}
    sigma = np.sqrt(np.log1p(np.array([cvs[n] for n in names]) ** 2))
    layout = CohortLayout.build(template, names, bases, [p.schedule for p in patients], observed)
    model = _TraceCounter(
        cohort_model(
            template,
            layout,
            noise,
            shift_scale=float(shift_scale),
            omega_scale=2.0 * sigma,
            correlation=correlation,
            lkj_concentration=float(lkj_concentration),
            rtol=rtol,
            atol=atol,
            max_steps=max_steps,
        )
    )
    n_p, d = layout.log_typical.shape
    t0 = time.perf_counter()
    # NumPyro's samplers mix integer and float arrays internally: standard promotion (see fit).
    with jax.numpy_dtype_promotion("standard"):
        k_init, k_run = jax.random.split(jax.random.key(seed))
        k = jax.random.split(k_init, 3)
        # Unconstrained initial values: near the template's population, not uniform(-2, 2),
        # which puts omega anywhere in exp(+-2) and eta far out in the tails.
        init = {
            "mu": 0.1 * jax.random.normal(k[0], (num_chains, d)),
            "omega": jnp.log(sigma) + 0.1 * jax.random.normal(k[1], (num_chains, d)),
            "eta": 0.1 * jax.random.normal(k[2], (num_chains, n_p, d)),
        }
        if noise.calibration_cv > 0:
            init["calibration_z"] = jnp.zeros((num_chains, layout.n_scans))
        if correlation:
            init["corr_chol"] = jnp.zeros((num_chains, d * (d - 1) // 2))
        if num_chains == 1:
            init = {key: v[0] for key, v in init.items()}
        mcmc = MCMC(
            NUTS(model, dense_mass=dense_mass),
            num_warmup=num_warmup,
            num_samples=num_samples,
            num_chains=num_chains,
            chain_method=cm,
            progress_bar=progress_bar and not callable(cm),
        )
        mcmc.run(k_run, init_params=init, extra_fields=("diverging", "energy", "num_steps"))
    samples = {k: np.asarray(v) for k, v in mcmc.get_samples(group_by_chain=True).items()}
    samples.pop("calibration_z", None)  # nuisance: kept out of the stored posterior
    extra = mcmc.get_extra_fields(group_by_chain=True)
    stats = {
        "diverging": np.asarray(extra["diverging"]),
        "energy": np.asarray(extra["energy"]),
        "tree_depth": np.log2(np.asarray(extra["num_steps"]) + 1).astype(int),
    }
    elapsed = time.perf_counter() - t0
    scalars = _scalar_sites(samples, names, ids)
    diagnostics = diagnose(
        {**scalars, "ode_ok": samples["ode_ok"]}, stats, names=tuple(scalars), max_tree_depth=10
    )
    provenance = _provenance(
        template, observed, seed, elapsed, model.count, num_chains, num_warmup, num_samples
    )
    return CohortPosterior(
        template, names, ids, samples, stats, diagnostics, provenance, layout.log_typical
    )


def _check_inputs(template, patients, data, noise, names, cv, method, shift_scale, lkj):
    """Validate everything before any solve; returns names, per-patient typical parameters,
    observed data and patient ids."""
    if method != "nuts":
        raise InputError(f"method = {method!r}; allowed: 'nuts'")
    if not isinstance(noise, LognormalError):
        raise InputError(f"noise must be a LognormalError, got {type(noise).__name__}")
    for field, v in (("shift_scale", shift_scale), ("lkj_concentration", lkj)):
        if not (isinstance(v, int | float) and np.isfinite(v) and v > 0):
            raise InputError(f"{field} = {v!r}; allowed: a finite value > 0")
    patients, data = list(patients), list(data)
    if len(patients) != len(data):
        raise InputError(
            f"patients ({len(patients)}) and data ({len(data)}) have different lengths; allowed: "
            "one data set per patient, in the same order"
        )
    if len(patients) < 2:
        raise InputError(
            f"patients has {len(patients)} entries; allowed: at least 2 (a population spread "
            "needs several patients; fit one patient with twinjax.fit)"
        )
    known = set(template.spec.parameters)
    for n in names or ():
        if n not in known:
            raise InputError(
                f"names: {n!r} is not a parameter of template {template.name!r}; "
                f"allowed: {', '.join(sorted(known))}"
            )
    bases, observed, ids = [], [], []
    for i, (p, y) in enumerate(zip(patients, data, strict=True)):
        pid = str(getattr(p, "patient_id", None) or f"patient_{i}")
        where = f"patients[{i}] ({pid})"
        if not isinstance(getattr(p, "schedule", None), Schedule):
            raise InputError(f"{where}: schedule must be a twinjax.Schedule")
        if not isinstance(getattr(p, "covariates", None), Mapping):
            raise InputError(f"{where}: covariates must be a mapping of name -> value")
        try:
            obs = y if isinstance(y, Observed) else Observed.from_data(y)
            prior = PopulationPrior.from_template(template, p.covariates, names=names, cv=cv)
            # Building the single-patient model (no tracing) runs its data checks: regions
            # known to the template and the noise model, scans after the first administration,
            # activities below the administered activity.
            calibration_model(template, prior, p.schedule, obs, noise)
        except InputError as err:
            raise InputError(f"{where}: {err}") from None
        except AttributeError:
            raise InputError(
                f"data[{i}] ({pid}): expected Observed or an object with roi, time_h and "
                f"activity_MBq, got {type(y).__name__}"
            ) from None
        bases.append(prior.base)
        observed.append(obs)
        ids.append(pid)
    if len(set(ids)) != len(ids):
        ids = [f"{pid}#{i}" for i, pid in enumerate(ids)]
    return prior.names, bases, observed, tuple(ids)


def _scalar_sites(samples, names, ids) -> dict[str, np.ndarray]:
    """``(chains, draws)`` arrays for the diagnostics: hyperparameters and patient parameters."""
    out = {}
    for j, n in enumerate(names):
        out[f"mu_{n}"] = samples["mu"][..., j]
        out[f"omega_{n}"] = samples["omega"][..., j]
    for n in names:
        for i, pid in enumerate(ids):
            out[f"{n}[{pid}]"] = samples[n][..., i]
    return out


def data_sha256(observed: Sequence[Observed]) -> str:
    """SHA-256 of a cohort's data (times, activities, regions; patients in order)."""
    h = hashlib.sha256()
    for o in observed:
        h.update(np.concatenate([o.time_h, o.activity_MBq]).tobytes())
        h.update("|".join(o.roi).encode() + b"\n")
    return h.hexdigest()


def _provenance(template, observed, seed, elapsed, traces, chains, warmup, draws) -> dict:
    from .. import __version__

    tpl_bytes = template.path.read_bytes() if template.path else b""
    return {
        "twinjax_version": __version__,
        "template": template.name,
        "template_sha256": hashlib.sha256(tpl_bytes).hexdigest(),
        "data_sha256": data_sha256(observed),
        "n_patients": len(observed),
        "seed": int(seed),
        "method": "nuts",
        "num_chains": int(chains),
        "num_warmup": int(warmup),
        "num_samples": int(draws),
        "wall_time_s": round(elapsed, 3),
        "model_traces": int(traces),
    }
