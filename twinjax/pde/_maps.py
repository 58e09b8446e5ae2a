"""Procedural vessel networks and coherent tissue maps for tissue twins.

**Vessel network** (`vessel_network`). A branching tree grown by space colonisation (Runions A,
Lane B, Prusinkiewicz P, "Modeling trees with a space colonization algorithm", Eurographics
Workshop on Natural Phenomena 2007): attractor points ("tissue asking for supply") are scattered
with an intensity proportional to ``rho(x)^3`` (rho the relative vessel-density map); a few
feeding vessels enter through the domain faces; at every iteration each attractor pulls the node
nearest to it, each pulled node grows one step of d/4 towards the mean direction of its
attractors plus a random unit vector times `tortuosity`, and attractors closer than d/2 to the
network are removed. Growth into cells with rho = 0 (a necrotic core) is refused; a node holds at
most three children. The exponent 3 and the attractor intensity ``8 / d^n`` were calibrated on
uniform domains (2-D and 3-D), where the grown length density is 1.1-1.4 times the target
``L = rho / d^(n-1)`` (n = 2, 3: the length density of a parallel array of vessels d apart,
Krogh's geometry) and scales as intensity^(1/3); terminal segments are then retracted at random
until the total centreline length equals ``sum rho / d^(n-1) dV`` to one segment (a network that
grew shorter, e.g. hemmed in by avascular regions, is kept as grown: `VesselNetwork.length_density`
reports what was built). A histological microvessel density (vessels per mm^2 of a section of an
isotropic 3-D network) gives ``L_V = 2 MVD`` (Weibel ER, Stereological Methods vol. 1, Academic
Press 1979: L_V = 2 Q_A).

**Lumen partial volume** (`render_vessels`). Each segment is a capsule of radius r around its
centreline; the vascular fraction of a cell is the mean coverage of its s^n sub-samples by
the capsules: 1 inside, 0 outside, linear over two sub-sample widths w across the wall (a
smooth integrand, so the lattice error of a hard in/out test, O(sub), falls to a fraction of a
percent; in 3-D the wall radius is ``sqrt(r^2 - w^2 / 12)``, which keeps the cross-section area
pi r^2 exactly); overlapping capsules take the maximum. s is chosen so the sub-sample spacing is
at most r / 4 and h / 8, capped at 16 per axis in 2-D and 6 in 3-D (and by a budget of 1e7
sub-samples); vessels that would get fewer than 4 sub-samples across their diameter are deposited
along their centrelines instead: ``pi r^2`` (3-D) or ``2 r`` (2-D) per mm of length into the cell
holding each piece (exact total lumen; fractions capped at 1).

**Tissue maps** (`TissueMaps`, `synthetic_tumour`): the named maps a tissue twin reads, and a
procedural tumour that makes them consistent with each other (see `synthetic_tumour`).

Units: length mm, rates 1/h, receptor density nmol/L.
"""

from __future__ import annotations

import dataclasses
import math

import equinox as eqx
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Bool, Float, Int
from scipy.spatial import cKDTree

from .._errors import InputError
from ._fields import (
    _numpy_rng,
    _optional_mask,
    _positive,
    _split,
    cellularity,
    fibrosis_patches,
    necrotic_core,
    perfusion_map,
    target_expression,
)
from ._grid import Grid

__all__ = [
    "TISSUE_CLASSES",
    "TissueMaps",
    "VesselNetwork",
    "render_vessels",
    "synthetic_tumour",
    "vessel_network",
]

TISSUE_CLASSES = ("outside", "viable", "fibrotic", "necrotic", "vessel")
_ATTRACTORS_PER_D_N = 8.0  # calibrated: grows 1.1-1.4 x the target length, then retracted
_DENSITY_EXPONENT = 3.0  # length density grows ~ attractor intensity^(1/3) (module docs)
_MAX_CHILDREN = 3
_MAX_SUBSAMPLES = 1e7


@dataclasses.dataclass(frozen=True)
class VesselNetwork:
    """A vessel network on a grid.

    **Fields:** `grid`; `starts_mm`, `ends_mm` (segments' end points, (n, ndim), mm); `radius_mm`
    (lumen radius, mm); `vascular_fraction` (lumen fraction of each cell, 0 to 1); `mask`
    (cells at least half lumen, plus every cell a centreline crosses).
    """

    grid: Grid
    starts_mm: np.ndarray
    ends_mm: np.ndarray
    radius_mm: float
    vascular_fraction: np.ndarray
    mask: np.ndarray

    @property
    def length_mm(self) -> float:
        """Total centreline length (mm)."""
        return float(np.linalg.norm(self.ends_mm - self.starts_mm, axis=1).sum())

    @property
    def lumen_volume_mm3(self) -> float:
        """Tube volume ``pi r^2 L`` (3-D), or lumen area ``2 r L`` times the 1 mm thickness that a
        2-D grid's cell volume assumes."""
        area = math.pi * self.radius_mm**2 if self.grid.ndim == 3 else 2.0 * self.radius_mm
        return area * self.length_mm

    @property
    def length_density(self) -> float:
        """Centreline length per domain volume: mm / mm^3 (= 1/mm^2) in 3-D, mm / mm^2 (= 1/mm)
        in 2-D."""
        return self.length_mm / math.prod(self.grid.extent_mm)


def _check_network_grid(grid: Grid) -> None:
    if grid.ndim not in (2, 3):
        raise InputError(f"grid has {grid.ndim} axes; allowed: 2-D or 3-D for vessel networks")


def _cell_index(grid: Grid, pts: np.ndarray) -> tuple[np.ndarray, ...]:
    h = np.asarray(grid.spacing_mm)
    idx = np.floor(pts / h).astype(int)
    return tuple(np.clip(idx[:, a], 0, n - 1) for a, n in enumerate(grid.shape))


def _centreline_points(grid: Grid, a: np.ndarray, b: np.ndarray, spacing: float) -> tuple:
    """Points every <= `spacing` mm along each segment (piece midpoints) and each piece length."""
    seg = b - a
    length = np.linalg.norm(seg, axis=1)
    n = np.maximum(np.ceil(length / spacing).astype(int), 1)
    which = np.repeat(np.arange(len(a)), n)
    k = np.arange(which.size) - np.repeat(np.cumsum(n) - n, n)
    t = (k + 0.5) / n[which]
    return a[which] + t[:, None] * seg[which], (length / n)[which]


def render_vessels(grid: Grid, starts_mm, ends_mm, radius_mm: float) -> VesselNetwork:
    """The lumen partial-volume map of given segments (module docs), e.g. a vessel tree
    segmented from imaging.

    **Arguments:** `grid` (2-D or 3-D); `starts_mm`, `ends_mm`: segment end points, (n, ndim),
    mm from the grid's origin corner; `radius_mm`: lumen radius (> 0, mm).

    **Returns:** a [`VesselNetwork`][twinjax.pde.VesselNetwork].
    """
    _check_network_grid(grid)
    r = _positive("radius_mm", radius_mm, "mm")
    a = np.asarray(starts_mm, dtype=float).reshape(-1, grid.ndim)
    b = np.asarray(ends_mm, dtype=float).reshape(-1, grid.ndim)
    if a.shape != b.shape or not (np.all(np.isfinite(a)) and np.all(np.isfinite(b))):
        raise InputError(
            f"starts_mm {a.shape} and ends_mm {b.shape}; allowed: equal (n, {grid.ndim}) arrays "
            "of finite coordinates (mm)"
        )
    h = np.asarray(grid.spacing_mm)
    s_max = 16 if grid.ndim == 2 else 6
    # sub-samples of <= r / 4 and <= h / 8 (the soft wall then blurs a cell's share little)
    s = int(min(s_max, max(8, math.ceil(4.0 * h.max() / r))))
    while s > 1 and grid.n_cells * s**grid.ndim > _MAX_SUBSAMPLES:
        s -= 1
    if h.max() / s <= r / 2:  # at least ~4 sub-samples across the lumen
        frac = _supersample(grid, a, b, r, s)
    else:  # too thin to sample: deposit the tube's volume along its centreline
        pts, dl = _centreline_points(grid, a, b, h.min() / 4)
        area = math.pi * r * r if grid.ndim == 3 else 2.0 * r
        vol = np.zeros(grid.shape)
        np.add.at(vol, _cell_index(grid, pts), area * dl)
        frac = np.minimum(vol / math.prod(h), 1.0)
    mask = frac >= 0.5
    if len(a):
        pts, _ = _centreline_points(grid, a, b, h.min() / 4)
        inside = np.all((pts >= 0) & (pts <= np.asarray(grid.extent_mm)), axis=1)
        mask[_cell_index(grid, pts[inside])] = True
    return VesselNetwork(grid, a, b, r, frac, mask)


def _supersample(grid: Grid, a: np.ndarray, b: np.ndarray, r: float, s: int) -> np.ndarray:
    """Fraction of each cell within r of any segment, from s^n sub-samples per cell."""
    sub = np.asarray(grid.spacing_mm) / s
    fine_shape = tuple(n * s for n in grid.shape)
    occ = np.zeros(fine_shape, dtype=np.float32)
    # Soft wall: coverage falls linearly over two sub-samples across the wall, which a midpoint
    # rule integrates smoothly. Across a 3-D tube that ramp adds pi w^2 / 12 to the disc area
    # (integrate the ramp over the annulus), so the wall sits at r_eff^2 = r^2 - w^2 / 12.
    width = 2.0 * float(np.sqrt(np.mean(sub**2)))
    r_wall = math.sqrt(r * r - width * width / 12) if grid.ndim == 3 else r
    reach = r_wall + width / 2
    lo = np.floor((np.minimum(a, b) - reach) / sub - 0.5).astype(int) + 1
    hi = np.floor((np.maximum(a, b) + reach) / sub - 0.5).astype(int) + 1
    lo = np.clip(lo, 0, fine_shape)
    hi = np.clip(hi, 0, fine_shape)
    for i in range(len(a)):
        if np.any(hi[i] <= lo[i]):
            continue
        axes = [(np.arange(lo[i, d], hi[i, d]) + 0.5) * sub[d] for d in range(grid.ndim)]
        x = np.meshgrid(*axes, indexing="ij", sparse=True)
        ab = b[i] - a[i]
        ab2 = float(ab @ ab)
        rel = [xd - a[i, d] for d, xd in enumerate(x)]
        t = sum(rd * ab[d] for d, rd in enumerate(rel)) / ab2 if ab2 > 0 else 0.0
        t = np.clip(t, 0.0, 1.0)
        d2 = sum((rd - t * ab[d]) ** 2 for d, rd in enumerate(rel))
        box = tuple(slice(lo[i, d], hi[i, d]) for d in range(grid.ndim))
        cover = np.clip((r_wall - np.sqrt(d2)) / width + 0.5, 0.0, 1.0)
        np.maximum(occ[box], cover, out=occ[box])
    split = [v for n in grid.shape for v in (n, s)]
    return occ.reshape(split).mean(axis=tuple(range(1, 2 * grid.ndim, 2)), dtype=np.float64)


def _grow(grid, rho, d, tortuosity, inlets, n_inlets, rng) -> tuple[np.ndarray, np.ndarray]:
    """Space colonisation (module docs): node positions and parent indices (-1 at inlets)."""
    ext = np.asarray(grid.extent_mm)
    ndim = grid.ndim

    def rho_at(p):
        return rho[_cell_index(grid, p)]

    # attractors with intensity 8 rho^3 / d^n, by cell then uniformly within the cell
    weight = (rho / rho.max()) ** _DENSITY_EXPONENT
    mean_n = _ATTRACTORS_PER_D_N * rho.max() ** _DENSITY_EXPONENT / d**ndim
    counts = rng.poisson(weight.reshape(-1) * mean_n * math.prod(grid.spacing_mm))
    cells = np.repeat(np.arange(grid.n_cells), counts)
    corner = np.stack(np.unravel_index(cells, grid.shape), axis=1).astype(float)
    attr = (corner + rng.uniform(size=corner.shape)) * np.asarray(grid.spacing_mm)
    if inlets is None:  # points on the domain faces where rho > 0, faces chosen by area
        pts = []
        for _ in range(1000):
            p = rng.uniform(size=(64, ndim)) * ext
            face = rng.integers(0, ndim, 64)
            p[np.arange(64), face] = rng.integers(0, 2, 64) * ext[face]
            pts.extend(p[rho_at(p) > 0])
            if len(pts) >= n_inlets:
                break
        if len(pts) < n_inlets:
            raise InputError(
                "the vessel density is 0 on the domain faces; give inlets_mm for the feeding vessels"
            )
        inlets = np.asarray(pts[:n_inlets])
    nodes, parent, children = inlets.copy(), np.full(len(inlets), -1), np.zeros(len(inlets), int)
    best_d, best_i = np.full(len(attr), np.inf), np.zeros(len(attr), int)
    alive, start, step = np.ones(len(attr), bool), 0, d / 4
    for _ in range(100_000):
        idx = np.flatnonzero(alive)
        dist, near = cKDTree(nodes[start:]).query(attr[idx])  # only new nodes can be nearer
        closer = dist < best_d[idx]
        best_d[idx[closer]], best_i[idx[closer]] = dist[closer], near[closer] + start
        alive[idx[best_d[idx] < d / 2]] = False
        idx = np.flatnonzero(alive)
        if idx.size == 0:
            break
        pull = attr[idx] - nodes[best_i[idx]]
        pull /= np.maximum(np.linalg.norm(pull, axis=1, keepdims=True), 1e-300)
        grower, inv = np.unique(best_i[idx], return_inverse=True)
        dirs = np.stack([np.bincount(inv, pull[:, k], len(grower)) for k in range(ndim)], 1)
        dirs /= np.maximum(np.linalg.norm(dirs, axis=1, keepdims=True), 1e-300)
        jitter = rng.standard_normal(dirs.shape)
        dirs += tortuosity * jitter / np.linalg.norm(jitter, axis=1, keepdims=True)
        new = nodes[grower] + step * dirs / np.linalg.norm(dirs, axis=1, keepdims=True)
        ok = np.all((new >= 0) & (new <= ext), axis=1) & (children[grower] < _MAX_CHILDREN)
        ok[ok] = rho_at(new[ok]) > 0  # never grow into avascular tissue
        if not ok.any():
            break
        start = len(nodes)
        children[grower[ok]] += 1
        nodes = np.concatenate([nodes, new[ok]])
        parent = np.concatenate([parent, grower[ok]])
        children = np.concatenate([children, np.zeros(int(ok.sum()), int)])
    return nodes, parent


def _retract(nodes, parent, target_mm: float, rng) -> np.ndarray:
    """Remove random terminal segments until the total length is `target_mm` (to one segment);
    returns the kept-node mask."""
    seg = np.zeros(len(nodes))
    has = parent >= 0
    seg[has] = np.linalg.norm(nodes[has] - nodes[parent[has]], axis=1)
    keep = np.ones(len(nodes), bool)
    children = np.bincount(parent[has], minlength=len(nodes))
    excess = seg.sum() - target_mm
    while excess > 0:
        leaves = np.flatnonzero(keep & has & (children == 0))
        if leaves.size == 0:
            break
        leaves = rng.permutation(leaves)
        n = int(np.searchsorted(np.cumsum(seg[leaves]), excess)) + 1
        cut = leaves[:n]
        keep[cut] = False
        np.subtract.at(children, parent[cut], 1)
        excess -= seg[cut].sum()
    return keep


def vessel_network(
    grid: Grid,
    key,
    *,
    intervessel_distance_mm: float | None = None,
    vessel_density_per_mm2: float | None = None,
    radius_mm: float = 0.01,
    density=None,
    n_feeding_vessels: int = 4,
    inlets_mm=None,
    tortuosity: float = 0.3,
) -> VesselNetwork:
    """A procedural branching vessel network and its lumen partial-volume map (module docs).

    **Arguments:**
    - `grid`: 2-D or 3-D [`Grid`][twinjax.pde.Grid]. `key`: a `jax.random` key or numpy
      Generator (the same key gives the same network).
    - `intervessel_distance_mm`: d (mm): the length density is ``rho / d^(n-1)``, that of a
      parallel array of vessels d apart. Or, in 3-D only, `vessel_density_per_mm2`: the
      microvessel density of histological sections (``d = 1 / sqrt(2 MVD)``).
    - `radius_mm`: lumen radius (mm); default 0.01 mm, a capillary-sized vessel.
    - `density`: relative vessel density map >= 0 (1 = the nominal d); 0 in a necrotic core keeps
      vessels out, 0.3 in fibrosis thins them. Default 1 everywhere.
    - `n_feeding_vessels`: vessels entering through the domain faces (where density > 0), or
      `inlets_mm` ((k, ndim) entry points, mm).
    - `tortuosity`: weight of the random direction added to each growth step (0 to 1).

    **Returns:** a [`VesselNetwork`][twinjax.pde.VesselNetwork].
    """
    _check_network_grid(grid)
    if (intervessel_distance_mm is None) == (vessel_density_per_mm2 is None):
        raise InputError(
            "give exactly one of intervessel_distance_mm and vessel_density_per_mm2; got "
            f"{intervessel_distance_mm!r} and {vessel_density_per_mm2!r}"
        )
    if vessel_density_per_mm2 is not None:
        if grid.ndim != 3:
            raise InputError(
                "vessel_density_per_mm2 describes sections of a 3-D network; on a 2-D grid give "
                "intervessel_distance_mm"
            )
        mvd = _positive("vessel_density_per_mm2", vessel_density_per_mm2, "1/mm^2")
        intervessel_distance_mm = 1.0 / math.sqrt(2.0 * mvd)
    d = _positive("intervessel_distance_mm", intervessel_distance_mm, "mm")
    rho = grid.check_field("density", 1.0 if density is None else density, nonnegative=True)
    if not rho.any():
        raise InputError("density is 0 everywhere; allowed: > 0 in some cells")
    t = float(tortuosity)
    if not (math.isfinite(t) and 0.0 <= t <= 1.0):
        raise InputError(f"tortuosity = {tortuosity!r}; allowed: 0 to 1")
    if inlets_mm is not None:
        inlets = np.asarray(inlets_mm, dtype=float).reshape(-1, grid.ndim)
        ext = np.asarray(grid.extent_mm)
        if not (len(inlets) and np.all((inlets >= 0) & (inlets <= ext))):
            raise InputError(
                f"inlets_mm = {inlets_mm!r}; allowed: (k, {grid.ndim}) points inside the grid"
            )
    else:
        inlets = None
        if int(n_feeding_vessels) != n_feeding_vessels or n_feeding_vessels < 1:
            raise InputError(f"n_feeding_vessels = {n_feeding_vessels!r}; allowed: >= 1")
    rng = _numpy_rng(key)
    nodes, parent = _grow(grid, rho, d, t, inlets, int(n_feeding_vessels), rng)
    target = float(rho.sum()) * math.prod(grid.spacing_mm) / d ** (grid.ndim - 1)
    keep = _retract(nodes, parent, target, rng)
    child = np.flatnonzero(keep & (parent >= 0))
    return render_vessels(grid, nodes[parent[child]], nodes[child], radius_mm)


def _mask_or_scalar(grid: Grid, name: str, value) -> np.ndarray:
    arr = np.asarray(value)
    if arr.ndim == 0:
        if arr.dtype != bool and arr not in (0, 1):
            raise InputError(f"{name} = {value!r}; allowed: booleans or 0/1")
        return np.full(grid.shape, bool(arr))
    return _optional_mask(grid, name, arr, False)


class TissueMaps(eqx.Module):
    """The tissue of a twin on a grid: named maps, validated on construction.

    **Fields:** `grid`; `tumour` (boolean, non-empty); `vascular_fraction` (lumen volume
    fraction, 0 to 1); `perfusion_per_h` (plasma-to-tissue exchange rate, 1/h, >= 0);
    `diffusivity_scale` (multiplies a free-tissue diffusivity, >= 0); `fibrosis`, `necrosis`,
    `vessels` (boolean); `cellularity` (tumour-cell volume fraction, 0 to 1);
    `target_density_nmol_per_L` (receptor density, nmol/L of tissue, >= 0); `target` (its name,
    static). Maps are float64 / bool jax arrays of `grid.shape`; scalars are broadcast. Every
    field but `grid` and `tumour` has a neutral default (no vessels, no perfusion, diffusivity
    scale 1, no fibrosis or necrosis, cellularity 0, no target), so maps loaded from images can
    be combined with procedural ones.

    ```python
    maps = TissueMaps(grid, tumour=load_map("tumour.nii.gz", grid, name="tumour") > 0,
                      target_density_nmol_per_L=load_map("psma.nii.gz", grid, name="psma"))
    op = Diffusion(grid, maps.diffusivity_mm2_per_h(0.5))
    ```
    """

    grid: Grid
    tumour: Bool[Array, " *shape"]
    vascular_fraction: Float[Array, " *shape"]
    perfusion_per_h: Float[Array, " *shape"]
    diffusivity_scale: Float[Array, " *shape"]
    fibrosis: Bool[Array, " *shape"]
    necrosis: Bool[Array, " *shape"]
    vessels: Bool[Array, " *shape"]
    cellularity: Float[Array, " *shape"]
    target_density_nmol_per_L: Float[Array, " *shape"]
    target: str = eqx.field(static=True)

    def __init__(
        self,
        grid: Grid,
        *,
        tumour,
        vascular_fraction=0.0,
        perfusion_per_h=0.0,
        diffusivity_scale=1.0,
        fibrosis=False,
        necrosis=False,
        vessels=False,
        cellularity=0.0,
        target_density_nmol_per_L=0.0,
        target: str = "PSMA",
    ):
        if not isinstance(grid, Grid):
            raise InputError(f"grid = {grid!r}; allowed: a twinjax.pde.Grid")
        self.grid = grid
        self.tumour = jnp.asarray(grid.check_mask("tumour", tumour))
        for name, value in (("vascular_fraction", vascular_fraction), ("cellularity", cellularity)):
            arr = grid.check_field(name, value, nonnegative=True)
            if arr.max() > 1.0:
                raise InputError(f"{name} has max {float(arr.max())!r}; allowed: <= 1 (a fraction)")
            setattr(self, name, jnp.asarray(arr))
        for name, value in (
            ("perfusion_per_h", perfusion_per_h),
            ("diffusivity_scale", diffusivity_scale),
            ("target_density_nmol_per_L", target_density_nmol_per_L),
        ):
            setattr(self, name, jnp.asarray(grid.check_field(name, value, nonnegative=True)))
        for name, value in (("fibrosis", fibrosis), ("necrosis", necrosis), ("vessels", vessels)):
            setattr(self, name, jnp.asarray(_mask_or_scalar(grid, name, value)))
        if not isinstance(target, str) or not target:
            raise InputError(f"target = {target!r}; allowed: a non-empty name, e.g. 'PSMA'")
        self.target = target

    @property
    def tissue_class(self) -> Int[Array, " *shape"]:
        """Labels per cell, indices into `TISSUE_CLASSES`: 0 outside the tumour, 1 viable
        tumour, 2 fibrotic, 3 necrotic, 4 vessel (later classes win where masks overlap)."""
        label = jnp.where(self.tumour, 1, 0)
        label = jnp.where(self.fibrosis, 2, label)
        label = jnp.where(self.necrosis, 3, label)
        return jnp.where(self.vessels, 4, label).astype(jnp.int32)

    def diffusivity_mm2_per_h(self, free_diffusivity_mm2_per_h) -> Float[Array, " *shape"]:
        """The diffusivity map (mm^2/h): a free-tissue value times `diffusivity_scale`."""
        return jnp.asarray(free_diffusivity_mm2_per_h, dtype=float) * self.diffusivity_scale


def synthetic_tumour(
    grid: Grid,
    key,
    *,
    radius_mm: float,
    centre_mm=None,
    necrotic_radius_mm: float | None = None,
    fibrosis_fraction: float = 0.15,
    fibrosis_correlation_length_mm: float | None = None,
    intervessel_distance_mm: float | None = None,
    vascular_volume_fraction: float = 0.05,
    normal_vessel_density: float = 0.5,
    fibrotic_vessel_density: float = 0.3,
    fibrotic_diffusivity_scale: float = 0.5,
    necrotic_diffusivity_scale: float = 1.5,
    mean_perfusion_mL_per_min_per_mL: float = 0.5,
    target: str = "PSMA",
    mean_density_nmol_per_L: float | None = None,
    expression_cv: float = 0.5,
    expression_correlation_length_mm: float | None = None,
    n_feeding_vessels: int = 4,
    tortuosity: float = 0.3,
) -> TissueMaps:
    """A coherent procedural tumour: a ball of `radius_mm` with a necrotic core, fibrotic
    patches, a vessel network that avoids the core and thins in fibrosis, perfusion from the
    vessels, a Beta-distributed cellularity and a correlated target-expression map.

    Construction: tumour = ball(`centre_mm`, `radius_mm`); necrosis = ball(`necrotic_radius_mm`,
    default 0.3 radius; 0 for none); fibrosis = `fibrosis_fraction` of the viable tumour
    (`fibrosis_patches`, correlation length default radius / 5); relative vessel density 1 in
    viable tumour, `fibrotic_vessel_density` in fibrosis, 0 in necrosis and
    `normal_vessel_density` outside; `vessel_network` with d = `intervessel_distance_mm`
    (default 3 grid spacings: resolved meso-scale vessels, the capillary bed being in the
    perfusion) and the radius that gives `vascular_volume_fraction` at density 1 (``pi r^2 / d^2``
    in 3-D, ``2 r / d`` in 2-D; default 0.05, the tumour vascular fraction of Fele-Paranj et al.
    2024 / Kletting et al. 2016); perfusion scaled to a tumour mean of
    `mean_perfusion_mL_per_min_per_mL` (`perfusion_map`); diffusivity scale 1, times
    `fibrotic_diffusivity_scale` in fibrosis (dense matrix hinders transport) and
    `necrotic_diffusivity_scale` in necrosis (no cells in the way); cellularity (`cellularity`
    defaults); target density (`target_expression`, zero in necrosis and outside the tumour)
    modulated by cellularity / its mean for the epithelial targets PSMA and GRPR, and by the
    stromal fraction (1 - cellularity) / its mean for FAP, which cancer-associated fibroblasts
    carry. Vessel densities and diffusivity scales are illustrative defaults.

    **Returns:** [`TissueMaps`][twinjax.pde.TissueMaps].
    """
    r = _positive("radius_mm", radius_mm, "mm")
    centre = np.asarray(grid.extent_mm) / 2 if centre_mm is None else centre_mm
    rn = 0.3 * r if necrotic_radius_mm is None else float(necrotic_radius_mm)
    if not (math.isfinite(rn) and 0 <= rn < r):
        raise InputError(
            f"necrotic_radius_mm = {necrotic_radius_mm!r}; allowed: 0 <= it < radius_mm"
        )
    d = 3 * max(grid.spacing_mm) if intervessel_distance_mm is None else intervessel_distance_mm
    d = _positive("intervessel_distance_mm", d, "mm")
    fv = float(vascular_volume_fraction)
    if not (math.isfinite(fv) and 0 < fv < 1):
        raise InputError(
            f"vascular_volume_fraction = {vascular_volume_fraction!r}; allowed: 0 to 1"
        )
    for name, v in (
        ("normal_vessel_density", normal_vessel_density),
        ("fibrotic_vessel_density", fibrotic_vessel_density),
        ("fibrotic_diffusivity_scale", fibrotic_diffusivity_scale),
        ("necrotic_diffusivity_scale", necrotic_diffusivity_scale),
    ):
        if not (math.isfinite(float(v)) and float(v) >= 0):
            raise InputError(f"{name} = {v!r}; allowed: finite and >= 0")
    # numpy streams throughout: the procedural maps need no compilation
    k_fib, k_vessel, k_cell, k_target = _split(_numpy_rng(key), 4)

    tumour = necrotic_core(grid, centre, r)
    necrosis = necrotic_core(grid, centre, rn) if rn > 0 else np.zeros(grid.shape, bool)
    viable = tumour & ~necrosis
    ell_f = r / 5 if fibrosis_correlation_length_mm is None else fibrosis_correlation_length_mm
    fibrosis = fibrosis_patches(grid, fibrosis_fraction, ell_f, k_fib, region=viable)

    density = np.where(tumour, 1.0, float(normal_vessel_density))
    density = np.where(fibrosis, float(fibrotic_vessel_density), density)
    density = np.where(necrosis, 0.0, density)
    radius = math.sqrt(fv * d * d / math.pi) if grid.ndim == 3 else fv * d / 2
    net = vessel_network(
        grid,
        k_vessel,
        intervessel_distance_mm=d,
        radius_mm=radius,
        density=density,
        n_feeding_vessels=n_feeding_vessels,
        tortuosity=tortuosity,
    )
    perfusion = perfusion_map(
        grid,
        net.vascular_fraction,
        mean_perfusion_mL_per_min_per_mL=mean_perfusion_mL_per_min_per_mL,
        region=tumour,
    )
    scale = np.where(fibrosis, float(fibrotic_diffusivity_scale), 1.0)
    scale = np.where(necrosis, float(necrotic_diffusivity_scale), scale)
    cell = cellularity(
        grid,
        k_cell,
        tumour=tumour,
        necrosis=necrosis,
        fibrosis=fibrosis,
        correlation_length_mm=ell_f,
    )
    mean_cell = float(cell[viable].mean()) if viable.any() else 1.0
    if target == "FAP":
        modulation = np.where(viable, (1.0 - cell) / max(1.0 - mean_cell, 1e-12), 0.0)
    else:
        modulation = np.where(viable, cell / max(mean_cell, 1e-12), 0.0)
    ell_e = r / 5 if expression_correlation_length_mm is None else expression_correlation_length_mm
    rho = target_expression(
        grid,
        k_target,
        target=target,
        mean_density_nmol_per_L=mean_density_nmol_per_L,
        cv=expression_cv,
        correlation_length_mm=ell_e,
        necrosis=necrosis,
        region=tumour,
        modulation=modulation,
    )
    return TissueMaps(
        grid,
        tumour=tumour,
        vascular_fraction=net.vascular_fraction,
        perfusion_per_h=perfusion,
        diffusivity_scale=scale,
        fibrosis=fibrosis,
        necrosis=necrosis,
        vessels=net.mask,
        cellularity=cell,
        target_density_nmol_per_L=np.asarray(rho),
        target=target,
    )
