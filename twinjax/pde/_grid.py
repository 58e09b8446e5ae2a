"""Regular grids of cells for tissue-scale models.

A [`Grid`][] is the structure of a finite-volume discretisation: the number of cells along each
axis (1-D, 2-D or 3-D) and their spacing in mm. Fields on the grid (concentrations, pO2, cell
density, diffusivity and perfusion maps) are arrays of exactly `Grid.shape`, one value per cell
(the cell average); masks are boolean arrays of the same shape. Cell centres sit at
``(i + 1/2) * spacing_mm`` from the grid's origin corner.

Units: length mm, volume mL (1 mL = 1000 mm^3).
"""

from __future__ import annotations

import math

import equinox as eqx
import numpy as np

from .._errors import InputError

__all__ = ["Grid"]


class Grid(eqx.Module):
    """A regular grid: `shape` cells (1 to 3 axes), cubic or not, of `spacing_mm` each.

    **Fields (static):** `shape` (cells per axis), `spacing_mm` (one spacing per axis, mm).

    ```python
    g = Grid((64, 64, 32), 0.5)          # 32 x 32 x 16 mm, 0.5 mm cells
    g.cell_volume_mL, g.coordinates_mm()[0].shape
    ```
    """

    shape: tuple[int, ...] = eqx.field(static=True)
    spacing_mm: tuple[float, ...] = eqx.field(static=True)

    def __init__(self, shape, spacing_mm):
        shape = tuple(int(n) for n in np.atleast_1d(shape))
        if not 1 <= len(shape) <= 3 or any(n < 1 for n in shape):
            raise InputError(f"Grid shape = {shape}; allowed: 1 to 3 axes of >= 1 cells")
        h = np.broadcast_to(np.asarray(spacing_mm, dtype=float), (len(shape),))
        if not np.all(np.isfinite(h) & (h > 0)):
            raise InputError(
                f"Grid spacing_mm = {spacing_mm!r}; allowed: finite and > 0 (mm), one value or "
                f"one per axis ({len(shape)})"
            )
        self.shape = shape
        self.spacing_mm = tuple(float(v) for v in h)

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def n_cells(self) -> int:
        return math.prod(self.shape)

    @property
    def cell_volume_mL(self) -> float:
        """Volume of one cell (mL)."""
        return math.prod(self.spacing_mm) * 1e-3

    @property
    def extent_mm(self) -> tuple[float, ...]:
        """Edge lengths of the domain (mm)."""
        return tuple(n * h for n, h in zip(self.shape, self.spacing_mm, strict=True))

    def coordinates_mm(self) -> tuple[np.ndarray, ...]:
        """Cell-centre coordinates, one array of `shape` per axis (mm, from the origin corner)."""
        axes = [(np.arange(n) + 0.5) * h for n, h in zip(self.shape, self.spacing_mm, strict=True)]
        return tuple(np.meshgrid(*axes, indexing="ij"))

    def check_field(self, name: str, value, *, nonnegative: bool = False, positive: bool = False):
        """`value` as a float array of the grid's shape (a scalar is broadcast); raises
        `InputError` naming `name` for a wrong shape, NaN/inf or a sign violation."""
        arr = np.asarray(value, dtype=float)
        if arr.ndim == 0:
            arr = np.full(self.shape, float(arr))
        if arr.shape != self.shape:
            raise InputError(
                f"{name} has shape {arr.shape}; allowed: the grid's shape {self.shape} (or a "
                "scalar)"
            )
        if not np.all(np.isfinite(arr)):
            bad = int(np.sum(~np.isfinite(arr)))
            raise InputError(f"{name} has {bad} NaN or infinite cells; allowed: finite values")
        if positive and np.any(arr <= 0):
            raise InputError(f"{name} has min {float(arr.min())!r}; allowed: > 0 in every cell")
        if nonnegative and np.any(arr < 0):
            raise InputError(f"{name} has min {float(arr.min())!r}; allowed: >= 0 in every cell")
        return arr

    def check_mask(self, name: str, value) -> np.ndarray:
        """`value` as a boolean mask of the grid's shape; raises `InputError` for a wrong shape,
        values other than 0/1, or an empty mask."""
        arr = np.asarray(value)
        if arr.shape != self.shape:
            raise InputError(
                f"{name} has shape {arr.shape}; allowed: the grid's shape {self.shape}"
            )
        if arr.dtype != bool:
            if not np.all(np.isin(arr, (0, 1))):
                raise InputError(f"{name} is not binary; allowed: booleans or 0/1")
            arr = arr.astype(bool)
        if not arr.any():
            raise InputError(f"{name} is empty; allowed: at least one cell inside")
        return arr
