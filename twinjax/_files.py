"""Writing result files safely, and reading them back only if they are what twinjax wrote.

**Atomic writes.** Every result file is written to a temporary file in the destination folder
(``.<name>.<random>.tmp``), flushed to disk, and renamed over the destination; then the folder
is flushed so that the rename itself survives a crash. A reader sees the old file or the new
one, never half of one. A write that fails or is interrupted (an exception, Ctrl-C, a full
disk) removes its temporary file and leaves the previous file as it was. Operating-system
failures surface as [`twinjax._errors.OutputError`][] naming the file and the cause
(``"disk full"`` for ``ENOSPC``).

**Checksums of netCDF results.** [`write_netcdf`][] stores in every group it writes the
attribute ``twinjax_sha256``: a SHA-256 over the group's variables (names, dimensions, dtypes,
values) and its text and numeric attributes. [`read_netcdf`][] recomputes it and refuses a file
whose data no longer match (bit-flipped, edited) with an [`InputError`][] naming the file and
both digests; a truncated file fails to open and is refused too. The digest covers the values
as decoded, not the HDF5 bytes, so it does not depend on how the library lays out the file.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from ._errors import InputError, OutputError

__all__ = [
    "SHA256_ATTR",
    "atomic_path",
    "atomic_write",
    "check_writable_folder",
    "dataset_sha256",
    "read_netcdf",
    "verify_dataset",
    "write_netcdf",
]

#: Attribute of each netCDF group written by [`write_netcdf`][] holding its SHA-256.
SHA256_ATTR = "twinjax_sha256"


def _output_error(err: OSError, path: Path) -> OutputError:
    if err.errno == errno.ENOSPC:
        msg = (
            f"disk full: could not write {str(path)!r} ({err.strerror or 'no space left'}); the "
            "previous file, if any, is unchanged and no partial file was left; free some space "
            "and run again"
        )
    else:
        msg = (
            f"could not write {str(path)!r} ({err.strerror or err}); the previous file, if "
            "any, is unchanged and no partial file was left"
        )
    return OutputError(err.errno, msg)


def _fsync_path(path: str | Path, *, folder: bool = False) -> None:
    fd = os.open(path, os.O_RDONLY | (os.O_DIRECTORY if folder else 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """A temporary file name next to `path` for a writer that needs a file name (netCDF):
    on leaving the block normally the file is flushed and renamed over `path`; on any
    exception it is removed and `path` is untouched (module docs).

    **Arguments:** `path` — the destination file; its folder must exist.

    **Raises:** [`OutputError`][] (naming `path`) for an operating-system failure (disk full,
    permission); other exceptions pass through unchanged.
    """
    p = Path(path)
    try:
        fd, tmp = tempfile.mkstemp(dir=p.parent, prefix=f".{p.name}.", suffix=".tmp")
    except OSError as err:
        raise _output_error(err, p) from err
    os.close(fd)
    try:
        yield Path(tmp)
        _fsync_path(tmp)
        os.chmod(tmp, 0o644)
        os.replace(tmp, p)
    except BaseException as err:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(err, OSError) and not isinstance(err, OutputError):
            raise _output_error(err, p) from err
        raise
    try:  # make the rename durable; some file systems cannot fsync a folder, which is harmless
        _fsync_path(p.parent, folder=True)
    except OSError:
        pass


def atomic_write(path: str | Path, data: bytes) -> None:
    """Write `data` to `path` atomically (module docs).

    **Raises:** [`OutputError`][] naming `path` when the system refuses the write (e.g. disk
    full); the previous content of `path` is then unchanged and no temporary file remains.
    """
    with atomic_path(path) as tmp:
        fd = os.open(tmp, os.O_WRONLY | os.O_TRUNC)
        try:
            view = memoryview(data)
            while view:  # os.write may write less than asked (signals, pipes, quotas)
                view = view[os.write(fd, view) :]
        finally:
            os.close(fd)


def check_writable_folder(folder: str | Path, field: str = "out") -> Path:
    """Create `folder` if needed and check that a file can be created in it, before any
    computation (the commands' output folders).

    **Raises:** [`InputError`][] naming `field`, the folder and the reason.
    """
    p = Path(folder)
    try:
        p.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=p, prefix=".twinjax-write-test.", suffix=".tmp")
        os.close(fd)
        os.unlink(probe)
    except OSError as err:
        raise InputError(
            f"{field} = {str(p)!r}: the output folder cannot be created or written "
            f"({err.strerror or err}); allowed: a folder you can create and write"
        ) from None
    return p


# ------------------------------------------------------------------------------ netCDF
def _update_array(h, values) -> None:
    a = np.asarray(values)
    if a.dtype.kind in "OUS":  # text: netCDF may read '<U5' back as object; hash the text
        h.update(b"text")
        h.update(repr(a.shape).encode())
        h.update("\x1f".join(str(x) for x in a.ravel()).encode())
        return
    if a.dtype.kind == "b":
        a = a.astype(np.uint8)
    h.update(a.dtype.kind.encode() + str(a.dtype.itemsize).encode())
    h.update(repr(a.shape).encode())
    h.update(np.ascontiguousarray(a, dtype=a.dtype.newbyteorder("<")).tobytes())


def dataset_sha256(ds) -> str:
    """SHA-256 of an `xarray.Dataset` as [`write_netcdf`][] stores it: every variable
    (coordinates included: name, dimensions, values) and every text or numeric attribute but
    ``twinjax_sha256`` itself, in sorted order."""
    h = hashlib.sha256()
    for name in sorted(str(k) for k in ds.variables):
        var = ds.variables[name]
        h.update(b"var\x00" + name.encode() + b"\x00" + "\x1f".join(map(str, var.dims)).encode())
        _update_array(h, var.values)
    for key in sorted(str(k) for k in ds.attrs):
        if key == SHA256_ATTR:
            continue
        v = ds.attrs[key]
        h.update(b"attr\x00" + key.encode() + b"\x00")
        if isinstance(v, str):
            h.update(v.encode())
        elif np.asarray(v).dtype.kind in "biuf":
            h.update(np.asarray(v, dtype="<f8").ravel().tobytes())
        else:
            h.update(repr(v).encode())
    return h.hexdigest()


def _stamped(ds):
    out = ds.copy(deep=False)
    out.attrs = {k: v for k, v in ds.attrs.items() if k != SHA256_ATTR}
    out.attrs[SHA256_ATTR] = dataset_sha256(out)
    return out


def write_netcdf(path: str | Path, data) -> Path:
    """Write an `xarray.Dataset` or an ArviZ `InferenceData` as netCDF, atomically, with the
    SHA-256 of every group in its attributes (module docs). The caller's object is not
    modified.

    **Returns:** the path. **Raises:** [`OutputError`][] naming the file (disk full, ...).
    """
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    if hasattr(data, "groups") and callable(data.groups):  # ArviZ InferenceData
        import arviz as az

        # The root attributes (the posterior's provenance) travel with the groups.
        stamped = az.InferenceData(
            attrs=dict(getattr(data, "attrs", None) or {}),
            **{g: _stamped(data[g]) for g in data.groups()},
        )
        with atomic_path(p) as tmp:
            stamped.to_netcdf(str(tmp), compress=False)
    else:
        stamped = _stamped(data)
        with atomic_path(p) as tmp:
            stamped.to_netcdf(tmp, engine="h5netcdf")
    return p


def read_netcdf(path: str | Path, group: str | None = None, *, required: bool = True):
    """Read one group of a netCDF file written by [`write_netcdf`][] into memory and verify
    its SHA-256.

    **Arguments:**
    - `path`: the file.
    - `group`: the group (e.g. ``"posterior"``), or None for the root.
    - `required`: refuse a group without ``twinjax_sha256`` (written by something else, or by
      a twinjax that did not checksum); with False such a file is read unverified.

    **Returns:** the loaded `xarray.Dataset` (the ``twinjax_sha256`` attribute included).

    **Raises:** [`InputError`][] naming the file for a missing or unreadable (truncated,
    corrupt) file, a missing checksum when `required`, or a checksum that differs from the
    data (both digests named).
    """
    import xarray as xr

    p = Path(path)
    where = f"{str(p)!r}" + (f" (group {group!r})" if group else "")
    if not p.is_file():
        raise InputError(f"netCDF file {str(p)!r} does not exist")
    try:
        with xr.open_dataset(p, group=group, engine="h5netcdf") as ds:
            ds = ds.load()
    except Exception as err:  # h5py/h5netcdf raise many types for a damaged file
        raise InputError(
            f"{where}: not a readable netCDF file (truncated or corrupt: "
            f"{type(err).__name__}: {str(err)[:200]})"
        ) from None
    return verify_dataset(ds, p, group, required=required)


def verify_dataset(ds, path: str | Path, group: str | None = None, *, required: bool = True):
    """Check a loaded `xarray.Dataset` against the ``twinjax_sha256`` it was written with (for
    readers that open the file themselves); `path` and `group` name it in the message.

    **Returns:** `ds`. **Raises:** [`InputError`][] as [`read_netcdf`][].
    """
    where = f"{str(path)!r}" + (f" (group {group!r})" if group else "")
    expected = ds.attrs.get(SHA256_ATTR)
    if expected is None:
        if required:
            raise InputError(
                f"{where}: no {SHA256_ATTR} attribute, so its integrity cannot be checked; "
                "allowed: a file written by twinjax (rerun the step that wrote it)"
            )
        return ds
    got = dataset_sha256(ds)
    if got != str(expected):
        raise InputError(
            f"{where}: checksum mismatch: the data have SHA-256 {got}, the file records "
            f"{expected}; the file was modified or is corrupt (bit-flipped, edited); allowed: "
            "the file as twinjax wrote it (rerun the step that wrote it)"
        )
    return ds
