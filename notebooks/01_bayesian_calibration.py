# %% [markdown]
# # 01 · Bayesian calibration: from a time-activity table to a posterior and a dose
#
# A twin of one patient is calibrated from a handful of quantitative SPECT scans after one cycle
# of [177Lu]Lu-PSMA-617: the scans are a time-activity table (CSV) and a patient manifest (YAML),
# read with `twinjax.read_tacs` and `twinjax.load_patient`, exactly as a clinic's files would be.
# The patient here is **synthetic**: its true kinetic parameters are a fixed draw from the
# template's population prior and the scans are simulated from them with lognormal noise and a
# calibration error per scan, so we can check that the posterior finds the truth.
#
# Steps: template → synthetic patient and its TAC table → NUTS fit → diagnostics (R-hat, ESS,
# divergences, trace and pair plots with ArviZ) → posterior-predictive TAC bands → absorbed dose
# per organ with credible intervals.
#
# **Two sizes.** With `TWINJAX_NOTEBOOK_SMALL=1` (what the test suite runs) the twin is a small
# linear kidney-tumour model (three compartments plus urine, four inferred parameters, solved
# exactly by the matrix exponential) and NUTS runs 2 chains x (300 + 300) iterations: about
# 70 s on a 2-core CPU (45 s of it compiling and running NUTS), 2-3 min while other jobs load
# it. Without the flag the twin is the `psma617_reduced` PBPK model (25 compartments, stiff
# receptor binding, five inferred parameters, four imaged regions) with 4 chains x (500 + 500)
# iterations: about 20-40 min on the same CPU (a NUTS fit of `psma617_reduced`
# measured about 20 min there, see the README; this notebook's full run was not timed).
#
# The synthetic clinic cohort of this project (`../shared/data/psma-clinic-synthetic/`, data of
# another group's model) is not part of the repository; set `TWINJAX_CLINIC_DATA` to its folder
# to see one of its patients read by the same two calls.

# %%
import os
import tempfile
import time
from pathlib import Path

import jax

jax.config.update("jax_enable_x64", True)  # twinjax computes in float64 (doses over weeks)

import arviz as az  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import yaml  # noqa: E402

import twinjax  # noqa: E402
from twinjax.dosimetry import organ_doses  # noqa: E402
from twinjax.inference import PopulationPrior  # noqa: E402
from twinjax.inference.predict import credible_band, predict_activity  # noqa: E402

SMALL = os.environ.get("TWINJAX_NOTEBOOK_SMALL", "0") == "1"
CHAINS, WARMUP, SAMPLES = (2, 300, 300) if SMALL else (4, 500, 500)
WORK = Path(tempfile.mkdtemp(prefix="twinjax-nb01-"))
print(f"{'small' if SMALL else 'full'} mode; files in {WORK}; JAX devices: {jax.devices()}")

# %% [markdown]
# ## 1. The template
#
# A template is a model structure plus population values: typical parameter values (medians),
# lognormal between-patient CVs, covariate formulas and the source of every number. The prior of
# a patient is that population distribution around the patient's covariate-adjusted typical
# values. In small mode we write a small template ourselves (any YAML of the same schema is a
# custom model).

# %%
# the template as a plain dict; printed below as its YAML
from _small_model import SMALL_TEMPLATE  # noqa: E402  (notebooks/_small_model.py)

if SMALL:
    path = WORK / "lu177_kidney_tumour_linear.yaml"
    path.write_text(yaml.safe_dump(SMALL_TEMPLATE))
    print(path.read_text())
    tpl = twinjax.load_template(path)
    ROIS = ("kidneys", "tumour", "whole_body")
    NOISE = twinjax.LognormalError(
        {"kidneys": 0.12, "tumour": 0.18, "whole_body": 0.08}, calibration_cv=0.05
    )
else:
    tpl = twinjax.load_template("psma617_reduced")
    ROIS = ("kidneys", "salivary_glands", "tumour", "whole_body")
    NOISE = twinjax.LognormalError(
        {"kidneys": 0.12, "salivary_glands": 0.18, "tumour": 0.15, "whole_body": 0.08},
        calibration_cv=0.05,
    )
print(tpl.name, "-", tpl.spec.title)
print("inferred parameters and between-patient CVs:", tpl.cv)

# %% [markdown]
# ## 2. A synthetic patient and its time-activity table
#
# The patient's manifest (covariates, CT volumes, the administration) and the scans are written
# in the file formats of `twinjax.load_patient` and `twinjax.read_tacs`, then read back: from
# here on the notebook sees only the files. The truth is one fixed point of the prior (in its
# standard-normal coordinates `z`), one cycle of 7.4 GBq, SPECT at 4, 24, 48, 96 and 168 h.

# %%
manifest = {
    "patient_id": "SYN01",
    "sex": "male",
    "weight_kg": 82.0,
    "height_cm": 178.0,
    "hematocrit": 0.42,
    "egfr_mL_min": 90.0,
    "ct_volumes_mL": {"kidneys": 310.0, "salivary_glands": 25.0, "tumour": 100.0},
    "administrations": [
        {
            "time_h": 0.0,
            "nuclide": "Lu-177",
            "activity_MBq": 7400.0,
            "ligand_hot_nmol": 10.18,  # 7.4 GBq of Lu-177 (ICRP 107 half-life)
            "ligand_cold_nmol": 85.82,  # 96 nmol of PSMA-617 in all
        }
    ],
}
(WORK / "SYN01.yaml").write_text(yaml.safe_dump(manifest))
patient = twinjax.load_patient(WORK / "SYN01.yaml")

prior = PopulationPrior.from_template(tpl, patient.covariates)
z_true = np.resize([0.8, -0.6, 0.5, -0.9, 0.4], prior.dim)  # a fixed, unremarkable patient
truth = {k: float(v) for k, v in prior.theta(z_true).items()}
truth_params = tpl.derive({**prior.base, **truth})
SCAN_TIMES = np.array([4.0, 24.0, 48.0, 96.0, 168.0])
traj = twinjax.simulate(tpl.model, truth_params, patient.schedule, SCAN_TIMES)

key = jax.random.key(2026)
calibration = np.exp(0.05 * np.asarray(jax.random.normal(jax.random.fold_in(key, 99), (5,))))
rows = []
for i, roi in enumerate(ROIS):
    true_activity = sum(traj.activity(g) for g in tpl.roi(roi))
    y = NOISE.sample(jax.random.fold_in(key, i), roi, true_activity, calibration=calibration)
    rows += [(float(t), roi, float(v)) for t, v in zip(SCAN_TIMES, y, strict=True)]
rows.sort()
with open(WORK / "tacs.csv", "w") as f:
    f.write("patient_id,cycle,roi,time_h,activity_MBq\n")
    f.writelines(f"SYN01,1,{roi},{t:g},{a:.6g}\n" for t, roi, a in rows)

data = twinjax.read_tacs(WORK / "tacs.csv", patient_id="SYN01")
print(f"{data.n} measurements of {data.rois} at {np.unique(data.time_h)} h")
print((WORK / "tacs.csv").read_text()[:400])

# %%
# Optional: the synthetic clinic cohort (outside the repository), read by the same two calls.
clinic = os.environ.get("TWINJAX_CLINIC_DATA")
if clinic and (Path(clinic) / "tacs.csv").is_file():
    a01 = twinjax.load_patient(Path(clinic) / "patients" / "A01.yaml")
    a01_data = twinjax.read_tacs(Path(clinic) / "tacs.csv", patient_id="A01")
    print(a01.patient_id, a01.covariates, "\n", a01.schedule.activity_MBq, "MBq")
    print(f"{a01_data.n} measurements of {a01_data.rois}")
else:
    print("TWINJAX_CLINIC_DATA not set: the clinic cohort is not read")

# %% [markdown]
# ## 3. The posterior by NUTS
#
# `twinjax.fit` builds the NumPyro model of this patient (prior around the covariate-adjusted
# typical values, sampled non-centred; lognormal region noise; a latent calibration factor per
# scan shared by its regions) and runs NUTS with a dense mass matrix. Gradients go through the
# ODE solution in forward mode.

# %%
t0 = time.perf_counter()
# On one CPU device the chains run vectorised (one compiled program for all of them); with a
# device per chain (GPUs, or numpyro.set_host_device_count) they run in parallel.
chain_method = "vectorized" if jax.local_device_count() < CHAINS else "parallel"
post = twinjax.fit(tpl, patient, data, noise=NOISE, method="nuts", num_chains=CHAINS,
                   num_warmup=WARMUP, num_samples=SAMPLES, chain_method=chain_method,
                   seed=1)  # fmt: skip
fit_seconds = time.perf_counter() - t0
print(f"NUTS: {CHAINS} chains x ({WARMUP} + {SAMPLES}) in {fit_seconds:.1f} s")

# %% [markdown]
# ## 4. Diagnostics
#
# Split R-hat (rank-normalised), bulk and tail ESS, divergences, E-BFMI and tree depth, as Stan
# reports them, with a verdict; then the posterior against the truth of the synthetic patient.

# %%
diag = post.diagnostics
summary = post.summary()
rhat_max = max(diag.rhat.values())
ess_bulk_min = min(diag.ess_bulk.values())
divergences = diag.divergences
print(f"verdict {diag.verdict}; max R-hat {rhat_max:.3f}; min bulk ESS {ess_bulk_min:.0f}; "
      f"divergences {divergences}; E-BFMI {[round(e, 2) for e in diag.ebfmi]}")  # fmt: skip
for m in diag.messages:
    print("  ", m)
print(f"\n{'parameter':>12} {'truth':>10} {'median':>10} {'90 % interval':>24} {'R-hat':>6}")
for n in post.names:
    s = summary[n]
    print(f"{n:>12} {truth[n]:10.4g} {s['q50']:10.4g}   [{s['q5']:9.4g}, {s['q95']:9.4g}] "
          f"{s['rhat']:6.3f}")  # fmt: skip
posterior_median = {n: summary[n]["q50"] for n in post.names}

# %%
idata = post.to_inference_data()
az.plot_trace(idata, var_names=list(post.names), compact=False, figsize=(10, 2 * len(post.names)))
plt.tight_layout()
plt.show()
az.plot_pair(idata, var_names=list(post.names), kind="kde" if not SMALL else "scatter",
             divergences=True, figsize=(8, 8))  # fmt: skip
plt.show()

# %% [markdown]
# ## 5. Posterior-predictive time-activity curves
#
# Every posterior draw pushed through the model gives the twin's belief about the true activity
# at any time (dark band, 90 %); adding the measurement noise and a new calibration factor gives
# the band in which a new scan would fall (light band). The observed values should sit in the
# light band about 90 % of the time.

# %%
t_grid = np.linspace(0.5, 336.0, 120)
curves = predict_activity(post, tpl, patient.schedule, t_grid, ROIS, max_draws=200)
at_scans = predict_activity(post, tpl, patient.schedule, SCAN_TIMES, ROIS, max_draws=200)
truth_curves = twinjax.simulate(tpl.model, truth_params, patient.schedule, t_grid)
rng = np.random.default_rng(0)
fig, axes = plt.subplots(1, len(ROIS), figsize=(4 * len(ROIS), 3.4))
inside, total = 0, 0
for ax, roi in zip(axes, ROIS, strict=True):
    sd = float(np.sqrt(np.log1p(NOISE.cv[roi] ** 2) + np.log1p(NOISE.calibration_cv**2)))
    lo, med, hi = credible_band(curves[roi])
    noisy = curves[roi] * np.exp(sd * rng.standard_normal(curves[roi].shape))
    plo, _, phi = credible_band(noisy)
    ax.fill_between(t_grid, plo, phi, color="C0", alpha=0.15, label="new scan, 90 %")
    ax.fill_between(t_grid, lo, hi, color="C0", alpha=0.4, label="true activity, 90 %")
    ax.plot(t_grid, med, color="C0")
    t_obs, y_obs = data.for_roi(roi)
    ax.plot(t_obs, y_obs, "ko", ms=4, label="scans")
    ax.plot(t_grid, sum(truth_curves.activity(g) for g in tpl.roi(roi)), "r--", lw=1,
            label="truth")  # fmt: skip
    pred_scans = at_scans[roi] * np.exp(sd * rng.standard_normal(at_scans[roi].shape))
    q_lo, _, q_hi = credible_band(pred_scans)
    inside += int(np.sum((y_obs >= q_lo) & (y_obs <= q_hi)))
    total += y_obs.size
    ax.set(title=roi, xlabel="time (h)", ylabel="activity (MBq)", yscale="log")
axes[0].legend(fontsize=7)
plt.tight_layout()
plt.show()
predictive_coverage = inside / total
print(f"{inside}/{total} scans inside their 90 % posterior-predictive interval")

# %% [markdown]
# ## 6. Absorbed dose per organ
#
# The posterior draws of each region's time-integrated activity (to infinity) times the sphere
# S-value of the region's mass (the CT volume at 1.05 kg/L; ICRP 89 reference mass otherwise)
# give the self-dose per draw: a median and a 90 % credible interval, against the truth.

# %%
dose_regions = [r for r in ROIS if r != "whole_body"]
masses = {r: manifest["ct_volumes_mL"][r] * 1e-3 * 1.05 for r in dose_regions}
tia_draws = {r: post.draws(f"tia_{r}") for r in dose_regions}
dose_draws = {r: np.asarray(v) for r, v in organ_doses("Lu-177", tia_draws, masses).items()}
true_tia = {r: float(sum(traj.tia(g) for g in tpl.roi(r))) for r in dose_regions}
true_dose = {r: float(v) for r, v in organ_doses("Lu-177", true_tia, masses).items()}
dose_summary = {}
print(f"{'region':>16} {'mass (kg)':>9} {'truth (Gy)':>10} {'median (Gy)':>11}  90 % interval")
for r in dose_regions:
    q5, q50, q95 = np.quantile(dose_draws[r], [0.05, 0.5, 0.95])
    dose_summary[r] = {"q5": float(q5), "q50": float(q50), "q95": float(q95)}
    print(f"{r:>16} {masses[r]:9.3f} {true_dose[r]:10.2f} {q50:11.2f}   [{q5:6.2f}, {q95:6.2f}]")

fig, ax = plt.subplots(figsize=(6, 3))
ax.violinplot([dose_draws[r] for r in dose_regions], showmedians=True)
ax.scatter(range(1, len(dose_regions) + 1), [true_dose[r] for r in dose_regions], color="r",
           zorder=3, label="truth")  # fmt: skip
ax.set_xticks(range(1, len(dose_regions) + 1), dose_regions)
ax.set_ylabel("absorbed dose, cycle 1 (Gy)")
ax.legend()
plt.tight_layout()
plt.show()

# %% [markdown]
# **What to take away.** Five scans pin the kidney kinetics to a few per cent and with them the
# kidney dose; the 90 % intervals contain the truth; the diagnostics say whether to trust the
# sampler (R-hat <= 1.01, no divergences, ESS >= 100 per chain). The posterior is saved with
# `post.save("posterior.nc")` (ArviZ netCDF with provenance) and forecast with
# `twinjax forecast posterior.nc scenarios.yaml`.
