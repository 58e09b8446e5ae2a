"""The compartmental engine: exact linear solutions, balances, derivatives, schedules."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import twinjax
from twinjax import InputError, Schedule, simulate
from twinjax.models import Binding, CompartmentalModel, Transfer
from twinjax.models.pbpk import Organ, whole_body

LU = twinjax.nuclide("Lu-177")
LAM = LU.decay_constant_per_h

TWO_CMT = CompartmentalModel(
    compartments=("central", "peripheral", "urine"),
    dose_compartment="central",
    transfers=(
        Transfer("central", "peripheral", "k12"),
        Transfer("peripheral", "central", "k21"),
        Transfer("central", "urine", "CL / V1"),
    ),
    excreta=("urine",),
    volumes={"central": "V1"},
    name="two_cmt",
)
P2 = {"k12": 0.5, "k21": 0.2, "CL": 0.9, "V1": 3.0}
TIMES = jnp.array([0.0, 0.5, 1.0, 4.0, 24.0, 48.0, 96.0, 168.0])


def two_cmt_closed_form(t, dose, k12, k21, k10):
    """Central amount of the linear two-compartment model (Gibaldi & Perrier, Pharmacokinetics,
    2nd ed., 1982, Ch. 2), times physical decay."""
    a, b = k12 + k21 + k10, k21 * k10
    l1, l2 = (a + np.sqrt(a * a - 4 * b)) / 2, (a - np.sqrt(a * a - 4 * b)) / 2
    c = dose * ((k21 - l1) / (l2 - l1) * np.exp(-l1 * t) + (k21 - l2) / (l1 - l2) * np.exp(-l2 * t))
    return c * np.exp(-LAM * t)


# A small receptor PBPK (single plasma pool, kidneys and tumour with receptors): stiff, nonlinear.
SMALL_PBPK = whole_body(
    [
        Organ("kidneys", receptor=True, filtration=True),
        Organ("tumour", receptor=True),
        Organ("rest"),
    ],
    circulation="single",
    name="small",
)
P_PBPK = {
    "V_plasma": 3.0,
    "GFR": 6.0,
    "f_filt": 0.66,
    "f_exc": 0.96,
    "ft_kidneys": 0.5,
    "k_on": 2.4,
    "K_D": 0.5,
    "lambda_int": 0.1,
    "Q_kidneys": 36.0,
    "V_kidneys": 0.3,
    "fv_kidneys": 0.1,
    "fi_kidneys": 0.2,
    "PS_kidneys": 4.0,
    "R_kidneys": 10.0,
    "lambda_rel_kidneys": 0.02,
    "Q_tumour": 2.0,
    "V_tumour": 0.1,
    "fv_tumour": 0.05,
    "fi_tumour": 0.3,
    "PS_tumour": 1.0,
    "R_tumour": 20.0,
    "lambda_rel_tumour": 0.005,
    "Q_rest": 100.0,
    "V_rest": 60.0,
    "fv_rest": 0.04,
    "fi_rest": 0.15,
    "PS_rest": 20.0,
}
SINGLE = Schedule.single(7400.0, ligand_nmol=57.1)


@pytest.fixture(scope="module")
def pbpk_solve():
    """One compiled solver for the small PBPK, shared by the tests below."""
    return jax.jit(lambda p, s, t: simulate(SMALL_PBPK, p, s, t))


def test_linear_two_compartment_matches_closed_form():
    traj = simulate(TWO_CMT, P2, SINGLE, TIMES)
    ref = two_cmt_closed_form(np.asarray(TIMES), 7400.0, 0.5, 0.2, 0.3)
    np.testing.assert_allclose(traj.activity_MBq[:, 0], ref, rtol=1e-8)
    # TIA to infinity of the central compartment: exact integral of the closed form
    k12, k21, k10 = 0.5, 0.2, 0.3
    a, b = k12 + k21 + k10 + 2 * LAM, (k21 + LAM) * (k10 + LAM) + k12 * LAM
    # integral_0^inf of the decayed central amount = dose (k21 + lam) / ((k10+lam)(k21+lam) + k12 lam)
    del a
    expected_tia = 7400.0 * (k21 + LAM) / b
    assert float(traj.tia("central")) == pytest.approx(expected_tia, rel=1e-10)


def test_linear_infusion_matches_closed_form():
    one = CompartmentalModel(
        compartments=("c", "out"),
        dose_compartment="c",
        transfers=(Transfer("c", "out", "k"),),
        excreta=("out",),
    )
    k, d = 0.7, 2.0
    sched = Schedule.single(7400.0, duration_h=d, time_h=1.0)
    t = np.array([0.5, 1.0, 1.5, 2.9, 3.0, 5.0, 30.0])
    traj = simulate(one, {"k": k}, sched, t)
    kk = k + LAM
    rate = 7400.0 / LU.mbq_per_nmol / d  # nmol/h of labelled ligand
    tau = np.clip(t - 1.0, 0.0, d)
    during = rate / kk * (1 - np.exp(-kk * tau))
    after = during * np.exp(-kk * np.clip(t - 1.0 - d, 0.0, None))
    np.testing.assert_allclose(traj.hot_nmol[:, 0], after, rtol=1e-9, atol=1e-14)


def test_ode_path_equals_exact_path_in_the_linear_limit():
    """Binding with an enormous capacity is first order (k_on * R / V); the Diffrax path must then
    reproduce the matrix exponential of the equivalent linear model, across an infusion and a
    second bolus (restart at each administration)."""
    sat = CompartmentalModel(
        compartments=("c", "b", "out"),
        dose_compartment="c",
        transfers=(Transfer("b", "c", "koff"), Transfer("c", "out", "kel")),
        bindings=(Binding("c", "b", "kon", "R", "V"),),
        excreta=("out",),
    )
    lin = CompartmentalModel(
        compartments=("c", "b", "out"),
        dose_compartment="c",
        transfers=(
            Transfer("b", "c", "koff"),
            Transfer("c", "out", "kel"),
            Transfer("c", "b", "kon * R / V"),
        ),
        excreta=("out",),
    )
    p = {"koff": 0.1, "kel": 0.4, "kon": 1e-9, "R": 3e8, "V": 1.0}
    sched = Schedule.from_administrations(
        [twinjax.Administration(0.0, 3000.0, duration_h=1.5), twinjax.Administration(30.0, 5000.0)]
    )
    t = jnp.array([0.0, 0.7, 1.5, 10.0, 30.0, 31.0, 100.0])
    a = simulate(sat, p, sched, t, rtol=1e-10, atol=1e-13)
    b = simulate(lin, p, sched, t)
    np.testing.assert_allclose(a.hot_nmol, b.hot_nmol, rtol=1e-7, atol=1e-11)
    np.testing.assert_allclose(
        a.cumulated_hot_nmol_h, b.cumulated_hot_nmol_h, rtol=1e-7, atol=1e-11
    )
    np.testing.assert_allclose(a.tia_MBqh, b.tia_MBqh, rtol=1e-6)


@pytest.mark.parametrize("which", ["linear", "pbpk"])
def test_activity_and_ligand_balance(which, pbpk_solve):
    """compartments + excreted + decayed = administered, at every time (1e-8 relative);
    and decay converts hot into cold ligand without creating or destroying ligand."""
    sched = Schedule.cycles(7400.0, 2, 336.0, ligand_nmol=57.1)
    t = jnp.linspace(0.0, 800.0, 17)
    traj = simulate(TWO_CMT, P2, sched, t) if which == "linear" else pbpk_solve(P_PBPK, sched, t)
    lhs = jnp.sum(traj.hot_nmol, axis=1) + traj.decayed_nmol
    np.testing.assert_allclose(lhs, traj.administered_hot_nmol, rtol=1e-8)
    given = np.where(np.asarray(t) >= 336.0, 2 * 57.1, 57.1)
    np.testing.assert_allclose(jnp.sum(traj.ligand_nmol, axis=1), given, rtol=1e-8)
    assert float(jnp.min(traj.hot_nmol)) > -1e-9 * 57.1


def test_pbpk_tail_to_infinity(pbpk_solve):
    """TIA to infinity (integrated tail + frozen-occupancy closure) equals a direct long solve."""
    short = pbpk_solve(P_PBPK, SINGLE, jnp.array([1.0, 24.0, 96.0]))
    long = pbpk_solve(P_PBPK, SINGLE, jnp.array([1.0, 24.0, 20000.0]))
    np.testing.assert_allclose(short.tia_MBqh, long.cumulated_activity_MBqh[-1], rtol=1e-6)


def test_linear_second_cycle_is_first_cycle_shifted():
    sched = Schedule.cycles(7400.0, 2, 1008.0, ligand_nmol=57.1)
    t1 = jnp.linspace(0.0, 500.0, 11)
    one = simulate(TWO_CMT, P2, Schedule.single(7400.0, ligand_nmol=57.1), t1)
    two = simulate(TWO_CMT, P2, sched, t1 + 1008.0)
    leftover = simulate(TWO_CMT, P2, Schedule.single(7400.0, ligand_nmol=57.1), t1 + 1008.0)
    np.testing.assert_allclose(
        two.activity_MBq, one.activity_MBq + leftover.activity_MBq, rtol=1e-9
    )


def test_more_cold_peptide_lowers_tumour_uptake(pbpk_solve):
    t = jnp.array([24.0, 96.0])
    low = pbpk_solve(P_PBPK, Schedule.single(7400.0, ligand_nmol=20.0), t)
    high = pbpk_solve(P_PBPK, Schedule.single(7400.0, ligand_nmol=500.0), t)
    assert float(high.tia("tumour")) < 0.9 * float(low.tia("tumour"))
    assert np.all(np.asarray(high.activity("tumour")) < np.asarray(low.activity("tumour")))
    # receptor-free (linear) kidneys would not care; here the saturable organs lose uptake while
    # more activity is excreted
    assert float(high.tia("urine")) > float(low.tia("urine"))


def test_jit_vmap_and_plain_calls_agree(pbpk_solve):
    t = jnp.array([4.0, 24.0, 96.0])
    plain = simulate(SMALL_PBPK, P_PBPK, SINGLE, t)
    jitted = pbpk_solve(P_PBPK, SINGLE, t)
    np.testing.assert_allclose(jitted.hot_nmol, plain.hot_nmol, rtol=1e-12)
    batch = {
        k: jnp.asarray(v) * jnp.array([1.0, 1.3]) if k == "R_tumour" else jnp.asarray(v)
        for k, v in P_PBPK.items()
    }
    vm = jax.vmap(
        lambda p: simulate(SMALL_PBPK, p, SINGLE, t),
        in_axes=({k: (0 if k == "R_tumour" else None) for k in P_PBPK},),
    )(batch)
    np.testing.assert_allclose(vm.hot_nmol[0], plain.hot_nmol, rtol=1e-10)
    other = simulate(SMALL_PBPK, {**P_PBPK, "R_tumour": 26.0}, SINGLE, t)
    np.testing.assert_allclose(vm.hot_nmol[1], other.hot_nmol, rtol=1e-10)


def test_float64_everywhere():
    traj = simulate(TWO_CMT, P2, SINGLE, TIMES)
    for leaf in jax.tree_util.tree_leaves(traj):
        assert leaf.dtype in (jnp.float64, jnp.bool_)
    assert traj.activity_MBq.dtype == jnp.float64
    assert traj.tia_MBqh.dtype == jnp.float64


def _central_fd(f, x, h):
    return (f(x + h) - f(x - h)) / (2 * h)


def test_gradients_linear_model_match_finite_differences():
    def tia(k12, activity):
        s = SINGLE.with_activity(activity)
        return simulate(TWO_CMT, {**P2, "k12": k12}, s, TIMES).cumulated_activity("peripheral")[-1]

    g = jax.grad(tia, argnums=(0, 1))(0.5, 7400.0)
    fd0 = _central_fd(lambda x: tia(x, 7400.0), 0.5, 1e-5)
    fd1 = _central_fd(lambda x: tia(0.5, x), 7400.0, 1e-2)
    assert float(g[0]) == pytest.approx(float(fd0), rel=1e-5)
    assert float(g[1]) == pytest.approx(float(fd1), rel=1e-5)


def test_gradients_receptor_model_match_finite_differences():
    """jacfwd (default forward-mode adjoint) and grad (reverse adjoint) vs central differences,
    for a receptor density, a release rate, the activity and the ligand amount."""
    t = jnp.array([24.0, 96.0])
    names = ("R_tumour", "lambda_rel_kidneys")

    def f(theta, activity, cold, adjoint):
        p = {**P_PBPK, **dict(zip(names, theta, strict=True))}
        s = Schedule.single(7400.0, ligand_nmol=57.1)
        s = s.with_activity(activity)
        s = jax.tree_util.tree_map(lambda x: x, s)
        import equinox as eqx

        s = eqx.tree_at(lambda q: q.cold_nmol, s, jnp.reshape(cold, (1,)))
        tr = simulate(SMALL_PBPK, p, s, t, rtol=1e-10, atol=1e-13, adjoint=adjoint)
        return jnp.stack([tr.activity("tumour")[1], tr.tia("kidneys")])

    theta = jnp.array([20.0, 0.02])
    cold0 = float(SINGLE.cold_nmol[0])
    jf = jax.jit(jax.jacfwd(lambda th, a, c: f(th, a, c, "forward"), argnums=(0, 1, 2)))(
        theta, 7400.0, cold0
    )
    gr = jax.jit(jax.grad(lambda th: f(th, 7400.0, cold0, "reverse")[0]))(theta)
    base = jax.jit(lambda th, a, c: f(th, a, c, "forward"))
    for i, h in enumerate((1e-3, 1e-6)):
        e = jnp.zeros(2).at[i].set(h)
        fd = (base(theta + e, 7400.0, cold0) - base(theta - e, 7400.0, cold0)) / (2 * h)
        np.testing.assert_allclose(jf[0][:, i], fd, rtol=1e-5)
        assert float(gr[i]) == pytest.approx(float(fd[0]), rel=1e-5)
    fd_a = (base(theta, 7400.01, cold0) - base(theta, 7399.99, cold0)) / 0.02
    np.testing.assert_allclose(jf[1], fd_a, rtol=1e-5)
    fd_c = (base(theta, 7400.0, cold0 + 1e-3) - base(theta, 7400.0, cold0 - 1e-3)) / 2e-3
    np.testing.assert_allclose(jf[2], fd_c, rtol=1e-5)
    assert float(jf[2][0]) < 0  # more cold ligand, less tumour activity


# ----------------------------------------------------------------------------- bad input
def test_bad_times_are_refused_before_solving():
    with pytest.raises(InputError, match="negative"):
        simulate(TWO_CMT, P2, SINGLE, [-1.0, 2.0])
    with pytest.raises(InputError, match="not sorted"):
        simulate(TWO_CMT, P2, SINGLE, [3.0, 2.0])
    with pytest.raises(InputError, match="non-finite"):
        simulate(TWO_CMT, P2, SINGLE, [1.0, np.nan])


def test_bad_parameters_are_refused():
    with pytest.raises(InputError, match="'k21' .* missing"):
        simulate(TWO_CMT, {k: v for k, v in P2.items() if k != "k21"}, SINGLE, TIMES)
    with pytest.raises(InputError, match="V1 = -3.0"):
        simulate(TWO_CMT, {**P2, "V1": -3.0}, SINGLE, TIMES)
    with pytest.raises(InputError, match="f_exc"):
        simulate(SMALL_PBPK, {**P_PBPK, "f_exc": 1.5}, SINGLE, TIMES)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"activity_MBq": 0.0}, "activity_MBq = 0.0"),
        ({"activity_MBq": -5.0}, "activity_MBq = -5.0"),
        ({"activity_MBq": 7400.0, "nuclide": "Lu-178"}, "closest known: Lu-177"),
        ({"activity_MBq": 7400.0, "ligand_nmol": 1.0}, "ligand_nmol = 1.0"),
        ({"activity_MBq": 7400.0, "time_h": -1.0}, "time_h = -1.0"),
        ({"activity_MBq": 7400.0, "duration_h": float("nan")}, "duration_h = nan"),
    ],
)
def test_bad_administrations(kwargs, match):
    with pytest.raises(InputError, match=match):
        Schedule.single(**kwargs)


def test_unsorted_schedule_refused():
    A = twinjax.Administration
    with pytest.raises(InputError, match=r"administrations\[1\].time_h = 0.0"):
        Schedule.from_administrations([A(10.0, 7400.0), A(0.0, 7400.0)])
    with pytest.raises(InputError, match="during the infusion"):
        Schedule.from_administrations([A(0.0, 7400.0, duration_h=5.0), A(2.0, 7400.0)])


def test_model_structure_errors():
    with pytest.raises(InputError, match="'centrl' is not a compartment.*closest: central"):
        CompartmentalModel(compartments=("central",), dose_compartment="centrl")
    with pytest.raises(InputError, match="missing|unique"):
        whole_body([Organ("kidneys"), Organ("kidneys")], circulation="single")
    with pytest.raises(InputError, match="lungs"):
        whole_body([Organ("kidneys")], circulation="arteriovenous")


def test_pbpk_organ_errors():
    with pytest.raises(InputError, match="drains_to = 'livr'"):
        whole_body([Organ("spleen", drains_to="livr"), Organ("liver")], circulation="single")
    with pytest.raises(InputError, match="Q_kidneys = -36.0"):
        simulate(SMALL_PBPK, {**P_PBPK, "Q_kidneys": -36.0}, SINGLE, TIMES)
    with pytest.raises(InputError, match="V_tumour = 0.0"):
        simulate(SMALL_PBPK, {**P_PBPK, "V_tumour": 0.0}, SINGLE, TIMES)
    traj = simulate(TWO_CMT, P2, SINGLE, TIMES)
    with pytest.raises(InputError, match="'kidney' is not in model 'two_cmt'"):
        traj.activity("kidney")


def test_vmap_over_administered_activity_is_linear_for_linear_models():
    acts = jnp.array([3700.0, 7400.0, 11100.0])
    out = jax.vmap(lambda a: simulate(TWO_CMT, P2, SINGLE.with_activity(a), TIMES).tia_MBqh)(acts)
    np.testing.assert_allclose(
        out / acts[:, None], np.broadcast_to(out[1] / 7400.0, out.shape), rtol=1e-12
    )
