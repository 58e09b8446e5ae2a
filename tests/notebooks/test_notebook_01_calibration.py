"""Notebook 01 calibration: executed in small mode (see `_nbrun`)."""

import math

from _nbrun import execute


def test_01_bayesian_calibration(monkeypatch):
    r = execute(
        "01_bayesian_calibration.ipynb",
        "dict(truth=truth, median=posterior_median, rhat_max=rhat_max, divergences=divergences,"
        " ess=ess_bulk_min, dose=dose_summary, true_dose=true_dose,"
        " coverage=predictive_coverage, names=list(post.names), n=len(post.draws('CL')))",
        monkeypatch,
    )
    assert r["names"] == ["CL", "k_bk", "k_bt", "k_kb"]
    assert r["n"] == 2 * 300  # 2 chains x 300 draws
    for name, t in r["truth"].items():
        # five scans x three regions: every parameter's median within 25 % of the truth
        assert abs(math.log(r["median"][name] / t)) < math.log(1.25), name
    assert r["rhat_max"] < 1.05 and r["divergences"] <= 2 and r["ess"] > 100
    assert r["coverage"] >= 0.6
    for region in ("kidneys", "tumour"):
        d = r["dose"][region]
        assert 0 < d["q5"] < d["q50"] < d["q95"] and math.isfinite(d["q95"])
        # the synthetic truth lies in the posterior's 90 % interval, widened by 10 %
        assert 0.9 * d["q5"] <= r["true_dose"][region] <= 1.1 * d["q95"], region
