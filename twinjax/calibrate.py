"""`twinjax calibrate`: a patient manifest + time-activity CSV -> posterior, summary and fit plot.

Outputs (each written atomically: temporary file + rename, so an interrupted or failed write
leaves the previous file intact):
- ``posterior.nc`` — ArviZ InferenceData (posterior, sample_stats, observed_data) with provenance
  and the SHA-256 of each group (``twinjax_sha256``, checked when read back);
- ``summary.json`` — per parameter and region TIA: mean, sd, 5/50/95 % quantiles (R-hat and ESS
  for NUTS), the convergence verdict and its messages, provenance;
- ``fit.png`` — per region: the data, the posterior median curve and its 90 % band.
"""

from __future__ import annotations

import io
import json
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from ._errors import InputError
from ._files import atomic_write as _atomic_write
from ._files import write_netcdf
from .imaging.io import check_against_patient, load_patient, read_tacs
from .imaging.observe import LognormalError
from .inference.fit import Posterior, fit
from .inference.model import Observed
from .inference.predict import credible_band, predict_activity
from .models.library import Template, load_template

__all__ = ["calibrate_patient", "write_calibration"]


def calibrate_patient(
    patient_path,
    data_path,
    *,
    template: str | Template = "psma617_reduced",
    method: str = "nuts",
    cv: Mapping[str, float] | float = 0.2,
    calibration_cv: float = 0.05,
    until_h: float | None = None,
    **fit_kwargs,
):
    """Load, validate and fit one patient. Regions measured but absent from the template are
    dropped (and reported); everything is validated before any solve.

    **Arguments:** `cv` — measurement CV per region (or one for all); `calibration_cv` — CV of the
    per-scan calibration factor; `until_h` — use only scans up to this time (h); the rest go
    to [`twinjax.fit`][].

    **Returns:** ``(posterior, template, patient, data, dropped_rois)``.
    """
    tpl = template if isinstance(template, Template) else load_template(template)
    patient = load_patient(patient_path)
    data = read_tacs(data_path, patient.patient_id)
    check_against_patient(data, patient)
    if until_h is not None:
        data = data.until(until_h)
        if data.n == 0:
            raise InputError(f"no scans at or before until_h = {until_h} h")
    known = set(tpl.rois)
    dropped = tuple(r for r in data.rois if r not in known)
    keep = np.array([r in known for r in data.roi])
    if not keep.any():
        raise InputError(
            f"none of the measured regions {list(data.rois)} is a region of template "
            f"{tpl.name!r}; its regions: {sorted(known)}"
        )
    observed = Observed(
        tuple(np.asarray(data.roi)[keep]), data.time_h[keep], data.activity_MBq[keep]
    )
    cvs = dict(cv) if isinstance(cv, Mapping) else dict.fromkeys(observed.rois, float(cv))
    noise = LognormalError(cvs, calibration_cv=calibration_cv)
    post = fit(tpl, patient, observed, noise=noise, method=method, **fit_kwargs)
    return post, tpl, patient, observed, dropped


def write_calibration(post: Posterior, tpl: Template, patient, out_dir) -> list[Path]:
    """Write ``posterior.nc``, ``summary.json`` and ``fit.png`` to `out_dir`."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    summary = {
        "patient": patient.patient_id,
        "template": tpl.name,
        "method": post.method,
        "parameters": post.summary(),
        "diagnostics": None if post.diagnostics is None else post.diagnostics.as_dict(),
        "provenance": post.provenance,
    }
    t_end = float(max(post.observed.time_h.max(), np.asarray(patient.schedule.time_h)[-1] + 168))
    times = np.linspace(0.0, t_end * 1.15, 240)
    rois = post.observed.rois
    curves = predict_activity(post, tpl, patient.schedule, times, rois)
    png = _plot(post, curves, times, f"{patient.patient_id}: {tpl.name} ({post.method})")
    # Checksummed (SHA-256 of every group in its attributes), so that `twinjax forecast` and
    # `load_posterior` refuse the file if it is later truncated or bit-flipped.
    write_netcdf(out / "posterior.nc", post.to_inference_data())
    _atomic_write(out / "summary.json", (json.dumps(summary, indent=2) + "\n").encode())
    _atomic_write(out / "fit.png", png)
    return [out / "posterior.nc", out / "summary.json", out / "fit.png"]


def _plot(post: Posterior, curves, times, title: str) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rois = list(curves)
    ncol = min(3, len(rois))
    nrow = -(-len(rois) // ncol)
    fig, axes = plt.subplots(nrow, ncol, figsize=(4.2 * ncol, 3.2 * nrow), dpi=110, squeeze=False)
    for ax, roi in zip(axes.flat, rois, strict=False):
        lo, med, hi = credible_band(curves[roi])
        ax.fill_between(times, lo, hi, alpha=0.3, label="90 % band")
        ax.plot(times, med, lw=1.6, label="posterior median")
        sel = np.array([r == roi for r in post.observed.roi])
        ax.plot(
            post.observed.time_h[sel], post.observed.activity_MBq[sel], "ko", ms=4, label="data"
        )
        ax.set_yscale("log")
        ax.set_title(roi, fontsize=9)
        ax.set_xlabel("time (h)")
        ax.set_ylabel("activity (MBq)")
        positive = med[med > 0]
        if positive.size:
            ax.set_ylim(max(positive.min(), positive.max() / 1e4), positive.max() * 3)
    for ax in list(axes.flat)[len(rois) :]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=7)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()
