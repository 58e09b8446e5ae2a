"""Simulation-based calibration (Talts et al. 2018, arXiv:1804.06788) of NUTS on the linear test
template (3 inferred parameters: CL, k_bk, k_bt): over 100 replications the
ranks of the truth among L = 10 thinned posterior draws are uniform on {0..10} for every
parameter, TIA and the log-likelihood; a fit that assumes a third of the real measurement noise
is caught in 20 replications (its log-likelihood ranks pile up at 0).

The verdict is at family-wise level alpha = 0.01 over the Q = 7 quantities (Bonferroni: each
chi-square p-value must exceed 0.01 / 7), so a correct sampler fails with probability <= 1 %."""

import numpy as np
import pytest

import twinjax
from twinjax import InputError
from twinjax.imaging import Patient
from twinjax.imaging.observe import LognormalError
from twinjax.inference import Observed
from twinjax.inference._sbc_result import SBCResult, rank_bins
from twinjax.inference.sbc import SBCRunner, simulation_based_calibration

# No per-scan calibration factor here (it costs 40 % more per replication); validation/sbc.py
# runs SBC with them on the PSMA model.
NOISE = LognormalError({"kidneys": 0.12, "tumour": 0.18, "whole_body": 0.08})
NAMES = ("CL", "k_bk", "k_bt")
TIMES = (4.0, 24.0, 96.0)
# Test-sized sampler: 50 warm-up + 30 draws thinned by 3 (the thinned draws of this model have
# ESS close to L, checked below); loose ODE tolerances (the linear model is solved exactly).
FAST = dict(num_warmup=50, num_samples=30, thin=3, rtol=1e-5, atol=1e-8, names=NAMES)


@pytest.fixture(scope="module")
def setup(linear_template_path):
    tpl = twinjax.load_template(linear_template_path)
    patient = Patient.virtual(
        {"egfr_L_per_h": 5.4}, twinjax.Schedule.single(7400.0, ligand_nmol=57.0)
    )
    obs = Observed.design(("kidneys", "tumour", "whole_body"), TIMES)
    return tpl, patient, obs


@pytest.fixture(scope="module")
def correct(setup):
    tpl, patient, obs = setup
    return simulation_based_calibration(tpl, patient, obs, NOISE, n_replications=100, **FAST)


@pytest.fixture(scope="module")
def misspecified(setup):
    tpl, patient, obs = setup
    loud = LognormalError({k: 3 * v for k, v in NOISE.cv.items()})
    return simulation_based_calibration(
        tpl, patient, obs, NOISE, n_replications=20, true_noise=loud, **FAST
    )


def test_ranks_are_uniform_for_the_correct_model(correct):
    res = correct
    print(res.table())
    assert res.quantities == (
        "CL",
        "k_bk",
        "k_bt",
        "tia_kidneys",
        "tia_tumour",
        "tia_whole_body",
        "log_likelihood",
    )
    assert res.n == 100 and res.num_draws == 10
    # 11 possible ranks, 100 replications: one bin per rank (expected 9.1 >= 5 per bin).
    assert res.bins().tolist() == list(range(12))
    for q in res.quantities:
        r = res.ranks[q]
        assert r.min() >= 0 and r.max() <= 10
    assert res.threshold == pytest.approx(0.01 / 7)
    assert res.verdict == "uniform", res.table()
    # Thinned draws close to independent (else correct inference gives end-peaked histograms).
    for q in res.quantities:
        assert np.median(res.ess[q]) > 0.5 * res.num_draws, res.table()
    assert res.divergences.sum() <= 5, res.table()


def test_misspecified_noise_fails(misspecified):
    res = misspecified
    print(res.table())
    print(res.histogram("log_likelihood"))
    assert res.verdict == "not uniform", res.table()
    p = res.p_values
    assert p["log_likelihood"] < 1e-4, res.table()
    # The data are 3x noisier than the fit assumes: the true parameters' likelihood is below
    # almost every posterior draw's.
    assert np.mean(res.ranks["log_likelihood"] == 0) > 0.5, res.histogram("log_likelihood")


def test_chunks_join_and_round_trip(correct):
    res = correct
    half = [
        SBCResult.from_dict(
            {
                **res.to_dict(),
                "replication": res.replication[sel].tolist(),
                **{
                    k: {q: np.asarray(v)[sel].tolist() for q, v in getattr(res, k).items()}
                    for k in ("ranks", "truth", "ess")
                },
                **{
                    k: np.asarray(getattr(res, k))[sel].tolist()
                    for k in ("divergences", "leapfrog_steps", "simulation_ok")
                },
            }
        )
        for sel in (slice(50, None), slice(0, 50))
    ]
    joined = SBCResult.concatenate(half)
    assert joined.replication.tolist() == list(range(100))
    for q in res.quantities:
        np.testing.assert_array_equal(joined.ranks[q], res.ranks[q])
    assert joined.p_values == pytest.approx(res.p_values)
    with pytest.raises(InputError, match="overlap"):
        SBCResult.concatenate([half[0], half[0]])


def test_runner_chunks_reproduce_one_run_and_compile_once(setup, correct):
    # validation/sbc.py runs long studies in chunks through one SBCRunner: replication i uses
    # the key fold_in(key(seed), i), so two chunks reproduce replications 0-5 of the 100-run.
    tpl, patient, obs = setup
    runner = SBCRunner(tpl, patient, obs, NOISE, **FAST)
    parts = [runner(n_replications=3, start=0), runner(n_replications=3, start=3)]
    joined = SBCResult.concatenate(parts)
    assert joined.replication.tolist() == list(range(6))
    for q in correct.quantities:
        np.testing.assert_array_equal(joined.ranks[q], correct.ranks[q][:6])
        np.testing.assert_allclose(joined.truth[q], correct.truth[q][:6], rtol=1e-12)
    assert runner._run._cache_size() == 1


def test_rank_bins_expect_at_least_five_per_bin():
    # 20 ranks, 100 replications: 20 bins of one rank (5 expected each).
    assert rank_bins(100, 19).tolist() == list(range(21))
    # 21 ranks: single ranks would expect 4.8, so 10 bins of 2-3 ranks.
    edges = rank_bins(100, 20)
    assert len(edges) == 11 and edges[0] == 0 and edges[-1] == 21
    assert 100 * np.diff(edges).min() / 21 >= 5
    assert rank_bins(500, 199).size == 21  # 20 bins of 10 ranks, as in Talts et al.


def test_bad_arguments(setup):
    tpl, patient, obs = setup
    with pytest.raises(InputError, match="n_replications = 0"):
        simulation_based_calibration(tpl, patient, obs, NOISE, n_replications=0)
    with pytest.raises(InputError, match="thin = 50 exceeds num_samples = 30"):
        simulation_based_calibration(tpl, patient, obs, NOISE, num_samples=30, thin=50)
    with pytest.raises(InputError, match="true_prior_shift names 'Vmax'"):
        simulation_based_calibration(tpl, patient, obs, NOISE, true_prior_shift={"Vmax": 2.0})
    with pytest.raises(InputError, match="batch = 0"):
        simulation_based_calibration(tpl, patient, obs, NOISE, batch=0)
