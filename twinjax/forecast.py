"""Forecasts: posterior draws x treatment scenarios -> distributions of absorbed dose, BED, EQD2,
NTCP and TCP per region.

Every posterior draw is one plausible patient; `forecast` runs each draw through each scenario's
schedule with the repair integrals carried in the model's ODE
([`twinjax.radiobiology.bed_from_model`][]), so dose and BED come from the draw's own
dose-rate curve with the exact Lea-Catcheside factor, cycles with incomplete repair between
them. Draws are `vmap`-ped and compiled once per scenario structure. Each region's S-value is
the self-dose of a sphere of its mass (`twinjax.dosimetry.sphere_s_value`, the scenario's
nuclide and its chain); alpha particles are RBE-weighted for BED (physical dose is reported
separately). The result keeps every draw, so any summary can be computed: credible intervals
(`Forecast.summary`) and exceedance probabilities (`Forecast.exceedance`, e.g. P(kidney BED >
40 Gy)).

Units: dose, BED, EQD2 Gy; probabilities in [0, 1].
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Literal

import jax
import jax.numpy as jnp
import numpy as np

from ._errors import InputError
from .dosimetry import reference_mass_kg, sphere_s_value
from .models.library import Template
from .radiobiology import Tissue, bed_from_model, ntcp_lkb, tcp
from .schedule import Schedule

__all__ = ["Forecast", "Region", "Scenario", "forecast"]

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
    ligand amount) and optionally the `template` of another label with the same kinetics and
    parameters (e.g. ``psma617_ac225_pbpk`` for 225Ac); by default the posterior's template."""

    name: str
    schedule: Schedule
    template: Template | None = None

    def __post_init__(self):
        if not isinstance(self.schedule, Schedule):
            raise InputError(f"scenario {self.name!r}: schedule must be a twinjax.Schedule")


@dataclasses.dataclass(frozen=True)
class Region:
    """A region to forecast: its `tissue` (a [`twinjax.radiobiology.Tissue`][] or ``(alpha_beta_Gy,
    repair_half_time_h)``), `mass_kg` (default: the patient's CT volume of the region,
    covariate ``ct_volume_L_<region>``, at `SOFT_TISSUE_KG_PER_L`; else the ICRP 89 reference
    mass of the region's name)
    and `kind` (``"organ"``: NTCP where the tissue has LKB parameters; ``"tumour"``: TCP where it
    has alpha and a clonogen density, for the region's volume at unit density)."""

    tissue: Tissue | tuple[float, float]
    mass_kg: float | None = None
    kind: Literal["organ", "tumour"] = "organ"


@dataclasses.dataclass(frozen=True)
class Forecast:
    """Outcome draws: ``values[scenario][region][quantity]`` arrays ``(draws,)``; quantities
    ``dose_Gy`` (physical), ``bed_Gy``, ``eqd2_Gy``, ``g``, and ``ntcp`` / ``tcp`` where
    defined."""

    values: dict[str, dict[str, dict[str, np.ndarray]]]
    n_draws: int

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
        ``{scenario: {region: {quantity: {"mean", "lower", "median", "upper"}}}}``."""
        if not 0.0 < level < 1.0:
            raise InputError(f"level = {level!r}; allowed: in (0, 1)")
        lo, hi = (1.0 - level) / 2.0, 1.0 - (1.0 - level) / 2.0
        out: dict = {}
        for s, regions in self.values.items():
            out[s] = {}
            for r, qs in regions.items():
                out[s][r] = {}
                for q, v in qs.items():
                    a, m, b = np.quantile(v, [lo, 0.5, hi])
                    out[s][r][q] = {
                        "mean": float(v.mean()),
                        "lower": float(a),
                        "median": float(m),
                        "upper": float(b),
                    }
        return out

    def exceedance(self, region: str, quantity: str, threshold: float) -> dict[str, float]:
        """P(quantity > threshold) in `region` for every scenario (fraction of draws)."""
        return {s: float(np.mean(self._get(s, region, quantity) > threshold)) for s in self.values}


def forecast(
    posterior,
    template: Template,
    scenarios: Sequence[Scenario],
    regions: Mapping[str, Region],
    *,
    max_draws: int = 200,
    rbe_alpha: float = 5.0,
    sex: Literal["male", "female"] = "male",
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
    - `sex`: for reference masses. `rtol`, `atol`: ODE tolerances.

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
    covariates = _covariates(posterior)
    masses = {}
    for r, spec in regions.items():
        template.roi(r)  # unknown regions fail here, naming the known ones
        if spec.mass_kg is not None:
            masses[r] = spec.mass_kg
        elif f"ct_volume_L_{r}" in covariates:
            masses[r] = covariates[f"ct_volume_L_{r}"] * SOFT_TISSUE_KG_PER_L
        else:
            masses[r] = reference_mass_kg(r, sex)
    draws = {n: posterior.draws(n) for n in posterior.names}
    total = len(next(iter(draws.values())))
    idx = np.linspace(0, total - 1, min(max_draws, total)).round().astype(int)
    theta = {n: jnp.asarray(v[idx]) for n, v in draws.items()}
    base = posterior.prior.base
    tissues = {r: spec.tissue for r, spec in regions.items()}

    values: dict = {}
    for sc in scenarios:
        tpl = sc.template or template
        nuc = sc.schedule.nuclide
        s_w = {r: float(sphere_s_value(nuc, masses[r], rbe_alpha=rbe_alpha)) for r in regions}
        s_phys = {r: float(sphere_s_value(nuc, masses[r])) for r in regions}
        groups = {r: template.roi(r) for r in regions}

        def one(th, tpl=tpl, sc=sc, s_w=s_w, groups=groups):
            params = tpl.derive({**base, **th})
            return bed_from_model(
                tpl.model, params, sc.schedule, s_w, tissues, groups=groups, rtol=rtol, atol=atol
            )

        out = jax.jit(jax.vmap(one))(theta)
        values[sc.name] = {}
        for r, spec in regions.items():
            res = {q: np.asarray(v) for q, v in out[r].items()}
            res["dose_Gy"] = res["dose_Gy"] * (s_phys[r] / s_w[r])
            t = spec.tissue
            if spec.kind == "organ" and isinstance(t, Tissue) and t.lkb is not None:
                res["ntcp"] = np.asarray(
                    jax.vmap(lambda e, t=t: ntcp_lkb(e, lkb=t))(res["eqd2_Gy"])
                )
            if (
                spec.kind == "tumour"
                and isinstance(t, Tissue)
                and t.alpha_per_Gy is not None
                and t.clonogen_density_per_cm3 is not None
            ):
                vol = masses[r] * 1e3  # cm^3 at unit density
                res["tcp"] = np.asarray(
                    jax.vmap(lambda b, t=t, vol=vol: tcp(b, vol, tissue=t))(res["bed_Gy"])
                )
            values[sc.name][r] = res
    return Forecast(values=values, n_draws=len(idx))
