"""Parallel NUTS chains on the stiff receptor-binding path, one compiled program per CPU device.

Under NumPyro's pmap-based "parallel" chains Lineax-based implicit solvers fail on JAX 0.10 (see
twinjax/inference/_chains.py); `fit` runs parallel chains with `on_devices` instead. The host
device count must be set before JAX starts, so the check runs in a subprocess.
"""

import os
import subprocess
import sys
import textwrap

SCRIPT = textwrap.dedent(
    """
    import sys
    import numpyro
    numpyro.set_host_device_count(2)
    import jax, numpy as np, twinjax
    from twinjax.inference import Observed, fit

    tpl = twinjax.load_template(sys.argv[1])
    assert not tpl.model.is_linear
    patient = twinjax.imaging.Patient.virtual({}, twinjax.Schedule.single(7400.0, ligand_nmol=30.0))
    noise = twinjax.LognormalError({"kidneys": 0.1, "tumour": 0.15}, calibration_cv=0.05)
    times = np.array([4.0, 24.0, 96.0])
    traj = twinjax.simulate(tpl.model, {**tpl.params, "R_kidneys": 30.0}, patient.schedule, times)
    rows = []
    for i, roi in enumerate(("kidneys", "tumour")):
        y = noise.sample(jax.random.key(i), roi, traj.activity(roi))
        rows += [(roi, t, float(v)) for t, v in zip(times, y)]
    obs = Observed(tuple(r[0] for r in rows), np.array([r[1] for r in rows]),
                   np.array([r[2] for r in rows]))
    kw = dict(noise=noise, num_chains=2, num_warmup=3, num_samples=3, seed=5, progress_bar=False, rtol=1e-5, atol=1e-8)
    par = fit(tpl, patient, obs, chain_method="parallel", **kw)
    assert par.samples["z"].shape == (2, 3, 3), par.samples["z"].shape
    assert par.diagnostics.ode_failures == 0
    assert np.all(np.isfinite(par.samples["tia_kidneys"]))
    # Two chains from different starts and keys.
    assert not np.allclose(par.samples["z"][0], par.samples["z"][1])
    print("OK", jax.local_device_count())
    """
)


def test_parallel_chains_run_the_implicit_solver(binding_template_path, tmp_path):
    script = tmp_path / "chains.py"
    script.write_text(SCRIPT)
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    env.pop("XLA_FLAGS", None)
    out = subprocess.run(
        [sys.executable, str(script), str(binding_template_path)],
        capture_output=True,
        text=True,
        env=env,
        timeout=900,
    )
    assert out.returncode == 0, out.stderr[-4000:]
    assert out.stdout.strip().splitlines()[-1] == "OK 2"
