"""Adaptive twin policy vs standard of care on a virtual cohort: the tumour BED and TCP the
twin's multi-cycle policy gains over 7.4 GBq x n_cycles, what it costs the organs at risk,
and how often the chance constraints held for the true patient.

    python validation/adaptive_policy.py --quick                 # 2 patients, small draw counts
    python validation/adaptive_policy.py --patients 20 --seed 1  # the cohort of the README
    python validation/adaptive_policy.py --study my_study.yaml --max-draws 50 --samples 300

Each virtual patient i (truth seed = noise seed = ``--seed`` + i) runs the twin loop of the
study (`twinjax.loop.run_loop`, default the embedded ``configs/studies/default_twin.yaml``):
cycle 1 at the study's first activity, its scans, calibrate, rank the library and optimise the
next activity under the chance constraints, give it, its scans, update, re-plan; the twin never
sees the truth. Two courses are then evaluated on the patient's TRUE parameters:

- **adaptive**: the administrations the twin gave, then the remaining cycles (up to
  ``treatment.n_cycles``) at the LAST recommended activity, every ``treatment.interval_h``;
- **standard of care (SoC)**: 7.4 GBq x ``n_cycles`` every ``interval_h``, the same ligand
  amount per cycle (`twinjax.decision.standard_of_care`).

True outcomes use the study's regions, masses and S-values exactly as the twin's forecasts do:
`twinjax.forecast.forecast` over a one-draw "posterior" holding the truth (the same function,
compiled once for all patients). Reported per patient: tumour (objective region) BED and TCP,
the constrained organ quantities (default: kidney BED, salivary-gland EQD2), whether each
constraint holds for the truth (true value <= threshold), and the twin's own predicted
P(violation) of the adaptive course under its final posterior. Cohort summary: mean and median
tumour BED gain (adaptive - SoC) with bootstrap 90 % intervals, TCP gain, fraction of patients
meeting every constraint (adaptive vs SoC), fraction gaining tumour BED at equal or lower dose
to every constrained organ, tumour BED gained per Gy of extra organ dose (and, for scale,
SoC's own tumour-to-organ ratio: what escalating SoC uniformly would give), calibration of the
chance constraints (predicted P <= allowed AND truth met), the total activity of both courses
and how often the last recommendation sat at the optimiser's upper bound (where no constraint
bound the choice), wall time per patient.

Writes ``OUT/adaptive_policy.json`` (per patient, summary, provenance) and
``OUT/adaptive_policy.png``, atomically. Exits 1 if the script's truth outcome of the adaptive
course disagrees with the loop's own (two code paths, must agree to 1e-6 relative).

Cost on this project's 2 shared CPU cores: ``--quick`` (2 patients, 60 samples, 12 forecast
draws, 20 optimiser steps) took 267 s for the first patient (compilations included) and 155 s
for the second, 7 min in all. The study's own settings (Laplace with 200 samples, 30 forecast
draws, 60 optimiser steps; the default run) cost more per patient and were not timed here.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import math
import platform
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import jax
import numpy as np

import twinjax
from twinjax.decision import standard_of_care
from twinjax.forecast import Scenario, forecast
from twinjax.inference import PopulationPrior
from twinjax.loop import _Draws, default_twin_study_path, load_twin_study, run_loop
from twinjax.schedule import Administration, Schedule
from twinjax.study import _atomic_write  # the package's temp-file + rename writer

SOC_ACTIVITY_MBQ = 7400.0  # VISION: 7.4 GBq per cycle
QUICK = {"patients": 2, "samples": 60, "max_draws": 12, "steps": 20}
LEVEL = 0.9  # bootstrap and forecast interval level
N_BOOT = 5000
REL_TOL = 1e-6  # script truth vs loop truth


# ---- study --------------------------------------------------------------------------------------
# ---- courses ------------------------------------------------------------------------------------
def _adaptive_course(result) -> Scenario:
    """Given administrations + the remaining cycles at the last recommended activity."""
    tr = result.study.spec.treatment
    nuc = result.study.template.nuclide
    given = list(result.twin.administrations)
    rec = result.decisions[-1]["recommended"]
    planned = [
        Administration(rec["time_h"] + i * tr.interval_h, rec["activity_MBq"], nuc, tr.ligand_nmol)
        for i in range(tr.n_cycles - len(given))
    ]
    return Scenario("adaptive", Schedule.from_administrations(given + planned))


def _soc_course(study) -> Scenario:
    tr = study.spec.treatment
    return standard_of_care(
        nuclide=study.template.nuclide,
        activity_MBq=SOC_ACTIVITY_MBQ,
        n_cycles=tr.n_cycles,
        interval_h=tr.interval_h,
        ligand_nmol=tr.ligand_nmol,
    )


def _quantities(study) -> list[tuple[str, str]]:
    """(region, quantity) pairs reported per course: the objective region's BED and TCP, then
    every constrained organ quantity."""
    obj = study.spec.objective.region
    pairs = [(obj, "bed_Gy"), (obj, "tcp")]
    for c in study.constraints:
        if (c.region, c.quantity) not in pairs:
            pairs.append((c.region, c.quantity))
    return pairs


# ---- one patient --------------------------------------------------------------------------------
def _patient(study_path: Path, study, seed: int, settings: dict, say) -> dict:
    overrides = {
        "patient": {"truth_seed": seed, "patient_id": f"synthetic-{seed:04d}"},
        "imaging": {"noise_seed": seed},
        "inference": {"num_samples": settings["samples"]},
        "forecast": {"max_draws": settings["max_draws"]},
        "optimise": {"steps": settings["steps"]},
    }
    t0 = time.perf_counter()
    result = run_loop(study_path, progress=say, overrides=overrides)
    t_loop = time.perf_counter() - t0

    t1 = time.perf_counter()
    tpl, regions = study.template, study.regions
    adaptive, soc = _adaptive_course(result), _soc_course(study)
    covariates = result.twin.patient.covariates
    prior = PopulationPrior.from_template(tpl, covariates)
    truth = _Draws(prior.names, result.truth, prior, covariates)
    # One draw: the patient. Same template object, regions and schedule structure for every
    # patient and both courses, so this compiles once for the whole cohort.
    fc_true = forecast(truth, tpl, [adaptive, soc], regions, max_draws=1)
    fc_twin = forecast(
        result.twin.posterior, tpl, [adaptive, soc], regions, max_draws=settings["max_draws"]
    )
    t_truth = time.perf_counter() - t1

    def true_value(course, r, q):
        v = fc_true.values[course][r].get(q)
        return None if v is None else float(v[0])

    courses = {}
    for name in ("adaptive", "standard_of_care"):
        sc = adaptive if name == "adaptive" else soc
        outcome = {r: {q: float(v[0]) for q, v in fc_true.values[name][r].items()} for r in regions}
        met = {
            c.label: bool(true_value(name, c.region, c.quantity) <= c.threshold)
            for c in study.constraints
        }
        predicted_p = {
            c.label: fc_twin.exceedance(c.region, c.quantity, c.threshold)[name]
            for c in study.constraints
        }
        summ = fc_twin.summary(level=LEVEL)[name]
        courses[name] = {
            "activities_MBq": [float(a) for a in np.asarray(sc.schedule.activity_MBq)],
            "times_h": [float(t) for t in np.asarray(sc.schedule.time_h)],
            "true": outcome,
            "constraints_met": met,
            "all_constraints_met": all(met.values()),
            "twin_p_violation": predicted_p,
            "twin_feasible": all(
                predicted_p[c.label] <= c.max_probability for c in study.constraints
            ),
            "twin_forecast": {
                r: {q: summ[r][q] for q in ("bed_Gy", "eqd2_Gy", "tcp") if q in summ[r]}
                for r in regions
            },
        }

    # Two code paths for the same number: the loop's truth outcome of its last recommended
    # course is the adaptive course.
    loop_truth = result.decisions[-1]["truth_of_recommended_course"]
    rel = max(
        abs(courses["adaptive"]["true"][r][q] - loop_truth[r][q]["mean"])
        / max(abs(loop_truth[r][q]["mean"]), 1e-12)
        for r in loop_truth
        for q in loop_truth[r]
    )
    decisions = [
        {
            "after_cycle": d["after_cycle"],
            "recommended": d["recommended"],
            "optimised_activity_MBq": d["optimised"]["activity_MBq"],
            "optimised_feasible": d["optimised"]["feasible"],
            "optimised_violation": d["optimised"]["violation"],
            "library_best": d["ranking"].get("best"),
            "convergence": d["convergence"],
        }
        for d in result.decisions
    ]
    return {
        "seed": seed,
        "truth_seed": seed,
        "noise_seed": seed,
        "truth": result.truth,
        "decisions": decisions,
        "courses": courses,
        "loop_truth_rel_diff": rel,
        "wall_time_s": {
            "loop": t_loop,
            "outcomes": t_truth,
            "total": t_loop + t_truth,
        },
    }


# ---- cohort summary -----------------------------------------------------------------------------
def _bootstrap(x: np.ndarray, stat, rng) -> list[float]:
    """Percentile bootstrap `LEVEL` interval of `stat` over patients."""
    idx = rng.integers(0, x.size, size=(N_BOOT, x.size))
    s = np.array([stat(x[i]) for i in idx])
    lo = (1.0 - LEVEL) / 2.0
    return [float(np.quantile(s, lo)), float(np.quantile(s, 1.0 - lo))]


def _value(p: dict, course: str, r: str, q: str) -> float:
    v = p["courses"][course]["true"][r].get(q)
    return math.nan if v is None else v


def _summary(patients: list[dict], study, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    obj = study.spec.objective.region
    n = len(patients)

    def gain(r, q):
        return np.array(
            [_value(p, "adaptive", r, q) - _value(p, "standard_of_care", r, q) for p in patients]
        )

    d_bed = gain(obj, "bed_Gy")
    d_tcp = gain(obj, "tcp")
    out: dict = {"n_patients": n, "tumour_region": obj}
    hi = float(study.spec.optimise.bounds_MBq[1])
    last = np.array([p["decisions"][-1]["recommended"]["activity_MBq"] for p in patients])
    total = {
        course: np.array([sum(p["courses"][course]["activities_MBq"]) for p in patients])
        for course in ("adaptive", "standard_of_care")
    }
    # Where the last recommendation sits at the optimiser's upper bound, no constraint bound
    # the choice: the gain there is escalation to the bound, not a personalised trade-off.
    out["policy"] = {
        "optimiser_upper_bound_MBq": hi,
        "last_activity_MBq": {
            "mean": float(last.mean()),
            "min": float(last.min()),
            "max": float(last.max()),
        },
        "fraction_last_at_upper_bound": float(np.mean(last >= hi - 1e-6)),
        "total_activity_MBq": {c: float(v.mean()) for c, v in total.items()},
    }
    out["tumour_bed_gain_Gy"] = {
        "mean": float(d_bed.mean()),
        "mean_interval": _bootstrap(d_bed, np.mean, rng),
        "median": float(np.median(d_bed)),
        "median_interval": _bootstrap(d_bed, np.median, rng),
        "fraction_positive": float(np.mean(d_bed > 0)),
    }
    out["tumour_tcp_gain"] = (
        None
        if not np.all(np.isfinite(d_tcp))
        else {
            "mean": float(d_tcp.mean()),
            "mean_interval": _bootstrap(d_tcp, np.mean, rng),
            "median": float(np.median(d_tcp)),
        }
    )
    for course in ("adaptive", "standard_of_care"):
        out[f"{course}_means"] = {
            f"{r} {q}": float(np.mean([_value(p, course, r, q) for p in patients]))
            for r, q in _quantities(study)
        }
    cons = study.constraints
    out["constraints_met"] = {
        course: {
            "all": float(np.mean([p["courses"][course]["all_constraints_met"] for p in patients])),
            **{
                c.label: float(
                    np.mean([p["courses"][course]["constraints_met"][c.label] for p in patients])
                )
                for c in cons
            },
        }
        for course in ("adaptive", "standard_of_care")
    }
    oar = [(c.region, c.quantity) for c in cons]
    oar = list(dict.fromkeys(oar))
    d_oar = {f"{r} {q}": gain(r, q) for r, q in oar}
    no_more = np.all([d <= 0.0 for d in d_oar.values()], axis=0) if oar else np.ones(n, bool)
    out["more_tumour_bed_at_equal_or_lower_oar"] = float(np.mean((d_bed > 0) & no_more))
    out["oar"] = {}
    for (r, q), (key, d) in zip(oar, d_oar.items(), strict=True):
        soc_ratio = np.array(
            [
                _value(p, "standard_of_care", obj, "bed_Gy") / _value(p, "standard_of_care", r, q)
                for p in patients
            ]
        )
        out["oar"][key] = {
            "mean_extra": float(d.mean()),
            "median_extra": float(np.median(d)),
            "fraction_lower_or_equal": float(np.mean(d <= 0.0)),
            # The cohort's marginal exchange rate: ratio of the mean gains (per-patient
            # ratios explode where the organ dose barely changes).
            "tumour_bed_per_Gy_extra": (
                float(d_bed.mean() / d.mean()) if abs(d.mean()) > 1e-9 else None
            ),
            "soc_tumour_bed_per_Gy": float(np.mean(soc_ratio)),
        }
    # Calibration of the chance constraints: the twin's predicted P(violation) of the course it
    # recommends, against the truth.
    cal = {}
    for c in cons:
        pred_ok = np.array(
            [
                p["courses"]["adaptive"]["twin_p_violation"][c.label] <= c.max_probability
                for p in patients
            ]
        )
        met = np.array([p["courses"]["adaptive"]["constraints_met"][c.label] for p in patients])
        cal[c.label] = {
            "max_probability": c.max_probability,
            "predicted_ok": int(pred_ok.sum()),
            "predicted_ok_and_met": int((pred_ok & met).sum()),
            "fraction_predicted_ok_and_met": float(np.mean(pred_ok & met)),
            "met_given_predicted_ok": (
                float((pred_ok & met).sum() / pred_ok.sum()) if pred_ok.any() else None
            ),
        }
    pred_all = np.array([p["courses"]["adaptive"]["twin_feasible"] for p in patients])
    met_all = np.array([p["courses"]["adaptive"]["all_constraints_met"] for p in patients])
    cal["all"] = {
        "predicted_ok": int(pred_all.sum()),
        "predicted_ok_and_met": int((pred_all & met_all).sum()),
        "fraction_predicted_ok_and_met": float(np.mean(pred_all & met_all)),
        "met_given_predicted_ok": (
            float((pred_all & met_all).sum() / pred_all.sum()) if pred_all.any() else None
        ),
    }
    out["chance_constraint_calibration"] = cal
    wall = np.array([p["wall_time_s"]["total"] for p in patients])
    out["wall_time_per_patient_s"] = {
        "mean": float(wall.mean()),
        "median": float(np.median(wall)),
        "max": float(wall.max()),
        "first": float(wall[0]),  # includes the compilations
    }
    return out


# ---- printing -----------------------------------------------------------------------------------
_NAMES = {"bed_Gy": "BED", "eqd2_Gy": "EQD2", "dose_Gy": "dose", "tcp": "TCP", "ntcp": "NTCP"}


def _activities(acts) -> str:
    """GBq per cycle, the repeated planned activity written once: ``7.40, 9.50, 8.70 x4``."""
    acts = [a / 1000.0 for a in acts]
    k = len(acts) - 1
    while k > 0 and acts[k - 1] == acts[-1]:
        k -= 1
    head = [f"{a:.2f}" for a in acts[:k]]
    tail = f"{acts[-1]:.2f}" + (f" x{len(acts) - k}" if len(acts) - k > 1 else "")
    return ", ".join([*head, tail])


def _short(label: str) -> str:
    return label.replace("salivary_glands", "saliv").replace("kidneys", "kid")


def _print_table(patients: list[dict], study) -> None:
    obj = study.spec.objective.region
    pairs = _quantities(study)
    cols = [f"{_short(r)} {_NAMES.get(q, q)}" for r, q in pairs]
    head = f"{'seed':>5} {'adaptive activities (GBq)':<28}" + "".join(
        f" {c + ' soc/ad':>24}" for c in cols
    )
    head += f" {'met soc/ad':>11} {'twin P(viol) ad':>16} {'wall s':>7}"
    print(head)
    for p in patients:
        ad = p["courses"]["adaptive"]
        acts = _activities(ad["activities_MBq"])
        row = f"{p['seed']:>5} {acts:<28}"
        for r, q in pairs:
            s, a = _value(p, "standard_of_care", r, q), _value(p, "adaptive", r, q)
            fmt = "{:.2g}" if q in ("tcp", "ntcp") else "{:.1f}"
            row += f" {fmt.format(s) + ' / ' + fmt.format(a):>24}"
        met = f"{int(p['courses']['standard_of_care']['all_constraints_met'])}/"
        met += f"{int(ad['all_constraints_met'])}"
        pv = "/".join(f"{v:.2f}" for v in ad["twin_p_violation"].values())
        row += f" {met:>11} {pv:>16} {p['wall_time_s']['total']:>7.0f}"
        print(row)
    print(f"(tumour = {obj}; met = every constraint holds for the truth, 1/0)")


def _lo_hi(iv) -> str:
    return f"[{iv[0]:.2f}, {iv[1]:.2f}]"


def _print_summary(s: dict) -> None:
    b = s["tumour_bed_gain_Gy"]
    pct = round(100 * LEVEL)
    print(f"\nCohort summary ({s['n_patients']} patients; adaptive - standard of care)")
    print(
        f"  tumour BED gain (Gy): mean {b['mean']:.2f} {pct} % CI {_lo_hi(b['mean_interval'])}; "
        f"median {b['median']:.2f} {pct} % CI {_lo_hi(b['median_interval'])}; "
        f"gain > 0 in {b['fraction_positive']:.0%}"
    )
    pol = s["policy"]
    print(
        f"  course activity (mean total): SoC {pol['total_activity_MBq']['standard_of_care'] / 1e3:.1f}"
        f" GBq, adaptive {pol['total_activity_MBq']['adaptive'] / 1e3:.1f} GBq; last recommended "
        f"activity {pol['last_activity_MBq']['min'] / 1e3:.2f}-{pol['last_activity_MBq']['max'] / 1e3:.2f}"
        f" GBq, at the optimiser's upper bound ({pol['optimiser_upper_bound_MBq'] / 1e3:g} GBq) "
        f"in {pol['fraction_last_at_upper_bound']:.0%} (there no constraint was binding)"
    )
    t = s["tumour_tcp_gain"]
    if t is not None:
        print(
            f"  tumour TCP gain: mean {t['mean']:.3g} {pct} % CI "
            f"[{t['mean_interval'][0]:.3g}, {t['mean_interval'][1]:.3g}]; "
            f"median {t['median']:.3g}"
        )
    for course in ("standard_of_care", "adaptive"):
        m = s[f"{course}_means"]
        print(f"  mean true values, {course}: " + "; ".join(f"{k} {v:.3g}" for k, v in m.items()))
    cm = s["constraints_met"]
    for course in ("standard_of_care", "adaptive"):
        # keys are the constraints' labels ("kidneys bed_Gy > 40"), which name the violation
        per = ", ".join(
            f"{k.replace(' > ', ' <= ')} {v:.0%}" for k, v in cm[course].items() if k != "all"
        )
        print(f"  every constraint met, {course}: {cm[course]['all']:.0%} ({per})")
    print(
        f"  more tumour BED at equal or lower dose to every constrained organ: "
        f"{s['more_tumour_bed_at_equal_or_lower_oar']:.0%}"
    )
    for k, o in s["oar"].items():
        per = o["tumour_bed_per_Gy_extra"]
        print(
            f"  {k}: extra mean {o['mean_extra']:.2f} Gy, median {o['median_extra']:.2f} Gy, "
            f"<= SoC in {o['fraction_lower_or_equal']:.0%}; tumour BED gained per Gy extra: "
            f"{'n/a' if per is None else f'{per:.2f}'} (SoC's own tumour/organ ratio "
            f"{o['soc_tumour_bed_per_Gy']:.2f})"
        )
    for k, c in s["chance_constraint_calibration"].items():
        cond = c["met_given_predicted_ok"]
        allowed = f" (allowed P {c['max_probability']:g})" if "max_probability" in c else ""
        print(
            f"  chance constraint {k}{allowed}: twin's P(violation) <= allowed in "
            f"{c['predicted_ok']}/{s['n_patients']}, and the truth met it in "
            f"{c['predicted_ok_and_met']}/{s['n_patients']} "
            f"({'n/a' if cond is None else f'{cond:.0%}'} of those predicted ok)"
        )
    w = s["wall_time_per_patient_s"]
    print(
        f"  wall time per patient: mean {w['mean']:.0f} s, median {w['median']:.0f} s, "
        f"max {w['max']:.0f} s (first, with compilation: {w['first']:.0f} s)"
    )


# ---- figure -------------------------------------------------------------------------------------
def _figure(patients: list[dict], study) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    obj = study.spec.objective.region
    panels = [(obj, "bed_Gy", None)]
    for c in study.constraints:
        panels.append((c.region, c.quantity, c.threshold))
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.8), squeeze=False)
    x = np.arange(len(patients))
    labels = [str(p["seed"]) for p in patients]
    for ax, (r, q, limit) in zip(axes[0], panels, strict=True):
        s = np.array([_value(p, "standard_of_care", r, q) for p in patients])
        a = np.array([_value(p, "adaptive", r, q) for p in patients])
        ax.vlines(x, np.minimum(s, a), np.maximum(s, a), color="0.75", lw=1.5, zorder=1)
        ax.scatter(x, s, marker="o", color="0.35", label="standard of care", zorder=2)
        ax.scatter(x, a, marker="D", color="tab:blue", label="adaptive twin", zorder=3)
        if limit is not None:
            ax.axhline(limit, color="tab:red", ls="--", lw=1, label=f"limit {limit:g} Gy")
        ax.set_xlim(-0.6, len(x) - 0.4)
        ax.set_xticks(x, labels, fontsize=7, rotation=90 if len(x) > 12 else 0)
        ax.set_xlabel("virtual patient (truth seed)")
        ax.set_ylabel(f"true {r} {_NAMES.get(q, q)} (Gy)")
        ax.set_title(f"{r} {_NAMES.get(q, q)}", fontsize=10)
        ax.legend(fontsize=7)
    fig.suptitle("Adaptive twin policy vs standard of care (true outcome per patient)", fontsize=10)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=130)
    plt.close(fig)
    return buf.getvalue()


# ---- main ---------------------------------------------------------------------------------------
def _finite(x):
    """JSON-safe: NaN and infinities become null."""
    if isinstance(x, dict):
        return {k: _finite(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_finite(v) for v in x]
    if isinstance(x, float | np.floating):
        return float(x) if math.isfinite(x) else None
    if isinstance(x, np.bool_):
        return bool(x)
    if isinstance(x, np.integer):
        return int(x)
    return x


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--patients", type=int, default=None, help="virtual patients (default 20)")
    ap.add_argument("--seed", type=int, default=1, help="first truth/noise seed")
    ap.add_argument("--quick", action="store_true", help="2 patients, small draw counts")
    ap.add_argument("--study", type=Path, default=None, help="twin study YAML (default embedded)")
    ap.add_argument("--out", type=Path, default=Path("validation/results/adaptive_policy"))
    ap.add_argument("--max-draws", type=int, default=None, help="forecast draws (study's)")
    ap.add_argument("--samples", type=int, default=None, help="posterior samples (study's)")
    ap.add_argument("--steps", type=int, default=None, help="optimiser steps (study's)")
    args = ap.parse_args(argv)

    source = (args.study or default_twin_study_path()).resolve()
    original = load_twin_study(source)  # validates before anything runs
    spec = original.spec
    defaults = (
        QUICK
        if args.quick
        else {
            "patients": 20,
            "samples": spec.inference.num_samples,
            "max_draws": spec.forecast.max_draws,
            "steps": spec.optimise.steps,
        }
    )
    settings = {
        "patients": args.patients if args.patients is not None else defaults["patients"],
        "samples": args.samples if args.samples is not None else defaults["samples"],
        "max_draws": args.max_draws if args.max_draws is not None else defaults["max_draws"],
        "steps": args.steps if args.steps is not None else defaults["steps"],
    }
    for k, lo in (("patients", 1), ("samples", 2), ("max_draws", 2), ("steps", 1)):
        if settings[k] < lo:
            ap.error(f"--{k.replace('_', '-')} = {settings[k]}; allowed: an integer >= {lo}")
    if settings["max_draws"] > settings["samples"] * spec.inference.num_chains:
        print(
            f"note: --max-draws {settings['max_draws']} exceeds the posterior's draws; "
            "forecasts use all of them"
        )
    args.out.mkdir(parents=True, exist_ok=True)
    seeds = list(range(args.seed, args.seed + settings["patients"]))
    print(
        f"study {source.name} (sha256 {original.sha256[:12]}), {spec.treatment.n_cycles} "
        f"cycles every {spec.treatment.interval_h:g} h, {spec.treatment.decisions} decisions; "
        f"patients {seeds[0]}..{seeds[-1]}; samples {settings['samples']}, forecast draws "
        f"{settings['max_draws']}, optimiser steps {settings['steps']}",
        flush=True,
    )

    patients: list[dict] = []
    failed: list[dict] = []
    t_start = time.perf_counter()
    study_path = source
    study = load_twin_study(study_path)
    for i, seed in enumerate(seeds):
        t0 = time.perf_counter()
        tag = f"[patient {i + 1}/{len(seeds)} seed {seed}]"

        def say(msg, tag=tag, t0=t0):
            print(f"  {tag} {time.perf_counter() - t0:6.0f} s  {msg}", flush=True)

        try:
            p = _patient(study_path, study, seed, settings, say)
        except twinjax.SolverError as err:  # a solve that failed: recorded, not hidden
            failed.append({"seed": seed, "error": str(err)})
            print(f"{tag} FAILED: {err}", flush=True)
            continue
        patients.append(p)
        ad, soc = p["courses"]["adaptive"], p["courses"]["standard_of_care"]
        obj = study.spec.objective.region
        print(
            f"{tag} done in {p['wall_time_s']['total']:.0f} s: tumour BED SoC "
            f"{soc['true'][obj]['bed_Gy']:.1f} -> adaptive {ad['true'][obj]['bed_Gy']:.1f} "
            f"Gy; constraints met SoC {soc['all_constraints_met']}, adaptive "
            f"{ad['all_constraints_met']}",
            flush=True,
        )
    if not patients:
        print("no patient completed", file=sys.stderr)
        return 1

    print()
    _print_table(patients, study)
    summary = _summary(patients, study, args.seed)
    _print_summary(summary)
    worst = max(p["loop_truth_rel_diff"] for p in patients)
    agree = worst <= REL_TOL
    print(
        f"  script truth vs run_loop's truth of the adaptive course: max relative difference "
        f"{worst:.1e} ({'agree' if agree else 'DISAGREE'})"
    )
    if failed:
        print(f"  {len(failed)} patient(s) failed: {[f['seed'] for f in failed]}")

    doc = {
        "provenance": {
            "twinjax_version": twinjax.__version__,
            "jax_version": jax.__version__,
            "python": platform.python_version(),
            "study": str(source),
            "study_sha256": original.sha256,
            "template": study.template.name,
            "seeds": seeds,
            "settings": settings,
            "soc_activity_MBq": SOC_ACTIVITY_MBQ,
            "bootstrap": {"resamples": N_BOOT, "level": LEVEL, "seed": args.seed},
            "command": [Path(sys.argv[0]).name, *sys.argv[1:]] if argv is None else argv,
            "finished_utc": datetime.now(UTC).isoformat(timespec="seconds"),
            "wall_time_s": time.perf_counter() - t_start,
            "script_sha256": hashlib.sha256(Path(__file__).read_bytes()).hexdigest(),
        },
        "objective": spec.objective.model_dump(),
        "constraints": [c.model_dump() for c in spec.constraints],
        "summary": summary,
        "loop_truth_max_rel_diff": worst,
        "failed": failed,
        "patients": patients,
    }
    _atomic_write(args.out / "adaptive_policy.json", json.dumps(_finite(doc), indent=1).encode())
    _atomic_write(args.out / "adaptive_policy.png", _figure(patients, study))
    print(f"wrote {args.out / 'adaptive_policy.json'} and {args.out / 'adaptive_policy.png'}")
    return 0 if agree else 1


if __name__ == "__main__":
    sys.exit(main())
