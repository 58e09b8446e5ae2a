"""Tandem (cocktail) schedules: two or more radiolabels of the same ligand on one clock, e.g.
[177Lu]Lu-PSMA-617 with [225Ac]Ac-PSMA-617 (Khreish et al., Eur J Nucl Med Mol Imaging 47:721,
2020; Rosar et al., J Nucl Med 62:1045, 2021).

Both labels ride on the same molecule, so they share every transfer and compete for the same
receptors: the kinetics of the total ligand (all labels, cold ligand and molecules whose label
has decayed) do not depend on which label a molecule carries, and each label is a tracer of
those kinetics that decays at its own rate. [`twinjax.models.simulate_tandem`][] and
[`twinjax.radiobiology.bed_from_model`][] integrate all labels in ONE ODE (one hot state per
label, one shared cold state), so receptor competition is exact, and the BED of the summed,
RBE-weighted dose rate carries the Lea-Catcheside cross term between the labels'
dose-rate curves: ``BED = D_w + (2 / (alpha/beta)) int R_w(t) int_0^t R_w(s) exp(-mu (t - s))
ds dt`` with ``R_w = sum_l RBE_l R_l``.

```python
lu = Schedule.cycles(6000.0, 2, 1008.0, nuclide="Lu-177")
ac = Schedule.cycles(4.0, 2, 1008.0, nuclide="Ac-225")   # 4 MBq = 4000 kBq
both = Tandem((lu, ac))
```
"""

from __future__ import annotations

from collections.abc import Sequence

import equinox as eqx
import jax.numpy as jnp
import numpy as np

from ._errors import InputError
from .schedule import Administration, Schedule

__all__ = ["Tandem", "as_labels"]


class Tandem(eqx.Module):
    """Two or more single-label [`Schedule`][]s on one clock (h), each of a different nuclide.

    Administrations of different labels may coincide (co-administration) or alternate. Each
    label's ``cold_nmol`` counts the unlabelled ligand given with it; the other labels' ligand
    is never double-counted (each label's labelled ligand is only its own ``hot_nmol``).
    """

    schedules: tuple[Schedule, ...]

    def __init__(self, schedules: Sequence[Schedule]):
        schedules = tuple(schedules)
        if len(schedules) < 2:
            raise InputError(
                f"Tandem: {len(schedules)} schedule(s) given; allowed: two or more Schedules of "
                "different nuclides (use a plain Schedule for one label)"
            )
        for i, s in enumerate(schedules):
            if not isinstance(s, Schedule):
                raise InputError(
                    f"Tandem: schedules[{i}] is a {type(s).__name__}; allowed: a twinjax.Schedule"
                )
        nuclides = [s.nuclide for s in schedules]
        if len(set(nuclides)) != len(nuclides):
            raise InputError(
                f"Tandem: nuclides {nuclides} repeat; allowed: one Schedule per nuclide (put all "
                "administrations of a nuclide into one Schedule)"
            )
        self.schedules = schedules

    @classmethod
    def from_administrations(cls, administrations: Sequence[Administration]) -> Tandem:
        """Group administrations by nuclide (each group sorted in time) into one Tandem."""
        admins = list(administrations)
        by_nuclide: dict[str, list[Administration]] = {}
        for a in admins:
            by_nuclide.setdefault(a.nuclide, []).append(a)
        groups = [sorted(v, key=lambda a: a.time_h) for v in by_nuclide.values()]
        return cls([Schedule.from_administrations(g) for g in groups])

    @property
    def nuclides(self) -> tuple[str, ...]:
        return tuple(s.nuclide for s in self.schedules)

    @property
    def nuclide(self) -> str:
        """The labels joined by ``+`` (e.g. ``"Lu-177+Ac-225"``), for reports and names."""
        return "+".join(self.nuclides)

    @property
    def n_administrations(self) -> int:
        return sum(s.n_administrations for s in self.schedules)

    @property
    def time_h(self):
        """All administration times of all labels, sorted (h)."""
        return jnp.sort(jnp.concatenate([s.time_h for s in self.schedules]))

    @property
    def duration_h(self):
        """Infusion durations in the order of `time_h` (h)."""
        t = jnp.concatenate([s.time_h for s in self.schedules])
        d = jnp.concatenate([s.duration_h for s in self.schedules])
        return d[jnp.argsort(t, stable=True)]

    @property
    def decay_constant_per_h(self):
        """Decay constant of each label (1/h), in the order of `schedules`."""
        return jnp.asarray([s.decay_constant_per_h for s in self.schedules])

    @property
    def mbq_per_nmol(self):
        """Specific activity of each pure label (MBq/nmol), in the order of `schedules`."""
        return jnp.asarray([s.mbq_per_nmol for s in self.schedules])

    def label(self, nuclide: str) -> Schedule:
        """The schedule of one label."""
        for s in self.schedules:
            if s.nuclide == nuclide:
                return s
        raise InputError(f"Tandem: no label {nuclide!r}; allowed: {list(self.nuclides)}")


def as_labels(schedule: Schedule | Tandem) -> tuple[Schedule, ...]:
    """The single-label schedules of a Schedule (itself) or a Tandem."""
    if isinstance(schedule, Tandem):
        return schedule.schedules
    if isinstance(schedule, Schedule):
        return (schedule,)
    raise InputError(
        f"schedule must be a twinjax.Schedule or twinjax.Tandem, got {type(schedule).__name__}"
    )


def _event_table(labels: Sequence[Schedule]):
    """Administration events of all labels as traced arrays: ``(starts, bolus_hot (E, L),
    bolus_cold (E,), infusion start, end, rate_hot (I, L), rate_cold (I,))``. Events are the
    administration starts and infusion ends (their count and kind are static)."""
    n_lab = len(labels)
    t, bh, bc = [], [], []
    inf_s, inf_e, rh, rc = [], [], [], []
    for l, s in enumerate(labels):
        onehot = np.eye(n_lab)[l]
        for i in range(s.n_administrations):
            t0 = s.time_h[i]
            if s.is_infusion[i]:
                d = s.duration_h[i]
                t += [t0, t0 + d]
                bh += [jnp.zeros(n_lab), jnp.zeros(n_lab)]
                bc += [0.0, 0.0]
                inf_s.append(t0)
                inf_e.append(t0 + d)
                rh.append(jnp.asarray(onehot) * (s.hot_nmol[i] / d))
                rc.append(s.cold_nmol[i] / d)
            else:
                t.append(t0)
                bh.append(jnp.asarray(onehot) * s.hot_nmol[i])
                bc.append(s.cold_nmol[i])

    def stack(xs, shape):
        return jnp.stack([jnp.asarray(x, dtype=float) for x in xs]) if xs else jnp.zeros(shape)

    return (
        stack(t, (0,)),
        stack(bh, (0, n_lab)),
        stack(bc, (0,)),
        stack(inf_s, (0,)),
        stack(inf_e, (0,)),
        stack(rh, (0, n_lab)),
        stack(rc, (0,)),
    )
