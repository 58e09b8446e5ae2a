"""DICOM input: PET/NM series -> time-activity data in MBq at hours after administration.

Synthetic studies (tests/imaging/_synthetic_dicom.py) on an 8x8x6 grid with two regions whose
physical activities follow known bi-exponentials; headers in each decay-correction state,
with the administration in the header (with or without a date) or in the study file.
"""

import twinjax  # noqa: I001  (first: enables float64)

import datetime as dt
import math
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import yaml

from twinjax import InputError
from twinjax.imaging.dose_out import write_dose_rtdose
from twinjax.imaging.io import read_tacs
from twinjax.imaging.volumes import (
    ImagingWarning,
    read_image,
    read_images,
    read_label_masks,
)
from twinjax.imaging_cli import extract_tacs, run_images

import _synthetic_dicom as syn

LU = twinjax.nuclide("Lu-177")
F18 = twinjax.nuclide("F-18")
ADMIN = dt.datetime(2026, 3, 2, 9, 15)
STARTS_H = (1.0, 4.0, 24.0, 96.0)
FRAME_H = 20.0 / 60.0
SERIES_BEFORE_H = 5.0 / 60.0  # SeriesTime 5 min before AcquisitionTime: the START reference
PLANTED = (syn.PATIENT_NAME.encode(), b"DOE", b"JANE", b"8675309", syn.BIRTH_DATE.encode(),
           b"20260302", b"20260303", b"091500", b"2026-03-02")  # fmt: skip


def _lam(nuc) -> float:
    return math.log(2.0) / nuc.half_life_h


def _header(acq: dt.datetime, decay: str, *, dates: bool = True, frame_h: float = FRAME_H):
    ser = acq - dt.timedelta(hours=SERIES_BEFORE_H)
    return {
        "Units": "BQML",
        "DecayCorrection": decay,
        "AcquisitionDate": acq.strftime("%Y%m%d") if dates else None,
        "AcquisitionTime": acq.strftime("%H%M%S"),
        "SeriesDate": ser.strftime("%Y%m%d") if dates else None,
        "SeriesTime": ser.strftime("%H%M%S"),
        "ActualFrameDuration": round(frame_h * 3.6e6),
    }


def _rp(nuc=LU, *, admin=ADMIN, full=False, dose=7.4e9, meaning="^177^Lutetium"):
    rp = {"RadionuclideTotalDose": dose, "RadionuclideHalfLife": nuc.half_life_h * 3600.0,
          "CodeMeaning": meaning}  # fmt: skip
    if full:
        rp["RadiopharmaceuticalStartDateTime"] = admin.strftime("%Y%m%d%H%M%S")
    else:
        rp["RadiopharmaceuticalStartTime"] = admin.strftime("%H%M%S")
    return rp


def _image_factor(decay: str, t_mid: float, t_start: float, nuc=LU, frame_h=FRAME_H) -> float:
    """What the scanner multiplied the physical activity at mid-frame by (module docs)."""
    lam = _lam(nuc)
    if decay == "START":
        return math.exp(lam * (t_mid - (t_start - SERIES_BEFORE_H)))
    if decay == "ADMIN":
        return math.exp(lam * t_mid)
    return 1.0 / syn.frame_factor(nuc.half_life_h, frame_h)


def _write_study(tmp: Path, decay: str, *, admin_in: str, **extra) -> Path:
    """Four PET series and a NIfTI label map; returns the study YAML."""
    tps = []
    for n, ts in enumerate(STARTS_H):
        t_mid = ts + FRAME_H / 2
        img = syn.concentration_MBq_per_mL(t_mid, _image_factor(decay, t_mid, ts)) * 1e6
        syn.write_pet_series(tmp / f"tp{n}", img, syn.AFFINE,
                             header=_header(ADMIN + dt.timedelta(hours=ts), decay),
                             rp=_rp(full=admin_in == "header_datetime"))  # fmt: skip
        tps.append({"image": f"tp{n}"})
    labels = np.zeros(syn.SHAPE)
    for value, m in enumerate(syn.region_masks().values(), start=1):
        labels[m] = value
    syn.write_nifti(tmp / "labels.nii.gz", labels, syn.AFFINE)
    study = {
        "schema": "twinjax.imaging_study/1",
        "patient_id": "P-007",
        "nuclide": "Lu-177",
        "labels": {"path": "labels.nii.gz", "regions": {1: "kidneys", 2: "tumour"}},
        "timepoints": tps,
        **extra,
    }
    if admin_in == "study":
        study["administration"] = {"activity_MBq": 7400.0, "datetime": ADMIN.isoformat()}
    path = tmp / "study.yaml"
    path.write_text(yaml.safe_dump(study))
    return path


@pytest.mark.parametrize(
    "decay, admin_in",
    [("NONE", "header_time"), ("START", "header_datetime"), ("ADMIN", "study")],
)
def test_pet_series_tac_equals_truth(tmp_path, decay, admin_in):
    tacs = extract_tacs(_write_study(tmp_path, decay, admin_in=admin_in))
    d = tacs.data
    assert d.patient_id == "P-007" and d.n == 8
    expected_t = np.repeat(np.array(STARTS_H) + FRAME_H / 2, 2)
    np.testing.assert_allclose(d.time_h, expected_t, rtol=0, atol=1e-12)
    truth = [syn.truth_MBq(r, t) for r, t in zip(d.roi, d.time_h, strict=True)]
    # 32-bit storage with a per-slice RescaleSlope quantises to < 4e-10 of these values
    np.testing.assert_allclose(d.activity_MBq, truth, rtol=1e-9)
    np.testing.assert_allclose(tacs.volume_mL, np.tile([18, 12], 4) * syn.VOXEL_ML, rtol=1e-12)
    assert tacs.administered_MBq == pytest.approx(7400.0, rel=1e-12)
    assert tacs.nuclide == "Lu-177"


def _rollover_series(tmp: Path, *, dates: bool, decay="NONE", frame_h=10 / 60) -> Path:
    admin = dt.datetime(2026, 3, 2, 23, 30)
    acq = dt.datetime(2026, 3, 3, 0, 40)
    t_mid = 70 / 60 + frame_h / 2
    img = syn.concentration_MBq_per_mL(t_mid, _image_factor(decay, t_mid, 70 / 60, F18, frame_h))
    return syn.write_pet_series(
        tmp, img * 1e6, syn.AFFINE, header=_header(acq, decay, dates=dates, frame_h=frame_h),
        rp=_rp(F18, admin=admin, meaning="^18^Fluorine"),
    )  # fmt: skip


@pytest.mark.parametrize("dates", [True, False])
def test_midnight_rollover(tmp_path, dates):
    """Injection 23:30 (time only), scan 00:40 the next day: 1 h 10 min, not -22 h 50 min."""
    path = _rollover_series(tmp_path / "pet", dates=dates)
    with pytest.warns(ImagingWarning, match="midnight rollover") as rec:
        vol = read_image(path)
    assert vol.scan.start_h == pytest.approx(70 / 60, abs=1e-12)
    assert vol.scan.mid_h == pytest.approx(75 / 60, abs=1e-12)
    for w in rec:  # the warning gives hours, never the clock times or dates
        assert not any(s.decode() in str(w.message) for s in PLANTED + (b"2330", b"0040"))
    masks = {r: _mask_volume(m) for r, m in syn.region_masks().items()}
    tacs = twinjax.imaging.volumes.tacs_from_images([vol], [masks], patient_id="X", nuclide="F-18")
    # NONE: the frame average (F-18, 10 min: (x/2)/sinh(x/2) = 0.99982) is brought to mid-frame
    for r, a in zip(tacs.data.roi, tacs.data.activity_MBq, strict=True):
        assert a == pytest.approx(syn.truth_MBq(r, 75 / 60), rel=1e-9)


def _mask_volume(m):
    from twinjax.imaging.volumes import Geometry, Volume

    return Volume(m, Geometry.from_affine(m.shape, syn.AFFINE), "mask")


def test_total_dose_bq_vs_mbq(tmp_path):
    """RadionuclideTotalDose is Bq; a value below 1e5 is read as MBq with a warning."""
    img = syn.concentration_MBq_per_mL(1.0) * 1e6
    hdr = _header(ADMIN + dt.timedelta(hours=1), "START")
    syn.write_pet_series(tmp_path / "bq", img, syn.AFFINE, header=hdr, rp=_rp(dose=7.4e9))
    syn.write_pet_series(tmp_path / "mbq", img, syn.AFFINE, header=hdr, rp=_rp(dose=7400.0))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert read_image(tmp_path / "bq").scan.administered_MBq == pytest.approx(7400.0)
    with pytest.warns(ImagingWarning, match="read as MBq"):
        assert read_image(tmp_path / "mbq").scan.administered_MBq == 7400.0


def test_nm_counts_multiframe_with_calibration(tmp_path):
    """An NM multi-frame counts image: activity = counts / (cps/MBq x duration), decay of the
    frame brought to mid-frame; duration from RotationInformationSequence (120 views x 25 s)."""
    rng = np.random.default_rng(1)
    counts = rng.integers(0, 4000, size=syn.SHAPE)
    hdr = {"AcquisitionDate": "20260303", "AcquisitionTime": "091500", "Units": "CNTS",
           "DecayCorrection": "NONE"}  # fmt: skip
    path = syn.write_nm_multiframe(tmp_path / "nm.dcm", counts, syn.AFFINE, header=hdr,
                                   rp=_rp(full=True), seconds_per_view=25.0, views=120)  # fmt: skip
    vol = read_image(path)
    np.testing.assert_array_equal(vol.data, counts)
    assert vol.geometry.spacing_mm == pytest.approx(syn.SPACING)
    masks = {r: _mask_volume(m) for r, m in syn.region_masks().items()}
    cal = 9.2
    tacs = twinjax.imaging.volumes.tacs_from_images(
        [vol], [masks], patient_id="X", nuclide="Lu-177", calibration_cps_per_MBq=cal
    )
    dur_h = 3000.0 / 3600.0
    for r, t, a in zip(tacs.data.roi, tacs.data.time_h, tacs.data.activity_MBq, strict=True):
        assert t == pytest.approx(24.0 + dur_h / 2, abs=1e-12)
        raw = counts[syn.region_masks()[r]].sum() / (cal * 3000.0)
        assert a == pytest.approx(raw * syn.frame_factor(LU.half_life_h, dur_h), rel=1e-12)
    with pytest.raises(InputError, match="calibration_cps_per_MBq"):
        twinjax.imaging.volumes.tacs_from_images([vol], [masks], patient_id="X", nuclide="Lu-177")


def test_header_nuclide_must_match_study(tmp_path):
    img = syn.concentration_MBq_per_mL(1.0) * 1e6
    hdr = _header(ADMIN + dt.timedelta(hours=1), "START")
    syn.write_pet_series(tmp_path / "f18", img, syn.AFFINE, header=hdr,
                         rp=_rp(F18, meaning="^18^Fluorine"))  # fmt: skip
    syn.write_pet_series(tmp_path / "hl", img, syn.AFFINE, header=hdr, rp=_rp(F18, meaning=""))
    masks = {r: _mask_volume(m) for r, m in syn.region_masks().items()}
    with pytest.raises(InputError, match=r"CodeMeaning.*F-18.*Lu-177"):
        twinjax.imaging.volumes.tacs_from_images([read_image(tmp_path / "f18")], [masks],
                                            patient_id="X", nuclide="Lu-177")  # fmt: skip
    with pytest.raises(InputError, match=r"RadionuclideHalfLife.*Lu-177"):
        twinjax.imaging.volumes.tacs_from_images([read_image(tmp_path / "hl")], [masks],
                                            patient_id="X", nuclide="Lu-177")  # fmt: skip


def test_corrupt_and_truncated_dicom_name_the_file(tmp_path):
    img = syn.concentration_MBq_per_mL(1.0) * 1e6
    hdr = _header(ADMIN + dt.timedelta(hours=1), "START")
    folder = syn.write_pet_series(tmp_path / "pet", img, syn.AFFINE, header=hdr, rp=_rp())
    victim = sorted(folder.iterdir())[2]
    victim.write_bytes(victim.read_bytes()[:-100])  # truncated pixel data
    with pytest.raises(InputError, match=str(victim.name)) as err:
        read_image(folder)
    assert "Traceback" not in str(err.value)
    victim.write_bytes(b"not a DICOM file at all" * 10)
    with pytest.raises(InputError, match=rf"{victim.name}: not a readable DICOM file"):
        read_image(folder)


def test_simpleitk_reader_equals_pydicom(tmp_path):
    """Two independent readers (pydicom here, ITK/GDCM) agree on voxels and geometry for an
    oblique-free but rotated orientation with non-square pixels."""
    rot = np.array([[0.0, 1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, -1.0]])  # columns: i, j, k
    aff = syn.affine_lps(syn.SPACING, syn.ORIGIN, rot)
    img = syn.concentration_MBq_per_mL(2.0) * 1e6
    img[0, 0, 0] = 3 * img.max()  # an asymmetric marker: a transposition would move it
    hdr = _header(ADMIN + dt.timedelta(hours=2), "START")
    folder = syn.write_pet_series(tmp_path / "pet", img, aff, header=hdr, rp=_rp())
    a = read_image(folder)
    b = read_image(folder, reader="simpleitk")
    np.testing.assert_allclose(a.data, b.data, rtol=1e-12)
    np.testing.assert_allclose(a.geometry.affine_lps, b.geometry.affine_lps, atol=1e-9)
    np.testing.assert_allclose(a.geometry.affine_lps, aff, atol=1e-9)
    np.testing.assert_allclose(a.data, img, rtol=0, atol=img.max() * 1e-9)  # 32-bit storage
    assert a.scan == b.scan


def test_simpleitk_missing_names_the_extra(tmp_path, monkeypatch):
    img = syn.concentration_MBq_per_mL(2.0) * 1e6
    hdr = _header(ADMIN + dt.timedelta(hours=2), "START")
    folder = syn.write_pet_series(tmp_path / "pet", img, syn.AFFINE, header=hdr, rp=_rp())
    monkeypatch.setitem(sys.modules, "SimpleITK", None)
    with pytest.raises(InputError, match=r'pip install "twinjax\[imaging\]"'):
        read_image(folder, reader="simpleitk")


def test_dicom_seg_labels(tmp_path):
    """A BINARY DICOM-SEG holding only the slices each segment touches is placed on the image
    grid exactly; an absent segment is an error listing those present."""
    masks = syn.region_masks()
    seg = syn.write_seg(tmp_path / "seg.dcm", {1: ("Kidney", masks["kidneys"]),
                                               3: ("Lesion", masks["tumour"])}, syn.AFFINE)  # fmt: skip
    img = syn.concentration_MBq_per_mL(2.0) * 1e6
    hdr = _header(ADMIN + dt.timedelta(hours=2), "START")
    vol = read_image(syn.write_pet_series(tmp_path / "pet", img, syn.AFFINE, header=hdr, rp=_rp()))
    got = read_label_masks(seg, {1: "kidneys", 3: "tumour"}, reference=vol.geometry)
    for r in masks:
        np.testing.assert_array_equal(got[r].data, masks[r])
        assert got[r].geometry == vol.geometry
    own = read_label_masks(seg, {3: "tumour"})  # its own grid: slices 2-4 of the image
    assert own["tumour"].geometry.shape == (8, 8, 3)
    assert own["tumour"].geometry.origin_mm == pytest.approx((-10.0, 20.0, -24.0))
    with pytest.raises(InputError, match=r"label\(s\) \[2\].*segment 1 \('Kidney'\)"):
        read_label_masks(seg, {2: "liver"}, reference=vol.geometry)


def test_privacy_nothing_of_the_header_identity_leaks(tmp_path):
    """PatientName, PatientID, birth date and header dates/times appear in no returned object,
    warning, error message or written file (scanned as bytes)."""
    study = _write_study(tmp_path, "START", admin_in="header_time")
    out = tmp_path / "tacs.csv"
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        tacs = run_images(study, out)
        _rollover_series(tmp_path / "roll", dates=True)
        roll = read_image(tmp_path / "roll")
        mbq = tmp_path / "mbq"
        syn.write_pet_series(mbq, syn.concentration_MBq_per_mL(1.0) * 1e6, syn.AFFINE,
                             header=_header(ADMIN + dt.timedelta(hours=1), "START"),
                             rp=_rp(dose=7400.0))  # fmt: skip
        read_image(mbq)
    assert len(rec) >= 2
    texts = [str(w.message) for w in rec]
    texts += [repr(tacs), repr(tacs.data), repr(roll), repr(roll.scan)]
    # error messages of failures on these files
    masks = {r: _mask_volume(m) for r, m in syn.region_masks().items()}
    for call in (
        lambda: twinjax.imaging.volumes.tacs_from_images(
            [roll], [masks], patient_id="X", nuclide="Lu-177"
        ),
        lambda: read_images([tmp_path / "tp0"], administration="2026-03-02T12:00:00"),
        lambda: read_image(tmp_path / "tp0", units="GML"),
    ):
        with pytest.raises(InputError) as err:
            call()
        texts.append(str(err.value))
    dose = tmp_path / "dose.dcm"
    ref = read_image(tmp_path / "tp0")
    write_dose_rtdose(dose, np.ones(syn.SHAPE), ref, patient_id="P-007")
    blobs = [t.encode() for t in texts] + [out.read_bytes(), dose.read_bytes()]
    for blob in blobs:
        for planted in PLANTED:
            assert planted not in blob, (planted, blob[:200])
    back = read_tacs(out, patient_id="P-007")
    np.testing.assert_array_equal(back.activity_MBq, tacs.data.activity_MBq)
    np.testing.assert_array_equal(back.time_h, tacs.data.time_h)
    assert back.roi == tacs.data.roi
