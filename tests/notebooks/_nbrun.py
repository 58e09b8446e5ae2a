"""Shared by the notebook tests: the notebooks in `notebooks/`, executed in small mode (``TWINJAX_NOTEBOOK_SMALL=1``) in a
fresh ``python3`` kernel (nbclient), in memory: no cell may fail, and the numbers each notebook
leaves behind are checked (recovery of the synthetic truth, diagnostics, Sobol sums, sharded ==
unsharded, dose and survival maps). The committed .ipynb files must be the build of their .py
sources (`notebooks/_build.py`) and carry no outputs.

One test file per notebook, so that parallel workers (`--dist loadfile`) run them side by
side."""

import importlib.util
import json
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

NOTEBOOKS = Path(__file__).resolve().parents[2] / "notebooks"
MARKER = "__TWINJAX_TEST_RESULT__"


def builder():
    spec = importlib.util.spec_from_file_location("_notebook_build", NOTEBOOKS / "_build.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def execute(name: str, result_expr: str, monkeypatch, **env) -> dict:
    """Run notebook `name` in small mode with one extra cell printing ``json(result_expr)``;
    return that value."""
    monkeypatch.setenv("TWINJAX_NOTEBOOK_SMALL", "1")
    monkeypatch.delenv("MPLBACKEND", raising=False)  # the kernel's own inline backend
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    nb.cells.append(nbformat.v4.new_code_cell(
        f"import json as _json\nprint({MARKER!r} + _json.dumps({result_expr}, default=float))"
    ))  # fmt: skip
    client = nbclient.NotebookClient(
        nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(NOTEBOOKS)}}
    )
    client.execute()  # raises CellExecutionError naming the failing cell
    for out in nb.cells[-1].outputs:
        text = out.get("text", "")
        if MARKER in text:
            return json.loads(text.split(MARKER, 1)[1])
    raise AssertionError(f"{name}: no result printed; outputs {nb.cells[-1].outputs}")
