"""Reproducibility of the main job: `twinjax run` on the same study (same seeds, inputs and
versions, CPU) in two separate processes writes the same result files, timestamps aside.

The two runs are separate processes with different ``PYTHONHASHSEED``s, as two invocations of
`twinjax run` are: an iteration over a set of names would differ between them. They run at the
same time to keep the test short. Every file of the first folder is compared with its namesake
in the second:

- JSON: equal after removing the time fields (`_TIME_KEYS`);
- netCDF (every group): data variables exactly equal (NaN where NaN), attributes equal but for
  the time fields and the checksum (which covers the creation time);
- the twin file (zip): the same members; ``twin.json`` as JSON, ``arrays.npz`` array by array,
  ``posterior.nc`` as netCDF;
- PNG: byte for byte (matplotlib's Agg PNGs carry no date), else the decoded pixels;
- report.md: equal but for the wall-time sentence.
"""

import io
import json
import os
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import yaml
from test_run_loop import _study  # the small study of the main-job test

#: Fields that record when or how long, not what.
_TIME_KEYS = {"time_utc", "created_at", "wall_time_s", "twinjax_sha256"}


@pytest.fixture(scope="module")
def two_runs(linear_template_path, tmp_path_factory):
    folder = tmp_path_factory.mktemp("repro")
    study = folder / "study.yaml"
    study.write_text(yaml.safe_dump(_study(linear_template_path)))
    outs = [folder / "out1", folder / "out2"]
    procs = []
    for seed, out in zip(("1", "2"), outs, strict=True):
        env = {**os.environ, "PYTHONHASHSEED": seed, "MPLBACKEND": "Agg"}
        cmd = [sys.executable, "-m", "twinjax.cli", "run", str(study), "--out", str(out)]
        procs.append(
            subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        )
    for p in procs:
        log, _ = p.communicate(timeout=600)
        assert p.returncode == 0, log.decode()[-3000:]
    return outs


def _drop_times(obj):
    if isinstance(obj, dict):
        return {k: _drop_times(v) for k, v in obj.items() if k not in _TIME_KEYS}
    if isinstance(obj, list):
        return [_drop_times(v) for v in obj]
    return obj


def _same_json(a: bytes, b: bytes, what: str) -> None:
    assert _drop_times(json.loads(a)) == _drop_times(json.loads(b)), what


def _groups(path: Path) -> list[str]:
    import h5py

    with h5py.File(path, "r") as f:
        return sorted(k for k in f if isinstance(f[k], h5py.Group))


def _same_netcdf(a: Path, b: Path, what: str, groups: list[str] | None = None) -> None:
    import xarray as xr

    if groups is None:
        groups = _groups(a)
        assert groups == _groups(b), what
    assert groups, f"{what}: no groups"
    for g in groups:
        with xr.open_dataset(a, group=g) as x, xr.open_dataset(b, group=g) as y:
            assert sorted(x.variables) == sorted(y.variables), f"{what}/{g}"
            for name in x.variables:
                u, v = np.asarray(x[name].values), np.asarray(y[name].values)
                assert u.dtype == v.dtype and u.shape == v.shape, f"{what}/{g}/{name}"
                if u.dtype.kind == "f":
                    assert np.array_equal(u, v, equal_nan=True), f"{what}/{g}/{name}"
                else:
                    assert np.array_equal(u, v), f"{what}/{g}/{name}"
            ax = {k: v for k, v in x.attrs.items() if k not in _TIME_KEYS}
            ay = {k: v for k, v in y.attrs.items() if k not in _TIME_KEYS}
            assert ax == ay, f"{what}/{g} attributes"


def _same_twin(a: Path, b: Path, tmp: Path) -> None:
    with zipfile.ZipFile(a) as za, zipfile.ZipFile(b) as zb:
        assert sorted(za.namelist()) == sorted(zb.namelist())
        _same_json(za.read("twin.json"), zb.read("twin.json"), "twin.twin/twin.json")
        ma, mb = json.loads(za.read("manifest.json")), json.loads(zb.read("manifest.json"))
        assert ma["schema"] == mb["schema"]
        with np.load(io.BytesIO(za.read("arrays.npz"))) as x:
            with np.load(io.BytesIO(zb.read("arrays.npz"))) as y:
                assert sorted(x.files) == sorted(y.files)
                for k in x.files:
                    assert np.array_equal(x[k], y[k], equal_nan=True), f"twin arrays {k}"
        (tmp / "a.nc").write_bytes(za.read("posterior.nc"))
        (tmp / "b.nc").write_bytes(zb.read("posterior.nc"))
    _same_netcdf(tmp / "a.nc", tmp / "b.nc", "twin.twin/posterior.nc")


def _same_png(a: bytes, b: bytes, what: str) -> None:
    if a == b:
        return
    import matplotlib.image as mpimg

    assert np.array_equal(mpimg.imread(io.BytesIO(a)), mpimg.imread(io.BytesIO(b))), what


def test_two_runs_write_the_same_results(two_runs, tmp_path):
    out1, out2 = two_runs
    names = sorted(p.name for p in out1.iterdir())
    assert names == sorted(p.name for p in out2.iterdir())
    assert {"summary.json", "twin.twin", "posterior_after_cycle2.nc", "report.md"} <= set(names)
    assert not [n for n in names if n.endswith(".tmp")]
    for name in names:
        a, b = out1 / name, out2 / name
        if name.endswith(".json"):
            _same_json(a.read_bytes(), b.read_bytes(), name)
        elif name.endswith(".nc"):
            _same_netcdf(a, b, name)
        elif name.endswith(".twin"):
            _same_twin(a, b, tmp_path)
        elif name.endswith(".png"):
            _same_png(a.read_bytes(), b.read_bytes(), name)
        elif name.endswith(".md"):
            strip = re.compile(r"Wall time \d+ s\. ")
            assert strip.sub("", a.read_text()) == strip.sub("", b.read_text()), name
        else:
            assert a.read_bytes() == b.read_bytes(), name


def test_the_comparison_sees_a_difference(two_runs, tmp_path):
    """The checks above are not vacuous: a recommended activity changed by 1 MBq, one
    posterior draw changed in its last bit, are seen."""
    out1, _ = two_runs
    doc = json.loads((out1 / "summary.json").read_text())
    doc["decisions"][0]["recommended"]["activity_MBq"] += 1.0
    with pytest.raises(AssertionError):
        _same_json((out1 / "summary.json").read_bytes(), json.dumps(doc).encode(), "summary")
    import xarray as xr

    with xr.open_dataset(out1 / "posterior_after_cycle1.nc", group="posterior") as ds:
        ds = ds.load()
    name = next(iter(ds.data_vars))
    values = ds[name].values.copy()
    values.flat[0] = np.nextafter(values.flat[0], np.inf)
    changed = ds.assign({name: (ds[name].dims, values)})
    changed.to_netcdf(tmp_path / "changed.nc", group="posterior", engine="h5netcdf")
    with pytest.raises(AssertionError):
        _same_netcdf(
            out1 / "posterior_after_cycle1.nc", tmp_path / "changed.nc", "posterior", ["posterior"]
        )
