"""Clinical input: patient manifests and time-activity CSVs (the synthetic cohort and bad input)."""

import twinjax  # noqa: I001  (first: enables float64)

import copy
import math
from pathlib import Path

import numpy as np
import pytest
import yaml

from twinjax import InputError
from twinjax.imaging.io import (
    Patient,
    TimeActivityData,
    check_against_patient,
    load_patient,
    read_tacs,
)

COHORT = Path(__file__).resolve().parents[3] / "shared" / "data" / "psma-clinic-synthetic"
LU177_MBQ_PER_NMOL = twinjax.nuclide("Lu-177").mbq_per_nmol


@pytest.fixture(scope="module")
def cohort():
    if not (COHORT / "tacs.csv").is_file():
        pytest.skip(f"synthetic cohort not present at {COHORT}")
    patients = {p.patient_id: p for p in map(load_patient, sorted(COHORT.glob("patients/*.yaml")))}
    return patients, read_tacs(COHORT / "tacs.csv")


def manifest(**changes):
    """A valid manifest (dict) like the synthetic cohort's, with `changes` applied."""
    m = {
        "patient_id": "P01",
        "sex": "male",
        "weight_kg": 80.0,
        "height_cm": 180.0,
        "hematocrit": 0.42,
        "egfr_mL_min": 90.0,
        "ct_volumes_mL": {"kidneys": 300.0, "tumour": 250.0},
        "administrations": [
            {"time_h": 0.0, "nuclide": "Lu-177", "activity_MBq": 7400.0,
             "ligand_hot_nmol": 10.18, "ligand_cold_nmol": 46.91},
            {"time_h": 1008.0, "nuclide": "Lu-177", "activity_MBq": 7400.0,
             "ligand_hot_nmol": 10.18, "ligand_cold_nmol": 46.91},
        ],
    }  # fmt: skip
    m.update(copy.deepcopy(changes))
    return m


def write_yaml(tmp_path, data, name="P01.yaml"):
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


ROWS = [
    ("P01", "1", "kidneys", "4.0", "250.0"),
    ("P01", "1", "whole_body", "4.0", "4500.0"),
    ("P01", "1", "kidneys", "24.0", "130.0"),
    ("P01", "1", "whole_body", "24.0", "950.0"),
    ("P01", "2", "kidneys", "1032.0", "160.0"),
    ("P01", "2", "whole_body", "1032.0", "1100.0"),
    ("P02", "1", "kidneys", "4.0", "200.0"),
]
HEADER = ("patient_id", "cycle", "roi", "time_h", "activity_MBq")


def write_csv(tmp_path, rows=ROWS, header=HEADER, name="tacs.csv"):
    path = tmp_path / name
    path.write_text("\n".join(",".join(r) for r in [header, *rows]) + "\n")
    return path


def raises(fn, *fragments):
    """Call `fn`, expect an InputError whose message contains every fragment."""
    with pytest.raises(InputError) as err:
        fn()
    msg = str(err.value)
    for frag in fragments:
        assert frag in msg, f"{frag!r} not in: {msg}"
    return msg


# --- the synthetic cohort ---------------------------------------------------------------------


def test_cohort_loads_and_is_consistent(cohort):
    patients, tacs = cohort
    assert sorted(patients) == [f"A{i:02d}" for i in range(1, 25)]
    assert sorted(tacs) == sorted(patients)
    for pid, data in tacs.items():
        assert data.patient_id == pid and data.n == 36
        check_against_patient(data, patients[pid])
    a01 = tacs["A01"]
    assert a01.rois == ("kidneys", "liver", "salivary_glands", "spleen", "tumour", "whole_body")
    assert len(np.unique(a01.time_h)) == 6
    for roi in a01.rois:
        t, a = a01.for_roi(roi)
        assert t.shape == a.shape == (6,) and np.all(np.diff(t) > 0)
    assert a01.time_h.dtype == np.float64 and a01.activity_MBq.dtype == np.float64
    t, a = a01.for_roi("kidneys")
    np.testing.assert_array_equal(t, [3.49, 24.38, 48.95, 95.23, 1031.99, 1102.68])
    assert a[0] == 244.999
    early = a01.until(100.0)  # the cycle-1 scans: 4 scans x 6 regions
    assert early.n == 24 and early.time_h.max() == 95.23 and set(early.cycle) == {1}
    assert a01.until(1.0).n == 0


def test_cohort_patient_A01(cohort):
    p = cohort[0]["A01"]
    assert isinstance(p, Patient) and p.manifest.sex == "male"
    cov = p.covariates
    assert cov["weight_kg"] == 84.1 and cov["height_cm"] == 166.0 and cov["hematocrit"] == 0.409
    assert cov["egfr_L_per_h"] == pytest.approx(5.574, rel=1e-14)  # 92.9 mL/min x 0.06
    assert cov["bsa_m2"] == pytest.approx(1.969249716, rel=1e-9)  # sqrt(166 * 84.1 / 3600)
    assert cov["ct_volume_L_kidneys"] == pytest.approx(0.3071, rel=1e-14)
    assert cov["ct_volume_L_tumour"] == pytest.approx(0.593, rel=1e-14)
    s = p.schedule
    assert s.nuclide == "Lu-177" and s.n_administrations == 2
    np.testing.assert_allclose(s.time_h, [0.0, 1008.0])
    np.testing.assert_allclose(s.activity_MBq, [6939.6, 7618.1], rtol=1e-12)
    # total ligand = hot + cold from the file
    np.testing.assert_allclose(s.hot_nmol + s.cold_nmol, [9.5477 + 43.9963, 10.4812 + 48.2981],
                               rtol=1e-12)  # fmt: skip


def test_covariates_conversions(tmp_path):
    p = load_patient(write_yaml(tmp_path, manifest(weight_kg=70.0, height_cm=175.0)))
    assert p.covariates["bsa_m2"] == pytest.approx(math.sqrt(175.0 * 70.0 / 3600.0), rel=1e-14)
    assert p.covariates["bsa_m2"] == pytest.approx(1.8446620, rel=1e-7)
    assert p.covariates["egfr_L_per_h"] == pytest.approx(5.4, rel=1e-14)  # 90 mL/min
    assert p.covariates["ct_volume_L_tumour"] == pytest.approx(0.25, rel=1e-14)
    assert set(p.covariates) == {"weight_kg", "height_cm", "hematocrit", "egfr_L_per_h",
                                 "bsa_m2", "ct_volume_L_kidneys", "ct_volume_L_tumour"}  # fmt: skip
    # optional covariates may be absent or null; no BSA without height
    m = manifest(height_cm=None, egfr_mL_min=None, ct_volumes_mL={})
    del m["sex"], m["hematocrit"]
    p = load_patient(write_yaml(tmp_path, m))
    assert p.covariates == {"weight_kg": 80.0}
    # carrier-free (no ligand amounts) and other nuclide spellings
    m = manifest(administrations=[{"time_h": 0, "nuclide": "177Lu", "activity_MBq": 7400}])
    s = load_patient(write_yaml(tmp_path, m)).schedule
    assert s.nuclide == "Lu-177" and float(s.cold_nmol[0]) == 0.0
    assert float(s.hot_nmol[0]) == pytest.approx(7400.0 / LU177_MBQ_PER_NMOL, rel=1e-12)


def test_virtual_patient_built_in_code():
    sched = twinjax.Schedule.single(7400.0, ligand_nmol=100.0)
    p = Patient.virtual({"egfr_L_per_h": np.float64(5.4), "weight_kg": 80}, sched)
    assert p.covariates == {"egfr_L_per_h": 5.4, "weight_kg": 80.0}
    assert type(p.covariates["weight_kg"]) is float
    assert p.patient_id == "virtual" and p.manifest is None and p.schedule is sched
    assert Patient.virtual(None, sched, patient_id="P7").covariates == {}
    with pytest.raises(InputError, match=r"covariates\['weight_kg'\] = nan; allowed: a finite"):
        Patient.virtual({"weight_kg": float("nan")}, sched)
    with pytest.raises(InputError, match=r"covariates\['sex'\] = 'male'"):
        Patient.virtual({"sex": "male"}, sched)
    with pytest.raises(InputError, match="schedule = float; allowed: a twinjax.Schedule"):
        Patient.virtual({}, 7400.0)


@pytest.mark.parametrize(("column", "factor"),
                         [("activity_kBq", 1e3), ("activity_GBq", 1e-3), ("activity_Bq", 1e6),
                          ("activity_mCi", 1 / 37.0)])  # fmt: skip
def test_activity_units_convert_to_MBq(tmp_path, column, factor):
    ref = read_tacs(write_csv(tmp_path))
    rows = [(*r[:4], repr(float(r[4]) * factor)) for r in ROWS]
    other = read_tacs(write_csv(tmp_path, rows, (*HEADER[:4], column), name="other.csv"))
    assert sorted(other) == sorted(ref) == ["P01", "P02"]
    for pid in ref:
        assert other[pid].roi == ref[pid].roi
        np.testing.assert_array_equal(other[pid].time_h, ref[pid].time_h)
        np.testing.assert_allclose(other[pid].activity_MBq, ref[pid].activity_MBq, rtol=1e-12)


def test_read_single_patient_sort_and_no_cycle(tmp_path):
    rows = [(r[0], *r[2:]) for r in ROWS]
    header = ("patient_id", "roi", "time_h", "activity_MBq")
    d = read_tacs(write_csv(tmp_path, rows[::-1], header), "P01", sort=True)
    assert isinstance(d, TimeActivityData) and d.cycle is None and d.n == 6
    assert np.all(np.diff(d.time_h) >= 0)
    np.testing.assert_array_equal(d.for_roi("whole_body")[1], [4500.0, 950.0, 1100.0])
    with pytest.raises(ValueError):
        d.time_h[0] = 1.0  # read-only


# --- bad input: each names the file/field/column and the value ---------------------------------


def test_bad_tacs_values(tmp_path):
    def bad(row_index, column, value, name):
        rows = [list(r) for r in ROWS]
        rows[row_index][HEADER.index(column)] = value
        return write_csv(tmp_path, [tuple(r) for r in rows], name=name)

    # NaN, empty, non-numeric, negative time; negative activity
    p = bad(2, "time_h", "NaN", "nan.csv")
    raises(lambda: read_tacs(p), "nan.csv", "line 4", "'P01'", "'kidneys'", "time_h = 'NaN'")
    p = bad(2, "time_h", "", "empty.csv")
    raises(lambda: read_tacs(p), "time_h = ''", "is empty")
    p = bad(2, "activity_MBq", "<LOD", "text.csv")
    raises(lambda: read_tacs(p), "activity_MBq = '<LOD'", "not a number")
    p = bad(3, "time_h", "-3.0", "negtime.csv")
    raises(lambda: read_tacs(p), "negtime.csv", "time_h = '-3.0'", "negative", ">= 0 h")
    p = bad(1, "activity_MBq", "-12.5", "negact.csv")
    raises(lambda: read_tacs(p), "'whole_body'", "activity_MBq = '-12.5'", ">= 0 MBq")
    # the same problem in another patient does not stop reading this one
    assert read_tacs(p, "P02").n == 1


def test_bad_tacs_structure(tmp_path):
    # duplicate (roi, time)
    p = write_csv(tmp_path, [*ROWS, ROWS[2]], name="dup.csv")
    raises(lambda: read_tacs(p), "dup.csv", "'kidneys'", "time_h = 24.0", "duplicates line 4")
    # times not sorted within a roi: reported, not sorted silently
    p = write_csv(tmp_path, [ROWS[2], ROWS[0], *ROWS[1:2], *ROWS[3:]], name="unsorted.csv")
    raises(lambda: read_tacs(p), "unsorted.csv", "time_h = 4.0", "24.0", "sort=True")
    assert read_tacs(p, sort=True)["P01"].for_roi("kidneys")[0][0] == 4.0
    # empty series: header only
    p = write_csv(tmp_path, [], name="empty.csv")
    raises(lambda: read_tacs(p), "empty.csv", "no data rows")
    # unknown patient: known ones listed
    p = write_csv(tmp_path)
    raises(lambda: read_tacs(p, "Z99"), "'Z99'", "known: P01, P02")
    # missing column
    header = ("patient_id", "cycle", "roi", "t_h", "activity_MBq")
    p = write_csv(tmp_path, header=header, name="missing.csv")
    raises(lambda: read_tacs(p), "missing.csv", "'t_h'", "time_h", "activity_MBq")
    rows = [(r[0], r[1], r[2], r[4]) for r in ROWS]
    p = write_csv(tmp_path, rows, ("patient_id", "cycle", "roi", "activity_MBq"), "notime.csv")
    raises(lambda: read_tacs(p), "missing column(s) time_h")
    # unknown activity unit column (and wrong case of MBq)
    p = write_csv(tmp_path, header=(*HEADER[:4], "activity_uCi"), name="uci.csv")
    raises(lambda: read_tacs(p), "'activity_uCi'", "activity_MBq, activity_kBq")
    p = write_csv(tmp_path, header=(*HEADER[:4], "activity_mbq"), name="mbq.csv")
    raises(lambda: read_tacs(p), "'activity_mbq'", "did you mean 'activity_MBq'")
    # a row with too few fields; a file that is not there
    p = write_csv(tmp_path, [*ROWS, ("P01", "1", "liver")], name="short.csv")
    raises(lambda: read_tacs(p), "line 9 has 3 fields")
    raises(lambda: read_tacs(tmp_path / "nope.csv"), "nope.csv", "does not exist")


def test_check_against_patient(tmp_path):
    patient = load_patient(write_yaml(tmp_path, manifest()))
    check_against_patient(read_tacs(write_csv(tmp_path), "P01"), patient)
    # activity above the administered 7400 MBq (+5 %)
    rows = [*ROWS[:1], ("P01", "1", "whole_body", "4.0", "7900.0"), *ROWS[2:]]
    data = read_tacs(write_csv(tmp_path, rows, name="high.csv"), "P01")
    raises(lambda: check_against_patient(data, patient),
           "high.csv", "'whole_body'", "activity_MBq = 7900.0", "7400", "7770")  # fmt: skip
    # after the second injection, up to both activities are allowed
    rows = [*ROWS[:5], ("P01", "2", "whole_body", "1032.0", "7900.0")]
    check_against_patient(read_tacs(write_csv(tmp_path, rows, name="ok2.csv"), "P01"), patient)
    # a scan before the first administration (here at 24 h on the study clock)
    late = manifest(administrations=[{"time_h": 24.0, "nuclide": "Lu-177",
                                      "activity_MBq": 7400.0}])  # fmt: skip
    p_late = load_patient(write_yaml(tmp_path, late))
    data = read_tacs(write_csv(tmp_path, ROWS[:2], name="early.csv"), "P01")
    raises(lambda: check_against_patient(data, p_late),
           "early.csv", "time_h = 4.0", "before the first administration", "24.0")  # fmt: skip
    # a row labelled with the wrong cycle; data of another patient
    rows = [*ROWS[:4], ("P01", "1", "kidneys", "1032.0", "160.0")]
    data = read_tacs(write_csv(tmp_path, rows, name="cycle.csv"), "P01")
    raises(lambda: check_against_patient(data, patient), "cycle = 1", "1008.0")
    other = read_tacs(write_csv(tmp_path), "P02")
    raises(lambda: check_against_patient(other, patient), "'P02'", "'P01'")


def admin(**changes):
    a = {"time_h": 0.0, "nuclide": "Lu-177", "activity_MBq": 7400.0, "ligand_hot_nmol": 10.18,
         "ligand_cold_nmol": 46.91}  # fmt: skip
    a.update(changes)
    return a


@pytest.mark.parametrize(
    ("changes", "fragments"),
    [
        ({"hematocrit": 45},
         ["hematocrit = 45.0; allowed: a fraction between 0.1 and 0.8 (not percent)"]),
        ({"weight_kg": 80000}, ["weight_kg = 80000.0", "grams", "80 kg"]),
        ({"height_cm": 1.8}, ["height_cm = 1.8", "metres", "180 cm"]),
        ({"egfr_mL_min": -5}, ["egfr_mL_min = -5.0", "between 1 and 300 mL/min"]),
        ({"sex": "M"}, ["sex", "'male'", "'M'"]),
        ({"weight_kgs": 80.0}, ["unknown field 'weight_kgs'", "allowed: patient_id", "weight_kg"]),
        ({"ct_volumes_mL": {"kidneys": -300.0}}, ["ct_volumes_mL.kidneys = -300.0", "above 0"]),
        ({"ct_volumes_mL": {"left kidney": 150.0}}, ["'left kidney'", "letters, digits"]),
        ({"administrations": [admin(nuclide="Lu-178")]}, ["nuclide", "'Lu-178'", "Lu-177"]),
        ({"administrations": [admin(ligand_hot_nmol=20.0)]},
         ["ligand_hot_nmol = 20.0", "activity_MBq = 7400.0", "10.181", "within 3 %"]),
        ({"administrations": [admin(activity_MBq=7.4)]},
         ["ligand_hot_nmol = 10.18", "activity_MBq = 7.4", "GBq"]),
        ({"administrations": [admin(activity_MBq=7.4e6, ligand_hot_nmol=None)]},
         ["activity_MBq = 7400000.0", "kBq"]),
        ({"administrations": [admin(time_h=-1.0)]}, ["time_h = -1.0", ">= 0 h"]),
        ({"administrations": [admin(dose_MBq=1.0)]}, ["administrations.0", "'dose_MBq'"]),
        ({"administrations": [admin(time_h=1008.0), admin()]},
         ["administrations[1].time_h = 0.0", "strictly increasing"]),
        ({"administrations": []}, ["administrations", "at least 1"]),
        ({"patient_id": 7}, ["patient_id = 7", "quote it"]),
        ({"weight_kg": True}, ["weight_kg", "boolean"]),
    ],
)  # fmt: skip
def test_bad_manifest(tmp_path, changes, fragments):
    path = write_yaml(tmp_path, manifest(**changes), name="bad_patient.yaml")
    raises(lambda: load_patient(path), "bad_patient.yaml", *fragments)


def test_bad_manifest_files(tmp_path):
    raises(lambda: load_patient(tmp_path / "nope.yaml"), "nope.yaml", "does not exist")
    p = tmp_path / "list.yaml"
    p.write_text("- 1\n- 2\n")
    raises(lambda: load_patient(p), "list.yaml", "mapping")
    # the synthetic data's 10.18 nmol per 7.4 GBq passes, 3 % off passes, 4 % does not
    hot = 7400.0 / LU177_MBQ_PER_NMOL
    for f in (1.0, 1.029, 0.971):
        m = manifest(administrations=[admin(ligand_hot_nmol=hot * f)])
        load_patient(write_yaml(tmp_path, m))
    m = manifest(administrations=[admin(ligand_hot_nmol=hot * 1.04)])
    raises(lambda: load_patient(write_yaml(tmp_path, m)), "ligand_hot_nmol", "+4.0 %")


def test_time_activity_data_direct():
    d = TimeActivityData("X", ("a", "b", "a"), [1.0, 1.0, 2.0], [3.0, 4.0, 5.0], [1, 1, 1])
    assert d.n == 3 and d.rois == ("a", "b") and d.cycle.dtype == np.int64
    raises(lambda: d.for_roi("c"), "'c'", "known: a, b")
    raises(lambda: TimeActivityData("X", ("a", "a"), [2.0, 1.0], [1.0, 1.0]), "row 1", "sort")
    raises(lambda: TimeActivityData("X", ("a",), [1.0], [np.nan]), "activity_MBq = nan")
    raises(lambda: TimeActivityData("X", ("a",), [1.0, 2.0], [1.0]), "same length")
