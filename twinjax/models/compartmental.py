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

Rates, capacities and volumes are [`Monomial`][]s of named positive parameters, so the model is pure
structure (static) and the numbers travel separately as a ``dict[str, Array]`` of parameters.
"""

from __future__ import annotations

import dataclasses
import difflib
from collections.abc import Mapping, Sequence

import equinox as eqx
import jax.numpy as jnp
import numpy as np

from .._errors import InputError
from ._expr import Monomial, monomial

__all__ = ["Binding", "CompartmentalModel", "SaturableTransfer", "Transfer"]


@dataclasses.dataclass(frozen=True)
class Transfer:
    """First-order transfer `source` -> `target` with rate constant `rate` (1/h)."""

    source: str
    target: str
    rate: Monomial

    def __post_init__(self) -> None:
        object.__setattr__(self, "rate", monomial(self.rate))


@dataclasses.dataclass(frozen=True)
class SaturableTransfer:
    """Michaelis-Menten transfer: Vmax (nmol/h), Km (nmol/L), `volume` (L) of the source."""

    source: str
    target: str
    vmax: Monomial
    km: Monomial
    volume: Monomial

    def __post_init__(self) -> None:
        for f in ("vmax", "km", "volume"):
            object.__setattr__(self, f, monomial(getattr(self, f)))


@dataclasses.dataclass(frozen=True)
class Binding:
    """Binding of free ligand in `free` (volume `volume`, L) to `capacity` sites (nmol) in `bound`.

    Association rate constant `k_on` in L/(nmol h). Dissociation is a [`Transfer`][] back.
    """

    free: str
    bound: str
    k_on: Monomial
    capacity: Monomial
    volume: Monomial

    def __post_init__(self) -> None:
        for f in ("k_on", "capacity", "volume"):
            object.__setattr__(self, f, monomial(getattr(self, f)))


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
    volumes: tuple[tuple[str, Monomial], ...] = eqx.field(
        static=True, default=(), converter=lambda v: _pairs(v, monomial)
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
        for t in self.transfers:
            names.update(t.rate.names)
        for s in self.saturable:
            names.update(s.vmax.names + s.km.names + s.volume.names)
        for b in self.bindings:
            names.update(b.k_on.names + b.capacity.names + b.volume.names)
        for _, v in self.volumes:
            names.update(v.names)
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
                    "allowed: finite values > 0"
                )

    def compartment_volumes(self, params: Mapping[str, object]):
        """Volumes (L) of the compartments that have one; NaN for the others."""
        v = [jnp.nan] * self.n_compartments
        for c, expr in self.volumes:
            v[self.index(c)] = expr(params)
        return jnp.stack([jnp.asarray(x, dtype=float) for x in v])

    def transfer_matrix(self, params: Mapping[str, object], totals=None):
        """Matrix A (1/h) with dx_s/dt = A x_s for each ligand species (decay excluded).

        `totals` (nmol, shape ``(n,)``) is the total ligand per compartment; it sets how saturated
        carriers and receptors are, and is only needed when the model is not linear.
        """
        n = self.n_compartments
        src, dst, rate = [], [], []
        for t in self.transfers:
            src.append(self.index(t.source))
            dst.append(self.index(t.target))
            rate.append(jnp.asarray(t.rate(params), dtype=float))
        for s in self.saturable:
            i = self.index(s.source)
            vol = s.volume(params)
            # per-species first-order coefficient: Vmax / (V * (Km + x_total / V))
            rate.append(s.vmax(params) / (vol * s.km(params) + jnp.maximum(totals[i], 0.0)))
            src.append(i)
            dst.append(self.index(s.target))
        for b in self.bindings:
            i, j = self.index(b.free), self.index(b.bound)
            free_sites = jnp.maximum(b.capacity(params) - totals[j], 0.0)
            rate.append(b.k_on(params) * free_sites / b.volume(params))
            src.append(i)
            dst.append(j)
        if not rate:
            return jnp.zeros((n, n))
        rate = jnp.stack(jnp.broadcast_arrays(*rate))
        src, dst = np.asarray(src), np.asarray(dst)
        a = jnp.zeros((n, n), dtype=rate.dtype)
        a = a.at[dst, src].add(rate)
        a = a.at[src, src].add(-rate)
        return a

    def dose_vector(self) -> np.ndarray:
        e = np.zeros(self.n_compartments)
        e[self.index(self.dose_compartment)] = 1.0
        return e


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
