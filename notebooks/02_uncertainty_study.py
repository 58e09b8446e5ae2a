# %% [markdown]
# # 02 · Uncertainty study: what drives the dose, and when to scan next
#
# Three questions about the kidney and tumour doses of one cycle of [177Lu]Lu-PSMA-617:
#
# 1. **Local sensitivity.** At a patient's typical parameters, by how many per cent does each
#    dose change per per cent change of each parameter? Normalised elasticities
#    `d ln D / d ln theta`, by automatic differentiation through the ODE solution
#    (`twinjax.inference.design.dose_elasticities`), checked against `jax.grad`.
# 2. **Global sensitivity.** Over the template's whole population prior, which parameters carry
#    the variance of each dose? First-order and total Sobol indices by the Saltelli/Jansen
#    estimators (`sobol_indices`), with bootstrap intervals.
# 3. **Scan design.** After scans at 4 and 24 h, at what time should the next scan be taken to
#    shrink the posterior variance of the kidney dose the most? Preposterior analysis
#    (`next_scan_time`): for each candidate time, the expected posterior variance of the kidney
#    dose over the data that scan could show, by importance reweighting of the posterior draws
#    and by the linear-Gaussian approximation.
#
# **Two sizes.** With `TWINJAX_NOTEBOOK_SMALL=1` (the test suite): the small linear kidney-tumour
# model of notebook 01, 1,024 Sobol base samples (6,144 model runs), 300 Laplace posterior draws,
# 13 candidate times: about 35 s on a 2-core CPU (1-2 min while other jobs load it). Without
# it: `psma617_reduced` (25 compartments), 4,096 Sobol base samples (28,672 stiff ODE solves,
# about 40 min at the ~12 solves/s of this CPU; an estimate, not measured), 1,000 posterior
# draws, 29 candidate times.

# %%
import os
import tempfile
import time
from pathlib import Path

import jax

jax.config.update("jax_enable_x64", True)  # twinjax computes in float64

import jax.numpy as jnp  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import yaml  # noqa: E402

import twinjax  # noqa: E402
from twinjax.dosimetry import sphere_s_value  # noqa: E402
from twinjax.imaging import Patient  # noqa: E402
from twinjax.inference import Observed, PopulationPrior  # noqa: E402
from twinjax.inference.design import (  # noqa: E402
    dose_elasticities,
    next_scan_time,
    sobol_indices,
)

SMALL = os.environ.get("TWINJAX_NOTEBOOK_SMALL", "0") == "1"
N_SOBOL = 1024 if SMALL else 4096
N_DRAWS = 300 if SMALL else 1000
CANDIDATES = np.arange(48.0, 337.0, 24.0 if SMALL else 10.0)
WORK = Path(tempfile.mkdtemp(prefix="twinjax-nb02-"))
print(f"{'small' if SMALL else 'full'} mode; JAX devices: {jax.devices()}")

# %% [markdown]
# ## The patient and the dose function
#
# A patient (covariates), one cycle of 7.4 GBq, and a function from the kinetic parameters to
# the kidney and tumour self-doses (TIA to infinity x sphere S-value of the organ's mass). The
# kidney mass enters as a parameter too, so the sensitivities show how much a segmentation error
# matters beside the kinetics.

# %%
from _small_model import SMALL_TEMPLATE  # noqa: E402  (notebooks/_small_model.py)
if SMALL:
    (WORK / "small.yaml").write_text(yaml.safe_dump(SMALL_TEMPLATE))
    tpl = twinjax.load_template(WORK / "small.yaml")
    ROIS = ("kidneys", "tumour", "whole_body")
    NOISE = twinjax.LognormalError({"kidneys": 0.12, "tumour": 0.18, "whole_body": 0.08},
                                   calibration_cv=0.05)  # fmt: skip
else:
    tpl = twinjax.load_template("psma617_reduced")
    ROIS = ("kidneys", "salivary_glands", "tumour", "whole_body")
    NOISE = twinjax.LognormalError(
        {"kidneys": 0.12, "salivary_glands": 0.18, "tumour": 0.15, "whole_body": 0.08},
        calibration_cv=0.05,
    )

schedule = twinjax.Schedule.single(7400.0, ligand_nmol=96.0)
covariates = {"egfr_L_per_h": 5.4, "ct_volume_L_kidneys": 0.31, "ct_volume_L_tumour": 0.1,
              "weight_kg": 82.0, "hematocrit": 0.42, "bsa_m2": 2.0}  # fmt: skip
patient = Patient.virtual(covariates, schedule, patient_id="SYN02")
prior = PopulationPrior.from_template(tpl, patient.covariates)
KIDNEY_KG, TUMOUR_KG = 0.31 * 1.05, 0.1 * 1.05
S_TUMOUR = float(sphere_s_value("Lu-177", TUMOUR_KG))


def doses(theta):
    """Kidney and tumour self-dose (Gy) of one cycle for kinetic parameters `theta` (canonical
    units; parameters not given keep the patient's typical values) and `kidney_mass_kg`."""
    kinetic = {k: v for k, v in theta.items() if k != "kidney_mass_kg"}
    params = tpl.derive({**prior.base, **kinetic})
    tr = twinjax.simulate(tpl.model, params, schedule, jnp.array([1.0]))
    m_k = theta.get("kidney_mass_kg", KIDNEY_KG)
    tia_k = sum(tr.tia(g) for g in tpl.roi("kidneys"))
    tia_t = sum(tr.tia(g) for g in tpl.roi("tumour"))
    return {"kidneys": tia_k * sphere_s_value("Lu-177", m_k), "tumour": tia_t * S_TUMOUR}


typical = {n: float(prior.base[n]) for n in prior.names}
nominal = {k: float(v) for k, v in doses(typical).items()}
print("inferred parameters:", prior.names)
print("doses at the typical values (Gy):", {k: round(v, 2) for k, v in nominal.items()})

# %% [markdown]
# ## 1. Local sensitivity: elasticities
#
# `e_i = d ln D / d ln theta_i` at the typical values, for every inferred parameter and the kidney
# mass, in one forward-mode Jacobian. A check with `jax.grad` (reverse mode through the solver's
# adjoint) of the kidney dose in one parameter: `e = theta / D * dD/dtheta`.

# %%
point = {**typical, "kidney_mass_kg": KIDNEY_KG}
elasticities = dose_elasticities(doses, point)
for region, e in elasticities.items():
    print(region, {k: round(v, 3) for k, v in e.items()})

name = prior.names[0]


def kidney_dose_of(x):
    kinetic = {**typical, name: x}
    params = tpl.derive({**prior.base, **kinetic})
    tr = twinjax.simulate(tpl.model, params, schedule, jnp.array([1.0]), adjoint="reverse")
    return sum(tr.tia(g) for g in tpl.roi("kidneys")) * sphere_s_value("Lu-177", KIDNEY_KG)


grad = float(jax.grad(kidney_dose_of)(typical[name]))
elasticity_by_grad = grad * typical[name] / nominal["kidneys"]
print(f"d ln D_kidney / d ln {name}: {elasticities['kidneys'][name]:.6f} (Jacobian), "
      f"{elasticity_by_grad:.6f} (jax.grad)")  # fmt: skip

fig, axes = plt.subplots(1, 2, figsize=(10, 3), sharey=True)
labels = list(point)
for ax, region in zip(axes, ("kidneys", "tumour"), strict=True):
    ax.barh(labels, [elasticities[region][k] for k in labels], color="C1")
    ax.axvline(0, color="k", lw=0.5)
    ax.set(title=f"{region} dose", xlabel="elasticity d ln D / d ln theta")
plt.tight_layout()
plt.show()

# %% [markdown]
# ## 2. Global sensitivity: Sobol indices over the population prior
#
# The inputs are the prior's independent standard-normal coordinates, mapped to the physical
# parameters; `n (d + 2)` model runs, one compiled `vmap`. First-order index S1: the variance
# share of a parameter alone; total index ST: with all its interactions. S1 sums to at most 1;
# ST - S1 measures interactions.

# %%
t0 = time.perf_counter()
sobol = sobol_indices(doses, prior, n=N_SOBOL, seed=0)
sobol_seconds = time.perf_counter() - t0
print(f"{sobol.n_evaluations} model runs in {sobol_seconds:.1f} s")
sobol_sums = {}
for j, out in enumerate(sobol.outputs):
    sobol_sums[out] = float(sobol.first_order[j].sum())
    cv = float(np.sqrt(sobol.variance[j]) / sobol.mean[j])
    print(f"\n{out} dose: mean {sobol.mean[j]:.2f} Gy, CV {cv:.0%} over the population; "
          f"sum S1 = {sobol_sums[out]:.3f}")  # fmt: skip
    for n, row in sobol.table(out).items():
        s1 = f"S1 {row['S1']:6.3f} [{row['S1_lower']:6.3f}, {row['S1_upper']:6.3f}]"
        st = f"ST {row['ST']:6.3f} [{row['ST_lower']:6.3f}, {row['ST_upper']:6.3f}]"
        print(f"  {n:>12}  {s1}   {st}")

fig, axes = plt.subplots(1, len(sobol.outputs), figsize=(10, 3), sharey=True)
x = np.arange(len(sobol.names))
for j, (ax, out) in enumerate(zip(axes, sobol.outputs, strict=True)):
    for k, (vals, ci, lab) in enumerate(((sobol.first_order, sobol.first_order_interval, "S1"),
                                         (sobol.total, sobol.total_interval, "ST"))):  # fmt: skip
        err = np.abs(ci[:, j] - vals[j])
        ax.bar(x + (k - 0.5) * 0.38, vals[j], 0.38, yerr=err, label=lab, capsize=2)
    ax.set_xticks(x, sobol.names, rotation=30)
    ax.set(title=f"{out} dose", ylim=(0, 1.05))
axes[0].legend()
axes[0].set_ylabel("Sobol index")
plt.tight_layout()
plt.show()

# %% [markdown]
# ## 3. When to scan next: preposterior analysis
#
# The twin has seen scans at 4 and 24 h (simulated for a synthetic patient). The Laplace
# posterior's draws stand for what the twin believes now. For each candidate time of the next
# scan (all regions imaged, sharing one calibration factor), `next_scan_time` simulates the
# scans that could be seen, reweights the draws by their likelihood and averages the updated
# variance of the kidney dose; the linear-Gaussian approximation gives a closed form from the
# same draws.

# %%
z_true = np.resize([0.8, -0.6, 0.5, -0.9, 0.4], prior.dim)
truth = {k: float(v) for k, v in prior.theta(z_true).items()}
early = np.array([4.0, 24.0])
traj = twinjax.simulate(tpl.model, tpl.derive({**prior.base, **truth}), schedule, early)
key = jax.random.key(7)
rows = []
for i, roi in enumerate(ROIS):
    y = NOISE.sample(jax.random.fold_in(key, i), roi, sum(traj.activity(g) for g in tpl.roi(roi)))
    rows += [(float(t), roi, float(v)) for t, v in zip(early, y, strict=True)]
rows.sort()
data = Observed(tuple(r[1] for r in rows), np.array([r[0] for r in rows]),
                np.array([r[2] for r in rows]))  # fmt: skip
t0 = time.perf_counter()
post = twinjax.fit(tpl, patient, data, noise=NOISE, method="laplace", num_samples=N_DRAWS)
print(f"Laplace fit to the 4 and 24 h scans: {time.perf_counter() - t0:.1f} s")

t0 = time.perf_counter()
plan = next_scan_time(post, CANDIDATES, target="kidneys", n_data=128, max_draws=N_DRAWS, seed=0)
plan_linear = next_scan_time(post, CANDIDATES, target="kidneys", method="linear",
                             max_draws=N_DRAWS)  # fmt: skip
print(f"scan design: {time.perf_counter() - t0:.1f} s")
current_sd = float(np.sqrt(plan.current_variance))
kidney_median = float(np.median(post.draws("tia_kidneys")) * sphere_s_value("Lu-177", KIDNEY_KG))
print(f"kidney dose now: median {kidney_median:.2f} Gy, SD {current_sd:.3f} Gy")
print(f"best next scan: {plan.best_time_h:g} h (importance), {plan_linear.best_time_h:g} h "
      f"(linear-Gaussian); expected SD there {np.sqrt(plan.expected_variance.min()):.3f} Gy, "
      f"{plan.variance_reduction.max():.0%} of the variance removed")  # fmt: skip
print("importance-weight ESS (median per candidate):", np.round(plan.effective_sample_size))

fig, ax = plt.subplots(figsize=(6, 3.2))
ax.axhline(current_sd, color="k", ls=":", label="now (4 + 24 h)")
ax.errorbar(plan.times_h, plan.expected_sd, yerr=plan.standard_error / (2 * plan.expected_sd),
            marker="o", label="importance reweighting")  # fmt: skip
ax.plot(plan_linear.times_h, plan_linear.expected_sd, "s--", label="linear-Gaussian")
ax.axvline(plan.best_time_h, color="C0", alpha=0.4)
ax.set(xlabel="time of the next scan (h)", ylabel="expected posterior SD\nof kidney dose (Gy)")
ax.legend(fontsize=8)
plt.tight_layout()
plt.show()

# %% [markdown]
# **Reading the result.** The kidney dose is the kidney TIA times an S-value: its uncertainty
# after early scans is mostly the unseen washout, which a late scan measures. The expected
# variance falls steeply with the scan time and flattens after a few days, where the kidney
# activity is low and the measurement's relative noise no longer shrinks; the preposterior curve
# says how much each day of waiting buys. The population-level Sobol indices say the same from
# the other side: the kidney dose's variance is carried by the kidney exchange rates, not by the
# clearance or the tumour.
