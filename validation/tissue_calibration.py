"""Calibration of tissue-scale (PDE) twins from sparse noisy images (issue 5, section 6): on
synthetic tumours whose true parameters are drawn from the prior, NUTS (and SVI) through
`fit_tissue`, with forward-mode gradients through the PDE solve, must put the truth inside the
90 % credible interval at a rate inside the 99 % binomial band.

    python validation/tissue_calibration.py --quick                   # 3 + 3 tumours, ~2.5 min
    python validation/tissue_calibration.py                           # 20 + 20 tumours, ~40 min
    python validation/tissue_calibration.py --tumours 6 --svi --json /tmp/tissue.json
    python validation/tissue_calibration.py --part A --frames static  # two 10-min static scans

Cost on this project's 2 shared CPU cores (NUTS, 2 chains x (250 + 250)): about 65 s per fit
in part A and 47 s in part B, SVI (2000 steps) about 18 s; each fit compiles its own sampler
(the log-density closes over the tumour's maps and data), 5-12 s of every fit.

**A. FDG tracer twin from PET frames.** Each tumour is a `synthetic_tumour` on a 2-D grid
(default 16 x 16 cells of 1 mm; ``--cells 32 --cell-mm 0.5`` for the finer grid, 4-6 times the
cost per gradient), radius 5 mm with a necrotic core, fibrotic patches and a vessel network.
`fdg_model` (rates of Phelps et al. 1979, Ann Neurol 6:371) runs on its maps: relative
perfusion = perfusion map / its tumour mean (multiplies K1 and k2), relative hexokinase =
cellularity / its viable-tumour mean (0 in necrosis; 0.3 outside the tumour, an illustrative
background), diffusivity = the FDG value from its molar mass (0.94 mm^2/h) times the map's
diffusivity scale (0.5 in fibrosis, 1.5 in necrosis). Plasma input: the FDG input of Feng,
Huang and Wang (1993, Int J Biomed Comput 32:95), `FengInput.fdg_reference`, its uCi/mL
amplitudes converted to MBq/mL and scaled by 0.02 (illustrative: 8.2 kBq/mL at 60 min, an SUV
of 1.55 for 370 MBq in 70 kg). Scanner: 2 mm voxels, PSF FWHM 4 mm (``--psf-fwhm-mm``),
effective sensitivity 2000 counts/s per MBq per voxel (``--sensitivity``: the noise level;
30-75 counts per voxel in the last frame on average), F-18 decay during the frames. Frames:
``dynamic`` (default) 6 frames with edges 0, 2, 5, 10, 20, 40, 60 min; ``static`` two 10-min
frames at 20-30 and 50-60 min. Inferred: `TracerParams` perfusion_scale, trapping_scale and
diffusivity_scale, lognormal priors (median 1; CV 0.4, 0.5, 0.8), Poisson likelihood.

**B. Growth twin from sparse scans.** Fisher-KPP proliferation-invasion (`TumourGrowthPDE`;
Swanson, Alvord and Murray 2000, Cell Prolif 33:317) on a 24 x 24 grid of 1 mm cells with a
heterogeneous motility map from a `synthetic_tumour` (radius 0.45 of the field, no necrosis,
30 % fibrosis where the diffusivity is 0.25 of the fibrosis-free value). The seed is a Gaussian
of peak density 0.5 and sd 1.5 mm, centred within 2 mm of the middle, known to the fit (the
baseline scan). Observed: an "MRI cellularity" image at days 14, 28 and 42: the density blurred
by a 2 mm FWHM Gaussian, averaged into 2 mm voxels, plus a 0.05 background, with lognormal
noise of CV 10 % (``likelihood="lognormal"``). Inferred: the fibrosis-free diffusivity D
(mm^2/h) and the proliferation rate rho (1/h), lognormal priors of median 0.004 mm^2/h and
0.002 /h (0.1 mm^2/day and 0.048 /day: illustrative, a front speed 2 sqrt(D rho) of about
0.14 mm/day), CV 0.5 each.

Per tumour the script prints the truth and the 5/50/95 % quantiles; per part and engine the
coverage table: coverage of the 90 % intervals, the 99 % binomial band for N tumours, the
median ratio of posterior to prior sd of log(theta), the median |log(posterior median /
truth)|, and the Kolmogorov-Smirnov p-value of the truths' posterior quantiles against the
uniform distribution (a finer check than the coverage count); NUTS divergences, largest R-hat
(per parameter and overall), smallest bulk ESS; wall time per fit. ``--json`` writes every fit
and the tables atomically. Exits 1 if a coverage rate lies outside its band.

Tumour i (0..N-1) has the maps of seed i; its truth and noise come from (``--seed``, i), and its
fit uses seed i. ``--quick``: 3 tumours per part, an 8 x 8 grid for A (tumour radius 2.8 mm)
and 16 x 16 for B, one NUTS chain of 100 + 100 draws (R-hat from the chain's two halves).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import arviz as az
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import scipy.stats

import twinjax
from twinjax.imaging import Frames, Scanner, blur, poisson_image, simulate_image
from twinjax.inference import TissuePosterior, fit_tissue
from twinjax.models.pet import FengInput
from twinjax.pde import (
    Grid,
    TracerParams,
    TumourGrowthPDE,
    fdg_model,
    simulate_growth,
    simulate_tracer,
    synthetic_tumour,
    tracer_diffusivity_mm2_per_h,
)
from twinjax.study import _atomic_write  # the package's temp-file + rename writer
from twinjax.units import MIN_TO_H

# ---- A: FDG tracer twin ----------------------------------------------------------------------
TRACER_PRIORS = {
    "perfusion_scale": (1.0, 0.4),
    "trapping_scale": (1.0, 0.5),
    "diffusivity_scale": (1.0, 0.8),
}
FDG_MOLAR_MASS_G_PER_MOL = 182.15
UCI_TO_MBQ = 0.037
PLASMA_SCALE = 0.02  # illustrative injected-activity scale (module docs)
BACKGROUND_HEXOKINASE = 0.3  # illustrative relative k3 of the tissue around the tumour
DYNAMIC_EDGES_MIN = (0.0, 2.0, 5.0, 10.0, 20.0, 40.0, 60.0)
STATIC_FRAMES_MIN = ((20.0, 30.0), (50.0, 60.0))
VOXEL_MM = 2.0

# ---- B: growth twin --------------------------------------------------------------------------
GROWTH_PRIORS = {
    "diffusivity_mm2_per_h": (0.004, 0.5),
    "proliferation_rate_per_h": (0.002, 0.5),
}
FIBROTIC_MOTILITY = 0.25  # D in fibrosis / D elsewhere (illustrative)
SEED_DENSITY, SEED_SD_MM, SEED_OFFSET_MM = 0.5, 1.5, 2.0
SCAN_DAYS = (14.0, 28.0, 42.0)
MRI_FWHM_MM, MRI_BACKGROUND = 2.0, 0.05


@dataclass(frozen=True)
class Case:
    """One synthetic tumour: its truth, its data, and the forward map the fit uses."""

    index: int
    truth: dict[str, float]
    data: np.ndarray
    forward: Callable[[dict], jax.Array]
    note: str


def _draw_truth(priors, rng: np.random.Generator) -> dict[str, float]:
    """theta = median exp(sigma z), z ~ N(0, 1): exactly the prior `fit_tissue` uses."""
    out = {}
    for name, (median, cv) in priors.items():
        out[name] = float(median * math.exp(math.sqrt(math.log1p(cv * cv)) * rng.standard_normal()))
    return out


def _theta(truth: dict[str, float]) -> dict[str, jax.Array]:
    return {k: jnp.asarray(v) for k, v in truth.items()}


# ---- A ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TracerDesign:
    grid: Grid
    radius_mm: float
    scanner: Scanner
    frames: Frames
    sample_times_h: np.ndarray
    label: str


def tracer_design(args) -> TracerDesign:
    n, h = args.cells, args.cell_mm
    grid = Grid((n, n), h)
    scanner = Scanner(VOXEL_MM, args.psf_fwhm_mm, sensitivity_cps_per_MBq=args.sensitivity)
    if args.frames == "dynamic":
        frames = Frames.from_edges(np.asarray(DYNAMIC_EDGES_MIN) * MIN_TO_H)
        # Samples of the activity maps (frame means are exact for their linear interpolant):
        # every 30 s over the bolus (first 10 min), every 2.5 min after.
        ts = np.concatenate([np.arange(0.0, 10.0, 0.5), np.arange(10.0, 60.01, 2.5)])
    else:
        starts, ends = zip(*STATIC_FRAMES_MIN, strict=True)
        frames = Frames(np.asarray(starts) * MIN_TO_H, np.asarray(ends) * MIN_TO_H)
        ts = np.concatenate([np.arange(s, e + 0.01, 1.0) for s, e in STATIC_FRAMES_MIN])
    radius = min(5.0, 0.35 * n * h)
    label = (
        f"grid {n}x{n} x {h:g} mm, tumour radius {radius:g} mm, voxels {VOXEL_MM:g} mm, "
        f"PSF FWHM {args.psf_fwhm_mm:g} mm, {len(frames)} {args.frames} frames over "
        f"{frames.start_h[0] / MIN_TO_H:g}-{frames.end_h[-1] / MIN_TO_H:g} min, "
        f"sensitivity {args.sensitivity:g} cps/MBq"
    )
    return TracerDesign(grid, radius, scanner, frames, ts * MIN_TO_H, label)


def tracer_case(i: int, design: TracerDesign, seed: int) -> Case:
    grid = design.grid
    maps = synthetic_tumour(grid, jax.random.key(i), radius_mm=design.radius_mm)
    tumour = np.asarray(maps.tumour)
    viable = tumour & ~np.asarray(maps.necrosis)
    perfusion = np.asarray(maps.perfusion_per_h)
    cell = np.asarray(maps.cellularity)
    model = fdg_model(
        grid,
        FengInput.fdg_reference(UCI_TO_MBQ * PLASMA_SCALE),
        perfusion=perfusion / perfusion[tumour].mean(),
        hexokinase=np.where(tumour, cell / cell[viable].mean(), BACKGROUND_HEXOKINASE),
        diffusivity_mm2_per_h=tracer_diffusivity_mm2_per_h(FDG_MOLAR_MASS_G_PER_MOL)
        * np.asarray(maps.diffusivity_scale),
    )
    ts = design.sample_times_h

    def forward(theta):
        params = TracerParams(
            perfusion_scale=theta["perfusion_scale"],
            trapping_scale=theta["trapping_scale"],
            diffusivity_scale=theta["diffusivity_scale"],
        )
        # throw=False and a modest step budget: a proposal far in the tails fails fast and is
        # rejected (-inf log-density); forward adjoint for fit_tissue's forward-mode gradients.
        # rtol 1e-5 is far below the Poisson noise (8-20 % per voxel and frame) and saves a
        # quarter of the steps of 1e-6.
        act = simulate_tracer(
            model, params, ts, rtol=1e-5, atol=1e-8, max_steps=4096, throw=False, adjoint="forward"
        )
        return simulate_image(
            ts, act.total, grid, design.scanner, design.frames, decay_corrected=True
        )

    rng = np.random.default_rng([seed, i])
    truth = _draw_truth(TRACER_PRIORS, rng)
    mu = forward(_theta(truth))
    key = jax.random.fold_in(jax.random.key(seed), i)
    counts = np.asarray(poisson_image(key, mu))
    last = np.asarray(mu[-1])
    note = f"expected counts in the last frame: mean {last.mean():.0f}, max {last.max():.0f}"
    return Case(i, truth, counts, forward, note)


# ---- B ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class GrowthDesign:
    grid: Grid
    times_h: np.ndarray  # 0 (the seed) then the scans
    voxel_ratio: int
    cv: float
    label: str


def growth_design(args) -> GrowthDesign:
    n = args.growth_cells
    grid = Grid((n, n), 1.0)
    times = np.concatenate([[0.0], np.asarray(SCAN_DAYS) * 24.0])
    label = (
        f"grid {n}x{n} x 1 mm, scans at days {', '.join(f'{d:g}' for d in SCAN_DAYS)}, "
        f"blur FWHM {MRI_FWHM_MM:g} mm, voxels {VOXEL_MM:g} mm, lognormal CV {args.growth_cv:g}"
    )
    return GrowthDesign(grid, times, round(VOXEL_MM / 1.0), args.growth_cv, label)


def growth_case(i: int, design: GrowthDesign, seed: int) -> Case:
    grid = design.grid
    extent = grid.extent_mm[0]
    maps = synthetic_tumour(
        grid,
        jax.random.key(i),
        radius_mm=0.45 * extent,
        necrotic_radius_mm=0.0,
        fibrosis_fraction=0.3,
        fibrotic_diffusivity_scale=FIBROTIC_MOTILITY,
    )
    rng = np.random.default_rng([seed, 10_000 + i])
    centre = 0.5 * extent + rng.uniform(-SEED_OFFSET_MM, SEED_OFFSET_MM, size=2)
    x, y = grid.coordinates_mm()
    n0 = SEED_DENSITY * np.exp(-((x - centre[0]) ** 2 + (y - centre[1]) ** 2) / (2 * SEED_SD_MM**2))
    # The model splits a D map into a scalar D0 times a map of maximum 1; the fit replaces D0
    # (a traced scalar) by theta * top, where top is D0 of the relative map (1 here).
    base = TumourGrowthPDE(
        grid,
        diffusivity_mm2_per_h=np.asarray(maps.diffusivity_scale),
        proliferation_rate_per_h=GROWTH_PRIORS["proliferation_rate_per_h"][0],
    )
    top = float(base.diffusivity_mm2_per_h)
    r, ts = design.voxel_ratio, design.times_h
    nv = grid.shape[0] // r

    def forward(theta):
        model = eqx.tree_at(
            lambda m: (m.diffusivity_mm2_per_h, m.proliferation_rate_per_h),
            base,
            (theta["diffusivity_mm2_per_h"] * top, theta["proliferation_rate_per_h"]),
        )
        # Tsit5: motility on 1 mm cells is not stiff (4 D / h^2 ~ 0.02 /h).
        dens = simulate_growth(
            model,
            n0,
            ts,
            method="adaptive",
            rtol=1e-6,
            atol=1e-9,
            max_steps=4096,
            throw=False,
            adjoint="forward",
        )[1:]
        img = blur(dens, (MRI_FWHM_MM, MRI_FWHM_MM), grid.spacing_mm)
        vox = img.reshape(img.shape[0], nv, r, nv, r).mean(axis=(2, 4))
        return MRI_BACKGROUND + vox

    truth = _draw_truth(GROWTH_PRIORS, rng)
    mu = np.asarray(forward(_theta(truth)))
    s = math.sqrt(math.log1p(design.cv**2))
    data = mu * np.exp(s * rng.standard_normal(mu.shape))
    front = 2.0 * math.sqrt(truth["diffusivity_mm2_per_h"] * truth["proliferation_rate_per_h"])
    note = f"front speed {24 * front:.3f} mm/day; last-scan peak {mu[-1].max():.2f}"
    return Case(i, truth, data, forward, note)


# ---- fitting and tables ----------------------------------------------------------------------


def _rhat(post: TissuePosterior, name: str) -> float:
    x = np.asarray(post.samples[name])
    if x.shape[0] == 1:  # one chain: R-hat of its two halves
        x = x[:, : x.shape[1] // 2 * 2].reshape(2, -1)
    return float(az.rhat(x, method="rank"))


def fit_case(case: Case, priors, method: str, args, likelihood: str, cv=None) -> dict:
    post = fit_tissue(
        case.forward,
        priors,
        case.data,
        likelihood=likelihood,
        cv=cv,
        method=method,
        num_chains=args.chains,
        num_warmup=args.warmup,
        num_samples=args.samples,
        svi_steps=args.svi_steps,
        seed=case.index,
    )
    rec = {
        "tumour": case.index,
        "method": method,
        "wall_time_s": post.provenance["wall_time_s"],
        "data_sha256": hashlib.sha256(np.ascontiguousarray(case.data).tobytes()).hexdigest(),
        "note": case.note,
        "parameters": {},
    }
    summ = post.summary()
    for name, (_, pcv) in priors.items():
        lo, hi = post.interval(name, args.level)
        logd = np.log(post.draws(name))
        truth = case.truth[name]
        rec["parameters"][name] = {
            "truth": truth,
            "q5": summ[name]["q5"],
            "q50": summ[name]["q50"],
            "q95": summ[name]["q95"],
            "lower": lo,
            "upper": hi,
            "covered": bool(lo <= truth <= hi),
            # the truth's quantile in the posterior: uniform over tumours when calibrated
            "pit": float(np.mean(logd < math.log(truth))),
            "sd_ratio": float(np.std(logd, ddof=1) / math.sqrt(math.log1p(pcv * pcv))),
            "abs_log_error": abs(math.log(summ[name]["q50"] / truth)),
        }
    if method == "nuts":
        d = post.diagnostics
        rec["divergences"] = d.divergences
        rec["rhat"] = {n: _rhat(post, n) for n in priors}
        rec["ess_bulk"] = dict(d.ess_bulk)
        rec["messages"] = list(d.messages)
    else:
        rec["final_loss"] = float(np.asarray(post.losses)[-1])
    return rec


def band(n: int, level: float, band_level: float) -> tuple[float, float]:
    """Central `band_level` binomial interval of the coverage rate of n intervals at `level`."""
    a = (1.0 - band_level) / 2.0
    lo, hi = scipy.stats.binom.ppf([a, 1.0 - a], n, level) / n
    return float(lo), float(hi)


def table(records: list[dict], priors, args) -> tuple[str, dict, bool]:
    """The coverage table of one part and engine, its numbers, and whether all are in band."""
    n = len(records)
    lo, hi = band(n, args.level, args.band)
    method = records[0]["method"]
    nuts = method == "nuts"
    rows = [
        f"{method.upper()}: {n} tumours, nominal {100 * args.level:g} % intervals, "
        f"{100 * args.band:g} % binomial band [{100 * lo:.1f}, {100 * hi:.1f}] %",
        f"  {'parameter':<26}{'covered':>9}{'rate':>8}{'':4}{'sd post/prior':>14}"
        f"{'|log err|':>11}{'KS p':>8}" + (f"{'R-hat max':>11}" if nuts else ""),
    ]
    out, ok_all = {"band": [lo, hi], "parameters": {}}, True
    for name in priors:
        p = [r["parameters"][name] for r in records]
        k = sum(q["covered"] for q in p)
        rate = k / n
        ok = lo <= rate <= hi
        ok_all &= ok
        ratio = float(np.median([q["sd_ratio"] for q in p]))
        err = float(np.median([q["abs_log_error"] for q in p]))
        ks = float(scipy.stats.kstest([q["pit"] for q in p], "uniform").pvalue)
        row = (
            f"  {name:<26}{f'{k}/{n}':>9}{100 * rate:>7.1f}%{'ok' if ok else 'OUT':>4}"
            f"{ratio:>14.3f}{err:>11.3f}{ks:>8.2f}"
        )
        out["parameters"][name] = dict(
            covered=k,
            rate=rate,
            inside_band=ok,
            median_sd_ratio=ratio,
            median_abs_log_error=err,
            pit_ks_pvalue=ks,
        )
        if nuts:
            rmax = max(r["rhat"][name] for r in records)
            row += f"{rmax:>11.3f}"
            out["parameters"][name]["rhat_max"] = rmax
        rows.append(row)
    walls = np.asarray([r["wall_time_s"] for r in records])
    out["wall_time_s"] = dict(
        first=float(walls[0]), median=float(np.median(walls)), total=float(walls.sum())
    )
    line = (
        f"  wall time per fit: median {np.median(walls):.1f} s, first {walls[0]:.1f} s, "
        f"total {walls.sum():.0f} s (each fit compiles its sampler)"
    )
    if nuts:
        div = int(sum(r["divergences"] for r in records))
        rmax = max(max(r["rhat"].values()) for r in records)
        emin = min(min(r["ess_bulk"].values()) for r in records)
        out.update(divergences=div, rhat_max=rmax, ess_bulk_min=emin)
        rows.append(
            f"  divergences {div} (in {sum(r['divergences'] > 0 for r in records)} "
            f"fits); R-hat max {rmax:.3f}; bulk ESS min {emin:.0f}"
        )
    rows.append(line)
    return "\n".join(rows), out, ok_all


def run_part(part: str, label: str, priors, make_case, args, likelihood: str, cv=None):
    methods = ["nuts"] + (["svi"] if args.svi else [])
    print(f"\n== {part} ==\n{label}", flush=True)
    if "nuts" in methods:
        print(f"NUTS {args.chains} chain(s) x ({args.warmup} + {args.samples})", flush=True)
    records = {m: [] for m in methods}
    for i in range(args.tumours):
        case = make_case(i)
        truth = ", ".join(f"{k} {v:.4g}" for k, v in case.truth.items())
        print(f"tumour {i}: truth {truth}; {case.note}", flush=True)
        for m in methods:
            rec = fit_case(case, priors, m, args, likelihood, cv)
            records[m].append(rec)
            q = "; ".join(
                f"{k} [{v['q5']:.4g}, {v['q50']:.4g}, {v['q95']:.4g}]"
                + ("" if v["covered"] else " MISS")
                for k, v in rec["parameters"].items()
            )
            extra = (
                f", {rec['divergences']} div, R-hat {max(rec['rhat'].values()):.3f}"
                if m == "nuts"
                else ""
            )
            print(f"  {m}: {q} ({rec['wall_time_s']:.1f} s{extra})", flush=True)
    tables, ok_all = {}, True
    print()
    for m in methods:
        text, nums, ok = table(records[m], priors, args)
        print(text, flush=True)
        tables[m] = nums
        ok_all &= ok
    return {
        "design": label,
        "priors": {k: list(v) for k, v in priors.items()},
        "fits": records,
        "tables": tables,
    }, ok_all


def _finite(x):
    """JSON-safe: NaN and infinities (e.g. R-hat of a constant chain) become null."""
    if isinstance(x, dict):
        return {k: _finite(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_finite(v) for v in x]
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return x


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--part", choices=("A", "B", "both"), default="both")
    ap.add_argument("--tumours", type=int, default=20, help="synthetic tumours per part")
    ap.add_argument("--quick", action="store_true", help="3 tumours, small grids, few draws")
    ap.add_argument("--svi", action="store_true", help="also fit with SVI")
    ap.add_argument("--chains", type=int, default=2)
    ap.add_argument("--warmup", type=int, default=250)
    ap.add_argument("--samples", type=int, default=250)
    ap.add_argument("--svi-steps", type=int, default=2000)
    ap.add_argument("--seed", type=int, default=0, help="seed of the truths and the noise")
    ap.add_argument("--level", type=float, default=0.9, help="credible level")
    ap.add_argument("--band", type=float, default=0.99, help="binomial band level")
    ap.add_argument("--cells", type=int, default=16, help="A: cells per axis")
    ap.add_argument("--cell-mm", type=float, default=1.0, help="A: cell size (mm)")
    ap.add_argument("--psf-fwhm-mm", type=float, default=4.0)
    ap.add_argument("--sensitivity", type=float, default=2000.0, help="A: cps per MBq")
    ap.add_argument("--frames", choices=("dynamic", "static"), default="dynamic")
    ap.add_argument("--growth-cells", type=int, default=24, help="B: 1-mm cells per axis")
    ap.add_argument("--growth-cv", type=float, default=0.1, help="B: lognormal noise CV")
    ap.add_argument("--json", type=Path, default=None, help="write all results here")
    args = ap.parse_args(argv)
    if args.quick:
        args.tumours, args.cells, args.cell_mm, args.growth_cells = 3, 8, 1.0, 16
        args.chains, args.warmup, args.samples, args.svi_steps = 1, 100, 100, 1000
    if args.tumours < 1 or args.chains < 1:
        ap.error("--tumours and --chains must be >= 1")

    t0 = time.perf_counter()
    results, ok_all = {}, True
    if args.part in ("A", "both"):
        d = tracer_design(args)
        res, ok = run_part(
            "A. FDG tracer twin from PET frames (Poisson counts)",
            d.label,
            TRACER_PRIORS,
            lambda i: tracer_case(i, d, args.seed),
            args,
            "poisson",
        )
        results["A_tracer"], ok_all = res, ok_all and ok
    if args.part in ("B", "both"):
        g = growth_design(args)
        res, ok = run_part(
            "B. Growth twin from sparse scans (lognormal)",
            g.label,
            GROWTH_PRIORS,
            lambda i: growth_case(i, g, args.seed),
            args,
            "lognormal",
            cv=args.growth_cv,
        )
        results["B_growth"], ok_all = res, ok_all and ok
    wall = time.perf_counter() - t0
    print(f"\nwall time {wall:.0f} s; verdict: {'PASS' if ok_all else 'FAIL'}", flush=True)
    if args.json is not None:
        arguments = {k: str(v) for k, v in vars(args).items()}
        doc = {
            "results": results,
            "verdict": "pass" if ok_all else "fail",
            "provenance": {
                "twinjax_version": twinjax.__version__,
                "jax_version": jax.__version__,
                "script": "validation/tissue_calibration.py",
                "arguments": arguments,
                "config_sha256": hashlib.sha256(
                    json.dumps(arguments, sort_keys=True).encode()
                ).hexdigest(),
                "seed": args.seed,
                "wall_time_s": round(wall, 1),
                "written_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            },
        }
        args.json.parent.mkdir(parents=True, exist_ok=True)
        _atomic_write(args.json, json.dumps(_finite(doc), indent=1).encode())
        print(f"results in {args.json}")
    return 0 if ok_all else 1


if __name__ == "__main__":
    sys.exit(main())
