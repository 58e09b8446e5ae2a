"""PET biomarkers of a lesion, and their link to the tissue truth that produced them.

**SUV.** ``SUV = C / (A / W)`` with ``C`` the decay-corrected activity concentration (Bq/mL),
``A`` the injected activity (Bq) and ``W`` the body weight (g), taking 1 g/mL for tissue so SUV
is dimensionless (Thie 2004, J Nucl Med 45:1431). Images from
[`counts_to_image`][twinjax.imaging.synth.counts_to_image] are decay-corrected to the
administration, the time `A` refers to.

**Uptake.** `suv_max` and `suv_mean` over a volume of interest (VOI); `suv_peak`, the largest
mean SUV in a sphere of 1 mL (diameter 12.4 mm, "1.2 cm" in PERCIST) centred on a voxel of the
VOI (Wahl et al. 2009, J Nucl Med 50 Suppl 1:122S). Voxels count by the fraction of them inside
the sphere, so SUVpeak is accurate on 4 mm voxels too; where the sphere leaves the image, the
mean is over its part inside.

**Volume.** `segment`: the voxels of the VOI at or above 41 % of its SUVmax (the fixed relative
threshold of the EANM guideline, Boellaard et al. 2015, Eur J Nucl Med Mol Imaging 42:328) or
above a fixed SUV (2.5 is the common choice); `mtv` (mL) is their volume and
``TLG = SUVmean(MTV) * MTV`` (g) the total lesion glycolysis.

**Heterogeneity** (in the segmented tumour, on NumPy, not differentiable):
- coefficient of variation ``std / mean``;
- histogram entropy ``-sum p_k log2 p_k`` (bits) of SUVs discretised with a fixed bin width
  (0.25 SUV by default; fixed widths keep SUV meaning across lesions, Leijenaar et al. 2015,
  Sci Rep 5:11075);
- AUC-CSH, the area under the cumulative SUV-volume histogram (fraction of the volume above
  ``x * SUVmax`` for x in [0, 1]; van Velden et al. 2011, Eur J Nucl Med Mol Imaging 38:1636).
  It equals ``mean(SUV) / SUVmax`` exactly: 1 for a uniform lesion, lower when heterogeneous;
- grey-level co-occurrence (GLCM) contrast ``sum (i - j)^2 P_ij`` and homogeneity (inverse
  difference moment) ``sum P_ij / (1 + (i - j)^2)`` (Haralick et al. 1973, IEEE Trans Syst Man
  Cybern 3:610), over the 1/4/13 nearest-neighbour directions in 1-/2-/3-D, averaged over
  directions (the IBSI "averaged" aggregation, Zwanenburg et al. 2020, Radiology 295:328), on the
  same fixed-bin-width discretisation.

**What biology does a biomarker measure?** `link_to_truth` ranks, over a set of simulated cases,
each biomarker against each tissue-truth quantity (hypoxic fraction, necrotic fraction, receptor
density, ...) by Spearman's rho: the simulation-based analysis of Cavinato et al. 2025 (Eur J
Nucl Med Mol Imaging 52:1708).

Images here are one lesion's 1-D, 2-D or 3-D SUV map (batch with `vmap`); masks are boolean
arrays of the image's shape (``None`` for the whole image). Units: SUV dimensionless (g/mL),
volume mL, TLG g, length mm.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import warnings
from collections.abc import Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from scipy import stats

from .. import units
from .._errors import InputError

__all__ = [
    "TruthLinks",
    "auc_csh",
    "biomarkers",
    "coefficient_of_variation",
    "glcm_features",
    "histogram_entropy",
    "link_to_truth",
    "mtv",
    "segment",
    "suv",
    "suv_max",
    "suv_mean",
    "suv_peak",
    "tlg",
]

#: EANM relative threshold for the metabolic tumour volume (Boellaard et al. 2015).
EANM_THRESHOLD = 0.41
#: PERCIST SUVpeak sphere volume (mL) (Wahl et al. 2009).
PERCIST_PEAK_VOLUME_ML = 1.0


def _traced(x) -> bool:
    return any(isinstance(v, jax.core.Tracer) for v in jax.tree.leaves(x))


def _positive_scalar(name: str, value, unit: str) -> None:
    if _traced(value):
        return
    v = np.asarray(value, dtype=float)
    if not np.all(np.isfinite(v) & (v > 0)):
        raise InputError(f"{name} = {value!r}; allowed: finite and > 0 ({unit})")


def _image(name: str, value):
    x = jnp.asarray(value)
    x = x if jnp.issubdtype(x.dtype, jnp.floating) else x.astype(float)
    if not 1 <= x.ndim <= 3:
        raise InputError(f"{name} has shape {x.shape}; allowed: a 1-D, 2-D or 3-D image")
    if not _traced(value) and not np.all(np.isfinite(np.asarray(x))):
        bad = int(np.sum(~np.isfinite(np.asarray(x))))
        raise InputError(f"{name} has {bad} NaN or infinite voxels; allowed: finite values")
    return x


def _mask(mask, shape):
    if mask is None:
        return jnp.ones(shape, dtype=bool)
    if _traced(mask):
        return jnp.asarray(mask, dtype=bool)
    m = np.asarray(mask)
    if m.shape != shape:
        raise InputError(f"mask has shape {m.shape}; allowed: the image's shape {shape}")
    if m.dtype != bool:
        if not np.all(np.isin(m, (0, 1))):
            raise InputError("mask is not binary; allowed: booleans or 0/1")
        m = m.astype(bool)
    if not m.any():
        raise InputError("mask is empty; allowed: at least one voxel inside")
    return jnp.asarray(m)


def _spacing(spacing_mm, ndim: int) -> tuple[float, ...]:
    h = np.atleast_1d(np.asarray(spacing_mm, dtype=float))
    if h.size == 1:
        h = np.full(ndim, h[0])
    if h.shape != (ndim,) or not np.all(np.isfinite(h) & (h > 0)):
        raise InputError(
            f"spacing_mm = {spacing_mm!r}; allowed: finite > 0 (mm), one value or {ndim}"
        )
    return tuple(float(v) for v in h)


def suv(image_Bq_per_mL, injected_activity_MBq, body_weight_kg):
    """Standardised uptake value ``C / (A / W)`` (module docs; 1 g/mL).

    **Arguments:** `image_Bq_per_mL` decay-corrected to the administration (Bq/mL, any shape);
    `injected_activity_MBq` (MBq) and `body_weight_kg` (kg), > 0.
    """
    _positive_scalar("injected_activity_MBq", injected_activity_MBq, "MBq")
    _positive_scalar("body_weight_kg", body_weight_kg, "kg")
    x = jnp.asarray(image_Bq_per_mL)
    if not _traced(image_Bq_per_mL) and not np.all(np.isfinite(np.asarray(x))):
        raise InputError("image_Bq_per_mL has NaN or infinite voxels; allowed: finite values")
    x = x if jnp.issubdtype(x.dtype, jnp.floating) else x.astype(float)
    grams = body_weight_kg / units.G_TO_KG
    becquerel = injected_activity_MBq / units.BQ_TO_MBQ
    return x * (grams / becquerel)


def suv_max(suv_image, mask=None):
    """Largest SUV in the VOI `mask`."""
    x = _image("suv_image", suv_image)
    return jnp.max(jnp.where(_mask(mask, x.shape), x, -jnp.inf))


def suv_mean(suv_image, mask=None):
    """Mean SUV over the VOI `mask`."""
    x = _image("suv_image", suv_image)
    m = _mask(mask, x.shape)
    return jnp.sum(jnp.where(m, x, 0.0)) / jnp.sum(m.astype(x.dtype))


def _ball_weights(radius_mm: float, spacing: tuple[float, ...], shape) -> np.ndarray:
    """Fraction of each voxel inside a ball of `radius_mm` centred on the central voxel's centre:
    1/0 for voxels wholly inside/outside, 9^d-point midpoint sampling for those it cuts."""
    half = [min(math.ceil(radius_mm / h + 0.5), n - 1) for h, n in zip(spacing, shape, strict=True)]
    axes = [np.arange(-k, k + 1) * h for k, h in zip(half, spacing, strict=True)]
    centres = np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1)
    hh = np.asarray(spacing) / 2
    near = np.sqrt(np.sum(np.maximum(np.abs(centres) - hh, 0.0) ** 2, axis=-1))
    far = np.sqrt(np.sum((np.abs(centres) + hh) ** 2, axis=-1))
    w = (far <= radius_mm).astype(float)
    cut = (near < radius_mm) & (far > radius_mm)
    m = 9
    sub = (np.arange(m) + 0.5) / m - 0.5
    offsets = np.stack(np.meshgrid(*[sub * h for h in spacing], indexing="ij"), axis=-1).reshape(
        -1, len(spacing)
    )
    pts = centres[cut][:, None, :] + offsets[None]
    w[cut] = np.mean(np.sum(pts**2, axis=-1) <= radius_mm**2, axis=1)
    return w


def _correlate(x, kernel: np.ndarray):
    nd = x.ndim
    pad = [(k // 2, k // 2) for k in kernel.shape]
    out = lax.conv_general_dilated(
        x[None, None], jnp.asarray(kernel, dtype=x.dtype)[None, None], (1,) * nd, pad
    )
    return out[0, 0]


def suv_peak(suv_image, spacing_mm, mask=None, *, volume_mL: float = PERCIST_PEAK_VOLUME_ML):
    """PERCIST SUVpeak: the largest mean SUV in a ball of `volume_mL` (1 mL) centred on a voxel
    centre inside the VOI `mask` (module docs). In 2-D/1-D the ball is the disc/segment of the
    same radius, 6.2 mm for 1 mL.

    **Arguments:** `suv_image`; `spacing_mm` voxel size (mm); `mask` VOI of allowed centres.
    """
    x = _image("suv_image", suv_image)
    h = _spacing(spacing_mm, x.ndim)
    _positive_scalar("volume_mL", volume_mL, "mL")
    m = _mask(mask, x.shape)
    radius = (3.0 * volume_mL * 1e3 / (4.0 * math.pi)) ** (1.0 / 3.0)  # mm (1 mL = 1e3 mm^3)
    w = _ball_weights(radius, h, x.shape)
    inside = _correlate(jnp.ones_like(x), w)  # the ball's weight inside the image
    mean = _correlate(x, w) / inside
    return jnp.max(jnp.where(m, mean, -jnp.inf))


def segment(suv_image, mask=None, *, fraction_of_max=EANM_THRESHOLD, suv_threshold=None):
    """The metabolic tumour volume as a mask: voxels of the VOI with SUV at or above
    ``fraction_of_max * SUVmax`` (default 41 %, EANM) or, if given, at or above `suv_threshold`
    (absolute SUV, e.g. 2.5)."""
    x = _image("suv_image", suv_image)
    m = _mask(mask, x.shape)
    if suv_threshold is None:
        if not (isinstance(fraction_of_max, int | float) and 0 < fraction_of_max <= 1):
            raise InputError(f"fraction_of_max = {fraction_of_max!r}; allowed: 0 < f <= 1")
        level = fraction_of_max * jnp.max(jnp.where(m, x, -jnp.inf))
    else:
        _positive_scalar("suv_threshold", suv_threshold, "SUV")
        level = suv_threshold
    return m & (x >= level)


def mtv(suv_image, spacing_mm, mask=None, *, fraction_of_max=EANM_THRESHOLD, suv_threshold=None):
    """Metabolic tumour volume (mL) of `segment` (voxel volume from `spacing_mm`, mm; 1 mm on
    missing axes of 1-D/2-D images)."""
    seg = segment(suv_image, mask, fraction_of_max=fraction_of_max, suv_threshold=suv_threshold)
    voxel_mL = math.prod(_spacing(spacing_mm, seg.ndim)) * 1e-3
    return jnp.sum(seg.astype(_image("suv_image", suv_image).dtype)) * voxel_mL


def tlg(suv_image, spacing_mm, mask=None, *, fraction_of_max=EANM_THRESHOLD, suv_threshold=None):
    """Total lesion glycolysis ``SUVmean(MTV) * MTV`` (g)."""
    kw = {"fraction_of_max": fraction_of_max, "suv_threshold": suv_threshold}
    seg = segment(suv_image, mask, **kw)
    return suv_mean(suv_image, seg) * mtv(suv_image, spacing_mm, mask, **kw)


def _values(suv_image, mask) -> np.ndarray:
    x = np.asarray(_image("suv_image", suv_image))
    return x[np.asarray(_mask(mask, x.shape))]


def coefficient_of_variation(suv_image, mask=None) -> float:
    """``std / mean`` of the SUVs in `mask` (population std)."""
    v = _values(suv_image, mask)
    if v.mean() <= 0:
        raise InputError(f"mean SUV in the mask is {v.mean()!r}; allowed: > 0 for a CV")
    return float(v.std() / v.mean())


def _bins(v: np.ndarray, bin_width_suv: float) -> np.ndarray:
    _positive_scalar("bin_width_suv", bin_width_suv, "SUV")
    return np.floor(v / bin_width_suv).astype(np.int64)


def histogram_entropy(suv_image, mask=None, *, bin_width_suv: float = 0.25) -> float:
    """Shannon entropy (bits) of the SUV histogram in `mask`, bins of `bin_width_suv` from 0."""
    _, counts = np.unique(_bins(_values(suv_image, mask), bin_width_suv), return_counts=True)
    p = counts / counts.sum()
    return float(max(-np.sum(p * np.log2(p)), 0.0))


def auc_csh(suv_image, mask=None) -> float:
    """Area under the cumulative SUV-volume histogram, ``mean(max(SUV, 0)) / SUVmax``."""
    v = _values(suv_image, mask)
    if v.max() <= 0:
        raise InputError(f"SUVmax in the mask is {v.max()!r}; allowed: > 0 for AUC-CSH")
    return float(np.mean(np.maximum(v, 0.0)) / v.max())


def glcm_features(suv_image, mask=None, *, bin_width_suv: float = 0.25) -> dict[str, float]:
    """GLCM ``{"contrast", "homogeneity"}`` in `mask` (module docs): means over the neighbour
    pairs with both voxels in the mask, per direction, averaged over directions."""
    x = np.asarray(_image("suv_image", suv_image))
    m = np.asarray(_mask(mask, x.shape))
    g = _bins(x, bin_width_suv)
    contrast, homogeneity = [], []
    for d in itertools.product((-1, 0, 1), repeat=x.ndim):
        if next((c for c in d if c), 0) <= 0:  # one of each pair of opposite directions
            continue
        lo = tuple(slice(max(-c, 0), n - max(c, 0)) for c, n in zip(d, x.shape, strict=True))
        hi = tuple(slice(max(c, 0), n - max(-c, 0)) for c, n in zip(d, x.shape, strict=True))
        both = m[lo] & m[hi]
        if not both.any():
            continue
        diff = (g[lo] - g[hi])[both].astype(float)
        contrast.append(np.mean(diff**2))
        homogeneity.append(np.mean(1.0 / (1.0 + diff**2)))
    if not contrast:
        raise InputError("mask has no pair of neighbouring voxels; allowed: >= 2 adjacent voxels")
    return {"contrast": float(np.mean(contrast)), "homogeneity": float(np.mean(homogeneity))}


def biomarkers(
    image_Bq_per_mL,
    spacing_mm,
    injected_activity_MBq,
    body_weight_kg,
    mask=None,
    *,
    fraction_of_max=EANM_THRESHOLD,
    suv_threshold=None,
    bin_width_suv: float = 0.25,
) -> dict[str, float]:
    """All biomarkers of one lesion in the VOI `mask` of an image in Bq/mL (decay-corrected to
    the administration): ``SUVmax``, ``SUVpeak`` (centre in the VOI), and on the segmented MTV
    ``SUVmean``, ``MTV_mL``, ``TLG_g``, ``CV``, ``entropy_bits``, ``AUC_CSH``,
    ``GLCM_contrast``, ``GLCM_homogeneity``. Arguments as in the functions above."""
    s = suv(image_Bq_per_mL, injected_activity_MBq, body_weight_kg)
    s = _image("image_Bq_per_mL", s)
    kw = {"fraction_of_max": fraction_of_max, "suv_threshold": suv_threshold}
    seg = segment(s, mask, **kw)
    if not bool(jnp.any(seg)):
        raise InputError(f"no voxel of the VOI reaches the threshold SUV {suv_threshold!r}")
    glcm = glcm_features(s, seg, bin_width_suv=bin_width_suv)
    return {
        "SUVmax": float(suv_max(s, mask)),
        "SUVpeak": float(suv_peak(s, spacing_mm, mask)),
        "SUVmean": float(suv_mean(s, seg)),
        "MTV_mL": float(mtv(s, spacing_mm, mask, **kw)),
        "TLG_g": float(tlg(s, spacing_mm, mask, **kw)),
        "CV": coefficient_of_variation(s, seg),
        "entropy_bits": histogram_entropy(s, seg, bin_width_suv=bin_width_suv),
        "AUC_CSH": auc_csh(s, seg),
        "GLCM_contrast": glcm["contrast"],
        "GLCM_homogeneity": glcm["homogeneity"],
    }


@dataclasses.dataclass(frozen=True)
class TruthLinks:
    """Spearman correlations of biomarkers with tissue truth over `n_cases` cases.

    **Fields:** `rho[feature][truth]` and `p_value[feature][truth]` (two-sided; NaN where a
    column is constant), `n_cases`.
    """

    rho: dict[str, dict[str, float]]
    p_value: dict[str, dict[str, float]]
    n_cases: int

    def strongest(self, feature: str) -> tuple[str, float]:
        """The truth quantity `feature` tracks best (largest |rho|) and its rho."""
        if feature not in self.rho:
            raise InputError(f"feature {feature!r} is not known; known: {sorted(self.rho)}")
        row = {k: v for k, v in self.rho[feature].items() if math.isfinite(v)}
        if not row:
            return ("", math.nan)
        best = max(row, key=lambda k: abs(row[k]))
        return best, row[best]

    def table(self) -> str:
        """A plain-text table of rho (rows: biomarkers, columns: truth quantities)."""
        truths = list(next(iter(self.rho.values())))
        width = max(len(f) for f in self.rho)
        cols = [max(len(t), 6) + 2 for t in truths]
        lines = [" " * width + "".join(f"{t:>{c}}" for t, c in zip(truths, cols, strict=True))]
        for f, row in self.rho.items():
            cells = "".join(f"{row[t]:>{c}.3f}" for t, c in zip(truths, cols, strict=True))
            lines.append(f"{f:<{width}}" + cells)
        return "\n".join(lines)


def _columns(name: str, data) -> dict[str, np.ndarray]:
    """Rows (a sequence of mappings, one per case) or columns (a mapping of sequences)."""
    if isinstance(data, Mapping):
        cols = {str(k): np.asarray(v, dtype=float) for k, v in data.items()}
    elif isinstance(data, Sequence) and data and all(isinstance(r, Mapping) for r in data):
        keys = list(data[0])
        for i, r in enumerate(data):
            if list(r) != keys:
                raise InputError(f"{name}[{i}] has keys {sorted(r)}; allowed: {sorted(keys)}")
        cols = {str(k): np.asarray([r[k] for r in data], dtype=float) for k in keys}
    else:
        raise InputError(
            f"{name}: allowed: a list of dicts (one per case) or a dict of per-case sequences"
        )
    if not cols:
        raise InputError(f"{name} has no quantities")
    for k, v in cols.items():
        if v.ndim != 1:
            raise InputError(f"{name}[{k!r}] has shape {v.shape}; allowed: one value per case")
        if not np.all(np.isfinite(v)):
            i = int(np.flatnonzero(~np.isfinite(v))[0])
            raise InputError(f"{name}[{k!r}] is {v[i]!r} in case {i}; allowed: finite values")
    return cols


def link_to_truth(features_per_case, truth_per_case) -> TruthLinks:
    """Spearman's rho between each biomarker and each tissue-truth quantity across cases.

    **Arguments:** `features_per_case` and `truth_per_case`: a list of dicts (one per case, e.g.
    from [`biomarkers`][]) or a dict of per-case sequences, the same cases in the same order
    (>= 3).

    **Returns:** [`TruthLinks`][]: ``links.rho["SUVmean"]["receptor_density"]``,
    ``links.strongest("CV")``, ``print(links.table())``.
    """
    f = _columns("features_per_case", features_per_case)
    t = _columns("truth_per_case", truth_per_case)
    n = {len(v) for v in (*f.values(), *t.values())}
    if len(n) != 1:
        raise InputError(f"features and truth have different numbers of cases: {sorted(n)}")
    (n_cases,) = n
    if n_cases < 3:
        raise InputError(f"{n_cases} cases; allowed: >= 3 for a rank correlation")
    rho: dict[str, dict[str, float]] = {}
    pv: dict[str, dict[str, float]] = {}
    for fk, fv in f.items():
        rho[fk], pv[fk] = {}, {}
        for tk, tv in t.items():
            if np.ptp(fv) == 0 or np.ptp(tv) == 0:  # a constant column has no ranks
                rho[fk][tk], pv[fk][tk] = math.nan, math.nan
                continue
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", stats.ConstantInputWarning)
                r = stats.spearmanr(fv, tv)
            rho[fk][tk], pv[fk][tk] = float(r.statistic), float(r.pvalue)
    return TruthLinks(rho, pv, n_cases)
