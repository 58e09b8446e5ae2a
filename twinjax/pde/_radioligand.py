"""Radioligand therapy at tissue scale: receptor binding, internalisation and diffusion of a
labelled and an unlabelled ligand on a grid, driven by the plasma of a whole-body PBPK model.

The spatial radioligand-therapy models of Abdollahi et al. (Sci Bull 2023;68:1983; Theranostics
2024;14:3404) and Hong et al. (Theranostics 2024;14:7122), coupled to whole-body PBPK as in
Segars et al.'s XCAT + PBPK reaction-diffusion work. Per cell, for the hot (labelled, h) and
cold (unlabelled, c) ligand, with amounts per litre of tissue (nmol/L):

    c_s = F_s / phi                          (interstitial concentration, nmol/L)
    R_free = R - B_h - B_c [- R_int]         (free surface receptors, nmol/L)
    dF_s/dt = div(phi D grad c_s) + k_ex (c_p,s - c_s) - k_on R_free c_s + k_off B_s
              [+ k_rel I_s if release = "interstitial"]
    dB_s/dt = k_on R_free c_s - (k_off + k_int) B_s
    dI_s/dt = k_int B_s - k_rel I_s
    [dR_int/dt = k_int (B_h + B_c) - k_rec R_int   (finite receptor recycling)]

plus physical decay: every hot species loses ``lambda X_h`` to the cold species of the same pool
(the ligand stays where it is; only its label decays). F is free ligand in the interstitium
(volume fraction phi), B receptor-bound ligand, I internalised ligand, R the receptor density
map, c_p the plasma concentrations (a [`PlasmaInput`][], e.g. from
[`twinjax.models.simulate`][] of a PBPK template: ``PBPK -> plasma -> tissue``) and k_ex the
per-cell vascular exchange rate (L of plasma cleared per L of tissue per h, with back-flux).
Hot and cold ligand compete for the same receptors, so the injected ligand amount (~100 nmol)
saturates them.

**Receptor recycling.** Default: receptors return to the surface as soon as their ligand is
internalised, so the surface pool R is constant (R_free = R - B), the form of the PSMA PBPK
models (Kletting et al. 2016, PLoS ONE 11:e0162303; Fele-Paranj et al. 2024, EJNMMI Radiopharm
Chem 9:6) that supply the plasma. ``receptor_recycling=True`` adds internalised receptors R_int
returning at k_rec (the trafficking model of Lauffenburger & Linderman, Receptors: Models for
Binding, Trafficking, and Signaling, Oxford University Press 1993).

**Parameters** (defaults: [177Lu]Lu-PSMA-617 in tumour, the `psma617_pbpk` template's values,
all from the authors' SBML of Fele-Paranj et al. 2024): k_on = 0.046 L/(nmol min) = 2.76
L/(nmol h); k_off = 0.368 /min = 22.08 /h (K_D = 8 nM); k_int = 0.001 /min = 0.06 /h; k_rel =
1.5e-4 /min = 0.009 /h (tumour); R = 57 nmol/L (Tumor1); phi = 0.38; plasma volume fraction
0.05 (1 - Hct) = 0.03; k_ex = Q PS / (Q + PS) = 16.4 /h from the plasma flow Q = 0.5 /min and
the permeability-surface product PS = 0.6 /min per L of tumour (a capillary space in series with
the membrane: [`vascular_exchange_rate`][]). D = 1.778e-4 MW^-0.75 cm^2/s, the tumour
interstitial diffusivity correlation of Swabb, Wei & Gullino (Cancer Res 1974;34:2814), for
MW = 1215 Da ([177Lu]Lu-PSMA-617): 8.6e-7 cm^2/s = 0.31 mm^2/h.

**Numerics.** Finite volumes on a [`Grid`][twinjax.pde.Grid] (no-flux boundaries, harmonic-mean
faces, as [`Diffusion`][twinjax.pde.Diffusion]); in time, the Rosenbrock method Rodas4 (Hairer &
Wanner 1996, IV.7; the tableau of `twinjax.models.Rodas4`) with matrix-free stages. Binding
(~400 /h) and fine-grid diffusion (~1e3 /h) are stiff next to the weeks of a therapy. The
Jacobian is the per-cell reaction Jacobian (exact, forward mode) plus the linear diffusion of
the free ligand, so each stage system reduces, by eliminating every other species with the
per-cell inverse, to a small system in the free ligand alone, solved by BiCGStab (van der Vorst
1992, SIAM J Sci Stat Comput 13:631). Per cell the solver also integrates the cumulated hot
ligand and the hot influx from and efflux to the plasma; the reconstruction of each stage keeps
``hot(t) = influx - efflux - lambda * cumulated hot`` to rounding however loosely BiCGStab
converges (see `_KrylovRodas4`). Steps land on the output times and the plasma samples. State
variables are scaled by the peak plasma concentration of their species, so `atol` is relative to
it (the hot ligand of an Ac-225 therapy is ~1e-4 of the cold). Gradients through the solve are
not supported (the Krylov loop is not differentiated); use the dose maps' gradients in the maps.

Units: time h, length mm, concentration nmol/L (per L of tissue), amount nmol, activity MBq.
"""

from __future__ import annotations

import functools
import math

import diffrax as dfx
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

from .._errors import InputError
from ..models._rosenbrock import Rodas4
from ..nuclides import nuclide as _lookup
from ._grid import Grid
from ._operators import Diffusion
from ._solve import _checked

__all__ = [
    "PSMA617_TUMOUR",
    "PlasmaInput",
    "RadioligandParams",
    "RadioligandTissue",
    "TissueTrajectory",
    "swabb_diffusivity_mm2_per_h",
    "template_rates",
    "vascular_exchange_rate",
]


def swabb_diffusivity_mm2_per_h(molecular_weight_Da: float) -> float:
    """Tumour interstitial diffusivity D = 1.778e-4 MW^-0.75 cm^2/s (Swabb, Wei & Gullino 1974,
    Cancer Res 34:2814), in mm^2/h."""
    if not (math.isfinite(molecular_weight_Da) and molecular_weight_Da > 0):
        raise InputError(f"molecular_weight_Da = {molecular_weight_Da!r}; allowed: > 0 (Da)")
    return 1.778e-4 * molecular_weight_Da**-0.75 * 100.0 * 3600.0  # cm^2/s -> mm^2/h


def vascular_exchange_rate(perfusion_per_h, permeability_surface_per_h):
    """Exchange rate k_ex = Q PS / (Q + PS) (1/h) of a tissue with plasma flow Q and
    permeability-surface product PS, both per L of tissue (1/h): a well-mixed capillary space
    in series with its wall, the quasi-steady state of a PBPK organ's vascular space. Low
    perfusion (hypoxic regions) limits delivery. Arrays broadcast (maps)."""
    q = np.asarray(perfusion_per_h, dtype=float)
    ps = np.asarray(permeability_surface_per_h, dtype=float)
    if np.any(~np.isfinite(q) | (q < 0)) or np.any(~np.isfinite(ps) | (ps < 0)):
        raise InputError("perfusion_per_h and permeability_surface_per_h: allowed: finite, >= 0")
    s = q + ps
    return np.where(s > 0, q * ps / np.where(s > 0, s, 1.0), 0.0)


#: [177Lu]Lu-PSMA-617 in tumour (module docs; Fele-Paranj et al. 2024 via `psma617_pbpk`).
PSMA617_TUMOUR = {
    "k_on_L_per_nmol_h": 0.046 * 60.0,
    "k_off_per_h": 0.368 * 60.0,
    "k_int_per_h": 0.001 * 60.0,
    "k_rel_per_h": 1.5e-4 * 60.0,
    "receptor_nmol_per_L": 57.0,
    "exchange_rate_per_h": float(vascular_exchange_rate(0.5 * 60.0, 0.6 * 60.0)),
    "plasma_fraction": 0.05 * (1.0 - 0.4),
    "interstitial_fraction": 0.38,
    "diffusivity_mm2_per_h": swabb_diffusivity_mm2_per_h(1215.0),
}


def template_rates(template, organ: str = "tumour1") -> dict[str, float]:
    """The tissue parameters of `organ` in a PBPK template (a `Template` or its name): k_on,
    k_off = k_on K_D, k_int, k_rel, R, k_ex from ``Q_o`` and ``PS_o`` (per L of organ), the
    plasma and interstitial fractions. Keys as [`PSMA617_TUMOUR`][] (no diffusivity)."""
    if isinstance(template, str):
        from ..models.library import load_template

        template = load_template(template)
    p = template.params
    need = ["k_on", "K_D", "lambda_int", f"lambda_rel_{organ}", f"R_{organ}", f"Q_{organ}",
            f"PS_{organ}", f"V_{organ}", f"fv_{organ}", f"fi_{organ}"]  # fmt: skip
    missing = [k for k in need if k not in p]
    if missing:
        raise InputError(
            f"organ = {organ!r}: template {template.name!r} lacks {missing}; allowed: a "
            "receptor-positive, permeable organ of a PBPK template"
        )
    v = {k: float(p[k]) for k in need}
    vol = v[f"V_{organ}"]
    return {
        "k_on_L_per_nmol_h": v["k_on"],
        "k_off_per_h": v["k_on"] * v["K_D"],
        "k_int_per_h": v["lambda_int"],
        "k_rel_per_h": v[f"lambda_rel_{organ}"],
        "receptor_nmol_per_L": v[f"R_{organ}"],
        "exchange_rate_per_h": float(
            vascular_exchange_rate(v[f"Q_{organ}"] / vol, v[f"PS_{organ}"] / vol)
        ),
        "plasma_fraction": v[f"fv_{organ}"],
        "interstitial_fraction": v[f"fi_{organ}"],
    }


# --------------------------------------------------------------------------------- plasma
class PlasmaInput(eqx.Module):
    """Hot and cold ligand concentrations in plasma (nmol/L) between samples at `times_h`:
    linear where the concentration rises, log-linear where it falls (the "linear-up/log-down"
    rule of noncompartmental pharmacokinetics, exact for exponential clearance); held at the
    first value before them, ``c_last exp(-k (t - t_last))`` after the last (`tail_rate_per_h`
    ``(hot, cold)``; default: the log-slope of the last two samples, >= 0).

    Build it from plain arrays, or with [`PlasmaInput.from_trajectory`][] from a PBPK
    [`Trajectory`][twinjax.Trajectory]. Sample densely where the plasma changes fast (minutes
    after an injection): the tissue sees the interpolant.
    """

    times_h: Float[Array, " N"]
    hot_nmol_per_L: Float[Array, " N"]
    cold_nmol_per_L: Float[Array, " N"]
    tail_rate_per_h: Float[Array, " 2"]
    nuclide: str | None = eqx.field(static=True, default=None)

    def __init__(self, times_h, hot_nmol_per_L, cold_nmol_per_L, *, tail_rate_per_h=None,
                 nuclide: str | None = None):  # fmt: skip
        t, h, c = (np.asarray(x, dtype=float) for x in (times_h, hot_nmol_per_L, cold_nmol_per_L))
        if t.ndim != 1 or t.shape[0] < 2 or h.shape != t.shape or c.shape != t.shape:
            raise InputError(
                f"times_h {t.shape}, hot_nmol_per_L {h.shape}, cold_nmol_per_L {c.shape}; "
                "allowed: three 1-D arrays of one length >= 2"
            )
        if not (np.all(np.isfinite(t)) and np.all(np.diff(t) > 0)):
            raise InputError(f"times_h = {t}; allowed: finite and strictly increasing (h)")
        for name, x in (("hot_nmol_per_L", h), ("cold_nmol_per_L", c)):
            if not np.all(np.isfinite(x) & (x >= 0)):
                raise InputError(f"{name} has min {np.nanmin(x)!r} or NaN; allowed: >= 0 (nmol/L)")
        if tail_rate_per_h is None:
            dt = t[-1] - t[-2]
            k = [
                max(math.log(x[-2] / x[-1]) / dt, 0.0) if x[-1] > 0 and x[-2] > 0 else 0.0
                for x in (h, c)
            ]
        else:
            k = np.broadcast_to(np.asarray(tail_rate_per_h, dtype=float), (2,))
            if not np.all(np.isfinite(k) & (k >= 0)):
                raise InputError(f"tail_rate_per_h = {tail_rate_per_h!r}; allowed: >= 0 (1/h)")
        self.times_h, self.hot_nmol_per_L, self.cold_nmol_per_L = map(jnp.asarray, (t, h, c))
        self.tail_rate_per_h = jnp.asarray(k, dtype=float)
        self.nuclide = None if nuclide is None else _lookup(nuclide).name

    @classmethod
    def from_trajectory(cls, trajectory, compartment: str | None = None, *, tail_rate_per_h=None):
        """The plasma of a [`Trajectory`][twinjax.Trajectory]: hot and cold amounts of
        `compartment` (a compartment or group; default ``plasma.arterial`` if the model has
        one, else ``plasma``) over its volume, at the trajectory's times."""
        model = trajectory.model
        if compartment is None:
            compartment = "plasma.arterial" if "plasma.arterial" in model.compartments else "plasma"
        idx = np.asarray(model.group(compartment))
        vol = jnp.sum(trajectory.volumes_L[idx])
        hot = jnp.sum(trajectory.hot_nmol[:, idx], axis=1) / vol
        cold = jnp.sum(trajectory.cold_nmol[:, idx], axis=1) / vol
        return cls(trajectory.times_h, hot, cold, tail_rate_per_h=tail_rate_per_h,
                   nuclide=trajectory.nuclide)  # fmt: skip

    def _segment(self, x, t):
        """Index of the sample segment holding `t`, the fraction through it, the interpolant
        there, and the log-ratio of its ends (0 where the segment is linear)."""
        tk = self.times_h
        tc = jnp.clip(t, tk[0], tk[-1])
        i = jnp.clip(jnp.searchsorted(tk, tc, side="right") - 1, 0, tk.shape[0] - 2)
        u = (tc - tk[i]) / (tk[i + 1] - tk[i])
        c0, c1 = x[i], x[i + 1]
        # linear up, log down: exact for exponential clearance between samples
        down = (c1 < c0) & (c1 > 0)
        lr = jnp.where(down, jnp.log(jnp.where(down, c1, 1.0) / jnp.where(down, c0, 1.0)), 0.0)
        value = jnp.where(down, c0 * jnp.exp(u * lr), c0 + (c1 - c0) * u)
        return i, u, value, lr

    def _integrals(self, x):
        """Integral of the interpolant over each sample segment."""
        dt = jnp.diff(self.times_h)
        c0, c1 = x[:-1], x[1:]
        down = (c1 < c0) & (c1 > 0)
        lr = jnp.log(jnp.where(down, c1, 1.0) / jnp.where(down, c0, 1.0))
        log_area = (c1 - c0) * dt / jnp.where(down, lr, 1.0)
        return jnp.where(down, log_area, 0.5 * (c0 + c1) * dt)

    def __call__(self, t_h) -> tuple[Array, Array]:
        """``(hot, cold)`` plasma concentrations (nmol/L) at `t_h` (h)."""
        t = jnp.asarray(t_h, dtype=float)
        after = jnp.maximum(t - self.times_h[-1], 0.0)
        out = []
        for x, k in ((self.hot_nmol_per_L, self.tail_rate_per_h[0]),
                     (self.cold_nmol_per_L, self.tail_rate_per_h[1])):  # fmt: skip
            out.append(jnp.where(after > 0, x[-1] * jnp.exp(-k * after), self._segment(x, t)[2]))
        return out[0], out[1]

    def hot_integral(self, t_h) -> Array:
        """``int_{times_h[0]}^{t} c_hot dt`` (nmol h/L): exact for the interpolant and its tail."""
        t = jnp.asarray(t_h, dtype=float)
        tk, x, k = self.times_h, self.hot_nmol_per_L, self.tail_rate_per_h[0]
        cum = jnp.concatenate([jnp.zeros(1), jnp.cumsum(self._integrals(x))])
        i, u, value, lr = self._segment(x, t)
        dt = tk[i + 1] - tk[i]
        # partial segment: linear, or c0 dt (r^u - 1) / ln r (-> c0 dt u as ln r -> 0)
        small = jnp.abs(lr) < 1e-12
        log_part = x[i] * dt * jnp.where(small, u, jnp.expm1(u * lr) / jnp.where(small, 1.0, lr))
        part = jnp.where(lr != 0, log_part, 0.5 * (x[i] + value) * u * dt)
        after = jnp.maximum(t - tk[-1], 0.0)
        # c_last (1 - exp(-k s)) / k, smooth at k = 0
        tail = x[-1] * jnp.where(
            k * after > 1e-12, -jnp.expm1(-k * after) / jnp.where(k > 0, k, 1.0), after
        )
        return cum[i] + part + tail + x[0] * jnp.minimum(t - tk[0], 0.0)


# ----------------------------------------------------------------------------- parameters
class RadioligandParams(eqx.Module):
    """The numbers of a [`RadioligandTissue`][] (a PyTree: `vmap` over it, e.g. over receptor
    densities). Build it with [`RadioligandTissue.params`][], which validates the maps.

    **Fields:** maps of the grid's shape: `receptor_nmol_per_L` (R, per L of tissue),
    `exchange_rate_per_h` (k_ex), `plasma_fraction` (plasma volume per tissue volume, counted in
    the cell's activity); scalars `k_on_L_per_nmol_h`, `k_off_per_h`, `k_int_per_h`,
    `k_rel_per_h`, `k_recycle_per_h` (used with receptor recycling only).
    """

    receptor_nmol_per_L: Float[Array, " *shape"]
    exchange_rate_per_h: Float[Array, " *shape"]
    plasma_fraction: Float[Array, " *shape"]
    k_on_L_per_nmol_h: Float[Array, ""]
    k_off_per_h: Float[Array, ""]
    k_int_per_h: Float[Array, ""]
    k_rel_per_h: Float[Array, ""]
    k_recycle_per_h: Float[Array, ""]


class TissueTrajectory(eqx.Module):
    """Result of [`RadioligandTissue.simulate`][]: per cell and output time, amounts per L of
    tissue (nmol/L), fields ``(T, *shape)``: `free_hot`, `free_cold`, `bound_hot`, `bound_cold`,
    `internalised_hot`, `internalised_cold`, `internalised_receptor` (zero without recycling);
    cumulative `cumulated_hot` (nmol h/L), `influx_hot` and `efflux_hot` (nmol/L: from and back
    to the plasma, plus released radiometabolites with ``release="sink"``); the plasma's hot
    concentration `plasma_hot` ``(T,)`` and its integral `plasma_hot_integral` ``(T,)``;
    `steps`: accepted and rejected time steps of the solve.
    """

    times_h: Float[Array, " T"]
    free_hot: Float[Array, " T *shape"]
    free_cold: Float[Array, " T *shape"]
    bound_hot: Float[Array, " T *shape"]
    bound_cold: Float[Array, " T *shape"]
    internalised_hot: Float[Array, " T *shape"]
    internalised_cold: Float[Array, " T *shape"]
    internalised_receptor: Float[Array, " T *shape"]
    cumulated_hot: Float[Array, " T *shape"]
    influx_hot: Float[Array, " T *shape"]
    efflux_hot: Float[Array, " T *shape"]
    plasma_hot: Float[Array, " T"]
    plasma_hot_integral: Float[Array, " T"]
    plasma_fraction: Float[Array, " *shape"]
    steps: Array  # (accepted, rejected) time steps of the solve
    grid: Grid
    nuclide: str = eqx.field(static=True)
    decay_constant_per_h: float = eqx.field(static=True)
    mbq_per_nmol: float = eqx.field(static=True)

    @property
    def hot_nmol_per_L(self):
        """Labelled ligand in the tissue (free + bound + internalised, nmol per L of tissue)."""
        return self.free_hot + self.bound_hot + self.internalised_hot

    @property
    def cold_nmol_per_L(self):
        return self.free_cold + self.bound_cold + self.internalised_cold

    @property
    def cell_volume_L(self) -> float:
        return self.grid.cell_volume_mL * 1e-3

    @property
    def activity_MBq(self) -> Float[Array, " T *shape"]:
        """Activity of each cell (MBq): tissue ligand plus the cell's plasma."""
        c = self.hot_nmol_per_L + self.plasma_fraction * _expand(self.plasma_hot, self.grid.ndim)
        return c * (self.mbq_per_nmol * self.cell_volume_L)

    @property
    def activity_concentration_MBq_per_mL(self) -> Float[Array, " T *shape"]:
        return self.activity_MBq / self.grid.cell_volume_mL

    def scale_activity(self, factor: float) -> TissueTrajectory:
        """The trajectory of the same ligand with `factor` times the labelled molecules (the
        rest unlabelled): exact, because hot and cold ligand share the kinetics and the hot
        species are linear given the total. Raises `InputError` where the scaled hot ligand
        would exceed the total."""
        f = float(factor)
        hot = ("free_hot", "bound_hot", "internalised_hot")
        cold = ("free_cold", "bound_cold", "internalised_cold")
        if not (math.isfinite(f) and f > 0):
            raise InputError(f"factor = {factor!r}; allowed: finite and > 0")
        if f > 1 and any(
            bool(jnp.any((f - 1.0) * getattr(self, h) > getattr(self, c) * (1 + 1e-12)))
            for h, c in zip(hot, cold, strict=True)
        ):
            raise InputError(f"factor = {f}: more labelled ligand than ligand; allowed: smaller")
        out = {h: f * getattr(self, h) for h in (*hot, "cumulated_hot", "influx_hot",
                                                 "efflux_hot", "plasma_hot",
                                                 "plasma_hot_integral")}  # fmt: skip
        out.update({c: getattr(self, c) - (f - 1.0) * getattr(self, h)
                    for h, c in zip(hot, cold, strict=True)})  # fmt: skip
        return _replace(self, **out)

    def tia_MBqh(self, tail: str = "effective") -> Float[Array, " *shape"]:
        """Time-integrated activity of each cell (MBq h) from the start to infinity: the
        integral up to the last output time (integrated by the solver) plus ``A(t_last) /
        k``, with k the physical decay constant (``tail="physical"``, the most conservative
        assumption) or each cell's effective rate ``ln(A(t_-2) / A(t_-1)) / dt`` from its last
        two output times, at least the physical one (``"effective"``, the default; physical
        where fewer than two times or no activity)."""
        if tail not in ("effective", "physical"):
            raise InputError(f"tail = {tail!r}; allowed: 'effective' or 'physical'")
        lam = self.decay_constant_per_h
        a = self.activity_MBq
        k = jnp.full(a.shape[1:], lam)
        if tail == "effective" and a.shape[0] >= 2:
            a1, a2 = a[-2], a[-1]
            ok = (a1 > 0) & (a2 > 0)
            dt = self.times_h[-1] - self.times_h[-2]
            eff = jnp.log(jnp.where(ok, a1, 1.0) / jnp.where(ok, a2, 1.0)) / dt
            k = jnp.where(ok, jnp.maximum(eff, lam), lam)
        cum = self.cumulated_hot[-1] + self.plasma_fraction * self.plasma_hot_integral[-1]
        return cum * (self.mbq_per_nmol * self.cell_volume_L) + a[-1] / k


@functools.cache
def _unlabelled_structure():
    return jax.tree.structure(PlasmaInput([0.0, 1.0], [0.0, 0.0], [0.0, 0.0]))


def _replace(module, **fields):
    return eqx.tree_at(lambda m: [getattr(m, k) for k in fields], module, list(fields.values()))


def _expand(x, ndim):
    return x.reshape(x.shape + (1,) * ndim)


# ---------------------------------------------------------------------------------- model
_SPECIES = ("free_hot", "free_cold", "bound_hot", "bound_cold", "internalised_hot",
            "internalised_cold", "cumulated_hot", "influx_hot", "efflux_hot")  # fmt: skip


class RadioligandTissue(eqx.Module):
    """Structure of the tissue model (module docs): grid, nuclide, diffusivity and interstitial
    fraction maps, release route and receptor-recycling form. The rates and maps that inference
    or a sweep vary travel separately as [`RadioligandParams`][] ([`RadioligandTissue.params`][]).

    **Arguments:**
    - `grid`: a [`Grid`][twinjax.pde.Grid] (1-D to 3-D).
    - `nuclide`: the label, e.g. ``"Lu-177"`` or ``"Ac-225"`` (decay of the hot species).
    - `diffusivity_mm2_per_h`: D of the free ligand in tissue, scalar or map, >= 0 (default:
      Swabb's correlation for PSMA-617, 0.31 mm^2/h).
    - `interstitial_fraction`: phi, scalar or map, in (0, 1] (default 0.38).
    - `release`: where internalised ligand goes at k_rel: ``"sink"`` (out of the tissue, as
      radiometabolites; the `psma617_pbpk` template's route, default) or ``"interstitial"``
      (back to the free pool).
    - `receptor_recycling`: ``False`` (instant, R_free = R - B) or ``True`` (R_int state).
    """

    grid: Grid
    faces: tuple[Float[Array, " ..."], ...]  # phi D / h^2 per axis and face (1/h)
    interstitial_fraction: Float[Array, " *shape"]
    nuclide: str = eqx.field(static=True)
    release: str = eqx.field(static=True)
    receptor_recycling: bool = eqx.field(static=True)
    decay_constant_per_h: float = eqx.field(static=True)
    mbq_per_nmol: float = eqx.field(static=True)

    def __init__(self, grid: Grid, *, nuclide: str = "Lu-177",
                 diffusivity_mm2_per_h=PSMA617_TUMOUR["diffusivity_mm2_per_h"],
                 interstitial_fraction=PSMA617_TUMOUR["interstitial_fraction"],
                 release: str = "sink", receptor_recycling: bool = False):  # fmt: skip
        if not isinstance(grid, Grid):
            raise InputError(f"grid must be a twinjax.pde.Grid, got {type(grid).__name__}")
        nuc = _lookup(nuclide)  # InputError for an unknown nuclide
        phi = grid.check_field("interstitial_fraction", interstitial_fraction, positive=True)
        if np.any(phi > 1):
            raise InputError(f"interstitial_fraction has max {float(phi.max())!r}; allowed: <= 1")
        d = grid.check_field("diffusivity_mm2_per_h", diffusivity_mm2_per_h, nonnegative=True)
        if release not in ("sink", "interstitial"):
            raise InputError(f"release = {release!r}; allowed: 'sink' or 'interstitial'")
        # Fluxes are driven by the interstitial concentration c = F / phi with conductance
        # phi D, so the free amount F obeys dF/dt = div(phi D grad c): conservative for any phi.
        self.faces = Diffusion(grid, phi * d).face_rate
        self.grid = grid
        self.interstitial_fraction = jnp.asarray(phi)
        self.nuclide = nuc.name
        self.release = release
        self.receptor_recycling = bool(receptor_recycling)
        self.decay_constant_per_h = nuc.decay_constant_per_h
        self.mbq_per_nmol = nuc.mbq_per_nmol

    def params(self, *, receptor_nmol_per_L=PSMA617_TUMOUR["receptor_nmol_per_L"],
               exchange_rate_per_h=PSMA617_TUMOUR["exchange_rate_per_h"],
               plasma_fraction=PSMA617_TUMOUR["plasma_fraction"],
               k_on_L_per_nmol_h=PSMA617_TUMOUR["k_on_L_per_nmol_h"],
               k_off_per_h=PSMA617_TUMOUR["k_off_per_h"],
               k_int_per_h=PSMA617_TUMOUR["k_int_per_h"],
               k_rel_per_h=PSMA617_TUMOUR["k_rel_per_h"],
               k_recycle_per_h=None, interstitial_fraction=None) -> RadioligandParams:  # fmt: skip
        """Validated [`RadioligandParams`][] (maps: scalars broadcast to the grid; defaults:
        [`PSMA617_TUMOUR`][]). `k_recycle_per_h` (1/h) is required with receptor recycling.
        `interstitial_fraction` is accepted (and ignored) so that a [`template_rates`][] dict
        can be passed whole; it belongs to the model's structure."""
        g = self.grid
        maps = {
            "receptor_nmol_per_L": g.check_field("receptor_nmol_per_L", receptor_nmol_per_L,
                                                 nonnegative=True),
            "exchange_rate_per_h": g.check_field("exchange_rate_per_h", exchange_rate_per_h,
                                                 nonnegative=True),
            "plasma_fraction": g.check_field("plasma_fraction", plasma_fraction,
                                             nonnegative=True),
        }  # fmt: skip
        if self.receptor_recycling and k_recycle_per_h is None:
            raise InputError("k_recycle_per_h is required with receptor_recycling=True (1/h)")
        rates = {"k_on_L_per_nmol_h": k_on_L_per_nmol_h, "k_off_per_h": k_off_per_h,
                 "k_int_per_h": k_int_per_h, "k_rel_per_h": k_rel_per_h,
                 "k_recycle_per_h": 0.0 if k_recycle_per_h is None else k_recycle_per_h}  # fmt: skip
        for name, v in rates.items():
            if not (np.ndim(v) == 0 and math.isfinite(float(v)) and float(v) >= 0):
                raise InputError(f"{name} = {v!r}; allowed: a finite scalar >= 0")
        arrays = {k: jnp.asarray(v) for k, v in maps.items()}
        arrays.update({k: jnp.asarray(float(v)) for k, v in rates.items()})
        return RadioligandParams(**arrays)

    def simulate(self, params: RadioligandParams, plasma: PlasmaInput, times_h, *,
                 t0_h=None, rtol: float = 1e-5, atol: float = 1e-8, max_steps: int = 20_000,
                 throw: bool = True) -> TissueTrajectory:  # fmt: skip
        """Integrate from `t0_h` (default: the plasma's first time; no ligand in the tissue
        then) and save at `times_h` (sorted, >= `t0_h`).

        `rtol` and `atol` control the time steps (`atol` relative to each species' peak plasma
        concentration); `max_steps` is the step budget (`SolverError` beyond it when `throw`).
        Pure; `vmap` over `params` leaves with a batch axis.
        """
        if not isinstance(params, RadioligandParams):
            raise InputError(f"params must be RadioligandParams, got {type(params).__name__}")
        if not isinstance(plasma, PlasmaInput):
            raise InputError(f"plasma must be a PlasmaInput, got {type(plasma).__name__}")
        if plasma.nuclide is not None and plasma.nuclide != self.nuclide:
            raise InputError(
                f"plasma carries {plasma.nuclide}, the tissue model {self.nuclide}; allowed: "
                "the same nuclide"
            )
        times = np.asarray(times_h, dtype=float).reshape(-1)  # concrete: the output count
        if times.size == 0 or not (np.all(np.isfinite(times)) and np.all(np.diff(times) >= 0)):
            raise InputError(f"times_h = {times}; allowed: a non-empty sorted array (h)")
        t0 = plasma.times_h[0] if t0_h is None else jnp.asarray(float(t0_h))
        if not isinstance(t0, jax.core.Tracer) and times[0] < float(t0):
            raise InputError(f"times_h starts at {times[0]} h, before t0_h = {float(t0)} h")
        if not isinstance(t0, jax.core.Tracer) and times[-1] <= float(t0):
            raise InputError(f"times_h ends at {times[-1]} h; allowed: after t0_h = {float(t0)} h")
        shape = params.receptor_nmol_per_L.shape[-self.grid.ndim :]
        if shape != self.grid.shape:
            raise InputError(f"params maps have shape {shape}; allowed: {self.grid.shape}")
        # species scaled by their peak plasma concentration (atol is relative to it)
        peak = [jnp.max(x) for x in (plasma.hot_nmol_per_L, plasma.cold_nmol_per_L)]
        hot, cold = (jnp.where(x > 0, x, 1.0) for x in peak)
        scale = [hot, cold, hot, cold, hot, cold, hot, hot, hot]
        if self.receptor_recycling:  # receptors in transit: of the order of the ligand
            scale.append(hot + cold)
        # the label's name is static in PlasmaInput: drop it, so that one compilation serves
        # every nuclide
        unlabelled = jax.tree.unflatten(_unlabelled_structure(), jax.tree.leaves(plasma))
        ys, steps, failed = _integrate(
            self.faces, self.interstitial_fraction, params, unlabelled, jnp.asarray(times),
            t0, jnp.asarray(self.decay_constant_per_h), jnp.stack(scale),
            jnp.asarray(float(rtol)), jnp.asarray(float(atol)), sink=self.release == "sink",
            recycling=self.receptor_recycling, max_steps=max_steps,
        )  # fmt: skip
        if throw:
            msg = (f"the radioligand tissue solve failed (max_steps={max_steps}, rtol={rtol}, "
                   f"atol={atol})")  # fmt: skip
            ys = _checked(ys, failed, msg)
        fields = {k: ys[:, i] for i, k in enumerate(_SPECIES)}
        zeros = jnp.zeros_like(fields["free_hot"])
        cp_hot = plasma(jnp.asarray(times))[0]
        cp_int = plasma.hot_integral(jnp.asarray(times)) - plasma.hot_integral(t0)
        return TissueTrajectory(
            times_h=jnp.asarray(times), **fields,
            internalised_receptor=ys[:, -1] if self.receptor_recycling else zeros,
            plasma_hot=cp_hot, plasma_hot_integral=cp_int,
            plasma_fraction=params.plasma_fraction, steps=steps, grid=self.grid,
            nuclide=self.nuclide,
            decay_constant_per_h=self.decay_constant_per_h, mbq_per_nmol=self.mbq_per_nmol,
        )  # fmt: skip


# ------------------------------------------------------------------------------- numerics
def _divergence(faces, u):
    """div(phi D grad u) per unit volume on the finite-volume faces (as `Diffusion`, no-flux);
    arrays only, so that one compiled solver serves every grid spacing."""
    out = jnp.zeros_like(u)
    for a, f in enumerate(faces):
        flux = f * jnp.diff(u, axis=a)
        pad = [(0, 0)] * u.ndim
        pad[a] = (0, 1)  # face i gains cell i the flux (u_i+1 - u_i) f ...
        out = out + jnp.pad(flux, pad)
        pad[a] = (1, 0)  # ... and costs cell i+1 as much
        out = out - jnp.pad(flux, pad)
    return out


def _local(t, y, phi, p: RadioligandParams, plasma: PlasmaInput, lam, sink, recycling):
    """The per-cell reaction and exchange terms (module docs), fields first."""
    fh, fc, bh, bc, ih, ic = (y[i] for i in range(6))
    ch, cc = fh / phi, fc / phi
    r_free = p.receptor_nmol_per_L - bh - bc - (y[9] if recycling else 0.0)
    cph, cpc = plasma(t)
    kex, kon, koff, kint = (p.exchange_rate_per_h, p.k_on_L_per_nmol_h, p.k_off_per_h,
                            p.k_int_per_h)  # fmt: skip
    bind_h, bind_c = kon * r_free * ch, kon * r_free * cc
    rel_h, rel_c = p.k_rel_per_h * ih, p.k_rel_per_h * ic
    back = 0.0 if sink else 1.0
    out = [
        kex * (cph - ch) - bind_h + koff * bh + back * rel_h - lam * fh,
        kex * (cpc - cc) - bind_c + koff * bc + back * rel_c + lam * fh,
        bind_h - (koff + kint) * bh - lam * bh,
        bind_c - (koff + kint) * bc + lam * bh,
        kint * bh - rel_h - lam * ih,
        kint * bc - rel_c + lam * ih,
        fh + bh + ih,
        kex * cph * jnp.ones_like(fh),
        kex * ch + (1.0 - back) * rel_h,
    ]
    if recycling:
        out.append(kint * (bh + bc) - p.k_recycle_per_h * y[9])
    return jnp.stack(out)


def _bicgstab(a, b, x, m, scale, max_steps):
    """Right-preconditioned BiCGStab (van der Vorst 1992) for ``a(x) = b`` from `x`, with the
    preconditioner ``m(v)`` ~ ``a^-1 v``; converged when every residual component is within
    `scale` (checked before the first iteration, so an exact start costs nothing). Returns
    ``(x, converged)``."""

    def done(r):
        return jnp.max(jnp.abs(r) / scale) <= 1.0

    r = b - a(x)
    rhat = r
    zero = jnp.zeros_like(b)
    one = jnp.asarray(1.0)

    def cond(c):
        return ~c[-2] & ~c[-1] & (c[6] < max_steps)

    def body(c):
        x, r, p, v, rho, omega, k, alpha, _, _ = c
        rho_new = jnp.vdot(rhat, r)
        p = r + rho_new / rho * (alpha / omega) * (p - omega * v)
        mp = m(p)
        v = a(mp)
        den = jnp.vdot(rhat, v)
        alpha = rho_new / jnp.where(den != 0, den, 1.0)
        s = r - alpha * v
        ms = m(s)
        t = a(ms)
        tt = jnp.vdot(t, t)
        omega = jnp.where(tt > 0, jnp.vdot(t, s) / jnp.where(tt > 0, tt, 1.0), 0.0)
        x = x + alpha * mp + omega * ms
        r = s - omega * t
        broke = (rho_new == 0) | (den == 0) | (omega == 0) | ~jnp.isfinite(omega)
        return x, r, p, v, rho_new, omega, k + 1, alpha, done(r), broke

    init = (x, r, zero, zero, one, one, 0, one, done(r), jnp.asarray(False))
    out = jax.lax.while_loop(cond, body, init)
    return out[0], out[-2]


def _inverse(m):
    """Inverses of the (n, n) matrices ``m[:, :, cell]`` by Gauss-Jordan elimination without
    pivoting, vectorised over cells (LAPACK's batched inverse loops over them on a CPU). The
    matrices I - h gamma J have dominant diagonals; a zero pivot gives non-finite entries,
    which the caller rejects."""
    n = m.shape[0]
    a, inv = m, jnp.broadcast_to(jnp.eye(n)[:, :, None], m.shape)
    for k in range(n):
        row, irow = a[k] / a[k, k], inv[k] / a[k, k]
        fac = a[:, k].at[k].set(0.0)
        a = (a - fac[:, None] * row[None]).at[k].set(row)
        inv = (inv - fac[:, None] * irow[None]).at[k].set(irow)
    return inv


class _KrylovRodas4(Rodas4):
    """Rodas4 for ``dy/dt = local(y) + E L E^T y``: per-cell reactions on fields ``y[:ns]``
    (species) and ``y[ns:]`` (quadratures, which nothing depends on), and a linear operator
    L (diffusion) acting on the first `n_diffusing` species.

    Each stage solves ``(I - h gamma J) K = b`` with ``J = J_loc + E L E^T``. With the per-cell
    inverse W = (I - h gamma J_ss)^-1 of the species block, the species part is ``K_s = W (b_s
    + h gamma E L K_F)``, so only the diffusing fields need an iterative solve, of the small
    system ``(I - h gamma W_FF L) K_F = (W b_s)_F`` (BiCGStab); the quadratures follow as
    ``K_q = b_q + h gamma J_qs K_s``. Any left null vector c of J (a conservation law) gives
    ``c.K = c.b`` for *every* K_F, because L conserves: the balance holds to rounding whatever
    the Krylov tolerance.
    """

    local_jacobian: object = eqx.field(static=True)  # (t, y) -> (ns, nf, cells)
    diffusion: object = eqx.field(static=True)  # (n_diffusing, *shape) -> same
    diffusion_diagonal: Array = 0.0  # the diagonal of that operator, (n_diffusing, *shape)
    n_species: int = eqx.field(static=True, default=6)
    n_diffusing: int = eqx.field(static=True, default=2)
    rtol: Array = 1e-5  # arrays, not static: one compiled solver serves every tolerance
    atol: Array = 1e-8
    # Stage solves to 1 % of the step tolerance: their error enters like a W-method's, well
    # below the step error; conservation does not depend on it (see above).
    krylov_tol: float = eqx.field(static=True, default=1e-2)
    max_krylov: int = eqx.field(static=True, default=500)

    def init(self, terms, t0, t1, y0, args):
        return None

    def step(self, terms, t0, t1, y0, args, solver_state, made_jump):
        h = t1 - t0
        gh = h * float(self._gamma)
        ns, nd = self.n_species, self.n_diffusing
        shape = y0.shape[1:]

        def f(t, y):
            return terms.vf(t, y, args)

        f0 = f(t0, y0)
        dfdt = jax.jvp(lambda t: f(t, y0), (t0,), (jnp.ones_like(t0),))[1]
        jac = self.local_jacobian(t0, y0)  # jac[j, i, cell] = d f_i / d y_j, j < ns
        w = _inverse(jnp.eye(ns)[:, :, None] - gh * jac[:, :ns].swapaxes(0, 1))
        finite = jnp.all(jnp.isfinite(w))  # no pivoting: guard (a shorter step follows)
        w_ff, w_xf = w[:nd, :nd], w[:, :nd]
        jac_q = jac[:, ns:].swapaxes(0, 1)  # (nq, ns, cells)
        scale = self.krylov_tol * (self.atol + self.rtol * jnp.abs(y0[:nd]))
        # Jacobi preconditioner of the reduced system: its diagonal, 1 - h gamma W_ii L_ii
        l_diag = self.diffusion_diagonal.reshape(nd, -1)
        diag = 1.0 - gh * jnp.diagonal(w_ff, axis1=0, axis2=1).T * l_diag

        def mat(m, v):  # per-cell (a, b) matrices times (b,) vectors, cells last
            return jnp.sum(m * v[None], axis=1)

        def reduced(v):
            return v - gh * mat(w_ff, self.diffusion(v.reshape(nd, *shape)).reshape(nd, -1))

        def solve(b):
            b = b.reshape(b.shape[0], -1)
            wb = mat(w, b[:ns])
            kf, ok = _bicgstab(reduced, wb[:nd], wb[:nd], lambda v: v / diag,
                               scale.reshape(nd, -1), self.max_krylov)  # fmt: skip
            lk = self.diffusion(kf.reshape(nd, *shape)).reshape(nd, -1)
            ks = wb + gh * mat(w_xf, lk)
            kq = b[ns:] + gh * mat(jac_q, ks)
            return jnp.concatenate([ks, kq]).reshape(y0.shape), ok & finite

        s = len(self._m)
        coeffs = (jnp.asarray(self._a), jnp.asarray(self._c) / h, jnp.asarray(self._alpha),
                  jnp.asarray(self._gammas) * h, jnp.arange(s))  # fmt: skip

        def stage(carry, co):
            ks, ok = carry
            a_i, c_i, alpha_i, g_i, i = co
            yi = y0 + jnp.tensordot(a_i, ks, axes=1)
            rhs = f(t0 + alpha_i * h, yi) + jnp.tensordot(c_i, ks, axes=1) + g_i * dfdt
            k, conv = solve(gh * rhs)
            return (ks.at[i].set(k), ok & conv), None

        ks0 = jnp.zeros((s, *y0.shape), y0.dtype)
        (ks, ok), _ = jax.lax.scan(stage, (ks0, jnp.asarray(True)), coeffs)
        y1 = y0 + jnp.tensordot(jnp.asarray(self._m), ks, axes=1)
        # A stage whose Krylov solve did not converge rejects the step (a shorter one follows).
        err = jnp.where(ok, jnp.tensordot(jnp.asarray(self._e), ks, axes=1), jnp.inf)
        f1 = f(t1, y1)
        dense = dict(y0=y0, y1=y1, k0=h * f0, k1=h * f1)
        return y1, err, dense, None, dfx.RESULTS.successful


@eqx.filter_jit
def _integrate(faces, phi, p, plasma, times, t0, lam, scale, rtol, atol, *, sink, recycling,
               max_steps):  # fmt: skip
    """States ``(T, nf, *shape)`` at `times` (unscaled) and a failure flag."""
    sc = scale.reshape((-1,) + (1,) * phi.ndim)
    ns = 6 + recycling
    # Species first, then the quadratures (cumulated hot, influx, efflux).
    order = np.r_[0:6, 9 : 9 + recycling, 6:9]
    inverse = np.argsort(order)

    def local(t, y):  # scaled variables, solver field order
        out = _local(t, y[inverse] * sc, phi, p, plasma, lam, sink, recycling) / sc
        return out[order]

    def diffusion(v):  # the free ligand's fields (scaled; L is linear)
        return jnp.stack([_divergence(faces, v[i] / phi) for i in range(2)])

    def vf(t, y, args):
        return local(t, y).at[:2].add(diffusion(y[:2]))

    def local_jacobian(t, y):
        nf = y.shape[0]
        eye = jnp.eye(nf)[:ns].reshape((ns, nf) + (1,) * phi.ndim) * jnp.ones_like(y)[None]
        _, lin = jax.linearize(lambda z: local(t, z), y)
        return jax.vmap(lin)(eye).reshape(ns, nf, -1)  # [j, i, cell] = d local_i / d y_j

    # the diagonal of L: minus the sum of a cell's face rates, over phi
    l_diag = -sum(
        jnp.pad(f, [(0, 0)] * a + [(0, 1)] + [(0, 0)] * (phi.ndim - a - 1))
        + jnp.pad(f, [(0, 0)] * a + [(1, 0)] + [(0, 0)] * (phi.ndim - a - 1))
        for a, f in enumerate(faces)
    )
    l_diag = jnp.broadcast_to(l_diag / phi, (2, *phi.shape))
    solver = _KrylovRodas4(
        local_jacobian=local_jacobian,
        diffusion=diffusion,
        diffusion_diagonal=l_diag,
        n_species=ns,
        rtol=rtol,
        atol=atol,
    )
    y0 = jnp.zeros((scale.shape[0], *phi.shape))
    sol = dfx.diffeqsolve(
        dfx.ODETerm(vf), solver, t0, times[-1], None, y0, None,
        saveat=dfx.SaveAt(ts=times),
        # Steps land on the output times and on the plasma's knots (kinks of the input).
        stepsize_controller=dfx.PIDController(rtol=rtol, atol=atol, pcoeff=0.3, icoeff=0.4,
                                              step_ts=times, jump_ts=plasma.times_h),
        max_steps=max_steps, throw=False,
    )  # fmt: skip
    ys = sol.ys[:, inverse] * sc[None]
    steps = jnp.stack([sol.stats["num_accepted_steps"], sol.stats["num_rejected_steps"]])
    return ys, steps, sol.result != dfx.RESULTS.successful
