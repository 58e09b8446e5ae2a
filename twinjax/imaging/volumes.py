"""Quantitative SPECT/PET volumes and segmentation masks -> per-region time-activity data.

Images are NIfTI files (nibabel) or DICOM series (pydicom: a folder of single-frame PET/NM slices
or one multi-frame file; SimpleITK optional, ``reader="simpleitk"``). Masks are binary NIfTI
files, NIfTI label maps, or BINARY DICOM-SEG files. Every volume carries a [`Geometry`][] in
DICOM patient coordinates (LPS, mm); NIfTI's RAS affines are converted on reading.

```python
images = read_images(["scan1/", "scan2/", "scan3/"])          # DICOM series, times from headers
masks = [read_label_masks("seg.nii.gz", {1: "kidneys", 2: "tumour"}) for _ in images]
tacs = tacs_from_images(images, masks, patient_id="A01", nuclide="Lu-177")
tacs.data                                                     # a TimeActivityData (h, MBq)
```

**From a voxel value to MBq at hours after administration** ([`tacs_from_images`][]):

1. *Units* (DICOM Units, or given): ``Bq/mL`` (BQML), ``kBq/mL``, ``MBq/mL``: summed over the
   region's voxels times the voxel volume; ``Bq``, ``kBq``, ``MBq``: activity per voxel, summed;
   ``counts`` (CNTS): summed counts / (calibration factor (cps/MBq) x acquisition duration (s));
   ``cps`` (CPS): summed count rate / calibration factor.
2. *Time*: every scan is placed at its frame midpoint, ``start + duration / 2`` (h since
   administration); a scan of unknown duration at its start.
3. *Decay correction is undone* (twinjax data are physical activities): an image decay-corrected
   to a reference time (``START``: the series reference time, SeriesDate/Time, else the
   acquisition start; ``ADMIN``: the administration) holds ``A(t_ref)`` (DICOM's Decay Factor
   includes the decay within the frame), so ``A(t_mid) = value x exp(-lambda (t_mid - t_ref))``.
   An uncorrected image (``NONE``) holds the frame average, so ``A(t_mid) = value x
   (x/2) / sinh(x/2)`` with ``x = lambda x duration`` (physical decay within the frame).
   lambda is that of the study's nuclide from [`twinjax.nuclide`][], never the header's.
4. *Recovery*: divided by the region's recovery coefficient ([`Recovery`][]).

**Times from DICOM headers.** Scan start: the earliest AcquisitionDate/Time of the series
(else SeriesDate/Time). Administration: given by the caller, else the header's
RadiopharmaceuticalStartDateTime, else its RadiopharmaceuticalStartTime (a time without a
date). A time-only administration is placed on the last such time of day at or before the
*earliest* scan of the study (an injection at 23:30 and a scan at 00:40 are 1 h 10 min apart:
the midnight rollover, reported by an [`ImagingWarning`][]); later scans with dates are
counted from there, so a multi-day study is right when its first scan is within 24 h of the
injection. Scans with times but no dates are taken to be within 24 h of the administration.
All times are local clock times (timezone offsets are ignored).

**Administered activity** (RadionuclideTotalDose, Bq in DICOM): a value below 1e5 (0.1 MBq,
less than any diagnostic or therapeutic administration) is read as MBq, as older PET headers
wrote it, with an [`ImagingWarning`][].

**Privacy.** Only hours since administration are kept: no returned object, message, warning or
file holds a header's PatientName, PatientID, dates or times. Messages name the paths the caller
gave.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import math
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Literal

import numpy as np

from .._errors import InputError
from ..nuclides import Nuclide
from ..nuclides import nuclide as _lookup
from . import _dicom
from ._dicom import ImagingWarning as ImagingWarning
from ._nifti import is_nifti, read_nifti
from .io import TimeActivityData

__all__ = [
    "Geometry",
    "ImagingTACs",
    "ImagingWarning",
    "Recovery",
    "ScanInfo",
    "Volume",
    "check_geometry",
    "physical_activity",
    "read_image",
    "read_images",
    "read_label_masks",
    "read_mask",
    "resample_nearest",
    "tacs_from_images",
]

#: Geometry tolerance: spacing, origin and direction agree within this times the spacing.
GEOMETRY_TOL = 1e-6
#: Unit -> (kind, factor to MBq or MBq/mL). DICOM codes BQML, CNTS, CPS map to these.
UNITS: dict[str, tuple[str, float]] = {
    "Bq/mL": ("concentration", 1e-6),
    "kBq/mL": ("concentration", 1e-3),
    "MBq/mL": ("concentration", 1.0),
    "Bq": ("activity", 1e-6),
    "kBq": ("activity", 1e-3),
    "MBq": ("activity", 1.0),
    "counts": ("counts", 1.0),
    "cps": ("cps", 1.0),
}
DICOM_UNITS = {"BQML": "Bq/mL", "CNTS": "counts", "CPS": "cps"}
DECAY_CORRECTIONS = ("NONE", "START", "ADMIN")
_HALF_LIFE_RTOL = 0.01
# ---------------------------------------------------------------------------------------------
# Geometry and volumes
# ---------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Geometry:
    """A regular voxel grid in DICOM patient coordinates (LPS, mm).

    **Fields:** `shape` (voxels along i, j, k), `spacing_mm` (mm), `origin_mm` (centre of voxel
    (0, 0, 0), LPS mm), `direction` (3x3, column ``a`` is the unit direction of index axis
    ``a``). World position of voxel (i, j, k): ``origin + direction @ (spacing * (i, j, k))``.
    """

    shape: tuple[int, int, int]
    spacing_mm: tuple[float, float, float]
    origin_mm: tuple[float, float, float]
    direction: tuple[tuple[float, float, float], ...]

    @classmethod
    def from_affine(cls, shape, affine_lps) -> Geometry:
        """From a 4x4 voxel -> LPS (mm) affine and the grid shape."""
        a = np.asarray(affine_lps, dtype=np.float64)
        spacing = np.linalg.norm(a[:3, :3], axis=0)
        direction = a[:3, :3] / spacing
        return cls(
            tuple(int(n) for n in shape),
            tuple(float(s) for s in spacing),
            tuple(float(o) for o in a[:3, 3]),
            tuple(tuple(float(x) for x in row) for row in direction),
        )

    @property
    def affine_lps(self) -> np.ndarray:
        """4x4 voxel index -> LPS (mm) affine (DICOM, ITK, 3D Slicer files)."""
        a = np.eye(4)
        a[:3, :3] = np.asarray(self.direction) * np.asarray(self.spacing_mm)
        a[:3, 3] = self.origin_mm
        return a

    @property
    def affine_ras(self) -> np.ndarray:
        """4x4 voxel index -> RAS (mm) affine (NIfTI, nibabel)."""
        return np.diag([-1.0, -1.0, 1.0, 1.0]) @ self.affine_lps

    @property
    def voxel_mL(self) -> float:
        """Volume of one voxel (mL = cm³)."""
        return float(np.prod(self.spacing_mm)) * 1e-3

    def describe(self) -> str:
        d = np.round(np.asarray(self.direction), 6).tolist()
        return (
            f"shape {self.shape}, spacing {tuple(round(s, 6) for s in self.spacing_mm)} mm, "
            f"origin {tuple(round(o, 6) for o in self.origin_mm)} mm (LPS), direction {d}"
        )


def check_geometry(a: Geometry, b: Geometry, *, what_a: str = "image", what_b: str = "mask"):
    """Check that two grids coincide: same shape; spacing and origin within
    ``GEOMETRY_TOL x spacing``; direction cosines within ``GEOMETRY_TOL``.

    **Arguments:** `a`, `b`: the grids; `what_a`, `what_b`: their names in the message (e.g.
    the file paths). **Returns:** ``None``. **Raises:** `InputError` naming both geometries.
    """
    sa, sb = np.asarray(a.spacing_mm), np.asarray(b.spacing_mm)
    ok = (
        tuple(a.shape) == tuple(b.shape)
        and np.all(np.abs(sa - sb) <= GEOMETRY_TOL * sa)
        and np.all(np.abs(np.subtract(a.origin_mm, b.origin_mm)) <= GEOMETRY_TOL * sa.min())
        and np.all(np.abs(np.subtract(a.direction, b.direction)) <= GEOMETRY_TOL)
    )
    if not ok:
        raise InputError(
            f"geometry mismatch: {what_a} has {a.describe()}; {what_b} has {b.describe()}; "
            f"allowed: the same grid (within {GEOMETRY_TOL:g} x spacing), or resampling of the "
            "masks onto the image grid on request (resample_masks: true, nearest neighbour)"
        )


@dataclasses.dataclass(frozen=True)
class ScanInfo:
    """When and how an image was acquired, in hours since administration (no dates).

    **Fields:**
    - `start_h`: acquisition start (h since administration).
    - `frame_duration_h`: acquisition duration (h); 0 when unknown (the scan is then placed at
      its start).
    - `units`: a key of `UNITS` (``Bq/mL``, ``counts``, ...).
    - `decay_correction`: ``NONE``, ``START`` or ``ADMIN``.
    - `reference_h`: the decay-correction reference (h since administration): the series
      reference time for ``START``, 0 for ``ADMIN``, ``None`` for ``NONE``.
    - `administered_MBq`: the header's RadionuclideTotalDose (MBq, module docs), or ``None``.
    - `header_half_life_h`: the header's RadionuclideHalfLife (h), or ``None``.
    - `header_nuclide`: the header's RadionuclideCodeSequence CodeMeaning, or ``None``.
    """

    start_h: float
    frame_duration_h: float = 0.0
    units: str = "Bq/mL"
    decay_correction: Literal["NONE", "START", "ADMIN"] = "NONE"
    reference_h: float | None = None
    administered_MBq: float | None = None
    header_half_life_h: float | None = None
    header_nuclide: str | None = None

    def __post_init__(self) -> None:
        if not (math.isfinite(self.start_h) and self.start_h >= 0):
            raise InputError(
                f"scan start_h = {self.start_h!r}; allowed: a finite time >= 0 h after the "
                "administration (is the administration time right?)"
            )
        if not (math.isfinite(self.frame_duration_h) and self.frame_duration_h >= 0):
            raise InputError(f"frame_duration_h = {self.frame_duration_h!r}; allowed: >= 0 h")
        if self.units not in UNITS:
            raise InputError(f"units = {self.units!r}; allowed: {', '.join(UNITS)}")
        if self.decay_correction not in DECAY_CORRECTIONS:
            raise InputError(
                f"decay_correction = {self.decay_correction!r}; allowed: "
                f"{', '.join(DECAY_CORRECTIONS)}"
            )
        ref = self.reference_h
        if self.decay_correction == "ADMIN":
            object.__setattr__(self, "reference_h", 0.0)
        elif self.decay_correction == "START":
            if ref is None:
                object.__setattr__(self, "reference_h", self.start_h)
            elif not math.isfinite(ref):
                raise InputError(f"reference_h = {ref!r}; allowed: a finite time (h)")
        else:
            object.__setattr__(self, "reference_h", None)

    @property
    def mid_h(self) -> float:
        """The time a scan is reported at: the frame midpoint (h since administration)."""
        return self.start_h + 0.5 * self.frame_duration_h


@dataclasses.dataclass(frozen=True, eq=False)
class Volume:
    """A 3-D image or mask on a [`Geometry`][].

    **Fields:** `data` ((i, j, k) array, read-only: float64 for images, bool for masks),
    `geometry`, `source` (the path it was read from), `frame_of_reference_uid` (DICOM images;
    ``None`` otherwise), `scan` ([`ScanInfo`][] of DICOM images; ``None`` for NIfTI and masks;
    add one with ``dataclasses.replace``).
    """

    data: np.ndarray
    geometry: Geometry
    source: str | None = None
    frame_of_reference_uid: str | None = None
    scan: ScanInfo | None = None

    def __post_init__(self) -> None:
        data = np.array(self.data)
        if data.shape != tuple(self.geometry.shape):
            raise InputError(
                f"{self.source or 'volume'}: data of shape {data.shape} on a grid of shape "
                f"{tuple(self.geometry.shape)}; allowed: equal shapes"
            )
        data.setflags(write=False)
        object.__setattr__(self, "data", data)


# ---------------------------------------------------------------------------------------------
# Reading images
# ---------------------------------------------------------------------------------------------


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


# ---------------------------------------------------------------------------------------------
# Masks
# ---------------------------------------------------------------------------------------------


def _binary(data: np.ndarray, where: str) -> np.ndarray:
    finite = np.isfinite(data)
    bad = ~finite | ((data != 0) & (data != 1))
    if np.any(bad):
        values = np.unique(data[bad])[:5].tolist()
        raise InputError(
            f"{where}: a binary mask with values {values} (in {int(bad.sum())} voxels); allowed: "
            "0 and 1 only (give a label map with its labels for multi-label masks)"
        )
    mask = data == 1
    if not mask.any():
        raise InputError(f"{where}: the mask is empty (no voxel is 1); allowed: a non-empty region")
    return mask


def read_mask(path: str | Path) -> Volume:
    """Read a binary region mask (NIfTI, voxels 0 or 1).

    **Arguments:** `path`: a ``.nii`` or ``.nii.gz`` file. **Returns:** a [`Volume`][] of bool.
    **Raises:** `InputError` naming the file for an unreadable file, values other than 0 and 1,
    or an empty mask.
    """
    p = Path(path)
    if not is_nifti(p):
        raise InputError(
            f"{p}: not a NIfTI file; allowed: a .nii/.nii.gz binary mask (a DICOM-SEG is read "
            "as a label map with its segment numbers: labels: {{path: ..., regions: ...}})"
        )
    data, affine = read_nifti(p)
    return Volume(_binary(data, str(p)), Geometry.from_affine(data.shape, affine), str(p))


def read_label_masks(
    path: str | Path, labels: Mapping[int, str], *, reference: Geometry | None = None
) -> dict[str, Volume]:
    """Read a label map (NIfTI, integer labels) or a BINARY DICOM-SEG into one mask per region.

    **Arguments:**
    - `path`: a ``.nii``/``.nii.gz`` label map, or a DICOM-SEG file.
    - `labels`: label value (NIfTI) or SegmentNumber (DICOM-SEG) -> region name.
    - `reference`: the image grid. A DICOM-SEG stores only the slices a segment touches; with a
      reference, frames lying exactly on its slices (same plane geometry within
      ``GEOMETRY_TOL x spacing``) are placed there (no interpolation). Without one, or when
      they do not lie on it, the masks are on the SEG's own grid (from the first to the last
      frame, at SpacingBetweenSlices or SliceThickness).

    **Returns:** region -> [`Volume`][] of bool. **Raises:** `InputError` naming the file for
    non-integer labels, labels absent from the file, empty regions, fractional DICOM-SEG.
    """
    p = Path(path)
    if not labels:
        raise InputError(f"{p}: no labels given; allowed: label -> region name, e.g. {{1: liver}}")
    for lab in labels:
        if isinstance(lab, bool) or not isinstance(lab, int | np.integer) or lab <= 0:
            raise InputError(f"{p}: label {lab!r}; allowed: integers >= 1 (0 is background)")
    if is_nifti(p):
        data, affine = read_nifti(p)
        geom = Geometry.from_affine(data.shape, affine)
        if not np.all(np.isfinite(data)) or np.any(data != np.round(data)):
            bad = data[~np.isfinite(data) | (data != np.round(data))]
            raise InputError(
                f"{p}: label map with non-integer values {np.unique(bad)[:5].tolist()}; "
                "allowed: integer labels"
            )
        present = sorted(int(v) for v in np.unique(data) if v != 0)
        masks = {lab: data == lab for lab in labels}
        names = {v: f"label {v}" for v in present}
    elif _dicom.is_dicom_file(p) or p.is_dir():
        segments, frames, plane = _dicom.read_seg(p)
        present = sorted({num for num, _, m in frames if m.any()})
        names = {k: f"segment {k} ({v!r})" for k, v in segments.items()}
        geom, masks = _seg_masks(frames, plane, labels, reference, p)
    else:
        raise InputError(f"{p}: neither a NIfTI label map nor a DICOM-SEG file")
    absent = [lab for lab in labels if lab not in present]
    if absent:
        raise InputError(
            f"{p}: label(s) {absent} (regions {[labels[a] for a in absent]}) are absent or "
            f"empty; present: {[names.get(v, v) for v in present] or 'none'}"
        )
    return {labels[lab]: Volume(masks[lab], geom, str(p)) for lab in labels}


def _seg_masks(frames, plane, labels, reference: Geometry | None, path: Path):
    steps, normal, dz = plane
    wanted = [f for f in frames if f[0] in labels]
    if reference is not None:
        inv = np.linalg.inv(reference.affine_lps)
        ref_steps = reference.affine_lps[:3, :2]
        tol = GEOMETRY_TOL * min(reference.spacing_mm)
        ok = np.all(np.abs(steps - ref_steps) <= tol) and all(
            m.shape == tuple(reference.shape[:2]) for _, _, m in wanted
        )
        ks = []
        for _, pos, _ in wanted:
            ijk = (inv @ np.append(pos, 1.0))[:3]
            k = round(float(ijk[2]))
            ok = ok and np.all(np.abs(ijk[:2]) <= GEOMETRY_TOL) and abs(ijk[2] - k) <= GEOMETRY_TOL
            ok = ok and 0 <= k < reference.shape[2]
            ks.append(k)
        if ok:
            masks = {lab: np.zeros(reference.shape, bool) for lab in labels}
            for (num, _, m), k in zip(wanted, ks, strict=True):
                masks[num][:, :, k] |= m
            return reference, masks
    if not wanted:
        return None, {}
    proj = np.array([pos @ normal for _, pos, _ in wanted])
    distinct = np.unique(np.round(proj, 6))
    if dz is None or not dz > 0:
        dz = float(np.min(np.diff(distinct))) if len(distinct) > 1 else 1.0
    k_of = (proj - proj.min()) / dz
    if np.any(np.abs(k_of - np.round(k_of)) > 1e-3):
        raise InputError(
            f"{path}: DICOM-SEG frame positions are not on a regular grid of {dz:g} mm; "
            "allowed: frames on the slices of a regular grid"
        )
    affine = np.eye(4)
    affine[:3, :2] = steps
    affine[:3, 2] = normal * dz
    affine[:3, 3] = wanted[int(np.argmin(proj))][1]
    geom = Geometry.from_affine((*wanted[0][2].shape, round(float(k_of.max())) + 1), affine)
    masks = {lab: np.zeros(geom.shape, bool) for lab in labels}
    for (num, _, m), k in zip(wanted, np.round(k_of).astype(int), strict=True):
        masks[num][:, :, k] |= m
    return geom, masks


def resample_nearest(volume: Volume, geometry: Geometry) -> Volume:
    """Resample a volume onto another grid by nearest neighbour (for masks).

    Each target voxel takes the value of the source voxel whose centre is nearest to its centre
    in index space: ``round(inverse(A_src) @ A_dst @ (i, j, k))`` with halves rounded up;
    target voxels outside the source grid get 0 (False).

    **Arguments:** `volume`: the source; `geometry`: the target grid.
    **Returns:** a [`Volume`][] on `geometry` (same dtype, same source).
    """
    m = np.linalg.inv(volume.geometry.affine_lps) @ geometry.affine_lps
    ni, nj, nk = geometry.shape
    src = volume.data
    out = np.zeros(geometry.shape, dtype=src.dtype)
    ii, jj = np.meshgrid(np.arange(ni), np.arange(nj), indexing="ij")
    for k in range(nk):  # one target slice at a time bounds the index arrays' memory
        pts = np.stack([ii, jj, np.full_like(ii, k), np.ones_like(ii)], axis=-1) @ m.T
        idx = np.floor(pts[..., :3] + 0.5).astype(np.int64)
        inside = np.all((idx >= 0) & (idx < np.asarray(src.shape)), axis=-1)
        out[:, :, k][inside] = src[idx[inside, 0], idx[inside, 1], idx[inside, 2]]
    return dataclasses.replace(volume, data=out, geometry=geometry)


# ---------------------------------------------------------------------------------------------
# From voxels to time-activity data
# ---------------------------------------------------------------------------------------------


def physical_activity(value_MBq: float, scan: ScanInfo, half_life_h: float) -> tuple[float, float]:
    """Undo an image's decay correction (module docs, step 3).

    **Arguments:** `value_MBq`: the region's activity as the image holds it (MBq); `scan`: the
    image's [`ScanInfo`][]; `half_life_h`: the nuclide's half-life (h).

    **Returns:** ``(time_h, activity_MBq)``: the frame midpoint (h since administration) and the
    physical activity then (MBq).
    """
    lam = math.log(2.0) / half_life_h
    t = scan.mid_h
    if scan.decay_correction == "NONE":
        x = lam * scan.frame_duration_h
        factor = 1.0 if x == 0 else (0.5 * x) / math.sinh(0.5 * x)
    else:
        factor = math.exp(-lam * (t - (scan.reference_h or 0.0)))
    return t, value_MBq * factor


@dataclasses.dataclass(frozen=True)
class Recovery:
    """Partial-volume recovery coefficients by region volume.

    Either `fwhm_mm` (the system's FWHM, mm: RC of a sphere of the region's volume,
    [`twinjax.imaging.sphere_recovery`][]) or a table `volume_mL` -> `rc` (strictly increasing
    volumes, mL), interpolated linearly in volume; above the largest volume the last RC
    applies, below the smallest is an error (RC curves fall steeply there). `regions`: the
    regions corrected (``None``: all).
    """

    fwhm_mm: float | None = None
    volume_mL: tuple[float, ...] | None = None
    rc: tuple[float, ...] | None = None
    regions: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        if (self.fwhm_mm is None) == (self.volume_mL is None):
            raise InputError("recovery: give either fwhm_mm or a volume_mL/rc table, not both")
        if self.fwhm_mm is not None and not (math.isfinite(self.fwhm_mm) and self.fwhm_mm > 0):
            raise InputError(f"recovery.fwhm_mm = {self.fwhm_mm!r}; allowed: a FWHM > 0 mm")
        if self.volume_mL is not None:
            v = np.asarray(self.volume_mL, dtype=float)
            rc = np.asarray(self.rc if self.rc is not None else (), dtype=float)
            if v.ndim != 1 or v.size < 2 or rc.shape != v.shape:
                raise InputError(
                    f"recovery: volume_mL ({v.size} values) and rc ({rc.size}); allowed: two "
                    "lists of the same length >= 2"
                )
            if not (np.all(np.isfinite(v)) and np.all(v > 0) and np.all(np.diff(v) > 0)):
                raise InputError(
                    f"recovery.volume_mL = {v.tolist()}; allowed: strictly increasing volumes "
                    "> 0 mL"
                )
            if not (np.all(np.isfinite(rc)) and np.all((rc > 0) & (rc <= 1.5))):
                raise InputError(f"recovery.rc = {rc.tolist()}; allowed: values in (0, 1.5]")

    def applies(self, region: str) -> bool:
        return self.regions is None or region in self.regions

    def coefficient(self, volume_mL: float, *, region: str = "region") -> float:
        """RC (-) of a region of `volume_mL` (mL)."""
        if self.fwhm_mm is not None:
            from .observe import sphere_recovery

            return float(sphere_recovery(volume_mL * 1e-3, self.fwhm_mm))
        v, rc = np.asarray(self.volume_mL), np.asarray(self.rc)
        if volume_mL < v[0]:
            raise InputError(
                f"recovery: region {region!r} of {volume_mL:.6g} mL is smaller than the table's "
                f"smallest volume {v[0]:g} mL; allowed: a table reaching down to the region"
            )
        return float(np.interp(volume_mL, v, rc))


@dataclasses.dataclass(frozen=True, eq=False)
class ImagingTACs:
    """Per-region time-activity data read from images.

    **Fields:** `data` ([`twinjax.imaging.TimeActivityData`][]: h since administration, MBq,
    physical activity); per row of `data`: `volume_mL` (region volume, mL) and `recovery`
    (RC divided out, -); `nuclide`; `administered_MBq` (from the caller or the first header;
    ``None`` if unknown); `resampled`: the (time point, region) masks resampled onto the image
    grid.
    """

    data: TimeActivityData
    volume_mL: np.ndarray
    recovery: np.ndarray
    nuclide: str
    administered_MBq: float | None = None
    resampled: tuple[str, ...] = ()


def check_nuclide(scan: ScanInfo, nuc: Nuclide, where: str) -> None:
    """The header's radionuclide (CodeMeaning, half-life) must be the study's.

    **Raises:** `InputError` naming both nuclides."""
    if scan.header_nuclide:
        name = _dicom.meaning_nuclide(scan.header_nuclide)
        if name is not None and name.lower() != nuc.name.lower():
            raise InputError(
                f"{where}: RadionuclideCodeSequence CodeMeaning = {scan.header_nuclide!r} "
                f"({name}) but the study's nuclide is {nuc.name}; allowed: the same nuclide"
            )
    hl = scan.header_half_life_h
    if hl is not None and abs(hl / nuc.half_life_h - 1.0) > _HALF_LIFE_RTOL:
        raise InputError(
            f"{where}: RadionuclideHalfLife = {hl * 3600:.6g} s ({hl:.6g} h) but the study's "
            f"nuclide {nuc.name} has T1/2 = {nuc.half_life_h:.6g} h; allowed: within "
            f"{100 * _HALF_LIFE_RTOL:g} % of it (the same nuclide)"
        )


def tacs_from_images(
    images: Sequence[Volume],
    masks: Sequence[Mapping[str, Volume]],
    *,
    patient_id: str,
    nuclide: str,
    calibration_cps_per_MBq: float | None = None,
    recovery: Recovery | None = None,
    resample_masks: bool = False,
    administered_MBq: float | None = None,
    source: str | None = None,
) -> ImagingTACs:
    """Per-region physical activities (MBq) at hours after administration (module docs).

    **Arguments:**
    - `images`: one [`Volume`][] per scan, each with a [`ScanInfo`][].
    - `masks`: per scan, region -> binary mask [`Volume`][].
    - `patient_id`: the identifier written into the data (never a header's).
    - `nuclide`: the study's nuclide (e.g. ``Lu-177``); headers naming another are an error.
    - `calibration_cps_per_MBq`: calibration factor (cps/MBq) for ``counts``/``cps`` images.
    - `recovery`: a [`Recovery`][], or ``None`` (no partial-volume correction).
    - `resample_masks`: resample masks on other grids onto the image's (nearest neighbour);
      otherwise a mismatch is an error.
    - `administered_MBq`: the administered activity (MBq); ``None``: the first header's.
    - `source`: name of the input for messages and `TimeActivityData.source`.

    **Returns:** an [`ImagingTACs`][]. **Raises:** `InputError` before any computation.
    """
    nuc = _lookup(nuclide)
    if len(images) != len(masks) or not images:
        raise InputError(
            f"{len(images)} images and {len(masks)} mask sets; allowed: one mask set per image"
        )
    if calibration_cps_per_MBq is not None and not (
        math.isfinite(calibration_cps_per_MBq) and calibration_cps_per_MBq > 0
    ):
        raise InputError(
            f"calibration_cps_per_MBq = {calibration_cps_per_MBq!r}; allowed: a factor > 0 cps/MBq"
        )
    prepared, resampled = [], []
    for n, (img, regions) in enumerate(zip(images, masks, strict=True)):
        where = img.source or f"image {n + 1}"
        scan = img.scan
        if scan is None:
            raise InputError(
                f"{where}: no scan information; allowed: an image with a ScanInfo (time_h and "
                "units for NIfTI images)"
            )
        check_nuclide(scan, nuc, where)
        kind = UNITS[scan.units][0]
        if kind in ("counts", "cps") and calibration_cps_per_MBq is None:
            raise InputError(
                f"{where}: a {scan.units} image needs calibration_cps_per_MBq (cps/MBq); allowed: "
                "the camera's calibration factor"
            )
        if kind == "counts" and scan.frame_duration_h <= 0:
            raise InputError(
                f"{where}: a counts image needs its acquisition duration (ActualFrameDuration); "
                "allowed: give frame_duration_s"
            )
        if not regions:
            raise InputError(f"{where}: no region masks; allowed: one or more regions")
        placed = {}
        for region, mask in regions.items():
            mw = f"mask {mask.source or region!r} (region {region!r})"
            try:
                check_geometry(img.geometry, mask.geometry, what_a=f"image {where}", what_b=mw)
            except InputError:
                if not resample_masks:
                    raise
                mask = resample_nearest(mask, img.geometry)
                resampled.append(f"{where}: {region}")
            m = np.asarray(mask.data, dtype=bool)
            if not m.any():
                raise InputError(f"{mw}: empty on the grid of image {where}; allowed: a region")
            if not np.all(np.isfinite(img.data[m])):
                raise InputError(f"{where}: non-finite voxels in region {region!r}")
            placed[region] = m
        prepared.append((img, scan, placed))
    if administered_MBq is None:
        administered_MBq = next(
            (s.administered_MBq for _, s, _ in prepared if s.administered_MBq is not None), None
        )
    order = sorted(range(len(prepared)), key=lambda n: prepared[n][1].mid_h)
    rows: list[tuple[str, float, float, float, float]] = []
    for n in order:
        img, scan, placed = prepared[n]
        kind, factor = UNITS[scan.units]
        for region in sorted(placed):
            m = placed[region]
            total = math.fsum(img.data[m].tolist())
            vol = float(m.sum()) * img.geometry.voxel_mL
            if kind == "concentration":
                value = total * factor * img.geometry.voxel_mL
            elif kind == "activity":
                value = total * factor
            elif kind == "counts":
                value = total / (calibration_cps_per_MBq * scan.frame_duration_h * 3600.0)
            else:
                value = total / calibration_cps_per_MBq
            t, a = physical_activity(value, scan, nuc.half_life_h)
            rc = 1.0
            if recovery is not None and recovery.applies(region):
                rc = recovery.coefficient(vol, region=region)
            rows.append((region, t, a / rc, vol, rc))
    data = TimeActivityData(
        patient_id,
        tuple(r[0] for r in rows),
        np.array([r[1] for r in rows]),
        np.array([r[2] for r in rows]),
        source=source,
    )
    return ImagingTACs(
        data,
        np.array([r[3] for r in rows]),
        np.array([r[4] for r in rows]),
        nuc.name,
        administered_MBq,
        tuple(resampled),
    )
