"""Organ- and lesion-level (MIRD) absorbed dose: ``D = TIA x S`` with self-dose S-values of the
patient's own organ and lesion masses.

An organ's self-dose S-value is that of a uniformly filled sphere of its mass and density
([`sphere_s_value`][]): non-penetrating radiation is absorbed almost entirely (Lu-177 in a 310 g
kidney: 99.7 % of its 147.9 keV per decay), and penetrating photons with the sphere's absorbed
fraction (9.5 % of Lu-177's 35.1 keV). A sphere is the most compact shape, so its photon
absorbed fraction is an upper bound for an elongated organ; for Lu-177 photons carry 2 % of the
kidney self-dose, so the shape matters at the 1 % level. Cross-dose between organs (photons of
one organ absorbed in another) needs the patient's geometry: exactly, by voxel
dosimetry, `twinjax.dosimetry.voxel`); where it matters, `organ_doses(..., distances_cm=...)`
adds photon cross-dose between regions treated as points at their centroids
([`photon_cross_s_value`][]).

Masses default to the ICRP Publication 89 reference adult (`reference_mass_kg`); pass the
patient's CT volumes times density instead where they are known.
"""

from __future__ import annotations

import difflib
import functools
from collections.abc import Mapping
from importlib import resources
from typing import Literal

import jax
import jax.numpy as jnp
import numpy as np
import yaml
from jaxtyping import Array, Float

from .._errors import InputError
from ._spheres import photon_cross_s_value, sphere_s_value

__all__ = ["known_reference_organs", "organ_doses", "reference_mass_kg"]


@functools.cache
def _masses() -> dict[str, dict[str, float]]:
    text = resources.files("twinjax").joinpath("data", "reference_masses.yaml").read_text()
    return yaml.safe_load(text)["organs"]


def known_reference_organs() -> tuple[str, ...]:
    """Organs with ICRP 89 reference masses."""
    return tuple(sorted(_masses()))


def reference_mass_kg(organ: str, sex: Literal["male", "female"] = "male") -> float:
    """ICRP Publication 89 reference adult mass of `organ` (kg) for `sex`."""
    masses = _masses()
    if sex not in ("male", "female"):
        raise InputError(f"sex = {sex!r}; allowed: 'male' or 'female'")
    if organ not in masses:
        close = difflib.get_close_matches(organ, masses, n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise InputError(
            f"organ {organ!r} has no ICRP 89 reference mass{hint} known: {known_reference_organs()}"
        )
    if sex not in masses[organ]:
        raise InputError(f"organ {organ!r} has no reference mass for sex = {sex!r}")
    return masses[organ][sex] * 1e-3


def organ_doses(
    nuclide_name: str,
    tia_MBqh: Mapping[str, float | Array],
    mass_kg: Mapping[str, float | Array] | None = None,
    *,
    sex: Literal["male", "female"] = "male",
    density_kg_per_L: float = 1.0,
    daughters="all",
    rbe_alpha: float = 1.0,
    distances_cm: Mapping[str, Mapping[str, float]] | None = None,
) -> dict[str, Float[Array, ...]]:
    """Self-dose of every region with a time-integrated activity (Gy).

    **Arguments:**
    - `nuclide_name`: the administered nuclide (its chain per `daughters`).
    - `tia_MBqh`: region -> time-integrated activity of the parent (MBq h); arrays (e.g. one
      value per posterior draw) broadcast.
    - `mass_kg`: region -> mass (kg); regions not given take their ICRP 89 reference mass for
      `sex` (an error for a region without one, e.g. a lesion).
    - `density_kg_per_L`, `daughters`, `rbe_alpha`: as [`sphere_s_value`][].
    - `distances_cm`: ``{target: {source: centroid distance (cm)}}`` adds the photon cross-dose
      from those sources ([`photon_cross_s_value`][]); default self-dose only.

    **Returns:** region -> absorbed dose (Gy), or RBE-weighted dose for `rbe_alpha` != 1.
    """
    mass_kg = dict(mass_kg or {})
    out = {}
    for region, tia in tia_MBqh.items():
        if region in mass_kg:
            m = mass_kg[region]
        else:
            try:
                m = reference_mass_kg(region, sex)
            except InputError as err:
                raise InputError(
                    f"region {region!r} needs mass_kg[{region!r}] (kg): {err}"
                ) from None
        tia_arr = jnp.asarray(tia, dtype=float)
        if not isinstance(tia_arr, jax.core.Tracer) and not np.all(
            np.isfinite(np.asarray(tia_arr)) & (np.asarray(tia_arr) >= 0)
        ):
            raise InputError(
                f"tia_MBqh[{region!r}] = {np.asarray(tia_arr).tolist()!r}; allowed: finite and "
                ">= 0 (MBq h)"
            )
        s = sphere_s_value(
            nuclide_name,
            m,
            density_kg_per_L=density_kg_per_L,
            daughters=daughters,
            rbe_alpha=rbe_alpha,
        )
        out[region] = tia_arr * s
    for target, sources in (distances_cm or {}).items():
        if target not in out:
            raise InputError(
                f"distances_cm names target {target!r} without a TIA; allowed: {list(out)}"
            )
        for source, d in sources.items():
            if source not in tia_MBqh or source == target:
                raise InputError(
                    f"distances_cm[{target!r}] names source {source!r}; allowed: another region "
                    f"with a TIA, {[r for r in out if r != target]}"
                )
            cross = photon_cross_s_value(
                nuclide_name, d, density_kg_per_L=density_kg_per_L, daughters=daughters
            )
            out[target] = out[target] + jnp.asarray(tia_MBqh[source], dtype=float) * cross
    return out
