"""Every public numerical function keeps float64 (x64 is on by default in twinjax)."""

import jax
import jax.numpy as jnp
import numpy as np

import twinjax
from twinjax import Schedule, nuclide, simulate
from twinjax.models import pet


def _all_f64(tree):
    leaves = [x for x in jax.tree_util.tree_leaves(tree) if hasattr(x, "dtype")]
    assert leaves
    for x in leaves:
        assert x.dtype in (jnp.float64, jnp.bool_, np.float64), x.dtype


def test_nuclide_chain_solutions():
    c = nuclide("Ac-225").chain
    n0 = np.eye(len(c.members))[0]
    _all_f64(c.bateman(n0, [1.0, 2.0]))
    _all_f64(c.expm_solution(n0, [1.0, 2.0]))


def test_schedule_and_template_parameters():
    s = Schedule.cycles(7400.0, 3, 1008.0, ligand_nmol=57.0)
    _all_f64(s)
    _all_f64(s.activity_MBq)
    t = twinjax.load_template("psma617_poppk_siebinga2023")
    _all_f64(t.params)
    _all_f64(t.sample_params(jax.random.key(0), 3))


def test_simulation_outputs_linear_and_nonlinear():
    t = twinjax.load_template("psma617_poppk_siebinga2023")
    tr = simulate(t.model, t.params, t.default_schedule(), [1.0, 24.0])
    _all_f64(tr)
    _all_f64(
        (
            tr.activity_MBq,
            tr.tia_MBqh,
            tr.concentration_nmol_per_L,
            tr.excreted_activity_MBq,
            tr.activity("kidneys"),
            tr.tia("kidneys"),
            tr.decayed_nmol,
        )
    )


def test_pet_functions():
    aif = pet.FengInput.fdg_reference()
    t = jnp.array([0.1, 0.5, 1.0])
    _all_f64(aif(t))
    _all_f64(aif.integral(t))
    _all_f64(pet.two_tissue(t, 5.7, 7.5, 4.1, 0.0, aif))
    _all_f64(pet.one_tissue(t, 5.7, 7.5, aif))


def test_pde_operators_and_solves():
    from twinjax.pde import Diffusion, Grid, solve_pde

    g = Grid((6, 5), 0.5)
    op = Diffusion(g, np.linspace(0.5, 1.5, 30).reshape(g.shape), boundary="fixed")
    u0 = jnp.ones(g.shape)
    _all_f64(op)
    _all_f64(op(u0))
    _all_f64(solve_pde(lambda t, y, a: op(y), u0, jnp.array([0.0, 0.1]), method="explicit",
                       dt_h=0.5 / op.max_rate_per_h))  # fmt: skip
