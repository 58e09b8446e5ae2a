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
import math
from collections.abc import Mapping, Sequence

import numpy as np

from .._errors import InputError
from ..nuclides import Nuclide
from ..nuclides import nuclide as _lookup
from . import _dicom
from ._dicom import ImagingWarning as ImagingWarning
from ._geometry import DECAY_CORRECTIONS as DECAY_CORRECTIONS
from ._geometry import DICOM_UNITS as DICOM_UNITS
from ._geometry import GEOMETRY_TOL as GEOMETRY_TOL
from ._geometry import UNITS as UNITS
from ._geometry import Geometry as Geometry
from ._geometry import ScanInfo as ScanInfo
from ._geometry import Volume as Volume
from ._geometry import check_geometry as check_geometry
from ._images import read_image as read_image
from ._images import read_images as read_images
from ._masks import read_label_masks as read_label_masks
from ._masks import read_mask as read_mask
from ._masks import resample_nearest as resample_nearest
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


_HALF_LIFE_RTOL = 0.01


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
