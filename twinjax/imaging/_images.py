"""Reading images (private, re-exported by [`twinjax.imaging.volumes`][], whose docs give
the rules for times, units and decay correction): [`read_images`][] and [`read_image`][],
NIfTI files and DICOM series (pydicom, or SimpleITK on request)."""

from __future__ import annotations

import dataclasses
import datetime as _dt
import math
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import numpy as np

from .._errors import InputError
from . import _dicom
from ._dicom import ImagingWarning
from ._geometry import DECAY_CORRECTIONS, DICOM_UNITS, Geometry, ScanInfo, Volume
from ._nifti import is_nifti, read_nifti


def _simpleitk():
    try:
        import SimpleITK
    except ImportError:
        raise InputError(
            'reader = "simpleitk" needs SimpleITK, the optional imaging extra; allowed: '
            'pip install "twinjax[imaging]", or reader = "pydicom"'
        ) from None
    return SimpleITK


def _read_sitk(path: Path) -> tuple[np.ndarray, np.ndarray]:
    sitk = _simpleitk()
    try:
        if path.is_dir():
            reader = sitk.ImageSeriesReader()
            files = reader.GetGDCMSeriesFileNames(str(path))
            reader.SetFileNames(files)
            reader.SetOutputPixelType(sitk.sitkFloat64)
            img = reader.Execute()
        else:
            img = sitk.ReadImage(str(path), sitk.sitkFloat64)
    except RuntimeError as err:
        raise InputError(
            f"{path}: SimpleITK cannot read the series ({type(err).__name__})"
        ) from None
    data = np.transpose(sitk.GetArrayFromImage(img), (2, 1, 0)).astype(np.float64)
    affine = np.eye(4)
    affine[:3, :3] = np.asarray(img.GetDirection()).reshape(3, 3) * np.asarray(img.GetSpacing())
    affine[:3, 3] = img.GetOrigin()
    return data, affine


def _scan_partial(
    s: _dicom._Series, admin: _dicom.When, where: str, *, start_h: float | None = None
) -> _PartialScan:
    if start_h is not None:
        start, rolled = start_h, False
    elif s.scan_start is None:
        raise InputError(
            f"{where}: no AcquisitionTime or SeriesTime; allowed: give the scan's time_h in the "
            "study file"
        )
    else:
        start, rolled = _dicom.hours_between(admin, s.scan_start)
    if rolled:
        warnings.warn(
            f"{where}: the scan time has no date and is earlier in the day than the "
            f"administration; it is taken to be on the next day (midnight rollover), "
            f"{start:.4g} h after the administration",
            ImagingWarning,
            stacklevel=4,
        )
    if start < 0:
        raise InputError(
            f"{where}: the scan starts {-start:.4g} h before the administration; allowed: scans "
            "after it (check administration.datetime or the headers' times)"
        )
    units = s.units
    if units is not None:
        if units not in DICOM_UNITS:
            raise InputError(
                f"{where}: Units = {units!r}; allowed: {', '.join(DICOM_UNITS)} (an activity "
                "image), or give units in the study file"
            )
        units = DICOM_UNITS[units]
    decay = s.decay_correction
    if decay is not None and decay not in DECAY_CORRECTIONS:
        raise InputError(
            f"{where}: DecayCorrection = {decay!r}; allowed: {', '.join(DECAY_CORRECTIONS)}"
        )
    ref = None
    if start_h is None and s.series_reference is not None:
        ref = _dicom.hours_between(admin, s.series_reference)[0]
    return _PartialScan(
        start_h=start,
        frame_duration_h=(s.frame_duration_s or 0.0) / 3600.0,
        units=units,
        decay_correction=decay,
        reference_h=ref,
        administered_MBq=_dicom.total_dose_MBq(s.total_dose, where),
        header_half_life_h=None if s.half_life_s is None else s.half_life_s / 3600.0,
        header_nuclide=s.nuclide_meaning,
    )


@dataclasses.dataclass(frozen=True)
class _PartialScan:
    """Header fields before the caller's overrides; `complete` demands units and decay state."""

    start_h: float
    frame_duration_h: float
    units: str | None
    decay_correction: str | None
    reference_h: float | None
    administered_MBq: float | None
    header_half_life_h: float | None
    header_nuclide: str | None

    def complete(self, where: str, **overrides) -> ScanInfo:
        fields = dataclasses.asdict(self)
        fields.update({k: v for k, v in overrides.items() if v is not None})
        fields["units"] = DICOM_UNITS.get(fields["units"], fields["units"])
        for key, keyword in (("units", "Units"), ("decay_correction", "DecayCorrection")):
            if fields[key] is None:
                raise InputError(
                    f"{where}: {keyword} is missing from the header; allowed: give {key} in the "
                    "study file (or the read_images argument)"
                )
        try:
            return ScanInfo(**fields)
        except InputError as err:
            raise InputError(f"{where}: {err}") from None


def _per_path(value, n: int, name: str) -> list:
    if value is None or isinstance(value, str | int | float):
        return [value] * n
    values = list(value)
    if len(values) != n:
        raise InputError(f"{name}: {len(values)} values for {n} images; allowed: one per image")
    return values


def read_images(
    paths: Sequence[str | Path],
    *,
    administration: _dt.datetime | str | None = None,
    reader: Literal["pydicom", "simpleitk"] = "pydicom",
    time_h=None,
    frame_duration_s=None,
    units=None,
    decay_correction=None,
) -> list[Volume]:
    """Read the images of one administration (NIfTI files or DICOM series).

    **Arguments:**
    - `paths`: NIfTI files (``.nii``, ``.nii.gz``) or DICOM series (a folder of single-frame
      files, or one multi-frame file).
    - `administration`: the administration's local date-time (a `datetime` or ISO-8601 text),
      or ``None`` to take it from the DICOM headers (module docs).
    - `reader`: ``pydicom`` (default) or ``simpleitk`` (needs ``pip install
      "twinjax[imaging]"``; reads pixels and geometry through ITK/GDCM, which also decodes
      compressed transfer syntaxes); headers are always read with pydicom.
    - `time_h` (acquisition start, h since administration), `frame_duration_s` (s), `units`
      (a key of `UNITS`) and `decay_correction` (``NONE``, ``START``, ``ADMIN``): one value for
      all images or one per image (``None``: from the DICOM header). A NIfTI image gets a
      [`ScanInfo`][] when `time_h` and `units` are given (decay correction ``NONE`` and
      duration 0 unless given; ``START`` refers to its start).

    **Returns:** one [`Volume`][] per path (float64 voxels after Rescale Slope/Intercept or
    scl_slope/scl_inter).

    **Raises:** `InputError` naming the file, the DICOM keyword and what is allowed.
    """
    if reader not in ("pydicom", "simpleitk"):
        raise InputError(f"reader = {reader!r}; allowed: pydicom, simpleitk")
    ps = [Path(p) for p in paths]
    n = len(ps)
    times = _per_path(time_h, n, "time_h")
    durations = _per_path(frame_duration_s, n, "frame_duration_s")
    unit_list = _per_path(units, n, "units")
    decays = _per_path(decay_correction, n, "decay_correction")
    for p in ps:
        if not p.exists():
            raise InputError(f"{p}: does not exist; allowed: a NIfTI file or a DICOM series")
    out: list[Volume] = []
    dicom: list[tuple[int, _dicom._Series]] = []
    for k, p in enumerate(ps):
        if is_nifti(p):
            data, affine = read_nifti(p)
            scan = None
            if times[k] is not None and unit_list[k] is not None:
                scan = _PartialScan(
                    float(times[k]), 0.0, None, "NONE", None, None, None, None
                ).complete(
                    str(p), units=unit_list[k], decay_correction=decays[k],
                    frame_duration_h=_duration_h(durations[k], p),
                )  # fmt: skip
            out.append(Volume(data, Geometry.from_affine(data.shape, affine), str(p), None, scan))
            continue
        s = _dicom.read_series(p, pixels=reader == "pydicom")
        if reader == "simpleitk":
            s.data, s.affine = _read_sitk(p)
        dicom.append((k, s))
        out.append(Volume(s.data, Geometry.from_affine(s.data.shape, s.affine), str(p)))
    timed = [(k, s) for k, s in dicom if times[k] is None]
    admin = _dicom.as_when(administration)
    if timed and admin is None:
        admin = _dicom.admin_time([s for _, s in timed], [str(ps[k]) for k, _ in timed])
    for k, s in dicom:
        w = str(ps[k])
        if times[k] is None:
            partial = _scan_partial(s, admin, w)
        else:  # the caller's time: no header date or time is needed
            partial = _scan_partial(s, (None, 0.0), w, start_h=float(times[k]))
        scan = partial.complete(
            w, units=unit_list[k], decay_correction=decays[k],
            frame_duration_h=_duration_h(durations[k], ps[k]),
        )  # fmt: skip
        out[k] = dataclasses.replace(out[k], frame_of_reference_uid=s.frame_of_reference_uid,
                                     scan=scan)  # fmt: skip
    return out


def _duration_h(seconds, path: Path) -> float | None:
    if seconds is None:
        return None
    if isinstance(seconds, bool) or not (math.isfinite(float(seconds)) and float(seconds) >= 0):
        raise InputError(f"{path}: frame_duration_s = {seconds!r}; allowed: a duration >= 0 s")
    return float(seconds) / 3600.0


def read_image(path: str | Path, **kwargs) -> Volume:
    """Read one image: [`read_images`][] with one path (same keyword arguments)."""
    return read_images([path], **kwargs)[0]
