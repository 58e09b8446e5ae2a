"""Sequential = batch on the reduced PSMA model (issue 3 acceptance): the exact assimilation path's
posterior quantiles agree with a batch fit on all scans within 3 Monte-Carlo standard errors, and
the fast path's error is reported.

    python validation/sequential_psma.py                     # 4 chains x (500 + 1000), seed 0
    python validation/sequential_psma.py --samples 2000 --patient-seed 3

One virtual patient is drawn from the template's population prior (typical covariates, one
7400 MBq / 100 nmol bolus) and imaged at 4, 24, 48, 96 and 168 h (kidneys, salivary glands,
tumour, whole body; lognormal CV 10/15/15/8 %, 5 % per-scan calibration factor). Three posteriors:

- batch: `twinjax.fit(..., method="nuts")` on all five scans;
- exact sequential: NUTS on the first three scans, then `assimilate(post, scan)` for 96 h and
  168 h (warm-started refits);
- fast sequential: the same three-scan posterior, then `assimilate(..., method="fast")` twice
  (Gaussian updates; their PSIS diagnostics are printed).

For every inferred parameter and the kidney/tumour TIA, the 5/50/95 % quantiles of the exact
path are compared with the batch fit's: PASS if the difference is below 3 combined MCSE (ArviZ
quantile MCSE of both fits, in quadrature). The fast path's quantiles are printed next to them
with the difference in batch posterior SDs. Exits 1 if an exact-path quantile fails.

Cost: four NUTS fits of the 75-state receptor model (Rodas4, rtol 1e-4) with forward-mode
Jacobians over its 5 parameters (the 5 calibration factors add no ODE tangents). On this
project's 2-core CPU one log density + gradient takes about 0.065 s; with ``--chains 2 --warmup
300 --samples 750`` the batch fit took 20 min and the whole script about 1 h (see the README for
the figures of that run). The defaults (4 chains x 1500 iterations) need a larger machine.
"""

from __future__ import annotations

import numpyro

numpyro.set_host_device_count(4)  # before JAX starts: one CPU device per chain

import argparse  # noqa: E402
import math  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402

import arviz as az  # noqa: E402
import jax  # noqa: E402
import numpy as np  # noqa: E402

import twinjax  # noqa: E402
from twinjax.imaging import Patient  # noqa: E402
from twinjax.imaging.observe import LognormalError  # noqa: E402
from twinjax.inference import Observed, PopulationPrior  # noqa: E402
from twinjax.inference.coverage import virtual_patients  # noqa: E402

SCANS_H = (4.0, 24.0, 48.0, 96.0, 168.0)
FIRST = 3  # scans in the initial fit
PROBS = (0.05, 0.5, 0.95)


def _rows(obs: Observed, keep) -> Observed:
    idx = [i for i, t in enumerate(obs.time_h) if keep(float(t))]
    return Observed(
        tuple(obs.roi[i] for i in idx), np.asarray(obs.time_h)[idx], obs.activity_MBq[idx]
    )


def _quantiles(post, name):
    """5/50/95 % quantiles of one scalar site and their MCSE (ArviZ; NaN for a single chain)."""
    x = np.asarray(post.samples[name])  # (chains, draws)
    q = np.quantile(x, PROBS)
    if x.ndim != 2 or x.shape[0] < 2:
        return q, np.full(len(PROBS), np.nan)
    ds = az.convert_to_dataset({"x": x})
    return q, np.array([float(az.mcse(ds, method="quantile", prob=p)["x"]) for p in PROBS])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--template", default="psma617_reduced")
    ap.add_argument("--chains", type=int, default=4)
    ap.add_argument("--warmup", type=int, default=500)
    ap.add_argument("--samples", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=0, help="sampler seed")
    ap.add_argument("--patient-seed", type=int, default=1, help="virtual patient seed")
    ap.add_argument("--rtol", type=float, default=1e-4)
    args = ap.parse_args(argv)

    tpl = twinjax.load_template(args.template)
    patient = Patient.virtual({}, twinjax.Schedule.single(7400.0, ligand_nmol=100.0))
    noise = LognormalError(
        {"kidneys": 0.10, "salivary_glands": 0.15, "tumour": 0.15, "whole_body": 0.08},
        calibration_cv=0.05,
    )
    rois = ["kidneys", "salivary_glands", "tumour", "whole_body"]
    design = Observed.design(rois, SCANS_H)
    prior = PopulationPrior.from_template(tpl, patient.covariates)
    sim = virtual_patients(
        tpl,
        prior,
        patient.schedule,
        design,
        noise,
        ("kidneys", "tumour"),
        args.rtol,
        args.rtol * 1e-3,
    )
    y, tia_true, z_true = sim(jax.random.key(args.patient_seed)[None])
    data = Observed(design.roi, design.time_h, np.asarray(y[0]))
    opts = dict(
        noise=noise,
        method="nuts",
        num_chains=args.chains,
        num_warmup=args.warmup,
        num_samples=args.samples,
        seed=args.seed,
        rtol=args.rtol,
        atol=args.rtol * 1e-3,
    )

    t0 = time.perf_counter()
    batch = twinjax.fit(tpl, patient, data, **opts)
    t_batch = time.perf_counter() - t0
    print(f"batch fit on {len(SCANS_H)} scans: {t_batch:.0f} s", flush=True)

    t0 = time.perf_counter()
    first = twinjax.fit(tpl, patient, _rows(data, lambda t: t <= SCANS_H[FIRST - 1]), **opts)
    t_first = time.perf_counter() - t0
    print(f"fit on the first {FIRST} scans: {t_first:.0f} s", flush=True)
    exact, fast = first, first
    t_exact = t_fast = 0.0
    fast_notes = []
    for t_scan in SCANS_H[FIRST:]:
        new = _rows(data, lambda t, s=t_scan: t == s)
        t0 = time.perf_counter()
        exact = twinjax.assimilate(exact, new, num_samples=args.samples)
        t_exact += time.perf_counter() - t0
        t0 = time.perf_counter()
        fast = twinjax.assimilate(fast, new, method="fast")
        t_fast += time.perf_counter() - t0
        fast_notes.append((t_scan, fast.approximation))
        print(f"assimilated the {t_scan:g} h scan (exact and fast)", flush=True)

    names = [*batch.names, "tia_kidneys", "tia_tumour"]
    truth = {n: float(v) for n, v in prior.theta(z_true[0]).items()}
    truth.update({f"tia_{r}": float(np.asarray(v)[0]) for r, v in tia_true.items()})
    print(
        f"template {args.template}; patient seed {args.patient_seed}; scans {SCANS_H} h "
        f"({len(rois)} regions); NUTS {args.chains} chains x ({args.warmup} + {args.samples}), "
        f"seed {args.seed}"
    )
    print(
        f"wall time: batch fit {t_batch:.0f} s; first {FIRST} scans {t_first:.0f} s + exact "
        f"assimilation of {len(SCANS_H) - FIRST} scans {t_exact:.0f} s; fast {t_fast:.1f} s"
    )
    for d, label in ((batch.diagnostics, "batch"), (exact.diagnostics, "exact")):
        print(
            f"{label} diagnostics: {d.verdict}; {d.divergences} divergences; {' '.join(d.messages)}"
        )
    print()
    print(
        f"{'quantity':16s}{'q':>5s}{'truth':>11s}{'batch':>11s}{'exact':>11s}{'|d|/mcse':>9s}"
        f"{'':6s}{'fast':>11s}{'d/sd':>7s}"
    )
    n_fail = 0
    worst = 0.0
    for n in names:
        qb, sb = _quantiles(batch, n)
        qe, se = _quantiles(exact, n)
        qf, _ = _quantiles(fast, n)
        sd = float(batch.draws(n).std(ddof=1))
        for p, b, e, f, s1, s2 in zip(PROBS, qb, qe, qf, sb, se, strict=True):
            z = abs(e - b) / math.hypot(s1, s2)
            ok = z < 3.0
            n_fail += not ok
            worst = max(worst, abs(f - b) / sd)
            print(
                f"{n:16s}{p:>5.2f}{truth[n]:>11.4g}{b:>11.4g}{e:>11.4g}{z:>9.2f} "
                f"{'PASS' if ok else 'FAIL'}{f:>11.4g}{(f - b) / sd:>+7.2f}"
            )
    print()
    for t_scan, a in fast_notes:
        keep = {k: v for k, v in a.items() if not isinstance(v, dict)}
        print(f"fast update at {t_scan:g} h: {keep}")
    print(
        f"exact path: {len(names) * len(PROBS) - n_fail}/{len(names) * len(PROBS)} quantiles "
        f"within 3 MCSE of the batch fit; fast path: largest quantile difference "
        f"{worst:.2f} batch posterior SDs"
    )
    return 1 if n_fail else 0


if __name__ == "__main__":
    sys.exit(main())
