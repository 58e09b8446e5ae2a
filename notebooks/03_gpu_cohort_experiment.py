# %% [markdown]
# # 03 · An in-silico trial on every device: virtual patients x treatment scenarios
#
# A virtual cohort drawn from a template's between-patient variability goes through several
# treatment scenarios, each patient through the whole chain PBPK → TIA → dose → BED (exact
# Lea-Catcheside factor, repair integrals in the model's ODE) → NTCP / TCP, in one vectorised,
# chunked computation (`twinjax.cohort.virtual_cohort`, `run_trial`). With `mesh="auto"` every
# chunk's patient axis is split over all the devices JAX sees (`jax.devices()`: GPUs, TPU
# cores, or CPU devices) with a `NamedSharding`; each device solves its own patients.
#
# The same code runs on a laptop CPU and on a GPU/TPU node. On a CPU-only machine this notebook
# splits the CPU into two XLA devices (`--xla_force_host_platform_device_count=2`, set below
# before JAX starts, unless `XLA_FLAGS` is already set) so that the sharded path really runs and
# can be compared with the unsharded one; one CPU device already uses every core, so this shows
# correctness, not speed. On GPUs the flag is harmless and the mesh spans the GPUs.
#
# **Two sizes.** With `TWINJAX_NOTEBOOK_SMALL=1` (the test suite): the small linear
# kidney-tumour model of notebook 01, 24 patients x 2 scenarios, chunks of 8: about 20 s on a
# 2-core CPU (about 1 min while other jobs load it), almost all of it compilation. Without it:
# `psma617_reduced` (25 compartments, stiff receptor binding), 2,000 patients x 4 scenarios
# (6,000 or 7,400 MBq x 4 or 6 cycles) with kidneys, salivary glands and a 100 mL tumour; on
# this project's 2-core CPU `run_trial` measured ~12 patients/s for 2 single-cycle scenarios
# (README, `benchmarks/cohort.py`), so expect 15-30 min there; on a GPU raise `CHUNK` (default
# 512 per device).

# %%
import os

if "XLA_FLAGS" not in os.environ:
    # Before JAX starts: two CPU devices (no effect on GPU/TPU devices). Forced CPU devices
    # share XLA's thread pool; NPROC >= 2 x devices keeps jaxlib's batched LU from deadlocking
    # (see twinjax.cohort).
    os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=2"
    os.environ.setdefault("NPROC", str(max(4, os.cpu_count() or 1)))

import tempfile
import time
from pathlib import Path

import jax

jax.config.update("jax_enable_x64", True)  # doses accumulate over months: float64

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import yaml  # noqa: E402

import twinjax  # noqa: E402
from twinjax.cohort import VirtualCohort, patient_mesh, run_trial, virtual_cohort  # noqa: E402
from twinjax.forecast import Region, Scenario  # noqa: E402
from twinjax.radiobiology import tissue  # noqa: E402

SMALL = os.environ.get("TWINJAX_NOTEBOOK_SMALL", "0") == "1"
N_PATIENTS = 24 if SMALL else 2000
N_REFERENCE = N_PATIENTS if SMALL else 64  # patients also run unsharded, for the comparison
CHUNK = 8 if SMALL else None  # None: twinjax's default per device (32 on CPU, 512 on GPU/TPU)
devices = jax.devices()
print(f"{'small' if SMALL else 'full'} mode; {len(devices)} device(s): {devices}")

# %% [markdown]
# ## The cohort and the scenarios
#
# Patients differ in their kinetic parameters (lognormal around the covariate-adjusted typical
# values, the template's CVs) and in their renal function (eGFR uniform in 3-8 L/h, which sets
# the clearance through the template's covariate formula).

# %%
from _small_model import SMALL_TEMPLATE  # noqa: E402  (notebooks/_small_model.py)
if SMALL:
    path = Path(tempfile.mkdtemp(prefix="twinjax-nb03-")) / "small.yaml"
    path.write_text(yaml.safe_dump(SMALL_TEMPLATE))
    tpl = twinjax.load_template(path)
    regions = {"kidneys": Region(tissue("kidney")),
               "tumour": Region(tissue("prostate_cancer"), mass_kg=0.1, kind="tumour")}  # fmt: skip
    plans = [(1, 6000.0), (1, 7400.0)]
else:
    tpl = twinjax.load_template("psma617_reduced")
    regions = {"kidneys": Region(tissue("kidney")),
               "salivary_glands": Region(tissue("salivary_glands")),
               "tumour": Region(tissue("prostate_cancer"), mass_kg=0.1, kind="tumour")}  # fmt: skip
    plans = [(n, a) for n in (4, 6) for a in (6000.0, 7400.0)]

egfr = np.random.default_rng(0).uniform(3.0, 8.0, N_PATIENTS)
cohort = virtual_cohort(tpl, N_PATIENTS, seed=0, covariates={"egfr_L_per_h": egfr})
scenarios = [Scenario(f"{n} x {a / 1000:g} GBq",
                      twinjax.Schedule.cycles(a, n, 6 * 168.0, ligand_nmol=96.0 * a / 7400.0))
             for n, a in plans]  # fmt: skip
print(f"{cohort.n_patients} virtual patients of {tpl.name}; scenarios: "
      f"{[s.name for s in scenarios]}")  # fmt: skip

# %% [markdown]
# ## Sharded against unsharded
#
# The first `N_REFERENCE` patients run on one device (`mesh=None`); the whole cohort runs
# sharded over every device (`mesh="auto"`). Each patient's solve is independent of the others
# in its chunk, so the sharded values must equal the unsharded ones (to rounding).

# %%
reference_cohort = VirtualCohort.from_params(
    tpl, {k: v[:N_REFERENCE] for k, v in cohort.params.items() if k not in tpl.spec.derived},
    covariates={"egfr_L_per_h": egfr[:N_REFERENCE]},
)  # fmt: skip
t0 = time.perf_counter()
unsharded = run_trial(reference_cohort, scenarios, regions, chunk_size=CHUNK, mesh=None)
unsharded_seconds = time.perf_counter() - t0

mesh = patient_mesh() if len(devices) > 1 else None
t0 = time.perf_counter()
trial = run_trial(cohort, scenarios, regions, chunk_size=CHUNK, mesh=mesh)
first_seconds = time.perf_counter() - t0  # includes compiling the sharded program

max_rel_diff = 0.0
for r, qs in unsharded.values.items():
    for q, v in qs.items():
        w = trial.values[r][q][:N_REFERENCE]
        scale = np.maximum(np.abs(v), 1e-300)
        max_rel_diff = max(max_rel_diff, float(np.max(np.abs(w - v) / scale)))
print(f"unsharded ({N_REFERENCE} patients): {unsharded_seconds:.1f} s with compilation")
print(f"sharded over {len(devices)} device(s) ({N_PATIENTS} patients): {first_seconds:.1f} s "
      f"with compilation; max relative difference to unsharded: {max_rel_diff:.1e}")  # fmt: skip

# %% [markdown]
# ## Throughput
#
# A second run of the same shapes reuses the compiled program: the patients per second of the
# trial itself (every scenario of a patient counted once per patient).

# %%
t0 = time.perf_counter()
trial = run_trial(cohort, scenarios, regions, chunk_size=CHUNK, mesh=mesh)
run_seconds = time.perf_counter() - t0
patients_per_s = N_PATIENTS / run_seconds
where = f"{len(devices)} {devices[0].platform} device(s)"
print(f"{N_PATIENTS} patients x {len(scenarios)} scenarios in {run_seconds:.2f} s: "
      f"{patients_per_s:.1f} patients/s on {where}")  # fmt: skip

# %% [markdown]
# ## The trial's readout
#
# Per scenario: median and 90 % range of kidney and tumour BED over the cohort, the fraction of
# patients within the kidney BED limit of the tissue library (40 Gy), and TCP.

# %%
summary = trial.summary()
for s in trial.scenarios:
    k, t = summary[s]["kidneys"]["bed_Gy"], summary[s]["tumour"]["bed_Gy"]
    print(f"{s:>14}: kidney BED {k['median']:6.2f} Gy [{k['lower']:.2f}, {k['upper']:.2f}]; "
          f"tumour BED {t['median']:6.2f} Gy [{t['lower']:.2f}, {t['upper']:.2f}]")  # fmt: skip
within = trial.fraction([("kidneys", "bed_Gy", "<=", 40.0)])
print("fraction of patients with kidney BED <= 40 Gy:",
      {s: round(v["fraction"], 3) for s, v in within.items()})  # fmt: skip

fig, axes = plt.subplots(1, 2, figsize=(11, 3.6))
for s in trial.scenarios:
    axes[0].hist(trial.get(s, "kidneys", "bed_Gy"), bins=30, histtype="step", label=s)
    axes[1].scatter(trial.get(s, "kidneys", "bed_Gy"), trial.get(s, "tumour", "bed_Gy"), s=6,
                    alpha=0.5, label=s)  # fmt: skip
axes[0].axvline(40.0, color="k", ls=":", label="40 Gy limit")
axes[0].set(xlabel="kidney BED (Gy)", ylabel="patients")
axes[1].set(xlabel="kidney BED (Gy)", ylabel="tumour BED (Gy)")
axes[0].legend(fontsize=7)
plt.tight_layout()
plt.show()

# %% [markdown]
# **Scaling up.** On a GPU/TPU node install the accelerator build of the pinned JAX, keep
# `mesh="auto"` (all devices), and raise `chunk_size` until device memory is the limit; on
# several hosts call `jax.distributed.initialize()` first and run the same script in every
# process (see the README, *In-silico trials*). `trial.to_netcdf("trial.nc")` writes every value
# with provenance.
