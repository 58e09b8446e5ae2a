"""NIfTI reading for [`twinjax.imaging.volumes`][] (private).

nibabel gives the voxel-to-world affine in RAS+ (NIfTI's convention); twinjax keeps geometry in
DICOM's LPS, so the first two world axes change sign here and only here. nibabel's exception
text is not passed on (only its type), so a header's description field never reaches a message.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .._errors import InputError

#: RAS+ <-> LPS (its own inverse).
RAS_LPS = np.diag([-1.0, -1.0, 1.0, 1.0])
_LENGTH_TO_MM = {"mm": 1.0, "unknown": 1.0, "meter": 1000.0, "micron": 1e-3}


def is_nifti(path: Path) -> bool:
    name = path.name.lower()
    return name.endswith((".nii", ".nii.gz"))


def read_nifti(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Read a 3-D NIfTI image. **Returns:** ``(data, affine)``: float64 voxels indexed (i, j, k)
    after the header's scl_slope/scl_inter, and the voxel -> LPS (mm) affine."""
    import nibabel as nib

    if not path.is_file():
        raise InputError(f"{path}: does not exist; allowed: a .nii or .nii.gz file")
    try:
        img = nib.load(str(path))
        data = np.asarray(img.get_fdata(dtype=np.float64))
        affine = np.array(img.affine, dtype=np.float64)
        length_unit = img.header.get_xyzt_units()[0]
    except Exception as err:  # ImageFileError, EOFError / zlib.error on truncation, ...
        raise InputError(
            f"{path}: not a readable NIfTI image ({type(err).__name__}); allowed: an intact "
            ".nii or .nii.gz file"
        ) from None
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise InputError(
            f"{path}: image of shape {data.shape}; allowed: a 3-D volume (one time point per file)"
        )
    if length_unit not in _LENGTH_TO_MM:
        raise InputError(f"{path}: spatial unit {length_unit!r}; allowed: mm, meter or micron")
    affine[:3, :] *= _LENGTH_TO_MM[length_unit]
    if not np.all(np.isfinite(affine)) or abs(np.linalg.det(affine[:3, :3])) < 1e-12:
        raise InputError(f"{path}: the header's affine is singular or not finite")
    return data, RAS_LPS @ affine
