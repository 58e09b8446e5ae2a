"""Decisions under uncertainty: which treatment to give next, ranked by expected utility under
chance constraints on the organs at risk, and the best activity of the next cycle.

Every posterior draw is one plausible patient, and a [`twinjax.forecast.Forecast`][] evaluates
every scenario on the SAME draws, so scenarios are compared draw by draw:

- [`scenario_library`][] builds the options (activity per cycle x number of cycles x interval x
  radionuclide x ligand amount), each the administrations already given (`history`) plus the
  planned ones, and [`standard_of_care`][] the reference regimen (7.4 GBq x 6 every 6 weeks).
- [`rank`][] orders forecast scenarios by the expected (or median) value of an [`Objective`][]
  (e.g. tumour BED or TCP), marks as infeasible those that break a chance [`Constraint`][]
  (``P(quantity > threshold) <= max_probability``, e.g. P(cumulative kidney BED > 40 Gy) <= 5 %),
  and reports for each feasible scenario the probability that it is the best one.
- [`optimise_activity`][] maximises the expected utility over the activity of the next cycle
  (and optionally the interval) with Optax, forward-mode gradients through the model's ODE
  (`twinjax.radiobiology.bed_from_model`) and an augmented Lagrangian on a smoothed exceedance
  probability; the answer is then polished on the exact empirical probability (module docs of
  the function) and always reported with it.

**Tandem 177Lu + 225Ac**: ``"tandem"`` in `scenario_library`'s nuclides offers cycles of both
labels given together (activity pairs, `DEFAULT_ACTIVITIES_MBQ["tandem"]`), forecast as a
[`twinjax.Tandem`][]: both labels in one ODE, so they compete for the same receptors, and the
BED of the summed RBE-weighted dose rate carries the Lea-Catcheside cross term
``(2 / (alpha/beta)) int R_Lu(t) int_0^t R_Ac(s) exp(-mu (t - s)) ds dt`` (with its mirror).
Likewise a history in one label continued in another becomes one Tandem schedule (e.g. 177Lu
cycles then 225Ac cycles), with the repair between them exact. `optimise_activity` plans the
next single-label cycle only.

Units: activity MBq (names print GBq from 1000 MBq), time h, ligand nmol, dose and BED Gy,
probabilities in [0, 1].
"""

from __future__ import annotations

from ._decision_library import DEFAULT_ACTIVITIES_MBQ as DEFAULT_ACTIVITIES_MBQ
from ._decision_library import DEFAULT_LIGAND_NMOL as DEFAULT_LIGAND_NMOL
from ._decision_library import MAX_ACTIVITY_MBQ as MAX_ACTIVITY_MBQ
from ._decision_library import TANDEM_LABELS as TANDEM_LABELS
from ._decision_library import _administrations as _administrations
from ._decision_library import scenario_library as scenario_library
from ._decision_library import standard_of_care as standard_of_care
from ._decision_optimise import ActivityPlan as ActivityPlan
from ._decision_optimise import optimise_activity as optimise_activity
from ._decision_plan import _smoothed as _smoothed
from ._decision_rank import Constraint as Constraint
from ._decision_rank import Objective as Objective
from ._decision_rank import Ranking as Ranking
from ._decision_rank import constraint_label as constraint_label
from ._decision_rank import rank as rank

__all__ = [
    "MAX_ACTIVITY_MBQ",
    "ActivityPlan",
    "Constraint",
    "Objective",
    "Ranking",
    "constraint_label",
    "optimise_activity",
    "rank",
    "scenario_library",
    "standard_of_care",
]
