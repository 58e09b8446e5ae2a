"""Conventional TAC dosimetry: trapezoid with tails, and mono/bi/uptake/tri-exponential fits that
recover the curves they were sampled from."""

import math

import numpy as np
import pytest

import twinjax
from twinjax import InputError
from twinjax import radiobiology as rb
from twinjax.dosimetry.tac import fit_exponential, tia_trapezoid

LAM = twinjax.nuclide("Lu-177").decay_constant_per_h
T5 = np.array([4.0, 24.0, 48.0, 96.0, 168.0])
T6 = np.array([1.0, 4.0, 24.0, 48.0, 96.0, 168.0])


def _sum_exp(t, amps, rates):
    return sum(a * np.exp(-k * t) for a, k in zip(amps, rates, strict=True))


@pytest.mark.parametrize(
    ("model", "times", "amps", "rates"),
    [
        ("mono", T5, [40.0], [LAM + 0.03]),
        ("uptake", T5, [50.0, -50.0], [LAM + 0.02, 0.5]),
        ("bi", T5, [20.0, 30.0], [LAM + 0.01, LAM + 0.1]),
        ("tri", T6, [20.0, 30.0, -50.0], [LAM + 0.01, LAM + 0.1, LAM + 0.8]),
    ],
)
def test_fits_recover_the_sampled_curve(model, times, amps, rates):
    fit = fit_exponential(times, _sum_exp(times, amps, rates), "Lu-177", model=model)
    assert fit.converged
    tia = sum(a / k for a, k in zip(amps, rates, strict=True))
    assert fit.tia_MBqh == pytest.approx(tia, rel=1e-8)
    order = np.argsort(rates)
    np.testing.assert_allclose(fit.rates_per_h, np.asarray(rates)[order], rtol=1e-6)
    np.testing.assert_allclose(fit.amplitudes_MBq, np.asarray(amps)[order], rtol=1e-6)
    np.testing.assert_allclose(fit.activity(times), _sum_exp(times, amps, rates), rtol=1e-8)
    assert np.max(np.abs(fit.residuals)) < 1e-8


def test_clearance_never_slower_than_physical_decay():
    # Activity rising at late times (noise) cannot give a rate below the physical one.
    a = np.array([10.0, 9.0, 8.5, 8.6, 8.7])
    fit = fit_exponential(T5, a, "Lu-177", model="mono")
    assert fit.at_bound and fit.rates_per_h[0] == pytest.approx(LAM, rel=1e-6)
    # At k = lambda the least-squares amplitude on the log scale is the geometric mean of
    # A_i exp(lambda t_i).
    amp = math.exp(np.mean(np.log(a) + LAM * T5))
    assert fit.tia_MBqh == pytest.approx(amp / LAM, rel=1e-5)
    assert not fit_exponential(T5, 40.0 * np.exp(-(LAM + 0.03) * T5), "Lu-177").at_bound


def test_trapezoid_by_hand_and_convergence():
    # Scans (1 h, 10 MBq), (2 h, 8 MBq): 5 (uptake from 0) + 9 + 8 / lambda.
    assert tia_trapezoid([1.0, 2.0], [10.0, 8.0], "Lu-177") == pytest.approx(14.0 + 8.0 / LAM)
    assert tia_trapezoid([1.0, 2.0], [10.0, 8.0], "Lu-177", before_first="constant") == (
        pytest.approx(19.0 + 8.0 / LAM)
    )
    k = 8.0 * LAM
    tail = tia_trapezoid([1.0, 2.0], [10.0, 10.0 * math.exp(-k)], "Lu-177", tail="last_scans")
    assert tail == pytest.approx(5.0 + 0.5 * 10.0 * (1 + math.exp(-k)) + 10.0 * math.exp(-k) / k)
    # A mono-exponential sampled every h hours: trapezoid error O(h^2), the tail exact.
    exact = 40.0 / (LAM + 0.03)
    errs = []
    for h in (4.0, 2.0):
        t = np.arange(h, 200.0, h)
        a = 40.0 * np.exp(-(LAM + 0.03) * t)
        errs.append(
            tia_trapezoid(t, a, "Lu-177", before_first="constant", tail="last_scans") - exact
        )
    assert abs(errs[1]) / exact < 2e-3
    assert errs[0] / errs[1] == pytest.approx(4.0, rel=0.2)


def test_fit_gives_the_dose_rate_for_bed():
    amps, rates = [50.0, -50.0], [LAM + 0.02, 0.5]
    fit = fit_exponential(T5, _sum_exp(T5, amps, rates), "Lu-177", model="uptake")
    s = 2.8e-4  # Gy/(MBq h), a kidney
    curve = fit.dose_rate(s)
    direct = rb.ExponentialDoseRate(s * np.asarray(amps), rates)
    assert float(rb.absorbed_dose(curve)) == pytest.approx(s * fit.tia_MBqh, rel=1e-12)
    assert float(rb.bed(curve, 2.6, 2.8)) == pytest.approx(
        float(rb.bed(direct, 2.6, 2.8)), rel=1e-7
    )


def test_bad_input():
    with pytest.raises(InputError, match="time_h = .*strictly increasing"):
        tia_trapezoid([4.0, 2.0], [1.0, 1.0], "Lu-177")
    with pytest.raises(InputError, match="time_h = .*> 0"):
        fit_exponential([0.0, 2.0], [1.0, 1.0], "Lu-177")
    with pytest.raises(InputError, match=r"activity_MBq = \[1.0, -1.0\]"):
        tia_trapezoid([1.0, 2.0], [1.0, -1.0], "Lu-177")
    with pytest.raises(InputError, match="activity_MBq = .*nan"):
        fit_exponential([1.0, 2.0], [1.0, float("nan")], "Lu-177")
    with pytest.raises(InputError, match="'tri' has 5 parameters but the TAC has 4 scans"):
        fit_exponential([1.0, 2.0, 3.0, 4.0], [1.0, 2.0, 1.5, 1.0], "Lu-177", model="tri")
    with pytest.raises(InputError, match="model = 'quad'"):
        fit_exponential([1.0, 2.0], [1.0, 1.0], "Lu-177", model="quad")
    with pytest.raises(InputError, match="time_h has shape"):
        tia_trapezoid([1.0, 2.0], [1.0], "Lu-177")
    with pytest.raises(InputError, match="Lu-178"):
        tia_trapezoid([1.0, 2.0], [1.0, 1.0], "Lu-178")
