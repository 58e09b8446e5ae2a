"""What a cohort fit produces: population summaries, the learned template YAML, netCDF.

The learned template is the fitted template with each learned parameter's typical value and CV
replaced by posterior medians (a median is invariant under the monotone maps mu -> exp(mu) and
omega -> CV, so the written values are the medians of the reported quantities too).
"""

from __future__ import annotations

import datetime
import json
import warnings
from pathlib import Path

import numpy as np
import yaml

from .._config import UNIT_FACTORS, TemplateSpec, validate
from .._errors import InputError
from .._files import atomic_write as _atomic_write
from ..models import library

__all__ = ["inference_data", "patient_index", "population", "save_netcdf", "write_template"]

#: ParameterSpec allows lognormal CVs up to 3 (omega = 1.52).
_MAX_CV = 3.0


def _q(x: np.ndarray, prefix: str) -> dict[str, float]:
    q5, q50, q95 = np.quantile(x, [0.05, 0.5, 0.95])
    return {prefix: float(q50), f"{prefix}_q5": float(q5), f"{prefix}_q95": float(q95)}


def population(post) -> dict[str, dict[str, float]]:
    spec = post.template.spec
    mu, omega = post.draws("mu"), post.draws("omega")
    out = {}
    for j, n in enumerate(post.names):
        p = spec.parameters[n]
        typical0 = p.median(f"{spec.name}.parameters.{n}")
        factor = np.exp(mu[:, j])
        row = {"template_typical": typical0, "template_cv": post.template.cv.get(n, float("nan"))}
        row.update(_q(typical0 * factor, "typical"))
        row.update(_q(factor, "factor"))
        row.update(_q(np.sqrt(np.expm1(omega[:, j] ** 2)), "cv"))
        row.update(_q(mu[:, j], "mu"))
        row.update(_q(omega[:, j], "omega"))
        if post.diagnostics is not None:
            row["rhat_mu"] = post.diagnostics.rhat.get(f"mu_{n}", float("nan"))
            row["rhat_omega"] = post.diagnostics.rhat.get(f"omega_{n}", float("nan"))
            row["ess_bulk_omega"] = post.diagnostics.ess_bulk.get(f"omega_{n}", float("nan"))
        out[n] = row
    return out


def patient_index(post, patient) -> int:
    if isinstance(patient, int | np.integer) and 0 <= patient < len(post.patient_ids):
        return int(patient)
    if isinstance(patient, str) and patient in post.patient_ids:
        return post.patient_ids.index(patient)
    raise InputError(
        f"patient = {patient!r}; allowed: a position 0..{len(post.patient_ids) - 1} or an id "
        f"of {list(post.patient_ids)[:5]}{' ...' if len(post.patient_ids) > 5 else ''}"
    )


def template_dict(post, *, name: str | None, title: str | None) -> dict:
    """The learned template as the mapping its YAML holds (validated)."""
    from .. import __version__

    spec = post.template.spec
    data = spec.model_dump(by_alias=True, exclude_unset=True, mode="json")
    prov, pop = post.provenance, population(post)
    n = prov["n_patients"]
    date = datetime.datetime.now(datetime.UTC).date().isoformat()
    verdict = post.diagnostics.verdict if post.diagnostics is not None else "n/a"
    tag = (
        f"learned by twinjax {__version__} (fit_cohort, hierarchical NUTS, "
        f"{prov['num_chains']} x {prov['num_samples']} draws, verdict {verdict}) from {n} "
        f"patients on {date}; prior template {spec.name!r} (sha256 "
        f"{prov['template_sha256'][:16]}), data sha256 {prov['data_sha256'][:16]}"
    )
    for k in post.names:
        old = spec.parameters[k]
        row = pop[k]
        cv = row["cv"]
        if cv > _MAX_CV:
            warnings.warn(
                f"{k}: learned CV {cv:.3g} exceeds {_MAX_CV}, the largest a template allows; "
                f"written as {_MAX_CV}",
                stacklevel=3,
            )
            cv = _MAX_CV
        p = data["parameters"][k]
        p["value"] = float(f"{row['typical'] / UNIT_FACTORS[old.unit]:.6g}")
        p["cv"] = float(f"{cv:.6g}")
        p.pop("stat", None)  # the written value is a median
        p["source"] = (
            f"{tag}: posterior medians of the population typical value ({row['factor']:.4g} x "
            f"the prior template's) and of the between-patient CV (prior: {old.cv}). Prior "
            f"source: {old.source}"
        )
        if k in spec.covariates:
            # Keep the covariate model: the learned shift multiplies the formula.
            data["covariates"][k] = f"({spec.covariates[k]}) * {row['factor']:.6g}"
    data["name"] = name or f"{spec.name}_cohort"
    data["title"] = title or f"{spec.title} (learned from {n} patients)"
    data["references"] = {**data["references"], "twinjax_cohort": tag}
    validate(TemplateSpec, data, data["name"])
    return data


def write_template(post, path, *, name: str | None, title: str | None):
    p = Path(path)
    if p.suffix not in (".yaml", ".yml"):
        raise InputError(f"path = {str(path)!r}; allowed: a file name ending in .yaml or .yml")
    data = template_dict(post, name=name, title=title)
    p.parent.mkdir(parents=True, exist_ok=True)
    head = (
        f"# Learned by twinjax.inference.fit_cohort from {post.provenance['n_patients']} "
        f"patients (template {post.template.name}); see references.twinjax_cohort.\n"
    )
    text = head + yaml.safe_dump(data, sort_keys=False, allow_unicode=True, width=100)
    _atomic_write(p, text.encode())
    # `load_template` caches by path: a template written over a file loaded earlier in this
    # process must not come back stale.
    library._load.cache_clear()
    return library.load_template(p)


def inference_data(post):
    import arviz as az

    d = len(post.names)
    dims = {"mu": ["parameter"], "omega": ["parameter"], "eta": ["patient", "parameter"]}
    dims.update({k: ["patient"] for k in post.samples if k in post.names or k.startswith("tia_")})
    if "corr" in post.samples:
        dims.update(corr=["parameter", "parameter_b"], corr_chol=["parameter", "parameter_b"])
    attrs = {k: v if isinstance(v, str) else json.dumps(v) for k, v in post.provenance.items()}
    idata = az.from_dict(
        posterior=dict(post.samples),
        sample_stats=post.sample_stats or None,
        coords={
            "patient": list(post.patient_ids),
            "parameter": list(post.names),
            "parameter_b": list(post.names)[:d],
        },
        dims=dims,
        attrs=attrs,
    )
    idata.posterior.attrs.update(attrs)
    return idata


def save_netcdf(post, path) -> None:
    """Atomic netCDF with the SHA-256 of every group ([`twinjax._files.write_netcdf`][])."""
    from .._files import write_netcdf

    write_netcdf(path, inference_data(post))
