"""Outputs of the main job (`twinjax run`): summary, posteriors, the twin file, figures, report.

[`write_loop_outputs`][] writes, each file atomically (temporary name + rename):

- ``summary.json`` — provenance (twinjax version, study SHA-256, seeds, wall time), the synthetic
  truth, and per decision point: convergence verdict, posterior summary, the recommended next
  activity and why, the optimiser's plan, every library scenario's organ/lesion dose, BED, EQD2,
  TCP and NTCP (median and 90 % interval), its constraint-violation probabilities, feasibility
  and probability of being best, and the truth's outcome of the recommended course; then the
  forecast-narrowing table (a fixed reference course forecast from the prior and after each
  assimilation, with the truth).
- ``posterior_after_cycle<k>.nc`` — each posterior (ArviZ netCDF);
- ``twin.twin`` — the final twin (`DigitalTwin.load` reads it);
- ``tac_fit_cycle<k>.png``, ``dose_bed.png``, ``scenarios.png``, ``narrowing.png``;
- ``report.md`` — a short report linking all of them.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np

from ._files import atomic_write as _atomic_write
from .inference.predict import credible_band, predict_activity
from .loop import LoopResult
from .store import _jsonable

__all__ = ["write_loop_outputs"]


def _png(fig) -> bytes:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    return buf.getvalue()


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def write_loop_outputs(result: LoopResult, out_dir: str | Path) -> list[Path]:
    """Write the outputs of `run_loop` to `out_dir` (module docs); returns the paths."""
    from . import __version__

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []

    def put(name: str, data: bytes) -> None:
        _atomic_write(out / name, data)
        written.append(out / name)

    spec = result.study.spec
    decisions = [{k: v for k, v in d.items() if not k.startswith("_")} for d in result.decisions]
    summary = {
        "study": spec.name,
        "description": spec.description,
        "synthetic_patient": True,
        "provenance": {
            "twinjax_version": __version__,
            "study_sha256": result.study.sha256,
            "template": result.study.template.name,
            "truth_seed": spec.patient.truth_seed,
            "noise_seed": spec.imaging.noise_seed,
            "inference": spec.inference.model_dump(),
            "wall_time_s": round(result.wall_time_s, 1),
        },
        "truth": result.truth,
        "objective": spec.objective.model_dump(),
        "constraints": [c.model_dump() for c in spec.constraints],
        "decisions": decisions,
        "narrowing": result.narrowing,
    }
    put("summary.json", (json.dumps(_jsonable(summary), indent=1) + "\n").encode())
    for k, post in enumerate(result.posteriors, start=1):
        post.save(out / f"posterior_after_cycle{k}.nc")
        written.append(out / f"posterior_after_cycle{k}.nc")
    result.twin.save(out / "twin.twin")
    written.append(out / "twin.twin")
    for k, post in enumerate(result.posteriors, start=1):
        put(f"tac_fit_cycle{k}.png", _tac_figure(result, k, post))
    put("dose_bed.png", _dose_bed_figure(result))
    put("scenarios.png", _scenario_figure(result))
    put("narrowing.png", _narrowing_figure(result))
    put("report.md", _report(result, summary).encode())
    return written


def _tac_figure(result: LoopResult, k: int, post) -> bytes:
    plt = _plt()
    tpl = result.study.template
    rois = list(result.study.spec.imaging.rois)
    t_end = float(post.observed.time_h.max()) * 1.1 + 24.0
    times = np.linspace(0.0, t_end, 200)
    # Every figure uses the twin's final schedule: administrations after `t_end` do not change
    # the curves before it, and one schedule structure means one compilation for all figures.
    schedule = result.twin.patient.schedule
    curves = predict_activity(post, tpl, schedule, times, rois, max_draws=100)
    fig, axes = plt.subplots(1, len(rois), figsize=(3.4 * len(rois), 3.0), squeeze=False)
    for ax, roi in zip(axes[0], rois, strict=True):
        lo, med, hi = credible_band(curves[roi])
        ax.fill_between(times, lo, hi, alpha=0.3, label="90 % band")
        ax.plot(times, med, lw=1.5, label="posterior median")
        sel = np.array([r == roi for r in post.observed.roi])
        ax.plot(post.observed.time_h[sel], post.observed.activity_MBq[sel], "ko", ms=3.5,
                label="scans")  # fmt: skip
        ax.set_yscale("log")
        ax.set_title(roi, fontsize=9)
        ax.set_xlabel("time (h)")
    axes[0][0].set_ylabel("activity (MBq)")
    axes[0][0].legend(fontsize=7)
    fig.suptitle(f"time-activity fit after cycle {k} ({post.method})", fontsize=10)
    return _png(fig)


def _best_name(d: dict) -> str:
    rk = d["_ranking"]
    return rk.best if rk.best is not None else rk.scenarios[0]


def _dose_bed_figure(result: LoopResult) -> bytes:
    plt = _plt()
    regions = list(result.study.regions)
    n = len(result.decisions)
    fig, axes = plt.subplots(n, len(regions), figsize=(3.4 * len(regions), 2.8 * n), squeeze=False)
    for i, d in enumerate(result.decisions):
        fc, name = d["_forecast"], _best_name(d)
        for j, r in enumerate(regions):
            ax = axes[i][j]
            for q, colour in (("dose_Gy", "tab:blue"), ("bed_Gy", "tab:red")):
                v = fc.values[name][r][q]
                ax.hist(v, bins=25, alpha=0.5, color=colour, label=q.replace("_Gy", " (Gy)"))
            for c in result.study.constraints:
                if c.region == r and c.quantity in ("bed_Gy", "dose_Gy"):
                    ax.axvline(c.threshold, color="k", ls="--", lw=1, label="limit")
            ax.set_title(f"{r}, after cycle {d['after_cycle']}", fontsize=8)
            ax.set_xlabel("Gy")
        axes[i][0].set_ylabel(f"draws\n{name}", fontsize=7)
    axes[0][0].legend(fontsize=7)
    fig.suptitle("whole-course dose and BED of the best library scenario", fontsize=10)
    return _png(fig)


def _scenario_figure(result: LoopResult) -> bytes:
    plt = _plt()
    n = len(result.decisions)
    fig, axes = plt.subplots(n, 2, figsize=(10.0, 3.0 * n), squeeze=False)
    obj = result.study.objective
    for i, d in enumerate(result.decisions):
        rk, fc = d["_ranking"], d["_forecast"]
        names = rk.scenarios
        x = np.arange(len(names))
        v = [fc.values[s][obj.region][obj.quantity] for s in names]
        lo = [np.quantile(a, 0.05) for a in v]
        hi = [np.quantile(a, 0.95) for a in v]
        mid = [rk.utility[s] for s in names]
        colours = ["tab:green" if rk.feasible[s] else "tab:grey" for s in names]
        ax = axes[i][0]
        ax.errorbar(x, mid, yerr=[np.subtract(mid, lo), np.subtract(hi, mid)], fmt="none",
                    ecolor="k", lw=1)  # fmt: skip
        ax.scatter(x, mid, c=colours, zorder=3)
        ax.set_xticks(x, names, rotation=30, ha="right", fontsize=6)
        ax.set_ylabel(f"{obj.region} {obj.quantity}")
        ax.set_title(f"after cycle {d['after_cycle']}: expected utility, 90 % interval "
                     "(green: constraints met)", fontsize=8)  # fmt: skip
        ax = axes[i][1]
        width = 0.8 / max(1, len(result.study.constraints))
        for j, c in enumerate(result.study.constraints):
            label = _label(c)
            p = [rk.violation[s].get(label, np.nan) for s in names]
            ax.bar(x + j * width, p, width, label=label)
            ax.axhline(c.max_probability, color="k", ls=":", lw=1)
        ax.set_xticks(x, names, rotation=30, ha="right", fontsize=6)
        ax.set_ylabel("P(violation)")
        ax.legend(fontsize=6)
    return _png(fig)


def _label(c) -> str:
    """The constraint label the ranking uses (as `twinjax.decision`)."""
    from .decision import constraint_label

    return constraint_label(c)


def _narrowing_figure(result: LoopResult) -> bytes:
    plt = _plt()
    regions = list(result.study.regions)
    rows = result.narrowing
    fig, axes = plt.subplots(1, len(regions), figsize=(3.6 * len(regions), 3.0), squeeze=False)
    for ax, r in zip(axes[0], regions, strict=True):
        x = np.arange(len(rows))
        q = [row["forecast"][r]["bed_Gy"] for row in rows]
        med = np.array([v["median"] for v in q])
        ax.errorbar(x, med, yerr=[med - [v["lower"] for v in q], [v["upper"] for v in q] - med],
                    fmt="o", capsize=3, label="forecast, 90 % interval")  # fmt: skip
        truth = rows[0].get("truth", {}).get(r, {}).get("bed_Gy", {}).get("median")
        if truth is not None:
            ax.axhline(truth, color="tab:red", ls="--", lw=1, label="truth")
        ax.set_xticks(x, [row["information"] for row in rows], fontsize=7)
        ax.set_title(f"{r}: BED of {rows[0]['course']}", fontsize=8)
        ax.set_ylabel("BED (Gy)")
    axes[0][0].legend(fontsize=7)
    fig.suptitle("how the forecast narrowed as scans arrived", fontsize=10)
    return _png(fig)


def _fmt(v: dict) -> str:
    return f"{v['median']:.3g} [{v['lower']:.3g}, {v['upper']:.3g}]"


def _report(result: LoopResult, summary: dict) -> str:
    spec = result.study.spec
    lines = [
        f"# twinjax run: {spec.name}",
        "",
        "**Synthetic patient** (not a real person): true parameters drawn from the "
        f"`{result.study.template.name}` population prior (seed {spec.patient.truth_seed}); "
        "scans simulated from that truth. The twin never sees the truth.",
        "",
        f"Wall time {result.wall_time_s:.0f} s. Outputs: [summary.json](summary.json), "
        "[twin.twin](twin.twin), posteriors "
        + ", ".join(
            f"[after cycle {k}](posterior_after_cycle{k}.nc)"
            for k in range(1, len(result.posteriors) + 1)
        )
        + ".",
        "",
        f"Objective: maximise the {spec.objective.statistic} of {spec.objective.region} "
        f"{spec.objective.quantity}; constraints: "
        + "; ".join(
            f"P({c.region} {c.quantity} > {c.threshold:g}) <= {c.max_probability:g}"
            for c in spec.constraints
        )
        + " (whole course, cycles given included).",
        "",
    ]
    for d in summary["decisions"]:
        k = d["after_cycle"]
        rec = d["recommended"]
        conv = d["convergence"]
        lines += [
            f"## After cycle {k}",
            "",
            f"Scans at {', '.join(f'{t:g}' for t in d['scans_h'])} h. Convergence: "
            + ("n/a" if conv is None else f"**{conv['verdict']}**")
            + (f" ({'; '.join(conv['messages'])})" if conv and conv["messages"] else "")
            + ".",
            "",
            f"**Recommended cycle {rec['cycle']}: {rec['activity_MBq'] / 1000:.2f} GBq at "
            f"{rec['time_h']:g} h** — {rec['basis']}.",
            "",
            f"![fit](tac_fit_cycle{k}.png)",
            "",
            "| scenario | "
            + " | ".join(f"{r} BED (Gy)" for r in result.study.regions)
            + " | feasible | P(best) |",
            "|---" * (len(result.study.regions) + 3) + "|",
        ]
        rk = d["ranking"]
        for s in rk["scenarios"]:
            cells = [_fmt(d["forecast"][s][r]["bed_Gy"]) for r in result.study.regions]
            lines.append(
                f"| {s} | "
                + " | ".join(cells)
                + f" | {'yes' if rk['feasible'][s] else 'no'} | {rk['p_best'][s]:.2f} |"
            )
        truth = d["truth_of_recommended_course"]
        lines += [
            "",
            "Truth, recommended course: "
            + ", ".join(f"{r} BED {truth[r]['bed_Gy']['median']:.3g} Gy" for r in truth)
            + ".",
            "",
        ]
    lines += [
        "## Figures",
        "",
        "![dose and BED](dose_bed.png)",
        "",
        "![scenarios](scenarios.png)",
        "",
        "![narrowing](narrowing.png)",
        "",
    ]
    return "\n".join(lines)
