"""Privacy of the whole pipeline (issue 7 §4): a synthetic DICOM PET study whose headers carry a
planted identity (PatientName ``DOE^JANE``, PatientID ``MRN-8675309``, a birth date) and real
dates and clock times runs through the command line, `twinjax images` -> `twinjax calibrate`
-> `twinjax forecast`, once successfully and then with a failure forced at each stage.

For every run, none of the planted name, ID, birth date, study and scan dates (YYYYMMDD and
ISO forms), the administration's clock time or the DICOM Study/Series/SOP Instance UIDs may
appear in the command's output or exception, in a log record (a handler on the root logger at
DEBUG, as pytest's caplog installs, but spanning the module-scoped pipeline), in a warning, in
the text drawn into a figure, in the bytes of any file under the study folder (the DICOM input
folder excepted), or in any file or folder name there. The objects the imaging stage returns
hold hours since administration and no date or identity.

Binary files are scanned structurally where chance matters: a 3-byte word such as ``DOE``
occurs by chance in about one megabyte of compressed pixels, so PNGs are scanned in their text
chunks and netCDF (HDF5) files in their group, variable and attribute names and text values;
their raw bytes are scanned for the tokens of 6 characters and more (a chance match: below
1e-8 per megabyte). Digit tokens count only in digit runs that are neither a decimal fraction
nor part of a hexadecimal word, so that a float such as 0.2019110412 in a JSON file or a
SHA-256 digest in a log is not a leak while ``20191104`` or ``scan_20191104`` is.
"""

import twinjax  # noqa: I001  (first: enables float64)

import contextlib
import dataclasses
import datetime as dt
import gzip
import importlib.util
import json
import logging
import math
import os
import re
import shutil
import struct
import sys
import traceback
import warnings
import zlib
from pathlib import Path

import h5py
import numpy as np
import pydicom
import pytest
import yaml
from matplotlib.figure import Figure
from matplotlib.text import Text
from typer.testing import CliRunner

from twinjax.cli import app
from twinjax.imaging.io import read_tacs
from twinjax.imaging.volumes import read_images
from twinjax.imaging_cli import extract_tacs


def _synthetic_dicom():
    """The shared writer of synthetic studies (tests/imaging/_synthetic_dicom.py), imported by
    path: tests/imaging is on sys.path only for the tests in that folder."""
    name = "_synthetic_dicom"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(
            name, Path(__file__).parent / "imaging" / f"{name}.py"
        )
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


syn = _synthetic_dicom()
runner = CliRunner()

LU = twinjax.nuclide("Lu-177")
# The study: Lu-177 administered 2019-11-04 08:47:12 (7.4 GBq), PET scans starting 1, 4, 24
# and 96 h later (the last two on later days), 20 min frames decay-corrected to the series
# time (START) 5 min before each acquisition.
ADMIN = dt.datetime(2019, 11, 4, 8, 47, 12)
STARTS_H = (1.0, 4.0, 24.0, 96.0)
FRAME_H = 20.0 / 60.0
SERIES_BEFORE_H = 5.0 / 60.0
ADMINISTERED_MBQ = 7400.0

_SCAN_DAYS = sorted({(ADMIN + dt.timedelta(hours=h)).date() for h in (0.0, *STARTS_H)})
_BIRTH = dt.datetime.strptime(syn.BIRTH_DATE, "%Y%m%d").date()
#: Text tokens that must never appear (any length): the identity and ISO dates and times.
WORDS = (
    syn.PATIENT_NAME,  # DOE^JANE
    syn.PATIENT_ID,  # MRN-8675309
    "DOE",
    "JANE",
    "Doe",
    "Jane",
    _BIRTH.isoformat(),
    *(d.isoformat() for d in _SCAN_DAYS),
    ADMIN.strftime("%H:%M:%S"),
)
#: Digit tokens, found in digit runs that are not decimal fractions: the ID's number, DICOM
#: DA dates (birth, study, scans) and the administration's DICOM TM clock time.
DIGITS = (
    syn.PATIENT_ID.split("-")[1],
    syn.BIRTH_DATE,
    *(d.strftime("%Y%m%d") for d in _SCAN_DAYS),
    ADMIN.strftime("%H%M%S"),
)
#: The DICOM inputs' Study/Series/SOP Instance UIDs (random per study, filled by the fixture):
#: they would link an output back to the archive's record of the patient.
UIDS: list[str] = []
_SHORT = 6  # tokens shorter than this are matched in binary files only structurally
_RUNS = re.compile(r"(?<![\d.])\d+")
# hexadecimal words with a letter (SHA-256 digests, JAX cache keys, memory addresses): thousands
# of them in JAX's debug log would hold a given 6 to 8 digits by chance
_HEX = re.compile(r"(?:0x)?(?=[0-9a-fA-F]*[a-fA-F])[0-9a-fA-F]{8,}")


# ---------------------------------------------------------------------------------------------
# Finding planted values
# ---------------------------------------------------------------------------------------------


def _found(text: str, *, short: bool = True) -> set[str]:
    hits = {w for w in (*WORDS, *UIDS) if (short or len(w) >= _SHORT) and w in text}
    runs = _RUNS.findall(_HEX.sub(" ", text))
    hits |= {d for d in DIGITS if (short or len(d) >= _SHORT) and any(d in r for r in runs)}
    return hits


def text_leaks(text: str) -> set[str]:
    """Planted values in a text, also once its whitespace is removed: rich wraps console output
    at 80 columns, which could split a value across lines."""
    return _found(text) | _found("".join(text.split()))


def _png_texts(data: bytes) -> list[str]:
    """The text chunks (tEXt, zTXt, iTXt) of a PNG, decompressed."""
    out, pos = [], 8
    while pos + 8 <= len(data):
        n, kind = struct.unpack(">I4s", data[pos : pos + 8])
        body = data[pos + 8 : pos + 8 + n]
        pos += 12 + n
        key, _, rest = body.partition(b"\0")
        if kind == b"tEXt":
            out.append(f"{key.decode('latin-1')}: {rest.decode('latin-1')}")
        elif kind == b"zTXt":
            out.append(f"{key.decode('latin-1')}: {zlib.decompress(rest[1:]).decode('latin-1')}")
        elif kind == b"iTXt":
            compressed, rest = rest[0], rest[2:]
            lang, _, rest = rest.partition(b"\0")
            tkey, _, text = rest.partition(b"\0")
            text = zlib.decompress(text) if compressed else text
            out.append(" ".join(x.decode("utf-8") for x in (key, lang, tkey, text)))
    return out


def _as_text(value) -> str:
    a = np.asarray(value)
    if a.dtype.kind in "SO":
        return " ".join(x.decode("utf-8", "replace") if isinstance(x, bytes) else str(x)
                        for x in a.ravel().tolist())  # fmt: skip
    return str(a.tolist()) if a.dtype.kind in "Uiubf" else ""


def _hdf5_texts(path: Path) -> list[str]:
    """Every group, variable and attribute name of an HDF5 (netCDF-4) file, its attribute
    values (text and numbers) and its text variables."""
    out: list[str] = []

    def visit(name, obj):
        out.append(name)
        for key, value in obj.attrs.items():
            out.extend((key, _as_text(value)))
        if isinstance(obj, h5py.Dataset) and obj.dtype.kind in "SOU":
            out.append(_as_text(obj[()]))

    with h5py.File(path, "r") as f:
        visit("/", f)
        f.visititems(visit)
    return out


def file_leaks(path: Path) -> tuple[set[str], str]:
    """Planted values in a file and how it was scanned (text, png, hdf5 or binary)."""
    data = path.read_bytes()
    if data[:2] == b"\x1f\x8b":
        data = gzip.decompress(data)
    try:
        return _found(data.decode("utf-8")), "text"
    except UnicodeDecodeError:
        pass
    hits = _found(data.decode("latin-1"), short=False)
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        texts, kind = _png_texts(data), "png"
    elif data[:8] == b"\x89HDF\r\n\x1a\n":
        texts, kind = _hdf5_texts(path), "hdf5"
    else:
        texts, kind = [], "binary"
    for t in texts:
        hits |= _found(t)
    return hits, kind


def tree_leaks(root: Path, skip: Path) -> tuple[dict[str, set[str]], dict[str, str]]:
    """Planted values in the names and contents of every file and folder under `root` except
    the folder `skip` (the DICOM inputs, which hold the identity by design)."""
    leaks: dict[str, set[str]] = {}
    kinds: dict[str, str] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        here = Path(dirpath)
        dirnames[:] = [d for d in dirnames if here / d != skip]
        for name in dirnames + filenames:
            rel = str((here / name).relative_to(root))
            if hits := text_leaks(rel):
                leaks[f"name {rel}"] = hits
        for name in filenames:
            p = here / name
            hits, kinds[str(p.relative_to(root))] = file_leaks(p)
            if hits:
                leaks[f"content {p.relative_to(root)}"] = hits
    return leaks, kinds


def object_leaks(obj, where: str, out: dict[str, set[str]] | None = None) -> dict[str, set[str]]:
    """Planted values in every field of a returned object (dataclasses, containers, text
    arrays) and any date or time value, which the objects must not hold at all."""
    out = {} if out is None else out
    if isinstance(obj, dt.date | dt.time | dt.datetime | dt.timedelta | np.datetime64):
        out[where] = {f"a {type(obj).__name__}"}
    elif dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        for f in dataclasses.fields(obj):
            object_leaks(getattr(obj, f.name), f"{where}.{f.name}", out)
        extra = set(vars(obj)) - {f.name for f in dataclasses.fields(obj)}
        for name in sorted(extra):
            object_leaks(getattr(obj, name), f"{where}.{name}", out)
    elif isinstance(obj, dict):
        for k, v in obj.items():
            object_leaks(k, f"{where} key", out)
            object_leaks(v, f"{where}[{k!r}]", out)
    elif isinstance(obj, list | tuple):
        for i, v in enumerate(obj):
            object_leaks(v, f"{where}[{i}]", out)
    elif isinstance(obj, np.ndarray):
        if obj.dtype.kind in "OSUMm":
            object_leaks(obj.tolist(), where, out)
    elif obj is not None and (hits := text_leaks(str(obj))):
        out[where] = hits
    return out


# ---------------------------------------------------------------------------------------------
# Running the command line with everything it says captured
# ---------------------------------------------------------------------------------------------


@dataclasses.dataclass
class Run:
    """One command: its exit code and every text it produced, as (channel, text)."""

    name: str
    exit_code: int | None
    output: str
    texts: list[tuple[str, str]]

    def leaks(self) -> dict[str, set[str]]:
        out: dict[str, set[str]] = {}
        for channel, text in self.texts:
            if hits := text_leaks(text):
                out.setdefault(channel, set()).update(hits)
        return out

    def channel(self, name: str) -> list[str]:
        return [t for c, t in self.texts if c == name]


class _Records(logging.Handler):
    def __init__(self):
        super().__init__(logging.DEBUG)
        self.texts: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        try:
            text = f"{record.name} {record.levelname} {record.getMessage()}"
        except Exception as err:  # a malformed record is still scanned, raw
            text = f"{record.name} {record.msg!r} {record.args!r} ({err})"
        if record.exc_info:
            text += "\n" + "".join(traceback.format_exception(*record.exc_info))
        self.texts.append(text)


@contextlib.contextmanager
def captured():
    """Capture log records (root logger, DEBUG), warnings (all, always) and the text of every
    figure saved; yields the list of (channel, text) filled on exit."""
    texts: list[tuple[str, str]] = []
    handler = _Records()
    root = logging.getLogger()
    level = root.level
    original = Figure.savefig

    def savefig(fig, *args, **kwargs):
        texts.extend(("figure text", t.get_text()) for t in fig.findobj(Text))
        return original(fig, *args, **kwargs)

    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    try:
        with pytest.MonkeyPatch.context() as mp, warnings.catch_warnings(record=True) as rec:
            mp.setattr(Figure, "savefig", savefig)
            warnings.simplefilter("always")
            yield texts
    finally:
        root.removeHandler(handler)
        root.setLevel(level)
        texts.extend(("log", t) for t in handler.texts)
        texts.extend(("warning", f"{w.category.__name__}: {w.message} ({w.filename})")
                     for w in rec)  # fmt: skip


def invoke(name: str, *args) -> Run:
    with captured() as texts:
        res = runner.invoke(app, [str(a) for a in args])
    texts.append(("output", res.output))
    if res.exc_info is not None:
        texts.append(("exception", "".join(traceback.format_exception(*res.exc_info))))
    return Run(name, res.exit_code, res.output, texts)


def says(run: Run, message: str) -> bool:
    """Whether the output holds `message`, whatever rich's line wrapping did to both."""
    return "".join(message.split()) in "".join(run.output.split())


def assert_clean(run: Run) -> None:
    leaks = run.leaks()
    assert not leaks, f"{run.name}: planted values leaked: {leaks}"


# ---------------------------------------------------------------------------------------------
# The study and the successful pipeline (shared by the module)
# ---------------------------------------------------------------------------------------------


def _header(acq: dt.datetime) -> dict:
    series = acq - dt.timedelta(hours=SERIES_BEFORE_H)
    return {
        "Units": "BQML",
        "DecayCorrection": "START",
        "StudyDate": ADMIN.strftime("%Y%m%d"),
        "StudyTime": "084000",
        "AcquisitionDate": acq.strftime("%Y%m%d"),
        "AcquisitionTime": acq.strftime("%H%M%S"),
        "SeriesDate": series.strftime("%Y%m%d"),
        "SeriesTime": series.strftime("%H%M%S"),
        "ActualFrameDuration": round(FRAME_H * 3.6e6),
    }


RP = {
    "RadiopharmaceuticalStartDateTime": ADMIN.strftime("%Y%m%d%H%M%S"),
    "RadionuclideTotalDose": ADMINISTERED_MBQ * 1e6,  # Bq
    "RadionuclideHalfLife": LU.half_life_h * 3600.0,
    "CodeMeaning": "^177^Lutetium",
}


def _write_dicom(folder: Path) -> list[str]:
    """Four PET series whose regions hold the synthetic bi-exponential activities at mid-frame
    (images decay-corrected to the series time, as a scanner writes them)."""
    lam = math.log(2.0) / LU.half_life_h
    names = []
    for n, start in enumerate(STARTS_H):
        mid = start + FRAME_H / 2
        factor = math.exp(lam * (mid - (start - SERIES_BEFORE_H)))
        img = syn.concentration_MBq_per_mL(mid, factor) * 1e6  # Bq/mL
        syn.write_pet_series(folder / f"tp{n}", img, syn.AFFINE,
                             header=_header(ADMIN + dt.timedelta(hours=start)), rp=RP)  # fmt: skip
        names.append(f"tp{n}")
    return names


def _labels(path: Path, affine=syn.AFFINE, slices: int = syn.SHAPE[2]) -> Path:
    """A NIfTI label map (1 kidneys, 2 tumour) of the first `slices` slices on `affine`."""
    labels = np.zeros(syn.SHAPE)
    for value, m in enumerate(syn.region_masks().values(), start=1):
        labels[m] = value
    path.parent.mkdir(parents=True, exist_ok=True)
    return syn.write_nifti(path, labels[:, :, :slices], affine)


def _masks(folder: Path, affine=syn.AFFINE) -> dict[str, str]:
    """Binary NIfTI masks: the two regions and the whole body (every voxel), which the small
    linear template observes."""
    folder.mkdir(parents=True, exist_ok=True)
    masks = {**syn.region_masks(), "whole_body": np.ones(syn.SHAPE, bool)}
    for region, m in masks.items():
        syn.write_nifti(folder / f"{region}.nii.gz", m.astype(float), affine)
    return {region: f"{folder.name}/{region}.nii.gz" for region in masks}


def _study(path: Path, images: list[str], masks: dict[str, str] | None = None,
           labels: str | None = None) -> Path:  # fmt: skip
    doc = {
        "schema": "twinjax.imaging_study/1",
        "patient_id": "P01",
        "nuclide": "Lu-177",
        "timepoints": [{"image": i} for i in images],
    }
    if masks is not None:
        doc["masks"] = masks
    if labels is not None:
        doc["labels"] = {"path": labels, "regions": {1: "kidneys", 2: "tumour"}}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(doc))
    return path


def whole_body_MBq(t_h: float) -> float:
    """The synthetic whole body: both regions and the uniform background of the other voxels."""
    rest = np.prod(syn.SHAPE) - sum(int(m.sum()) for m in syn.region_masks().values())
    return sum(syn.truth_MBq(r, t_h) for r in syn.BIEXP) + (
        syn.BACKGROUND_MBQ_PER_ML * rest * syn.VOXEL_ML
    )


SCENARIOS = {
    "schema": "twinjax.scenarios/1",
    "regions": {
        "kidneys": {"tissue": "kidney", "mass_g": 300.0},
    },
    "scenarios": [
        {"name": "standard", "activity_MBq": 7400.0, "ligand_nmol": 57.0},
    ],
}


@dataclasses.dataclass
class Pipeline:
    root: Path
    dicom: Path  # the DICOM inputs, not scanned
    images: list[str]  # series folders, relative to root
    study: Path
    masks: dict[str, str]  # region -> mask file, relative to root
    template: Path
    tacs: object  # ImagingTACs returned by extract_tacs
    volumes: list
    runs: dict[str, Run]


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory, linear_template_path) -> Pipeline:
    root = tmp_path_factory.mktemp("privacy")
    dicom = root / "dicom_inputs"
    images = [f"dicom_inputs/{n}" for n in _write_dicom(dicom)]
    UIDS[:] = sorted({str(ds.get(k)) for f in dicom.rglob("*.dcm")
                      for ds in [pydicom.dcmread(f, stop_before_pixels=True)]
                      for k in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID")})  # fmt: skip
    assert len(UIDS) == 2 * len(images) + syn.SHAPE[2] * len(images)
    masks = _masks(root / "inputs")
    study = _study(root / "study.yaml", images, masks)
    out = root / "out"
    out.mkdir()
    runs = {"images": invoke("images", "images", study, "--out", out / "tacs.csv")}
    with captured() as texts:  # the API the command runs, for the returned objects
        tacs = extract_tacs(study)
        volumes = read_images([root / i for i in images])
    runs["api"] = Run("extract_tacs", 0, "", texts)
    manifest = {
        "patient_id": "P01",
        "sex": "female",
        "weight_kg": 64.0,
        "height_cm": 165.0,
        "egfr_mL_min": 85.0,
        "administrations": [
            {"time_h": 0.0, "nuclide": tacs.nuclide, "activity_MBq": tacs.administered_MBq}
        ],
    }
    (root / "inputs" / "P01.yaml").write_text(yaml.safe_dump(manifest))
    (root / "inputs" / "scenarios.yaml").write_text(yaml.safe_dump(SCENARIOS))
    runs["calibrate"] = invoke(
        "calibrate", "calibrate", root / "inputs" / "P01.yaml", "--data", out / "tacs.csv",
        "--template", linear_template_path, "--method", "laplace", "--samples", "20",
        "--seed", "3", "--out", out / "calibration",
    )  # fmt: skip
    runs["forecast"] = invoke(
        "forecast", "forecast", out / "calibration" / "posterior.nc",
        root / "inputs" / "scenarios.yaml", "--template", linear_template_path,
        "--draws", "10", "--out", out / "forecast",
    )  # fmt: skip
    return Pipeline(root, dicom, images, study, masks, linear_template_path, tacs, volumes, runs)


def assert_tree_clean(p: Pipeline) -> dict[str, str]:
    leaks, kinds = tree_leaks(p.root, p.dicom)
    assert not leaks, f"planted values in the output tree: {leaks}"
    return kinds


# ---------------------------------------------------------------------------------------------
# The successful run
# ---------------------------------------------------------------------------------------------


def test_pipeline_succeeds_with_hours_since_administration(pipeline):
    runs = pipeline.runs
    for name in ("images", "calibrate", "forecast"):
        assert runs[name].exit_code == 0, runs[name].output
    d = pipeline.tacs.data
    assert d.patient_id == "P01" and d.roi == ("kidneys", "tumour", "whole_body") * 4
    # hours since administration at mid-frame, from the headers' dates and times
    np.testing.assert_allclose(d.time_h, np.repeat(np.add(STARTS_H, FRAME_H / 2), 3), atol=1e-9)
    truth = [whole_body_MBq(t) if r == "whole_body" else syn.truth_MBq(r, t)
             for r, t in zip(d.roi, d.time_h, strict=True)]  # fmt: skip
    np.testing.assert_allclose(d.activity_MBq, truth, rtol=1e-9)
    assert pipeline.tacs.administered_MBq == pytest.approx(ADMINISTERED_MBQ, rel=1e-12)
    for v, start in zip(pipeline.volumes, STARTS_H, strict=True):
        assert v.scan.start_h == pytest.approx(start, abs=1e-9)
        assert v.scan.reference_h == pytest.approx(start - SERIES_BEFORE_H, abs=1e-9)
    back = read_tacs(pipeline.root / "out" / "tacs.csv", patient_id="P01")
    np.testing.assert_array_equal(back.time_h, d.time_h)
    np.testing.assert_array_equal(back.activity_MBq, d.activity_MBq)
    summary = json.loads((pipeline.root / "out" / "calibration" / "summary.json").read_text())
    assert summary["patient"] == "P01"
    doc = json.loads((pipeline.root / "out" / "forecast" / "forecast.json").read_text())
    assert set(doc["summary"]) == {"standard"}


def test_successful_runs_leak_nothing(pipeline):
    for run in pipeline.runs.values():
        assert_clean(run)
    # the capture saw what it must scan: figure text (calibration and forecast plots)
    assert any("P01" in t for t in pipeline.runs["calibrate"].channel("figure text"))
    assert pipeline.runs["forecast"].channel("figure text")


def test_returned_objects_hold_hours_and_no_identity(pipeline):
    objs = {"tacs": pipeline.tacs, "tacs.data": pipeline.tacs.data}
    objs |= {f"volume[{i}]": v for i, v in enumerate(pipeline.volumes)}
    for where, obj in objs.items():
        assert not text_leaks(repr(obj)), (where, text_leaks(repr(obj)))
        assert not object_leaks(obj, where), object_leaks(obj, where)
    # only numbers, the given patient id, region names, nuclide and paths: no header text
    d = pipeline.tacs.data
    assert d.time_h.dtype == np.float64 and d.activity_MBq.dtype == np.float64
    assert d.source == str(pipeline.study)


def test_output_tree_leaks_nothing(pipeline):
    kinds = assert_tree_clean(pipeline)
    out = {k: v for k, v in kinds.items() if k.startswith("out")}
    assert out["out/tacs.csv"] == out["out/calibration/summary.json"] == "text"
    assert out["out/calibration/posterior.nc"] == "hdf5"
    assert out["out/calibration/fit.png"] == out["out/forecast/forecast.png"] == "png"
    names = _hdf5_texts(pipeline.root / "out" / "calibration" / "posterior.nc")
    assert any("posterior" in n for n in names)  # the walk reaches the groups
    assert any("Software" in t for t in _png_texts((pipeline.root / "out" / "forecast" /
                                                    "forecast.png").read_bytes()))  # fmt: skip


def test_the_scanners_find_planted_values(tmp_path):
    """Positive controls: each scanner finds each kind of planted value where it is looked
    for, and ignores a date's digits inside a decimal fraction."""
    assert text_leaks("patient DOE^JANE") >= {"DOE^JANE", "DOE", "JANE"}
    assert text_leaks("scan_20191104.csv") == {"20191104"}
    assert text_leaks("MRN-\n  8675309 wrapped") == {"MRN-8675309", "8675309"}
    assert not text_leaks('{"x": 0.2019110484712, "y": 1.8675309e-3, "does": 1}')
    assert not text_leaks("sha256 c81b3dd20191104b9374f0fb, object at 0x7f8675309a0")
    png = tmp_path / "a.png"
    sig = b"\x89PNG\r\n\x1a\n"
    body = b"Title\0Jane's fit"
    png.write_bytes(sig + struct.pack(">I4s", len(body), b"tEXt") + body + b"\0" * 4)
    assert file_leaks(png) == ({"Jane"}, "png")
    nc = tmp_path / "a.nc"
    with h5py.File(nc, "w") as f:
        f.create_group("posterior").attrs["acquired"] = np.int64(20191105)
        f.create_dataset("names", data=np.array([b"Doe"]))
    assert file_leaks(nc) == ({"20191105", "Doe"}, "hdf5")
    assert object_leaks({"t": dt.date(2019, 11, 4)}, "x") == {"x['t']": {"a date"}}
    with captured() as texts:
        logging.getLogger("twinjax.privacy_control").debug("patient %s", syn.PATIENT_NAME)
        warnings.warn(f"born {syn.BIRTH_DATE}", UserWarning, stacklevel=1)
    leaks = Run("control", 0, "", texts).leaks()
    assert leaks == {"log": {"DOE^JANE", "DOE", "JANE"}, "warning": {syn.BIRTH_DATE}}


# ---------------------------------------------------------------------------------------------
# Failures forced at each stage
# ---------------------------------------------------------------------------------------------


def _corrupt(path: Path, how: str) -> None:
    data = path.read_bytes()
    if how == "garbage":
        path.write_bytes(b"not a DICOM file at all" * 10)
    elif how == "truncated_pixels":
        path.write_bytes(data[:-100])
    elif how == "truncated_in_name":  # cut inside PatientName: the parser sees half a value
        i = data.index(syn.PATIENT_NAME.encode())
        path.write_bytes(data[: i + 5])
    elif how == "malformed_date":  # an ISO date in a DA element: pydicom keeps the text
        ds = pydicom.dcmread(path)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # pydicom's own warning on writing, not twinjax's
            ds.AcquisitionDate = (ADMIN + dt.timedelta(hours=STARTS_H[1])).date().isoformat()
            ds.save_as(path, enforce_file_format=True)


@pytest.mark.parametrize(
    "how, message",
    [
        ("garbage", "not a readable DICOM file"),
        ("truncated_pixels", "PixelData cannot be decoded"),
        ("truncated_in_name", "slice002.dcm"),
        ("malformed_date", "AcquisitionDate is not a valid DICOM date"),
    ],
)
def test_images_fails_on_a_corrupt_dicom_file(pipeline, how, message):
    bad = pipeline.dicom / f"corrupt_{how}"
    shutil.copytree(pipeline.dicom / "tp1", bad)
    _corrupt(bad / "slice002.dcm", how)
    images = [*pipeline.images[:1], f"dicom_inputs/corrupt_{how}", *pipeline.images[2:]]
    folder = pipeline.root / "fail1" / how
    study = _study(folder / "study.yaml", [f"../../{i}" for i in images],
                   {r: f"../../{m}" for r, m in pipeline.masks.items()})  # fmt: skip
    run = invoke(f"images, {how} DICOM", "images", study, "--out", folder / "tacs.csv")
    assert run.exit_code == 2, run.output
    assert says(run, message), run.output
    assert not (folder / "tacs.csv").exists()
    assert_clean(run)
    assert_tree_clean(pipeline)


def test_images_fails_on_a_mask_of_another_geometry(pipeline):
    folder = pipeline.root / "fail2"
    shifted = syn.AFFINE.copy()
    shifted[:3, 3] += (2.0, 0.0, 0.0)  # half a voxel off in x
    images = [f"../{i}" for i in pipeline.images]
    studies = {
        "shifted label map": _study(folder / "study_labels_shifted.yaml", images,
                                    labels=_labels(folder / "labels_shifted.nii.gz",
                                                   shifted).name),
        "label map missing a slice": _study(folder / "study_labels_short.yaml", images,
                                            labels=_labels(folder / "labels_short.nii.gz",
                                                           slices=5).name),
        "shifted masks": _study(folder / "study_masks_shifted.yaml", images,
                                _masks(folder / "masks_shifted", shifted)),
    }  # fmt: skip
    for what, study in studies.items():
        run = invoke(f"images, {what}", "images", study, "--out", folder / "tacs.csv")
        assert run.exit_code == 2, run.output
        assert says(run, "geometry mismatch"), run.output
        assert_clean(run)
    # an output folder that does not exist
    run = invoke("images, absent --out", "images", pipeline.study, "--out",
                 folder / "absent" / "tacs.csv")  # fmt: skip
    assert run.exit_code == 2 and says(run, "does not exist"), run.output
    assert_clean(run)
    assert not (folder / "tacs.csv").exists()
    assert_tree_clean(pipeline)


def test_calibrate_fails_on_nan_and_negative_activities(pipeline):
    folder = pipeline.root / "fail3"
    folder.mkdir()
    lines = (pipeline.root / "out" / "tacs.csv").read_text().splitlines()
    for i, value in ((2, "nan"), (5, "-3.5")):
        cells = lines[i].split(",")
        lines[i] = ",".join([*cells[:3], value])
    (folder / "tacs.csv").write_text("\n".join(lines) + "\n")
    run = invoke(
        "calibrate, bad CSV", "calibrate", pipeline.root / "inputs" / "P01.yaml", "--data",
        folder / "tacs.csv", "--template", pipeline.template, "--method", "laplace",
        "--out", folder / "calibration",
    )  # fmt: skip
    assert run.exit_code == 2, run.output
    assert says(run, "activity_MBq = 'nan'") and says(run, "activity_MBq = '-3.5' is negative")
    assert not any((folder / "calibration").iterdir())
    assert_clean(run)
    assert_tree_clean(pipeline)


def test_calibrate_fails_on_an_unwritable_out(pipeline):
    folder = pipeline.root / "fail4"
    folder.mkdir()
    if os.geteuid() == 0:  # root writes through chmod: block with a file where a folder goes
        (folder / "blocker").write_text("a file, not a folder\n")
        out = folder / "blocker" / "calibration"
    else:
        (folder / "readonly").mkdir()
        (folder / "readonly").chmod(0o500)
        out = folder / "readonly" / "calibration"
    try:
        run = invoke(
            "calibrate, unwritable --out", "calibrate", pipeline.root / "inputs" / "P01.yaml",
            "--data", pipeline.root / "out" / "tacs.csv", "--template", pipeline.template,
            "--method", "laplace", "--out", out,
        )  # fmt: skip
    finally:
        if (folder / "readonly").exists():
            (folder / "readonly").chmod(0o700)
    assert run.exit_code == 2, run.output
    assert says(run, "cannot be created or written"), run.output
    assert_clean(run)
    assert_tree_clean(pipeline)


def test_forecast_fails_on_an_unknown_nuclide(pipeline):
    folder = pipeline.root / "fail5"
    folder.mkdir()
    doc = json.loads(json.dumps(SCENARIOS))
    doc["scenarios"].append({"name": "other", "activity_MBq": 7400.0, "nuclide": "Xx-999"})
    (folder / "scenarios.yaml").write_text(yaml.safe_dump(doc))
    run = invoke(
        "forecast, unknown nuclide", "forecast",
        pipeline.root / "out" / "calibration" / "posterior.nc", folder / "scenarios.yaml",
        "--template", pipeline.template, "--draws", "20", "--out", folder / "forecast",
    )  # fmt: skip
    assert run.exit_code == 2, run.output
    assert says(run, "Xx-999"), run.output
    assert not any((folder / "forecast").iterdir())
    assert_clean(run)
    assert_tree_clean(pipeline)
