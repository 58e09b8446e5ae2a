"""Studies: what `twinjax simulate` runs (template + schedule + output times), and its outputs.

A study YAML (``configs/studies/*.yaml``) names a template, optional parameter overrides, a
schedule and output times. [`run_simulation`][] solves it and [`write_simulation`][] writes

- ``tacs.csv`` — one row per time and region: ``time_h, roi, activity_MBq, cumulated_MBqh``;
- ``tia.csv`` — time-integrated activity to infinity per region (MBq h) and per administered GBq;
- ``tacs.png`` — the time-activity curves;
- ``summary.json`` — study, template, nuclide, twinjax version and input hash (provenance).

Every file is written to a temporary name and renamed, so an interrupted run leaves no half-written
file.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import io
import json
import os
from pathlib import Path

import jax.numpy as jnp
import numpy as np

from ._config import StudySpec, read_yaml, validate
from ._errors import InputError
from ._files import atomic_write as _atomic_write
from ._resources import configs_dir
from .models._simulate import Trajectory, simulate
from .models.library import Template, load_template
from .schedule import Administration, Schedule

__all__ = ["SimulationResult", "default_study_path", "load_study", "run_simulation"]


def default_study_path() -> Path:
    return configs_dir() / "studies" / "default.yaml"


def template_of_study(ref: str, study_path: Path) -> Template:
    """The template a study names: a shipped one, or a YAML path relative to the study file."""
    if ref.endswith((".yaml", ".yml")) and not Path(ref).is_absolute():
        ref = str((study_path.parent / ref).resolve())
    return load_template(ref)


def load_study(path: str | Path | None = None) -> tuple[StudySpec, Template, Schedule, np.ndarray]:
    """Read and validate a study (default: the embedded default study). Nothing is solved yet."""
    p = Path(path) if path is not None else default_study_path()
    spec = validate(StudySpec, read_yaml(p), p.name)
    tpl = template_of_study(spec.template, p)
    unknown = [k for k in spec.parameters if k not in tpl.params]
    if unknown:
        raise InputError(
            f"{p.name}: parameters {unknown} are not parameters of template {tpl.name!r}"
        )
    schedule = _schedule(spec, tpl, p.name)
    if isinstance(spec.times, list):
        times = np.asarray(spec.times, dtype=float)
    else:
        t = spec.times
        if not (t.stop_h > t.start_h >= 0 and t.n >= 2):
            raise InputError(
                f"{p.name}: times = {t.model_dump()}; allowed: 0 <= start_h < stop_h and n >= 2"
            )
        times = np.linspace(t.start_h, t.stop_h, t.n)
    rois = spec.rois or list(tpl.rois)
    for r in rois:
        tpl.roi(r)
    return spec, tpl, schedule, times


def _schedule(spec: StudySpec, tpl: Template, where: str) -> Schedule:
    s = spec.schedule
    if (s.administrations is None) == (s.cycles is None):
        raise InputError(f"{where}: schedule needs exactly one of 'administrations' or 'cycles'")
    if s.administrations is not None:
        return Schedule.from_administrations(
            [
                Administration(a.time_h, a.activity_MBq, tpl.nuclide, a.ligand_nmol, a.duration_h)
                for a in s.administrations
            ]
        )
    c = s.cycles
    return Schedule.cycles(
        c.activity_MBq,
        c.n_cycles,
        c.interval_h,
        nuclide=tpl.nuclide,
        ligand_nmol=c.ligand_nmol,
        duration_h=c.duration_h,
    )


@dataclasses.dataclass(frozen=True)
class SimulationResult:
    spec: StudySpec
    template: Template
    schedule: Schedule
    trajectory: Trajectory
    rois: tuple[str, ...]
    input_hash: str

    def roi_activity(self, roi: str) -> np.ndarray:
        return np.asarray(sum(self.trajectory.activity(g) for g in self.template.roi(roi)))

    def roi_cumulated(self, roi: str) -> np.ndarray:
        return np.asarray(
            sum(self.trajectory.cumulated_activity(g) for g in self.template.roi(roi))
        )

    def roi_tia(self, roi: str) -> float:
        return float(sum(self.trajectory.tia(g) for g in self.template.roi(roi)))


def run_simulation(path: str | Path | None = None) -> SimulationResult:
    """Load a study and solve it."""
    p = Path(path) if path is not None else default_study_path()
    spec, tpl, schedule, times = load_study(p)
    params = {**tpl.params, **{k: jnp.asarray(v) for k, v in spec.parameters.items()}}
    params = tpl.derive(params)
    traj = simulate(tpl.model, params, schedule, times)
    digest = hashlib.sha256(p.read_bytes() + (tpl.path.read_bytes() if tpl.path else b""))
    return SimulationResult(
        spec=spec,
        template=tpl,
        schedule=schedule,
        trajectory=traj,
        rois=tuple(spec.rois or tpl.rois),
        input_hash=digest.hexdigest(),
    )


def write_simulation(result: SimulationResult, out_dir: str | Path) -> list[Path]:
    """Write ``tacs.csv``, ``tia.csv``, ``summary.json`` and ``tacs.png`` to `out_dir`."""
    from . import __version__

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if not os.access(out, os.W_OK):
        raise InputError(f"output directory {str(out)!r} is not writable")
    traj = result.trajectory
    times = np.asarray(traj.times_h)
    administered = float(np.sum(np.asarray(result.schedule.activity_MBq)))

    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["time_h", "roi", "activity_MBq", "cumulated_MBqh"])
    for roi in result.rois:
        act, cum = result.roi_activity(roi), result.roi_cumulated(roi)
        for t, a, c in zip(times, act, cum, strict=True):
            w.writerow([f"{t:.6g}", roi, f"{a:.8g}", f"{c:.8g}"])
    tacs = buf.getvalue().encode()

    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["roi", "tia_MBqh", "tia_per_administered_h"])
    tia = {roi: result.roi_tia(roi) for roi in result.rois}
    for roi, v in tia.items():
        w.writerow([roi, f"{v:.8g}", f"{v / administered:.8g}"])
    tia_csv = buf.getvalue().encode()

    summary = {
        "study": result.spec.name,
        "template": result.template.name,
        "nuclide": result.schedule.nuclide,
        "administered_MBq": [float(a) for a in np.asarray(result.schedule.activity_MBq)],
        "administration_times_h": [float(a) for a in np.asarray(result.schedule.time_h)],
        "tia_MBqh": tia,
        "solver_success": bool(traj.success),
        "provenance": {"twinjax_version": __version__, "input_sha256": result.input_hash},
    }
    summary_bytes = (json.dumps(summary, indent=2) + "\n").encode()
    png = _plot(result, times)

    written = []
    for name, data in [
        ("tacs.csv", tacs),
        ("tia.csv", tia_csv),
        ("summary.json", summary_bytes),
        ("tacs.png", png),
    ]:
        _atomic_write(out / name, data)
        written.append(out / name)
    return written


def _plot(result: SimulationResult, times: np.ndarray) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 4.5), dpi=120)
    for roi in result.rois:
        ax.plot(times, result.roi_activity(roi), label=roi, lw=1.8)
    ax.set_yscale("log")
    ax.set_xlabel("time since first administration (h)")
    ax.set_ylabel("activity (MBq)")
    ax.set_title(f"{result.spec.name}: {result.template.spec.title}", fontsize=9)
    ax.grid(alpha=0.3, which="both")
    top = max(float(np.max(result.roi_activity(r))) for r in result.rois)
    ax.set_ylim(top / 1e5, 2.0 * top)
    ax.legend(fontsize=8, ncol=2)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()
