"""DICOM reading for [`twinjax.imaging.volumes`][] (private): PET/NM series and multi-frame
files, DICOM-SEG masks, and the timing, units and radionuclide fields of their headers.

Privacy: this module never puts a header's identity (PatientName, PatientID, birth date) or any
date or time into a message. Dates and times are parsed into day numbers and seconds held in a
private `_Series` that [`twinjax.imaging.volumes`][] turns into hours since administration and
drops. Errors quote the path the user gave and the DICOM keyword, and the value only for
non-identifying fields (Units, DecayCorrection, geometry). pydicom's own exception text is not
passed on (it may quote element values); only its type is named.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import math
import re
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from .._errors import InputError

# Relative tolerance of slice positions in a series (DICOM DS values carry ~12 digits; a
# scanner's slice positions are exact to far better than this).
_SLICE_TOL = 1e-4
_SKIP_FILES = {"DICOMDIR"}
#: RadionuclideTotalDose values below this are read as MBq (volumes module docs).
_MBQ_RULE_BELOW = 1e5

When = tuple[int | None, float]  # (proleptic day number or None when only a time is known, s)


@dataclasses.dataclass
class _Series:
    """A read DICOM image: voxels on an (i, j, k) grid and its header fields (private).

    `data` is (columns, rows, slices) in float64 after Rescale Slope/Intercept; `affine` maps
    (i, j, k, 1) to DICOM patient coordinates (LPS, mm). The `When` fields are never returned by
    the public API: `volumes` turns them into hours since administration.
    """

    data: np.ndarray
    affine: np.ndarray
    modality: str
    units: str | None
    decay_correction: str | None
    frame_duration_s: float | None
    frame_of_reference_uid: str | None
    total_dose: float | None
    half_life_s: float | None
    nuclide_meaning: str | None
    scan_start: When | None
    series_reference: When | None
    admin: When | None


def is_dicom_file(path: Path) -> bool:
    """Whether `path` starts like a DICOM Part-10 file (preamble + ``DICM``)."""
    try:
        with path.open("rb") as f:
            head = f.read(132)
    except OSError:
        return False
    return len(head) == 132 and head[128:132] == b"DICM"


def _dcmread(path: Path, *, pixels: bool = True) -> Any:
    import pydicom

    try:
        return pydicom.dcmread(str(path), stop_before_pixels=not pixels)
    except Exception as err:  # InvalidDicomError, EOFError, struct errors on truncation, ...
        raise InputError(
            f"{path}: not a readable DICOM file ({type(err).__name__}); allowed: an intact DICOM "
            "Part-10 file (re-export it from the scanner or PACS)"
        ) from None


def _pixels(ds: Any, path: Path) -> np.ndarray:
    try:
        return np.asarray(ds.pixel_array)
    except Exception as err:
        ts = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
        raise InputError(
            f"{path}: PixelData cannot be decoded ({type(err).__name__}; TransferSyntaxUID = "
            f"{str(ts)!r}); allowed: complete, uncompressed or natively decodable pixel data "
            "(for compressed series read with reader: simpleitk, pip install "
            '"twinjax[imaging]")'
        ) from None


def _files_of(path: Path) -> list[Path]:
    if not path.exists():
        raise InputError(f"{path}: does not exist; allowed: a DICOM file or a folder of them")
    if path.is_file():
        return [path]
    files = sorted(
        p for p in path.iterdir() if p.is_file() and not p.name.startswith(".")
        and p.name not in _SKIP_FILES
    )  # fmt: skip
    if not files:
        raise InputError(f"{path}: the folder holds no files; allowed: one DICOM series")
    return files


# ---------------------------------------------------------------------------------------------
# Dates and times (never shown in messages)
# ---------------------------------------------------------------------------------------------


def _bad_time(path: Path, keyword: str, kind: str) -> InputError:
    return InputError(
        f"{path}: {keyword} is not a valid DICOM {kind} (the value is not shown: twinjax does "
        "not report dates or times); allowed: a DICOM DA/TM/DT value"
    )


def _parse_da(raw: Any, path: Path, keyword: str) -> int | None:
    s = str(raw or "").strip().replace(".", "")  # ACR-NEMA wrote YYYY.MM.DD
    if not s:
        return None
    try:
        return _dt.date(int(s[0:4]), int(s[4:6]), int(s[6:8])).toordinal()
    except (ValueError, IndexError):
        raise _bad_time(path, keyword, "date (DA)") from None


def _parse_tm(raw: Any, path: Path, keyword: str) -> float | None:
    s = str(raw or "").strip().replace(":", "")  # ACR-NEMA wrote HH:MM:SS
    if not s:
        return None
    m = re.fullmatch(r"(\d{2})(\d{2})?(\d{2})?(\.\d{1,6})?", s)
    if m is None:
        raise _bad_time(path, keyword, "time (TM)")
    h, mi, se = int(m[1]), int(m[2] or 0), int(m[3] or 0)
    if h > 23 or mi > 59 or se > 60:
        raise _bad_time(path, keyword, "time (TM)")
    return 3600.0 * h + 60.0 * mi + se + float(m[4] or 0.0)


def _parse_dt(raw: Any, path: Path, keyword: str) -> When | None:
    s = str(raw or "").strip()
    if not s:
        return None
    s = re.sub(r"[+-]\d{4}$", "", s)  # UTC offset: every time of a study is on one clock
    if not re.fullmatch(r"\d{8}(\d{2,6}(\.\d{1,6})?)?", s):
        raise _bad_time(path, keyword, "date-time (DT)")
    day = _parse_da(s[:8], path, keyword)
    tod = _parse_tm(s[8:], path, keyword) if len(s) > 8 else 0.0
    return day, float(tod or 0.0)


def _when(ds: Any, path: Path, date_kw: str, time_kw: str) -> When | None:
    tod = _parse_tm(ds.get(time_kw), path, time_kw)
    if tod is None:
        return None
    return _parse_da(ds.get(date_kw), path, date_kw), tod


def _earliest(a: When | None, b: When | None) -> When | None:
    if a is None or b is None:
        return a or b
    ka = (a[0] if a[0] is not None else -1, a[1])
    kb = (b[0] if b[0] is not None else -1, b[1])
    return a if ka <= kb else b


# ---------------------------------------------------------------------------------------------
# Header fields
# ---------------------------------------------------------------------------------------------


def _float(ds: Any, keyword: str, path: Path) -> float | None:
    v = ds.get(keyword)
    if v is None or v == "":
        return None
    try:
        return float(v)
    except (TypeError, ValueError):
        raise InputError(f"{path}: {keyword} = {str(v)!r}; allowed: a number") from None


def _radiopharmaceutical(ds: Any, path: Path) -> dict[str, Any]:
    seq = ds.get("RadiopharmaceuticalInformationSequence")
    out: dict[str, Any] = {"admin": None, "total_dose": None, "half_life_s": None, "meaning": None}
    if not seq:
        return out
    item = seq[0]
    out["total_dose"] = _float(item, "RadionuclideTotalDose", path)
    out["half_life_s"] = _float(item, "RadionuclideHalfLife", path)
    codes = item.get("RadionuclideCodeSequence")
    if codes:
        out["meaning"] = str(codes[0].get("CodeMeaning", "") or "") or None
    full = _parse_dt(item.get("RadiopharmaceuticalStartDateTime"), path,
                     "RadiopharmaceuticalStartDateTime")  # fmt: skip
    if full is not None:
        out["admin"] = full
    else:
        tod = _parse_tm(item.get("RadiopharmaceuticalStartTime"), path,
                        "RadiopharmaceuticalStartTime")  # fmt: skip
        out["admin"] = None if tod is None else (None, tod)
    return out


def _frame_duration_s(ds: Any, path: Path) -> float | None:
    """Acquisition duration (s): ActualFrameDuration (ms) of a PET frame; for an NM tomographic
    acquisition the sum over rotations of ActualFrameDuration x NumberOfFramesInRotation (the
    top-level ActualFrameDuration of NM is per projection)."""
    rot = ds.get("RotationInformationSequence")
    if rot:
        total = 0.0
        for item in rot:
            per = _float(item, "ActualFrameDuration", path)
            n = _float(item, "NumberOfFramesInRotation", path)
            if per is None or n is None:
                return None
            total += per * n / 1000.0
        return total
    ms = _float(ds, "ActualFrameDuration", path)
    return None if ms is None else ms / 1000.0


def _same(values: list[Any], keyword: str, where: Path) -> Any:
    distinct = sorted({str(v) for v in values})
    if len(distinct) > 1:
        raise InputError(
            f"{where}: {keyword} differs between the files of the series ({distinct}); "
            "allowed: one value for the whole series"
        )
    return values[0]


# ---------------------------------------------------------------------------------------------
# Geometry
# ---------------------------------------------------------------------------------------------


def _vec(v: Any, n: int, keyword: str, path: Path) -> np.ndarray:
    try:
        a = np.array([float(x) for x in v], dtype=np.float64)
    except (TypeError, ValueError):
        a = np.zeros(0)
    if a.shape != (n,) or not np.all(np.isfinite(a)):
        raise InputError(f"{path}: {keyword} is missing or malformed; allowed: {n} numbers")
    return a


def _plane(iop: np.ndarray, ps: np.ndarray, path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Column-index (i) and row-index (j) steps (mm, LPS) and the slice normal."""
    r, c = iop[:3], iop[3:]
    if abs(np.linalg.norm(r) - 1) > 1e-4 or abs(np.linalg.norm(c) - 1) > 1e-4 or abs(r @ c) > 1e-4:
        raise InputError(
            f"{path}: ImageOrientationPatient = {iop.tolist()}; allowed: two orthogonal unit "
            "direction cosines"
        )
    if not np.all(ps > 0):
        raise InputError(f"{path}: PixelSpacing = {ps.tolist()}; allowed: two spacings > 0 mm")
    # PixelSpacing is (between rows, between columns): the column index i steps by ps[1] along
    # the row cosine r, the row index j by ps[0] along the column cosine c.
    steps = np.stack([r * ps[1], c * ps[0]], axis=1)
    return steps, np.cross(r, c)


def _stack_geometry(
    positions: np.ndarray, steps: np.ndarray, normal: np.ndarray, fallback_dz: float | None,
    path: Path,
) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    """Sort planes along the normal; return (order, affine). Planes must be evenly spaced along
    the normal (no gantry tilt, no gaps, no duplicates)."""
    proj = positions @ normal
    order = np.argsort(proj, kind="stable")
    p = positions[order]
    if len(p) > 1:
        d = np.diff(proj[order])
        dz = float(np.mean(d))
        if np.any(d <= 1e-6 * max(abs(dz), 1.0)):
            raise InputError(
                f"{path}: two images lie at the same position along the slice normal (a dynamic, "
                "gated or multi-series folder?); allowed: one image per slice position"
            )
        if np.max(np.abs(d - dz)) > _SLICE_TOL * dz:
            raise InputError(
                f"{path}: slice spacing is not uniform ({float(d.min()):.6g} to "
                f"{float(d.max()):.6g} mm along the normal; missing slices?); allowed: evenly "
                "spaced slices"
            )
        off = p - p[0] - np.outer(proj[order] - proj[order][0], normal)
        if np.max(np.abs(off)) > _SLICE_TOL * max(dz, 1.0) * len(p):
            raise InputError(
                f"{path}: slice positions are not along the slice normal (gantry tilt or shear); "
                "allowed: an orthogonal grid (resample it first)"
            )
    else:
        if fallback_dz is None or not fallback_dz > 0:
            raise InputError(
                f"{path}: a single slice without SpacingBetweenSlices or SliceThickness; "
                "allowed: a 3-D image"
            )
        dz = fallback_dz
    affine = np.eye(4)
    affine[:3, :2] = steps
    affine[:3, 2] = normal * dz
    affine[:3, 3] = p[0]
    return order, affine


# ---------------------------------------------------------------------------------------------
# Images
# ---------------------------------------------------------------------------------------------


def read_series(path: Path, *, pixels: bool = True) -> _Series:
    """Read a PET/NM image: a folder of single-frame files (one series) or one multi-frame file.

    With ``pixels=False`` only the headers are read (`data` is an empty array, `affine` is
    still computed); used by the SimpleITK reader, which decodes the pixels itself.
    """
    files = _files_of(path)
    datasets = [_dcmread(f, pixels=pixels) for f in files]
    if pixels:
        for f, ds in zip(files, datasets, strict=True):
            if "PixelData" not in ds:
                raise InputError(f"{f}: holds no image (no PixelData); allowed: PET or NM images")
    series = {str(ds.get("SeriesInstanceUID", "")) for ds in datasets}
    if len(series) > 1:
        raise InputError(
            f"{path}: the folder holds {len(series)} DICOM series; allowed: one series per "
            "folder (move the others out)"
        )
    first = datasets[0]
    modality = str(first.get("Modality", "") or "")
    if modality == "SEG":
        raise InputError(f"{path}: a DICOM-SEG file where an image was expected (Modality SEG)")
    n_frames = int(first.get("NumberOfFrames", 1) or 1)
    if len(datasets) > 1 and any(int(ds.get("NumberOfFrames", 1) or 1) > 1 for ds in datasets):
        raise InputError(
            f"{path}: a folder mixing multi-frame files; allowed: one multi-frame file, or a "
            "folder of single-frame slices"
        )
    if len(datasets) == 1 and n_frames > 1:
        data, affine = _multiframe(first, files[0], pixels)
    else:
        data, affine = _single_frames(datasets, files, path, pixels)

    rp = [_radiopharmaceutical(ds, f) for f, ds in zip(files, datasets, strict=True)]
    scan_start = series_ref = None
    for f, ds in zip(files, datasets, strict=True):
        scan_start = _earliest(scan_start, _when(ds, f, "AcquisitionDate", "AcquisitionTime"))
        series_ref = _earliest(series_ref, _when(ds, f, "SeriesDate", "SeriesTime"))
    units = _same([ds.get("Units") for ds in datasets], "Units", path)
    decay = _same([ds.get("DecayCorrection") for ds in datasets], "DecayCorrection", path)
    return _Series(
        data=data,
        affine=affine,
        modality=modality,
        units=str(units).strip().upper() if units else None,
        decay_correction=str(decay).strip().upper() if decay else None,
        frame_duration_s=_frame_duration_s(first, files[0]),
        frame_of_reference_uid=str(first.get("FrameOfReferenceUID", "") or "") or None,
        total_dose=rp[0]["total_dose"],
        half_life_s=rp[0]["half_life_s"],
        nuclide_meaning=rp[0]["meaning"],
        scan_start=scan_start or series_ref,
        series_reference=series_ref or scan_start,
        admin=rp[0]["admin"],
    )


def _rescale(ds: Any, path: Path) -> tuple[float, float]:
    slope = _float(ds, "RescaleSlope", path)
    intercept = _float(ds, "RescaleIntercept", path)
    return (1.0 if slope is None else slope), (0.0 if intercept is None else intercept)


def _single_frames(datasets, files, path: Path, pixels: bool):
    shapes = {(int(ds.get("Rows", 0)), int(ds.get("Columns", 0))) for ds in datasets}
    if len(shapes) > 1:
        raise InputError(f"{path}: Rows/Columns differ between files ({sorted(shapes)})")
    iops = [_vec(ds.get("ImageOrientationPatient"), 6, "ImageOrientationPatient", f)
            for f, ds in zip(files, datasets, strict=True)]  # fmt: skip
    if any(np.max(np.abs(o - iops[0])) > 1e-6 for o in iops):
        raise InputError(f"{path}: ImageOrientationPatient differs between files")
    pss = [_vec(ds.get("PixelSpacing"), 2, "PixelSpacing", f)
           for f, ds in zip(files, datasets, strict=True)]  # fmt: skip
    if any(np.max(np.abs(p - pss[0])) > 1e-6 * pss[0].min() for p in pss):
        raise InputError(f"{path}: PixelSpacing differs between files")
    steps, normal = _plane(iops[0], pss[0], files[0])
    pos = np.stack([_vec(ds.get("ImagePositionPatient"), 3, "ImagePositionPatient", f)
                    for f, ds in zip(files, datasets, strict=True)])  # fmt: skip
    first = datasets[0]
    fallback = _float(first, "SpacingBetweenSlices", files[0]) or _float(
        first, "SliceThickness", files[0]
    )
    order, affine = _stack_geometry(pos, steps, normal, fallback, path)
    rows, cols = shapes.pop()
    if not pixels:
        return np.zeros((0, 0, 0)), affine
    planes = []
    for idx in order:
        ds, f = datasets[idx], files[idx]
        arr = _pixels(ds, f)
        if arr.shape != (rows, cols):
            raise InputError(f"{f}: pixel array {arr.shape}; allowed: one plane of {rows}x{cols}")
        slope, intercept = _rescale(ds, f)
        planes.append(arr.astype(np.float64).T * slope + intercept)  # (rows, cols) -> (i, j)
    return np.stack(planes, axis=2), affine


def _functional(ds: Any, frame: int, seq: str, keyword: str) -> Any:
    """A keyword of a functional group: per-frame first, then shared."""
    for groups, idx in (("PerFrameFunctionalGroupsSequence", frame),
                        ("SharedFunctionalGroupsSequence", 0)):  # fmt: skip
        g = ds.get(groups)
        if g and len(g) > idx and seq in g[idx] and g[idx][seq]:
            item = g[idx][seq][0]
            if keyword in item:
                return item.get(keyword)
    return None


def _multiframe(ds: Any, path: Path, pixels: bool):
    n = int(ds.NumberOfFrames)
    if "PerFrameFunctionalGroupsSequence" in ds:  # enhanced multi-frame
        iop = _vec(_functional(ds, 0, "PlaneOrientationSequence", "ImageOrientationPatient"), 6,
                   "PlaneOrientationSequence.ImageOrientationPatient", path)  # fmt: skip
        ps = _vec(_functional(ds, 0, "PixelMeasuresSequence", "PixelSpacing"), 2,
                  "PixelMeasuresSequence.PixelSpacing", path)  # fmt: skip
        pos = np.stack([
            _vec(_functional(ds, k, "PlanePositionSequence", "ImagePositionPatient"), 3,
                 "PlanePositionSequence.ImagePositionPatient", path)
            for k in range(n)
        ])  # fmt: skip
        slopes = [float(_functional(ds, k, "PixelValueTransformationSequence", "RescaleSlope")
                        or ds.get("RescaleSlope", 1.0) or 1.0) for k in range(n)]  # fmt: skip
        inters = [float(_functional(ds, k, "PixelValueTransformationSequence",
                                    "RescaleIntercept") or ds.get("RescaleIntercept", 0.0) or 0.0)
                  for k in range(n)]  # fmt: skip
        fallback = None
    else:  # NM tomographic reconstruction: first-frame position, frames along the normal
        det = ds.get("DetectorInformationSequence")
        src = det[0] if det and "ImagePositionPatient" in det[0] else ds
        iop = _vec(src.get("ImageOrientationPatient"), 6, "ImageOrientationPatient", path)
        ipp = _vec(src.get("ImagePositionPatient"), 3, "ImagePositionPatient", path)
        ps = _vec(ds.get("PixelSpacing"), 2, "PixelSpacing", path)
        dz = _float(ds, "SpacingBetweenSlices", path) or _float(ds, "SliceThickness", path)
        if dz is None or not dz > 0:
            raise InputError(
                f"{path}: SpacingBetweenSlices (or SliceThickness) is missing; allowed: the "
                "slice spacing (mm) of the multi-frame image"
            )
        normal = np.cross(iop[:3], iop[3:])
        pos = ipp + np.outer(np.arange(n) * dz, normal)
        slope, intercept = _rescale(ds, path)
        slopes, inters = [slope] * n, [intercept] * n
        fallback = dz
    steps, normal = _plane(iop, ps, path)
    order, affine = _stack_geometry(pos, steps, normal, fallback, path)
    if not pixels:
        return np.zeros((0, 0, 0)), affine
    arr = _pixels(ds, path)
    rows, cols = int(ds.Rows), int(ds.Columns)
    if arr.shape != (n, rows, cols):
        raise InputError(f"{path}: pixel array {arr.shape}; allowed: {n} frames of {rows}x{cols}")
    planes = [arr[k].astype(np.float64).T * slopes[k] + inters[k] for k in order]
    return np.stack(planes, axis=2), affine


# ---------------------------------------------------------------------------------------------
# DICOM-SEG
# ---------------------------------------------------------------------------------------------


def read_seg(path: Path) -> tuple[dict[int, str], list[tuple[int, np.ndarray, np.ndarray]], Any]:
    """Read a BINARY DICOM-SEG file.

    **Returns:** ``(segments, frames, plane)``: segment number -> SegmentLabel; per frame
    ``(segment number, ImagePositionPatient (LPS mm), mask (i, j) bool)``; and
    ``(steps, normal, fallback_dz)`` of the frames' plane geometry.
    """
    if path.is_dir():
        raise InputError(f"{path}: a folder where a DICOM-SEG file was expected")
    ds = _dcmread(path)
    if str(ds.get("Modality", "")) != "SEG":
        raise InputError(
            f"{path}: Modality = {str(ds.get('Modality', ''))!r}; allowed: SEG (a DICOM "
            "segmentation) or a NIfTI label map"
        )
    kind = str(ds.get("SegmentationType", "") or "")
    if kind != "BINARY":
        raise InputError(
            f"{path}: SegmentationType = {kind!r}; allowed: BINARY (fractional segmentations "
            "are not binary masks)"
        )
    segments = {int(s.SegmentNumber): str(s.get("SegmentLabel", "") or "")
                for s in ds.get("SegmentSequence", [])}  # fmt: skip
    n = int(ds.get("NumberOfFrames", 1) or 1)
    arr = _pixels(ds, path)
    if arr.ndim == 2:
        arr = arr[None]
    if arr.shape[0] != n:
        raise InputError(f"{path}: pixel array {arr.shape}; allowed: {n} frames")
    iop = _vec(_functional(ds, 0, "PlaneOrientationSequence", "ImageOrientationPatient"), 6,
               "PlaneOrientationSequence.ImageOrientationPatient", path)  # fmt: skip
    ps = _vec(_functional(ds, 0, "PixelMeasuresSequence", "PixelSpacing"), 2,
              "PixelMeasuresSequence.PixelSpacing", path)  # fmt: skip
    dz = _functional(ds, 0, "PixelMeasuresSequence", "SpacingBetweenSlices") or _functional(
        ds, 0, "PixelMeasuresSequence", "SliceThickness"
    )
    steps, normal = _plane(iop, ps, path)
    frames = []
    for k in range(n):
        num = _functional(ds, k, "SegmentIdentificationSequence", "ReferencedSegmentNumber")
        if num is None or int(num) not in segments:
            raise InputError(
                f"{path}: frame {k + 1} has ReferencedSegmentNumber = {num!r}; allowed: a "
                f"SegmentNumber of SegmentSequence ({sorted(segments)})"
            )
        pos = _vec(_functional(ds, k, "PlanePositionSequence", "ImagePositionPatient"), 3,
                   "PlanePositionSequence.ImagePositionPatient", path)  # fmt: skip
        frames.append((int(num), pos, arr[k].T != 0))
    return segments, frames, (steps, normal, None if dz is None else float(dz))


# ---------------------------------------------------------------------------------------------
# Administration and scan times (hours only leave this module)
# ---------------------------------------------------------------------------------------------


class ImagingWarning(UserWarning):
    """An assumption made while reading images (midnight rollover, MBq in a Bq field)."""


def as_when(administration) -> When | None:
    if administration is None:
        return None
    if isinstance(administration, str):
        try:
            administration = _dt.datetime.fromisoformat(administration.strip())
        except ValueError:
            raise InputError(
                "administration time is not an ISO-8601 date-time (value not shown); allowed: "
                "e.g. 2026-03-02T09:15:00 (local clock time of the scanner)"
            ) from None
    if not isinstance(administration, _dt.datetime):
        raise InputError(
            f"administration = {type(administration).__name__}; allowed: a datetime, an ISO "
            "8601 text or None (from the DICOM headers)"
        )
    t = administration.time()
    return administration.date().toordinal(), t.hour * 3600.0 + t.minute * 60.0 + t.second + (
        t.microsecond * 1e-6
    )


def hours_between(a: When, b: When) -> tuple[float, bool]:
    """Hours from a to b; with a time of day missing a date, within 24 h (rollover flag)."""
    if a[0] is not None and b[0] is not None:
        return (b[0] - a[0]) * 24.0 + (b[1] - a[1]) / 3600.0, False
    h = (b[1] - a[1]) / 3600.0
    return (h + 24.0, True) if h < 0 else (h, False)


def admin_time(series: list[_Series], where: list[str]) -> When:
    """The administration from the headers (module docs)."""
    full = [(s.admin, w) for s, w in zip(series, where, strict=True)
            if s.admin is not None and s.admin[0] is not None]  # fmt: skip
    if full:
        ref, ref_w = full[0]
        for a, w in full[1:]:
            if abs(hours_between(ref, a)[0]) > 1.0 / 60.0:
                raise InputError(
                    f"{w}: RadiopharmaceuticalStartDateTime differs from that of {ref_w} by "
                    f"{hours_between(ref, a)[0]:.4g} h; allowed: one administration per study (give "
                    "administration.datetime in the study file)"
                )
        return ref
    tods = [(s.admin[1], w) for s, w in zip(series, where, strict=True) if s.admin is not None]
    if not tods:
        raise InputError(
            f"{where[0]}: no RadiopharmaceuticalStartDateTime or RadiopharmaceuticalStartTime in "
            "RadiopharmaceuticalInformationSequence; allowed: give the administration date-time "
            "(administration.datetime) or each scan's time_h in the study file"
        )
    tod, tod_w = tods[0]
    for t, w in tods[1:]:
        if abs(t - tod) > 60.0:
            raise InputError(
                f"{w}: RadiopharmaceuticalStartTime differs from that of {tod_w} by "
                f"{abs(t - tod) / 3600:.4g} h; allowed: one administration per study"
            )
    starts = [(s.scan_start, w) for s, w in zip(series, where, strict=True)
              if s.scan_start is not None]  # fmt: skip
    if not starts:
        return None, tod
    first, first_w = starts[0]
    for s, w in starts[1:]:
        if _earliest(first, s) is s:
            first, first_w = s, w
    if first[0] is None:
        return None, tod
    if tod > first[1]:
        warnings.warn(
            f"{first_w}: RadiopharmaceuticalStartTime has no date and is later in the day than "
            f"the scan start; the administration is taken to be on the previous day (midnight "
            f"rollover), {(first[1] + 86400.0 - tod) / 3600.0:.4g} h before the scan",
            ImagingWarning,
            stacklevel=4,
        )
        return first[0] - 1, tod
    return first[0], tod


def total_dose_MBq(raw: float | None, where: str) -> float | None:
    if raw is None or not math.isfinite(raw) or raw <= 0:
        return None
    if raw < _MBQ_RULE_BELOW:
        warnings.warn(
            f"{where}: RadionuclideTotalDose = {raw:g} is below {_MBQ_RULE_BELOW:g} and is read "
            "as MBq (DICOM requires Bq; older PET headers wrote MBq)",
            ImagingWarning,
            stacklevel=4,
        )
        return float(raw)
    return float(raw) * 1e-6


_ELEMENTS = {
    "hydrogen": "H", "carbon": "C", "nitrogen": "N", "oxygen": "O", "fluorine": "F",
    "sodium": "Na", "phosphorus": "P", "chromium": "Cr", "iron": "Fe", "cobalt": "Co",
    "copper": "Cu", "gallium": "Ga", "germanium": "Ge", "selenium": "Se", "bromine": "Br",
    "rubidium": "Rb", "strontium": "Sr", "yttrium": "Y", "zirconium": "Zr",
    "technetium": "Tc", "indium": "In", "iodine": "I", "xenon": "Xe", "samarium": "Sm",
    "terbium": "Tb", "holmium": "Ho", "erbium": "Er", "lutetium": "Lu", "rhenium": "Re",
    "thallium": "Tl", "lead": "Pb", "bismuth": "Bi", "astatine": "At", "radium": "Ra",
    "actinium": "Ac", "thorium": "Th", "scandium": "Sc", "radon": "Rn",
}  # fmt: skip


def meaning_nuclide(meaning: str) -> str | None:
    """``^177^Lutetium`` / ``Fluorine^18^[^18^Fluorine]`` / ``Tc-99m`` -> canonical name."""
    head = meaning.split("[")[0]
    mass = re.search(r"(\d{1,3})\s*(m\d?)?", head)
    words = [w.lower() for w in re.findall(r"[A-Za-z]{3,}", head)]
    element = next((_ELEMENTS[w] for w in words if w in _ELEMENTS), None)
    if element is None:
        sym = re.search(r"\b([A-Z][a-z]?)\b", head)
        element = sym[1] if sym else None
    if mass is None or element is None:
        return None
    return f"{element}-{int(mass[1])}{(mass[2] or '').lower()}"
