"""`twinjax forecast POSTERIOR.nc SCENARIOS.yaml`: a saved posterior + a scenario file -> outcome
distributions per scenario and region.

The scenario file (YAML, schema ``twinjax.scenarios/1``), validated before any computation:

```yaml
schema: twinjax.scenarios/1
regions:                      # imaging regions of the posterior's template
  kidneys: {tissue: kidney, voxel_mm: 4, centroid_mm: [0, 0, 0]}   # CT volume or ICRP 89
                                                  # mass by default; centroids (optional)
                                                  # add photon cross-dose between regions
  salivary_glands: {tissue: salivary_glands}
  tumour:
    tissue: prostate_cancer
    mass_g: 20
    kind: tumour
    voxel_mm: 2                                   # voxel-level forecast and DVH (optional)
    uptake_map: tumour_uptake.npy                 # relative uptake on that grid (optional;
                                                  # default a uniform ball), path relative
                                                  # to this file
    growth: {doubling_time_h: 1500, carrying_capacity_mL: 400}   # volume curves, PFS
    centroid_mm: [0, 90, -40]
scenarios:
  - {name: standard, activity_MBq: 7400, cycles: 2, interval_h: 1008, ligand_nmol: 96}
  - {name: escalated, activity_MBq: 9000, cycles: 2, interval_h: 1008, ligand_nmol: 96}
thresholds:                   # exceedance probabilities to report (optional)
  kidneys: {bed_Gy: 40}
```

Each scenario's nuclide defaults to the template's (``nuclide:`` may name another label whose
template is given by ``template:``). Outputs, written atomically to the output folder:

- ``forecast.json``: per scenario, region and quantity the mean and 90 % interval; the
  exceedance probabilities; per scenario and region the dose uncertainty budget (kinetics,
  calibration 5 %, mass 10 %, S-value 5 % CV); for voxel regions the DVH (median and 90 %
  band); for growing tumours the volume curve and progression-free survival; provenance.
- ``forecast.png``: per region, the distributions of absorbed dose and BED under each scenario.
- ``exceedance.png``: per region, P(BED > x) against x for each scenario, thresholds marked.
- ``comparison.png``: the scenarios side by side, tumour BED against each organ's BED (medians
  and 90 % intervals); without a tumour region, each organ's BED against the activity.
- ``dvh.png`` (with voxel regions): cumulative DVHs, median and 90 % band per scenario.
- ``response.png`` (with growing tumours): lesion volume (median, 90 % band) and PFS.
"""

from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import Field, field_validator

from . import __version__
from ._config import _Strict, read_yaml, validate
from ._errors import InputError
from ._files import atomic_write as _atomic_write
from ._files import read_netcdf
from .forecast import Forecast, Region, Scenario, TumourGrowth, forecast
from .inference.fit import load_posterior
from .models.library import load_template
from .radiobiology import tissue
from .schedule import Schedule

__all__ = ["ScenarioFile", "run_forecast"]

_THRESHOLD_QUANTITIES = ("dose_Gy", "bed_Gy", "eqd2_Gy", "ntcp", "tcp", "surviving_fraction")


class _GrowthSpec(_Strict):
    doubling_time_h: float = Field(gt=0, allow_inf_nan=False)
    growth: Literal["gompertz", "exponential"] = "gompertz"
    carrying_capacity_mL: float | None = Field(default=None, gt=0, allow_inf_nan=False)
    clearance_half_time_h: float = Field(default=72.0, gt=0, allow_inf_nan=False)
    marker_half_life_h: float = Field(default=60.0, gt=0, allow_inf_nan=False)


class _RegionSpec(_Strict):
    tissue: str
    mass_g: float | None = Field(default=None, gt=0, allow_inf_nan=False)
    kind: Literal["organ", "tumour"] = "organ"
    voxel_mm: float | None = Field(default=None, gt=0, le=50, allow_inf_nan=False)
    uptake_map: str | None = None
    growth: _GrowthSpec | None = None
    centroid_mm: tuple[float, float, float] | None = None

    @field_validator("tissue")
    @classmethod
    def _known(cls, v: str) -> str:
        tissue(v)  # raises InputError naming the known tissues
        return v


class _ScenarioSpec(_Strict):
    name: str = Field(min_length=1)
    activity_MBq: float = Field(gt=0, le=1e5)
    cycles: int = Field(default=1, ge=1, le=20)
    interval_h: float = Field(default=1008.0, gt=0)
    ligand_nmol: float | None = Field(default=None, gt=0)
    nuclide: str | None = None
    template: str | None = None


class ScenarioFile(_Strict):
    """The scenario file (module docs)."""

    schema_: Literal["twinjax.scenarios/1"] = Field(alias="schema")
    regions: dict[str, _RegionSpec] = Field(min_length=1)
    scenarios: list[_ScenarioSpec] = Field(min_length=1)
    thresholds: dict[str, dict[str, float]] = Field(default_factory=dict)


def run_forecast(
    posterior_path, scenarios_path, out_dir, *, template=None, max_draws: int = 200
) -> list[Path]:
    """Load, validate, forecast and write ``forecast.json`` and ``forecast.png`` (module docs).

    **Arguments:** `template`: name or YAML path of the posterior's template (default: the name
    recorded in the posterior, for the shipped library); `max_draws`: posterior draws used.

    **Returns:** the written paths. **Raises:** `InputError` before any computation for a bad
    posterior or scenario file."""
    spec = validate(ScenarioFile, read_yaml(scenarios_path), str(scenarios_path))
    # A truncated or bit-flipped posterior must not become a forecast: verify the checksum
    # that `twinjax calibrate` stores (files without one, from older versions, are read as is).
    if Path(posterior_path).is_file():
        read_netcdf(posterior_path, "posterior", required=False)
    post = load_posterior(posterior_path)
    tpl = load_template(template or post.template)
    if tpl.name != post.template:
        raise InputError(
            f"template {tpl.name!r} is not the posterior's template {post.template!r}; allowed: "
            "the template the posterior was fitted with"
        )
    for r in spec.regions:
        try:
            tpl.roi(r)  # imaging regions, model groups and single compartments
        except InputError as err:
            raise InputError(
                f"{scenarios_path}: region {r!r} is not in template {tpl.name!r} ({err})"
            ) from None
    for r, qs in spec.thresholds.items():
        if r not in spec.regions:
            raise InputError(f"{scenarios_path}: thresholds name region {r!r}, not in regions")
        for q in qs:
            if q not in _THRESHOLD_QUANTITIES:
                raise InputError(
                    f"{scenarios_path}: thresholds.{r}.{q}; allowed quantities: "
                    f"{', '.join(_THRESHOLD_QUANTITIES)}"
                )
    default = tpl.default_schedule() if tpl.spec.default_administration else None
    scenarios = []
    for s in spec.scenarios:
        s_tpl = load_template(s.template) if s.template else None
        nuc = s.nuclide or (s_tpl or tpl).nuclide
        ligand = s.ligand_nmol
        if ligand is None and default is not None:
            ligand = float(np.asarray(default.hot_nmol + default.cold_nmol)[0])
        sched = Schedule.cycles(
            s.activity_MBq, s.cycles, s.interval_h, nuclide=nuc, ligand_nmol=ligand
        )
        scenarios.append(Scenario(s.name, sched, s_tpl))
    regions = {r: _region(r, v, Path(scenarios_path).parent) for r, v in spec.regions.items()}
    fc = forecast(post, tpl, scenarios, regions, max_draws=max_draws)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    exceed = {
        r: {q: {"threshold": t, "probability": fc.exceedance(r, q, t)} for q, t in qs.items()}
        for r, qs in spec.thresholds.items()
    }
    doc = {
        "summary": fc.summary(0.9),
        "exceedance": exceed,
        "uncertainty_budget": {
            s: {r: fc.uncertainty_budget(s, r) for r in regions} for s in fc.values
        },
        "dvh": {s: {r: _lists(fc.dvh(s, r)) for r in v} for s, v in fc.voxels.items()},
        "response": {
            s: {
                r: {
                    **_lists(fc.volume_curves(s, r)),
                    "pfs": _lists(fc.progression_free_survival(s, r)["pfs"]),
                }
                for r in v
            }
            for s, v in fc.curves.items()
        },
        "draws": fc.n_draws,
        "masses_kg": fc.masses_kg,
        "provenance": {
            "twinjax_version": __version__,
            "posterior": str(posterior_path),
            "posterior_template": post.template,
            "posterior_data_sha256": post.provenance.get("data_sha256"),
            "scenarios_sha256": hashlib.sha256(Path(scenarios_path).read_bytes()).hexdigest(),
        },
    }
    files = {
        "forecast.json": (json.dumps(_finite(doc), indent=1, allow_nan=False) + "\n").encode(),
        "forecast.png": _plot(fc),
        "exceedance.png": _plot_exceedance(fc, spec.thresholds),
        "comparison.png": _plot_comparison(fc, regions, scenarios),
    }
    if fc.voxels:
        files["dvh.png"] = _plot_dvh(fc)
    if fc.curves:
        files["response.png"] = _plot_response(fc)
    written = []
    for name, data in files.items():
        _atomic_write(out / name, data)
        written.append(out / name)
    return written


def _region(name: str, v: _RegionSpec, folder: Path) -> Region:
    """A `Region` from its spec; the uptake map (``.npy``) is read and checked here, before any
    computation."""
    uptake = None
    if v.uptake_map is not None:
        if v.voxel_mm is None:
            raise InputError(f"regions.{name}.uptake_map needs regions.{name}.voxel_mm (mm)")
        path = folder / v.uptake_map
        if path.suffix != ".npy" or not path.is_file():
            raise InputError(
                f"regions.{name}.uptake_map = {v.uptake_map!r}: {path} is not an existing .npy "
                "file; allowed: a 3-D NumPy array file of relative uptake"
            )
        try:
            uptake = np.load(path, allow_pickle=False)
        except Exception as err:
            raise InputError(
                f"regions.{name}.uptake_map = {v.uptake_map!r} cannot be read ({err})"
            ) from None
    growth = None
    if v.growth is not None:
        growth = TumourGrowth(**v.growth.model_dump())
    try:
        return Region(
            tissue(v.tissue),
            None if v.mass_g is None else v.mass_g * 1e-3,
            v.kind,
            voxel_mm=v.voxel_mm,
            uptake_map=uptake,
            growth=growth,
            centroid_mm=v.centroid_mm,
        )
    except InputError as err:
        raise InputError(f"regions.{name}: {err}") from None


def _lists(obj):
    """Arrays to lists, for JSON."""
    if isinstance(obj, dict):
        return {k: _lists(v) for k, v in obj.items()}
    return np.asarray(obj).tolist() if isinstance(obj, np.ndarray) else obj


def _finite(obj):
    """Non-finite numbers (a time to progression beyond the horizon) as null in JSON."""
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_finite(v) for v in obj]
    if isinstance(obj, float) and not np.isfinite(obj):
        return None
    return obj


def _figure(nrows: int, ncols: int, height: float = 3.6):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(nrows, ncols, figsize=(4.2 * ncols, height * nrows), squeeze=False)
    return fig, axes


def _png(fig) -> bytes:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    return buf.getvalue()


def _plot(fc: Forecast) -> bytes:
    scen = list(fc.values)
    regions = list(next(iter(fc.values.values())))
    fig, axes = _figure(2, len(regions))
    for j, r in enumerate(regions):
        for i, (q, label) in enumerate((("dose_Gy", "absorbed dose"), ("bed_Gy", "BED"))):
            ax = axes[i, j]
            ax.boxplot([fc.values[s][r][q] for s in scen], whis=(5, 95), showfliers=False)
            ax.set_xticks(range(1, len(scen) + 1), scen, rotation=20, fontsize=8)
            ax.set_title(r)
            ax.set_ylabel(f"{label} (Gy), 5-95 %")
    return _png(fig)


def _plot_comparison(fc: Forecast, regions, scenarios) -> bytes:
    organs = [r for r, v in regions.items() if v.kind == "organ"] or list(regions)
    tumours = [r for r, v in regions.items() if v.kind == "tumour"]
    summ = fc.summary(0.9)
    fig, axes = _figure(1, len(organs))
    for ax, o in zip(axes[0], organs, strict=True):
        for sc in scenarios:
            x = summ[sc.name][o]["bed_Gy"]
            if tumours:
                y = summ[sc.name][tumours[0]]["bed_Gy"]
                ym, yerr = y["median"], [[y["median"] - y["lower"]], [y["upper"] - y["median"]]]
            else:
                ym, yerr = float(np.sum(np.asarray(sc.schedule.activity_MBq))) / 1e3, None
            xerr = [[x["median"] - x["lower"]], [x["upper"] - x["median"]]]
            ax.errorbar(x["median"], ym, xerr=xerr, yerr=yerr, fmt="o", capsize=3, label=sc.name)
        ax.set_xlabel(f"{o} BED (Gy), median and 90 %")
        ax.set_ylabel(f"{tumours[0]} BED (Gy)" if tumours else "total activity (GBq)")
        ax.legend(fontsize=7)
    return _png(fig)


def _plot_dvh(fc: Forecast) -> bytes:
    regions = sorted({r for v in fc.voxels.values() for r in v})
    fig, axes = _figure(1, len(regions))
    for ax, r in zip(axes[0], regions, strict=True):
        for s, v in fc.voxels.items():
            if r in v:
                d = fc.dvh(s, r)
                (line,) = ax.plot(d["x"], d["median"], label=s)
                ax.fill_between(d["x"], d["lower"], d["upper"], color=line.get_color(), alpha=0.2)
        ax.set_title(r)
        ax.set_xlabel("absorbed dose x (Gy)")
        ax.set_ylabel("volume fraction receiving >= x")
        ax.legend(fontsize=7)
    return _png(fig)


def _plot_response(fc: Forecast) -> bytes:
    regions = sorted({r for v in fc.curves.values() for r in v})
    fig, axes = _figure(2, len(regions))
    weeks = fc.times_h / 168.0
    for j, r in enumerate(regions):
        for s, v in fc.curves.items():
            if r in v:
                c = fc.volume_curves(s, r)["volume_mL"]
                (line,) = axes[0, j].plot(weeks, c["median"], label=s)
                axes[0, j].fill_between(weeks, c["lower"], c["upper"], color=line.get_color(),
                                        alpha=0.2)  # fmt: skip
                axes[1, j].step(weeks, fc.progression_free_survival(s, r)["pfs"], where="post",
                                label=s)  # fmt: skip
        axes[0, j].set_title(r)
        axes[0, j].set_ylabel("lesion volume (mL), median and 90 %")
        axes[1, j].set_ylabel("progression-free survival")
        axes[1, j].set_xlabel("weeks after the first administration")
        axes[0, j].legend(fontsize=7)
    return _png(fig)


def _plot_exceedance(fc: Forecast, thresholds) -> bytes:
    regions = list(next(iter(fc.values.values())))
    fig, axes = _figure(1, len(regions))
    for ax, r in zip(axes[0], regions, strict=True):
        for s, by_region in fc.values.items():
            x = np.sort(by_region[r]["bed_Gy"])
            ax.step(x, 1.0 - np.arange(x.size) / x.size, where="post", label=s)
        if "bed_Gy" in thresholds.get(r, {}):
            ax.axvline(thresholds[r]["bed_Gy"], color="k", ls="--", lw=0.8)
        ax.set_title(r)
        ax.set_xlabel("BED x (Gy)")
        ax.set_ylabel("P(BED > x)")
        ax.legend(fontsize=7)
    return _png(fig)
