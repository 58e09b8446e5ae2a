"""Checkpointed NUTS: a run killed between or inside chunks resumes to the uninterrupted draws.

The reference is a plain `fit` (NumPyro's `MCMC.run`, no checkpoint); on CPU the chunked,
checkpointed and resumed runs must reproduce its draws, sample stats and adaptation bit for bit.
The module shares one persistent JAX compilation cache (its own temporary directory) with the
subprocess it kills, so that each fit recompiles the same NUTS loop from disk instead of from
scratch: the file then runs in about 45 s on 2 idle cores.
"""

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.experimental.compilation_cache import compilation_cache

import twinjax
from twinjax import InputError
from twinjax.imaging import Patient
from twinjax.imaging.observe import LognormalError
from twinjax.inference import Observed, PopulationPrior, _checkpoint, fit

NOISE = LognormalError({"kidneys": 0.12, "tumour": 0.18, "whole_body": 0.08}, calibration_cv=0.05)
TIMES = np.array([4.0, 24.0, 48.0, 96.0])
WARMUP, SAMPLES, EVERY, CHAINS, SEED = 40, 60, 20, 2, 5
# Chunks end at these iteration counts per chain: two warm-up chunks, then three of draws.
ENDS = [20, 40, 60, 80, 100]


def make_patient():
    return Patient.virtual({"egfr_L_per_h": 5.4}, twinjax.Schedule.single(7400.0, ligand_nmol=57.0))


def inputs(template_path):
    """Template, patient and simulated data."""
    tpl = twinjax.load_template(template_path)
    patient = make_patient()
    prior = PopulationPrior.from_template(tpl, patient.covariates)
    truth = prior.theta(jnp.asarray([0.8, -0.6, 0.5, -0.9]))
    traj = twinjax.simulate(tpl.model, tpl.derive({**prior.base, **truth}), patient.schedule, TIMES)
    rows = []
    for i, roi in enumerate(("kidneys", "tumour", "whole_body")):
        y = NOISE.sample(jax.random.key(i), roi, traj.activity(roi))
        rows += [(roi, t, float(v)) for t, v in zip(TIMES, y, strict=True)]
    obs = Observed(
        tuple(r[0] for r in rows), np.array([r[1] for r in rows]), np.array([r[2] for r in rows])
    )
    return tpl, patient, obs


def run(tpl, patient, obs, **kw):
    opts = dict(
        noise=NOISE,
        num_chains=CHAINS,
        num_warmup=WARMUP,
        num_samples=SAMPLES,
        seed=SEED,
        chain_method="sequential",
    )
    return fit(tpl, patient, obs, **{**opts, **kw})


def assert_same_posterior(a, b):
    assert set(a.samples) == set(b.samples)
    for k in a.samples:
        assert np.array_equal(a.samples[k], b.samples[k]), k
    for k in a.sample_stats:
        assert np.array_equal(a.sample_stats[k], b.sample_stats[k]), k
    assert a.adaptation["step_size"] == b.adaptation["step_size"]
    assert np.array_equal(a.adaptation["inverse_mass_matrix"], b.adaptation["inverse_mass_matrix"])


@pytest.fixture(scope="module")
def compile_cache(tmp_path_factory):
    """A persistent compilation cache for this module (and its subprocess) only."""
    d = tmp_path_factory.mktemp("jax_cache")
    old = jax.config.jax_compilation_cache_dir
    compilation_cache.set_cache_dir(str(d))
    compilation_cache.reset_cache()  # the cache is set up once per process: make it see `d`
    yield d
    jax.config.update("jax_compilation_cache_dir", old)
    compilation_cache.reset_cache()


@pytest.fixture(scope="module")
def setup(linear_template_path, compile_cache):
    return inputs(linear_template_path)


@pytest.fixture(scope="module")
def reference(setup):
    """The uninterrupted run: NumPyro's `MCMC.run`, no checkpoint."""
    return run(*setup)


@pytest.fixture(scope="module")
def resumed(setup, tmp_path_factory):
    """A checkpointed run interrupted after its first chunk (in warm-up), then resumed; returns
    the checkpoint's path, its bytes at the interruption, the chunk ends seen, the posterior."""
    path = tmp_path_factory.mktemp("ckpt") / "run.ckpt"
    seen = []

    def interrupt_once(p, done, total):
        seen.append(done)
        if len(seen) == 1:
            raise KeyboardInterrupt

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(_checkpoint, "_after_chunk", interrupt_once)
        with pytest.raises(KeyboardInterrupt):
            run(*setup, checkpoint=path, checkpoint_every=EVERY)
        partial = path.read_bytes()
        post = run(*setup, checkpoint=path, checkpoint_every=EVERY)
    return path, partial, seen, post


def test_interrupted_run_resumes_to_the_uninterrupted_draws(reference, resumed, tmp_path):
    _, partial, seen, post = resumed
    # Stopped after chunk 1 of 5: the checkpoint holds the state after 20 warm-up iterations.
    (tmp_path / "p").write_bytes(partial)
    partial = _checkpoint.read_checkpoint(tmp_path / "p")
    assert partial.steps_done == ENDS[0] and partial.draws == {}
    # The second fit ran only the four remaining chunks, then returned the uninterrupted draws.
    assert seen == ENDS
    assert_same_posterior(post, reference)
    assert post.samples["z"].shape == (CHAINS, SAMPLES, 4)


def test_completed_checkpoint_returns_its_draws_without_sampling(setup, reference, resumed):
    path, *_ = resumed
    done = _checkpoint.read_checkpoint(path)
    assert done.steps_done == WARMUP + SAMPLES
    for k, v in reference.samples.items():
        assert np.array_equal(done.draws[k], v), k
    # What a writer killed in the middle of `_atomic_write` leaves: removed by the next run.
    stale = path.parent / f".{path.name}.k1ll3d.tmp"
    stale.write_bytes(b"half a checkpoint")
    seen = []
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(_checkpoint, "_after_chunk", lambda p, d, t: seen.append(d))
        again = run(*setup, checkpoint=path, checkpoint_every=EVERY)
    assert seen == [] and not stale.exists()
    assert_same_posterior(again, reference)


_CHILD = """
import sys, time
import jax
jax.config.update("jax_enable_x64", True)
jax.config.update("jax_numpy_dtype_promotion", "strict")
sys.path.insert(0, {here!r})
import numpy as np
import test_checkpoint as T
import twinjax
from twinjax.inference import Observed, _checkpoint
# Once draws are on disk, linger between chunks: the parent's SIGKILL lands while chunks remain.
_checkpoint._after_chunk = lambda path, done, total: time.sleep(5.0 if done > T.WARMUP else 0.0)
d = np.load({data!r})
obs = Observed(tuple(str(r) for r in d["roi"]), d["time_h"], d["activity_MBq"])
tpl = twinjax.load_template({template!r})
T.run(tpl, T.make_patient(), obs, checkpoint={path!r}, checkpoint_every=T.EVERY)
"""


def test_run_killed_by_sigkill_resumes_to_the_uninterrupted_draws(
    setup, reference, resumed, compile_cache, linear_template_path, tmp_path
):
    # The subprocess resumes the warm-up checkpoint of `resumed` (a fresh start would spend
    # ~15 s in NumPyro's op-by-op initialisation), is killed once it has checkpointed draws,
    # and this process resumes it again.
    path = tmp_path / "killed.ckpt"
    path.write_bytes(resumed[1])
    obs = setup[2]
    data = tmp_path / "data.npz"
    np.savez(data, roi=np.array(obs.roi), time_h=obs.time_h, activity_MBq=obs.activity_MBq)
    script = _CHILD.format(
        here=str(Path(__file__).parent),
        template=str(linear_template_path),
        path=str(path),
        data=str(data),
    )
    env = {
        **os.environ,
        "JAX_COMPILATION_CACHE_DIR": str(compile_cache),
        "JAX_PLATFORMS": "cpu",
    }
    child = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(script)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    steps, deadline = 0, time.monotonic() + 120
    try:
        # Kill as soon as the checkpoint holds at least one chunk of draws (past warm-up).
        while steps <= WARMUP and child.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
            if path.exists():
                steps = _checkpoint.read_checkpoint(path).steps_done
        if child.poll() is None:
            child.send_signal(signal.SIGKILL)
        out = child.communicate(timeout=30)[0].decode(errors="replace")
    finally:
        if child.poll() is None:
            child.kill()
    assert child.returncode == -signal.SIGKILL, out[-3000:]
    killed = _checkpoint.read_checkpoint(path)
    assert WARMUP < killed.steps_done < WARMUP + SAMPLES
    n = killed.steps_done - WARMUP
    assert np.array_equal(killed.draws["z"], reference.samples["z"][:, :n])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data.npz", path.name]  # no temp file
    assert_same_posterior(run(*setup, checkpoint=path, checkpoint_every=EVERY), reference)


@pytest.mark.parametrize(
    "change, field",
    [
        ({"seed": SEED + 1}, "seed"),
        ({"num_samples": SAMPLES + 20}, "num_samples"),
        ({"data": "scaled"}, "data_sha256"),
    ],
)
def test_checkpoint_of_another_run_is_refused(setup, resumed, tmp_path, change, field):
    path = tmp_path / "other.ckpt"
    path.write_bytes(resumed[0].read_bytes())
    tpl, patient, obs = setup
    kw = {"checkpoint_every": EVERY, **change}
    if kw.pop("data", None):
        obs = Observed(obs.roi, obs.time_h, obs.activity_MBq * 1.01)
    with pytest.raises(InputError, match=rf"belongs to another run; fields differ: {field}: "):
        run(tpl, patient, obs, checkpoint=path, **kw)
    assert path.read_bytes() == resumed[0].read_bytes()  # refused, never overwritten


def test_seed_mismatch_names_both_values(setup, resumed, tmp_path):
    path = tmp_path / "other.ckpt"
    path.write_bytes(resumed[0].read_bytes())
    with pytest.raises(
        InputError, match=rf"seed: {SEED} \(checkpoint\) vs {SEED + 7} \(this fit\)"
    ):
        run(*setup, checkpoint=path, checkpoint_every=EVERY, seed=SEED + 7)


def test_truncated_or_bit_flipped_checkpoint_is_refused(setup, resumed, tmp_path):
    good = resumed[0].read_bytes()
    path = tmp_path / "bad.ckpt"
    cases = [good[: len(good) // 2], good[:10], b"", b"PK\x03\x04 not a checkpoint"]
    for i in np.linspace(0, len(good) - 1, 12).astype(int):
        flipped = bytearray(good)
        flipped[i] ^= 0x10
        cases.append(bytes(flipped))
    for data in cases:
        path.write_bytes(data)
        with pytest.raises(InputError, match="checkpoint .* (unreadable|has format)"):
            run(*setup, checkpoint=path, checkpoint_every=EVERY)


def test_a_failed_write_leaves_the_previous_checkpoint_and_no_temp_file(
    resumed, tmp_path, monkeypatch
):
    path = tmp_path / "atomic.ckpt"
    path.write_bytes(resumed[0].read_bytes())
    ckpt = _checkpoint.read_checkpoint(path)

    def disk_full(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", disk_full)
    state = {"i": jnp.arange(CHAINS), "rng_key": jax.random.split(jax.random.key(0), CHAINS)}
    with pytest.raises(OSError, match="No space left"):
        _checkpoint.write_checkpoint(
            path, ckpt.header["fingerprint"], 1, 2, state, ckpt.draws, ckpt.extra
        )
    assert path.read_bytes() == resumed[0].read_bytes()
    assert [p.name for p in tmp_path.iterdir()] == [path.name]


def test_state_round_trips_with_typed_keys(tmp_path):
    path = tmp_path / "state.ckpt"
    keys = jax.random.split(jax.random.key(3), CHAINS)
    state = {"i": jnp.arange(CHAINS), "rng_key": keys, "m": jnp.ones((CHAINS, 2, 2)) / 3}
    _checkpoint.write_checkpoint(path, {"seed": 1}, 7, 9, state, {}, {})
    ckpt = _checkpoint.read_checkpoint(path)
    proto = jax.eval_shape(lambda s: jax.tree.map(lambda x: x[0], s), state)
    back = _checkpoint._restore_state(path, ckpt, proto, False, CHAINS, "threefry2x32")
    assert ckpt.steps_done == 7
    assert np.array_equal(jax.random.key_data(back["rng_key"]), jax.random.key_data(keys))
    assert np.array_equal(back["m"], state["m"]) and back["m"].dtype == jnp.float64
    with pytest.raises(InputError, match=r"'m'\]"):
        bad = {**proto, "m": jax.ShapeDtypeStruct((3, 2), jnp.float64)}
        _checkpoint._restore_state(path, ckpt, bad, False, CHAINS, "threefry2x32")


def test_chunks_end_every_few_iterations_and_at_the_end_of_warm_up():
    assert _checkpoint.chunk_ends(WARMUP, WARMUP + SAMPLES, EVERY, 0) == ENDS
    assert _checkpoint.chunk_ends(50, 100, 20, 0) == [20, 40, 50, 70, 90, 100]
    # A run resumed with another chunk length continues from where the file says it stopped.
    assert _checkpoint.chunk_ends(50, 100, 30, 60) == [80, 100]
    assert _checkpoint.chunk_ends(50, 100, 30, 100) == []
    assert _checkpoint.chunk_ends(1, 2, 1, 0) == [1, 2]


def test_bad_checkpoint_arguments_fail_before_sampling(setup, tmp_path):
    tpl, patient, obs = setup
    for every in (0, -3, 2.5, True, "10"):
        with pytest.raises(InputError, match="checkpoint_every"):
            fit(tpl, patient, obs, noise=NOISE, checkpoint=tmp_path / "x", checkpoint_every=every)
    for method in ("svi", "map", "laplace"):
        with pytest.raises(InputError, match=f"method = '{method}'"):
            fit(tpl, patient, obs, noise=NOISE, method=method, checkpoint=tmp_path / "x")
    with pytest.raises(InputError, match="is a directory"):
        fit(tpl, patient, obs, noise=NOISE, checkpoint=tmp_path)
    with pytest.raises(InputError, match="allowed: a file path"):
        fit(tpl, patient, obs, noise=NOISE, checkpoint=3)
    assert not (tmp_path / "x").exists()
