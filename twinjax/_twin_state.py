"""How a [`twinjax.twin.DigitalTwin`][] is written to and read from a twin file
(`twinjax.store`): its patient, observations, regions, posterior and outcome observations as
JSON-able state plus arrays. Private to `twinjax.twin`."""

from __future__ import annotations

import dataclasses
import json
import tempfile
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from ._errors import InputError
from .decision import (
    _administrations,
)
from .forecast import Region, TumourGrowth
from .imaging.io import Patient
from .inference.diagnostics import diagnose
from .inference.fit import FitContext, Posterior
from .inference.model import Observed
from .inference.priors import PopulationPrior
from .models.library import Template
from .outcomes import ResponseObservation, ResponsePrior
from .radiobiology import LKB, Tissue
from .radiobiology import tissue as _library_tissue
from .schedule import Administration, Schedule


def _response_state(o: ResponseObservation) -> dict:
    def lst(a):
        return None if a is None else [float(x) for x in a]

    return {"region": o.region, "time_h": lst(o.time_h), "marker": lst(o.marker),
            "volume_mL": lst(o.volume_mL), "marker_cv": o.marker_cv, "volume_cv": o.volume_cv}  # fmt: skip


def _outcome_options_state(options: Mapping) -> dict:
    out = {k: v for k, v in options.items() if k != "prior"}
    prior = options.get("prior")
    if isinstance(prior, ResponsePrior):
        out["prior"] = {"all": dataclasses.asdict(prior)}
    elif isinstance(prior, Mapping):
        out["prior"] = {"regions": {r: dataclasses.asdict(p) for r, p in prior.items()}}
    return out


def _outcome_options_from(state: Mapping) -> dict:
    out = {k: v for k, v in state.items() if k != "prior"}
    prior = state.get("prior")
    if prior is not None:
        out["prior"] = (
            ResponsePrior(**prior["all"])
            if "all" in prior
            else {r: ResponsePrior(**p) for r, p in prior["regions"].items()}
        )
    return out


def _patient_state(p: Patient) -> dict:
    return {
        "patient_id": p.patient_id,
        "covariates": dict(p.covariates),
        "administrations": [dataclasses.asdict(a) for a in _administrations(p.schedule)],
    }


def _patient_from(d: dict) -> Patient:
    schedule = Schedule.from_administrations([Administration(**a) for a in d["administrations"]])
    return Patient(d["patient_id"], dict(d["covariates"]), schedule)


def _observed_state(o: Observed) -> dict:
    return {"roi": list(o.roi), "time_h": o.time_h, "activity_MBq": o.activity_MBq}


def _observed_from(d: dict) -> Observed:
    return Observed(
        tuple(d["roi"]), np.asarray(d["time_h"], float), np.asarray(d["activity_MBq"], float)
    )


def _tissue_state(t) -> dict:
    if isinstance(t, tuple):
        return {"alpha_beta_Gy": float(t[0]), "repair_half_time_h": float(t[1])}
    try:
        if _library_tissue(t.name) == t:
            return {"library": t.name}
    except InputError:
        pass
    d = dataclasses.asdict(t)
    d.pop("sources", None)
    return {"custom": d}


def _tissue_from(d: dict):
    if "library" in d:
        return _library_tissue(d["library"])
    if "custom" in d:
        c = dict(d["custom"])
        if c.get("lkb") is not None:
            c["lkb"] = LKB(**c["lkb"])
        c["bed_limits_Gy"] = tuple(tuple(x) for x in c.get("bed_limits_Gy", ()))
        return Tissue(**c)
    return (d["alpha_beta_Gy"], d["repair_half_time_h"])


def _region_state(name: str, r: Region, arrays: dict) -> dict:
    if r.uptake_map is not None:
        arrays[f"uptake_map/{name}"] = np.asarray(r.uptake_map, dtype=float)
    return {
        "tissue": _tissue_state(r.tissue),
        "mass_kg": r.mass_kg,
        "kind": r.kind,
        "voxel_mm": r.voxel_mm,
        "growth": None if r.growth is None else dataclasses.asdict(r.growth),
        "centroid_mm": r.centroid_mm,
    }


def _region_from(name: str, d: dict, arrays: dict) -> Region:
    return Region(
        _tissue_from(d["tissue"]),
        mass_kg=d["mass_kg"],
        kind=d["kind"],
        voxel_mm=d["voxel_mm"],
        uptake_map=arrays.get(f"uptake_map/{name}"),
        growth=None if d["growth"] is None else TumourGrowth(**d["growth"]),
        centroid_mm=None if d["centroid_mm"] is None else tuple(d["centroid_mm"]),
    )


def _posterior_state(post: Posterior, arrays: dict) -> tuple[dict, bytes]:
    ctx = post.context
    if ctx is None:
        raise InputError("the twin's posterior has no fit context; it cannot be saved")
    with tempfile.TemporaryDirectory() as tmp:
        f = Path(tmp) / "posterior.nc"
        post.to_inference_data().to_netcdf(f)
        nc = f.read_bytes()
    if post.adaptation is not None:
        arrays["adaptation/inverse_mass_matrix"] = post.adaptation["inverse_mass_matrix"]
    if post.gaussian is not None:
        arrays["gaussian/mean"] = post.gaussian["mean"]
        if post.gaussian.get("cov") is not None:
            arrays["gaussian/cov"] = post.gaussian["cov"]
    if post.losses is not None:
        arrays["losses"] = post.losses
    opts = dict(ctx.options)
    state = {
        "method": post.method,
        "names": list(post.names),
        "provenance": post.provenance,
        "context": {"patient": _patient_state(ctx.patient), "options": opts},
        "sample_stats": sorted(post.sample_stats),
        "adaptation": None if post.adaptation is None else {
            "step_size": post.adaptation["step_size"], "sites": post.adaptation["sites"],
        },
        "gaussian": None if post.gaussian is None else {
            "sites": post.gaussian.get("sites"), "has_cov": post.gaussian.get("cov") is not None,
        },
        "approximation": post.approximation,
    }  # fmt: skip
    return state, nc


def _sites(sites) -> tuple:
    return tuple((str(n), tuple(int(x) for x in shape)) for n, shape in sites)


def _posterior_from(d: dict, nc: bytes, arrays: dict, tpl: Template, noise) -> Posterior:
    import xarray as xr

    with tempfile.TemporaryDirectory() as tmp:
        f = Path(tmp) / "posterior.nc"
        f.write_bytes(nc)
        post_ds = xr.open_dataset(f, group="posterior").load()
        stats_ds = xr.open_dataset(f, group="sample_stats").load() if d["sample_stats"] else None
        obs_ds = xr.open_dataset(f, group="observed_data").load()
    samples = {k: np.asarray(v.values) for k, v in post_ds.data_vars.items()}
    stats = {}
    if stats_ds is not None:
        stats = {k: np.asarray(stats_ds[k].values) for k in d["sample_stats"]}
    observed = Observed(
        tuple(str(r) for r in obs_ds["roi"].values),
        np.asarray(obs_ds["time_h"].values, float),
        np.asarray(obs_ds["activity_MBq"].values, float),
    )
    ctx_patient = _patient_from(d["context"]["patient"])
    opts = dict(d["context"]["options"])
    opts["names"] = tuple(opts["names"])
    prior = PopulationPrior.from_template(
        tpl, ctx_patient.covariates, names=opts["names"], cv=opts.get("cv")
    )
    saved_base = d["provenance"].get("prior_base", {})
    for k, v in saved_base.items():
        if not np.isclose(float(prior.base[k]), float(v), rtol=1e-12, atol=0.0):
            raise InputError(
                f"twin posterior: typical value of {k!r} is {float(prior.base[k])!r} now, "
                f"{v!r} when saved; the template or its covariate formulas changed"
            )
    diagnostics = None
    if d["method"] == "nuts" and stats:
        diagnostics = diagnose(samples, stats, names=prior.names, max_tree_depth=10)
    adaptation = None
    if d["adaptation"] is not None:
        adaptation = {
            "step_size": float(d["adaptation"]["step_size"]),
            "inverse_mass_matrix": arrays["adaptation/inverse_mass_matrix"],
            "sites": _sites(d["adaptation"]["sites"]),
        }
    gaussian = None
    if d["gaussian"] is not None:
        gaussian = {
            "mean": arrays["gaussian/mean"],
            "cov": arrays.get("gaussian/cov") if d["gaussian"]["has_cov"] else None,
            "sites": _sites(d["gaussian"]["sites"]),
        }
    provenance = json.loads(json.dumps(d["provenance"]))
    return Posterior(
        d["method"],
        tpl.name,
        prior.names,
        samples,
        stats,
        diagnostics,
        observed,
        provenance,
        prior,
        arrays.get("losses"),
        gaussian,
        adaptation,
        FitContext(tpl, ctx_patient, noise, opts),
        d["approximation"],
    )
