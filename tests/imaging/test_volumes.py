"""NIfTI images and masks -> time-activity data; geometry checks, nearest-neighbour resampling
on request, mask errors, recovery coefficients, the study file and `run_images`."""

import twinjax  # noqa: I001  (first: enables float64)

import gzip
import math

import numpy as np
import pytest
import yaml

import _synthetic_dicom as syn
from twinjax import InputError
from twinjax.imaging.io import read_tacs
from twinjax.imaging.observe import sphere_recovery
from twinjax.imaging.volumes import (
    Geometry,
    Recovery,
    Volume,
    check_geometry,
    read_image,
    read_label_masks,
    read_mask,
    resample_nearest,
)
from twinjax.imaging_cli import extract_tacs, load_imaging_study, run_images

LU = twinjax.nuclide("Lu-177")
TIMES_H = (1.0, 4.0, 24.0, 96.0)
FRAME_S = 1200.0


@pytest.fixture(scope="module")
def study_dir(tmp_path_factory):
    """Four NIfTI time points (Bq/mL, not decay-corrected, 20-min frames): the first two with
    one mask file per region, the last two with a label map."""
    d = tmp_path_factory.mktemp("nifti_study")
    mid = [t + FRAME_S / 7200.0 for t in TIMES_H]
    g = syn.frame_factor(LU.half_life_h, FRAME_S / 3600.0)
    for n, t in enumerate(mid):  # the frame average is the mid-frame activity / g
        syn.write_nifti(d / f"tp{n}.nii.gz", syn.concentration_MBq_per_mL(t, 1 / g) * 1e6,
                        syn.AFFINE)  # fmt: skip
    labels = np.zeros(syn.SHAPE)
    for value, (region, m) in enumerate(syn.region_masks().items(), start=1):
        syn.write_nifti(d / f"{region}.nii.gz", m.astype(float), syn.AFFINE)
        labels[m] = value
    syn.write_nifti(d / "labels.nii.gz", labels, syn.AFFINE)
    return d


def _study(d, **changes):
    masks = {"kidneys": "kidneys.nii.gz", "tumour": "tumour.nii.gz"}
    labels = {"path": "labels.nii.gz", "regions": {1: "kidneys", 2: "tumour"}}
    tps = [{"image": f"tp{n}.nii.gz", "time_h": t, "frame_duration_s": FRAME_S}
           for n, t in enumerate(TIMES_H)]  # fmt: skip
    for n, tp in enumerate(tps):
        tp.update({"masks": masks} if n < 2 else {"labels": labels})
    study = {"schema": "twinjax.imaging_study/1", "patient_id": "N01", "nuclide": "Lu-177",
             "units": "Bq/mL", "timepoints": tps}  # fmt: skip
    study.update(changes)
    path = d / "study.yaml"
    path.write_text(yaml.safe_dump(study))
    return path


def test_nifti_study_equals_truth(study_dir):
    tacs = extract_tacs(_study(study_dir))
    d = tacs.data
    np.testing.assert_allclose(d.time_h, np.repeat(np.array(TIMES_H) + 1 / 6, 2), atol=1e-12)
    truth = [syn.truth_MBq(r, t) for r, t in zip(d.roi, d.time_h, strict=True)]
    np.testing.assert_allclose(d.activity_MBq, truth, rtol=1e-9)
    np.testing.assert_array_equal(tacs.recovery, 1.0)
    assert tacs.administered_MBq is None and tacs.resampled == ()


def test_run_images_writes_a_csv_read_tacs_reads(study_dir, tmp_path):
    out = tmp_path / "tacs.csv"
    tacs = run_images(_study(study_dir), out)
    back = read_tacs(out, patient_id="N01")
    assert back.roi == tacs.data.roi
    np.testing.assert_array_equal(back.time_h, tacs.data.time_h)  # repr floats: exact
    np.testing.assert_array_equal(back.activity_MBq, tacs.data.activity_MBq)
    assert not list(tmp_path.glob(".*tmp"))  # atomic write leaves no temporary behind


def test_recovery_sphere_and_table(study_dir):
    """Recovery divides the activity: sphere model for the tumour only; a table interpolated
    linearly in volume (hand-computed), clamped above its largest volume."""
    base = extract_tacs(_study(study_dir)).data.activity_MBq
    sph = extract_tacs(_study(study_dir, recovery={"fwhm_mm": 8.0, "regions": ["tumour"]}))
    tum = np.array([r == "tumour" for r in sph.data.roi])
    rc = float(sphere_recovery(12 * syn.VOXEL_ML * 1e-3, 8.0))
    assert 0.3 < rc < 0.95
    np.testing.assert_allclose(sph.recovery, np.where(tum, rc, 1.0), rtol=1e-12)
    np.testing.assert_allclose(sph.data.activity_MBq, base / np.where(tum, rc, 1.0), rtol=1e-12)
    table = {"volume_mL": [0.5, 1.0, 4.0], "rc": [0.4, 0.6, 0.9]}
    tab = extract_tacs(_study(study_dir, recovery=table))
    # kidneys 1.08 mL: 0.6 + (0.08 / 3) x 0.3 = 0.608; tumour 0.72 mL: 0.4 + 0.44 x 0.2 = 0.488
    expected = np.where(tum, 0.488, 0.608)
    np.testing.assert_allclose(tab.recovery, expected, rtol=1e-12)
    np.testing.assert_allclose(tab.data.activity_MBq, base / expected, rtol=1e-12)
    with pytest.raises(InputError, match=r"smaller than the table's smallest volume 1 mL"):
        Recovery(volume_mL=(1.0, 2.0), rc=(0.5, 0.7)).coefficient(0.72, region="tumour")
    assert Recovery(volume_mL=(1.0, 2.0), rc=(0.5, 0.7)).coefficient(50.0) == 0.7


def test_counts_nifti_with_calibration(study_dir, tmp_path):
    counts = np.zeros(syn.SHAPE)
    masks = syn.region_masks()
    counts[masks["kidneys"]] = 300.0
    counts[masks["tumour"]] = 200.0
    syn.write_nifti(tmp_path / "c.nii", counts, syn.AFFINE)
    for r in masks:
        (tmp_path / f"{r}.nii.gz").write_bytes((study_dir / f"{r}.nii.gz").read_bytes())
    study = {"schema": "twinjax.imaging_study/1", "patient_id": "N01", "nuclide": "Lu-177",
             "units": "counts", "calibration_cps_per_MBq": 5.0,
             "masks": {r: f"{r}.nii.gz" for r in masks},
             "timepoints": [{"image": "c.nii", "time_h": 48.0, "frame_duration_s": 1800.0,
                             "decay_correction": "START"}]}  # fmt: skip
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(study))
    d = extract_tacs(tmp_path / "s.yaml").data
    decay = math.exp(-math.log(2) / LU.half_life_h * 0.25)  # START refers to the scan start
    assert d.time_h[0] == pytest.approx(48.25, abs=1e-12)
    for r, a in zip(d.roi, d.activity_MBq, strict=True):
        n_counts = {"kidneys": 18 * 300.0, "tumour": 12 * 200.0}[r]
        assert a == pytest.approx(n_counts / (5.0 * 1800.0) * decay, rel=1e-12)


def test_check_geometry_tolerance_and_message():
    g = Geometry.from_affine(syn.SHAPE, syn.AFFINE)
    near = syn.AFFINE.copy()
    near[0, 3] += 0.5e-6 * 3.0  # within 1e-6 x the smallest spacing (3 mm)
    check_geometry(g, Geometry.from_affine(syn.SHAPE, near))
    far = syn.AFFINE.copy()
    far[0, 3] += 2e-6 * 3.0
    with pytest.raises(InputError, match=r"image has shape \(8, 8, 6\).*mask has shape") as err:
        check_geometry(g, Geometry.from_affine(syn.SHAPE, far))
    assert "-10.0" in str(err.value) and "resample_masks" in str(err.value)
    with pytest.raises(InputError, match=r"shape \(8, 8, 5\)"):
        check_geometry(g, Geometry.from_affine((8, 8, 5), syn.AFFINE))


def test_resample_nearest_equals_hand_computed():
    """A mask on a grid of half the spacing, shifted by one fine voxel along j: image voxel
    (i, j, k) sits on fine voxel (2i, 2j - 1, 2k); j = 0 falls outside."""
    fine_aff = syn.affine_lps(np.array(syn.SPACING) / 2,
                              np.array(syn.ORIGIN) + [0.0, 2.5, 0.0])  # fmt: skip
    rng = np.random.default_rng(0)
    fine = rng.random((16, 16, 12)) > 0.5
    out = resample_nearest(Volume(fine, Geometry.from_affine(fine.shape, fine_aff)),
                           Geometry.from_affine(syn.SHAPE, syn.AFFINE))  # fmt: skip
    hand = np.zeros(syn.SHAPE, bool)
    for i in range(8):
        for j in range(1, 8):
            for k in range(6):
                hand[i, j, k] = fine[2 * i, 2 * j - 1, 2 * k]
    np.testing.assert_array_equal(out.data, hand)


def test_geometry_mismatch_in_a_study_and_resampling_on_request(study_dir, tmp_path):
    shifted = syn.affine_lps(syn.SPACING, np.array(syn.ORIGIN) + [4.0, 0.0, 0.0])
    m = syn.region_masks()
    for r in m:  # the same regions, written on a grid one voxel further along i
        syn.write_nifti(tmp_path / f"{r}.nii.gz", np.roll(m[r], -1, axis=0), shifted)
    for n in range(4):
        (tmp_path / f"tp{n}.nii.gz").write_bytes((study_dir / f"tp{n}.nii.gz").read_bytes())
    masks = {r: f"{r}.nii.gz" for r in m}
    study = _study(tmp_path, masks=masks)
    raw = yaml.safe_load(study.read_text())
    for tp in raw["timepoints"]:
        tp.pop("masks", None)
        tp.pop("labels", None)
    study.write_text(yaml.safe_dump(raw))
    with pytest.raises(InputError, match=r"geometry mismatch: image .*tp0.*origin \(-10\.0.*"
                                         r"kidneys\.nii\.gz.*origin \(-6\.0"):  # fmt: skip
        extract_tacs(study)
    raw["resample_masks"] = True
    study.write_text(yaml.safe_dump(raw))
    tacs = extract_tacs(study)  # the rolled masks land back on the original voxels
    truth = [syn.truth_MBq(r, t) for r, t in zip(tacs.data.roi, tacs.data.time_h, strict=True)]
    np.testing.assert_allclose(tacs.data.activity_MBq, truth, rtol=1e-9)
    assert len(tacs.resampled) == 8


def test_mask_errors(tmp_path):
    m = np.zeros(syn.SHAPE)
    syn.write_nifti(tmp_path / "empty.nii.gz", m, syn.AFFINE)
    with pytest.raises(InputError, match=r"empty.nii.gz: the mask is empty"):
        read_mask(tmp_path / "empty.nii.gz")
    m[1, 1, 1], m[2, 2, 2] = 1.0, 2.0
    syn.write_nifti(tmp_path / "two.nii.gz", m, syn.AFFINE)
    with pytest.raises(InputError, match=r"two.nii.gz: a binary mask with values \[2.0\]"):
        read_mask(tmp_path / "two.nii.gz")
    with pytest.raises(InputError, match=r"label\(s\) \[5\] \(regions \['liver'\]\).*present: "
                                         r"\['label 1', 'label 2'\]"):  # fmt: skip
        read_label_masks(tmp_path / "two.nii.gz", {1: "kidneys", 5: "liver"})
    m[3, 3, 3] = 1.5
    syn.write_nifti(tmp_path / "frac.nii.gz", m, syn.AFFINE)
    with pytest.raises(InputError, match=r"non-integer values \[1.5\]"):
        read_label_masks(tmp_path / "frac.nii.gz", {1: "kidneys"})


def test_corrupt_and_truncated_nifti_name_the_file(study_dir, tmp_path):
    bad = tmp_path / "garbage.nii"
    bad.write_bytes(b"\x00\x01not nifti" * 50)
    with pytest.raises(InputError, match=r"garbage.nii: not a readable NIfTI image"):
        read_image(bad)
    raw = gzip.decompress((study_dir / "tp0.nii.gz").read_bytes())
    cut = tmp_path / "cut.nii.gz"
    cut.write_bytes(gzip.compress(raw[: len(raw) // 2]))
    with pytest.raises(InputError, match=r"cut.nii.gz: not a readable NIfTI image"):
        read_image(cut)


def test_study_file_errors_name_the_field(study_dir):
    with pytest.raises(InputError, match=r"unknown field 'unit'"):
        load_imaging_study(_study(study_dir, unit="Bq/mL"))
    with pytest.raises(InputError, match=r"timepoints\[0\].image = 'nope.nii'"):
        load_imaging_study(_study(study_dir, timepoints=[{"image": "nope.nii", "time_h": 1.0,
                                                          "masks": {"a": "kidneys.nii.gz"}}]))  # fmt: skip
    with pytest.raises(InputError, match=r"NIfTI.*give time_h"):
        extract_tacs(_study(study_dir, timepoints=[{"image": "tp0.nii.gz",
                                                    "masks": {"a": "kidneys.nii.gz"}}]))  # fmt: skip
    with pytest.raises(InputError, match=r"units.*'BQML'"):
        load_imaging_study(_study(study_dir, units="BQML"))


def test_cli_images_writes_the_csv_and_fails_cleanly(study_dir, tmp_path):
    from typer.testing import CliRunner

    from twinjax.cli import app

    out = tmp_path / "cli_tacs.csv"
    res = CliRunner().invoke(app, ["images", str(_study(study_dir)), "--out", str(out)])
    assert res.exit_code == 0, res.output
    back = read_tacs(out, patient_id="N01")
    truth = [syn.truth_MBq(r, t) for r, t in zip(back.roi, back.time_h, strict=True)]
    np.testing.assert_allclose(back.activity_MBq, truth, rtol=1e-9)
    bad = _study(study_dir, nuclide="Xx-999")
    res = CliRunner().invoke(app, ["images", str(bad), "--out", str(tmp_path / "no.csv")])
    assert res.exit_code != 0 and "nuclide" in res.output
    assert not (tmp_path / "no.csv").exists()
