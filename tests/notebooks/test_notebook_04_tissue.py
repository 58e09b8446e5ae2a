"""Notebook 04 tissue: executed in small mode (see `_nbrun`)."""

from _nbrun import execute


def test_04_tissue_twin(monkeypatch):
    r = execute(
        "04_tissue_twin.ipynb",
        "dict(metrics=metrics, sf=sf, sf_oxic=sf_oxic, oxygen=oxygen,"
        " dmin=float(d[tumour].min()), finite=bool(np.isfinite(d).all()),"
        " surv_min=float(survival.min()), surv_max=float(survival.max()),"
        " hyp=float(survival[hypoxic].mean()), ox=float(survival[well].mean()),"
        " n_hyp=int(hypoxic.sum()), n_ox=int(well.sum()))",
        monkeypatch,
    )
    m = r["metrics"]
    assert r["finite"] and r["dmin"] > 0
    assert 0 < m["D98"] <= m["D50"] <= m["D2"] <= m["max"] and m["min"] <= m["mean"] <= m["max"]
    assert 0 < r["surv_min"] <= r["surv_max"] <= 1
    # hypoxia protects: the tumour survives more with its pO2 map than fully oxygenated
    assert r["sf_oxic"] < r["sf"] < 1
    assert r["n_hyp"] > 0 and r["n_ox"] > 0 and r["hyp"] > r["ox"]
    o = r["oxygen"]
    assert 0 <= o["fraction_below_2.5_mmHg"] <= o["fraction_below_5_mmHg"] <= 1
