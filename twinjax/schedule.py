"""Administrations and treatment schedules.

A [`Schedule`][] is an `equinox.Module`: its numbers (times, activities, ligand amounts, infusion
durations) are array leaves, so a simulation can be differentiated with respect to the administered
activity and ligand amount and `vmap`-ed over schedules of the same shape; its structure (number of
administrations, which are infusions, the radionuclide) is static.

```python
sched = Schedule.cycles(activity_MBq=7400.0, n_cycles=6, interval_h=6 * 168.0,
                        nuclide="Lu-177", ligand_nmol=57.1)
```
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import equinox as eqx
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

from ._errors import InputError
from .nuclides import nuclide as _lookup

__all__ = ["Administration", "Schedule"]


@dataclasses.dataclass(frozen=True)
class Administration:
    """One administration of a radiopharmaceutical.

    **Arguments:**
    - `time_h`: start time (h, on the study clock; usually hours since the first administration).
    - `activity_MBq`: administered activity of the labelling nuclide (MBq), > 0.
    - `nuclide`: the label, e.g. ``"Lu-177"``.
    - `ligand_nmol`: total amount of ligand (peptide) injected, labelled plus unlabelled (nmol).
      ``None`` means carrier-free (only the labelled molecules). Must be at least the labelled
      amount ``activity_MBq / nuclide.mbq_per_nmol``.
    - `duration_h`: 0 for a bolus; > 0 for a constant-rate infusion over that time (h).
    """

    time_h: float
    activity_MBq: float
    nuclide: str = "Lu-177"
    ligand_nmol: float | None = None
    duration_h: float = 0.0

    def __post_init__(self) -> None:
        nuc = _lookup(self.nuclide)
        object.__setattr__(self, "nuclide", nuc.name)
        _check_number("time_h", self.time_h, "a finite time >= 0 h", lambda v: v >= 0.0)
        _check_number(
            "activity_MBq", self.activity_MBq, "a finite activity > 0 MBq", lambda v: v > 0
        )
        _check_number(
            "duration_h",
            self.duration_h,
            "0 (bolus) or a finite duration > 0 h",
            lambda v: v >= 0.0,
        )
        hot = self.activity_MBq / nuc.mbq_per_nmol
        if self.ligand_nmol is not None:
            _check_number(
                "ligand_nmol", self.ligand_nmol, "a finite amount > 0 nmol", lambda v: v > 0
            )
            if self.ligand_nmol < hot * (1.0 - 1e-9):
                raise InputError(
                    f"ligand_nmol = {self.ligand_nmol!r} nmol is less than the {hot:.4g} nmol of "
                    f"{nuc.name}-labelled ligand that {self.activity_MBq!r} MBq needs; allowed: "
                    f"ligand_nmol >= activity_MBq / {nuc.mbq_per_nmol:.6g} MBq/nmol"
                )

    @property
    def hot_nmol(self) -> float:
        """Amount of labelled ligand (nmol): activity / specific activity of the pure nuclide."""
        return self.activity_MBq / _lookup(self.nuclide).mbq_per_nmol

    @property
    def cold_nmol(self) -> float:
        """Amount of unlabelled ligand (nmol)."""
        return 0.0 if self.ligand_nmol is None else max(self.ligand_nmol - self.hot_nmol, 0.0)


def _check_number(field: str, value, allowed: str, ok) -> None:
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise InputError(f"{field} = {value!r} is not a number; allowed: {allowed}") from None
    if not math.isfinite(v) or not ok(v):
        raise InputError(f"{field} = {value!r} is invalid; allowed: {allowed}")


class Schedule(eqx.Module):
    """A sequence of administrations of one radionuclide, sorted in time.

    Leaves (arrays, shape ``(n,)``): `time_h`, `hot_nmol` (labelled ligand), `cold_nmol`
    (unlabelled ligand), `duration_h`. Static: `nuclide`, `is_infusion` (per administration).
    Build with [`Schedule.from_administrations`][], [`Schedule.single`][] or [`Schedule.cycles`][].
    """

    time_h: Float[Array, " n"]
    hot_nmol: Float[Array, " n"]
    cold_nmol: Float[Array, " n"]
    duration_h: Float[Array, " n"]
    nuclide: str = eqx.field(static=True)
    is_infusion: tuple[bool, ...] = eqx.field(static=True)

    @classmethod
    def from_administrations(cls, administrations: Sequence[Administration]) -> Schedule:
        admins = tuple(administrations)
        if not admins:
            raise InputError("schedule: no administrations given; allowed: one or more")
        nuclides = {a.nuclide for a in admins}
        if len(nuclides) > 1:
            raise InputError(
                f"schedule: administrations mix nuclides {sorted(nuclides)}; a schedule carries "
                "one label (simulate each label separately)"
            )
        times = [a.time_h for a in admins]
        for i in range(1, len(times)):
            if times[i] <= times[i - 1]:
                raise InputError(
                    f"administrations[{i}].time_h = {times[i]!r} h is not after administrations"
                    f"[{i - 1}].time_h = {times[i - 1]!r} h; allowed: strictly increasing times "
                    "(combine simultaneous administrations into one)"
                )
            prev = admins[i - 1]
            if prev.duration_h > 0 and times[i] < prev.time_h + prev.duration_h:
                raise InputError(
                    f"administrations[{i}].time_h = {times[i]!r} h starts during the infusion of "
                    f"administrations[{i - 1}] (ends at {prev.time_h + prev.duration_h!r} h); "
                    "allowed: infusions that end before the next administration"
                )
        return cls(
            time_h=jnp.asarray(times, dtype=float),
            hot_nmol=jnp.asarray([a.hot_nmol for a in admins], dtype=float),
            cold_nmol=jnp.asarray([a.cold_nmol for a in admins], dtype=float),
            duration_h=jnp.asarray([a.duration_h for a in admins], dtype=float),
            nuclide=admins[0].nuclide,
            is_infusion=tuple(a.duration_h > 0 for a in admins),
        )

    @classmethod
    def single(
        cls,
        activity_MBq: float,
        *,
        nuclide: str = "Lu-177",
        ligand_nmol: float | None = None,
        time_h: float = 0.0,
        duration_h: float = 0.0,
    ) -> Schedule:
        """One administration (see [`Administration`][] for the arguments)."""
        return cls.from_administrations(
            [Administration(time_h, activity_MBq, nuclide, ligand_nmol, duration_h)]
        )

    @classmethod
    def cycles(
        cls,
        activity_MBq: float | Sequence[float],
        n_cycles: int,
        interval_h: float,
        *,
        nuclide: str = "Lu-177",
        ligand_nmol: float | Sequence[float] | None = None,
        start_h: float = 0.0,
        duration_h: float = 0.0,
    ) -> Schedule:
        """`n_cycles` administrations every `interval_h` hours, e.g. 6 x 7.4 GBq every 6 weeks.

        `activity_MBq` and `ligand_nmol` may be one value for all cycles or one per cycle.
        """
        if not isinstance(n_cycles, int | np.integer) or n_cycles < 1:
            raise InputError(f"n_cycles = {n_cycles!r}; allowed: an integer >= 1")
        _check_number("interval_h", interval_h, "a finite interval > 0 h", lambda v: v > 0)
        acts = _per_cycle("activity_MBq", activity_MBq, n_cycles)
        ligs = _per_cycle("ligand_nmol", ligand_nmol, n_cycles)
        return cls.from_administrations(
            [
                Administration(start_h + i * interval_h, acts[i], nuclide, ligs[i], duration_h)
                for i in range(n_cycles)
            ]
        )

    @property
    def n_administrations(self) -> int:
        return len(self.is_infusion)

    @property
    def activity_MBq(self) -> Float[Array, " n"]:
        """Administered activity of each administration (MBq)."""
        return self.hot_nmol * _lookup(self.nuclide).mbq_per_nmol

    @property
    def decay_constant_per_h(self) -> float:
        return _lookup(self.nuclide).decay_constant_per_h

    @property
    def mbq_per_nmol(self) -> float:
        return _lookup(self.nuclide).mbq_per_nmol

    def with_activity(self, activity_MBq) -> Schedule:
        """The same schedule with new activities (MBq; scalar or per administration).

        The unlabelled ligand amount is kept; this is the entry point for gradients with respect to
        the administered activity.
        """
        hot = jnp.broadcast_to(jnp.asarray(activity_MBq) / self.mbq_per_nmol, self.hot_nmol.shape)
        return eqx.tree_at(lambda s: s.hot_nmol, self, hot)


def _per_cycle(field: str, value, n: int) -> list:
    if value is None or np.ndim(value) == 0:
        return [value] * n
    values = list(value)
    if len(values) != n:
        raise InputError(f"{field} has {len(values)} values for {n} cycles; allowed: 1 or {n}")
    return values
