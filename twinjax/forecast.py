"""Forecasts: posterior draws x treatment scenarios -> distributions of absorbed dose, BED, EQD2,
NTCP and TCP per region.

Every posterior draw is one plausible patient; `forecast` runs each draw through each scenario's
schedule with the repair integrals carried in the model's ODE
([`twinjax.radiobiology.bed_from_model`][]), so dose and BED come from the draw's own
dose-rate curve with the exact Lea-Catcheside factor, cycles with incomplete repair between
them. Draws are `vmap`-ped and compiled once per structure (template, regions, tolerances,
number of administrations, nuclide): scenarios that differ only in activities, times or ligand
amounts share one compiled function, kept across calls. Each region's S-value is
the self-dose of a sphere of its mass (`twinjax.dosimetry.sphere_s_value`, the scenario's
nuclide and its chain); alpha particles are RBE-weighted for BED (physical dose is reported
separately). The result keeps every draw, so any summary can be computed: credible intervals
(`Forecast.summary`) and exceedance probabilities (`Forecast.exceedance`, e.g. P(kidney BED >
40 Gy)).

Per region and draw: ``tia_MBqh``, ``dose_Gy``, ``bed_Gy``, ``eqd2_Gy``, ``g``; NTCP (LKB) for
organs; surviving fraction ``exp(-alpha BED)`` and TCP for tumours. Regions with a
`Region.centroid_mm` also receive the photon cross-dose of the others that have one
(`twinjax.dosimetry.photon_cross_s_value` of the centroid distance): it rides in the model's
ODE with the self-dose (`bed_from_model(cross_s_values=...)`), so BED stays exact.

- **Voxels.** A region with `Region.voxel_mm` is also forecast voxel by voxel: its activity is
  spread over its voxels as `Region.uptake_map` says (default: uniformly over a ball of its
  volume), convolved with the voxel S-value kernel of the scenario's nuclide, and scaled so
  that the region's mean dose is the draw's dose. All voxels of a region share its time course,
  so a voxel with relative dose r has dose ``r D`` and ``BED = r D_w + r^2 (BED - D_w)`` (D_w:
  the RBE-weighted dose) exactly. Adds ``dose_min_Gy``, ``dose_d98_Gy``, ``dose_d90_Gy``,
  ``dose_d50_Gy``, ``dose_d2_Gy`` and the same for BED per draw (``Dx``: the minimum of the
  hottest x % of the voxels, as `twinjax.dosimetry.dose_metrics`); `Forecast.dvh` gives the cumulative
  dose-volume histogram with its credible band.
- **Tumour response.** A tumour region with `Region.growth` ([`TumourGrowth`][]) gets lesion
  volume and marker curves per draw from the response ODE riding in the model's ODE
  ([`twinjax.radiobiology.response_from_model`][]), the time to progression ``ttp_h`` and
  `Forecast.progression_free_survival`.
- **Uncertainty budget.** `Forecast.uncertainty_budget` splits each region's dose variance into
  kinetics (the posterior's TIA spread), calibration, segmented mass and S-value
  ([`twinjax.dosimetry.dose_uncertainty_budget`][]).

Units: dose, BED, EQD2 Gy; TIA MBq h; time h; volume mL; probabilities in [0, 1].
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Mapping, Sequence
from typing import Literal

import jax
import jax.numpy as jnp
import numpy as np

from ._compiled import CompiledCache
from ._errors import InputError
from .dosimetry import (
    dose_map,
    dose_metrics,
    dose_uncertainty_budget,
    photon_cross_s_value,
    reference_mass_kg,
    sphere_s_value,
    voxel_s_kernel,
)
from .models.library import Template
from .nuclides import nuclide
from .radiobiology import (
    Tissue,
    bed_from_model,
    ntcp_lkb,
    progression_free_survival,
    response_from_model,
    tcp,
    time_to_progression,
)
from .schedule import Schedule
from .tandem import Tandem

__all__ = ["Forecast", "Region", "Scenario", "TumourGrowth", "forecast"]

#: Organ density (kg/L) for masses from CT volumes: a typical soft-tissue value (ICRP 89 gives
#: 1.05 for the kidneys); pass `Region.mass_kg` where the organ's own density matters.
SOFT_TISSUE_KG_PER_L = 1.05


def _covariates(posterior) -> dict[str, float]:
    """The patient's covariates: from the fit's context (in memory) or the file's provenance."""
    ctx = getattr(posterior, "context", None)
    if ctx is not None and getattr(ctx, "patient", None) is not None:
        return dict(ctx.patient.covariates)
    return dict(getattr(posterior, "provenance", {}).get("covariates", {}) or {})


@dataclasses.dataclass(frozen=True)
class Scenario:
    """A treatment option: a `name`, its `schedule` (activities, cycles, interval, nuclide,
    ligand amount; a [`twinjax.Tandem`][] for several labels at once, e.g. 177Lu + 225Ac) and
    optionally the `template` of another label with the same kinetics and parameters (e.g.
    ``psma617_ac225_pbpk`` for 225Ac); by default the posterior's template. The template's
    model transports the ligand, whatever its label, so a Tandem uses it for every label."""

    name: str
    schedule: Schedule | Tandem
    template: Template | None = None

    def __post_init__(self):
        if not isinstance(self.schedule, Schedule | Tandem):
            raise InputError(
                f"scenario {self.name!r}: schedule must be a twinjax.Schedule or twinjax.Tandem, "
                f"got {type(self.schedule).__name__}"
            )


@dataclasses.dataclass(frozen=True)
class TumourGrowth:
    """Growth of a lesion for its response forecast (see
    [`twinjax.radiobiology.tumour_response`][]): untreated volume `doubling_time_h` (h),
    `growth` ``"gompertz"`` (with `carrying_capacity_mL`) or ``"exponential"``,
    `clearance_half_time_h` of lethally hit cells and `marker_half_life_h` of the burden marker.
    The baseline volume is the region's volume at unit density."""

    doubling_time_h: float
    growth: Literal["gompertz", "exponential"] = "gompertz"
    carrying_capacity_mL: float | None = None
    clearance_half_time_h: float = 72.0
    marker_half_life_h: float = 60.0


@dataclasses.dataclass(frozen=True)
class Region:
    """A region to forecast: its `tissue` (a [`twinjax.radiobiology.Tissue`][] or ``(alpha_beta_Gy,
    repair_half_time_h)``), `mass_kg` (default: the patient's CT volume of the region,
    covariate ``ct_volume_L_<region>``, at `SOFT_TISSUE_KG_PER_L`; else the ICRP 89 reference
    mass of the region's name)
    and `kind` (``"organ"``: NTCP where the tissue has LKB parameters; ``"tumour"``: TCP where it
    has alpha and a clonogen density, for the region's volume at unit density).

    Optional: `voxel_mm` (voxel edge, mm) for a voxel-level forecast, with `uptake_map` (3-D
    array of relative uptake >= 0 on that voxel grid, the region being its positive voxels,
    e.g. from a SPECT scan; default a ball of the region's volume, uniform); `growth` (a
    [`TumourGrowth`][], tumours only) for lesion volume curves; `centroid_mm` (x, y, z of the
    region's centre in the patient, mm): between regions that have one, the photon cross-dose
    of their centroid distance is added to dose and BED (module docs)."""

    tissue: Tissue | tuple[float, float]
    mass_kg: float | None = None
    kind: Literal["organ", "tumour"] = "organ"
    voxel_mm: float | None = None
    uptake_map: np.ndarray | None = dataclasses.field(default=None, repr=False, compare=False)
    growth: TumourGrowth | None = None
    centroid_mm: tuple[float, float, float] | None = None

    def __post_init__(self):
        if self.kind not in ("organ", "tumour"):
            raise InputError(f"Region.kind = {self.kind!r}; allowed: 'organ' or 'tumour'")
        if self.mass_kg is not None and not (np.isfinite(self.mass_kg) and self.mass_kg > 0):
            raise InputError(f"Region.mass_kg = {self.mass_kg!r}; allowed: finite and > 0 (kg)")
        if self.voxel_mm is not None and not (np.isfinite(self.voxel_mm) and self.voxel_mm > 0):
            raise InputError(f"Region.voxel_mm = {self.voxel_mm!r}; allowed: finite and > 0 (mm)")
        if self.uptake_map is not None:
            m = np.asarray(self.uptake_map, dtype=float)
            if self.voxel_mm is None:
                raise InputError("Region.uptake_map needs Region.voxel_mm (its voxel edge, mm)")
            if m.ndim != 3 or not np.all(np.isfinite(m)) or np.any(m < 0) or not np.any(m > 0):
                raise InputError(
                    f"Region.uptake_map has shape {m.shape}, min {np.nanmin(m) if m.size else None}"
                    "; allowed: a 3-D array, finite, >= 0, with at least one positive voxel"
                )
        if self.centroid_mm is not None:
            c = np.asarray(self.centroid_mm, dtype=float)
            if c.shape != (3,) or not np.all(np.isfinite(c)):
                raise InputError(
                    f"Region.centroid_mm = {self.centroid_mm!r}; allowed: three finite "
                    "coordinates (mm)"
                )
        if self.growth is not None:
            if self.kind != "tumour":
                raise InputError("Region.growth is for kind = 'tumour' regions only")
            if not isinstance(self.tissue, Tissue) or self.tissue.alpha_per_Gy is None:
                raise InputError(
                    f"Region.growth needs a tissue with alpha_per_Gy; got {self.tissue!r}"
                )


@functools.lru_cache(maxsize=32)
def _kernel(name: str, voxel_mm: float, rbe_alpha: float):
    """Voxel kernels are reused across scenarios, regions and forecasts (seconds each)."""
    return voxel_s_kernel(name, voxel_mm, rbe_alpha=rbe_alpha)


def _relative_voxel_dose(region: Region, mass_kg: float, nuclide: str, rbe_alpha: float):
    """Voxel doses of the region relative to its mean (mean 1), equal-volume voxels."""
    h = float(region.voxel_mm)
    if region.uptake_map is not None:
        uptake = np.asarray(region.uptake_map, dtype=float)
    else:  # a uniform ball of the region's volume at unit density
        radius = (3.0 * mass_kg * 1e6 / (4.0 * np.pi)) ** (1.0 / 3.0) / h  # in voxels
        n = int(np.ceil(radius)) + 1
        x = np.arange(-n, n + 1)
        r2 = x[:, None, None] ** 2 + x[None, :, None] ** 2 + x[None, None, :] ** 2
        uptake = (r2 <= radius**2).astype(float)
        if uptake.sum() < 1:
            uptake[n, n, n] = 1.0
    mask = uptake > 0
    kernel = _kernel(nuclide, h, float(rbe_alpha))
    d = np.asarray(dose_map(uptake / uptake.sum(), kernel))[mask]
    return d / d.mean()


_DOSE_METRICS = {"min": "min", "d98": "D98", "d90": "D90", "d50": "D50", "d2": "D2"}


@dataclasses.dataclass(frozen=True)
class Forecast:
    """Outcome draws: ``values[scenario][region][quantity]`` arrays ``(draws,)`` (module docs
    for the quantities); ``curves[scenario][region]`` lesion ``volume_mL`` and ``marker``
    ``(draws, T)`` at `times_h`; ``voxels[scenario][region]`` relative voxel doses (physical
    ``dose``, RBE-weighted ``weighted``); ``masses_kg`` per region and ``nuclides`` per
    scenario, as used."""

    values: dict[str, dict[str, dict[str, np.ndarray]]]
    n_draws: int
    masses_kg: dict[str, float] = dataclasses.field(default_factory=dict)
    nuclides: dict[str, str] = dataclasses.field(default_factory=dict)
    times_h: np.ndarray | None = None
    curves: dict[str, dict[str, dict[str, np.ndarray]]] = dataclasses.field(default_factory=dict)
    voxels: dict[str, dict[str, dict[str, np.ndarray]]] = dataclasses.field(default_factory=dict)

    def _get(self, scenario, region, quantity) -> np.ndarray:
        try:
            return self.values[scenario][region][quantity]
        except KeyError:
            raise InputError(
                f"no forecast for scenario {scenario!r}, region {region!r}, quantity "
                f"{quantity!r}; known scenarios {list(self.values)}"
            ) from None

    def summary(self, level: float = 0.9) -> dict:
        """Mean and central `level` credible interval of every quantity:
        ``{scenario: {region: {quantity: {"mean", "lower", "median", "upper"}}}}``. A
        quantity with infinite draws (``ttp_h`` of draws that never progress) reports
        quantiles only, and ``"mean": None``."""
        lo, hi = _band(level)
        out: dict = {}
        for s, regions in self.values.items():
            out[s] = {}
            for r, qs in regions.items():
                out[s][r] = {}
                for q, v in qs.items():
                    finite = bool(np.all(np.isfinite(v)))
                    # No interpolation between infinite draws (a time to progression beyond
                    # the horizon): the empirical quantile itself.
                    how = "linear" if finite else "inverted_cdf"
                    a, m, b = np.quantile(v, [lo, 0.5, hi], method=how)
                    out[s][r][q] = {
                        "mean": float(v.mean()) if finite else None,
                        "lower": float(a),
                        "median": float(m),
                        "upper": float(b),
                    }
        return out

    def exceedance(self, region: str, quantity: str, threshold: float) -> dict[str, float]:
        """P(quantity > threshold) in `region` for every scenario (fraction of draws)."""
        return {s: float(np.mean(self._get(s, region, quantity) > threshold)) for s in self.values}

    def dvh(self, scenario: str, region: str, *, quantity: str = "dose_Gy", bins=None,
            level: float = 0.9) -> dict[str, np.ndarray]:  # fmt: skip
        """Cumulative dose-volume (or BED-volume, ``quantity="bed_Gy"``) histogram of a
        voxel-level region: ``{"x", "median", "lower", "upper"}``, the fraction of the region's
        volume receiving at least x (Gy) with its central `level` band over the draws; `bins`
        x values (default 200 up to the hottest voxel of the 99th-percentile draw)."""
        v = self._voxel_values(scenario, region, quantity)
        x = np.linspace(0.0, np.quantile(v.max(axis=1), 0.99), 200) if bins is None else bins
        x = np.asarray(x, dtype=float)
        srt = np.sort(v, axis=1)
        frac = np.stack([1.0 - np.searchsorted(row, x, side="left") / row.size for row in srt])
        lo, hi = _band(level)
        a, m, b = np.quantile(frac, [lo, 0.5, hi], axis=0)
        return {"x": x, "median": m, "lower": a, "upper": b}

    def _voxel_values(self, scenario, region, quantity) -> np.ndarray:
        """Voxel values ``(draws, voxels)`` of `quantity` (``dose_Gy`` or ``bed_Gy``)."""
        vox = self.voxels.get(scenario, {}).get(region)
        if vox is None:
            raise InputError(
                f"region {region!r} of scenario {scenario!r} has no voxel forecast; allowed: "
                f"{sorted({r for v in self.voxels.values() for r in v})} (set Region.voxel_mm)"
            )
        return _voxel_values(self.values[scenario][region], vox, quantity)

    def volume_curves(self, scenario: str, region: str, level: float = 0.9) -> dict:
        """Median and central `level` band of the lesion volume (mL) and marker over
        `times_h`: ``{"times_h", "volume_mL": {"median", "lower", "upper"}, "marker": {...}}``."""
        c = self.curves.get(scenario, {}).get(region)
        if c is None:
            raise InputError(
                f"region {region!r} of scenario {scenario!r} has no response forecast; set "
                "Region.growth on a tumour region"
            )
        lo, hi = _band(level)
        out: dict = {"times_h": self.times_h}
        for k in ("volume_mL", "marker"):
            a, m, b = np.quantile(c[k], [lo, 0.5, hi], axis=0)
            out[k] = {"median": m, "lower": a, "upper": b}
        return out

    def progression_free_survival(self, scenario: str, region: str, times_h=None) -> dict:
        """P(not progressed by t) over the draws, at `times_h` (default the forecast's):
        ``{"times_h", "pfs"}``; progression is regrowth past baseline after the nadir."""
        ttp = self._get(scenario, region, "ttp_h")
        t = self.times_h if times_h is None else np.asarray(times_h, dtype=float)
        return {"times_h": t, "pfs": progression_free_survival(ttp, t)}

    def uncertainty_budget(self, scenario: str, region: str, **cvs) -> dict:
        """Variance budget of the region's absorbed dose under `scenario`: kinetics (the spread
        of the draws' TIA), calibration, mass and S-value; keyword arguments as
        [`twinjax.dosimetry.dose_uncertainty_budget`][] (`mass_cv`, `calibration_cv`,
        `s_value_cv`, ...)."""
        if "+" in self.nuclides.get(scenario, ""):
            raise InputError(
                f"scenario {scenario!r} is a tandem ({self.nuclides[scenario]}); allowed: "
                "single-label scenarios (the budget's S-value and calibration terms are per "
                "nuclide)"
            )
        tia = self._get(scenario, region, "tia_MBqh")
        return dose_uncertainty_budget(tia, self.nuclides[scenario], self.masses_kg[region], **cvs)


def _band(level: float) -> tuple[float, float]:
    if not 0.0 < level < 1.0:
        raise InputError(f"level = {level!r}; allowed: in (0, 1)")
    return (1.0 - level) / 2.0, 1.0 - (1.0 - level) / 2.0


def _default_times(schedules: Sequence[Schedule]) -> np.ndarray:
    """Weekly from the first administration to a year after the last one of any scenario."""
    t_end = max(float(np.asarray(s.time_h)[-1]) for s in schedules) + 8760.0
    return np.arange(0.0, t_end + 1.0, 168.0)


def forecast(
    posterior,
    template: Template,
    scenarios: Sequence[Scenario],
    regions: Mapping[str, Region],
    *,
    max_draws: int = 200,
    rbe_alpha: float = 5.0,
    sex: Literal["male", "female"] = "male",
    times_h=None,
    rtol: float = 1e-6,
    atol: float = 1e-9,
) -> Forecast:
    """Outcome distributions of each scenario over (up to `max_draws`, evenly thinned)
    posterior draws (module docs).

    **Arguments:**
    - `posterior`: a [`twinjax.Posterior`][] of `template`.
    - `template`: the template the posterior was fitted with.
    - `scenarios`: [`Scenario`][]s with distinct names.
    - `regions`: imaging region (e.g. ``"kidneys"``, ``"tumour"``) -> [`Region`][].
    - `max_draws`: draws used (evenly thinned across chains).
    - `rbe_alpha`: RBE of alpha particles and recoils for BED, EQD2, NTCP and TCP.
    - `sex`: for reference masses.
    - `times_h`: output times of lesion volume curves (h from the first administration;
      default weekly to a year after the last administration).
    - `rtol`, `atol`: ODE tolerances.

    **Returns:** a [`Forecast`][].
    """
    if not scenarios:
        raise InputError("scenarios is empty; allowed: one or more Scenario")
    names = [s.name for s in scenarios]
    if len(set(names)) != len(names):
        raise InputError(f"scenario names {names} repeat; allowed: distinct names")
    if not regions:
        raise InputError("regions is empty; allowed: region name -> Region")
    if not isinstance(max_draws, int) or max_draws < 1:
        raise InputError(f"max_draws = {max_draws!r}; allowed: an integer >= 1")
    growing = [r for r, spec in regions.items() if spec.growth is not None]
    if times_h is None:
        times = _default_times([sc.schedule for sc in scenarios])
    else:
        times = np.asarray(times_h, dtype=float)
        if (
            times.ndim != 1
            or times.size < 2
            or not np.all(np.isfinite(times))
            or np.any(np.diff(times) <= 0)
            or times[0] < 0
        ):
            raise InputError(
                f"times_h = {times_h!r}; allowed: at least two increasing finite times >= 0 (h)"
            )
    masses = _region_masses(posterior, template, regions, sex)
    idx, theta = _thinned_draws(posterior, max_draws)
    base = _base(posterior)

    values: dict = {}
    curves: dict = {}
    voxels: dict = {}
    rel_by_nuclide: dict = {}
    placed = {r: np.asarray(v.centroid_mm, float) for r, v in regions.items() if v.centroid_mm}
    for sc in scenarios:
        tpl = sc.template or template
        nuc = sc.schedule.nuclide
        if isinstance(sc.schedule, Tandem):
            voxel = [r for r, spec in regions.items() if spec.voxel_mm is not None]
            if voxel:
                raise InputError(
                    f"scenario {sc.name!r} is a tandem ({nuc}) and regions {voxel} have "
                    "voxel_mm; allowed: region-level forecasts for tandem scenarios (the labels' "
                    "voxel kernels differ, so one relative voxel dose map does not exist)"
                )
            per = {lab: _s_values(lab, masses, rbe_alpha, placed) for lab in sc.schedule.nuclides}
            s_w, s_phys, cross = ({lab: v[i] for lab, v in per.items()} for i in range(3))
        else:
            s_w, s_phys, cross = _s_values(nuc, masses, rbe_alpha, placed)
        # One compiled function per (template, regions, tolerances), cached across scenarios and
        # calls; jit itself retraces only for a new schedule structure (number of
        # administrations, infusions, nuclide) or a new draw count.
        run = _compiled_outcomes(tpl, regions, masses, rtol, atol)
        # Without a growing region the times are unused: a fixed placeholder keeps the traced
        # shapes (and so the compilation) independent of the schedule's length.
        t_arg = jnp.asarray(times) if growing else _NO_TIMES
        out, resp = run(theta, base, sc.schedule, s_w, s_phys, cross, t_arg)
        values[sc.name], curves[sc.name], voxels[sc.name] = {}, {}, {}
        for r, spec in regions.items():
            res = {q: np.asarray(out[r][q]) for q in out[r] if q in _ORDER or _is_label_tia(q)}
            if r in resp:
                c = {k: np.asarray(v) for k, v in resp[r].items()}
                curves[sc.name][r] = c
                res["ttp_h"] = np.asarray(time_to_progression(times, c["volume_mL"]))
            if spec.voxel_mm is not None:
                # One convolution per region and nuclide, shared by the scenarios using it.
                if (r, nuc) not in rel_by_nuclide:
                    rel_p = _relative_voxel_dose(spec, masses[r], nuc, 1.0)
                    rel_w = (
                        _relative_voxel_dose(spec, masses[r], nuc, rbe_alpha)
                        if _has_alpha(nuc)
                        else rel_p
                    )
                    rel_by_nuclide[r, nuc] = {"dose": rel_p, "weighted": rel_w}
                voxels[sc.name][r] = rel_by_nuclide[r, nuc]
                # Dx of the voxel doses (`dose_metrics`' convention) at the relative doses:
                # every voxel's dose and BED increase with its r.
                for kind, stem in (("dose", "dose"), ("weighted", "bed")):
                    rel = voxels[sc.name][r][kind]
                    m = dose_metrics(rel, np.ones(rel.size, bool))
                    for name, key in _DOSE_METRICS.items():
                        r_x = np.full(1, float(m[key]))  # the voxel at Dx, as a one-voxel map
                        at_x = {"dose": r_x, "weighted": r_x}
                        res[f"{stem}_{name}_Gy"] = _voxel_values(res, at_x, f"{stem}_Gy")[:, 0]
            values[sc.name][r] = res
    return Forecast(
        values=values,
        n_draws=len(idx),
        masses_kg=masses,
        nuclides={sc.name: sc.schedule.nuclide for sc in scenarios},
        times_h=times if growing else None,
        curves={s: c for s, c in curves.items() if c},
        voxels={s: v for s, v in voxels.items() if v},
    )


# Order of the per-draw quantities in `Forecast.values` (jit returns dicts with sorted keys).
_ORDER = (
    "bed_Gy", "dose_Gy", "eqd2_Gy", "g", "tia_MBqh", "weighted_dose_Gy", "ntcp",
    "surviving_fraction", "tcp",
)  # fmt: skip


def _region_quantities(spec: Region) -> tuple[str, ...]:
    """The per-draw quantities `forecast` computes for a region (before voxel metrics and the
    time to progression): NTCP for organs whose tissue has LKB parameters; surviving fraction
    for tumours with a known alpha, TCP where the clonogen density is known too."""
    t = spec.tissue
    out = list(_ORDER[:6])
    if spec.kind == "organ" and isinstance(t, Tissue) and t.lkb is not None:
        out.append("ntcp")
    if spec.kind == "tumour" and isinstance(t, Tissue) and t.alpha_per_Gy is not None:
        out.append("surviving_fraction")
        if t.clonogen_density_per_cm3 is not None:
            out.append("tcp")
    return tuple(out)


def _region_masses(posterior, template: Template, regions: Mapping[str, Region], sex) -> dict:
    """Region -> mass (kg): `Region.mass_kg`, else the patient's CT volume, else ICRP 89."""
    covariates = _covariates(posterior)
    masses = {}
    for r, spec in regions.items():
        template.roi(r)  # unknown regions fail here, naming the known ones
        if spec.mass_kg is not None:
            masses[r] = float(spec.mass_kg)
        elif f"ct_volume_L_{r}" in covariates:
            masses[r] = float(covariates[f"ct_volume_L_{r}"]) * SOFT_TISSUE_KG_PER_L
        else:
            masses[r] = float(reference_mass_kg(r, sex))
    return masses


#: Per-draw response parameters a posterior may carry for a region r, as samples named
#: ``f"{r}{RESPONSE_SEP}{q}"`` (e.g. ``tumour__alpha_per_Gy``), from outcomes assimilated by
#: `twinjax.outcomes`: they replace the region's tissue alpha and growth doubling time draw by
#: draw.
RESPONSE_SEP = "__"
RESPONSE_PARAMS = ("alpha_per_Gy", "doubling_time_h")


def _response_names(posterior) -> list[str]:
    samples = getattr(posterior, "samples", {}) or {}
    return [k for k in samples if any(k.endswith(RESPONSE_SEP + q) for q in RESPONSE_PARAMS)]


def _thinned_draws(posterior, max_draws: int) -> tuple[np.ndarray, dict]:
    """Indices of up to `max_draws` draws evenly thinned across chains, and the sampled
    parameters at them (``{name: (draws,)}``), per-draw response parameters included."""
    draws = {n: posterior.draws(n) for n in (*posterior.names, *_response_names(posterior))}
    total = len(next(iter(draws.values())))
    idx = np.linspace(0, total - 1, min(max_draws, total)).round().astype(int)
    return idx, {n: jnp.asarray(v[idx], dtype=float) for n, v in draws.items()}


def _base(posterior) -> dict:
    """The patient's typical parameters (the ones not sampled), as arrays for a traced argument."""
    return {k: jnp.asarray(v, dtype=float) for k, v in posterior.prior.base.items()}


def _s_values(nuc: str, masses: Mapping[str, float], rbe_alpha: float, placed) -> tuple:
    """Sphere self-dose S-values of each region's mass, RBE-weighted (for BED) and physical
    (Gy/(MBq h)), and the photon cross S-values between `placed` regions."""
    s_w = {r: float(sphere_s_value(nuc, m, rbe_alpha=rbe_alpha)) for r, m in masses.items()}
    s_phys = {r: float(sphere_s_value(nuc, m)) for r, m in masses.items()}
    return s_w, s_phys, _cross_s_values(nuc, placed)


def _draw_outcomes(tpl: Template, regions: Mapping[str, Region], masses, rtol, atol, *,
                   response: bool = True):  # fmt: skip
    """The outcomes of ONE posterior draw as a pure function of traced inputs,
    ``f(theta, base, schedule, s_w, s_phys, cross, times) -> (values, curves)``: `values`
    region -> quantity -> scalar (`bed_from_model`'s, the physical dose, NTCP, surviving
    fraction, TCP), `curves` the lesion volume and marker at `times` of growing tumours (when
    `response`). Differentiable in the schedule's activities and times (forward mode)."""
    tissues = {r: spec.tissue for r, spec in regions.items()}
    groups = {r: tpl.roi(r) for r in regions}
    growing = [r for r, spec in regions.items() if spec.growth is not None] if response else []

    def one(th, base, schedule, s_w, s_phys, cross, times):
        th = dict(th)
        resp = {r: {q: th.pop(f"{r}{RESPONSE_SEP}{q}") for q in RESPONSE_PARAMS
                    if f"{r}{RESPONSE_SEP}{q}" in th} for r in regions}  # fmt: skip
        params = tpl.derive({**base, **th})
        out = bed_from_model(
            tpl.model, params, schedule, s_w, tissues, groups=groups, rtol=rtol, atol=atol,
            cross_s_values=cross,
        )  # fmt: skip
        values = {}
        for r, spec in regions.items():
            res = dict(out[r])
            # S-values carry the RBE, so bed_from_model's dose is the weighted one. Photon
            # cross-dose carries no RBE: physical = own TIA x S_phys + the cross part.
            res["weighted_dose_Gy"] = res["dose_Gy"]
            if isinstance(schedule, Tandem):
                tias = res.pop("tia_MBqh")
                own_w = sum(tias[lab] * s_w[lab][r] for lab in tias)
                own_phys = sum(tias[lab] * s_phys[lab][r] for lab in tias)
                res.update({f"tia_MBqh_{lab}": v for lab, v in tias.items()})
            else:
                own_w, own_phys = res["tia_MBqh"] * s_w[r], res["tia_MBqh"] * s_phys[r]
            res["dose_Gy"] = own_phys + (res["dose_Gy"] - own_w)
            values[r] = _effects(res, spec, masses[r], alpha=resp[r].get("alpha_per_Gy"))
        curves = {}
        for r in growing:
            g, vol = regions[r].growth, masses[r] * 1e3
            s_lesion = (
                {lab: v[r] for lab, v in s_w.items()} if isinstance(schedule, Tandem) else s_w[r]
            )
            tr = response_from_model(
                tpl.model, params, schedule, s_lesion, times, tissue=regions[r].tissue,
                volume_mL=vol, doubling_time_h=resp[r].get("doubling_time_h", g.doubling_time_h),
                alpha_per_Gy=resp[r].get("alpha_per_Gy"), growth=g.growth,
                carrying_capacity_mL=g.carrying_capacity_mL,
                clearance_half_time_h=g.clearance_half_time_h,
                marker_half_life_h=g.marker_half_life_h, region=groups[r], rtol=rtol, atol=atol,
            )  # fmt: skip
            curves[r] = {"volume_mL": tr.volume_mL, "marker": tr.marker}
        return values, curves

    return one


def _effects(res: dict, spec: Region, mass_kg: float, *, alpha=None) -> dict:
    """Add the effects that follow from a region's EQD2/BED: NTCP (LKB) for organs with LKB
    parameters, surviving fraction and TCP for tumours with alpha (and clonogen density).
    `alpha` (1/Gy): this draw's own radiosensitivity (outcomes assimilated); then the TCP is
    the individual one, the spread of alpha being carried by the draws."""
    t, has = spec.tissue, _region_quantities(spec)
    if "ntcp" in has:
        res["ntcp"] = ntcp_lkb(res["eqd2_Gy"], lkb=t)
    a = getattr(t, "alpha_per_Gy", None) if alpha is None else alpha
    if "surviving_fraction" in has:
        # exp(-alpha D - beta G D^2) = exp(-alpha BED), RBE-weighted
        res["surviving_fraction"] = jnp.exp(-a * res["bed_Gy"])
    if "tcp" in has:
        vol = mass_kg * 1e3  # cm^3 at unit density
        res["tcp"] = (
            tcp(res["bed_Gy"], vol, tissue=t)
            if alpha is None
            else tcp(res["bed_Gy"], vol, tissue=t, alpha_per_Gy=a, alpha_sd_per_Gy=0.0)
        )
    return res


#: Compiled forecast functions by structure: (template identity, regions, masses, tolerances).
_COMPILED = CompiledCache(16)
_NO_TIMES = np.zeros(1)


def _compiled_outcomes(tpl: Template, regions: Mapping[str, Region], masses, rtol, atol):
    """`_draw_outcomes` vmapped over the draws and jitted, shared by every scenario and call
    with the same structure. The schedule, S-values, typical parameters and times are traced
    arguments, so scenarios differing only in activities, times and ligand amounts reuse one
    compilation; the schedule's static fields (nuclide, number of administrations, infusions)
    select jit's own cache entry. Masses stay static: the response ODE validates them while
    tracing."""
    key = (
        id(tpl),
        tuple((r, spec.tissue, spec.kind, spec.growth, masses[r]) for r, spec in regions.items()),
        float(rtol),
        float(atol),
    )

    def build():
        one = _draw_outcomes(tpl, dict(regions), dict(masses), rtol, atol)
        return jax.jit(jax.vmap(one, in_axes=(0, None, None, None, None, None, None)))

    return _COMPILED.get(key, tpl, build)


def _cross_s_values(nuc: str, placed: Mapping[str, np.ndarray]) -> dict:
    """Photon cross-dose S-values between regions with centroids: ``{target: {source: S}}``."""
    out: dict = {}
    for t, ct in placed.items():
        for src, cs in placed.items():
            if src != t:
                d_cm = float(np.linalg.norm(ct - cs)) / 10.0
                if d_cm <= 0:
                    raise InputError(f"regions {t!r} and {src!r} have the same centroid_mm")
                out.setdefault(t, {})[src] = float(photon_cross_s_value(nuc, d_cm))
    return out


def _is_label_tia(quantity: str) -> bool:
    """Per-label TIAs of tandem scenarios: ``tia_MBqh_<nuclide>``."""
    return quantity.startswith("tia_MBqh_")


def _has_alpha(name: str) -> bool:
    """Whether the nuclide's chain emits alpha particles (RBE-weighted kernels then differ)."""
    return nuclide(name).chain.energy_per_parent_decay_MeV("alpha") > 0.0


def _voxel_values(q: Mapping[str, np.ndarray], vox: Mapping[str, np.ndarray], quantity: str):
    """Voxel values ``(draws, voxels)`` of `quantity` from a region's draws `q` and relative
    voxel doses `vox` (module docs: D_v = r D, BED_v = r D_w + r^2 (BED - D_w))."""
    if quantity == "dose_Gy":
        return q["dose_Gy"][:, None] * vox["dose"][None, :]
    if quantity == "bed_Gy":
        lin = q["weighted_dose_Gy"][:, None]
        return lin * vox["weighted"] + (q["bed_Gy"][:, None] - lin) * vox["weighted"] ** 2
    raise InputError(f"quantity = {quantity!r}; allowed: 'dose_Gy' or 'bed_Gy'")
