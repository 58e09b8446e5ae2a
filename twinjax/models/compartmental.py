"""Compartmental models of a radiolabelled ligand, from a declarative specification.

A model moves *ligand* (nmol) between compartments. Every process acts identically on the labelled
("hot") and unlabelled ("cold") molecules, because the label does not change the chemistry; physical
decay turns hot molecules into cold ones where they are (the ligand stays, only the label decays).
Three kinds of process make up a model:

- [`Transfer`][] — first order: flux = k * x[source] (k in 1/h). Flows, permeation, filtration,
  excretion, dissociation, internalisation and release are all transfers.
- [`SaturableTransfer`][] — Michaelis-Menten carrier: flux of species s =
  Vmax * c_s / (Km + c_total), with c = x[source] / V (nmol/L), Vmax in nmol/h, Km in nmol/L.
  Hot and cold ligand compete for the same carrier.
- [`Binding`][] — second-order binding to a finite number of sites: flux of species s =
  k_on * (R - x_total[bound]) * x_s[free] / V, with k_on in L/(nmol h) and R the sites (nmol).
  Hot and cold ligand compete for the same receptors, which is why the injected peptide amount
  changes the biodistribution.

Given the total ligand in each compartment, the hot and the cold species each obey a *linear*
system ``dx_s/dt = A(x_total) x_s``; [`CompartmentalModel.transfer_matrix`][] builds ``A``. A model
with only transfers has a constant ``A`` and is solved exactly by the matrix exponential.

Rates, capacities and volumes are [`Expr`][]essions of named parameters (``"Q / V"``), so the
model is pure structure (static) and the numbers travel separately as a ``dict[str, Array]``.
"""

from __future__ import annotations

import dataclasses
import difflib
from collections.abc import Mapping, Sequence

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array

from .._errors import InputError
from ._expr import Expr, expr

__all__ = ["Binding", "CompartmentalModel", "SaturableTransfer", "Transfer"]


@dataclasses.dataclass(frozen=True)
class Transfer:
    """First-order transfer `source` -> `target` with rate constant `rate` (1/h)."""

    source: str
    target: str
    rate: Expr

    def __post_init__(self) -> None:
        object.__setattr__(self, "rate", expr(self.rate))


@dataclasses.dataclass(frozen=True)
class SaturableTransfer:
    """Michaelis-Menten transfer: Vmax (nmol/h), Km (nmol/L), `volume` (L) of the source."""

    source: str
    target: str
    vmax: Expr
    km: Expr
    volume: Expr

    def __post_init__(self) -> None:
        for f in ("vmax", "km", "volume"):
            object.__setattr__(self, f, expr(getattr(self, f)))


@dataclasses.dataclass(frozen=True)
class Binding:
    """Binding of free ligand in `free` (volume `volume`, L) to `capacity` sites (nmol) in `bound`.

    Association rate constant `k_on` in L/(nmol h). Dissociation is a [`Transfer`][] back.
    """

    free: str
    bound: str
    k_on: Expr
    capacity: Expr
    volume: Expr

    def __post_init__(self) -> None:
        for f in ("k_on", "capacity", "volume"):
            object.__setattr__(self, f, expr(getattr(self, f)))


class CompartmentalModel(eqx.Module):
    """A compartmental model of a radiolabelled ligand (structure only; see module docs).

    **Fields** (all static):
    - `compartments`: names. `dose_compartment`: where administrations enter.
    - `transfers`, `saturable`, `bindings`: the processes.
    - `excreta`: compartments outside the body (urine, faeces); they count as excreted.
    - `volumes`: ``(compartment, volume expression in L)`` for concentrations.
    - `groups`: ``(name, compartments)``, e.g. an organ made of several spaces; each compartment is
      also its own group.
    """

    compartments: tuple[str, ...] = eqx.field(static=True, converter=tuple)
    dose_compartment: str = eqx.field(static=True)
    transfers: tuple[Transfer, ...] = eqx.field(static=True, default=(), converter=tuple)
    saturable: tuple[SaturableTransfer, ...] = eqx.field(static=True, default=(), converter=tuple)
    bindings: tuple[Binding, ...] = eqx.field(static=True, default=(), converter=tuple)
    excreta: tuple[str, ...] = eqx.field(static=True, default=(), converter=tuple)
    volumes: tuple[tuple[str, Expr], ...] = eqx.field(
        static=True, default=(), converter=lambda v: _pairs(v, expr)
    )
    groups: tuple[tuple[str, tuple[str, ...]], ...] = eqx.field(
        static=True, default=(), converter=lambda g: _pairs(g, tuple)
    )
    name: str = eqx.field(static=True, default="compartmental")

    def __check_init__(self) -> None:
        names = self.compartments
        if len(set(names)) != len(names):
            dup = sorted({n for n in names if names.count(n) > 1})
            raise InputError(f"compartments: {dup} appear more than once; names must be unique")
        if not names:
            raise InputError("compartments: empty; allowed: at least one compartment")
        known = set(names)

        def need(field: str, value: str) -> None:
            if value not in known:
                close = difflib.get_close_matches(value, names, n=3)
                raise InputError(
                    f"{field} = {value!r} is not a compartment of model {self.name!r}; "
                    f"{'closest: ' + ', '.join(close) if close else 'allowed: ' + ', '.join(names)}"
                )

        need("dose_compartment", self.dose_compartment)
        for i, t in enumerate(self.transfers):
            need(f"transfers[{i}].source", t.source)
            need(f"transfers[{i}].target", t.target)
            if t.source == t.target:
                raise InputError(f"transfers[{i}]: source and target are both {t.source!r}")
        for i, t in enumerate(self.saturable):
            need(f"saturable[{i}].source", t.source)
            need(f"saturable[{i}].target", t.target)
        for i, b in enumerate(self.bindings):
            need(f"bindings[{i}].free", b.free)
            need(f"bindings[{i}].bound", b.bound)
        for e in self.excreta:
            need("excreta", e)
        for c, _ in self.volumes:
            need("volumes", c)
        for g, members in self.groups:
            for m in members:
                need(f"groups[{g!r}]", m)

    # ------------------------------------------------------------------ structure
    @property
    def n_compartments(self) -> int:
        return len(self.compartments)

    @property
    def is_linear(self) -> bool:
        """True when every process is first order (solved exactly by the matrix exponential)."""
        return not self.saturable and not self.bindings

    def index(self, compartment: str) -> int:
        try:
            return self.compartments.index(compartment)
        except ValueError:
            close = difflib.get_close_matches(compartment, self.compartments, n=3)
            raise InputError(
                f"compartment {compartment!r} is not in model {self.name!r}; "
                f"{'closest: ' + ', '.join(close) if close else 'known: ' + ', '.join(self.compartments)}"
            ) from None

    def group(self, name: str) -> tuple[int, ...]:
        """Indices of the compartments in group (organ) `name`, or of compartment `name` itself."""
        for g, members in self.groups:
            if g == name:
                return tuple(self.index(m) for m in members)
        if name in self.compartments:
            return (self.index(name),)
        options = [g for g, _ in self.groups] + list(self.compartments)
        close = difflib.get_close_matches(name, options, n=3)
        raise InputError(
            f"organ or compartment {name!r} is not in model {self.name!r}; "
            f"{'closest: ' + ', '.join(close) if close else 'known: ' + ', '.join(options)}"
        )

    @property
    def group_names(self) -> tuple[str, ...]:
        return tuple(g for g, _ in self.groups)

    @property
    def body_mask(self) -> np.ndarray:
        """1 for compartments inside the body, 0 for excreta."""
        return np.array([0.0 if c in self.excreta else 1.0 for c in self.compartments])

    @property
    def parameter_names(self) -> tuple[str, ...]:
        """Every parameter name the model's expressions use, sorted."""
        names: set[str] = set()
        for _, e in self._expressions():
            names.update(e.names)
        return tuple(sorted(names))

    # ------------------------------------------------------------------ numbers
    def check_params(self, params: Mapping[str, object]) -> None:
        """Raise [`InputError`][] unless every needed parameter is present, finite and > 0.

        Only concrete values are checked (traced values pass through untouched).
        """
        if not isinstance(params, Mapping):
            raise InputError(f"params must be a mapping name -> value, got {type(params).__name__}")
        for name in self.parameter_names:
            if name not in params:
                close = difflib.get_close_matches(name, list(params), n=3)
                raise InputError(
                    f"parameter {name!r} of model {self.name!r} is missing"
                    + (f"; did you mean {', '.join(map(repr, close))}?" if close else "")
                )
            value = params[name]
            try:
                arr = np.asarray(value, dtype=float)
            except Exception:  # a tracer: not checkable here
                continue
            if not np.all(np.isfinite(arr)) or not np.all(arr > 0):
                raise InputError(
                    f"parameter {name} = {value!r} of model {self.name!r} is invalid; "
                    "allowed: finite values > 0 (positive physical quantities)"
                )
        # Every derived rate, capacity and volume must be positive too (e.g. '1 - f' with f > 1).
        try:
            concrete = {k: np.asarray(params[k], dtype=float) for k in self.parameter_names}
        except Exception:
            return
        for what, e in self._expressions():
            # Concrete parameters evaluate eagerly even while a caller is being traced by jit.
            with jax.ensure_compile_time_eval():
                v = np.asarray(e(concrete))
            if not np.all(np.isfinite(v)) or not np.all(v > 0):
                raise InputError(
                    f"{what} = {e} evaluates to {v} with the given parameters of model "
                    f"{self.name!r}; allowed: finite values > 0"
                )

    def _expressions(self):
        for i, t in enumerate(self.transfers):
            yield f"transfers[{i}] ({t.source} -> {t.target}).rate", t.rate
        for i, t in enumerate(self.saturable):
            for f in ("vmax", "km", "volume"):
                yield f"saturable[{i}] ({t.source} -> {t.target}).{f}", getattr(t, f)
        for i, b in enumerate(self.bindings):
            for f in ("k_on", "capacity", "volume"):
                yield f"bindings[{i}] ({b.free} -> {b.bound}).{f}", getattr(b, f)
        for c, v in self.volumes:
            yield f"volumes[{c!r}]", v

    def compartment_volumes(self, params: Mapping[str, object]):
        """Volumes (L) of the compartments that have one; NaN for the others."""
        v = [jnp.nan] * self.n_compartments
        for c, formula in self.volumes:
            v[self.index(c)] = formula(params)
        return jnp.stack([jnp.asarray(x, dtype=float) for x in v])

    def prepare(self, params: Mapping[str, object]) -> PreparedRates:
        """Evaluate every rate expression once: the constant first-order matrix and the
        coefficients of the saturable and binding processes (see [`PreparedRates`][])."""
        n = self.n_compartments
        a0 = jnp.zeros((n, n))
        if self.transfers:
            src = np.array([self.index(t.source) for t in self.transfers])
            dst = np.array([self.index(t.target) for t in self.transfers])
            rate = jnp.stack([t.rate(params) for t in self.transfers])
            a0 = a0.at[dst, src].add(rate).at[src, src].add(-rate)

        def idx(items, a, b):
            return (
                np.array([self.index(getattr(x, a)) for x in items], dtype=int),
                np.array([self.index(getattr(x, b)) for x in items], dtype=int),
            )

        def stack(values):
            return jnp.stack(values) if values else jnp.zeros((0,))

        sat_src, sat_dst = idx(self.saturable, "source", "target")
        bind_src, bind_dst = idx(self.bindings, "free", "bound")
        return PreparedRates(
            a0=a0,
            sat_vmax=stack([x.vmax(params) for x in self.saturable]),
            sat_km_amount=stack([x.km(params) * x.volume(params) for x in self.saturable]),
            bind_kon_per_volume=stack([b.k_on(params) / b.volume(params) for b in self.bindings]),
            bind_capacity=stack([b.capacity(params) for b in self.bindings]),
            sat_src=tuple(sat_src.tolist()),
            sat_dst=tuple(sat_dst.tolist()),
            bind_src=tuple(bind_src.tolist()),
            bind_dst=tuple(bind_dst.tolist()),
        )

    def transfer_matrix(self, params: Mapping[str, object], totals=None):
        """Matrix A (1/h) with dx_s/dt = A x_s for each ligand species (decay excluded).

        `totals` (nmol, shape ``(n,)``) is the total ligand per compartment; it sets how saturated
        carriers and receptors are, and is only needed when the model is not linear.
        """
        return self.prepare(params).matrix(totals)

    def dose_vector(self) -> np.ndarray:
        e = np.zeros(self.n_compartments)
        e[self.index(self.dose_compartment)] = 1.0
        return e


class PreparedRates(eqx.Module):
    """Rates of a model evaluated for one parameter set, ready for the ODE right-hand side.

    ``dx_s/dt = a0 @ x_s + (saturable and binding fluxes of species s)``: the first-order part is
    one dense matrix product; the nonlinear part is a gather/scatter over a few processes. This
    keeps each right-hand-side evaluation to a handful of array operations however many
    transfers the model has.
    """

    a0: Array
    sat_vmax: Array
    sat_km_amount: Array
    bind_kon_per_volume: Array
    bind_capacity: Array
    sat_src: tuple[int, ...] = eqx.field(static=True)
    sat_dst: tuple[int, ...] = eqx.field(static=True)
    bind_src: tuple[int, ...] = eqx.field(static=True)
    bind_dst: tuple[int, ...] = eqx.field(static=True)

    def _coefficients(self, totals):
        """First-order coefficients (1/h) of the nonlinear processes at total amounts `totals`."""
        coef, src, dst = [], [], []
        if self.sat_src:
            i = np.asarray(self.sat_src)
            coef.append(self.sat_vmax / (self.sat_km_amount + jnp.maximum(totals[i], 0.0)))
            src.append(i)
            dst.append(np.asarray(self.sat_dst))
        if self.bind_src:
            j = np.asarray(self.bind_dst)
            free_sites = jnp.maximum(self.bind_capacity - totals[j], 0.0)
            coef.append(self.bind_kon_per_volume * free_sites)
            src.append(np.asarray(self.bind_src))
            dst.append(j)
        if not coef:
            return None
        return jnp.concatenate(coef), np.concatenate(src), np.concatenate(dst)

    def apply(self, x, totals):
        """dx/dt for one species with amounts `x` (nmol), given total ligand `totals` (nmol)."""
        dx = self.a0 @ x
        c = self._coefficients(totals)
        if c is not None:
            coef, src, dst = c
            flux = coef * x[src]
            dx = dx.at[dst].add(flux).at[src].add(-flux)
        return dx

    def matrix(self, totals=None):
        """The full first-order matrix at total amounts `totals` (frozen saturation)."""
        c = None if totals is None else self._coefficients(totals)
        if c is None:
            return self.a0
        coef, src, dst = c
        return self.a0.at[dst, src].add(coef).at[src, src].add(-coef)


def _pairs(value, convert) -> tuple:
    items = value.items() if isinstance(value, Mapping) else value
    return tuple((str(k), convert(v)) for k, v in items)


def make_groups(
    compartments: Sequence[str], prefix_sep: str = "."
) -> tuple[tuple[str, tuple[str, ...]], ...]:
    """Group compartments named ``organ.space`` by their organ prefix."""
    groups: dict[str, list[str]] = {}
    for c in compartments:
        if prefix_sep in c:
            groups.setdefault(c.split(prefix_sep, 1)[0], []).append(c)
    return tuple((g, tuple(m)) for g, m in groups.items())
