"""Dose maps out: NIfTI and DICOM RT Dose files read back with nibabel / pydicom (independent
readers), voxel values to 1e-6 relative, geometry voxel by voxel."""

import twinjax  # noqa: F401, I001  (first: enables float64)


import nibabel as nib
import numpy as np
import pydicom
import pytest

import _synthetic_dicom as syn
from twinjax import InputError
from twinjax.imaging.dose_out import write_dose_nifti, write_dose_rtdose
from twinjax.imaging.volumes import Geometry, read_image

ROT = np.array([[0.0, 1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, -1.0]])  # columns: i, j, k


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """A DICOM PET image on a rotated grid with non-square pixels."""
    d = tmp_path_factory.mktemp("ref")
    aff = syn.affine_lps(syn.SPACING, syn.ORIGIN, ROT)
    hdr = {"Units": "BQML", "DecayCorrection": "START", "AcquisitionDate": "20260302",
           "AcquisitionTime": "101500"}  # fmt: skip
    rp = {"RadiopharmaceuticalStartTime": "091500", "RadionuclideTotalDose": 7.4e9}
    folder = syn.write_pet_series(d / "pet", syn.concentration_MBq_per_mL(1.0) * 1e6, aff,
                                  header=hdr, rp=rp)  # fmt: skip
    return read_image(folder)


@pytest.fixture(scope="module")
def dose():
    rng = np.random.default_rng(3)
    d = rng.uniform(0.5, 40.0, size=syn.SHAPE)
    d[0, :, :] = 0.0  # exact zeros stay zero
    return d


def _world(affine, ijk):
    return (affine @ np.append(ijk, 1.0))[:3]


@pytest.mark.parametrize("name", ["dose.nii", "dose.nii.gz"])
def test_nifti_dose_roundtrip(tmp_path, reference, dose, name):
    path = write_dose_nifti(tmp_path / name, dose, reference)
    img = nib.load(str(path))
    np.testing.assert_allclose(img.affine, reference.geometry.affine_ras, atol=1e-6)
    back = np.asarray(img.dataobj, dtype=np.float64)
    np.testing.assert_allclose(back, dose, rtol=1e-6, atol=0)
    assert img.header.get_xyzt_units()[0] == "mm"
    assert [p.name for p in tmp_path.iterdir()] == [name]  # no temporary left behind


def test_rtdose_roundtrip(tmp_path, reference, dose):
    path = write_dose_rtdose(tmp_path / "dose.dcm", dose, reference, patient_id="P-007",
                             summation_type="FRACTION", comment="cycle 1")  # fmt: skip
    ds = pydicom.dcmread(str(path))
    assert ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.481.2" and ds.Modality == "RTDOSE"
    assert (ds.DoseUnits, ds.DoseType, ds.DoseSummationType) == ("GY", "PHYSICAL", "FRACTION")
    assert ds.FrameOfReferenceUID == reference.frame_of_reference_uid == syn.FRAME_OF_REFERENCE
    assert ds.PatientID == "P-007" and str(ds.PatientName) == ""
    frames = ds.pixel_array.astype(np.float64) * float(ds.DoseGridScaling)  # (k, rows, cols)
    back = np.transpose(frames, (2, 1, 0))
    np.testing.assert_allclose(back, dose, rtol=1e-6, atol=0)
    # geometry, voxel by voxel: (i, j, k) -> IPP + i col_spacing row_dir + j row_spacing col_dir
    # + GridFrameOffsetVector[k] normal, read with the DICOM definitions only
    iop = np.array(ds.ImageOrientationPatient, float)
    row_dir, col_dir = iop[:3], iop[3:]
    normal = np.cross(row_dir, col_dir)
    ipp = np.array(ds.ImagePositionPatient, float)
    ps = np.array(ds.PixelSpacing, float)
    offsets = np.array(ds.GridFrameOffsetVector, float)
    assert ds.FrameIncrementPointer == 0x3004000C and offsets[0] == 0.0
    aff = reference.geometry.affine_lps
    for ijk in [(0, 0, 0), (7, 0, 0), (0, 7, 0), (0, 0, 5), (3, 6, 4)]:
        i, j, k = ijk
        pos = ipp + i * ps[1] * row_dir + j * ps[0] * col_dir + offsets[k] * normal
        np.testing.assert_allclose(pos, _world(aff, ijk), atol=1e-6)


def test_rtdose_reads_back_in_simpleitk(tmp_path, reference, dose):
    """ITK (what 3D Slicer uses) finds the same grid."""
    sitk = pytest.importorskip("SimpleITK")
    path = write_dose_rtdose(tmp_path / "dose.dcm", dose, reference, patient_id="P-007")
    img = sitk.ReadImage(str(path))
    np.testing.assert_allclose(img.GetOrigin(), reference.geometry.origin_mm, atol=1e-6)
    np.testing.assert_allclose(img.GetSpacing(), reference.geometry.spacing_mm, atol=1e-6)
    direction = np.asarray(img.GetDirection()).reshape(3, 3)
    np.testing.assert_allclose(direction, reference.geometry.direction, atol=1e-6)


def test_dose_writers_reject_bad_input(tmp_path, reference, dose):
    with pytest.raises(InputError, match=r"dose of shape \(8, 8, 5\).*\(8, 8, 6\)"):
        write_dose_nifti(tmp_path / "d.nii", dose[:, :, :5], reference)
    neg = dose.copy()
    neg[1, 1, 1] = -1.0
    with pytest.raises(InputError, match="negative or non-finite"):
        write_dose_rtdose(tmp_path / "d.dcm", neg, reference, patient_id="P")
    with pytest.raises(InputError, match="summation_type = 'TOTAL'"):
        write_dose_rtdose(tmp_path / "d.dcm", dose, reference, patient_id="P",
                          summation_type="TOTAL")  # fmt: skip
    sheared = reference.geometry.affine_lps.copy()
    sheared[:3, 2] = [0.0, 3.0 * np.sqrt(0.5), -3.0 * np.sqrt(0.5)]
    with pytest.raises(InputError, match="not the normal"):
        write_dose_rtdose(tmp_path / "d.dcm", dose, Geometry.from_affine(syn.SHAPE, sheared),
                          patient_id="P")  # fmt: skip
    with pytest.raises(InputError, match=r"end in \.nii"):
        write_dose_nifti(tmp_path / "d.img", dose, reference)
    assert list(tmp_path.iterdir()) == []  # nothing written on error
