"""Small synthetic SPECT/PET studies written into tmp_path: DICOM PET series (one file per
slice), NM multi-frame files, BINARY DICOM-SEG and NIfTI images and masks.

Every DICOM file carries a planted identity (PatientName ``DOE^JANE``, PatientID
``MRN-8675309``, a birth date) so that tests can check none of it leaks into twinjax's outputs.
"""

from __future__ import annotations

import math
from pathlib import Path

import nibabel as nib
import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.pixels import pack_bits
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from pydicom.valuerep import format_number_as_ds

PATIENT_NAME = "DOE^JANE"
PATIENT_ID = "MRN-8675309"
BIRTH_DATE = "19610417"
PET_STORAGE = "1.2.840.10008.5.1.4.1.1.128"
NM_STORAGE = "1.2.840.10008.5.1.4.1.1.20"
SEG_STORAGE = "1.2.840.10008.5.1.4.1.1.66.4"
FRAME_OF_REFERENCE = "1.2.826.0.1.3680043.8.498.1"


def affine_lps(spacing, origin, direction=None) -> np.ndarray:
    a = np.eye(4)
    a[:3, :3] = np.asarray(np.eye(3) if direction is None else direction, float) * np.asarray(
        spacing, float
    )
    a[:3, 3] = origin
    return a


def _ds(x: float) -> str:
    return format_number_as_ds(float(x))


def _base(sop_class: str, modality: str, series_uid: str, study_uid: str) -> Dataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = modality
    ds.PatientName = PATIENT_NAME
    ds.PatientID = PATIENT_ID
    ds.PatientBirthDate = BIRTH_DATE
    ds.PatientSex = "F"
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.FrameOfReferenceUID = FRAME_OF_REFERENCE
    ds.StudyDate = "20260302"
    ds.StudyTime = "091000"
    ds.SeriesNumber = 1
    return ds


def _radiopharmaceutical(ds: Dataset, rp: dict) -> None:
    item = Dataset()
    for key in ("RadiopharmaceuticalStartTime", "RadiopharmaceuticalStartDateTime"):
        if rp.get(key):
            setattr(item, key, rp[key])
    if rp.get("RadionuclideTotalDose") is not None:
        item.RadionuclideTotalDose = _ds(rp["RadionuclideTotalDose"])
    if rp.get("RadionuclideHalfLife") is not None:
        item.RadionuclideHalfLife = _ds(rp["RadionuclideHalfLife"])
    if rp.get("CodeMeaning"):
        code = Dataset()
        code.CodeValue = "C-000"
        code.CodingSchemeDesignator = "SRT"
        code.CodeMeaning = rp["CodeMeaning"]
        item.RadionuclideCodeSequence = Sequence([code])
    ds.RadiopharmaceuticalInformationSequence = Sequence([item])


def _header(ds: Dataset, header: dict) -> None:
    for key, value in header.items():
        if value is not None:
            setattr(ds, key, value)


def write_pet_series(folder: Path, values, affine, *, header: dict, rp: dict,
                     shuffle: bool = True) -> Path:  # fmt: skip
    """A PET series (one file per slice) of `values` (i, j, k, >= 0) on `affine` (LPS).

    Stored as 32-bit unsigned integers with a per-slice RescaleSlope, as scanners do.
    `header`: e.g. Units, DecayCorrection, AcquisitionDate/Time, SeriesDate/Time,
    ActualFrameDuration (ms); `rp`: RadiopharmaceuticalInformationSequence fields."""
    folder.mkdir(parents=True, exist_ok=True)
    values = np.asarray(values, float)
    a = np.asarray(affine, float)
    spacing = np.linalg.norm(a[:3, :3], axis=0)
    row, col = a[:3, 0] / spacing[0], a[:3, 1] / spacing[1]
    series, study = generate_uid(), generate_uid()
    order = list(range(values.shape[2]))
    if shuffle:  # files in no particular order: the reader sorts them by position
        order = order[::-1]
    for n, k in enumerate(order):
        ds = _base(PET_STORAGE, "PT", series, study)
        _header(ds, header)
        _radiopharmaceutical(ds, rp)
        ds.ImagePositionPatient = [_ds(x) for x in a[:3, 3] + k * a[:3, 2]]
        ds.ImageOrientationPatient = [_ds(x) for x in (*row, *col)]
        ds.PixelSpacing = [_ds(spacing[1]), _ds(spacing[0])]
        ds.SliceThickness = _ds(spacing[2])
        ds.InstanceNumber = k + 1
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.Rows, ds.Columns = values.shape[1], values.shape[0]
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 32, 32, 31, 0
        plane = values[:, :, k].T  # (rows = j, columns = i)
        top = float(plane.max())
        slope = float(_ds(top / (2**32 - 2))) if top > 0 else 1.0
        ds.RescaleSlope = _ds(slope)
        ds.RescaleIntercept = "0"
        ds.PixelData = np.rint(plane / slope).astype("<u4").tobytes()
        ds.save_as(folder / f"slice{n:03d}.dcm", enforce_file_format=True)
    return folder


def write_nm_multiframe(path: Path, counts, affine, *, header: dict, rp: dict,
                        seconds_per_view: float, views: int) -> Path:  # fmt: skip
    """An NM tomographic reconstruction in one multi-frame file: integer `counts` (i, j, k)
    as uint16, geometry in DetectorInformationSequence, timing in RotationInformationSequence."""
    counts = np.asarray(counts)
    a = np.asarray(affine, float)
    spacing = np.linalg.norm(a[:3, :3], axis=0)
    row, col = a[:3, 0] / spacing[0], a[:3, 1] / spacing[1]
    ds = _base(NM_STORAGE, "NM", generate_uid(), generate_uid())
    _header(ds, header)
    _radiopharmaceutical(ds, rp)
    det = Dataset()
    det.ImagePositionPatient = [_ds(x) for x in a[:3, 3]]
    det.ImageOrientationPatient = [_ds(x) for x in (*row, *col)]
    ds.DetectorInformationSequence = Sequence([det])
    rot = Dataset()
    rot.ActualFrameDuration = round(seconds_per_view * 1000)
    rot.NumberOfFramesInRotation = views
    ds.RotationInformationSequence = Sequence([rot])
    ds.PixelSpacing = [_ds(spacing[1]), _ds(spacing[0])]
    ds.SpacingBetweenSlices = _ds(spacing[2])
    ds.SliceThickness = _ds(spacing[2])
    ds.NumberOfFrames = counts.shape[2]
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = counts.shape[1], counts.shape[0]
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    ds.PixelData = np.ascontiguousarray(np.transpose(counts, (2, 1, 0))).astype("<u2").tobytes()
    ds.save_as(path, enforce_file_format=True)
    return path


def write_seg(path: Path, segments: dict[int, tuple[str, np.ndarray]], affine) -> Path:
    """A BINARY DICOM-SEG holding, per segment, only the slices it touches."""
    a = np.asarray(affine, float)
    spacing = np.linalg.norm(a[:3, :3], axis=0)
    row, col = a[:3, 0] / spacing[0], a[:3, 1] / spacing[1]
    ds = _base(SEG_STORAGE, "SEG", generate_uid(), generate_uid())
    ds.SegmentationType = "BINARY"
    seg_items, frames, per_frame = [], [], []
    for number, (label, mask) in segments.items():
        item = Dataset()
        item.SegmentNumber = number
        item.SegmentLabel = label
        item.SegmentAlgorithmType = "MANUAL"
        seg_items.append(item)
        for k in range(mask.shape[2]):
            if mask[:, :, k].any():
                frames.append(mask[:, :, k].T.astype(np.uint8))
                fg = Dataset()
                pos = Dataset()
                pos.ImagePositionPatient = [_ds(x) for x in a[:3, 3] + k * a[:3, 2]]
                fg.PlanePositionSequence = Sequence([pos])
                ident = Dataset()
                ident.ReferencedSegmentNumber = number
                fg.SegmentIdentificationSequence = Sequence([ident])
                per_frame.append(fg)
    ds.SegmentSequence = Sequence(seg_items)
    shared = Dataset()
    orient = Dataset()
    orient.ImageOrientationPatient = [_ds(x) for x in (*row, *col)]
    shared.PlaneOrientationSequence = Sequence([orient])
    meas = Dataset()
    meas.PixelSpacing = [_ds(spacing[1]), _ds(spacing[0])]
    meas.SliceThickness = _ds(spacing[2])
    meas.SpacingBetweenSlices = _ds(spacing[2])
    shared.PixelMeasuresSequence = Sequence([meas])
    ds.SharedFunctionalGroupsSequence = Sequence([shared])
    ds.PerFrameFunctionalGroupsSequence = Sequence(per_frame)
    ds.NumberOfFrames = len(frames)
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = frames[0].shape
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 1, 1, 0, 0
    ds.PixelData = pack_bits(np.stack(frames))
    ds.save_as(path, enforce_file_format=True)
    return path


def write_nifti(path: Path, data, affine_lps_) -> Path:
    """A NIfTI file (float64) of `data` (i, j, k) with the LPS affine converted to RAS."""
    ras = np.diag([-1.0, -1.0, 1.0, 1.0]) @ np.asarray(affine_lps_, float)
    img = nib.Nifti1Image(np.asarray(data, np.float64), ras)
    img.header.set_xyzt_units(xyz="mm")
    nib.save(img, str(path))
    return path


def frame_factor(half_life_h: float, duration_h: float) -> float:
    """(x/2)/sinh(x/2), x = lambda * duration: frame average -> activity at mid-frame."""
    x = math.log(2.0) / half_life_h * duration_h
    return 1.0 if x == 0 else (x / 2) / math.sinh(x / 2)


# ---------------------------------------------------------------------------------------------
# The synthetic patient: an 8x8x6 grid with two regions of known bi-exponential activity
# ---------------------------------------------------------------------------------------------

SHAPE = (8, 8, 6)
SPACING = (4.0, 5.0, 3.0)  # non-square pixels: PixelSpacing order matters
ORIGIN = (-10.0, 20.0, -30.0)
AFFINE = affine_lps(SPACING, ORIGIN)
VOXEL_ML = 4.0 * 5.0 * 3.0 / 1000.0
BACKGROUND_MBQ_PER_ML = 0.5
#: region -> (a1, k1, a2, k2): A(t) = a1 exp(-k1 t) + a2 exp(-k2 t) MBq (physical activity)
BIEXP = {"kidneys": (60.0, 0.4, 140.0, 0.012), "tumour": (120.0, 0.009, -100.0, 0.25)}


def region_masks() -> dict[str, np.ndarray]:
    kid = np.zeros(SHAPE, bool)
    kid[1:3, 2:5, 1:4] = True  # 18 voxels
    tum = np.zeros(SHAPE, bool)
    tum[5:7, 5:7, 2:5] = True  # 12 voxels
    return {"kidneys": kid, "tumour": tum}


def truth_MBq(region: str, t_h: float) -> float:
    a1, k1, a2, k2 = BIEXP[region]
    return a1 * math.exp(-k1 * t_h) + a2 * math.exp(-k2 * t_h)


def concentration_MBq_per_mL(t_h: float, factor: float = 1.0) -> np.ndarray:
    """The image (MBq/mL) whose regions hold ``truth(t) * factor`` in all (uniformly)."""
    img = np.full(SHAPE, BACKGROUND_MBQ_PER_ML * factor)
    for region, m in region_masks().items():
        img[m] = truth_MBq(region, t_h) * factor / (m.sum() * VOXEL_ML)
    return img
