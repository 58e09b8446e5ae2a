"""Population priors of a template: lognormal, around the patient's covariate-adjusted typical
values, with the template's between-patient CVs (and optional correlations).

For the sampled parameters theta (those with a CV in the template, unless chosen otherwise)

    log theta = log theta_typical(covariates) + L z,    z ~ Normal(0, I),

with ``L = diag(sigma) chol(R)``, ``sigma_i^2 = ln(1 + cv_i^2)`` and R a correlation matrix.
Inference samples the standard-normal z (non-centred), which keeps the geometry NUTS sees close to
isotropic whatever the scales of the physical parameters.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence

import jax.numpy as jnp
import numpy as np

from .._errors import InputError
from ..models.library import Template

__all__ = ["PopulationPrior"]


@dataclasses.dataclass(frozen=True)
class PopulationPrior:
    """Lognormal prior over `names` (see module docs). Build with [`PopulationPrior.from_template`][]."""

    names: tuple[str, ...]
    log_typical: np.ndarray
    scale_tril: np.ndarray
    base: Mapping[str, object] = dataclasses.field(repr=False)

    @classmethod
    def from_template(
        cls,
        template: Template,
        covariates: Mapping[str, float] | None = None,
        *,
        names: Sequence[str] | None = None,
        cv: Mapping[str, float] | None = None,
        correlation: np.ndarray | None = None,
    ) -> PopulationPrior:
        """Prior of a patient under `template`.

        **Arguments:**
        - `covariates`: the patient's covariates (canonical units, see
          `twinjax.imaging.io.Patient.covariates`); they set the typical values.
        - `names`: parameters to infer (default: every parameter with a CV in the template).
        - `cv`: CVs overriding or adding to the template's (needed for `names` without one).
        - `correlation`: correlation matrix of log-parameters, in the order of `names`.
        """
        base = template.personalise(covariates or {})
        cvs = {**template.cv, **(cv or {})}
        names = tuple(sorted(template.cv)) if names is None else tuple(names)
        if not names:
            raise InputError(f"template {template.name!r}: no parameters to infer")
        for n in names:
            if n not in base:
                raise InputError(f"parameter {n!r} is not a parameter of {template.name!r}")
            if n not in cvs:
                raise InputError(
                    f"parameter {n!r} has no between-patient CV in {template.name!r}; pass "
                    "cv={name: value} (allowed: 0 < cv <= 3)"
                )
            c = cvs[n]
            if not (math.isfinite(c) and 0 < c <= 3):
                raise InputError(f"cv[{n!r}] = {c!r}; allowed: 0 < cv <= 3")
            if n in template.spec.derived:
                raise InputError(f"parameter {n!r} is derived; infer the parameters it uses")
        sigma = np.array([math.sqrt(math.log1p(cvs[n] ** 2)) for n in names])
        if correlation is None:
            chol = np.eye(len(names))
        else:
            r = np.asarray(correlation, dtype=float)
            if r.shape != (len(names), len(names)):
                raise InputError(
                    f"correlation has shape {r.shape}; allowed: ({len(names)}, {len(names)}) "
                    f"for {names}"
                )
            if not np.allclose(r, r.T) or not np.allclose(np.diag(r), 1.0):
                raise InputError("correlation must be symmetric with a unit diagonal")
            try:
                chol = np.linalg.cholesky(r)
            except np.linalg.LinAlgError:
                raise InputError("correlation is not positive definite") from None
        log_typical = np.array([math.log(float(base[n])) for n in names])
        return cls(names, log_typical, sigma[:, None] * chol, base)

    @property
    def dim(self) -> int:
        return len(self.names)

    def theta(self, z):
        """Physical parameter values (dict) for standard-normal coordinates `z`."""
        log_theta = jnp.asarray(self.log_typical) + jnp.asarray(self.scale_tril) @ z
        return dict(zip(self.names, jnp.exp(log_theta), strict=True))

    def z_of(self, theta: Mapping[str, float]):
        """Standard-normal coordinates of physical values `theta` (inverse of [`theta`][])."""
        x = np.log([float(theta[n]) for n in self.names]) - self.log_typical
        return np.linalg.solve(self.scale_tril, x)
