"""NUTS benchmark: twinjax (`twinjax.fit(..., method="nuts")`, NumPyro) vs Stan (PyStan 3), on the
same model and the same data, side by side in one run.

Model: a linear compartmental model of a Lu-177 radioligand (blood, kidneys, tumour, urine;
first-order transfers k_bk, k_kb, k_bt, k_tb and renal clearance CL / V into urine; physical decay
lambda = ln 2 / (6.647 d) everywhere), one 7400 MBq bolus into blood at t = 0. Inferred: CL, k_bk,
k_bt, k_kb with lognormal population priors, non-centred (z ~ N(0, 1), theta = typical *
exp(sigma z)); a lognormal calibration factor per scan (CV 5 %, shared by the regions of a scan);
lognormal measurement error per region (CV 12 % kidneys, 18 % tumour, 8 % whole body). One patient,
scans at 4, 24, 48, 96 h, simulated from known parameters with a fixed seed. twinjax solves the
linear system with its exact matrix-exponential path; the Stan program below writes the same model
with `matrix_exp` and the exact TIA to infinity (-K^-1 b), so both sides have the same log density
(checked at 5 unconstrained points before sampling: the difference must be constant; both sides
keep all normalising constants, so it is ~0).

Printed: Stan compile time (model build; the cached build is deleted first, so it is a cold build)
and sampling time; twinjax compile time (trace + lowering + XLA compile inside the fit: the union of
the spans JAX reports through `jax.monitoring`; a second `fit` of the same shapes compiles again,
since its log density is a new closure, so first-vs-second fit timing cannot separate it) and the
rest of its wall time; the minimum bulk ESS over the compared quantities (ArviZ on both sides), ESS
per second, the ratios twinjax/Stan; the cost of one twinjax log density + gradient; and whether
the posterior means of every inferred quantity (4 parameters, 4 calibration factors, kidney TIA)
agree within 3 Monte-Carlo standard errors (ArviZ `mcse(method="mean")` of both sides combined in
quadrature). Exits with status 1 if the log densities or any posterior mean disagree.

Samplers: Stan's `hmc_nuts_diag_e_adapt` (the only metric PyStan 3 exposes) from Stan's default
inits; twinjax NUTS with its default dense mass matrix (`--twinjax-mass diag` to match Stan), chains
started near z = 0. twinjax chains run in parallel on host CPU devices
(`numpyro.set_host_device_count`, called below before JAX starts); Stan chains run in httpstan's
worker processes (one per core). Timings assume an otherwise idle machine: the load average is
printed.

PyStan is not a twinjax dependency; use a separate environment:

    python3 -m venv /work/venv-stan && /work/venv-stan/bin/pip install -e . pystan
    /work/venv-stan/bin/python benchmarks/nuts_vs_stan.py          # 4 chains, 1000 + 1000
    /work/venv-stan/bin/python benchmarks/nuts_vs_stan.py --quick  # 2 chains, 300 + 300
"""

from __future__ import annotations

import numpyro

# Before JAX creates its CPU backend: one host device per chain, so that `fit` runs chains in
# parallel (it falls back to sequential chains when there are fewer devices than chains).
MAX_CHAINS = 4
numpyro.set_host_device_count(MAX_CHAINS)

import argparse  # noqa: E402
import contextlib  # noqa: E402
import math  # noqa: E402
import os  # noqa: E402
import platform  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from importlib.metadata import version  # noqa: E402
from pathlib import Path  # noqa: E402

import arviz as az  # noqa: E402
import httpstan  # noqa: E402
import httpstan.cache  # noqa: E402
import httpstan.models  # noqa: E402
import httpstan.services_stub  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import stan  # noqa: E402
import yaml  # noqa: E402
from numpyro.infer.util import log_density  # noqa: E402

import twinjax  # noqa: E402
from twinjax.imaging import Patient  # noqa: E402
from twinjax.imaging.observe import LognormalError, lognormal_sigma  # noqa: E402
from twinjax.inference import Observed, PopulationPrior  # noqa: E402
from twinjax.inference.model import calibration_model  # noqa: E402

# The template of tests/conftest.py: blood <-> kidneys, blood <-> tumour, blood -> urine.
TEMPLATE = {
    "schema": "twinjax.template/1",
    "name": "bench_linear",
    "title": "four-compartment linear radioligand model (benchmark)",
    "kind": "compartmental",
    "nuclide": "Lu-177",
    "references": {"bench": "synthetic benchmark model"},
    "model": {
        "kind": "compartmental",
        "compartments": ["blood", "kidneys", "tumour", "urine"],
        "dose": "blood",
        "excreta": ["urine"],
        "transfers": [
            {"from": "blood", "to": "kidneys", "rate": "k_bk"},
            {"from": "kidneys", "to": "blood", "rate": "k_kb"},
            {"from": "blood", "to": "tumour", "rate": "k_bt"},
            {"from": "tumour", "to": "blood", "rate": "k_tb"},
            {"from": "blood", "to": "urine", "rate": "CL / V"},
        ],
        "groups": {"whole_body": ["blood", "kidneys", "tumour"]},
    },
    "parameters": {
        "k_bk": {"value": 0.05, "unit": "1/h", "cv": 0.4, "source": "synthetic"},
        "k_kb": {"value": 0.03, "unit": "1/h", "cv": 0.4, "source": "synthetic"},
        "k_bt": {"value": 0.02, "unit": "1/h", "cv": 0.5, "source": "synthetic"},
        "k_tb": {"value": 0.01, "unit": "1/h", "source": "synthetic"},
        "CL": {"value": 3.0, "unit": "L/h", "cv": 0.3, "source": "synthetic"},
        "V": {"value": 10.0, "unit": "L", "source": "synthetic"},
    },
    "covariates": {"CL": "egfr_L_per_h * 0.5"},
}
NAMES = ("CL", "k_bk", "k_bt", "k_kb")  # inferred, in the prior's (sorted) order
ROIS = ("kidneys", "tumour", "whole_body")
NOISE = LognormalError({"kidneys": 0.12, "tumour": 0.18, "whole_body": 0.08}, calibration_cv=0.05)
TIMES = np.array([4.0, 24.0, 48.0, 96.0])
ACTIVITY_MBQ = 7400.0
Z_TRUE = np.array([0.8, -0.6, 0.5, -0.9])  # CL, k_bk, k_bt, k_kb
DATA_SEED = 2026

STAN_PROGRAM = """
functions {
  // K = A - lambda I (1/h) for the activities (MBq) of blood, kidneys, tumour, urine:
  // first-order transfers A[to, from] and physical decay in every compartment.
  matrix system_matrix(vector theta, real V, real k_tb, real lambda) {
    real CL = theta[1];
    real k_bk = theta[2];
    real k_bt = theta[3];
    real k_kb = theta[4];
    matrix[4, 4] K = rep_matrix(0, 4, 4);
    K[1, 1] = -(k_bk + k_bt + CL / V) - lambda;
    K[2, 1] = k_bk;
    K[3, 1] = k_bt;
    K[4, 1] = CL / V;
    K[1, 2] = k_kb;
    K[2, 2] = -k_kb - lambda;
    K[1, 3] = k_tb;
    K[3, 3] = -k_tb - lambda;
    K[4, 4] = -lambda;
    return K;
  }
}
data {
  int<lower=1> S;                  // scans
  vector<lower=0>[S] t;            // scan times (h after the bolus)
  array[S] vector<lower=0>[3] y;   // measured activities (MBq): kidneys, tumour, whole body
  real<lower=0> dose;              // bolus into blood at t = 0 (MBq)
  real<lower=0> lambda;            // physical decay constant (1/h)
  vector[4] log_typical;           // typical CL, k_bk, k_bt, k_kb (log)
  vector<lower=0>[4] sigma_theta;  // log-scale SDs of the population prior
  real<lower=0> V;                 // blood volume (L)
  real<lower=0> k_tb;              // tumour -> blood (1/h)
  real<lower=0> sigma_cal;         // log-scale SD of a scan's calibration factor
  vector<lower=0>[3] sigma_y;      // log-scale SDs of the measurement error per region
}
transformed data {
  vector[4] b = [dose, 0, 0, 0]';
}
parameters {
  vector[4] z;
  vector[S] log_calibration;
}
transformed parameters {
  vector[4] theta = exp(log_typical + sigma_theta .* z);
}
model {
  matrix[4, 4] K = system_matrix(theta, V, k_tb, lambda);
  // Full (normalised) densities, as NumPyro's: the two log densities should agree exactly.
  target += std_normal_lpdf(z);
  target += normal_lpdf(log_calibration | 0, sigma_cal);
  for (s in 1:S) {
    vector[4] a = matrix_exp(K * t[s]) * b;
    vector[3] mu = [a[2], a[3], a[1] + a[2] + a[3]]';
    target += lognormal_lpdf(y[s] | log(mu) + log_calibration[s], sigma_y);
  }
}
generated quantities {
  real CL = theta[1];
  real k_bk = theta[2];
  real k_bt = theta[3];
  real k_kb = theta[4];
  // TIA to infinity (MBq h): integral over [0, inf) of exp(K s) b ds = -K^-1 b.
  real tia_kidneys = -mdivide_left(system_matrix(theta, V, k_tb, lambda), b)[2];
}
"""


class CompileClock:
    """Total time JAX spends tracing, lowering and compiling while active: the union of the
    time spans it reports through `jax.monitoring` (nested spans are counted once)."""

    EVENTS = (
        "/jax/core/compile/jaxpr_trace_duration",
        "/jax/core/compile/jaxpr_to_mlir_module_duration",
        "/jax/core/compile/backend_compile_duration",
    )

    def __init__(self):
        self.spans: list[tuple[float, float]] = []
        self.active = False
        jax.monitoring.register_event_time_span_listener(self._record)

    def _record(self, event, start, end, **_):
        if self.active and event in self.EVENTS:
            self.spans.append((start, end))

    def __enter__(self):
        self.spans.clear()
        self.active = True
        return self

    def __exit__(self, *exc):
        self.active = False

    @property
    def seconds(self) -> float:
        total, cur = 0.0, None
        for s, e in sorted(self.spans):
            if cur is not None and s <= cur[1]:
                cur = (cur[0], max(cur[1], e))
            else:
                total += 0.0 if cur is None else cur[1] - cur[0]
                cur = (s, e)
        return total + (0.0 if cur is None else cur[1] - cur[0])


def simulate_patient(tpl, patient, prior):
    """Measured activities of one virtual patient with known parameters (fixed seed)."""
    truth = {k: float(v) for k, v in prior.theta(jnp.asarray(Z_TRUE)).items()}
    traj = twinjax.simulate(tpl.model, tpl.derive({**prior.base, **truth}), patient.schedule, TIMES)
    rng = np.random.default_rng(DATA_SEED)
    sigma_cal = float(lognormal_sigma(NOISE.calibration_cv))
    log_cal = sigma_cal * rng.standard_normal(len(TIMES))
    rows = []
    for roi in ROIS:
        mu = np.asarray(traj.activity(roi)) * np.exp(log_cal)
        y = mu * np.exp(float(NOISE.sigma(roi)) * rng.standard_normal(len(TIMES)))
        rows += [(roi, t, v) for t, v in zip(TIMES, y, strict=True)]
    obs = Observed(
        tuple(r[0] for r in rows), np.array([r[1] for r in rows]), np.array([r[2] for r in rows])
    )
    truth["tia_kidneys"] = float(traj.tia("kidneys"))
    return obs, truth, log_cal


def stan_data(prior, patient, obs):
    """The Stan program's data, from the same prior, schedule and measurements as twinjax's."""
    assert prior.names == NAMES, prior.names
    tril = np.asarray(prior.scale_tril)
    assert np.allclose(tril, np.diag(np.diag(tril))), "the Stan program assumes no correlation"
    y = [[0.0] * len(ROIS) for _ in TIMES]
    for roi, t, v in zip(obs.roi, obs.time_h, obs.activity_MBq, strict=True):
        y[int(np.flatnonzero(TIMES == t)[0])][ROIS.index(roi)] = float(v)
    sched = patient.schedule
    return {
        "S": len(TIMES),
        "t": TIMES.tolist(),
        "y": y,
        "dose": float(sched.hot_nmol[0] * sched.mbq_per_nmol),
        "lambda": float(sched.decay_constant_per_h),
        "log_typical": np.asarray(prior.log_typical).tolist(),
        "sigma_theta": np.diag(tril).tolist(),
        "V": float(prior.base["V"]),
        "k_tb": float(prior.base["k_tb"]),
        "sigma_cal": float(lognormal_sigma(NOISE.calibration_cv)),
        "sigma_y": [float(NOISE.sigma(r)) for r in ROIS],
    }


def split(ds, names, lead):
    """{label: array} per scalar of the variables `names` of an xarray Dataset whose first `lead`
    dimensions are (chain, draw) (2 for a posterior, 0 for ArviZ statistics); vectors are split
    into ``name[i]``."""
    out = {}
    for n in names:
        v = np.asarray(ds[n].values)
        if v.ndim == lead:
            out[n] = v
        else:
            out.update({f"{n}[{i}]": v[..., i] for i in range(v.shape[-1])})
    return out


def gradient_cost_us(model) -> float:
    """Time (us) of one log density + gradient evaluation, jit-compiled, forward mode (as NUTS
    with ``forward_mode_differentiation=True`` evaluates it); best of 20 batches of 50 calls."""

    def logp(u):
        return log_density(model, (), {}, {"z": u[:4], "log_calibration": u[4:]})[0]

    f = jax.jit(lambda u: (logp(u), jax.jacfwd(logp)(u)))
    u = jnp.full(8, 0.1)
    jax.block_until_ready(f(u))
    best = math.inf
    for _ in range(20):
        t0 = time.perf_counter()
        for _ in range(50):
            out = f(u)
        jax.block_until_ready(out)
        best = min(best, (time.perf_counter() - t0) / 50)
    return 1e6 * best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="2 chains, 300 warmup + 300 draws")
    ap.add_argument("--seed", type=int, default=1, help="sampler seed (both sides)")
    ap.add_argument(
        "--twinjax-mass",
        choices=("dense", "diag"),
        default="dense",
        help="twinjax mass matrix (dense: twinjax's default; diag: as Stan's diag_e)",
    )
    args = ap.parse_args()
    chains, warmup, draws = (2, 300, 300) if args.quick else (4, 1000, 1000)
    assert chains <= MAX_CHAINS

    # httpstan runs chains in a fork-based process pool. Fork its workers now, before JAX starts
    # its threads (forking a multithreaded JAX process can deadlock, and JAX warns about it).
    httpstan.services_stub.executor.submit(os.getpid).result()

    # ---------------------------------------------------------------- model and data
    tmp = Path(tempfile.mkdtemp(prefix="nuts_vs_stan_"))
    (tmp / "bench_linear.yaml").write_text(yaml.safe_dump(TEMPLATE))
    tpl = twinjax.load_template(tmp / "bench_linear.yaml")
    patient = Patient.virtual({"egfr_L_per_h": 5.4}, twinjax.Schedule.single(ACTIVITY_MBQ))
    prior = PopulationPrior.from_template(tpl, patient.covariates)
    obs, truth, log_cal_true = simulate_patient(tpl, patient, prior)
    data = stan_data(prior, patient, obs)
    compared = [*NAMES, "log_calibration", "tia_kidneys"]
    load_before = os.getloadavg()[0]

    # ---------------------------------------------------------------- Stan: cold build, sample
    model_name = httpstan.models.calculate_model_name(STAN_PROGRAM)
    httpstan.cache.delete_model_directory(model_name)  # a cold build (and no cached fits)
    t0 = time.perf_counter()
    with contextlib.chdir(tmp):  # httpstan's setuptools build writes build/ into the cwd
        sm = stan.build(STAN_PROGRAM, data=data, random_seed=args.seed)
    t_stan_compile = time.perf_counter() - t0
    t0 = time.perf_counter()
    sfit = sm.sample(num_chains=chains, num_warmup=warmup, num_samples=draws)
    t_stan_sample = time.perf_counter() - t0
    idata_stan = az.from_pystan(posterior=sfit, posterior_model=sm)

    # ---------------------------------------------------------------- log densities agree
    jmodel = calibration_model(tpl, prior, patient.schedule, obs, NOISE, adjoint="forward")
    rng = np.random.default_rng(0)
    diffs = []
    for k in range(5):
        u = np.zeros(8) if k == 0 else 0.7 * rng.standard_normal(8)
        lp_jax = float(
            log_density(jmodel, (), {}, {"z": jnp.asarray(u[:4]), "log_calibration": u[4:]})[0]
        )
        lp_stan = float(sm.log_prob(u.tolist(), adjust_transform=True))
        diffs.append((lp_jax, lp_stan, lp_jax - lp_stan))
    spread = max(d[2] for d in diffs) - min(d[2] for d in diffs)
    density_ok = spread < 1e-8 * max(1.0, max(abs(d[0]) for d in diffs))

    # ---------------------------------------------------------------- twinjax
    clock = CompileClock()
    t0 = time.perf_counter()
    with clock:
        post = twinjax.fit(
            tpl,
            patient,
            obs,
            noise=NOISE,
            method="nuts",
            num_chains=chains,
            num_warmup=warmup,
            num_samples=draws,
            dense_mass=args.twinjax_mass == "dense",
            seed=args.seed,
        )
    t_jax_wall = time.perf_counter() - t0
    t_jax_compile = clock.seconds
    t_jax_sample = t_jax_wall - t_jax_compile
    chain_method = "parallel" if jax.local_device_count() >= chains else "sequential"
    grad_us = gradient_cost_us(jmodel)
    idata_jax = az.from_dict(posterior={n: post.samples[n] for n in compared})

    # ---------------------------------------------------------------- ESS, MCSE, comparison
    mean, mcse, ess = {}, {}, {}
    for side, idata in (("twinjax", idata_jax), ("stan", idata_stan)):
        mean[side] = {k: float(v.mean()) for k, v in split(idata.posterior, compared, 2).items()}
        mcse[side] = split(az.mcse(idata, var_names=compared, method="mean"), compared, 0)
        ess[side] = split(az.ess(idata, var_names=compared, method="bulk"), compared, 0)
    labels = list(mean["twinjax"])
    min_ess = {
        s: min(((k, float(v)) for k, v in e.items()), key=lambda kv: kv[1]) for s, e in ess.items()
    }
    div_stan = int(idata_stan.sample_stats["diverging"].values.sum())
    rhat_stan = float(az.rhat(idata_stan, var_names=compared).to_array().max())
    rhat_jax = float(az.rhat(idata_jax, var_names=compared).to_array().max())
    depth_stan = float(idata_stan.sample_stats["tree_depth"].values.mean())
    depth_jax = float(post.sample_stats["tree_depth"].mean())

    # ---------------------------------------------------------------- report
    print()
    print(
        "NUTS benchmark: twinjax (NumPyro) vs Stan (PyStan 3), same model and data: linear "
        "4-compartment Lu-177 model, 7400 MBq bolus, 4 scans x 3 regions, "
        f"{len(NAMES)} parameters + {len(TIMES)} calibration factors"
    )
    print(
        f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"jax {jax.__version__} on {jax.devices()[0].platform} ({jax.local_device_count()} host "
        f"devices), numpyro {numpyro.__version__}, pystan {version('pystan')} / "
        f"httpstan {httpstan.__version__}, arviz {az.__version__}"
    )
    print(
        f"sampling: {chains} chains x ({warmup} warmup + {draws} draws), seed {args.seed}; "
        f"twinjax {args.twinjax_mass} mass matrix, chains {chain_method}; Stan diag_e, chains in "
        f"httpstan worker processes (up to {os.cpu_count()} at once)"
    )
    print(
        f"log density at 5 unconstrained points (z, log_calibration): twinjax - Stan = "
        f"{diffs[0][2]:+.3e} (spread {spread:.1e}; twinjax log p at z=0: {diffs[0][0]:.6f}) -> "
        f"{'PASS' if density_ok else 'FAIL'}"
    )
    print()
    print(f"{'':28s}{'twinjax':>12s}{'Stan':>12s}{'twinjax/Stan':>14s}")

    def line(label, a, b, fmt=".1f"):
        ratio = a / b if b else float("nan")
        print(f"{label:28s}{a:>12{fmt}}{b:>12{fmt}}{ratio:>14.3g}")

    t_stan_wall = t_stan_compile + t_stan_sample
    line("compile (s)", t_jax_compile, t_stan_compile)
    line("sampling (s)", t_jax_sample, t_stan_sample)
    line("wall: compile + sampling (s)", t_jax_wall, t_stan_wall)
    line("min bulk ESS", min_ess["twinjax"][1], min_ess["stan"][1], ".0f")
    line(
        "ESS/s (sampling)", min_ess["twinjax"][1] / t_jax_sample, min_ess["stan"][1] / t_stan_sample
    )
    line("ESS/s (wall)", min_ess["twinjax"][1] / t_jax_wall, min_ess["stan"][1] / t_stan_wall)
    print(
        f"{'min ESS at':28s}{min_ess['twinjax'][0]:>12s}{min_ess['stan'][0]:>12s}\n"
        f"{'divergences':28s}{post.diagnostics.divergences:>12d}{div_stan:>12d}\n"
        f"{'max R-hat':28s}{rhat_jax:>12.4f}{rhat_stan:>12.4f}\n"
        f"{'mean tree depth':28s}{depth_jax:>12.2f}{depth_stan:>12.2f}"
    )
    print(
        f"twinjax log density + forward-mode gradient (jit, as NUTS calls it): {grad_us:.0f} us "
        "per evaluation (best of 20 x 50 calls)"
    )
    print(
        f"load average (1 min) before / after: {load_before:.1f} / {os.getloadavg()[0]:.1f} "
        f"on {os.cpu_count()} cores (timings assume an otherwise idle machine)"
    )
    print()
    print(
        "posterior means, twinjax vs Stan; PASS if |difference| < 3 combined MCSE "
        "(sqrt(mcse_twinjax^2 + mcse_stan^2))"
    )
    print(
        f"{'':19s}{'truth':>11s} {'twinjax':>11s} {'mcse':>8s} {'Stan':>11s} {'mcse':>8s} "
        f"{'|d|/mcse':>8s}"
    )
    true_vals = {**truth, **{f"log_calibration[{i}]": v for i, v in enumerate(log_cal_true)}}
    n_fail = 0
    for lab in labels:
        mj, sj = mean["twinjax"][lab], float(mcse["twinjax"][lab])
        ms, ss = mean["stan"][lab], float(mcse["stan"][lab])
        z = abs(mj - ms) / math.hypot(sj, ss)
        ok = z < 3.0
        n_fail += not ok
        print(
            f"{lab:19s}{true_vals[lab]:>11.5g} {mj:>11.5g} {sj:>8.2g} {ms:>11.5g} {ss:>8.2g} "
            f"{z:>8.2f}  {'PASS' if ok else 'FAIL'}"
        )
    print(
        f"{len(labels) - n_fail}/{len(labels)} posterior means agree; "
        f"log density {'agrees' if density_ok else 'DIFFERS'}"
    )
    if n_fail or not density_ok:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
