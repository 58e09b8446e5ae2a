"""Build the notebooks (.ipynb, without outputs) from their "percent" sources (.py).

Each ``NN_name.py`` in this folder is a Python script whose cells start with ``# %%`` (code) or
``# %% [markdown]`` (markdown, every line commented with ``# ``). The script runs as it is
(``python notebooks/01_bayesian_calibration.py``) and builds into ``NN_name.ipynb``:

    python notebooks/_build.py           # write every .ipynb
    python notebooks/_build.py --check   # exit 1 if an .ipynb differs from its source

The .ipynb files are committed without outputs (the test suite executes them in memory); edit
the .py sources and rebuild. Cell ids are derived from the cell's position, so a rebuild of an
unchanged source gives the same file.
"""

from __future__ import annotations

import sys
from pathlib import Path

import nbformat

HERE = Path(__file__).resolve().parent
KERNEL = {"display_name": "Python 3", "language": "python", "name": "python3"}


def sources() -> list[Path]:
    """The notebook sources: ``NN_*.py`` in this folder, in order."""
    return sorted(p for p in HERE.glob("[0-9][0-9]_*.py"))


def _cells(text: str) -> list[tuple[str, str]]:
    """``(kind, source)`` of each cell of a percent script."""
    cells: list[tuple[str, list[str]]] = []
    for line in text.splitlines():
        if line.startswith("# %%"):
            kind = "markdown" if "[markdown]" in line else "code"
            cells.append((kind, []))
        elif cells:
            cells[-1][1].append(line)
        elif line.strip():
            raise ValueError(f"text before the first '# %%' cell marker: {line!r}")
    out = []
    for kind, lines in cells:
        while lines and not lines[-1].strip():
            lines.pop()
        while lines and not lines[0].strip():
            lines.pop(0)
        if kind == "markdown":
            bad = [ln for ln in lines if ln and not ln.startswith("#")]
            if bad:
                raise ValueError(f"markdown line not commented: {bad[0]!r}")
            lines = [ln[2:] if ln.startswith("# ") else ln[1:] for ln in lines]
        out.append((kind, "\n".join(lines)))
    return out


def build(path: Path) -> nbformat.NotebookNode:
    """The notebook of one percent source (no outputs, deterministic cell ids)."""
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = KERNEL
    nb.metadata["language_info"] = {"name": "python"}
    for i, (kind, src) in enumerate(_cells(path.read_text())):
        make = nbformat.v4.new_markdown_cell if kind == "markdown" else nbformat.v4.new_code_cell
        cell = make(src)
        cell["id"] = f"{path.stem[:2]}-{i:02d}"
        nb.cells.append(cell)
    nbformat.validate(nb)
    return nb


def render(nb: nbformat.NotebookNode) -> str:
    return nbformat.writes(nb) + "\n"


def main(argv: list[str]) -> int:
    check = "--check" in argv
    stale = []
    for src in sources():
        target = src.with_suffix(".ipynb")
        text = render(build(src))
        if check:
            if not target.is_file() or target.read_text() != text:
                stale.append(target.name)
        else:
            target.write_text(text)
            print(f"wrote {target.relative_to(HERE.parent)}")
    if stale:
        print(f"out of date (run python notebooks/_build.py): {', '.join(stale)}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
