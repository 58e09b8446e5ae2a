"""Where twinjax finds the files it ships (templates, default study)."""

from __future__ import annotations

from pathlib import Path


def configs_dir() -> Path:
    """The `configs/` folder: packaged as `twinjax/_configs` in a wheel, or the repository's
    `configs/` in an editable install."""
    here = Path(__file__).resolve().parent
    for candidate in (here / "_configs", here.parent / "configs"):
        if (candidate / "templates").is_dir():
            return candidate
    raise FileNotFoundError(
        f"twinjax's configs are missing (looked in {here / '_configs'} and {here.parent / 'configs'}); "
        "reinstall twinjax"
    )
