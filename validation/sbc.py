"""Simulation-based calibration of NUTS on the reduced PSMA model (issue 3 acceptance): over
>= 500 simulated patients the ranks of every inferred parameter, the kidney and tumour TIA and
the data log-likelihood among the thinned posterior draws must be uniform (Talts et al. 2018).

    python validation/sbc.py                                   # 500 replications, chunks of 25
    python validation/sbc.py --replications 10 --chunk 5 --out /tmp/sbc_smoke   # smoke run

Patients are drawn from the template's population prior (typical covariates), one 7400 MBq /
100 nmol bolus, kidneys and tumour imaged at 4, 24, 96 and 168 h with lognormal errors (CV 10 %
and 15 %) and a 5 % per-scan calibration factor (the conventions of `coverage_psma.py`). By
default the parameters the design informs are inferred (R_kidneys, R_tumour,
lambda_rel_kidneys; `--names` changes them).

The run is split into chunks of `--chunk` replications; each chunk is written atomically to
``<out>/chunk_<start>_<n>.json`` as soon as it is done, and an existing chunk is not run again,
so an interrupted run resumes where it stopped (the seed and settings must be the same:
replication i always uses the key ``fold_in(key(seed), i)``). At the end the chunks are joined
(`SBCResult.concatenate`) into ``<out>/sbc.json`` with provenance; the script prints the
per-quantity chi-square p-values, the ESS of the thinned draws, divergences and wall times,
and exits 1 if the verdict is "not uniform".
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

import twinjax
from twinjax._files import atomic_write
from twinjax.imaging import Patient
from twinjax.imaging.observe import LognormalError
from twinjax.inference import Observed
from twinjax.inference.sbc import SBCResult, SBCRunner

TIMES_H = (4.0, 24.0, 96.0, 168.0)
CV = {"kidneys": 0.10, "tumour": 0.15}
CALIBRATION_CV = 0.05


def _atomic_write(path: Path, text: str) -> None:
    atomic_write(path, text.encode())


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--template", default="psma617_reduced")
    ap.add_argument(
        "--names",
        default="R_kidneys,R_tumour,lambda_rel_kidneys",
        help="comma-separated inferred parameters, or 'all' (every one with a CV)",
    )
    ap.add_argument("--replications", type=int, default=500)
    ap.add_argument("--start", type=int, default=0, help="first replication index")
    ap.add_argument("--chunk", type=int, default=25, help="replications per saved chunk")
    ap.add_argument("--warmup", type=int, default=200)
    ap.add_argument("--samples", type=int, default=200, help="post-warm-up iterations")
    ap.add_argument("--thin", type=int, default=10, help="L = samples // thin ranked draws")
    ap.add_argument("--batch", type=int, default=1, help="replications vmapped together")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--rtol", type=float, default=1e-4)
    ap.add_argument("--alpha", type=float, default=0.01, help="family-wise level")
    ap.add_argument("--out", type=Path, default=Path("validation/results/sbc_psma"))
    args = ap.parse_args(argv)
    if args.chunk < 1 or args.replications < 1:
        ap.error("--chunk and --replications must be >= 1")

    tpl = twinjax.load_template(args.template)
    names = None if args.names == "all" else tuple(args.names.split(","))
    patient = Patient.virtual({}, twinjax.Schedule.single(7400.0, ligand_nmol=100.0))
    noise = LognormalError(CV, calibration_cv=CALIBRATION_CV)
    design = Observed.design(sorted(CV), TIMES_H)
    args.out.mkdir(parents=True, exist_ok=True)

    t_all = time.perf_counter()
    # One compiled program for every chunk (built lazily: a fully resumed run compiles nothing).
    runner = None
    parts, walls = [], []
    stop = args.start + args.replications
    for lo in range(args.start, stop, args.chunk):
        n = min(args.chunk, stop - lo)
        path = args.out / f"chunk_{lo:05d}_{n}.json"
        if path.exists():
            parts.append(SBCResult.from_dict(json.loads(path.read_text())["result"]))
            print(f"chunk {lo}-{lo + n - 1}: loaded {path}", flush=True)
            continue
        t0 = time.perf_counter()
        if runner is None:
            runner = SBCRunner(
                tpl,
                patient,
                design,
                noise,
                num_warmup=args.warmup,
                num_samples=args.samples,
                thin=args.thin,
                seed=args.seed,
                names=names,
                batch=args.batch,
                alpha=args.alpha,
                rtol=args.rtol,
                atol=args.rtol * 1e-3,
            )
        res = runner(n_replications=n, start=lo, progress=True)
        wall = time.perf_counter() - t0
        walls.append((n, wall))
        doc = dict(result=res.to_dict(), provenance=_provenance(args, wall))
        _atomic_write(path, json.dumps(doc))
        parts.append(res)
        print(
            f"chunk {lo}-{lo + n - 1}: {wall:.0f} s ({wall / n:.1f} s per replication, "
            f"the first chunk's compile included) -> {path}",
            flush=True,
        )

    res = SBCResult.concatenate(parts)
    wall_all = time.perf_counter() - t_all
    doc = dict(result=res.to_dict(), provenance=_provenance(args, wall_all))
    doc["p_values"] = res.p_values
    doc["verdict"] = res.verdict
    _atomic_write(args.out / "sbc.json", json.dumps(doc))
    print(
        f"template {args.template}, seed {args.seed}, warm-up {args.warmup}, "
        f"samples {args.samples}, thin {args.thin}"
    )
    print(res.table())
    for q in ("log_likelihood", "tia_kidneys", "tia_tumour"):
        print(res.histogram(q))
    ess = np.concatenate([res.ess[q] for q in res.quantities])
    print(
        f"ESS of the L = {res.num_draws} thinned draws: median {np.median(ess):.1f}, "
        f"5th percentile {np.percentile(ess, 5):.1f}"
    )
    if walls:
        n_run = sum(n for n, _ in walls)
        print(
            f"computed {n_run} replications in {sum(w for _, w in walls):.0f} s "
            f"({sum(w for _, w in walls) / n_run:.1f} s per replication, compile included)"
        )
    print(f"wall time {wall_all:.0f} s; results in {args.out / 'sbc.json'}")
    return 0 if res.verdict == "uniform" else 1


def _provenance(args, wall_s: float) -> dict:
    return dict(
        twinjax_version=twinjax.__version__,
        script="validation/sbc.py",
        arguments={k: str(v) for k, v in vars(args).items()},
        wall_time_s=round(wall_s, 1),
        written_utc=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    )


if __name__ == "__main__":
    sys.exit(main())
