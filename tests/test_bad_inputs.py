"""The bad-input catalogue: every way of feeding twinjax bad input that a user is likely to meet,
in one table, across the Python API, the command line and input files.

Each case is ``(id, trigger, expected exception, substrings)``: `trigger(ctx)` must raise the
exception (for the command line: exit with code 2, seen here as `CliFailed`), and its message
must contain every substring: the field, the value and what is allowed. After each case the
output folder `ctx.out` must hold no file: bad input fails before anything is written.

Imaging files (DICOM/NIfTI geometry, masks, corrupt images) have their own catalogue in
``tests/imaging/``.
"""

from __future__ import annotations

import dataclasses
import io
import json
import math
import zipfile
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest
import yaml
from conftest import BINDING_TEMPLATE, LINEAR_TEMPLATE
from test_run_loop import _study
from typer.testing import CliRunner

import twinjax
from twinjax import InputError, SolverError
from twinjax._config import to_canonical
from twinjax.cli import app
from twinjax.decision import Constraint, Objective, optimise_activity, scenario_library
from twinjax.forecast import Region
from twinjax.imaging import Patient
from twinjax.imaging.io import TimeActivityData, check_against_patient, load_patient, read_tacs
from twinjax.imaging.observe import LognormalError
from twinjax.inference import PopulationPrior
from twinjax.inference.model import Observed
from twinjax.loop import load_twin_study
from twinjax.radiobiology import tissue
from twinjax.schedule import Administration, Schedule
from twinjax.twin import DigitalTwin

NAN = float("nan")


class CliFailed(Exception):
    """A command exited with a non-zero code; the message is its output."""

    def __init__(self, code: int, output: str):
        super().__init__(output)
        self.code = code


@dataclasses.dataclass
class Ctx:
    tmp: Path  # inputs written by the case
    out: Path  # the output folder: must stay free of files
    linear: Path  # tests/conftest.py's 3-compartment linear template

    def write(self, name: str, text: str) -> Path:
        p = self.tmp / name
        p.write_text(text)
        return p

    def yaml(self, name: str, doc) -> Path:
        return self.write(name, yaml.safe_dump(doc))


def _cli(ctx: Ctx, *args: str) -> None:
    res = CliRunner().invoke(app, [*args, "--out", str(ctx.out)])
    if res.exit_code != 0:
        raise CliFailed(res.exit_code, res.output)


# ------------------------------------------------------------------ building blocks
def _linear(ctx):
    return twinjax.load_template(ctx.linear)


def _twin(ctx) -> DigitalTwin:
    patient = Patient.virtual(
        {"egfr_L_per_h": 5.4}, Schedule.single(7400.0, ligand_nmol=57.0), patient_id="p1"
    )
    noise = LognormalError({"kidneys": 0.12, "tumour": 0.15}, calibration_cv=0.05)
    return DigitalTwin(_linear(ctx), patient, noise=noise)


def _obs(roi, t, a) -> Observed:
    return Observed(tuple(roi), np.asarray(t, float), np.asarray(a, float))


def _template_with(ctx, name: str, **parameter_k_bk) -> Path:
    doc = json.loads(json.dumps(LINEAR_TEMPLATE))
    doc["name"] = name
    doc["parameters"]["k_bk"] = {**doc["parameters"]["k_bk"], **parameter_k_bk}
    for k in [k for k, v in parameter_k_bk.items() if v is None]:
        del doc["parameters"]["k_bk"][k]
    return ctx.yaml(f"{name}.yaml", doc)


_CSV_HEADER = "patient_id,roi,time_h,activity_MBq\n"


def _csv(ctx, rows: str, header: str = _CSV_HEADER) -> Path:
    return ctx.write("tacs.csv", header + rows)


def _patient_yaml(ctx) -> Path:
    return ctx.yaml(
        "patient.yaml",
        {
            "patient_id": "p1",
            "weight_kg": 80.0,
            "administrations": [{"time_h": 0.0, "activity_MBq": 7400.0, "nuclide": "Lu-177"}],
        },
    )


def _measured_vs_administered(ctx, activity: str):
    data = read_tacs(_csv(ctx, f"p1,kidneys,4,{activity}\n"), "p1")
    check_against_patient(data, load_patient(_patient_yaml(ctx)))


def _twin_study(ctx, **changes) -> Path:
    doc = _study(ctx.linear)
    for dotted, value in changes.items():
        *path, last = dotted.split("__")
        node = doc
        for part in path:
            node = node[part]
        node[last] = value
    return ctx.yaml("twin_study.yaml", doc)


def _twin_file_of_schema(ctx, schema: str) -> Path:
    p = ctx.tmp / "other.twin"
    with zipfile.ZipFile(p, "w") as z:
        z.writestr("manifest.json", json.dumps({"schema": schema, "sha256": {}}))
        z.writestr("twin.json", "{}")
    return p


def _truncated_twin(ctx) -> Path:
    p = _twin(ctx).save(ctx.tmp / "whole.twin")
    raw = p.read_bytes()
    bad = ctx.tmp / "truncated.twin"
    bad.write_bytes(raw[: len(raw) // 2])
    return bad


def _stiff_max_steps(ctx):
    tpl = twinjax.load_template(ctx.yaml("binding.yaml", BINDING_TEMPLATE))
    twinjax.simulate(
        tpl.model, tpl.params, Schedule.single(7400.0, ligand_nmol=57.0),
        jnp.asarray([1.0, 24.0, 168.0]), max_steps=2,
    )  # fmt: skip


def _optimise(ctx, bounds):
    tpl = _linear(ctx)
    regions = {"kidneys": Region(tissue("kidney"))}
    optimise_activity(
        None, tpl, Schedule.single(7400.0, ligand_nmol=57.0), regions,
        Objective("kidneys", "bed_Gy"), [Constraint("kidneys", "bed_Gy", 40.0)],
        next_time_h=1008.0, bounds_MBq=bounds,
    )  # fmt: skip


def _scenarios_yaml(ctx) -> Path:
    return ctx.yaml(
        "scenarios.yaml",
        {
            "schema": "twinjax.scenarios/1",
            "regions": {"kidneys": {"tissue": "kidney"}},
            "scenarios": [{"name": "a", "activity_MBq": 7400.0}],
        },
    )


def _sim_study(ctx, **schedule) -> Path:
    return ctx.yaml(
        "study.yaml",
        {
            "schema": "twinjax.study/1",
            "name": "x",
            "template": str(ctx.linear),
            "schedule": schedule,
            "times": [1.0, 2.0],
        },
    )


# ------------------------------------------------------------------ the catalogue
CASES = [
    # --- Administration / Schedule (h, MBq, nmol)
    ("admin-negative-time", lambda c: Administration(-1.0, 7400.0), InputError,
     ["time_h = -1.0", "allowed: a finite time >= 0 h"]),
    ("admin-nan-time", lambda c: Administration(NAN, 7400.0), InputError,
     ["time_h = nan", "allowed: a finite time >= 0 h"]),
    ("admin-nan-activity", lambda c: Administration(0.0, NAN), InputError,
     ["activity_MBq = nan", "allowed: a finite activity > 0 MBq"]),
    ("admin-negative-activity", lambda c: Administration(0.0, -5.0), InputError,
     ["activity_MBq = -5.0", "allowed: a finite activity > 0 MBq"]),
    ("admin-ligand-below-labelled", lambda c: Administration(0.0, 7400.0, ligand_nmol=1.0),
     InputError, ["ligand_nmol = 1.0", "allowed: ligand_nmol >= activity_MBq /"]),
    ("schedule-unsorted",
     lambda c: Schedule.from_administrations([Administration(100.0, 1.0), Administration(0.0, 1.0)]),
     InputError, ["administrations[1].time_h = 0.0", "allowed: strictly increasing times"]),
    ("schedule-duplicate-time",
     lambda c: Schedule.from_administrations([Administration(5.0, 1.0), Administration(5.0, 2.0)]),
     InputError, ["administrations[1].time_h = 5.0", "allowed: strictly increasing times"]),
    ("schedule-empty", lambda c: Schedule.from_administrations([]), InputError,
     ["no administrations", "allowed: one or more"]),
    ("schedule-cycles-zero", lambda c: Schedule.cycles(7400.0, 0, 1008.0), InputError,
     ["n_cycles = 0", "allowed: an integer >= 1"]),
    # --- nuclides
    ("nuclide-unknown-did-you-mean", lambda c: Administration(0.0, 7400.0, "Lu-178"), InputError,
     ["nuclide 'Lu-178' is not known", "closest known: Lu-177"]),
    ("nuclide-not-a-name", lambda c: twinjax.nuclide(177), InputError,
     ["nuclide", "got 177", "a name such as 'Lu-177'"]),
    # --- TimeActivityData / Observed (h, MBq)
    ("tacdata-unsorted",
     lambda c: TimeActivityData("p1", ("kidneys", "kidneys"), [24.0, 4.0], [2.0, 1.0]),
     InputError, ["time_h = 4.0 h comes after time_h = 24.0 h", "allowed: times increasing"]),
    ("tacdata-duplicate",
     lambda c: TimeActivityData("p1", ("kidneys", "kidneys"), [4.0, 4.0], [2.0, 1.0]),
     InputError, ["time_h = 4.0 h duplicates row 0", "allowed: one row per roi and time"]),
    ("tacdata-negative-time", lambda c: TimeActivityData("p1", ("kidneys",), [-1.0], [2.0]),
     InputError, ["time_h = -1.0", "allowed: a finite value >= 0 h"]),
    ("tacdata-nan-activity", lambda c: TimeActivityData("p1", ("kidneys",), [1.0], [NAN]),
     InputError, ["activity_MBq = nan", "allowed: a finite value >= 0 MBq"]),
    ("observed-empty", lambda c: _obs([], [], []), InputError,
     ["observed data are empty", "allowed: at least one measurement"]),
    # --- read_tacs CSV files
    ("csv-unsorted", lambda c: read_tacs(_csv(c, "p1,kidneys,24,5\np1,kidneys,4,6\n")),
     InputError, ["line 3", "time_h = 4.0 h comes after", "sort them or pass sort=True"]),
    ("csv-duplicate", lambda c: read_tacs(_csv(c, "p1,kidneys,4,5\np1,kidneys,4,6\n")),
     InputError, ["time_h = 4.0 h duplicates line 2", "allowed: one row per roi and time"]),
    ("csv-negative-time", lambda c: read_tacs(_csv(c, "p1,kidneys,-4,5\n")), InputError,
     ["time_h = '-4' is negative", "allowed: a finite time >= 0 h"]),
    ("csv-nan-activity", lambda c: read_tacs(_csv(c, "p1,kidneys,4,nan\n")), InputError,
     ["activity_MBq = 'nan' is NaN", "allowed: a finite activity >= 0 MBq"]),
    ("csv-wrong-unit-column",
     lambda c: read_tacs(_csv(c, "p1,kidneys,4,5\n", "patient_id,roi,time_h,activity_mGy\n")),
     InputError, ["'activity_mGy' (not a known activity unit)", "activity_MBq, activity_kBq"]),
    ("csv-empty-series", lambda c: read_tacs(_csv(c, "")), InputError,
     ["no data rows (an empty series)", "allowed: one or more rows"]),
    ("csv-missing-file", lambda c: read_tacs(c.tmp / "absent.csv"), InputError,
     ["absent.csv", "does not exist"]),
    # activities measured above what was given, e.g. kBq values in the MBq column
    ("csv-kbq-sized-values", lambda c: _measured_vs_administered(c, "6500000"), InputError,
     ["activity_MBq = 6500000.0 exceeds the 7400 MBq administered", "allowed: at most 7770 MBq"]),
    ("csv-above-administered", lambda c: _measured_vs_administered(c, "8000"), InputError,
     ["activity_MBq = 8000.0 exceeds the 7400 MBq administered", "allowed: at most 7770 MBq"]),
    # --- DigitalTwin.assimilate
    ("twin-assimilate-nan-time",
     lambda c: _twin(c).assimilate(_obs(["kidneys"], [NAN], [10.0])), InputError,
     ["time_h[0] = nan", "allowed: finite times >= 0 h"]),
    ("twin-assimilate-negative-activity",
     lambda c: _twin(c).assimilate(_obs(["kidneys"], [4.0], [-3.0])), InputError,
     ["activity_MBq[0] = -3.0", "allowed: finite activities >= 0 MBq"]),
    ("twin-assimilate-out-of-order", "out_of_order", InputError,
     ["a scan at 4 h is not after the last assimilated scan (96 h)",
      "assimilation moves forward in time"]),
    ("twin-assimilate-unknown-region",
     lambda c: _twin(c).assimilate(_obs(["liver"], [4.0], [3.0])), InputError,
     ["regions ['liver'] have no measurement CV", "allowed: ['kidneys', 'tumour']"]),
    ("twin-administer-backwards", lambda c: _twin(c).administer(-5.0, 7400.0), InputError,
     ["administer: time_h = -5.0", "allowed: after the last administration (0 h)"]),
    # --- template YAML: priors and units
    ("template-negative-cv", lambda c: twinjax.load_template(_template_with(c, "neg", cv=-0.2)),
     InputError, ["parameters.k_bk.cv", "cv = -0.2", "allowed: 0 < cv <= 3"]),
    ("template-unknown-distribution",
     lambda c: twinjax.load_template(_template_with(c, "dist", distribution="gamma")),
     InputError, ["unknown field 'distribution'", "allowed: value, unit, cv, stat, source"]),
    ("template-bounds-not-supported",
     lambda c: twinjax.load_template(_template_with(c, "bnd", lower=2.0, upper=1.0)),
     InputError, ["unknown field 'lower'", "allowed: value, unit, cv, stat, source"]),
    ("template-bad-stat", lambda c: twinjax.load_template(_template_with(c, "st", stat="mode")),
     InputError, ["parameters.k_bk.stat", "'median' or 'mean'", "got 'mode'"]),
    ("template-unknown-unit",
     lambda c: twinjax.load_template(_template_with(c, "un", unit="mL/day")), InputError,
     ["parameters.k_bk.unit", "unit 'mL/day' is not known", "allowed:", "mL/min"]),
    ("template-nan-value",
     lambda c: twinjax.load_template(_template_with(c, "nanv", value=NAN)), InputError,
     ["parameters.k_bk.value", "value = nan is not finite", "allowed: a finite number"]),
    ("template-negative-value",
     lambda c: twinjax.load_template(_template_with(c, "negv", value=-0.05)), InputError,
     ["parameters.k_bk.value = -0.05 1/h", "allowed: a finite value > 0"]),
    ("prior-cv-override-negative",
     lambda c: PopulationPrior.from_template(_linear(c), {"egfr_L_per_h": 5.0}, cv={"k_bk": -1.0}),
     InputError, ["cv['k_bk'] = -1.0", "allowed: 0 < cv <= 3"]),
    ("unit-conversion-unknown", lambda c: to_canonical(1.0, "furlong", "parameters.V"),
     InputError, ["parameters.V: unit 'furlong' is not known", "allowed:", "mL"]),
    # --- decisions: scenario activities and optimiser bounds (MBq)
    ("scenario-activity-above-max",
     lambda c: scenario_library(activities_MBq=[40000.0], n_cycles=(2,)), InputError,
     ["activities_MBq = 40000.0 MBq for Lu-177", "allowed: > 0 and <= 30000 MBq"]),
    ("scenario-activity-negative",
     lambda c: scenario_library(activities_MBq=[-7400.0], n_cycles=(2,)), InputError,
     ["activities_MBq = -7400.0 MBq for Lu-177", "allowed: > 0 and <= 30000 MBq"]),
    ("optimise-bounds-reversed", lambda c: _optimise(c, (9000.0, 1000.0)), InputError,
     ["bounds_MBq = (9000.0, 1000.0)", "allowed: 0 < lower < upper"]),
    ("optimise-bounds-above-max", lambda c: _optimise(c, (1000.0, 50000.0)), InputError,
     ["bounds_MBq[1] = 50000.0 MBq", "allowed: > 0 and <= 30000 MBq"]),
    # --- twin files
    ("twin-file-other-schema",
     lambda c: DigitalTwin.load(_twin_file_of_schema(c, "twinjax.twin/0")), InputError,
     ["twin file schema 'twinjax.twin/0'", "this twinjax reads 'twinjax.twin/1'"]),
    ("twin-file-truncated", lambda c: DigitalTwin.load(_truncated_twin(c)), InputError,
     ["truncated.twin", "not a readable twinjax twin file (truncated or corrupt"]),
    ("twin-file-missing", lambda c: DigitalTwin.load(c.tmp / "absent.twin"), InputError,
     ["twin file", "absent.twin", "does not exist"]),
    # --- solver
    ("solver-max-steps", _stiff_max_steps, SolverError,
     ["the ODE solve of model", "max_steps=2", "raise max_steps"]),
    # --- study YAML (twinjax run)
    ("twin-study-unknown-key", lambda c: load_twin_study(_twin_study(c, colour="blue")),
     InputError, ["unknown field 'colour'", "allowed: schema, name, description, template"]),
    ("twin-study-wrong-type",
     lambda c: load_twin_study(_twin_study(c, treatment__n_cycles="three")), InputError,
     ["treatment.n_cycles", "valid integer", "got 'three'"]),
    ("twin-study-bounds-reversed",
     lambda c: load_twin_study(_twin_study(c, optimise__bounds_MBq=[9000.0, 1000.0])),
     InputError, ["optimise.bounds_MBq = [9000.0, 1000.0]", "allowed: 0 < low < high"]),
    ("twin-study-scan-times-unsorted",
     lambda c: load_twin_study(_twin_study(c, imaging__scan_times_h=[24.0, 4.0])), InputError,
     ["imaging.scan_times_h = [24.0, 4.0]", "allowed: increasing times > 0 h"]),
    # --- command line (exit code 2, message on the console)
    ("cli-run-missing-study", lambda c: _cli(c, "run", str(c.tmp / "absent.yaml")), CliFailed,
     ["absent.yaml", "does not exist"]),
    ("cli-run-unknown-key", lambda c: _cli(c, "run", str(_twin_study(c, colour="blue"))),
     CliFailed, ["unknown field 'colour'", "allowed: schema, name"]),
    ("cli-simulate-wrong-type",
     lambda c: _cli(c, "simulate", str(_sim_study(c, cycles={"n_cycles": "two",
                                                              "interval_h": 1.0,
                                                              "activity_MBq": 1.0}))),
     CliFailed, ["schedule.cycles.n_cycles", "valid integer", "got 'two'"]),
    ("cli-calibrate-missing-patient",
     lambda c: _cli(c, "calibrate", str(c.tmp / "absent.yaml"), "--data", str(c.tmp / "x.csv"),
                    "--template", str(c.linear)),
     CliFailed, ["absent.yaml", "does not exist"]),
    ("cli-forecast-missing-posterior",
     lambda c: _cli(c, "forecast", str(c.tmp / "absent.nc"), str(_scenarios_yaml(c))),
     CliFailed, ["posterior file", "absent.nc", "does not exist"]),
    ("cli-out-not-writable", "out_not_writable", CliFailed,
     ["--out =", "the output folder cannot be created or written", "allowed: a folder you can"]),
    ("cli-nuclide-unknown", lambda c: _nuclide_cli("Lu-178"), CliFailed,
     ["nuclide 'Lu-178' is not known", "Lu-177"]),
]  # fmt: skip


def _nuclide_cli(name: str) -> None:
    res = CliRunner().invoke(app, ["nuclide", name])
    if res.exit_code != 0:
        raise CliFailed(res.exit_code, res.output)


def _out_of_order(ctx):
    twin = _twin(ctx)
    # The twin's last assimilated scan (what `assimilate` records after a fit) is at 96 h.
    twin.observed = _obs(["kidneys", "tumour"], [96.0, 96.0], [100.0, 20.0])
    twin.assimilate(_obs(["kidneys"], [4.0], [300.0]))


def _out_not_writable(ctx):
    blocker = ctx.tmp / "a-file"
    blocker.write_text("not a folder")
    ctx.out = blocker / "out"  # a folder below a file can never be created (even by root)
    _cli(ctx, "run", str(_twin_study(ctx)))


_NAMED = {"out_of_order": _out_of_order, "out_not_writable": _out_not_writable}


def _squash(s: str) -> str:
    """Without whitespace: the console wraps long messages at arbitrary spaces."""
    return "".join(s.split())


def test_the_catalogue_is_large_and_distinct():
    ids = [c[0] for c in CASES]
    assert len(ids) >= 40 and len(set(ids)) == len(ids)


#: Cases whose message or exception is fixed outside this engineer's files (see the reason).
_PENDING: dict[str, str] = {}


def _params():
    for case_id, *rest in CASES:
        marks = ()
        if case_id in _PENDING:
            marks = pytest.mark.xfail(strict=True, reason=_PENDING[case_id])
        yield pytest.param(*rest, id=case_id, marks=marks)


@pytest.mark.parametrize(("trigger", "exc", "substrings"), list(_params()))
def test_bad_input_is_refused(trigger, exc, substrings, linear_template_path, tmp_path):
    ctx = Ctx(tmp=tmp_path / "in", out=tmp_path / "out", linear=linear_template_path)
    ctx.tmp.mkdir()
    fn = _NAMED[trigger] if isinstance(trigger, str) else trigger
    with pytest.raises(exc) as info:
        fn(ctx)
    message = str(info.value)
    if exc is CliFailed:
        assert info.value.code == 2, message
    for s in substrings:
        assert _squash(s) in _squash(message), f"{s!r} not in {message!r}"
    # Nothing half-written: the output folder (created by the CLI's early check, or not at
    # all) holds no file, temporary or final.
    left = [p for p in ctx.out.rglob("*") if p.is_file()] if ctx.out.is_dir() else []
    assert left == [], left


def test_no_nan_passes_as_a_time_anywhere():
    """NaN compares false with everything: each time check must reject it explicitly."""
    for make in (
        lambda: Administration(NAN, 1.0),
        lambda: Schedule.cycles(1.0, 2, NAN),
        lambda: TimeActivityData("p", ("k",), [NAN], [1.0]),
        lambda: _obs(["k"], [NAN], [1.0]),
    ):
        with pytest.raises(InputError, match="nan"):
            make()
    assert math.isnan(NAN)


def test_cli_messages_need_no_traceback(linear_template_path, tmp_path):
    """A refused command prints one message, not a Python traceback."""
    ctx = Ctx(tmp=tmp_path, out=tmp_path / "out", linear=linear_template_path)
    with pytest.raises(CliFailed) as info:
        _cli(ctx, "run", str(_twin_study(ctx, colour="blue")))
    assert "Traceback" not in str(info.value)
    assert io.StringIO(str(info.value)).read().strip().startswith("error:")
