"""Single-time-point TIA formulas (Hänscheid 2018, Madsen 2018) against mono-exponential curves,
whose TIA is known in closed form (A0 / lambda), and the analytic bias of each method."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from twinjax import InputError
from twinjax.dosimetry import (
    effective_half_life_h,
    hanscheid_relative_error,
    hanscheid_tia,
    madsen_relative_error,
    madsen_tia,
)

LN2 = math.log(2.0)
A0 = 3700.0  # MBq at t = 0


def mono(t, half_life_h):
    """Activity of a mono-exponential region and its exact TIA (MBq h)."""
    lam = LN2 / half_life_h
    return A0 * np.exp(-lam * np.asarray(t)), A0 / lam


@pytest.mark.parametrize("half_life_h", [30.0, 67.0, 150.0])
def test_hanscheid_is_exact_at_one_and_two_half_lives(half_life_h):
    # 2 x 2^-x = 1 at x = t/T = 1 and 2: the only scan times where the formula is exact.
    for t in (half_life_h, 2 * half_life_h):
        a, tia = mono(t, half_life_h)
        assert float(hanscheid_tia(a, t)) == pytest.approx(tia, rel=1e-13)


def test_hanscheid_bias_as_a_function_of_scan_time():
    half = 67.0
    t = np.linspace(0.2, 5.0, 4801) * half
    a, tia = mono(t, half)
    err = np.asarray(hanscheid_tia(a, t)) / tia - 1.0
    np.testing.assert_allclose(err, hanscheid_relative_error(t, half), rtol=0, atol=1e-13)
    # Maximum overestimate at t = T / ln 2 (lambda t = 1), of 2 / (e ln 2) - 1 = +6.15 %.
    i = int(np.argmax(err))
    assert t[i] / half == pytest.approx(1.0 / LN2, abs=1e-3)
    assert err[i] == pytest.approx(2.0 / (math.e * LN2) - 1.0, abs=1e-7)  # grid step 1e-3
    peak = float(hanscheid_relative_error(half / LN2, half))
    assert peak == pytest.approx(2.0 / (math.e * LN2) - 1.0, rel=1e-13)
    assert 2.0 / (math.e * LN2) - 1.0 == pytest.approx(0.061476, abs=1e-6)
    # Underestimates away from [T, 2T]: 2 x 2^-x - 1 at x = 1/2 and 3.
    assert float(hanscheid_relative_error(0.5 * half, half)) == pytest.approx(
        2**-0.5 - 1, rel=1e-13
    )
    assert float(hanscheid_relative_error(3.0 * half, half)) == pytest.approx(-0.25, rel=1e-13)
    # |error| <= 10 % on [0.7644 T, 2.4373 T] (roots of 2 x 2^-x = 0.9), nowhere else.
    inside = np.abs(err) <= 0.1
    lo, hi = t[inside].min() / half, t[inside].max() / half
    assert (lo, hi) == pytest.approx((0.7644, 2.4373), abs=2e-3)
    assert inside[(t / half >= lo) & (t / half <= hi)].all()


@pytest.mark.parametrize("t", [4.0, 24.0, 96.0, 400.0])
def test_madsen_is_exact_with_the_true_half_life(t):
    half = 52.0
    a, tia = mono(t, half)
    assert float(madsen_tia(a, t, half)) == pytest.approx(tia, rel=1e-12)
    assert float(madsen_relative_error(t, half, half)) == pytest.approx(0.0, abs=1e-14)


def test_madsen_bias_with_a_wrong_population_half_life():
    half, pop = 40.0, 50.0
    for t in (24.0, 72.0, 168.0):
        a, tia = mono(t, half)
        err = float(madsen_tia(a, t, pop)) / tia - 1.0
        lam, lam_pop = LN2 / half, LN2 / pop
        expected = lam / lam_pop * math.exp((lam_pop - lam) * t) - 1.0
        assert err == pytest.approx(expected, abs=1e-12)
        assert float(madsen_relative_error(t, half, pop)) == pytest.approx(expected, abs=1e-12)
    # First-order insensitivity to the population half-life at t = T_pop / ln 2 only.
    d = jax.grad(lambda p, t: madsen_tia(1.0, t, p))
    assert abs(float(d(pop, pop / LN2))) < 1e-12
    assert abs(float(d(pop, 0.5 * pop / LN2))) > 1e-2


def test_effective_half_life_recovers_mono_exponentials():
    t = np.array([24.0, 48.0, 96.0, 168.0])
    halves = np.array([[30.0, 60.0], [90.0, 159.5]])
    a = A0 * np.exp(-LN2 / halves[..., None] * t)
    np.testing.assert_allclose(effective_half_life_h(t, a), halves, rtol=1e-12)
    rising = A0 * (1.0 - np.exp(-0.05 * t))
    assert np.isinf(float(effective_half_life_h(t, rising)))


def test_jit_and_vmap_agree_with_plain_calls_and_keep_float64():
    a = jnp.array([10.0, 200.0, 3000.0])
    t = jnp.array([24.0, 72.0, 96.0])
    half = jnp.array([40.0, 60.0, 80.0])
    plain_h, plain_m = hanscheid_tia(a, t), madsen_tia(a, t, half)
    assert plain_h.dtype == plain_m.dtype == jnp.float64
    np.testing.assert_array_equal(jax.jit(hanscheid_tia)(a, t), plain_h)
    np.testing.assert_allclose(jax.jit(madsen_tia)(a, t, half), plain_m, rtol=1e-15)
    np.testing.assert_allclose(jax.vmap(madsen_tia)(a, t, half), plain_m, rtol=1e-15)
    np.testing.assert_allclose(jax.vmap(hanscheid_tia)(a, t), plain_h, rtol=1e-15)
    # Python ints and numbers become float64; float32 stays float32 (no silent up/down-cast).
    assert hanscheid_tia(100, 72).dtype == jnp.float64
    assert madsen_tia(np.float32(1.0), np.float32(2.0), np.float32(3.0)).dtype == jnp.float32


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: hanscheid_tia(100.0, 0.0), r"time_h = 0\.0; allowed: finite times > 0 h"),
        (lambda: hanscheid_tia(100.0, -24.0), r"time_h = -24\.0"),
        (lambda: hanscheid_tia(100.0, float("nan")), r"time_h = nan"),
        (lambda: hanscheid_tia([1.0, -2.0], 24.0), r"activity_MBq\[1\] = -2\.0; allowed: finite"),
        (lambda: madsen_tia(100.0, 24.0, 0.0), r"effective_half_life_h = 0\.0; allowed: finite"),
        (lambda: madsen_tia(100.0, 24.0, -5.0), r"effective_half_life_h = -5\.0"),
        (lambda: madsen_tia(100.0, [24.0, np.inf], 50.0), r"time_h\[1\] = inf"),
        (lambda: madsen_relative_error(24.0, 50.0, 0.0), r"population_half_life_h = 0\.0"),
        (lambda: effective_half_life_h([24.0, 24.0], [2.0, 1.0]), r"two distinct"),
        (lambda: effective_half_life_h([24.0, 48.0], [2.0, 0.0]), r"activity_MBq\[1\] = 0\.0"),
        (lambda: effective_half_life_h([24.0, 48.0], [2.0, 1.0, 0.5]), r"shape"),
        (lambda: hanscheid_tia(True, 24.0), r"activity_MBq has dtype bool; allowed: real"),
        (lambda: madsen_tia(100.0, "24", 50.0), r"time_h = '24'; allowed: real numbers"),
    ],
)
def test_bad_input_names_field_value_and_allowed(call, match):
    with pytest.raises(InputError, match=match):
        call()
