"""Finite-volume diffusion against analytic solutions: conservation on a closed domain, the
cosine series of 1-D no-flux diffusion, the 3-D Gaussian kernel, second-order convergence on a
manufactured solution with heterogeneous diffusivity, and the fixed-value boundary parabola.
(The Fisher-KPP front speed and Krogh's cylinder are tested on the tissue models, in
test_pde_growth.py and test_pde_oxygen.py.)"""

import jax
import jax.numpy as jnp
import lineax as lx
import numpy as np
import pytest

from twinjax import InputError
from twinjax.pde import Diffusion, Grid, solve_pde, steady_state


@pytest.mark.parametrize("method", ["explicit", "adaptive", "implicit", "imex"])
def test_closed_domain_conserves_mass(method):
    g = Grid((10, 9, 8), (0.5, 0.4, 0.6))
    rng = np.random.default_rng(1)
    d = rng.uniform(0.1, 2.0, g.shape)
    d[3:6, 2:5, :] = 0.0  # an impermeable block
    op = Diffusion(g, d)
    u0 = jnp.asarray(rng.uniform(0.0, 5.0, g.shape))
    kw = {"dt_h": 0.5 / op.max_rate_per_h} if method == "explicit" else {}
    if method == "imex":  # a linear decay explicit, diffusion implicit: mass falls as exp(-k t)
        kw["stiff"] = lambda t, y, a: op(y)
        f = lambda t, y, a: -0.5 * y  # noqa: E731
    else:
        f = lambda t, y, a: op(y)  # noqa: E731
    u = solve_pde(f, u0, jnp.array([0.0, 0.3]), method=method, rtol=1e-9, atol=1e-12,
                  stability_rate_per_h=op.max_rate_per_h, **kw)  # fmt: skip
    if method == "imex":
        u0 = u0 * np.exp(-0.5 * 0.3)
    m0, m1 = float(u0.sum()), float(u[-1].sum())
    assert abs(m1 - m0) / m0 < 1e-10
    # The field has moved (not a trivial pass) and the block kept its content.
    assert float(jnp.max(jnp.abs(u[-1] - u0))) > 0.1
    np.testing.assert_allclose(u[-1][3:6, 2:5, :], u0[3:6, 2:5, :], rtol=1e-12)


def test_one_dimensional_no_flux_matches_the_cosine_series():
    """u(x, 0) = 1 on [0, L/2), 0 on [L/2, L], no flux at both ends:
    u = 1/2 + sum_n (2 / (n pi)) sin(n pi / 2) cos(n pi x / L) exp(-D (n pi / L)^2 t)."""
    length, n, diff = 10.0, 400, 0.5
    g = Grid((n,), length / n)
    op = Diffusion(g, diff)
    x = g.coordinates_mm()[0]
    u0 = jnp.asarray((x < length / 2).astype(float))
    times = jnp.array([0.0, 2.0, 10.0, 40.0])
    u = solve_pde(lambda t, y, a: op(y), u0, times, method="implicit", rtol=1e-8, atol=1e-10)
    k = np.arange(1, 4001)
    for t, got in zip(np.asarray(times)[1:], np.asarray(u)[1:], strict=True):
        series = 0.5 + np.sum(
            (2 / (k * np.pi) * np.sin(k * np.pi / 2))[:, None]
            * np.cos(np.outer(k, x) * np.pi / length)
            * np.exp(-diff * (k * np.pi / length) ** 2 * t)[:, None],
            axis=0,
        )
        np.testing.assert_allclose(got, series, atol=2e-4)


def _gaussian_cell_averages(g: Grid, centre: float, var: float) -> np.ndarray:
    """Cell averages of exp(-r^2 / (2 var)) (a product of erf differences per axis)."""
    from scipy.special import erf

    out = np.ones(g.shape)
    for a, (n, h) in enumerate(zip(g.shape, g.spacing_mm, strict=True)):
        edges = np.arange(n + 1) * h - centre
        w = np.sqrt(2 * var)
        avg = np.sqrt(np.pi / 2 * var) * (erf(edges[1:] / w) - erf(edges[:-1] / w)) / h
        shape = [1] * g.ndim
        shape[a] = n
        out = out * avg.reshape(shape)
    return out


def test_three_dimensional_gaussian_matches_the_heat_kernel():
    """A Gaussian of variance s0^2 spreads to s0^2 + 2 D t per axis, its peak falls as
    (s0^2 / s^2)^(3/2) (cell averages compared; the boundary is 5 s away). The variance grows
    by exactly 2 D t; the peak error is the second-order truncation error: it falls 4-fold from
    1 mm to 0.5 mm cells, to 0.4 %."""
    s0, t, diff = 2.5, 2.0, 1.2
    s2 = s0**2 + 2 * diff * t
    errs = []
    for h in (1.0, 0.5):
        n = int(36 / h)
        g = Grid((n, n, n), h)
        op = Diffusion(g, diff)
        u0 = jnp.asarray(_gaussian_cell_averages(g, 18.0, s0**2))
        u = solve_pde(lambda t, y, a, op=op: op(y), u0, jnp.array([0.0, t]), method="explicit",
                      dt_h=0.9 / op.max_rate_per_h, stability_rate_per_h=op.max_rate_per_h)[-1]  # fmt: skip
        u = np.asarray(u)
        x = g.coordinates_mm()[0] - 18.0
        # Cell averages carry h^2 / 12 of extra variance, at every time.
        assert (u * x**2).sum() / u.sum() == pytest.approx(s2 + h * h / 12, rel=1e-6)
        exact = (s0**2 / s2) ** 1.5 * _gaussian_cell_averages(g, 18.0, s2)
        errs.append(np.max(np.abs(u - exact)) / exact.max())
    assert errs[1] < 5e-3
    assert errs[0] / errs[1] == pytest.approx(4.0, abs=0.4)


def _manufactured_error(n: int) -> float:
    """Max error of the FV solution of -div(D grad u) + u = f on the unit square (no flux),
    u = cos(pi x) cos(pi y), D = 1 + 0.5 sin(pi x) sin(pi y) + 0.3 x."""

    def u_fn(p):
        return jnp.cos(jnp.pi * p[0]) * jnp.cos(jnp.pi * p[1])

    def d_fn(p):
        return 1.0 + 0.5 * jnp.sin(jnp.pi * p[0]) * jnp.sin(jnp.pi * p[1]) + 0.3 * p[0]

    def f_fn(p):
        div = jnp.trace(jax.jacfwd(lambda q: jax.grad(u_fn)(q) * d_fn(q))(p))
        return -div + u_fn(p)

    g = Grid((n, n), 1.0 / n)
    pts = jnp.stack([jnp.asarray(c).ravel() for c in g.coordinates_mm()], axis=1)
    d = np.asarray(jax.vmap(d_fn)(pts)).reshape(g.shape)
    f = jax.vmap(f_fn)(pts).reshape(g.shape)
    op = Diffusion(g, d)
    a = lx.FunctionLinearOperator(lambda v: v - op(v), jax.ShapeDtypeStruct(g.shape, float),
                                  tags=(lx.symmetric_tag, lx.positive_semidefinite_tag))  # fmt: skip
    sol = lx.linear_solve(a, f, lx.CG(rtol=1e-10, atol=1e-12, max_steps=5000)).value
    exact = jax.vmap(u_fn)(pts).reshape(g.shape)
    return float(jnp.max(jnp.abs(sol - exact)))


def test_second_order_convergence_on_a_manufactured_solution():
    errs = [_manufactured_error(n) for n in (16, 32, 64)]
    orders = np.log2(np.array(errs[:-1]) / np.array(errs[1:]))
    assert np.all(np.abs(orders - 2.0) < 0.2), (errs, orders)


def test_bad_input():
    g = Grid((8, 8), 0.5)
    with pytest.raises(InputError, match=r"spacing_mm = -1.0; allowed: finite and > 0"):
        Grid((8, 8), -1.0)
    with pytest.raises(InputError, match=r"diffusivity_mm2_per_h has shape \(8, 7\)"):
        Diffusion(g, np.ones((8, 7)))
    with pytest.raises(InputError, match="diffusivity_mm2_per_h has 1 NaN"):
        d = np.ones(g.shape)
        d[2, 2] = np.nan
        Diffusion(g, d)
    with pytest.raises(InputError, match="diffusivity_mm2_per_h has min -1.0"):
        Diffusion(g, -1.0)
    with pytest.raises(InputError, match=r"mask has shape \(4, 4\)"):
        Diffusion(g, 1.0, mask=np.ones((4, 4), bool))
    with pytest.raises(InputError, match="mask is empty"):
        Diffusion(g, 1.0, mask=np.zeros(g.shape, bool))
    op = Diffusion(g, 1.0)
    limit = 1.0 / op.max_rate_per_h  # h^2 / (2 d D) = 0.0625 h
    assert limit == pytest.approx(0.25 / 4)
    with pytest.raises(InputError, match=r"dt_h = 0.1 h exceeds the explicit stability limit"):
        solve_pde(lambda t, y, a: op(y), jnp.zeros(g.shape), jnp.array([0.0, 1.0]),
                  method="explicit", dt_h=0.1, stability_rate_per_h=op.max_rate_per_h)  # fmt: skip
    with pytest.raises(InputError, match="method = 'rk4'"):
        solve_pde(lambda t, y, a: op(y), jnp.zeros(g.shape), jnp.array([0.0, 1.0]), method="rk4")


def test_fixed_value_boundary_steady_state_is_the_parabola():
    """-D u'' = s with u = b at both ends: u = b + s x (L - x) / (2 D); second order."""
    length, diff, src, b = 4.0, 0.8, 1.5, 2.0
    errs = []
    for n in (40, 80):
        g = Grid((n,), length / n)
        op = Diffusion(g, diff, boundary="fixed", boundary_value=b)
        x = g.coordinates_mm()[0]
        u = steady_state(lambda u, _, op=op: (op(u) + src) / op.max_rate_per_h, jnp.full(n, b))
        errs.append(np.max(np.abs(np.asarray(u) - (b + src * x * (length - x) / (2 * diff)))))
    assert errs[1] < 1e-3
    assert errs[0] / errs[1] == pytest.approx(4.0, abs=0.4)


def test_solver_failures_raise_solver_error():
    from twinjax import SolverError

    g = Grid((20,), 0.1)
    op = Diffusion(g, 1.0)
    with pytest.raises(SolverError, match=r"the PDE solve \(adaptive\) failed \(max_steps=3"):
        solve_pde(lambda t, y, a: op(y), jnp.linspace(0.0, 1.0, 20), jnp.array([0.0, 10.0]),
                  method="adaptive", max_steps=3)  # fmt: skip
    with pytest.raises(SolverError, match="did not converge in 1 steps"):
        steady_state(lambda u, _: u**3 - 2.0, jnp.full(3, 10.0), max_steps=1)
