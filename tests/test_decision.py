"""Decisions: ranking with chance constraints on a hand-built forecast (exact expected
utilities, violation probabilities and p_best), the scenario library's content and errors,
and the activity optimiser on a linear model, where the cumulative BED of every draw is an
exact quadratic in the activity, so the constrained optimum is known in closed form."""

import json

import numpy as np
import pytest

import twinjax
from twinjax import InputError
from twinjax import radiobiology as rb
from twinjax.decision import (
    Constraint,
    Objective,
    constraint_label,
    optimise_activity,
    rank,
    scenario_library,
    standard_of_care,
)
from twinjax.forecast import Forecast, Region, Scenario, forecast
from twinjax.inference import PopulationPrior

N_DRAWS = 30


class PriorDraws:
    """What `forecast` reads of a posterior (names, draws, prior.base, covariates): here draws
    of the population prior, which is all the decision layer needs to be tested."""

    def __init__(self, template, n, seed=0):
        self.prior = PopulationPrior.from_template(template, {"egfr_L_per_h": 5.4})
        z = np.random.default_rng(seed).standard_normal((n, self.prior.dim))
        theta = np.exp(self.prior.log_typical + z @ self.prior.scale_tril.T)
        self.names = self.prior.names
        self._draws = {k: theta[:, i] for i, k in enumerate(self.names)}
        self.provenance, self.context = {}, None

    def draws(self, name):
        return self._draws[name]


# ------------------------------------------------------------------------------ ranking
def _hand_built() -> Forecast:
    def region(bed):
        return {"bed_Gy": np.asarray(bed, dtype=float)}

    values = {
        "A": {"tumour": region([10, 20, 30, 40]), "kidneys": region([10, 20, 30, 45]),
              "salivary_glands": region([0, 0, 0, 0])},
        "B": {"tumour": region([30, 10, 20, 60]), "kidneys": region([10, 10, 10, 10]),
              "salivary_glands": region([0, 0, 0, 0])},
        "C": {"tumour": region([50, 50, 50, 50]), "kidneys": region([50, 50, 10, 10]),
              "salivary_glands": region([0, 0, 0, 0])},
        "D": {"tumour": region([10, 20, 30, 40]), "kidneys": region([0, 0, 0, 0]),
              "salivary_glands": region([0, 0, 0, 30])},
    }  # fmt: skip
    return Forecast(values=values, n_draws=4)


def test_rank_expected_utility_constraints_and_p_best():
    fc = _hand_built()
    cons = [Constraint("kidneys", "bed_Gy", 40.0, 0.25), Constraint("salivary_glands", "bed_Gy", 30.0, 0.0)]  # fmt: skip
    r = rank(fc, Objective("tumour", "bed_Gy"), cons, level=0.5)
    assert r.utility == {"A": 25.0, "B": 30.0, "C": 50.0, "D": 25.0}
    # A: one draw of four above 40 Gy = exactly the allowed 25 %; C: two; salivary 30 is not > 30.
    assert r.violation["A"] == {"kidneys bed_Gy > 40": 0.25, "salivary_glands bed_Gy > 30": 0.0}
    assert r.violation["C"]["kidneys bed_Gy > 40"] == 0.5
    assert r.violation["D"]["salivary_glands bed_Gy > 30"] == 0.0
    assert r.feasible == {"A": True, "B": True, "C": False, "D": True}
    # Draw by draw among A, B, D: B wins draws 0 and 3; A and D tie in draws 1 and 2.
    assert r.p_best == {"A": 0.25, "B": 0.5, "C": 0.0, "D": 0.25}
    assert r.best == "B" and r.scenarios == ["B", "A", "D", "C"]
    assert r.utility_interval["A"] == pytest.approx((17.5, 32.5))  # quartiles of 10..40
    rows = r.table()
    assert [row["rank"] for row in rows] == [1, 2, 3, 4]
    assert rows[0]["P(kidneys bed_Gy > 40)"] == 0.0 and rows[3]["feasible"] is False
    doc = json.loads(json.dumps(r.to_dict()))
    assert doc["best"] == "B" and "least_violating" not in doc
    assert doc["scenarios"] == r.scenarios and doc["p_best"] == r.p_best
    assert doc["utility_interval"]["A"] == pytest.approx([17.5, 32.5]) and len(doc["table"]) == 4
    assert doc["constraints"][0]["label"] == constraint_label(cons[0]) == "kidneys bed_Gy > 40"
    # The median: A, B and D tie at 25; the first of them is best.
    assert rank(fc, Objective(statistic="median"), cons).best == "A"
    # Without constraints every scenario competes: C has the highest value in every draw but 3.
    free = rank(fc, Objective())
    assert free.best == "C" and free.p_best["C"] == 0.75 and free.p_best["B"] == 0.25


def test_rank_with_no_feasible_scenario_names_the_least_violating():
    r = rank(_hand_built(), Objective(), [Constraint("tumour", "bed_Gy", 25.0, 0.0)])
    assert r.best is None and not any(r.feasible.values())
    assert all(p == 0.0 for p in r.p_best.values())
    # A, B and D exceed in half the draws, C in all; of the first three B has most utility.
    doc = r.to_dict()
    assert doc["best"] is None and doc["least_violating"] == "B"
    assert "no scenario satisfies" in doc["note"]


def test_rank_bad_input():
    fc = _hand_built()
    with pytest.raises(InputError, match="no forecast for scenario 'A', region 'tumour', quantity 'tcp'"):  # fmt: skip
        rank(fc, Objective("tumour", "tcp"))
    with pytest.raises(InputError, match="repeat"):
        rank(fc, Objective(), [Constraint("kidneys", "bed_Gy", 40.0)] * 2)
    with pytest.raises(InputError, match="statistic"):
        Objective(statistic="mode")
    with pytest.raises(InputError, match="max_probability"):
        Constraint("kidneys", "bed_Gy", 40.0, 1.0)
    with pytest.raises(InputError, match="threshold"):
        Constraint("kidneys", "bed_Gy", float("nan"))
    short = Forecast(values={**fc.values, "E": {"tumour": {"bed_Gy": np.ones(3)}}}, n_draws=4)
    with pytest.raises(InputError, match="same length"):
        rank(short, Objective())


# ------------------------------------------------------------------------------ scenarios
def test_standard_of_care_and_its_continuation():
    soc = standard_of_care()
    s = soc.schedule
    assert soc.name == "standard_of_care" and s.nuclide == "Lu-177"
    np.testing.assert_allclose(s.time_h, 1008.0 * np.arange(6))
    np.testing.assert_allclose(s.activity_MBq, 7400.0)
    np.testing.assert_allclose(s.hot_nmol + s.cold_nmol, 96.0)
    # Two cycles given (the second late, at 1100 h): four more, from one interval after it.
    given = twinjax.Schedule.from_administrations(
        [twinjax.Administration(0.0, 7000.0, ligand_nmol=57.0),
         twinjax.Administration(1100.0, 6800.0, ligand_nmol=57.0)]
    )  # fmt: skip
    s = standard_of_care(history=given).schedule
    np.testing.assert_allclose(s.time_h, [0.0, 1100.0, 2108.0, 3116.0, 4124.0, 5132.0])
    np.testing.assert_allclose(s.activity_MBq, [7000.0, 6800.0] + [7400.0] * 4)
    np.testing.assert_allclose((s.hot_nmol + s.cold_nmol)[:2], 57.0)
    # A completed regimen: the history alone.
    done = twinjax.Schedule.cycles(7400.0, 6, 1008.0, ligand_nmol=96.0)
    assert standard_of_care(history=done).schedule is done


def test_scenario_library_content():
    given = twinjax.Schedule.single(7000.0, ligand_nmol=57.0)
    lib = scenario_library(
        history=given, next_time_h=1200.0, activities_MBq=(6000.0, 7400.0),
        n_cycles=(1, 5), intervals_h=(1008.0, 672.0),
    )  # fmt: skip
    names = [s.name for s in lib]
    # 2 x 2 x 2 options, less the one equal to the standard of care (5 x 7.4 GBq q6w, 96 nmol).
    assert names[0] == "standard_of_care" and len(lib) == 8
    assert "Lu-177 7.4 GBq x5 q6w" not in names
    assert {"Lu-177 6.0 GBq x1 q6w", "Lu-177 6.0 GBq x5 q4w", "Lu-177 7.4 GBq x1 q4w"} <= set(names)
    sc = lib[names.index("Lu-177 6.0 GBq x5 q4w")].schedule
    np.testing.assert_allclose(sc.time_h, [0.0] + [1200.0 + 672.0 * k for k in range(5)])
    np.testing.assert_allclose(sc.activity_MBq, [7000.0] + [6000.0] * 5)
    np.testing.assert_allclose(
        lib[0].schedule.time_h, [0.0] + [1200.0 + 1008 * k for k in range(5)]
    )
    # Without next_time_h the plan starts one interval after the last given cycle.
    one = scenario_library(history=given, activities_MBq=(6000.0,), n_cycles=(2,),
                           intervals_h=(840.0,), include_standard_of_care=False)  # fmt: skip
    assert [s.name for s in one] == ["Lu-177 6.0 GBq x2 q5w"]
    np.testing.assert_allclose(one[0].schedule.time_h, [0.0, 840.0, 1680.0])
    # Another label with its template, several ligand amounts, a non-weekly interval.
    tpl = twinjax.load_template("psma617_ac225_pbpk")
    ac = scenario_library(nuclides=("Ac-225",), activities_MBq={"Ac-225": (8.0,)},
                          n_cycles=(4,), intervals_h=(1344.0, 100.0), ligand_nmol=(None, 57.0),
                          templates={"Ac-225": tpl})  # fmt: skip
    assert [s.name for s in ac] == [
        "standard_of_care", "Ac-225 8 MBq x4 q8w carrier-free", "Ac-225 8 MBq x4 q8w 57 nmol",
        "Ac-225 8 MBq x4 q100h carrier-free", "Ac-225 8 MBq x4 q100h 57 nmol",
    ]  # fmt: skip
    assert ac[1].template is tpl and ac[0].template is None
    assert ac[1].schedule.nuclide == "Ac-225" and float(ac[1].schedule.cold_nmol[0]) == 0.0
    for sc in lib + ac:
        assert all(x.dtype == np.float64 for x in (sc.schedule.time_h, sc.schedule.hot_nmol))
    # The reference regimen of a study: 4 cycles of 57 nmol.
    ref = scenario_library(activities_MBq=(6000.0,), n_cycles=(4,),
                           standard_of_care_options={"n_cycles": 4, "ligand_nmol": 57.0})[0]  # fmt: skip
    np.testing.assert_allclose(ref.schedule.hot_nmol + ref.schedule.cold_nmol, [57.0] * 4)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"activities_MBq": (-1.0,)}, "activities_MBq = -1.0 MBq for Lu-177; allowed: > 0"),
        ({"activities_MBq": (40000.0,)}, "<= 30000 MBq"),
        ({"activities_MBq": {"Ac-225": (100.0,)}, "nuclides": ("Ac-225",)}, "<= 50 MBq"),
        ({"activities_MBq": (7400.0, 7400.0)}, "repeats"),
        ({"n_cycles": (0,)}, "n_cycles = 0"),
        ({"n_cycles": (2.5,)}, "n_cycles = 2.5"),
        ({"intervals_h": (0.0,)}, "intervals_h = 0.0"),
        ({"nuclides": ("tandem",), "activities_MBq": {"tandem": ((7400.0,),)}}, "pairs"),
        (
            {"nuclides": ("tandem",), "activities_MBq": {"tandem": ((7400.0, 80.0),)}},
            "activities_MBq \\(Ac-225\\) = 80.0 MBq for Ac-225; allowed: > 0 and <= 50",
        ),
        ({"nuclides": ("Y-90",)}, "nuclides = 'Y-90'; allowed"),
        ({"nuclides": ("Xx-1",)}, "nuclides = 'Xx-1'; allowed"),
        ({"nuclides": ("Ac-225",), "activities_MBq": {"Lu-177": (7400.0,)}}, "no activities"),
        ({"ligand_nmol": (-5.0,)}, "ligand_nmol"),
        ({"history": 7400.0}, "history = float"),
        ({"standard_of_care_options": {"start_h": 5.0}}, "standard_of_care_options sets"),
        ({"history": twinjax.Schedule.single(7400.0), "next_time_h": 0.0}, "not after"),
    ],
)
def test_scenario_library_rejects_bad_input(kwargs, message):
    with pytest.raises(InputError, match=message):
        scenario_library(**kwargs)


def test_standard_of_care_rejects_bad_input():
    with pytest.raises(InputError, match="activity_MBq = 0.0"):
        standard_of_care(activity_MBq=0.0)
    with pytest.raises(InputError, match="interval_h"):
        standard_of_care(interval_h=-1.0)
    with pytest.raises(InputError, match="nuclide = 'tandem'; allowed: \\['Ac-225', 'Lu-177'\\]"):
        standard_of_care(nuclide="tandem")


# ------------------------------------------------------------------------------ optimiser
GIVEN = 7400.0  # the cycle already given, at t = 0
NEXT_H = 1008.0


@pytest.fixture(scope="module")
def setup(linear_template_path):
    tpl = twinjax.load_template(linear_template_path)
    post = PriorDraws(tpl, N_DRAWS)
    regions = {
        "kidneys": Region(rb.tissue("kidney")),
        "tumour": Region(rb.tissue("prostate_cancer"), mass_kg=0.02, kind="tumour"),
    }
    history = twinjax.Schedule.single(GIVEN, ligand_nmol=57.0)
    return tpl, post, regions, history


def _forecast_at(setup, activities):
    """Cumulative outcomes of history + a second cycle at each activity (one compilation)."""
    tpl, post, regions, _ = setup
    scen = [
        Scenario(f"{a}", twinjax.Schedule.cycles([GIVEN, a], 2, NEXT_H, ligand_nmol=57.0))
        for a in activities
    ]
    return forecast(post, tpl, scen, regions, max_draws=N_DRAWS)


@pytest.fixture(scope="module")
def quadratic(setup):
    """Per draw, the exact quadratic BED(a) = c0 + c1 a + c2 a^2 of each region: the model is
    linear, so dose is affine in the second activity and G D^2 quadratic (checked at a 4th
    activity)."""
    acts = np.array([2000.0, 6000.0, 10000.0])
    fc = _forecast_at(setup, [*acts, 8000.0])
    coef = {}
    for r in ("kidneys", "tumour"):
        bed = np.stack([fc.values[f"{a}"][r]["bed_Gy"] for a in acts])  # (3, draws)
        c = np.linalg.solve(np.vander(acts, 3, increasing=True), bed)  # (3, draws)
        pred = c[0] + c[1] * 8000.0 + c[2] * 8000.0**2
        np.testing.assert_allclose(pred, fc.values["8000.0"][r]["bed_Gy"], rtol=1e-7)
        coef[r] = c
    return coef


def test_forecast_compiles_once_for_scenarios_of_one_structure(setup, quadratic):
    from twinjax.forecast import _compiled_outcomes

    tpl, _, regions, _ = setup
    fc = _forecast_at(setup, [3000.0, 5000.0])  # after the 4 scenarios of `quadratic`
    masses = {r: fc.masses_kg[r] for r in regions}
    run = _compiled_outcomes(tpl, regions, masses, 1e-6, 1e-9)
    assert run._cache_size() == 1


@pytest.mark.parametrize("method", ["gradient", "surface"])
def test_optimiser_finds_the_closed_form_constrained_optimum(setup, quadratic, method):
    """Both optimisers: gradients through the ODE at every step, and the exact per-draw
    response surface (three model evaluations, checked at the answer)."""
    tpl, post, regions, history = setup
    c = quadratic["kidneys"]
    # A limit that binds inside the bounds: the 60th percentile of the kidney BED at 7.4 GBq.
    limit = float(np.quantile(c[0] + c[1] * 7400.0 + c[2] * 7400.0**2, 0.6))
    p_max = 0.1
    # Closed form: draw i exceeds the limit above the root a_i of its quadratic; at most
    # floor(p n) draws may exceed, so the optimum is the (floor(p n) + 1)-th smallest root
    # (there that draw equals the limit, which is not an exceedance).
    roots = (-c[1] + np.sqrt(c[1] ** 2 - 4 * c[2] * (c[0] - limit))) / (2 * c[2])
    expected = np.sort(roots)[int(np.floor(p_max * N_DRAWS + 1e-9))]
    assert 1000.0 < expected < 12000.0
    con = Constraint("kidneys", "bed_Gy", limit, p_max)
    plan = optimise_activity(post, tpl, history, regions, Objective("tumour", "bed_Gy"), [con],
                             next_time_h=NEXT_H, max_draws=N_DRAWS, steps=60,
                             method=method)  # fmt: skip
    assert plan.activity_MBq == pytest.approx(expected, rel=1e-3)
    assert ("exact response surface" in plan.note) == (method == "surface")
    assert plan.optimiser_activity_MBq == pytest.approx(expected, rel=0.05)
    assert plan.feasible and "bisection" in plan.note
    # The reported probability is the exact fraction of draws at the reported activity.
    a = plan.activity_MBq
    kid = c[0] + c[1] * a + c[2] * a**2
    assert plan.violation[con.label] == np.mean(kid > limit) <= p_max
    tum = quadratic["tumour"]
    assert plan.utility == pytest.approx(np.mean(tum[0] + tum[1] * a + tum[2] * a**2), rel=1e-7)
    np.testing.assert_allclose(plan.schedule.time_h, [0.0, NEXT_H])
    np.testing.assert_allclose(plan.schedule.activity_MBq, [GIVEN, a])
    np.testing.assert_allclose(plan.schedule.hot_nmol + plan.schedule.cold_nmol, 57.0)
    assert plan.schedule.hot_nmol.dtype == np.float64
    doc = json.loads(json.dumps(plan.to_dict()))
    assert doc["schedule"][1]["activity_MBq"] == pytest.approx(a) and len(doc["history"]) == 60
    # An unconstrained increasing utility: the upper bound.
    free = optimise_activity(post, tpl, history, regions, Objective("tumour", "bed_Gy"), [],
                             next_time_h=NEXT_H, max_draws=N_DRAWS, steps=5,
                             method=method)  # fmt: skip
    assert free.activity_MBq == 12000.0 and free.feasible


def test_surface_from_forecast_points_equals_own_evaluations(setup, quadratic):
    """A scenario-library forecast of the same plans on the same draws supplies the response
    surface's points: same answer as the surface's own model evaluations."""
    tpl, post, regions, history = setup
    acts = [2000.0, 6000.0, 10000.0]
    fc = _forecast_at(setup, acts)
    con = Constraint("kidneys", "bed_Gy", 4.0, 0.1)
    kw = dict(next_time_h=NEXT_H, max_draws=N_DRAWS, steps=30, method="surface")
    own = optimise_activity(post, tpl, history, regions, Objective("tumour", "bed_Gy"), [con], **kw)
    given = optimise_activity(post, tpl, history, regions, Objective("tumour", "bed_Gy"), [con],
                              points={a: fc.values[f"{a}"] for a in acts}, **kw)  # fmt: skip
    assert given.activity_MBq == pytest.approx(own.activity_MBq, rel=1e-9)
    assert given.violation == own.violation and "exact response surface" in given.note
    # Points of another plan (here: scaled values) fail the check at the answer: the surface
    # is rebuilt from its own evaluations, and the answer is unchanged.
    wrong = {a: {r: {q: 1.1 * v for q, v in qs.items()} for r, qs in fc.values[f"{a}"].items()}
             for a in acts}  # fmt: skip
    again = optimise_activity(post, tpl, history, regions, Objective("tumour", "bed_Gy"), [con],
                              points=wrong, **kw)  # fmt: skip
    assert again.activity_MBq == pytest.approx(own.activity_MBq, rel=1e-9)


@pytest.mark.parametrize("method", ["gradient", "surface"])
def test_gradient_of_expected_tumour_bed_matches_finite_differences(setup, quadratic, method):
    tpl, post, regions, history = setup
    plan = optimise_activity(
        post, tpl, history, regions, Objective("tumour", "bed_Gy"), [], next_time_h=NEXT_H,
        max_draws=N_DRAWS, steps=1, activity0_MBq=5000.0, polish=False, method=method,
    )  # fmt: skip
    first = plan.history[0]
    assert first["activity_MBq"] == pytest.approx(5000.0, rel=1e-12)
    h = 50.0
    fc = _forecast_at(setup, [5000.0 - h, 5000.0, 5000.0 + h])
    u = {k: float(np.mean(fc.values[k]["tumour"]["bed_Gy"])) for k in fc.values}
    # The optimiser's utility is the forecast's (two code paths, the same draws).
    assert first["utility"] == pytest.approx(u["5000.0"], rel=1e-10)
    fd = (u["5050.0"] - u["4950.0"]) / (2 * h)
    assert first["d_utility_d_activity"] == pytest.approx(fd, rel=1e-4)
    c = quadratic["tumour"]
    assert first["d_utility_d_activity"] == pytest.approx(
        np.mean(c[1] + 2 * c[2] * 5000.0), rel=1e-5
    )


def test_optimiser_bad_input(setup):
    tpl, post, regions, history = setup
    obj, kid = Objective("tumour", "bed_Gy"), [Constraint("kidneys", "bed_Gy", 40.0)]

    def call(**kw):
        args = {"next_time_h": NEXT_H, **kw}
        return optimise_activity(post, tpl, history, regions, obj, kid, **args)

    with pytest.raises(InputError, match="bounds_MBq"):
        call(bounds_MBq=(5000.0, 2000.0))
    with pytest.raises(InputError, match="bounds_MBq\\[1\\] = 40000.0 MBq"):
        call(bounds_MBq=(1000.0, 40000.0))
    with pytest.raises(InputError, match="ligand_nmol = 5.0 nmol is less than"):
        call(ligand_nmol=5.0)
    with pytest.raises(InputError, match="next_time_h = 0.0 h is not after"):
        call(next_time_h=0.0)
    with pytest.raises(InputError, match="quantity 'tcp' of region 'kidneys'"):
        optimise_activity(post, tpl, history, regions, Objective("kidneys", "tcp"), [],
                          next_time_h=NEXT_H)  # fmt: skip
    with pytest.raises(InputError, match="region 'salivary_glands' is not in regions"):
        optimise_activity(post, tpl, history, regions, obj,
                          [Constraint("salivary_glands", "bed_Gy", 30.0)], next_time_h=NEXT_H)  # fmt: skip
    with pytest.raises(InputError, match="nothing to space"):
        optimise_activity(post, tpl, None, regions, obj, kid, next_time_h=0.0,
                          optimise_interval=True)  # fmt: skip
    with pytest.raises(InputError, match="steps"):
        call(steps=-1)
