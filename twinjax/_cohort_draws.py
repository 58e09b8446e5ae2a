"""Virtual cohorts (private, re-exported by [`twinjax.cohort`][], whose docs describe them):
[`VirtualCohort`][] and [`virtual_cohort`][], patients drawn from a template or from a
hierarchical posterior."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping

import jax
import jax.numpy as jnp
import numpy as np

from ._errors import InputError
from .inference.cohort import CohortPosterior
from .models._expr import expr
from .models.library import Template


@dataclasses.dataclass(frozen=True)
class VirtualCohort:
    """Virtual patients of `template`: `params` maps every (non-derived) template parameter to
    an array ``(n,)``, or ``(n, draws)`` for a cohort drawn under several posterior draws
    (canonical units); `covariates` name -> ``(n,)`` (e.g. ``weight_kg``,
    ``ct_volume_L_kidneys``, which sets the kidneys' mass in [`run_trial`][]); `draw_index`
    the posterior draws used (``(draws,)``, or ``(n,)`` with one random draw per patient);
    `provenance`: source, seed (or key data), sizes."""

    template: Template = dataclasses.field(repr=False)
    params: dict[str, np.ndarray] = dataclasses.field(repr=False)
    covariates: dict[str, np.ndarray] = dataclasses.field(default_factory=dict, repr=False)
    draw_index: np.ndarray | None = dataclasses.field(default=None, repr=False)
    provenance: dict = dataclasses.field(default_factory=dict)

    @property
    def n_patients(self) -> int:
        return int(next(iter(self.params.values())).shape[0])

    @property
    def n_draws(self) -> int | None:
        """S for a cohort with a draw axis, else None."""
        x = next(iter(self.params.values()))
        return int(x.shape[1]) if x.ndim == 2 else None

    @classmethod
    def from_params(cls, template: Template, params: Mapping[str, object], *,
                    covariates: Mapping[str, object] | None = None) -> VirtualCohort:  # fmt: skip
        """A cohort of given patients (e.g. fitted ones): `params` name -> ``(n,)`` values in
        canonical units; parameters not given take the (covariate-adjusted) typical values."""
        sizes = {np.shape(v)[0] for v in params.values() if np.ndim(v) == 1}
        if len(sizes) != 1 or any(np.ndim(v) not in (0, 1) for v in params.values()):
            shapes = {k: np.shape(v) for k, v in params.items()}
            raise InputError(
                f"params shapes {shapes}; allowed: scalars or 1-D arrays of one common length n "
                "(patients)"
            )
        n = sizes.pop()
        cov = _check_covariates(covariates, n)
        typical = _typical(template, cov, n)
        for k, v in params.items():
            if k not in typical:
                raise InputError(
                    f"params: {k!r} is not a (non-derived) parameter of template "
                    f"{template.name!r}; allowed: {sorted(typical)}"
                )
            x = np.broadcast_to(np.asarray(v, dtype=float), (n,))
            if not np.all(np.isfinite(x) & (x > 0)):
                raise InputError(f"params[{k!r}] = {x[:5].tolist()}...; allowed: finite, > 0")
            typical[k] = x.copy()
        prov = {"source": "given", "template": template.name, "n_patients": n}
        return cls(template, typical, cov, None, prov)


def virtual_cohort(
    template: Template,
    n: int,
    *,
    seed: int | jax.Array = 0,
    covariates: Mapping[str, object] | None = None,
    posterior: CohortPosterior | None = None,
    draws: int | None = None,
) -> VirtualCohort:
    """`n` virtual patients of `template` (module docs).

    **Arguments:**
    - `template`: a [`Template`][] with a compartmental/PBPK model.
    - `n`: number of patients (>= 1).
    - `seed`: an integer seed or a `jax.random` key; recorded in the provenance.
    - `covariates`: name -> one value or ``(n,)`` values (canonical units: ``weight_kg``,
      ``egfr_L_per_h``, ``ct_volume_L_<region>``, ...); they set each patient's typical values
      through the template's ``covariates:`` formulas.
    - `posterior`: a [`twinjax.inference.CohortPosterior`][] of `template`: patients are drawn
      from its population (module docs) instead of the template's CVs; parameters it did not
      learn keep their typical values, as in its model.
    - `draws`: with `posterior`, S evenly thinned posterior draws per patient (params ``(n,
      S)``); None: one random draw per patient (params ``(n,)``, the posterior predictive
      population).

    **Returns:** a [`VirtualCohort`][].
    """
    if isinstance(n, bool) or not isinstance(n, int | np.integer) or n < 1:
        raise InputError(f"n = {n!r}; allowed: an integer >= 1 (patients)")
    n = int(n)
    key, seed_record = _key(seed)
    if template.spec.model is None:
        raise InputError(f"template {template.name!r} has no compartmental model to simulate")
    cov = _check_covariates(covariates, n)
    typical = _typical(template, cov, n)
    k_eta, k_draw = jax.random.split(key)
    prov: dict = {"template": template.name, "seed": seed_record, "n_patients": n}
    if posterior is None:
        if draws is not None:
            raise InputError(f"draws = {draws!r} needs a posterior; allowed: None without one")
        names = sorted(template.cv)
        sigma = np.array([math.sqrt(math.log1p(template.cv[k] ** 2)) for k in names])
        z = np.asarray(jax.random.normal(k_eta, (n, len(names)), dtype=float))
        params = dict(typical)
        for j, k in enumerate(names):
            params[k] = typical[k] * np.exp(sigma[j] * z[:, j])
        return VirtualCohort(template, params, cov, None, {"source": "template", **prov})
    if not isinstance(posterior, CohortPosterior):
        raise InputError(
            f"posterior is a {type(posterior).__name__}; allowed: a CohortPosterior (fit_cohort)"
        )
    if posterior.template.name != template.name:
        raise InputError(
            f"posterior was fitted with template {posterior.template.name!r}, not "
            f"{template.name!r}; allowed: the posterior's own template"
        )
    mu, omega = posterior.draws("mu"), posterior.draws("omega")  # (T, D)
    total = mu.shape[0]
    if draws is None:
        idx = np.asarray(jax.random.randint(k_draw, (n,), 0, total))
    elif (
        isinstance(draws, bool)
        or not isinstance(draws, int | np.integer)
        or not (1 <= draws <= total)
    ):
        raise InputError(f"draws = {draws!r}; allowed: an integer in 1..{total} or None")
    else:
        idx = np.linspace(0, total - 1, int(draws)).round().astype(int)
    d = len(posterior.names)
    eta = np.asarray(jax.random.normal(k_eta, (n, d), dtype=float))
    if "corr_chol" in posterior.samples:  # correlated: eta_i = L z_i, L of the draw used
        chol = posterior.draws("corr_chol")[idx]
        eta = np.einsum("sij,nj->nsi" if draws else "nij,nj->ni", chol, eta)
    elif draws:
        eta = eta[:, None, :]
    shift = mu[idx] + omega[idx] * eta  # (n, D) or (n, S, D)
    params = {k: (v if draws is None else np.repeat(v[:, None], len(idx), 1))
              for k, v in typical.items()}  # fmt: skip
    for j, k in enumerate(posterior.names):
        t = typical[k] if draws is None else typical[k][:, None]
        params[k] = t * np.exp(shift[..., j])
    post = {
        "data_sha256": posterior.provenance.get("data_sha256"),
        "n_patients": posterior.provenance.get("n_patients"),
        "names": list(posterior.names),
    }
    prov.update(source="posterior", n_draws=None if draws is None else int(draws), posterior=post)
    return VirtualCohort(template, params, cov, idx, prov)


def _key(seed):
    """A PRNG key and what the provenance records of it."""
    if isinstance(seed, bool):
        raise InputError(f"seed = {seed!r}; allowed: an integer >= 0 or a jax.random key")
    if isinstance(seed, int | np.integer):
        if seed < 0:
            raise InputError(f"seed = {seed!r}; allowed: an integer >= 0 or a jax.random key")
        return jax.random.key(int(seed)), int(seed)
    try:
        typed = jnp.issubdtype(seed.dtype, jax.dtypes.prng_key)
        key = seed if typed else jax.random.wrap_key_data(seed)
        if key.shape != ():
            raise ValueError
    except Exception:
        raise InputError(
            f"seed = {seed!r}; allowed: an integer >= 0 or a single jax.random key"
        ) from None
    return key, np.asarray(jax.random.key_data(key)).tolist()


def _check_covariates(covariates, n: int) -> dict[str, np.ndarray]:
    out = {}
    for name, v in (covariates or {}).items():
        x = np.asarray(v, dtype=float)
        if x.ndim > 1 or (x.ndim == 1 and x.shape[0] != n) or not np.all(np.isfinite(x)):
            raise InputError(
                f"covariates[{name!r}] has shape {x.shape}; allowed: one finite value or {n} "
                "finite values (one per patient, canonical units)"
            )
        out[str(name)] = np.broadcast_to(x, (n,)).copy()
    return out


def _typical(template: Template, cov: Mapping[str, np.ndarray], n: int) -> dict[str, np.ndarray]:
    """`Template.personalise` for n patients at once: ``(n,)`` typical values (medians) of every
    non-derived parameter, covariate formulas applied where the covariates are given."""
    spec = template.spec
    out = {k: np.full(n, p.median(f"{template.name}.parameters.{k}"))
           for k, p in spec.parameters.items()}  # fmt: skip
    for name, formula in spec.covariates.items():
        e = expr(formula)
        if all(c in cov for c in e.names):
            v = np.broadcast_to(np.asarray(e({c: jnp.asarray(cov[c]) for c in e.names})), (n,))
            if not np.all(np.isfinite(v) & (v > 0)):
                raise InputError(
                    f"covariates {list(e.names)} give {name} = {formula} <= 0 or non-finite for "
                    f"patients {np.flatnonzero(~(np.isfinite(v) & (v > 0)))[:5].tolist()}; "
                    "allowed: covariates giving positive parameters"
                )
            out[name] = np.array(v, dtype=float)
    return out
