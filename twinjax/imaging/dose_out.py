"""Absorbed-dose maps out: NIfTI and DICOM RT Dose files that 3D Slicer opens over the image.

Both writers take the dose (Gy) on the grid of a reference image ([`twinjax.imaging.Volume`][]
or its [`twinjax.imaging.Geometry`][]) and write atomically (a reader sees the old file or the
new one, never half of one).

- [`write_dose_nifti`][]: float32 voxels in Gy with the image's affine (sform and qform, RAS,
  mm). float32 keeps 7 significant digits.
- [`write_dose_rtdose`][]: an RT Dose object (DoseUnits GY, DoseType PHYSICAL, a
  DoseSummationType, unsigned 32-bit voxels times DoseGridScaling, so the absolute error is at
  most ``max dose / 2^33``), with GridFrameOffsetVector along the slice normal and the
  reference image's FrameOfReferenceUID, so that a viewer overlays it on that image.

Privacy: nothing from the reference image's header is copied except the FrameOfReferenceUID
(and, when given, the StudyInstanceUID); the patient is named by the caller's `patient_id`,
PatientName is left empty and no date or time is written.
"""

from __future__ import annotations

import gzip
import io
from pathlib import Path
from typing import Literal

import numpy as np

from .._errors import InputError
from .._files import atomic_write
from .volumes import Geometry, Volume

__all__ = ["write_dose_nifti", "write_dose_rtdose"]

_RT_DOSE_STORAGE = "1.2.840.10008.5.1.4.1.1.481.2"
SUMMATION_TYPES = ("PLAN", "MULTI_PLAN", "FRACTION", "BEAM", "BRACHY", "FRACTION_SESSION",
                   "BEAM_SESSION", "BRACHY_SESSION", "CONTROL_POINT", "RECORD")  # fmt: skip


def _dose_and_geometry(dose_Gy, reference: Volume | Geometry, path: Path):
    geom = reference.geometry if isinstance(reference, Volume) else reference
    if not isinstance(geom, Geometry):
        raise InputError(
            f"reference = {type(reference).__name__}; allowed: a twinjax.imaging Volume or Geometry"
        )
    d = np.asarray(dose_Gy, dtype=np.float64)
    if d.shape != tuple(geom.shape):
        raise InputError(
            f"{path}: dose of shape {d.shape} on a reference grid of shape {tuple(geom.shape)}; "
            "allowed: the reference image's shape"
        )
    if not np.all(np.isfinite(d)) or np.any(d < 0):
        raise InputError(f"{path}: dose has negative or non-finite voxels; allowed: finite >= 0 Gy")
    if not path.parent.is_dir():
        raise InputError(f"{path}: the folder {str(path.parent)!r} does not exist")
    return d, geom


def write_dose_nifti(path: str | Path, dose_Gy, reference: Volume | Geometry) -> Path:
    """Write a dose map as NIfTI (``.nii`` or ``.nii.gz``) with the reference image's affine.

    **Arguments:** `path`: the file; `dose_Gy`: absorbed dose (Gy), array of the reference's
    shape (i, j, k); `reference`: the image (or grid) the dose was computed on.

    **Returns:** the path. **Raises:** `InputError` for a wrong shape, negative or non-finite
    dose, a missing folder or another file extension.
    """
    import nibabel as nib

    p = Path(path)
    if not p.name.lower().endswith((".nii", ".nii.gz")):
        raise InputError(f"{p}: allowed file names end in .nii or .nii.gz")
    d, geom = _dose_and_geometry(dose_Gy, reference, p)
    img = nib.Nifti1Image(d.astype(np.float32), geom.affine_ras)
    img.set_sform(geom.affine_ras, code=1)  # scanner coordinates
    img.set_qform(geom.affine_ras, code=1)
    img.header.set_xyzt_units(xyz="mm")
    img.header["descrip"] = b"twinjax absorbed dose (Gy)"
    data = img.to_bytes()
    if p.name.lower().endswith(".gz"):
        data = gzip.compress(data, mtime=0)
    atomic_write(p, data)
    return p


def write_dose_rtdose(
    path: str | Path,
    dose_Gy,
    reference: Volume | Geometry,
    *,
    patient_id: str,
    frame_of_reference_uid: str | None = None,
    study_instance_uid: str | None = None,
    summation_type: Literal[SUMMATION_TYPES] = "PLAN",  # type: ignore[valid-type]
    comment: str | None = None,
) -> Path:
    """Write a dose map as a DICOM RT Dose file on the reference image's grid.

    **Arguments:**
    - `path`: the file (``.dcm``).
    - `dose_Gy`: absorbed dose (Gy), array of the reference's shape (i, j, k), >= 0.
    - `reference`: the image the dose was computed on; a DICOM [`Volume`][] gives its
      FrameOfReferenceUID.
    - `patient_id`: written as PatientID (the study file's identifier, never a header's).
    - `frame_of_reference_uid`: overrides the reference's (required for a NIfTI reference if the
      dose must register to a DICOM image; otherwise a new UID is made).
    - `study_instance_uid`: the study to file it under (default: a new one).
    - `summation_type`: DoseSummationType (default ``PLAN``).
    - `comment`: DoseComment (e.g. the scenario), at most 1024 characters.

    **Returns:** the path. **Raises:** `InputError` for a wrong shape, negative or non-finite
    dose, a grid whose slice axis is not the normal of its rows and columns (oblique), or a bad
    `summation_type`.
    """
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid
    from pydicom.valuerep import format_number_as_ds

    from .. import __version__  # here: twinjax/__init__ imports this package before it is set

    p = Path(path)
    d, geom = _dose_and_geometry(dose_Gy, reference, p)
    if summation_type not in SUMMATION_TYPES:
        raise InputError(
            f"summation_type = {summation_type!r}; allowed: {', '.join(SUMMATION_TYPES)}"
        )
    if not isinstance(patient_id, str) or not patient_id.strip():
        raise InputError(f"patient_id = {patient_id!r}; allowed: a non-empty identifier")
    if comment is not None and len(comment) > 1024:
        raise InputError(f"comment of {len(comment)} characters; allowed: at most 1024")
    for_uid = frame_of_reference_uid
    if for_uid is None and isinstance(reference, Volume):
        for_uid = reference.frame_of_reference_uid
    direction = np.asarray(geom.direction)
    row, col, slc = direction[:, 0], direction[:, 1], direction[:, 2]
    normal = np.cross(row, col)
    cos = float(slc @ normal)
    if abs(abs(cos) - 1.0) > 1e-6:
        raise InputError(
            f"{p}: the reference grid's slice axis {slc.tolist()} is not the normal "
            f"{normal.tolist()} of its rows and columns; allowed: an orthogonal grid"
        )
    ds_ = [format_number_as_ds(float(x)) for x in geom.spacing_mm]

    # DoseGridScaling is a decimal string (DS, <= 16 characters): quantise with the value as
    # written, a hair above max / (2^32 - 1) so that the largest dose still fits in 32 bits.
    scale = float(format_number_as_ds(float(d.max()) / (2**32 - 1) * (1 + 1e-9))) or 1.0
    stored = np.rint(d / scale).astype(np.uint32)

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = _RT_DOSE_STORAGE
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = _RT_DOSE_STORAGE
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = "RTDOSE"
    ds.Manufacturer = "twinjax"
    ds.SoftwareVersions = __version__
    ds.PatientName = ""
    ds.PatientID = patient_id
    ds.PatientBirthDate = ""
    ds.PatientSex = ""
    ds.StudyInstanceUID = study_instance_uid or generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.FrameOfReferenceUID = for_uid or generate_uid()
    ds.PositionReferenceIndicator = ""
    ds.StudyDate = ""
    ds.StudyTime = ""
    ds.ReferringPhysicianName = ""
    ds.StudyID = ""
    ds.AccessionNumber = ""
    ds.SeriesNumber = 1
    ds.InstanceNumber = 1
    ds.SeriesDescription = "twinjax absorbed dose"
    ds.ImagePositionPatient = [format_number_as_ds(float(x)) for x in geom.origin_mm]
    ds.ImageOrientationPatient = [format_number_as_ds(float(x)) for x in (*row, *col)]
    # PixelSpacing is (between rows, between columns) = (spacing along j, spacing along i).
    ds.PixelSpacing = [ds_[1], ds_[0]]
    ds.SliceThickness = ds_[2]
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.NumberOfFrames = int(geom.shape[2])
    ds.FrameIncrementPointer = 0x3004000C  # GridFrameOffsetVector
    ds.Rows = int(geom.shape[1])
    ds.Columns = int(geom.shape[0])
    ds.BitsAllocated = 32
    ds.BitsStored = 32
    ds.HighBit = 31
    ds.PixelRepresentation = 0
    ds.DoseUnits = "GY"
    ds.DoseType = "PHYSICAL"
    ds.DoseSummationType = summation_type
    ds.DoseGridScaling = format_number_as_ds(scale)
    if comment:
        ds.DoseComment = comment
    step = geom.spacing_mm[2] * cos
    ds.GridFrameOffsetVector = [format_number_as_ds(k * step) for k in range(geom.shape[2])]
    # Frames are slices k; each frame is (rows, columns) = (j, i).
    ds.PixelData = np.ascontiguousarray(np.transpose(stored, (2, 1, 0))).astype("<u4").tobytes()
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    atomic_write(p, buf.getvalue())
    return p
