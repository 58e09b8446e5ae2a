"""A twin on disk: one file that holds everything needed to carry on where the twin left off.

A twin file (conventionally ``*.twin``) is a zip archive with

- ``twin.json`` — the state: schema, twinjax version, template name and SHA-256, patient
  (identifier, covariates, administrations given), observation model, forecast regions,
  inference settings, every observation assimilated so far, the provenance log of every update
  and decision, recorded outcomes;
- ``posterior.nc`` — the current posterior as ArviZ netCDF groups (``posterior``,
  ``sample_stats``), with its provenance in the attributes;
- ``arrays.npz`` — what a warm-started update needs besides the draws: NUTS step size and mass
  matrix, the Laplace mean and covariance, SVI losses, voxel uptake maps of regions;
- ``manifest.json`` — the SHA-256 of each member above.

Writing is atomic: the archive is written to a temporary file in the destination folder, flushed
to disk and renamed over the destination, so an interrupted save leaves the previous file intact
and never a half-written one (a full disk raises `twinjax._errors.OutputError` naming the file).
The archive's entries carry a fixed date, so its bytes depend on the twin's state only. Loading verifies the archive, every member's checksum, the schema
and the template: a truncated or bit-flipped file, a file of another schema, or a twin whose
template has changed since it was saved is refused with an `InputError` that names what differs.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import zipfile
import zlib
from pathlib import Path

import numpy as np

from ._errors import InputError
from ._files import atomic_write

__all__ = ["SCHEMA", "read_twin_file", "write_twin_file"]

#: Schema of the twin file; bumped whenever its content changes incompatibly.
SCHEMA = "twinjax.twin/1"
_MEMBERS = ("twin.json", "posterior.nc", "arrays.npz")


def _jsonable(obj):
    """Plain JSON types from numpy scalars/arrays, tuples and non-finite floats (as strings)."""
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return _jsonable(obj.tolist())
    if isinstance(obj, np.generic):
        return _jsonable(obj.item())
    if isinstance(obj, float) and not math.isfinite(obj):
        return repr(obj)  # "inf", "-inf", "nan": JSON has no literal for them
    return obj


def write_twin_file(
    path: str | Path, state: dict, posterior_nc: bytes | None, arrays: dict
) -> Path:
    """Write a twin archive atomically (module docs). `state` is JSON-able (after
    `_jsonable`), `posterior_nc` the netCDF bytes (``None`` before the first fit), `arrays`
    name -> numpy array."""
    p = Path(path)
    if p.exists() and p.is_dir():
        raise InputError(f"twin path {str(p)!r} is a folder; allowed: a file name (e.g. x.twin)")
    p.parent.mkdir(parents=True, exist_ok=True)
    members: dict[str, bytes] = {
        "twin.json": json.dumps(_jsonable(state), indent=1, sort_keys=True).encode()
    }
    if posterior_nc is not None:
        members["posterior.nc"] = posterior_nc
    npz = io.BytesIO()
    np.savez(npz, **{k: np.asarray(v) for k, v in arrays.items()})
    members["arrays.npz"] = npz.getvalue()
    manifest = {
        "schema": SCHEMA,
        "sha256": {k: hashlib.sha256(v).hexdigest() for k, v in members.items()},
    }
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr(_member("manifest.json"), json.dumps(manifest, indent=1, sort_keys=True))
        for name, data in members.items():
            z.writestr(_member(name), data)
    atomic_write(p, buf.getvalue())
    return p


def _member(name: str) -> zipfile.ZipInfo:
    """A zip member with a fixed date: the archive's bytes depend only on its content (a twin
    saved twice in the same state gives the same file), not on the clock. The times that
    matter are in the provenance log of ``twin.json``."""
    info = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))
    info.compress_type = zipfile.ZIP_DEFLATED
    info.external_attr = 0o644 << 16
    return info


def read_twin_file(path: str | Path) -> tuple[dict, bytes | None, dict[str, np.ndarray]]:
    """Read and verify a twin archive: ``(state, posterior_nc or None, arrays)``.

    **Raises:** `InputError` for a missing file, a file that is not a twin archive (truncated,
    bit-flipped, another format), a member whose checksum differs from the manifest, or a schema
    other than `SCHEMA` (the message names both).
    """
    p = Path(path)
    if not p.is_file():
        raise InputError(f"twin file {str(p)!r} does not exist")
    try:
        with zipfile.ZipFile(p) as z:
            bad = z.testzip()
            if bad is not None:
                raise InputError(
                    f"{str(p)!r}: member {bad!r} fails its CRC check; the file is corrupt "
                    "(truncated or bit-flipped)"
                )
            names = set(z.namelist())
            if "manifest.json" not in names:
                raise InputError(f"{p.name}: no manifest.json; not a twinjax twin file")
            manifest = json.loads(z.read("manifest.json"))
            members = {n: z.read(n) for n in _MEMBERS if n in names}
    except (zipfile.BadZipFile, zlib.error, EOFError, OSError, ValueError, KeyError) as err:
        if isinstance(err, InputError):
            raise
        raise InputError(
            f"{str(p)!r}: not a readable twinjax twin file (truncated or corrupt: {err})"
        ) from None
    schema = manifest.get("schema")
    if schema != SCHEMA:
        raise InputError(
            f"{p.name}: twin file schema {schema!r}; this twinjax reads {SCHEMA!r}. Load it with "
            "the twinjax version that wrote it, or rebuild the twin from its data"
        )
    expected = manifest.get("sha256", {})
    for name, data in members.items():
        got = hashlib.sha256(data).hexdigest()
        if expected.get(name) != got:
            raise InputError(
                f"{str(p)!r}: member {name!r} has SHA-256 {got}, the manifest records "
                f"{expected.get(name)}; the file was modified or is corrupt (truncated, "
                "bit-flipped or edited); allowed: a twin file as twinjax saved it"
            )
    missing = [n for n in expected if n not in members]
    if missing or "twin.json" not in members:
        raise InputError(f"{p.name}: members {missing or ['twin.json']} are missing")
    state = json.loads(members["twin.json"])
    with np.load(io.BytesIO(members["arrays.npz"])) as npz:
        arrays = {k: npz[k] for k in npz.files}
    return state, members.get("posterior.nc"), arrays
