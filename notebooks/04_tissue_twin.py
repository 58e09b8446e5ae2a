# %% [markdown]
# # 04 · A tissue twin: oxygen, radioligand transport, dose and survival maps
#
# Organ-level PBPK cannot see inside a tumour. This notebook builds a tissue-scale twin of a
# small PSMA-expressing tumour on a 3-D grid (`twinjax.pde`) and follows one cycle of
# [177Lu]Lu-PSMA-617 into it:
#
# 1. procedural tissue maps from one seed: tumour, necrotic core, fibrosis, a branching vessel
#    network, perfusion and PSMA receptor density (`synthetic_tumour`);
# 2. the steady oxygen field of that vessel network (diffusion with Michaelis-Menten
#    consumption, Newton-Krylov; `oxygen_field`);
# 3. the plasma curve of the whole-body model `psma617_reduced` (`PlasmaInput.from_trajectory`)
#    driving a reaction-diffusion model of the radioligand in every cell: delivery from plasma,
#    diffusion of the free ligand, receptor binding, internalisation, physical decay
#    (`RadioligandTissue`);
# 4. absorbed-dose, BED and hypoxia-modified survival maps (`twinjax.dosimetry.tissue_dose`: voxel
#    S-value kernel, exact protraction factor per cell, oxygen-dependent LQ), a DVH, and the
#    tumour's surviving fraction with and without its hypoxia.
#
# Oxygen penetrates ~0.1 mm from a vessel, so the cells are 50 um: the grid is a piece of tumour
# a fraction of a millimetre to two millimetres across, not a whole lesion.
#
# **Two sizes.** With `TWINJAX_NOTEBOOK_SMALL=1` (the test suite): 12^3 cells (0.6 mm cube),
# about 40 s on a 2-core CPU (up to 2 min while other jobs load it). Without it: 40^3 cells (a
# 2 mm cube, 64,000 cells, 2 x 10^5 coupled stiff unknowns), about 10-20 min on the same CPU
# (an estimate, not measured), dominated by the radioligand solve (a Krylov Rodas4 method).

# %%
import os
import time

import jax

jax.config.update("jax_enable_x64", True)  # twinjax computes in float64

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

import twinjax  # noqa: E402
from twinjax import pde  # noqa: E402
from twinjax.dosimetry import tissue_dose  # noqa: E402

SMALL = os.environ.get("TWINJAX_NOTEBOOK_SMALL", "0") == "1"
N, H_MM = (12, 0.05) if SMALL else (40, 0.05)
RADIUS_MM = 0.42 * N * H_MM
TIMES_H = np.array([0.0, 0.5, 2.0, 8.0, 24.0, 72.0, 168.0, 336.0])
print(f"{'small' if SMALL else 'full'} mode: {N}^3 cells of {H_MM * 1000:g} um")

# %% [markdown]
# ## 1. Tissue maps

# %%
grid = pde.Grid((N, N, N), H_MM)
maps = pde.synthetic_tumour(grid, jax.random.key(0), radius_mm=RADIUS_MM, target="PSMA")
tumour = np.asarray(maps.tumour)
labels = np.asarray(maps.tissue_class)
vessel_fraction = float(np.asarray(maps.vessels).mean())
print(f"tumour: {tumour.mean():.0%} of the grid; vessel cells {vessel_fraction:.1%}; "
      f"mean PSMA density in the tumour "
      f"{np.asarray(maps.target_density_nmol_per_L)[tumour].mean():.1f} nmol/L")  # fmt: skip

mid = N // 2
fig, axes = plt.subplots(1, 3, figsize=(11, 3.2))
for ax, (title, img) in zip(axes, (
    ("tissue class", labels[mid]),
    ("perfusion (1/h)", np.asarray(maps.perfusion_per_h)[mid]),
    ("PSMA (nmol/L)", np.asarray(maps.target_density_nmol_per_L)[mid]),
), strict=True):  # fmt: skip
    im = ax.imshow(img, origin="lower")
    ax.set_title(title)
    plt.colorbar(im, ax=ax, shrink=0.8)
plt.tight_layout()
plt.show()
print("classes:", dict(enumerate(pde.TISSUE_CLASSES)))

# %% [markdown]
# ## 2. Oxygen

# %%
t0 = time.perf_counter()
po2 = np.asarray(pde.oxygen_field(grid, maps.vessels))
oxygen = {k: float(v) for k, v in pde.oxygen_summary(po2, maps.tumour).items()}
print(f"steady pO2 in {time.perf_counter() - t0:.1f} s: {oxygen}")

# %% [markdown]
# ## 3. Plasma from the whole-body model, radioligand in the tissue

# %%
t0 = time.perf_counter()
tpl = twinjax.load_template("psma617_reduced")
schedule = twinjax.Schedule.single(7400.0, ligand_nmol=96.0)
knots = np.union1d(np.geomspace(1e-3, 700.0, 24), [0.0])
plasma = pde.PlasmaInput.from_trajectory(twinjax.simulate(tpl.model, tpl.params, schedule, knots))
print(f"PBPK plasma curve in {time.perf_counter() - t0:.1f} s; peak hot ligand "
      f"{float(plasma.hot_nmol_per_L.max()):.2f} nmol/L")  # fmt: skip

t0 = time.perf_counter()
model = pde.RadioligandTissue(grid, nuclide="Lu-177")
params = model.params(receptor_nmol_per_L=maps.target_density_nmol_per_L,
                      exchange_rate_per_h=maps.perfusion_per_h)  # fmt: skip
traj = model.simulate(params, plasma, TIMES_H, rtol=1e-3)
solve_seconds = time.perf_counter() - t0
print(f"radioligand solve ({N**3} cells, {TIMES_H.size} output times): {solve_seconds:.1f} s")

# %% [markdown]
# ## 4. Dose, BED and survival maps
#
# The TIA map is convolved with Lu-177's voxel S-value kernel at 50 um; each cell's BED uses the
# protraction factor of its own dose-rate curve; survival follows the local pO2 (hypoxic cells
# are up to ~2.5-3x less sensitive to low-LET radiation). The same dose without hypoxia (every
# cell well oxygenated) shows how much the hypoxic fraction protects the tumour.

# %%
t0 = time.perf_counter()
dose = tissue_dose(traj, po2_mmHg=po2)
oxic = tissue_dose(traj)  # the counterfactual: well oxygenated everywhere
print(f"dose maps in {time.perf_counter() - t0:.1f} s")
d = np.asarray(dose.absorbed_dose_Gy)
metrics = {k: float(v) for k, v in dose.metrics(tumour, dose="absorbed_dose_Gy").items()}
sf = float(dose.surviving_fraction(tumour))
sf_oxic = float(oxic.surviving_fraction(tumour))
hypoxic = tumour & (po2 < 5.0)
well = tumour & (po2 >= 10.0)
survival = np.asarray(dose.survival)
print("tumour dose metrics (Gy):", {k: round(v, 3) for k, v in metrics.items()})
print(f"dose CV over tumour cells: {d[tumour].std() / d[tumour].mean():.2f}")
print(f"tumour surviving fraction {sf:.3f} with its hypoxia, {sf_oxic:.3f} if well oxygenated")
if hypoxic.any() and well.any():
    print(f"hypoxic cells (pO2 < 5 mmHg): mean dose {d[hypoxic].mean():.2f} Gy, survival "
          f"{survival[hypoxic].mean():.3f}; oxic cells (>= 10 mmHg): {d[well].mean():.2f} Gy, "
          f"{survival[well].mean():.3f}")  # fmt: skip

fig, axes = plt.subplots(1, 4, figsize=(15, 3.2))
for ax, (title, img) in zip(axes, (
    ("pO2 (mmHg)", po2[mid]),
    ("absorbed dose (Gy)", d[mid]),
    ("BED (Gy)", np.asarray(dose.bed_Gy)[mid]),
    ("surviving fraction", survival[mid]),
), strict=True):  # fmt: skip
    im = ax.imshow(img, origin="lower")
    ax.contour(tumour[mid], levels=[0.5], colors="w", linewidths=0.8)
    ax.set_title(title)
    plt.colorbar(im, ax=ax, shrink=0.8)
plt.tight_layout()
plt.show()

dvh_dose, dvh_fraction = dose.dvh(tumour, dose="absorbed_dose_Gy")
fig, ax = plt.subplots(figsize=(5, 3))
ax.plot(np.asarray(dvh_dose), np.asarray(dvh_fraction))
ax.set(xlabel="absorbed dose (Gy)", ylabel="fraction of tumour volume", title="tumour DVH")
plt.tight_layout()
plt.show()

# %% [markdown]
# **Reading the maps.** The dose follows perfusion and receptor density, smoothed over the
# ~0.3 mm mean range of Lu-177's electrons; the necrotic core and the poorly perfused, hypoxic
# rim around it receive less, and survive more both because they receive less and because
# hypoxic cells are less radiosensitive. The twin's parameters (perfusion scale, trapping rate,
# diffusivity) can be calibrated from PET/SPECT frames with `twinjax.inference.fit_tissue` (see
# `validation/tissue_calibration.py`).
