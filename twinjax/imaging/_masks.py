"""Region masks (private, re-exported by [`twinjax.imaging.volumes`][]): binary NIfTI
masks ([`read_mask`][]), NIfTI label maps and BINARY DICOM-SEG files
([`read_label_masks`][]), and nearest-neighbour resampling onto an image grid
([`resample_nearest`][])."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from .._errors import InputError
from . import _dicom
from ._geometry import GEOMETRY_TOL, Geometry, Volume
from ._nifti import is_nifti, read_nifti


def _binary(data: np.ndarray, where: str) -> np.ndarray:
    finite = np.isfinite(data)
    bad = ~finite | ((data != 0) & (data != 1))
    if np.any(bad):
        values = np.unique(data[bad])[:5].tolist()
        raise InputError(
            f"{where}: a binary mask with values {values} (in {int(bad.sum())} voxels); allowed: "
            "0 and 1 only (give a label map with its labels for multi-label masks)"
        )
    mask = data == 1
    if not mask.any():
        raise InputError(f"{where}: the mask is empty (no voxel is 1); allowed: a non-empty region")
    return mask


def read_mask(path: str | Path) -> Volume:
    """Read a binary region mask (NIfTI, voxels 0 or 1).

    **Arguments:** `path`: a ``.nii`` or ``.nii.gz`` file. **Returns:** a [`Volume`][] of bool.
    **Raises:** `InputError` naming the file for an unreadable file, values other than 0 and 1,
    or an empty mask.
    """
    p = Path(path)
    if not is_nifti(p):
        raise InputError(
            f"{p}: not a NIfTI file; allowed: a .nii/.nii.gz binary mask (a DICOM-SEG is read "
            "as a label map with its segment numbers: labels: {{path: ..., regions: ...}})"
        )
    data, affine = read_nifti(p)
    return Volume(_binary(data, str(p)), Geometry.from_affine(data.shape, affine), str(p))


def read_label_masks(
    path: str | Path, labels: Mapping[int, str], *, reference: Geometry | None = None
) -> dict[str, Volume]:
    """Read a label map (NIfTI, integer labels) or a BINARY DICOM-SEG into one mask per region.

    **Arguments:**
    - `path`: a ``.nii``/``.nii.gz`` label map, or a DICOM-SEG file.
    - `labels`: label value (NIfTI) or SegmentNumber (DICOM-SEG) -> region name.
    - `reference`: the image grid. A DICOM-SEG stores only the slices a segment touches; with a
      reference, frames lying exactly on its slices (same plane geometry within
      ``GEOMETRY_TOL x spacing``) are placed there (no interpolation). Without one, or when
      they do not lie on it, the masks are on the SEG's own grid (from the first to the last
      frame, at SpacingBetweenSlices or SliceThickness).

    **Returns:** region -> [`Volume`][] of bool. **Raises:** `InputError` naming the file for
    non-integer labels, labels absent from the file, empty regions, fractional DICOM-SEG.
    """
    p = Path(path)
    if not labels:
        raise InputError(f"{p}: no labels given; allowed: label -> region name, e.g. {{1: liver}}")
    for lab in labels:
        if isinstance(lab, bool) or not isinstance(lab, int | np.integer) or lab <= 0:
            raise InputError(f"{p}: label {lab!r}; allowed: integers >= 1 (0 is background)")
    if is_nifti(p):
        data, affine = read_nifti(p)
        geom = Geometry.from_affine(data.shape, affine)
        if not np.all(np.isfinite(data)) or np.any(data != np.round(data)):
            bad = data[~np.isfinite(data) | (data != np.round(data))]
            raise InputError(
                f"{p}: label map with non-integer values {np.unique(bad)[:5].tolist()}; "
                "allowed: integer labels"
            )
        present = sorted(int(v) for v in np.unique(data) if v != 0)
        masks = {lab: data == lab for lab in labels}
        names = {v: f"label {v}" for v in present}
    elif _dicom.is_dicom_file(p) or p.is_dir():
        segments, frames, plane = _dicom.read_seg(p)
        present = sorted({num for num, _, m in frames if m.any()})
        names = {k: f"segment {k} ({v!r})" for k, v in segments.items()}
        geom, masks = _seg_masks(frames, plane, labels, reference, p)
    else:
        raise InputError(f"{p}: neither a NIfTI label map nor a DICOM-SEG file")
    absent = [lab for lab in labels if lab not in present]
    if absent:
        raise InputError(
            f"{p}: label(s) {absent} (regions {[labels[a] for a in absent]}) are absent or "
            f"empty; present: {[names.get(v, v) for v in present] or 'none'}"
        )
    return {labels[lab]: Volume(masks[lab], geom, str(p)) for lab in labels}


def _seg_masks(frames, plane, labels, reference: Geometry | None, path: Path):
    steps, normal, dz = plane
    wanted = [f for f in frames if f[0] in labels]
    if reference is not None:
        inv = np.linalg.inv(reference.affine_lps)
        ref_steps = reference.affine_lps[:3, :2]
        tol = GEOMETRY_TOL * min(reference.spacing_mm)
        ok = np.all(np.abs(steps - ref_steps) <= tol) and all(
            m.shape == tuple(reference.shape[:2]) for _, _, m in wanted
        )
        ks = []
        for _, pos, _ in wanted:
            ijk = (inv @ np.append(pos, 1.0))[:3]
            k = round(float(ijk[2]))
            ok = ok and np.all(np.abs(ijk[:2]) <= GEOMETRY_TOL) and abs(ijk[2] - k) <= GEOMETRY_TOL
            ok = ok and 0 <= k < reference.shape[2]
            ks.append(k)
        if ok:
            masks = {lab: np.zeros(reference.shape, bool) for lab in labels}
            for (num, _, m), k in zip(wanted, ks, strict=True):
                masks[num][:, :, k] |= m
            return reference, masks
    if not wanted:
        return None, {}
    proj = np.array([pos @ normal for _, pos, _ in wanted])
    distinct = np.unique(np.round(proj, 6))
    if dz is None or not dz > 0:
        dz = float(np.min(np.diff(distinct))) if len(distinct) > 1 else 1.0
    k_of = (proj - proj.min()) / dz
    if np.any(np.abs(k_of - np.round(k_of)) > 1e-3):
        raise InputError(
            f"{path}: DICOM-SEG frame positions are not on a regular grid of {dz:g} mm; "
            "allowed: frames on the slices of a regular grid"
        )
    affine = np.eye(4)
    affine[:3, :2] = steps
    affine[:3, 2] = normal * dz
    affine[:3, 3] = wanted[int(np.argmin(proj))][1]
    geom = Geometry.from_affine((*wanted[0][2].shape, round(float(k_of.max())) + 1), affine)
    masks = {lab: np.zeros(geom.shape, bool) for lab in labels}
    for (num, _, m), k in zip(wanted, np.round(k_of).astype(int), strict=True):
        masks[num][:, :, k] |= m
    return geom, masks


def resample_nearest(volume: Volume, geometry: Geometry) -> Volume:
    """Resample a volume onto another grid by nearest neighbour (for masks).

    Each target voxel takes the value of the source voxel whose centre is nearest to its centre
    in index space: ``round(inverse(A_src) @ A_dst @ (i, j, k))`` with halves rounded up;
    target voxels outside the source grid get 0 (False).

    **Arguments:** `volume`: the source; `geometry`: the target grid.
    **Returns:** a [`Volume`][] on `geometry` (same dtype, same source).
    """
    m = np.linalg.inv(volume.geometry.affine_lps) @ geometry.affine_lps
    ni, nj, nk = geometry.shape
    src = volume.data
    out = np.zeros(geometry.shape, dtype=src.dtype)
    ii, jj = np.meshgrid(np.arange(ni), np.arange(nj), indexing="ij")
    for k in range(nk):  # one target slice at a time bounds the index arrays' memory
        pts = np.stack([ii, jj, np.full_like(ii, k), np.ones_like(ii)], axis=-1) @ m.T
        idx = np.floor(pts[..., :3] + 0.5).astype(np.int64)
        inside = np.all((idx >= 0) & (idx < np.asarray(src.shape)), axis=-1)
        out[:, :, k][inside] = src[idx[inside, 0], idx[inside, 1], idx[inside, 2]]
    return dataclasses.replace(volume, data=out, geometry=geometry)
