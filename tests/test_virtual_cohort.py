"""Virtual cohorts and in-silico trials (`twinjax.cohort`): the batched, chunked, sharded chain
equals a plain per-patient loop of `bed_from_model`; chunk padding, sharding over 8 forced CPU
devices and the scenario axis change no number; hierarchical cohorts have the structure and
moments of the population model.

Sharding needs ``XLA_FLAGS=--xla_force_host_platform_device_count=8`` before JAX starts, so it
runs in a subprocess that prints its results as JSON. The same subprocess keeps the regression
check of JAX 0.10.2: a ``jax.sharding.Mesh`` runs ``diffeqsolve`` under ``NamedSharding``, a
``jax.make_mesh(..., axis_types=(Explicit,))`` mesh did not.
"""

import json
import math
import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import twinjax
from twinjax import InputError, Schedule, SolverError
from twinjax import cohort as cohort_mod
from twinjax.cohort import TrialResult, VirtualCohort, patient_mesh, run_trial, virtual_cohort
from twinjax.dosimetry import photon_cross_s_value, reference_mass_kg, sphere_s_value
from twinjax.forecast import Region, Scenario
from twinjax.inference import CohortPosterior
from twinjax.radiobiology import bed_from_model, ntcp_lkb, tcp, tissue

N, SEED, CHUNK = 10, 3, 4
ACTIVITIES = (2000.0, 4000.0, 3000.0)  # the second is twice the first: exact linearity check
TUMOUR_KG = 0.05
EGFR = np.linspace(4.0, 8.0, N)  # sets CL through the template's covariate formula
RTOL, ATOL = 1e-6, 1e-9


def _regions():
    return {
        "kidneys": Region(tissue("kidney")),
        "tumour": Region(tissue("prostate_cancer"), mass_kg=TUMOUR_KG, kind="tumour"),
    }


def _scenarios():
    return [Scenario(f"A{a:g}", Schedule.single(a)) for a in ACTIVITIES]


@pytest.fixture(scope="module")
def tpl(linear_template_path):
    return twinjax.load_template(linear_template_path)


@pytest.fixture(scope="module")
def cohort(tpl):
    return virtual_cohort(tpl, N, seed=SEED, covariates={"egfr_L_per_h": EGFR})


@pytest.fixture(scope="module")
def trial(cohort):
    # 10 patients in chunks of 4: three chunks, the last padded with two copies of patient 9.
    return run_trial(cohort, _scenarios(), _regions(), chunk_size=CHUNK, rtol=RTOL, atol=ATOL)


# ---------------------------------------------------------------------------- cohorts
def test_covariates_set_typical_values_as_personalise(tpl, cohort):
    for i in (0, 7):
        typ = tpl.personalise({"egfr_L_per_h": EGFR[i]})
        # CL has a CV: its log deviation from the patient's typical value is the random part;
        # V has none: it is the typical value exactly.
        assert cohort.params["V"][i] == pytest.approx(float(typ["V"]), rel=1e-15)
        assert float(typ["CL"]) == pytest.approx(EGFR[i] * 0.5, rel=1e-15)
    assert cohort.provenance["seed"] == SEED and cohort.provenance["source"] == "template"
    again = virtual_cohort(tpl, N, seed=SEED, covariates={"egfr_L_per_h": EGFR})
    for k, v in cohort.params.items():
        np.testing.assert_array_equal(again.params[k], v)


def test_template_cohort_has_the_templates_lognormal_spread(tpl):
    big = virtual_cohort(tpl, 20_000, seed=11)
    for k, cv in tpl.cv.items():
        x = np.log(big.params[k] / float(tpl.params[k]))
        sigma = math.sqrt(math.log1p(cv * cv))
        assert abs(x.mean()) < 4 * sigma / math.sqrt(x.size), k
        assert x.std() == pytest.approx(sigma, rel=0.03), k
    assert np.all(big.params["V"] == float(tpl.params["V"]))  # no CV: shared
    # A value given as the population mean (stat: mean) is centred on its median m/sqrt(1+cv^2),
    # as Template.params and PopulationPrior are (psma617_reduced: R_kidneys 30 nmol, cv 0.33).
    psma = twinjax.load_template("psma617_reduced")
    assert psma.spec.parameters["R_kidneys"].stat == "mean"
    r = virtual_cohort(psma, 20_000, seed=5).params["R_kidneys"]
    assert np.median(r) == pytest.approx(float(psma.params["R_kidneys"]), rel=0.015)


def _posterior(tpl, mu, omega, chol=None):
    """A CohortPosterior with given hyper-parameter draws ``(T, D)`` (one chain)."""
    names = ("CL", "k_bk")
    samples = {"mu": np.asarray(mu)[None], "omega": np.asarray(omega)[None]}
    if chol is not None:
        samples["corr_chol"] = np.asarray(chol)[None]
    return CohortPosterior(tpl, names, ("p0", "p1"), samples, {}, None,
                           {"data_sha256": "x", "n_patients": 2}, np.zeros((2, 2)))  # fmt: skip


def test_cohort_from_a_hierarchical_posterior(tpl):
    mu = np.array([[0.3, -0.2], [0.1, 0.0], [-0.1, 0.4]])
    omega = np.array([[0.2, 0.5], [0.3, 0.1], [0.1, 0.2]])
    post = _posterior(tpl, mu, omega)
    c = virtual_cohort(tpl, 50, seed=1, posterior=post, draws=3)
    assert c.params["CL"].shape == (50, 3) and c.n_draws == 3
    np.testing.assert_array_equal(c.draw_index, [0, 1, 2])
    typ = {k: float(tpl.params[k]) for k in ("CL", "k_bk")}
    # log theta_is = log typical + mu_s + omega_s eta_i: the same eta_i under every draw s.
    eta = {k: (np.log(c.params[k] / typ[k]) - mu[:, j]) / omega[:, j]
           for j, k in enumerate(("CL", "k_bk"))}  # fmt: skip
    for k in eta:
        np.testing.assert_allclose(eta[k], eta[k][:, :1].repeat(3, 1), rtol=1e-12, atol=1e-12)
    np.testing.assert_array_equal(c.params["k_kb"], float(tpl.params["k_kb"]))  # not learned
    # One random draw per patient (the predictive population): moments of mu + omega eta.
    one = _posterior(tpl, [[0.3, -0.2]], [[0.2, 0.5]])
    big = virtual_cohort(tpl, 20_000, seed=2, posterior=one)
    x = np.log(big.params["CL"] / typ["CL"])
    assert big.params["CL"].shape == (20_000,) and big.n_draws is None
    assert x.mean() == pytest.approx(0.3, abs=4 * 0.2 / math.sqrt(x.size))
    assert x.std() == pytest.approx(0.2, rel=0.03)
    # Correlated eta (LKJ Cholesky factor of the draw): the log parameters' correlation.
    rho = 0.8
    chol = np.array([[[1.0, 0.0], [rho, math.sqrt(1 - rho * rho)]]])
    corr = virtual_cohort(
        tpl, 20_000, seed=4, posterior=_posterior(tpl, [[0, 0]], [[0.2, 0.5]], chol)
    )
    r = np.corrcoef(np.log(corr.params["CL"]), np.log(corr.params["k_bk"]))[0, 1]
    assert r == pytest.approx(rho, abs=0.01)


# ---------------------------------------------------------------------------- the chain
def test_trial_equals_a_per_patient_loop_of_bed_from_model(tpl, cohort, trial):
    tissues = {r: reg.tissue for r, reg in _regions().items()}
    s = {"kidneys": sphere_s_value("Lu-177", reference_mass_kg("kidneys")),
         "tumour": sphere_s_value("Lu-177", TUMOUR_KG)}  # fmt: skip

    @jax.jit
    def one(p, schedule):
        return bed_from_model(tpl.model, tpl.derive(p), schedule, s, tissues, rtol=RTOL, atol=ATOL)

    for i in range(N):
        p = {k: jnp.asarray(v[i]) for k, v in cohort.params.items()}
        for k, sc in enumerate(_scenarios()):
            ref = one(p, sc.schedule)
            for r in ("kidneys", "tumour"):
                for q in ("tia_MBqh", "dose_Gy", "g", "bed_Gy", "eqd2_Gy"):
                    got = trial.values[r][q][i, k]
                    assert got == pytest.approx(float(ref[r][q]), rel=1e-10), (i, k, r, q)
            kid, tum = ref["kidneys"], ref["tumour"]
            assert trial.values["kidneys"]["ntcp"][i, k] == pytest.approx(
                float(ntcp_lkb(kid["eqd2_Gy"], lkb=tissue("kidney"))), rel=1e-9, abs=1e-300
            )
            want = float(tcp(tum["bed_Gy"], TUMOUR_KG * 1e3, tissue=tissue("prostate_cancer")))
            assert trial.values["tumour"]["tcp"][i, k] == pytest.approx(want, rel=1e-8, abs=1e-300)
    assert trial.values["kidneys"]["bed_Gy"].dtype == np.float64
    assert set(trial.values["kidneys"]) >= {"ntcp", "weighted_dose_Gy"}
    assert "tcp" in trial.values["tumour"] and "ntcp" not in trial.values["tumour"]


def test_scenarios_and_chunks_compile_once(tpl, trial):
    # Three scenarios of one structure x three chunks: one trace, one compilation.
    (fn,) = [f for t, f in cohort_mod._KERNELS.values() if t is tpl]
    assert trial.provenance["compiled_groups"] == 1 and trial.provenance["n_chunks"] == 3
    assert fn._cache_size() == 1


def test_dose_is_linear_in_activity(trial):
    # Linear model, scenario 2 has twice scenario 1's activity. TIA and dose double exactly
    # (to rounding): m cum - hot is a linear invariant of the ODE, which Runge-Kutta methods
    # keep whatever their steps, and the tail closure is exact. G (repair integral, quadratic)
    # is unchanged to the solver's tolerance: the step sequence depends on atol, which does
    # not scale with the activity.
    k = trial.values["kidneys"]
    for q in ("tia_MBqh", "dose_Gy"):
        np.testing.assert_allclose(k[q][:, 1], 2.0 * k[q][:, 0], rtol=1e-13)
    np.testing.assert_allclose(k["g"][:, 1], k["g"][:, 0], rtol=1e-7)
    quad = k["bed_Gy"] - k["dose_Gy"]
    np.testing.assert_allclose(quad[:, 1], 4.0 * quad[:, 0], rtol=1e-7)


def test_photon_cross_dose_between_placed_regions(cohort):
    # Regions with centroids 100 mm apart: each receives the other's photon cross-dose, S_ts x
    # TIA_s (the model is linear, so the dose integral is that product to rounding; 1e-11 here
    # after subtracting the much larger self-dose), with no RBE (Lu-177: physical = weighted).
    placed = {
        "kidneys": Region(tissue("kidney"), centroid_mm=(0.0, 0.0, 0.0)),
        "tumour": Region(tissue("prostate_cancer"), mass_kg=TUMOUR_KG, kind="tumour",
                         centroid_mm=(0.0, 60.0, 80.0)),
    }  # fmt: skip
    t = run_trial(cohort, _scenarios()[:1], placed, chunk_size=CHUNK, rtol=RTOL, atol=ATOL)
    s_cross = float(photon_cross_s_value("Lu-177", 10.0))
    s_self = {"kidneys": sphere_s_value("Lu-177", reference_mass_kg("kidneys")),
              "tumour": sphere_s_value("Lu-177", TUMOUR_KG)}  # fmt: skip
    for target, source in (("kidneys", "tumour"), ("tumour", "kidneys")):
        v = t.values[target]
        cross = v["dose_Gy"][:, 0] - v["tia_MBqh"][:, 0] * float(s_self[target])
        want = s_cross * t.values[source]["tia_MBqh"][:, 0]
        np.testing.assert_allclose(cross, want, rtol=1e-9)
        np.testing.assert_allclose(v["dose_Gy"], v["weighted_dose_Gy"], rtol=1e-14)


def test_draw_axis_is_the_flattened_units(tpl):
    # A cohort with posterior draws (n, S) gives (n, K, S); unit (i, s) is the patient with
    # parameters params[:, i, s] -- the same kernel and chunk shape as above (no recompile).
    post = _posterior(tpl, [[0.2, 0.0], [-0.2, 0.3]], [[0.3, 0.3], [0.1, 0.2]])
    c = virtual_cohort(tpl, 3, seed=9, posterior=post, draws=2)
    flat = VirtualCohort.from_params(tpl, {k: v.reshape(-1) for k, v in c.params.items()})
    a = run_trial(c, _scenarios(), _regions(), chunk_size=CHUNK, rtol=RTOL, atol=ATOL)
    b = run_trial(flat, _scenarios(), _regions(), chunk_size=CHUNK, rtol=RTOL, atol=ATOL)
    assert a.values["kidneys"]["bed_Gy"].shape == (3, 3, 2) and a.n_draws == 2
    for q, v in a.values["tumour"].items():
        want = b.values["tumour"][q].reshape(3, 2, 3).transpose(0, 2, 1)
        np.testing.assert_array_equal(v, want)
    f = a.fraction(("kidneys", "bed_Gy", "<=", 5.0))
    per_draw = (a.values["kidneys"]["bed_Gy"][:, 0] <= 5.0).mean(axis=0)
    assert f["A2000"]["fraction"] == pytest.approx(per_draw.mean())
    assert f["A2000"]["lower"] <= f["A2000"]["median"] <= f["A2000"]["upper"]


def test_summaries_fractions_and_files(trial, tmp_path):
    bed = trial.get("A4000", "kidneys", "bed_Gy")
    ok = (bed <= 5.0) & (trial.get("A4000", "tumour", "tcp") >= 1e-3)
    got = trial.fraction([("kidneys", "bed_Gy", "<=", 5.0), ("tumour", "tcp", ">=", 1e-3)])
    assert got["A4000"]["fraction"] == pytest.approx(ok.mean())
    s = trial.summary(0.9)["A4000"]["kidneys"]
    assert s["bed_Gy"]["median"] == pytest.approx(np.median(bed))
    assert s["bed_Gy"]["lower"] == pytest.approx(np.quantile(bed, 0.05))
    lim = {x["limit_Gy"]: x["fraction"] for x in s["bed_limits"]}  # the library's 40/28 Gy
    assert lim == {
        40.0: pytest.approx(np.mean(bed <= 40.0)),
        28.0: pytest.approx(np.mean(bed <= 28.0)),
    }
    json.dumps(trial.to_dict(arrays=True))
    trial.to_netcdf(tmp_path / "trial.nc")
    back = TrialResult.from_netcdf(tmp_path / "trial.nc")
    assert back.scenarios == trial.scenarios and back.provenance == trial.provenance
    for r, qs in trial.values.items():
        assert set(back.values[r]) == set(qs)
        for q, v in qs.items():
            np.testing.assert_array_equal(back.values[r][q], v)


# ---------------------------------------------------------------------------- devices
SHARDED = textwrap.dedent(
    """
    import json, os, re, sys, warnings
    import jax, jax.numpy as jnp, numpy as np, diffrax as dfx
    import twinjax
    from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
    from twinjax.cohort import _KERNELS, _warn_cpu_pool, patient_mesh, run_trial, virtual_cohort
    from twinjax.forecast import Region, Scenario
    from twinjax.radiobiology import tissue
    jax.config.update("jax_numpy_dtype_promotion", "strict")

    tpl = twinjax.load_template(sys.argv[1])
    N, SEED, acts = int(sys.argv[2]), int(sys.argv[3]), json.loads(sys.argv[4])
    egfr = np.linspace(4.0, 8.0, N)
    cohort = virtual_cohort(tpl, N, seed=SEED, covariates={"egfr_L_per_h": egfr})
    regions = {"kidneys": Region(tissue("kidney")),
               "tumour": Region(tissue("prostate_cancer"), mass_kg=0.05, kind="tumour")}
    scen = [Scenario(f"A{a:g}", twinjax.Schedule.single(a)) for a in acts]
    kw = dict(rtol=1e-6, atol=1e-9)
    one = run_trial(cohort, scen, regions, chunk_size=64, mesh=None, **kw)  # one chunk
    sh = run_trial(cohort, scen, regions, chunk_size=8, mesh="auto", **kw)  # 2 chunks, padded
    out = {"devices": jax.device_count(), "sharded_devices": sh.provenance["devices"],
           "sharded_chunks": sh.provenance["n_chunks"], "one_chunks": one.provenance["n_chunks"],
           "one": {r: {q: v.tolist() for q, v in qs.items()} for r, qs in one.values.items()},
           "sharded": {r: {q: v.tolist() for q, v in qs.items()} for r, qs in sh.values.items()}}
    # The compiled chain really is partitioned: each device holds its own units' results.
    fn = list(_KERNELS.values())[-1][1]
    mesh = patient_mesh()
    put = lambda x: jax.device_put(jnp.asarray(x), NamedSharding(mesh, P("patients")))
    p = {k: put(v[:8]) for k, v in cohort.params.items()}
    s = put(np.full((8, 2), 0.1))
    sch = jax.tree.map(lambda *x: jnp.stack(x), *[c.schedule for c in scen])
    res = fn(p, s, s, s, jax.device_put(sch, NamedSharding(mesh, P())))
    out["shard_shapes"] = sorted({tuple(x.data.shape) for x in res["kidneys"]["bed_Gy"].addressable_shards})
    out["n_shards"] = len(res["kidneys"]["bed_Gy"].addressable_shards)
    hlo = fn.lower(p, s, s, s, jax.device_put(sch, NamedSharding(mesh, P()))).compile().as_text()
    # Partitioned, not replicated: no all-gather, and each device factorises the LUs of its
    # own unit only (unit batch 1); the all-reduces are the loops' "any unit still running"
    # flags and the solver's error checks.
    out["hlo"] = {op: len(re.findall(rf"= [^=\\n]*\\b{op}\\(", hlo))
                  for op in ("all-gather", "all-reduce", "all-to-all", "collective-permute")}
    out["lu_shapes"] = sorted(set(re.findall(r"= \\(f64\\[([0-9,]+)\\][^\\n]*lapack_dgetrf", hlo)))
    os.environ["NPROC"] = "4"  # only what the warning reads: the pool was sized at start
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        _warn_cpu_pool(mesh)
    out["pool_warning"] = [str(x.message) for x in w]
    out["auto_axes"] = [str(t) for t in mesh.axis_types]

    # Regression (jax 0.10.2): diffeqsolve (Kvaerno5: Lineax inside) under NamedSharding.
    def solve(k):
        sol = dfx.diffeqsolve(dfx.ODETerm(lambda t, y, a: -a * y), dfx.Kvaerno5(), 0.0, 5.0, 0.1,
                              jnp.array([1.0, 2.0]), k, saveat=dfx.SaveAt(t1=True),
                              stepsize_controller=dfx.PIDController(rtol=1e-8, atol=1e-10))
        return sol.ys[-1]
    f = jax.jit(jax.vmap(solve))
    k = jnp.linspace(0.1, 1.0, 16)
    ref = np.asarray(f(k))
    got = f(jax.device_put(k, NamedSharding(Mesh(np.array(jax.devices()), ("patients",)),
                                            P("patients"))))
    out["mesh_diffeqsolve_maxdiff"] = float(np.max(np.abs(np.asarray(got) - ref)))
    try:
        em = jax.make_mesh((8,), ("patients",), axis_types=(jax.sharding.AxisType.Explicit,))
        with jax.set_mesh(em):
            e = f(jax.device_put(k, NamedSharding(em, P("patients"))))
        out["explicit"] = {"ok": True, "maxdiff": float(np.max(np.abs(np.asarray(e) - ref)))}
    except Exception as err:
        out["explicit"] = {"ok": False, "error": type(err).__name__ + ": " + str(err)[:200]}
    # An Explicit mesh given to run_trial is rebuilt with Auto axes and gives the same numbers.
    em = jax.make_mesh((8,), ("patients",), axis_types=(jax.sharding.AxisType.Explicit,))
    ex = run_trial(cohort, scen, regions, chunk_size=8, mesh=em, **kw)
    out["explicit_trial_equal"] = all(np.array_equal(ex.values[r][q], sh.values[r][q])
                                      for r in sh.values for q in sh.values[r])
    print(json.dumps(out))
    """
)


@pytest.fixture(scope="module")
def sharded(linear_template_path, tmp_path_factory):
    script = tmp_path_factory.mktemp("shard") / "sharded.py"
    script.write_text(SHARDED)
    # NPROC: XLA:CPU's intra-op pool above the device count (twinjax.cohort docs: jaxlib's
    # batched LU can otherwise deadlock forced devices; this small model does not trigger it).
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "NPROC": "16",
           "XLA_FLAGS": "--xla_force_host_platform_device_count=8"}  # fmt: skip
    args = [str(linear_template_path), str(N), str(SEED), json.dumps(ACTIVITIES[:2])]
    out = subprocess.run([sys.executable, str(script), *args], capture_output=True, text=True,
                         env=env, timeout=600)  # fmt: skip
    assert out.returncode == 0, out.stderr[-4000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_sharded_equals_unsharded_on_8_devices(sharded, trial):
    assert sharded["devices"] == 8 and sharded["sharded_devices"] == 8
    assert sharded["sharded_chunks"] == 2 and sharded["one_chunks"] == 1
    for r, qs in sharded["one"].items():
        for q, v in qs.items():
            one, sh = np.asarray(v), np.asarray(sharded["sharded"][r][q])
            np.testing.assert_array_equal(sh, one)  # sharded, 2 padded chunks == one chunk
            # ... and == this process's 3 chunks of 4 on one device (first two scenarios)
            np.testing.assert_allclose(trial.values[r][q][:, :2], one, rtol=1e-12, atol=1e-300)
    # Partitioned, not replicated: 8 shards of one unit x 2 scenarios each; in the compiled
    # program each device factorises its own unit's matrices only (LU batch 1) and
    # gathers nothing.
    assert sharded["n_shards"] == 8 and sharded["shard_shapes"] == [[1, 2]]
    assert sharded["lu_shapes"] and all(s.startswith("1,") for s in sharded["lu_shapes"])
    hlo = sharded["hlo"]
    assert hlo["all-gather"] == hlo["all-to-all"] == hlo["collective-permute"] == 0
    assert hlo["all-reduce"] > 0  # the loop flags: the devices do run one SPMD program
    # Forced CPU devices outnumbering XLA's intra-op pool: run_trial warns (module docs).
    assert len(sharded["pool_warning"]) == 1 and "NPROC=16" in sharded["pool_warning"][0]


def test_mesh_regression_explicit_axes(sharded):
    # jax.sharding.Mesh (Auto axes) runs diffeqsolve under NamedSharding, equal to unsharded.
    assert sharded["mesh_diffeqsolve_maxdiff"] == 0.0
    assert sharded["auto_axes"] == ["AxisType.Auto"]
    ex = sharded["explicit"]
    if ex["ok"]:  # fixed upstream: then it must agree too
        assert ex["maxdiff"] == 0.0
    else:  # jax 0.10.2: fails; twinjax never builds such a mesh and rebuilds one it is given
        assert "Closure-converted function called with different" in ex["error"], ex["error"]
        assert patient_mesh().axis_types == (jax.sharding.AxisType.Auto,)
    assert sharded["explicit_trial_equal"]


# ---------------------------------------------------------------------------- bad input
@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"n": 0}, "n = 0"),
        ({"n": 2.5}, "n = 2.5"),
        ({"seed": -1}, "seed = -1"),
        ({"seed": "abc"}, "seed = 'abc'"),
        ({"covariates": {"egfr_L_per_h": np.ones(3)}}, r"covariates\['egfr_L_per_h'\]"),
        ({"covariates": {"egfr_L_per_h": -1.0}}, "CL"),
        ({"draws": 2}, "draws = 2 needs a posterior"),
        ({"posterior": object()}, "allowed: a CohortPosterior"),
    ],
)
def test_virtual_cohort_rejects_bad_input(tpl, kwargs, match):
    args = {"n": 5, **kwargs}
    with pytest.raises(InputError, match=match):
        virtual_cohort(tpl, args.pop("n"), **args)


def test_virtual_cohort_rejects_bad_draws(tpl):
    post = _posterior(tpl, [[0.0, 0.0]], [[0.1, 0.1]])
    with pytest.raises(InputError, match=r"draws = 5; allowed: an integer in 1..1"):
        virtual_cohort(tpl, 5, posterior=post, draws=5)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"regions": {"lungs": Region(tissue("kidney"))}}, "lungs"),
        ({"regions": {}}, "regions is empty"),
        ({"chunk_size": 0}, "chunk_size = 0"),
        ({"chunk_size": 2.0}, "chunk_size = 2.0"),
        ({"mesh": "gpu"}, "mesh = 'gpu'"),
        ({"rbe_alpha": -1.0}, "rbe_alpha = -1.0"),
        ({"scenarios": []}, "scenarios"),
        ({"scenarios": [Scenario("a", Schedule.single(1.0))] * 2}, "repeat"),
        ({"regions": {"kidneys": Region(tissue("kidney"), voxel_mm=4.0)}}, "voxel_mm"),
        ({"cohort": {"CL": [1.0]}}, "allowed: a VirtualCohort"),
    ],
)
def test_run_trial_rejects_bad_input(cohort, kwargs, match):
    args = {"cohort": cohort, "scenarios": _scenarios(), "regions": _regions(), **kwargs}
    with pytest.raises(InputError, match=match):
        run_trial(args.pop("cohort"), args.pop("scenarios"), args.pop("regions"), **args)


def test_a_failed_solve_is_a_solver_error(cohort):
    # The batched solve cannot raise per unit: the chunk fails, naming its units and the reason.
    with pytest.raises(SolverError, match=r"units? in 0\.\.3: The maximum number of solver steps"):
        run_trial(cohort, _scenarios()[:1], _regions(), chunk_size=CHUNK, max_steps=3)


def test_fraction_rejects_bad_constraints(tpl, trial):
    with pytest.raises(InputError, match="op in"):
        trial.fraction(("kidneys", "bed_Gy", "=<", 40.0))
    with pytest.raises(InputError, match="quantity 'tcp'"):
        trial.fraction(("kidneys", "tcp", ">=", 0.5))
    with pytest.raises(InputError, match="params: 'bogus'"):
        VirtualCohort.from_params(tpl, {"bogus": [1.0]})
