"""`twinjax forecast POSTERIOR.nc SCENARIOS.yaml`: a saved posterior + a scenario file -> outcome
distributions per scenario and region.

The scenario file (YAML, schema ``twinjax.scenarios/1``), validated before any computation:

```yaml
schema: twinjax.scenarios/1
regions:                      # imaging regions of the posterior's template
  kidneys: {tissue: kidney}                       # ICRP 89 mass by default
  salivary_glands: {tissue: salivary_glands}
  tumour: {tissue: prostate_cancer, mass_g: 20, kind: tumour}
scenarios:
  - {name: standard, activity_MBq: 7400, cycles: 2, interval_h: 1008, ligand_nmol: 96}
  - {name: escalated, activity_MBq: 9000, cycles: 2, interval_h: 1008, ligand_nmol: 96}
thresholds:                   # exceedance probabilities to report (optional)
  kidneys: {bed_Gy: 40}
```

Each scenario's nuclide defaults to the template's (``nuclide:`` may name another label whose
template is given by ``template:``). Outputs, written atomically to the output folder:
``forecast.json`` (per scenario, region and quantity: mean and 90 % interval; the exceedance
probabilities; provenance), ``forecast.png`` (per region, the distribution of BED under each
scenario) and ``exceedance.png`` (per region, P(BED > x) against x for each scenario, with the
file's thresholds marked).
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
from .forecast import Forecast, Region, Scenario, forecast
from .inference.fit import load_posterior
from .models.library import load_template
from .radiobiology import tissue
from .schedule import Schedule
from .study import _atomic_write

__all__ = ["ScenarioFile", "run_forecast"]


class _RegionSpec(_Strict):
    tissue: str
    mass_g: float | None = Field(default=None, gt=0)
    kind: Literal["organ", "tumour"] = "organ"

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
            if q not in ("dose_Gy", "bed_Gy", "eqd2_Gy", "ntcp", "tcp"):
                raise InputError(
                    f"{scenarios_path}: thresholds.{r}.{q}; allowed quantities: dose_Gy, "
                    "bed_Gy, eqd2_Gy, ntcp, tcp"
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
    regions = {
        r: Region(tissue(v.tissue), None if v.mass_g is None else v.mass_g * 1e-3, v.kind)
        for r, v in spec.regions.items()
    }
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
        "draws": fc.n_draws,
        "provenance": {
            "twinjax_version": __version__,
            "posterior": str(posterior_path),
            "posterior_template": post.template,
            "posterior_data_sha256": post.provenance.get("data_sha256"),
            "scenarios_sha256": hashlib.sha256(Path(scenarios_path).read_bytes()).hexdigest(),
        },
    }
    written = [out / "forecast.json", out / "forecast.png", out / "exceedance.png"]
    _atomic_write(written[0], (json.dumps(doc, indent=1) + "\n").encode())
    _atomic_write(written[1], _plot(fc))
    _atomic_write(written[2], _plot_exceedance(fc, spec.thresholds))
    return written


def _plot(fc: Forecast) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    scen = list(fc.values)
    regions = list(next(iter(fc.values.values())))
    fig, axes = plt.subplots(1, len(regions), figsize=(4.2 * len(regions), 3.6), squeeze=False)
    for ax, r in zip(axes[0], regions, strict=True):
        data = [fc.values[s][r]["bed_Gy"] for s in scen]
        ax.boxplot(data, whis=(5, 95), showfliers=False)
        ax.set_xticks(range(1, len(scen) + 1), scen, rotation=20, fontsize=8)
        ax.set_title(r)
        ax.set_ylabel("BED (Gy), 5-95 %")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    return buf.getvalue()


def _plot_exceedance(fc: Forecast, thresholds) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    regions = list(next(iter(fc.values.values())))
    fig, axes = plt.subplots(1, len(regions), figsize=(4.2 * len(regions), 3.6), squeeze=False)
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
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    return buf.getvalue()
