"""`twinjax images STUDY.yaml --out tacs.csv`: quantitative SPECT/PET images and region masks ->
a time-activity CSV that [`twinjax.read_tacs`][] and `twinjax calibrate` read.

The study file (YAML, schema ``twinjax.imaging_study/1``), validated before anything is read;
paths are relative to the study file:

```yaml
schema: twinjax.imaging_study/1
patient_id: A01                 # written into the CSV (header identities never are)
nuclide: Lu-177                 # headers naming another nuclide are an error
administration: from_header     # or {activity_MBq: 7400, datetime: "2026-03-02T09:15:00"}
units: from_header              # or Bq/mL, kBq/mL, MBq/mL, Bq, kBq, MBq, counts, cps
calibration_cps_per_MBq: 9.2    # for counts / cps images
reader: pydicom                 # or simpleitk (pip install "twinjax[imaging]")
resample_masks: false           # true: masks on other grids -> image grid (nearest neighbour)
recovery:                       # optional partial-volume correction
  fwhm_mm: 10                   # sphere model, or a table: volume_mL: [...], rc: [...]
  regions: [tumour]             # default: all regions
labels:                         # default masks of every time point: a label map or DICOM-SEG
  path: seg.nii.gz
  regions: {1: kidneys, 2: tumour}
timepoints:
  - image: day1/                # a DICOM series folder, a multi-frame DICOM file, or NIfTI
  - image: day4.nii.gz
    time_h: 96.0                # acquisition start, h after administration (NIfTI: required)
    frame_duration_s: 1200      # optional; default ActualFrameDuration (DICOM) or 0
    decay_correction: NONE      # optional; default DecayCorrection (DICOM) or NONE
    masks: {kidneys: day4_kidneys.nii.gz, tumour: day4_tumour.nii.gz}   # or labels: {...}
```

`administration.datetime` (local clock time) is used only to count hours to each DICOM scan;
it is never written. The CSV has columns ``patient_id, roi, time_h, activity_MBq`` (physical,
not decay-corrected activity; time at the frame midpoint), written atomically.
"""

from __future__ import annotations

import io
import re
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BeforeValidator, Field, field_validator, model_validator

from ._config import _Strict, read_yaml, validate
from ._errors import InputError
from ._files import atomic_write
from .imaging.volumes import (
    UNITS,
    ImagingTACs,
    Recovery,
    read_images,
    read_label_masks,
    read_mask,
    tacs_from_images,
)
from .nuclides import nuclide as _lookup

__all__ = ["ImagingStudyFile", "extract_tacs", "load_imaging_study", "run_images", "write_tacs"]

_REGION = re.compile(r"^[A-Za-z][A-Za-z0-9_]*$")


def _no_bool(v):
    if isinstance(v, bool):
        raise ValueError(f"{v!r} is a boolean; allowed: a number")
    return v


_Number = Annotated[float, BeforeValidator(_no_bool)]


def _region_name(name: str) -> str:
    if not _REGION.match(name):
        raise ValueError(
            f"region name {name!r}; allowed: letters, digits and '_', starting with a letter"
        )
    return name


class LabelsSpec(_Strict):
    """A label map (NIfTI) or DICOM-SEG, and label value / SegmentNumber -> region name."""

    path: str
    regions: dict[int, str] = Field(min_length=1)

    @field_validator("regions")
    @classmethod
    def _names(cls, v: dict[int, str]) -> dict[int, str]:
        for label, name in v.items():
            if label < 1:
                raise ValueError(f"label {label}; allowed: integers >= 1 (0 is background)")
            _region_name(name)
        if len(set(v.values())) != len(v):
            raise ValueError(f"regions {sorted(v.values())} repeat a name; allowed: one per label")
        return v


class TimePointSpec(_Strict):
    """One scan: the image, optional timing/decay overrides and its masks."""

    image: str
    time_h: _Number | None = None
    frame_duration_s: _Number | None = None
    decay_correction: Literal["NONE", "START", "ADMIN"] | None = None
    masks: dict[str, str] | None = None
    labels: LabelsSpec | None = None

    @field_validator("time_h")
    @classmethod
    def _time(cls, v: float | None) -> float | None:
        if v is not None and not (v >= 0 and v < 1e5):
            raise ValueError(f"time_h = {v!r}; allowed: a time >= 0 h after the administration")
        return v

    @field_validator("frame_duration_s")
    @classmethod
    def _duration(cls, v: float | None) -> float | None:
        if v is not None and not (v >= 0 and v < 1e6):
            raise ValueError(f"frame_duration_s = {v!r}; allowed: a duration >= 0 s")
        return v

    @field_validator("masks")
    @classmethod
    def _masks(cls, v: dict[str, str] | None) -> dict[str, str] | None:
        if v is not None:
            if not v:
                raise ValueError("masks is empty; allowed: region -> mask file")
            for name in v:
                _region_name(name)
        return v


class AdministrationSpec(_Strict):
    """The administration: activity (MBq) and local date-time; either may come from headers."""

    activity_MBq: _Number | None = None
    datetime: str | None = None

    @field_validator("activity_MBq")
    @classmethod
    def _activity(cls, v: float | None) -> float | None:
        if v is not None and not (0 < v <= 1e5):
            raise ValueError(f"activity_MBq = {v!r}; allowed: an activity above 0 and <= 1e5 MBq")
        return v


class RecoverySpec(_Strict):
    """Partial-volume correction: `fwhm_mm` (sphere model) or a `volume_mL` -> `rc` table."""

    fwhm_mm: _Number | None = None
    volume_mL: list[_Number] | None = None
    rc: list[_Number] | None = None
    regions: list[str] | None = None


class ImagingStudyFile(_Strict):
    """An imaging study (module docs). Unknown fields are errors."""

    schema_: Literal["twinjax.imaging_study/1"] = Field(alias="schema")
    patient_id: str
    nuclide: str
    administration: AdministrationSpec | Literal["from_header"] = "from_header"
    units: Literal["from_header", *UNITS] = "from_header"  # type: ignore[valid-type]
    calibration_cps_per_MBq: _Number | None = None
    reader: Literal["pydicom", "simpleitk"] = "pydicom"
    resample_masks: bool = False
    recovery: RecoverySpec | None = None
    masks: dict[str, str] | None = None
    labels: LabelsSpec | None = None
    timepoints: list[TimePointSpec] = Field(min_length=1)

    @field_validator("patient_id", mode="before")
    @classmethod
    def _pid(cls, v):
        if not isinstance(v, str) or not v.strip() or v != v.strip():
            raise ValueError(
                f"patient_id = {v!r}; allowed: a non-empty text identifier (quote numbers)"
            )
        return v

    @field_validator("nuclide")
    @classmethod
    def _nuclide(cls, v: str) -> str:
        return _lookup(v).name

    @field_validator("calibration_cps_per_MBq")
    @classmethod
    def _cal(cls, v: float | None) -> float | None:
        if v is not None and not (0 < v < 1e9):
            raise ValueError(f"calibration_cps_per_MBq = {v!r}; allowed: a factor > 0 cps/MBq")
        return v

    @model_validator(mode="after")
    def _each_has_masks(self) -> ImagingStudyFile:
        for n, tp in enumerate(self.timepoints):
            masks = tp.masks if tp.masks is not None or tp.labels is not None else self.masks
            labels = tp.labels if tp.masks is not None or tp.labels is not None else self.labels
            if (masks is None) == (labels is None):
                raise ValueError(
                    f"timepoints[{n}] has {'both' if masks else 'neither'} masks and labels "
                    "(own or study-wide); allowed: exactly one of them"
                )
        return self


def load_imaging_study(path: str | Path) -> ImagingStudyFile:
    """Read and validate an imaging study file (module docs); check that every path exists.

    **Returns:** the validated [`ImagingStudyFile`][]. **Raises:** `InputError` naming the
    file, the field, the value and what is allowed.
    """
    p = Path(path)
    spec = validate(ImagingStudyFile, read_yaml(p), str(p))
    if spec.recovery is not None:
        _recovery(spec, p)
    base = p.parent
    for n, tp in enumerate(spec.timepoints):
        masks, labels = _masks_of(spec, tp)
        paths = [("image", tp.image)]
        paths += [(f"masks.{r}", m) for r, m in (masks or {}).items()]
        paths += [("labels.path", labels.path)] if labels else []
        for field, rel in paths:
            if not (base / rel).exists():
                raise InputError(
                    f"{p}: timepoints[{n}].{field} = {rel!r}: {base / rel} does not exist; "
                    "allowed: a path relative to the study file"
                )
    return spec


def _masks_of(spec: ImagingStudyFile, tp: TimePointSpec):
    if tp.masks is not None or tp.labels is not None:
        return tp.masks, tp.labels
    return spec.masks, spec.labels


def _recovery(spec: ImagingStudyFile, where: Path) -> Recovery | None:
    r = spec.recovery
    if r is None:
        return None
    try:
        return Recovery(
            r.fwhm_mm,
            None if r.volume_mL is None else tuple(r.volume_mL),
            None if r.rc is None else tuple(r.rc),
            None if r.regions is None else tuple(r.regions),
        )
    except InputError as err:
        raise InputError(f"{where}: {err}") from None


def extract_tacs(study: str | Path) -> ImagingTACs:
    """Read a study's images and masks and extract per-region time-activity data.

    **Arguments:** `study`: the study YAML (module docs).

    **Returns:** an [`twinjax.imaging.volumes.ImagingTACs`][] (its `data`: h since
    administration, MBq). **Raises:** `InputError` naming the file, the field or DICOM keyword,
    the value and what is allowed, before any activity is computed.
    """
    p = Path(study)
    spec = load_imaging_study(p)
    base = p.parent
    admin = spec.administration if spec.administration != "from_header" else None
    tps = spec.timepoints
    images = read_images(
        [base / tp.image for tp in tps],
        administration=None if admin is None else admin.datetime,
        reader=spec.reader,
        time_h=[tp.time_h for tp in tps],
        frame_duration_s=[tp.frame_duration_s for tp in tps],
        units=None if spec.units == "from_header" else spec.units,
        decay_correction=[tp.decay_correction for tp in tps],
    )
    for tp, img in zip(tps, images, strict=True):
        if img.scan is None:  # a NIfTI image: time and units come from the study file
            missing = [f for f, v in (("time_h", tp.time_h), ("units", spec.units != "from_header"
                       or None)) if v is None]  # fmt: skip
            raise InputError(
                f"{p}: timepoint image {tp.image!r} is NIfTI and has no header times or units; "
                f"allowed: give {' and '.join(missing)} in the study file"
            )
    mask_sets = []
    for tp, img in zip(tps, images, strict=True):
        masks, labels = _masks_of(spec, tp)
        if labels is not None:
            mask_sets.append(read_label_masks(base / labels.path, labels.regions,
                                              reference=img.geometry))  # fmt: skip
        else:
            mask_sets.append({r: read_mask(base / m) for r, m in masks.items()})
    recovery = _recovery(spec, p)
    if recovery is not None and recovery.regions is not None:
        known = {r for s in mask_sets for r in s}
        unknown = sorted(set(recovery.regions) - known)
        if unknown:
            raise InputError(
                f"{p}: recovery.regions {unknown} are not regions of the study ({sorted(known)})"
            )
    return tacs_from_images(
        images,
        mask_sets,
        patient_id=spec.patient_id,
        nuclide=spec.nuclide,
        calibration_cps_per_MBq=spec.calibration_cps_per_MBq,
        recovery=recovery,
        resample_masks=spec.resample_masks,
        administered_MBq=None if admin is None else admin.activity_MBq,
        source=str(p),
    )


def write_tacs(tacs: ImagingTACs, out: str | Path) -> Path:
    """Write ``patient_id, roi, time_h, activity_MBq`` rows (the [`twinjax.read_tacs`][]
    format, full float precision) atomically to `out`. **Returns:** the path."""
    d = tacs.data
    buf = io.StringIO()
    buf.write("patient_id,roi,time_h,activity_MBq\n")
    for roi, t, a in zip(d.roi, d.time_h, d.activity_MBq, strict=True):
        buf.write(f"{_csv(d.patient_id)},{_csv(roi)},{float(t)!r},{float(a)!r}\n")
    path = Path(out)
    if path.parent and not path.parent.exists():
        raise InputError(f"--out {str(path)!r}: the folder {str(path.parent)!r} does not exist")
    atomic_write(path, buf.getvalue().encode())
    return path


def _csv(text: str) -> str:
    if any(c in text for c in ',"\n\r'):
        return '"' + text.replace('"', '""') + '"'
    return text


def run_images(study: str | Path, out: str | Path) -> ImagingTACs:
    """`twinjax images`: extract the study's time-activity data and write them as CSV.

    **Arguments:** `study`: the study YAML; `out`: the CSV to write.

    **Returns:** the [`twinjax.imaging.volumes.ImagingTACs`][] written. **Raises:**
    `InputError` (nothing is written then).
    """
    tacs = extract_tacs(study)
    write_tacs(tacs, out)
    return tacs
