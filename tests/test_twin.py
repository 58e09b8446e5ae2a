"""DigitalTwin: the loop's state, persistence (saved-then-loaded twins forecast and update
identically; corrupt, truncated, foreign-schema and changed-template files are refused; an
interrupted save leaves the previous file intact) and the order of events."""

import json
import zipfile

import jax
import numpy as np
import pytest
import yaml

import twinjax
from twinjax import InputError
from twinjax import radiobiology as rb
from twinjax.forecast import Region, Scenario
from twinjax.imaging import Patient
from twinjax.inference import Observed, PopulationPrior
from twinjax.twin import DigitalTwin

NOISE = twinjax.LognormalError({"kidneys": 0.12, "tumour": 0.18}, calibration_cv=0.05)
SCANS_1 = np.array([4.0, 24.0, 96.0])
SCANS_2 = np.array([1012.0, 1032.0, 1104.0])
REGIONS = {
    "kidneys": Region(rb.tissue("kidney")),
    "tumour": Region(rb.tissue("prostate_cancer"), mass_kg=0.03, kind="tumour"),
}
FIT = {"method": "laplace", "num_samples": 40, "seed": 3}


def _scans(tpl, params, schedule, times, seed):
    traj = twinjax.simulate(tpl.model, params, schedule, times)
    rows = []
    for i, roi in enumerate(("kidneys", "tumour")):
        y = NOISE.sample(jax.random.key(seed + i), roi, traj.activity(roi))
        rows += [(roi, float(t), float(v)) for t, v in zip(times, y, strict=True)]
    rows.sort(key=lambda r: r[1])
    return Observed(tuple(r[0] for r in rows), np.array([r[1] for r in rows]),
                    np.array([r[2] for r in rows]))  # fmt: skip


@pytest.fixture(scope="module")
def world(linear_template_path):
    tpl = twinjax.load_template(linear_template_path)
    patient = Patient.virtual(
        {"egfr_L_per_h": 5.4}, twinjax.Schedule.single(7400.0, ligand_nmol=57.0), patient_id="t1"
    )
    prior = PopulationPrior.from_template(tpl, patient.covariates)
    truth = tpl.derive({**prior.base, **prior.theta(np.array([0.4, -0.3, 0.5, -0.2]))})
    two = twinjax.Schedule.cycles(7400.0, 2, 1008.0, ligand_nmol=57.0)
    return tpl, patient, _scans(tpl, truth, two, SCANS_1, 0), _scans(tpl, truth, two, SCANS_2, 10)


@pytest.fixture(scope="module")
def twin(world):
    tpl, patient, scans1, _ = world
    tw = DigitalTwin(tpl, patient, noise=NOISE, regions=REGIONS, fit_options=FIT)
    tw.assimilate(scans1)
    return tw


def _course(activity):
    return Scenario(f"{activity:g}", twinjax.Schedule.cycles(
        [7400.0, activity], 2, 1008.0, ligand_nmol=57.0))  # fmt: skip


def test_saved_then_loaded_twin_forecasts_identically(twin, world, tmp_path):
    path = twin.save(tmp_path / "a.twin")
    back = DigitalTwin.load(path, template=world[0].path)
    scenarios = [_course(5000.0), _course(9000.0)]
    fa = twin.forecast(scenarios, max_draws=20)
    fb = back.forecast(scenarios, max_draws=20)
    for s in fa.values:
        for r in fa.values[s]:
            for q, v in fa.values[s][r].items():
                np.testing.assert_array_equal(v, fb.values[s][r][q], err_msg=f"{s}/{r}/{q}")
    assert back.history[:-1] == twin.history[:-1] or back.history == twin.history
    assert [h["action"] for h in back.history] == ["create", "assimilate"]
    np.testing.assert_array_equal(back.observed.time_h, twin.observed.time_h)
    # The twin's dose really depends on the posterior: 9 GBq in cycle 2 gives more kidney dose.
    assert np.all(fa.values["9000"]["kidneys"]["dose_Gy"] > fa.values["5000"]["kidneys"]["dose_Gy"])


def test_update_after_load_equals_update_without_save(world, tmp_path):
    tpl, patient, scans1, scans2 = world
    a = DigitalTwin(tpl, patient, noise=NOISE, regions=REGIONS, fit_options=FIT)
    a.assimilate(scans1)
    a.save(tmp_path / "b.twin")
    b = DigitalTwin.load(tmp_path / "b.twin", template=tpl.path)
    for tw in (a, b):
        tw.administer(1008.0, 9000.0)
        tw.assimilate(scans2)
    for n in a.posterior.names:
        np.testing.assert_array_equal(a.posterior.draws(n), b.posterior.draws(n))
    assert [h["action"] for h in b.history] == ["create", "assimilate", "administer", "assimilate"]
    # All six scan times are in the posterior's data, and the schedule has both cycles.
    assert sorted(set(b.posterior.observed.time_h)) == [*SCANS_1, *SCANS_2]
    np.testing.assert_array_equal(np.asarray(b.patient.schedule.activity_MBq), [7400.0, 9000.0])


def test_corrupt_truncated_and_foreign_files_are_refused(twin, world, tmp_path):
    good = twin.save(tmp_path / "c.twin").read_bytes()
    truncated = tmp_path / "truncated.twin"
    truncated.write_bytes(good[: len(good) // 2])
    with pytest.raises(InputError, match="truncated or corrupt|corrupt"):
        DigitalTwin.load(truncated, template=world[0].path)
    # Flip a byte of a member (stored uncompressed so the flip lands in the data): refused by
    # the zip CRC or the manifest's SHA-256.
    flipped = tmp_path / "flipped.twin"
    with zipfile.ZipFile(tmp_path / "c.twin") as z, zipfile.ZipFile(flipped, "w") as w:
        for info in z.infolist():
            data = z.read(info)
            if info.filename == "twin.json":
                data = data.replace(b'"t1"', b'"t2"')
            w.writestr(info.filename, data)
    with pytest.raises(InputError, match="SHA-256"):
        DigitalTwin.load(flipped, template=world[0].path)
    raw = bytearray(good)
    raw[len(raw) // 3] ^= 0xFF
    bitflip = tmp_path / "bitflip.twin"
    bitflip.write_bytes(bytes(raw))
    with pytest.raises(InputError):
        DigitalTwin.load(bitflip, template=world[0].path)
    # Another schema: the message names both.
    other = tmp_path / "other.twin"
    with zipfile.ZipFile(tmp_path / "c.twin") as z, zipfile.ZipFile(other, "w") as w:
        for info in z.infolist():
            data = z.read(info)
            if info.filename == "manifest.json":
                m = json.loads(data)
                m["schema"] = "twinjax.twin/0"
                data = json.dumps(m).encode()
            w.writestr(info.filename, data)
    with pytest.raises(InputError, match=r"twinjax\.twin/0.*twinjax\.twin/1"):
        DigitalTwin.load(other, template=world[0].path)
    with pytest.raises(InputError, match="does not exist"):
        DigitalTwin.load(tmp_path / "missing.twin")


def test_changed_template_is_refused_naming_both(twin, world, tmp_path):
    path = twin.save(tmp_path / "d.twin")
    spec = yaml.safe_load(world[0].path.read_text())
    spec["parameters"]["k_tb"]["value"] = 0.02  # a new version of the same template
    changed = tmp_path / "test_linear.yaml"
    changed.write_text(yaml.safe_dump(spec))
    with pytest.raises(InputError, match=r"saved with template 'test_linear' \(SHA-256 [0-9a-f]{12}"
                       r"\.\.\.\), but the template here is 'test_linear' \(SHA-256"):  # fmt: skip
        DigitalTwin.load(path, template=changed)
    with pytest.raises(InputError, match="not shipped"):
        DigitalTwin.load(path)


def test_interrupted_save_leaves_previous_file_intact(twin, world, tmp_path, monkeypatch):
    path = twin.save(tmp_path / "e.twin")
    before = path.read_bytes()

    def boom(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(zipfile.ZipFile, "writestr", boom)
    with pytest.raises(OSError, match="disk full"):
        twin.save(path)
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["e.twin"]  # no temporary left
    DigitalTwin.load(path, template=world[0].path)


def test_events_must_move_forward(twin, world):
    _, patient, scans1, _ = world
    with pytest.raises(InputError, match="not after the last assimilated scan"):
        twin.assimilate(scans1)
    with pytest.raises(InputError, match="after the last administration"):
        twin.administer(0.0, 7400.0)
    with pytest.raises(InputError, match="does not start with the 1 administration"):
        twin.forecast([Scenario("other", twinjax.Schedule.single(3000.0, ligand_nmol=57.0))])
    bad = Observed(("liver",), np.array([2000.0]), np.array([5.0]))
    with pytest.raises(InputError, match="no measurement CV"):
        twin.assimilate(bad)
    with pytest.raises(InputError, match="time_h"):
        twin.assimilate(Observed(("kidneys",), np.array([np.nan]), np.array([5.0])))
    with pytest.raises(InputError, match="fit_options"):
        DigitalTwin(world[0], patient, noise=NOISE, fit_options={"warmup": 3})
    with pytest.raises(InputError, match="value"):
        twin.record_outcome("psa_ng_per_mL", float("nan"), time_h=500.0)
