"""Notebook 03 cohort: executed in small mode (see `_nbrun`)."""

import math

import numpy as np
from _nbrun import execute


def test_03_gpu_cohort_experiment(monkeypatch):
    r = execute(
        "03_gpu_cohort_experiment.ipynb",
        "dict(devices=len(devices), max_rel_diff=max_rel_diff, rate=patients_per_s,"
        " scenarios=list(trial.scenarios), within=within, summary=summary,"
        " n=trial.n_patients, kidney=[trial.get(s, 'kidneys', 'bed_Gy').tolist()"
        " for s in trial.scenarios], dose=[trial.get(s, 'kidneys', 'dose_Gy').tolist()"
        " for s in trial.scenarios])",
        monkeypatch,
        XLA_FLAGS="--xla_force_host_platform_device_count=2",
        NPROC="4",
    )
    assert r["devices"] == 2 and r["n"] == 24
    assert r["max_rel_diff"] < 1e-10  # sharded over 2 devices == one device
    assert r["rate"] > 0 and math.isfinite(r["rate"])
    k = np.array(r["kidney"])
    assert np.all(np.isfinite(k) & (k > 0))
    # a linear model's dose is proportional to activity; BED grows faster than dose
    d = np.array(r["dose"])
    np.testing.assert_allclose(d[1] / d[0], 7400.0 / 6000.0, rtol=1e-8)
    assert np.all(k[1] / k[0] > 7400.0 / 6000.0)
    f = [r["within"][s]["fraction"] for s in r["scenarios"]]
    assert 0 <= f[1] <= f[0] <= 1  # more activity, no more patients within the limit
