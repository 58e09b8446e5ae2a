"""Simulation-based calibration (SBC): does the NUTS posterior of a twin have the right shape?

For every replication [`simulation_based_calibration`][] draws true parameters from the
population prior, simulates the design's scans with the observation model (lognormal noise and
per-scan calibration factors), fits the same model by NUTS and records the rank of each true
quantity among L thinned posterior draws. If the inference is correct, every rank is uniform on
``{0, ..., L}`` (Talts et al. 2018, "Validating Bayesian inference algorithms with
simulation-based calibration", arXiv:1804.06788). The same holds for any function of parameters
and data (Modrák et al. 2023, "Simulation-based calibration checking for Bayesian computation:
the choice of test quantities shapes sensitivity", Bayesian Analysis, doi:10.1214/23-BA1404), so
besides every inferred parameter the ranks of each region's TIA and of the data log-likelihood
are checked; the log-likelihood is the quantity they found most sensitive to a posterior that is
too narrow or too wide.

Implementation:
- one replication (simulate, warm up, sample, rank) is one pure JAX function of a key, built
  with NumPyro's functional NUTS (`numpyro.infer.hmc.hmc`) on the potential of
  `calibration_model`, which takes the data as an argument: it compiles once for all
  replications, runs one after another (``batch=1``) or `vmap`-ped over `batch` replications;
- chains start at the prior median (z jittered by 0.1 SD, calibration factors at 1), with a
  dense mass matrix adapted in warm-up and forward-mode gradients (as `fit` does);
- replication ``i`` uses the key ``fold_in(key(seed), i)``, so a run split into chunks
  (`start`, `n_replications`) gives the replications of one long run (`SBCResult.concatenate`);
- draws are thinned by `thin` so that the L ranks are close to independent draws (correlated
  draws give a histogram peaked at the ends even for correct inference); `SBCResult.ess` reports
  the effective sample size of the thinned draws, which should be close to L;
- ties (only possible for discrete quantities or rejected ODE solves) are broken at random.

The rank histograms and their chi-square test are in `twinjax.inference._sbc_result`.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from numpyro import handlers
from numpyro.diagnostics import effective_sample_size
from numpyro.infer.hmc import hmc
from numpyro.infer.util import log_density

from .._errors import InputError
from ..imaging.observe import LognormalError, lognormal_sigma
from ..models._simulate import simulate
from ..models.library import Template
from ._sbc_result import SBCResult
from .fit import latent_space
from .model import ATOL, RTOL, Observed, calibration_model
from .priors import PopulationPrior

__all__ = ["SBCResult", "SBCRunner", "simulation_based_calibration"]


def simulation_based_calibration(
    template: Template,
    patient,
    design: Observed,
    noise: LognormalError,
    *,
    n_replications: int = 100,
    start: int = 0,
    progress: bool = False,
    **settings,
) -> SBCResult:
    """Simulation-based calibration of NUTS on `template` for one design (see module docs).

    **Arguments:**
    - `patient`: covariates and schedule shared by the simulated patients.
    - `design`: the scans (its `roi` and `time_h`; its activities are ignored).
    - `noise`: the observation model used to simulate and to fit.
    - `n_replications`, `start`: replications ``start, ..., start + n_replications - 1``.
    - `num_warmup`, `num_samples` (post-warm-up iterations), `thin`: each replication ranks the
      truth among ``L = num_samples // thin`` draws (``L + 1`` possible ranks).
    - `seed`; `names`, `cv`: inferred parameters and prior CVs (as in `fit`).
    - `true_noise`: simulate with this observation model instead of `noise`; `true_prior_shift`:
      ``{parameter: shift}`` draws the true standard-normal coordinate of a parameter from
      ``Normal(shift, 1)``. Both are deliberately misspecified controls: SBC must fail.
    - `batch`: replications vmapped together (1: one after another; more uses wider vector
      operations at the price of running every lane as long as the slowest).
    - `dense_mass`, `target_accept_prob`, `max_tree_depth`: NUTS settings.
    - `alpha`: family-wise level of the uniformity verdict (see `SBCResult`).
    - `rtol`, `atol`: ODE tolerances; `progress`: print one line per batch.

    To run a long study in chunks without compiling again, build an [`SBCRunner`][] once and
    call it per chunk.

    **Returns:** an [`SBCResult`][] with the ranks of every parameter, every design region's TIA
    (``tia_<roi>``) and the data log-likelihood (``log_likelihood``).
    """
    _check_chunk(n_replications, start)
    runner = SBCRunner(template, patient, design, noise, **settings)
    return runner(n_replications=n_replications, start=start, progress=progress)


class SBCRunner:
    """One compiled SBC program for a template, design and settings; calling it runs a chunk of
    replications (``runner(n_replications=25, start=100)``) without compiling again.

    Arguments as [`simulation_based_calibration`][] except `n_replications`, `start` and
    `progress`, which are per call."""

    def __init__(
        self,
        template: Template,
        patient,
        design: Observed,
        noise: LognormalError,
        *,
        num_warmup: int = 200,
        num_samples: int = 200,
        thin: int = 5,
        seed: int = 0,
        names: Sequence[str] | None = None,
        cv: Mapping[str, float] | None = None,
        true_noise: LognormalError | None = None,
        true_prior_shift: Mapping[str, float] | None = None,
        batch: int = 1,
        dense_mass: bool = True,
        target_accept_prob: float = 0.8,
        max_tree_depth: int = 10,
        alpha: float = 0.01,
        rtol: float = RTOL,
        atol: float = ATOL,
    ):
        for field, v, lo in (
            ("num_warmup", num_warmup, 1),
            ("num_samples", num_samples, 1),
            ("thin", thin, 1),
            ("batch", batch, 1),
            ("max_tree_depth", max_tree_depth, 1),
        ):
            if not isinstance(v, int) or isinstance(v, bool) or v < lo:
                raise InputError(f"{field} = {v!r}; allowed: an integer >= {lo}")
        if num_samples // thin < 1:
            raise InputError(f"thin = {thin} exceeds num_samples = {num_samples}; allowed: <= it")
        if not 0.0 < alpha < 1.0:
            raise InputError(f"alpha = {alpha!r}; allowed: a family-wise level in (0, 1)")
        if not 0.0 < target_accept_prob < 1.0:
            raise InputError(f"target_accept_prob = {target_accept_prob!r}; allowed: in (0, 1)")
        prior = PopulationPrior.from_template(template, patient.covariates, names=names, cv=cv)
        shift = np.zeros(prior.dim)
        for name, value in (true_prior_shift or {}).items():
            if name not in prior.names:
                raise InputError(
                    f"true_prior_shift names {name!r}; allowed: inferred parameters {prior.names}"
                )
            shift[prior.names.index(name)] = float(value)
        rois = design.rois
        model = calibration_model(
            template, prior, patient.schedule, design, noise, rois=rois, rtol=rtol, atol=atol
        )
        quantities = (*prior.names, *(f"tia_{r}" for r in rois), "log_likelihood")
        space = latent_space(prior, design, noise)
        simulator = _simulator(
            template, prior, patient.schedule, design, true_noise or noise, space, shift, rtol, atol
        )
        one = _replication(
            model,
            space,
            simulator,
            quantities,
            num_warmup=num_warmup,
            num_draws=num_samples // thin,
            thin=thin,
            dense_mass=dense_mass,
            target_accept_prob=target_accept_prob,
            max_tree_depth=max_tree_depth,
        )
        self._run = jax.jit(one if batch == 1 else jax.vmap(one))

        # Everything that defines the study: chunks join only if these agree
        # (`SBCResult.concatenate`).
        tpl_bytes = template.path.read_bytes() if template.path else b""
        self.settings = dict(
            template=template.name,
            template_sha256=hashlib.sha256(tpl_bytes).hexdigest(),
            parameters=list(prior.names),
            prior_typical=[float(x) for x in np.exp(prior.log_typical)],
            schedule_time_h=[float(x) for x in np.asarray(patient.schedule.time_h)],
            schedule_activity_MBq=[float(x) for x in np.asarray(patient.schedule.activity_MBq)],
            schedule_hot_cold_nmol=[
                [float(h), float(c)]
                for h, c in zip(patient.schedule.hot_nmol, patient.schedule.cold_nmol, strict=True)
            ],
            rois=list(rois),
            design_roi=list(design.roi),
            design_time_h=[float(t) for t in design.time_h],
            rtol=float(rtol),
            atol=float(atol),
            seed=int(seed),
            num_warmup=num_warmup,
            num_samples=num_samples,
            thin=thin,
            dense_mass=dense_mass,
            target_accept_prob=target_accept_prob,
            max_tree_depth=max_tree_depth,
            noise=_noise_dict(noise),
            true_noise=None if true_noise is None else _noise_dict(true_noise),
            true_prior_shift={k: float(v) for k, v in (true_prior_shift or {}).items()},
        )
        self.quantities = quantities
        self.num_draws = num_samples // thin
        self.batch = batch
        self.alpha = alpha
        self._key = jax.random.key(seed)

    def __call__(
        self, *, n_replications: int = 100, start: int = 0, progress: bool = False
    ) -> SBCResult:
        """Replications ``start, ..., start + n_replications - 1`` as an [`SBCResult`][]."""
        _check_chunk(n_replications, start)
        batch, key, run = self.batch, self._key, self._run
        index = np.arange(start, start + n_replications)
        outs = []
        t0 = time.perf_counter()
        # NumPyro mixes integer and float arrays: standard promotion, even under a strict caller.
        with jax.numpy_dtype_promotion("standard"):
            for b in range(0, n_replications, batch):
                idx = index[b : b + batch]
                if batch == 1:
                    out = jax.tree.map(lambda x: np.asarray(x)[None], run(_key(key, idx[0])))
                else:
                    # Pad the last batch to full size (no recompile) and drop the padding.
                    padded = np.concatenate([idx, np.full(batch - len(idx), idx[-1])])
                    keys = jax.vmap(lambda i: jax.random.fold_in(key, i))(jnp.asarray(padded))
                    m = len(idx)
                    out = jax.tree.map(lambda x, m=m: np.asarray(x)[:m], run(keys))
                outs.append(out)
                if progress:
                    elapsed = time.perf_counter() - t0
                    print(f"replications {idx[0]}-{idx[-1]} done ({elapsed:.0f} s)", flush=True)
        ranks, truth, draws, divergences, sim_ok, steps = (
            np.concatenate([o[k] for o in outs]) for k in range(6)
        )
        ess = np.array(
            [
                [float(effective_sample_size(d[None, :, j])) for j in range(d.shape[1])]
                for d in draws
            ]
        )
        q = self.quantities
        return SBCResult(
            quantities=q,
            num_draws=self.num_draws,
            replication=index,
            ranks={n: ranks[:, j] for j, n in enumerate(q)},
            truth={n: truth[:, j] for j, n in enumerate(q)},
            ess={n: ess[:, j] for j, n in enumerate(q)},
            divergences=divergences,
            leapfrog_steps=steps,
            simulation_ok=sim_ok,
            settings=self.settings,
            alpha=self.alpha,
        )


def _check_chunk(n_replications, start):
    for field, v, lo in (("n_replications", n_replications, 1), ("start", start, 0)):
        if not isinstance(v, int) or isinstance(v, bool) or v < lo:
            raise InputError(f"{field} = {v!r}; allowed: an integer >= {lo}")


def _key(key, i):
    return jax.random.fold_in(key, int(i))


def _noise_dict(noise: LognormalError) -> dict:
    return dict(
        cv=dict(noise.cv),
        calibration_cv=noise.calibration_cv,
        detection_limit_MBq=noise.detection_limit_MBq,
    )


def _simulator(template, prior, schedule, design, noise, space, shift, rtol, atol):
    """key -> (true latent vector in the fit's layout, data in `design`'s row order, ok).

    The true z is a prior draw (plus `shift`, a misspecified control); the calibration factors
    are drawn with `noise`'s CV and enter the truth only if the fit models them."""
    scan_index = np.searchsorted(design.scan_times, design.time_h)
    groups = {r: template.roi(r) for r in design.rois}
    n_scans = len(design.scan_times)
    sigma_cal = lognormal_sigma(noise.calibration_cv)
    slices = space.slices()

    def sim(key):
        kz, kc, kn = jax.random.split(key, 3)
        z = jax.random.normal(kz, (prior.dim,)) + jnp.asarray(shift)
        log_cal = sigma_cal * jax.random.normal(kc, (n_scans,))
        params = template.derive({**prior.base, **prior.theta(z)})
        tr = simulate(
            template.model,
            params,
            schedule,
            design.scan_times,
            rtol=rtol,
            atol=atol,
            throw=False,
        )
        cal = jnp.exp(log_cal)
        y = []
        for i, (roi, s) in enumerate(zip(design.roi, scan_index, strict=True)):
            mu = sum(tr.activity(g)[s] for g in groups[roi])
            y.append(noise.sample(jax.random.fold_in(kn, i), roi, mu, calibration=cal[s]))
        y = jnp.stack(y)
        u = jnp.zeros(space.size).at[slices["z"]].set(z)
        if "log_calibration" in slices:
            u = u.at[slices["log_calibration"]].set(log_cal)
        return u, y, tr.success & jnp.all(jnp.isfinite(y) & (y > 0))

    return sim


def _replication(
    model,
    space,
    simulator,
    quantities,
    *,
    num_warmup,
    num_draws,
    thin,
    dense_mass,
    target_accept_prob,
    max_tree_depth,
):
    """key -> (ranks (Q,), true values (Q,), thinned draws (L, Q), divergences, simulation ok,
    leapfrog steps in warm-up and sampling (2,)) of one replication: a pure JAX function."""
    z_slice = space.slices()["z"]

    def potential(y):
        return lambda u: -log_density(model, (y,), {}, space.unflatten(u))[0]

    def values(u, y):
        """Every quantity at latent `u` and data `y`, from the model's own trace, so the truth
        and the draws are computed by one definition."""
        traced = handlers.trace(
            handlers.substitute(handlers.seed(model, 0), data=space.unflatten(u))
        ).get_trace(y)
        out = []
        for q in quantities:
            if q == "log_likelihood":
                site = traced["data"]
                out.append(jnp.sum(site["fn"].log_prob(site["value"])))
            else:
                out.append(jnp.asarray(traced[q]["value"], dtype=float))
        return jnp.stack(out)

    def one(key):
        k_sim, k_init, k_nuts, k_tie = jax.random.split(key, 4)
        u_true, y, sim_ok = simulator(k_sim)
        init_kernel, sample_kernel = hmc(potential_fn_gen=potential, algo="NUTS")
        u0 = jnp.zeros(space.size)
        u0 = u0.at[z_slice].add(0.1 * jax.random.normal(k_init, (z_slice.stop - z_slice.start,)))
        state = init_kernel(
            u0,
            num_warmup,
            dense_mass=dense_mass,
            target_accept_prob=target_accept_prob,
            max_tree_depth=max_tree_depth,
            forward_mode_differentiation=True,
            model_args=(y,),
            rng_key=k_nuts,
        )

        def step(_, carry):
            s, div, steps = carry
            s = sample_kernel(s, model_args=(y,))
            return s, div + s.diverging.astype(int), steps + s.num_steps

        state, _, warm_steps = jax.lax.fori_loop(0, num_warmup, step, (state, 0, 0))

        def draw(carry, _):
            carry = jax.lax.fori_loop(0, thin, step, carry)
            return carry, values(carry[0].z, y)

        (state, divergences, steps), draws = jax.lax.scan(
            draw, (state, 0, 0), None, length=num_draws
        )
        truth = values(u_true, y)
        below = jnp.sum(draws < truth, axis=0)
        ties = jnp.sum(draws == truth, axis=0)
        # Random tie-breaking keeps ranks uniform for discrete quantities (Talts et al. 2018).
        extra = jnp.floor(jax.random.uniform(k_tie, truth.shape) * (ties + 1)).astype(int)
        return below + extra, truth, draws, divergences, sim_ok, jnp.stack([warm_steps, steps])

    return one
