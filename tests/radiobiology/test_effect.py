"""Oxygen effect, survival, TCP, gEUD/NTCP and the tissue library against closed forms and an
independent quadrature."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.integrate import quad
from scipy.stats import norm

from twinjax import InputError
from twinjax import radiobiology as rb


def test_oxygen_enhancement_ratio_limits():
    # OER(0) = 1 (anoxic reference), OER(K) = (m + 1) / 2, OER -> m when well oxygenated.
    assert float(rb.oxygen_enhancement_ratio(0.0, m=3.0, k_mmHg=3.0)) == 1.0
    assert float(rb.oxygen_enhancement_ratio(3.0, m=3.0, k_mmHg=3.0)) == pytest.approx(2.0)
    assert float(rb.oxygen_enhancement_ratio(1e9, m=3.0)) == pytest.approx(3.0, rel=1e-8)
    p = jnp.linspace(0.0, 100.0, 11)
    assert np.all(np.diff(np.asarray(rb.oxygen_enhancement_ratio(p))) > 0)
    # alpha and beta: unchanged when well oxygenated; alpha / 2.5 and beta / 3^2 when anoxic.
    a, b = rb.hypoxia_modified_lq(0.15, 0.05, jnp.array([0.0, 1e9]))
    np.testing.assert_allclose(a, [0.15 / 2.5, 0.15], rtol=1e-8)
    np.testing.assert_allclose(b, [0.05 / 9.0, 0.05], rtol=1e-8)


def test_surviving_fraction_is_the_lq_of_an_acute_dose():
    alpha, ab, d = 0.3, 10.0, 2.0
    sf = rb.surviving_fraction(rb.bed_acute(d, ab), alpha)
    assert float(sf) == pytest.approx(math.exp(-alpha * d - alpha / ab * d * d), rel=1e-14)


def test_tcp_individual_closed_form_and_voxels():
    alpha, rho, vol = 0.15, 1e7, 20.0
    n0 = rho * vol
    # TCP = exp(-N0 exp(-alpha BED)) is 1/2 at BED50 = ln(N0 / ln 2) / alpha.
    bed50 = math.log(n0 / math.log(2.0)) / alpha
    t = rb.tcp(bed50, vol, alpha_per_Gy=alpha, clonogen_density_per_cm3=rho)
    assert float(t) == pytest.approx(0.5, rel=1e-12)
    # Ten equal voxels at the same BED give the same TCP; a cold voxel lowers it.
    voxels = jnp.full(10, bed50)
    t10 = rb.tcp(voxels, jnp.full(10, vol / 10), alpha_per_Gy=alpha, clonogen_density_per_cm3=rho)
    assert float(t10) == pytest.approx(0.5, rel=1e-12)
    cold = voxels.at[0].set(0.8 * bed50)
    t_cold = rb.tcp(cold, jnp.full(10, vol / 10), alpha_per_Gy=alpha, clonogen_density_per_cm3=rho)
    expected = math.exp(
        -rho * vol / 10 * (9 * math.exp(-alpha * bed50) + math.exp(-alpha * 0.8 * bed50))
    )
    assert float(t_cold) == pytest.approx(expected, rel=1e-12)


def test_population_tcp_against_quadrature():
    alpha, sd, rho, vol, bed = 0.15, 0.04, 1e7, 10.0, 120.0

    def ind(a):
        return math.exp(-rho * vol * math.exp(-a * bed))

    num, _ = quad(lambda a: ind(a) * norm.pdf(a, alpha, sd), 0.0, 1.0, epsabs=1e-14, limit=400)
    den = norm.sf(0.0, alpha, sd)
    pop = rb.tcp(bed, vol, tissue=rb.tissue("prostate_cancer"))  # alpha 0.15, SD 0.04, rho 1e7
    assert float(pop) == pytest.approx(num / den, abs=1e-6)
    # The spread flattens the dose-response: below BED50 population TCP > individual, above <.
    lo, hi = 80.0, 160.0
    kw = dict(alpha_per_Gy=alpha, clonogen_density_per_cm3=rho)
    assert float(rb.tcp(lo, vol, alpha_sd_per_Gy=sd, **kw)) > float(rb.tcp(lo, vol, **kw))
    assert float(rb.tcp(hi, vol, alpha_sd_per_Gy=sd, **kw)) < float(rb.tcp(hi, vol, **kw))
    # A vanishing spread gives the individual TCP.
    assert float(rb.tcp(bed, vol, alpha_sd_per_Gy=1e-7, **kw)) == pytest.approx(
        float(rb.tcp(bed, vol, **kw)), rel=1e-6
    )
    # Differentiable in BED (e.g. through administered activity): gradient vs differences.
    f = jax.jit(lambda b: rb.tcp(b, vol, alpha_sd_per_Gy=sd, **kw))
    g = float(jax.grad(f)(bed))
    assert g == pytest.approx((float(f(bed + 1e-3)) - float(f(bed - 1e-3))) / 2e-3, rel=1e-6)


def test_geud_and_lkb_ntcp():
    d = jnp.array([10.0, 20.0, 30.0, 40.0])
    assert float(rb.geud(d, a=1.0)) == pytest.approx(25.0, rel=1e-14)  # mean dose
    assert float(rb.geud(d, a=200.0)) == pytest.approx(40.0, rel=0.01)  # -> max dose
    assert float(rb.geud(jnp.full(5, 12.0), a=1 / 0.7)) == pytest.approx(12.0, rel=1e-14)
    assert float(rb.geud(jnp.array([0.0, 50.0]), a=-10.0)) == 0.0  # a cold spot controls a tumour
    # Half the kidney at D, half unirradiated: gEUD = 0.5^n D with n = 0.70 (Burman et al. 1991).
    kid = rb.tissue("kidney")
    half = rb.geud(jnp.array([30.0, 0.0]), jnp.array([0.5, 0.5]), a=1 / kid.lkb.n)
    assert float(half) == pytest.approx(0.5**0.7 * 30.0, rel=1e-13)
    # NTCP = Phi((gEUD - TD50) / (m TD50)): 1/2 at TD50, Phi(1) at TD50 (1 + m).
    assert float(rb.ntcp_lkb(28.0, lkb=kid)) == pytest.approx(0.5, rel=1e-13)
    assert float(rb.ntcp_lkb(28.0 * 1.1, lkb=kid)) == pytest.approx(norm.cdf(1.0), rel=1e-12)
    par = rb.tissue("salivary_glands")  # Dijkema et al. 2010: TD50 39.9 Gy, m 0.40, n 1
    assert float(rb.ntcp_lkb(25.0, lkb=par)) == pytest.approx(
        norm.cdf((25.0 - 39.9) / (0.4 * 39.9)), rel=1e-12
    )
    # Gradient finite at unirradiated voxels.
    g = jax.grad(lambda x: rb.ntcp_lkb(x, jnp.array([0.5, 0.5]), lkb=kid))(jnp.array([30.0, 0.0]))
    assert np.all(np.isfinite(np.asarray(g)))


def test_tissue_library_values_and_sources():
    kid = rb.tissue("Kidney")
    # Barone et al. 2005: alpha/beta 2.6 Gy, mu = 0.25 1/h (T_rep 2.8 h); Bodei et al. 2008 limits.
    assert (kid.alpha_beta_Gy, kid.repair_half_time_h) == (2.6, 2.8)
    assert kid.repair_rate_per_h == pytest.approx(0.2476, rel=1e-3)
    assert dict((v, c) for v, c in kid.bed_limits_Gy).keys() == {28.0, 40.0}
    pc = rb.tissue("prostate_cancer")  # Wang et al. 2003
    assert (pc.alpha_per_Gy, pc.alpha_beta_Gy) == (0.15, 3.1)
    assert pc.beta_per_Gy2 == pytest.approx(0.15 / 3.1)
    for name in rb.known_tissues():
        t = rb.tissue(name)
        for field in ("alpha_beta_Gy", "repair_half_time_h"):
            basis, source = t.sources[field]
            assert basis in ("published", "convention") and len(source) > 10, (name, field)
    assert set(rb.known_tissues()) >= {
        "kidney", "salivary_glands", "red_marrow", "liver", "prostate_cancer", "net"
    }  # fmt: skip
    mine = kid.replace(repair_half_time_h=1.5)
    assert mine.repair_half_time_h == 1.5 and mine.sources["repair_half_time_h"][0] == "user"
    assert kid.repair_half_time_h == 2.8  # the library is unchanged


def test_bad_input():
    with pytest.raises(
        InputError, match="tissue 'kidnee' is not in the library; did you mean kidney"
    ):
        rb.tissue("kidnee")
    with pytest.raises(InputError, match=r"kidney.repair_half_time_h = -1.0; allowed: a finite"):
        rb.tissue("kidney").replace(repair_half_time_h=-1.0)
    with pytest.raises(InputError, match="unknown or fixed field 'lkb'"):
        rb.tissue("kidney").replace(lkb=None)
    with pytest.raises(
        InputError, match=r"tcp needs alpha_per_Gy \(the library has none for 'net'\)"
    ):
        rb.tcp(100.0, 5.0, tissue=rb.tissue("net"))
    with pytest.raises(InputError, match="tissue 'red_marrow' has no LKB parameters"):
        rb.ntcp_lkb(10.0, lkb=rb.tissue("red_marrow"))
    with pytest.raises(InputError, match=r"LKB.m = 0.0; allowed"):
        rb.LKB(28.0, 0.0, 0.7)
    with pytest.raises(InputError, match="volume_fraction = .*sum to 1"):
        rb.geud(jnp.array([1.0, 2.0]), jnp.array([0.5, 0.6]), a=2.0)
    with pytest.raises(InputError, match=r"po2_mmHg = -1.0; allowed: >= 0 \(mmHg\)"):
        rb.oxygen_enhancement_ratio(-1.0)
    with pytest.raises(InputError, match="bed_Gy = .*finite"):
        rb.tcp(float("nan"), 5.0, alpha_per_Gy=0.1, clonogen_density_per_cm3=1e7)
