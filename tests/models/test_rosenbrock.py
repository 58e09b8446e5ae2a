"""The Rosenbrock solvers (twinjax/models/_rosenbrock.py): convergence order, error-estimate order,
L-stability, agreement with Diffrax's Kvaerno5 on the PSMA model, and forward-mode derivatives."""

import diffrax as dfx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import twinjax
from twinjax.models._rosenbrock import Rodas3, Rodas4

SOLVERS = [(Rodas4(), 4), (Rodas3(), 3)]


def _logistic_and_forced(t, y, args):
    # y0' = y0 (1 - y0) (logistic); y1' = cos(t) y1 (non-autonomous: exercises the df/dt term)
    return jnp.stack([y[0] * (1.0 - y[0]), jnp.cos(t) * y[1]])


def _exact(t, y0=0.1):
    return np.array([1.0 / (1.0 + (1.0 / y0 - 1.0) * np.exp(-t)), np.exp(np.sin(t))])


def _fixed_step_error(solver, n_steps, t1=2.0):
    sol = dfx.diffeqsolve(
        dfx.ODETerm(_logistic_and_forced),
        solver,
        0.0,
        t1,
        t1 / n_steps,
        jnp.array([0.1, 1.0]),
        stepsize_controller=dfx.ConstantStepSize(),
        max_steps=n_steps + 1,
    )
    return float(np.max(np.abs(np.asarray(sol.ys[-1]) - _exact(t1))))


@pytest.mark.parametrize(("solver", "order"), SOLVERS)
def test_global_convergence_order(solver, order):
    ns = np.array([32, 64, 128, 256])  # asymptotic range (pre-asymptotic below ~32 steps)
    err = np.array([_fixed_step_error(solver, int(n)) for n in ns])
    slope = -np.polyfit(np.log(ns), np.log(err), 1)[0]
    assert slope == pytest.approx(order, abs=0.3), (err, slope)


@pytest.mark.parametrize(("solver", "order"), SOLVERS)
def test_error_estimate_order(solver, order):
    """One step's embedded error estimate scales like h^order (embedded method of order - 1)."""
    term = dfx.ODETerm(_logistic_and_forced)
    y0 = jnp.array([0.1, 1.0])
    hs = np.array([0.2, 0.1, 0.05, 0.025])
    est = []
    for h in hs:
        state = solver.init(term, 0.0, h, y0, None)
        _, y_err, _, _, _ = solver.step(term, 0.0, h, y0, None, state, False)
        est.append(float(jnp.max(jnp.abs(y_err))))
    slope = np.polyfit(np.log(hs), np.log(est), 1)[0]
    assert slope == pytest.approx(order, abs=0.35), (est, slope)


@pytest.mark.parametrize(("solver", "order"), SOLVERS)
def test_stability_function(solver, order):
    """On y' = z y one step multiplies by R(z): R(z) = e^z + O(z^(p+1)), |R| <= 1 on the
    imaginary axis (A-stable) and R(z) -> 0 as z -> -inf (L-stable; Hairer & Wanner IV.7)."""

    def step(matrix, y0):
        term = dfx.ODETerm(lambda t, y, a: matrix @ y)
        state = solver.init(term, 0.0, 1.0, y0, None)
        return np.asarray(solver.step(term, 0.0, 1.0, y0, None, state, False)[0])

    def r(z):
        return float(step(jnp.array([[z]]), jnp.array([1.0]))[0])

    zs = np.array([-0.2, -0.1, -0.05])
    local = np.array([abs(r(z) - np.exp(z)) for z in zs])
    slope = np.polyfit(np.log(np.abs(zs)), np.log(local), 1)[0]
    assert slope >= order + 1 - 0.3, (local, slope)
    assert abs(r(-1e10)) < 1e-8
    # z = i w through the real rotation y' = [[0, -w], [w, 0]] y (a normal matrix, so one step
    # scales |y| by |R(i w)|).
    for w in (0.5, 2.0, 10.0, 1e3):
        y1 = step(jnp.array([[0.0, -w], [w, 0.0]]), jnp.array([1.0, 0.0]))
        assert np.linalg.norm(y1) <= 1.0 + 1e-12


@pytest.fixture(scope="module")
def psma():
    tpl = twinjax.load_template("psma617_reduced")
    params = tpl.params
    return tpl, params, twinjax.Schedule.single(7400.0, ligand_nmol=100.0)


def test_agrees_with_kvaerno5_on_psma(psma):
    """The receptor-binding PBPK (stiff, nonlinear): Rodas4 at rtol 1e-8 matches Kvaerno5 at
    rtol 1e-11 in organ activities at scan times and in TIAs."""
    tpl, params, sched = psma
    times = jnp.array([0.5, 4.0, 24.0, 96.0, 168.0])
    ref = twinjax.simulate(
        tpl.model,
        params,
        sched,
        times,
        rtol=1e-11,
        atol=1e-14,
        solver=dfx.Kvaerno5(root_finder=dfx.VeryChord(rtol=1e-9, atol=1e-12)),
        max_steps=100_000,
    )
    out = twinjax.simulate(tpl.model, params, sched, times, rtol=1e-8, atol=1e-11)
    for organ in ("kidneys", "salivary", "tumour", "liver"):
        np.testing.assert_allclose(out.activity(organ), ref.activity(organ), rtol=2e-6)
        np.testing.assert_allclose(out.tia(organ), ref.tia(organ), rtol=2e-6)


def test_forward_mode_derivative_matches_finite_differences(psma):
    tpl, params, sched = psma

    def tia(log_r):
        p = dict(params, R_kidneys=jnp.exp(log_r))
        tr = twinjax.simulate(tpl.model, p, sched, jnp.array([24.0]), rtol=1e-9, atol=1e-12)
        return tr.tia("kidneys")

    x = jnp.log(params["R_kidneys"])
    # one compiled function for the value and its tangent
    value_and_tangent = jax.jit(lambda x, dx: jax.jvp(tia, (x,), (dx,)))
    d = float(value_and_tangent(x, jnp.ones_like(x))[1])
    eps = 1e-4
    lo, hi = (float(value_and_tangent(x + s, jnp.zeros_like(x))[0]) for s in (-eps, eps))
    fd = (hi - lo) / (2 * eps)
    assert d == pytest.approx(fd, rel=1e-5)
    assert abs(d) > 1.0  # receptor density does change the kidney dose
