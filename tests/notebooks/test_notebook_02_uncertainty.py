"""Notebook 02 uncertainty: executed in small mode (see `_nbrun`)."""

import math

import numpy as np
import pytest
from _nbrun import execute


def test_02_uncertainty_study(monkeypatch):
    r = execute(
        "02_uncertainty_study.ipynb",
        "dict(e=elasticities, e_grad=elasticity_by_grad, name=name, nominal=nominal,"
        " outputs=list(sobol.outputs), names=list(sobol.names), s1=sobol.first_order.tolist(),"
        " st=sobol.total.tolist(), best=plan.best_time_h, best_linear=plan_linear.best_time_h,"
        " candidates=CANDIDATES.tolist(), reduction=plan.variance_reduction.tolist(),"
        " reduction_linear=plan_linear.variance_reduction.tolist(),"
        " ess=plan.effective_sample_size.tolist())",
        monkeypatch,
    )
    # local: the Jacobian's elasticity equals jax.grad's; the kidney self-dose scales as about
    # 1/mass (electrons absorbed locally) and the tumour dose not at all with the kidney mass
    assert r["e"]["kidneys"][r["name"]] == pytest.approx(r["e_grad"], rel=1e-8)
    assert -1.0 < r["e"]["kidneys"]["kidney_mass_kg"] < -0.95
    assert r["e"]["tumour"]["kidney_mass_kg"] == pytest.approx(0.0, abs=1e-12)
    assert all(v > 0 and math.isfinite(v) for v in r["nominal"].values())
    # global: first-order indices sum to at most 1 (Monte Carlo tolerance), totals to at least
    # 1; each ST >= S1 within tolerance; the tumour's rate barely moves the kidney dose
    assert r["outputs"] == ["kidneys", "tumour"]
    s1, st = np.array(r["s1"]), np.array(r["st"])
    assert np.all(s1.sum(axis=1) <= 1.0 + 0.12)
    assert np.all(st.sum(axis=1) >= 1.0 - 0.1)
    assert np.all(st >= s1 - 0.15)
    kb = r["names"].index("k_bt")
    assert st[0, kb] < 0.05 and st[1, kb] > 0.5
    # scan design: a candidate is chosen, and a late scan reduces the kidney-dose variance more
    # than the earliest candidate
    assert r["best"] in r["candidates"] and r["best_linear"] in r["candidates"]
    red, red_lin = np.array(r["reduction"]), np.array(r["reduction_linear"])
    assert np.all((red > 0) & (red < 1)) and np.all((red_lin > 0) & (red_lin < 1))
    assert red.max() > red[0] and red_lin.max() > red_lin[0]
    assert min(r["ess"]) > 10
