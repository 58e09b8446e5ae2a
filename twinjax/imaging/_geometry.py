"""Voxel grids and the volumes on them (private, re-exported by
[`twinjax.imaging.volumes`][]): [`Geometry`][] (DICOM patient coordinates, LPS, mm),
[`ScanInfo`][] (when and how a scan was acquired), [`Volume`][], and the tables of image
units and decay corrections."""

from __future__ import annotations

import dataclasses
import math
from typing import Literal

import numpy as np

from .._errors import InputError

#: Geometry tolerance: spacing, origin and direction agree within this times the spacing.
GEOMETRY_TOL = 1e-6
#: Unit -> (kind, factor to MBq or MBq/mL). DICOM codes BQML, CNTS, CPS map to these.
UNITS: dict[str, tuple[str, float]] = {
    "Bq/mL": ("concentration", 1e-6),
    "kBq/mL": ("concentration", 1e-3),
    "MBq/mL": ("concentration", 1.0),
    "Bq": ("activity", 1e-6),
    "kBq": ("activity", 1e-3),
    "MBq": ("activity", 1.0),
    "counts": ("counts", 1.0),
    "cps": ("cps", 1.0),
}
DICOM_UNITS = {"BQML": "Bq/mL", "CNTS": "counts", "CPS": "cps"}
DECAY_CORRECTIONS = ("NONE", "START", "ADMIN")


@dataclasses.dataclass(frozen=True)
class Geometry:
    """A regular voxel grid in DICOM patient coordinates (LPS, mm).

    **Fields:** `shape` (voxels along i, j, k), `spacing_mm` (mm), `origin_mm` (centre of voxel
    (0, 0, 0), LPS mm), `direction` (3x3, column ``a`` is the unit direction of index axis
    ``a``). World position of voxel (i, j, k): ``origin + direction @ (spacing * (i, j, k))``.
    """

    shape: tuple[int, int, int]
    spacing_mm: tuple[float, float, float]
    origin_mm: tuple[float, float, float]
    direction: tuple[tuple[float, float, float], ...]

    @classmethod
    def from_affine(cls, shape, affine_lps) -> Geometry:
        """From a 4x4 voxel -> LPS (mm) affine and the grid shape."""
        a = np.asarray(affine_lps, dtype=np.float64)
        spacing = np.linalg.norm(a[:3, :3], axis=0)
        direction = a[:3, :3] / spacing
        return cls(
            tuple(int(n) for n in shape),
            tuple(float(s) for s in spacing),
            tuple(float(o) for o in a[:3, 3]),
            tuple(tuple(float(x) for x in row) for row in direction),
        )

    @property
    def affine_lps(self) -> np.ndarray:
        """4x4 voxel index -> LPS (mm) affine (DICOM, ITK, 3D Slicer files)."""
        a = np.eye(4)
        a[:3, :3] = np.asarray(self.direction) * np.asarray(self.spacing_mm)
        a[:3, 3] = self.origin_mm
        return a

    @property
    def affine_ras(self) -> np.ndarray:
        """4x4 voxel index -> RAS (mm) affine (NIfTI, nibabel)."""
        return np.diag([-1.0, -1.0, 1.0, 1.0]) @ self.affine_lps

    @property
    def voxel_mL(self) -> float:
        """Volume of one voxel (mL = cm³)."""
        return float(np.prod(self.spacing_mm)) * 1e-3

    def describe(self) -> str:
        d = np.round(np.asarray(self.direction), 6).tolist()
        return (
            f"shape {self.shape}, spacing {tuple(round(s, 6) for s in self.spacing_mm)} mm, "
            f"origin {tuple(round(o, 6) for o in self.origin_mm)} mm (LPS), direction {d}"
        )


def check_geometry(a: Geometry, b: Geometry, *, what_a: str = "image", what_b: str = "mask"):
    """Check that two grids coincide: same shape; spacing and origin within
    ``GEOMETRY_TOL x spacing``; direction cosines within ``GEOMETRY_TOL``.

    **Arguments:** `a`, `b`: the grids; `what_a`, `what_b`: their names in the message (e.g.
    the file paths). **Returns:** ``None``. **Raises:** `InputError` naming both geometries.
    """
    sa, sb = np.asarray(a.spacing_mm), np.asarray(b.spacing_mm)
    ok = (
        tuple(a.shape) == tuple(b.shape)
        and np.all(np.abs(sa - sb) <= GEOMETRY_TOL * sa)
        and np.all(np.abs(np.subtract(a.origin_mm, b.origin_mm)) <= GEOMETRY_TOL * sa.min())
        and np.all(np.abs(np.subtract(a.direction, b.direction)) <= GEOMETRY_TOL)
    )
    if not ok:
        raise InputError(
            f"geometry mismatch: {what_a} has {a.describe()}; {what_b} has {b.describe()}; "
            f"allowed: the same grid (within {GEOMETRY_TOL:g} x spacing), or resampling of the "
            "masks onto the image grid on request (resample_masks: true, nearest neighbour)"
        )


@dataclasses.dataclass(frozen=True)
class ScanInfo:
    """When and how an image was acquired, in hours since administration (no dates).

    **Fields:**
    - `start_h`: acquisition start (h since administration).
    - `frame_duration_h`: acquisition duration (h); 0 when unknown (the scan is then placed at
      its start).
    - `units`: a key of `UNITS` (``Bq/mL``, ``counts``, ...).
    - `decay_correction`: ``NONE``, ``START`` or ``ADMIN``.
    - `reference_h`: the decay-correction reference (h since administration): the series
      reference time for ``START``, 0 for ``ADMIN``, ``None`` for ``NONE``.
    - `administered_MBq`: the header's RadionuclideTotalDose (MBq, module docs), or ``None``.
    - `header_half_life_h`: the header's RadionuclideHalfLife (h), or ``None``.
    - `header_nuclide`: the header's RadionuclideCodeSequence CodeMeaning, or ``None``.
    """

    start_h: float
    frame_duration_h: float = 0.0
    units: str = "Bq/mL"
    decay_correction: Literal["NONE", "START", "ADMIN"] = "NONE"
    reference_h: float | None = None
    administered_MBq: float | None = None
    header_half_life_h: float | None = None
    header_nuclide: str | None = None

    def __post_init__(self) -> None:
        if not (math.isfinite(self.start_h) and self.start_h >= 0):
            raise InputError(
                f"scan start_h = {self.start_h!r}; allowed: a finite time >= 0 h after the "
                "administration (is the administration time right?)"
            )
        if not (math.isfinite(self.frame_duration_h) and self.frame_duration_h >= 0):
            raise InputError(f"frame_duration_h = {self.frame_duration_h!r}; allowed: >= 0 h")
        if self.units not in UNITS:
            raise InputError(f"units = {self.units!r}; allowed: {', '.join(UNITS)}")
        if self.decay_correction not in DECAY_CORRECTIONS:
            raise InputError(
                f"decay_correction = {self.decay_correction!r}; allowed: "
                f"{', '.join(DECAY_CORRECTIONS)}"
            )
        ref = self.reference_h
        if self.decay_correction == "ADMIN":
            object.__setattr__(self, "reference_h", 0.0)
        elif self.decay_correction == "START":
            if ref is None:
                object.__setattr__(self, "reference_h", self.start_h)
            elif not math.isfinite(ref):
                raise InputError(f"reference_h = {ref!r}; allowed: a finite time (h)")
        else:
            object.__setattr__(self, "reference_h", None)

    @property
    def mid_h(self) -> float:
        """The time a scan is reported at: the frame midpoint (h since administration)."""
        return self.start_h + 0.5 * self.frame_duration_h


@dataclasses.dataclass(frozen=True, eq=False)
class Volume:
    """A 3-D image or mask on a [`Geometry`][].

    **Fields:** `data` ((i, j, k) array, read-only: float64 for images, bool for masks),
    `geometry`, `source` (the path it was read from), `frame_of_reference_uid` (DICOM images;
    ``None`` otherwise), `scan` ([`ScanInfo`][] of DICOM images; ``None`` for NIfTI and masks;
    add one with ``dataclasses.replace``).
    """

    data: np.ndarray
    geometry: Geometry
    source: str | None = None
    frame_of_reference_uid: str | None = None
    scan: ScanInfo | None = None

    def __post_init__(self) -> None:
        data = np.array(self.data)
        if data.shape != tuple(self.geometry.shape):
            raise InputError(
                f"{self.source or 'volume'}: data of shape {data.shape} on a grid of shape "
                f"{tuple(self.geometry.shape)}; allowed: equal shapes"
            )
        data.setflags(write=False)
        object.__setattr__(self, "data", data)
