"""PDE benchmark: one reaction-diffusion step and a 1-hour tracer simulation on 3-D grids, twinjax
(`Diffusion` + `solve_pde(method="explicit")`, jit-compiled) vs a vectorised NumPy stencil of the
same scheme, same maps, same steps; results compared, throughput printed as ratios.

Model (free tracer u and trapped tracer b in tissue, same units as the plasma input Cp, kBq/mL):

    du/dt = div(D grad u) + K1 Cp(t) - (k2 + k3) u
    db/dt = k3 u - k4 b

- D: a heterogeneous diffusivity map (mm^2/h), finite volume with harmonic-mean face values and
  no-flux domain boundaries (`twinjax.pde.Diffusion`).
- K1, k2, k3, k4 (1/h): [18F]FDG gray-matter rate constants of Reivich et al. (J Cereb Blood Flow
  Metab 1985;5:179-192): K1 = 0.095 mL/min/mL, k2 = 0.125, k3 = 0.069, k4 = 0.0055 /min, times 60.
  K1 and k3 vary cell by cell (lognormal maps); a necrotic core has K1 = k2 = k3 = 0.
- Cp(t): Feng's FDG plasma input function (Feng, Huang & Wang, Int J Biomed Comput
  1993;32:95-110), ``Cp = (A1 t - A2 - A3) exp(l1 t) + A2 exp(l2 t) + A3 exp(l3 t)`` with A1 =
  851.1225 uCi/mL/min, A2 = 21.8798, A3 = 20.8113 uCi/mL, l1 = -4.1339, l2 = -0.0104, l3 = -0.1191
  /min, converted here to h and kBq/mL (1 uCi = 37 kBq).
- Maps (synthetic, seeded): D = 0.3 mm^2/h x exp(0.5 z) (z a unit-variance Gaussian field of
  1 mm correlation length, clipped at +-3 sd; 0.3 mm^2/h = 0.83e-6 cm^2/s, the order of a small
  molecule in tissue, not a literature value); K1 x exp(0.4 z'), k3 x exp(0.3 z''); the core is a
  sphere of a quarter of the domain's edge in radius. Grid spacing 0.2 mm by default, so 64^3 is a
  12.8 mm cube and 128^3 a 25.6 mm cube.

Time stepping: Heun's method (what `solve_pde(method="explicit")` uses), fixed step ``dt = T / n``
with ``n = ceil(T (max_rate + max(k2 + k3)))``: the Gershgorin bound of the diffusion operator
(`Diffusion.max_rate_per_h`) plus the largest reaction rate, so every step is within Heun's
real-axis stability interval. Both sides step on the same time grid (the one `solve_pde` builds).

Measured, per grid size (median of `--repeats` timed calls after a warm-up; jit compile times
reported separately):

1. one right-hand-side evaluation and one Heun step (twinjax: a jit-compiled function of the
   twinjax right-hand side; NumPy: slicing with preallocated buffers, in-place ufuncs);
2. the full simulation of `--duration-h` (default 1 h): twinjax through `solve_pde` (Diffrax,
   `StepTo`) and through a `jax.lax.fori_loop` of the same Heun step; NumPy through a Python loop.

Throughput is cell-updates per second (cells x steps / s; for the RHS, cells / s per evaluation).
The final fields of every twinjax variant are compared with NumPy's: max |twinjax - numpy| over
the field's max |numpy| (rounding level: < 1e-12 in float64, ~1e-6 in float32).

Memory traffic is the compulsory traffic of the scheme (each array read or written once per
kernel; cells N, faces F ~ 3N per array set, words of 8 bytes in float64, 4 in float32):

- RHS: read u, b, the 3 face-rate arrays (F words), K1, k2 + k3, k3; write du/dt, db/dt
  -> 7 N + F words (about 10 N);
- Heun step, as two fused kernels: (1) the RHS at y, writing k1 (7 N + F); (2) the RHS at
  y + dt k1 formed on the fly from y and k1, writing y_new (9 N + F) -> 16 N + 2 F (about 22 N).

Twinjax's `Diffusion` also reads its boundary-rate array (all zeros for no-flux) and XLA may not
fuse everything, so the real traffic is higher: the figure is an effective bandwidth, comparable
across implementations and with the device's peak (printed as a fraction of `--peak-gbps` only on
a GPU).

    python benchmarks/pde_step.py                     # 64^3 and 128^3, float64
    python benchmarks/pde_step.py --quick             # 32^3 and 64^3
    python benchmarks/pde_step.py --float32 --json out.json
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

# twinjax enables float64 at import unless TWINJAX_X64=0: decide before JAX is imported.
if "--float32" in sys.argv[1:]:
    os.environ["TWINJAX_X64"] = "0"

import jax
import jax.numpy as jnp
import numpy as np
from scipy.ndimage import gaussian_filter

import twinjax
from twinjax.pde import Diffusion, Grid, solve_pde

# Reivich et al. 1985 (J Cereb Blood Flow Metab 5:179-192), [18F]FDG gray matter, /min -> /h.
K1_PER_H, K2_PER_H, K3_PER_H, K4_PER_H = 0.095 * 60, 0.125 * 60, 0.069 * 60, 0.0055 * 60
# Feng, Huang & Wang 1993 (Int J Biomed Comput 32:95-110) FDG input; uCi/mL -> kBq/mL, min -> h.
_UCI_TO_KBQ = 37.0
FENG_A1 = 851.1225 * _UCI_TO_KBQ * 60.0  # kBq/mL/h
FENG_A2, FENG_A3 = 21.8798 * _UCI_TO_KBQ, 20.8113 * _UCI_TO_KBQ  # kBq/mL
FENG_L1, FENG_L2, FENG_L3 = -4.1339 * 60.0, -0.0104 * 60.0, -0.1191 * 60.0  # 1/h
D_MEDIAN_MM2_PER_H = 0.3  # synthetic (module docs)
CORRELATION_MM = 1.0


def plasma_kbq_per_ml(t_h, xp=np):
    """Feng's FDG plasma input Cp(t) (kBq/mL), t in h; zero at t = 0."""
    return (
        (FENG_A1 * t_h - FENG_A2 - FENG_A3) * xp.exp(FENG_L1 * t_h)
        + FENG_A2 * xp.exp(FENG_L2 * t_h)
        + FENG_A3 * xp.exp(FENG_L3 * t_h)
    )


def tissue_maps(n: int, spacing_mm: float, seed: int):
    """Seeded synthetic maps on an n^3 grid: D (mm^2/h), K1, k2, k3 (1/h) (module docs)."""
    rng = np.random.default_rng(seed)

    def field():
        z = gaussian_filter(
            rng.standard_normal((n, n, n)), CORRELATION_MM / spacing_mm, mode="wrap"
        )
        return np.clip((z - z.mean()) / z.std(), -3.0, 3.0)

    d = D_MEDIAN_MM2_PER_H * np.exp(0.5 * field())
    k1 = K1_PER_H * np.exp(0.4 * field())
    k3 = K3_PER_H * np.exp(0.3 * field())
    k2 = np.full((n, n, n), K2_PER_H)
    x = (np.arange(n) + 0.5 - n / 2) * spacing_mm
    r = np.sqrt(x[:, None, None] ** 2 + x[None, :, None] ** 2 + x[None, None, :] ** 2)
    core = r < 0.25 * n * spacing_mm  # necrotic: no perfusion, no phosphorylation
    for m in (k1, k2, k3):
        m[core] = 0.0
    return d, k1, k2, k3


def step_grid(duration_h: float, dt_h: float) -> np.ndarray:
    """The step times `solve_pde(method="explicit")` builds for output times (0, duration)."""
    return np.unique(np.concatenate([np.arange(0.0, duration_h, dt_h), [0.0, duration_h]]))


# --------------------------------------------------------------------------------- twinjax side
def twinjax_rhs(t, y, args):
    """du/dt, db/dt of the tracer model with twinjax's diffusion operator."""
    op, k1, kout, k3 = args
    u, b = y
    du = op(u) + k1 * plasma_kbq_per_ml(t, jnp) - kout * u
    db = k3 * u - K4_PER_H * b
    return du, db


def twinjax_heun(t0, dt, y, args):
    """One Heun step, as Diffrax's `Heun` takes it: stages at t0 and t0 + dt, written into a
    stage buffer by a two-iteration loop. Written straight-line instead, XLA fuses the first
    stage into the second stage's stencil and recomputes it for every neighbour (1.9x slower
    at 64^3 on CPU, measured); the loop keeps each stage one kernel pass, as in Diffrax."""
    ks = jax.tree.map(lambda v: jnp.zeros((2, *v.shape), v.dtype), y)

    def stage(i, ks):
        c = i.astype(dt.dtype) * dt  # 0, then dt
        yi = jax.tree.map(lambda v, k: v + c * k[0], y, ks)
        return jax.tree.map(lambda kk, k: kk.at[i].set(k), ks, twinjax_rhs(t0 + c, yi, args))

    ks = jax.lax.fori_loop(0, 2, stage, ks)
    return jax.tree.map(lambda v, k: v + (0.5 * dt) * (k[0] + k[1]), y, ks)


# ----------------------------------------------------------------------------------- NumPy side
class NumpyTracer:
    """The same finite-volume scheme in NumPy: harmonic-mean face rates computed here from D,
    no-flux boundaries (no boundary faces), in-place updates into preallocated buffers."""

    def __init__(self, d, k1, k2, k3, spacing_mm: float, dtype):
        n = d.shape
        self.dtype = dtype
        self.faces, self.lo, self.hi, self.flux = [], [], [], []
        for a in range(3):
            lo = tuple(slice(0, -1) if i == a else slice(None) for i in range(3))
            hi = tuple(slice(1, None) if i == a else slice(None) for i in range(3))
            s = d[lo] + d[hi]
            hm = np.where(s > 0, 2.0 * d[lo] * d[hi] / np.where(s > 0, s, 1.0), 0.0)
            self.faces.append((hm / spacing_mm**2).astype(dtype))
            self.lo.append(lo)
            self.hi.append(hi)
            self.flux.append(np.empty(self.faces[-1].shape, dtype))
        self.k1, self.kout, self.k3 = (np.asarray(m, dtype) for m in (k1, k2 + k3, k3))
        self.work = np.empty(n, dtype)
        self.bufs = [np.empty(n, dtype) for _ in range(6)]  # k1 (u, b), k2 (u, b), y_pred (u, b)

    def rhs(self, t, u, b, du, db):
        du.fill(0.0)
        for f, lo, hi, fl in zip(self.faces, self.lo, self.hi, self.flux, strict=True):
            np.subtract(u[hi], u[lo], out=fl)
            fl *= f
            du[lo] += fl
            du[hi] -= fl
        cp = self.dtype(plasma_kbq_per_ml(float(t)))
        np.multiply(self.k1, cp, out=self.work)
        du += self.work
        np.multiply(self.kout, u, out=self.work)
        du -= self.work
        np.multiply(self.k3, u, out=db)
        np.multiply(b, self.dtype(K4_PER_H), out=self.work)
        db -= self.work

    def heun(self, t0, dt, u, b):
        """Advance (u, b) in place by one Heun step."""
        k1u, k1b, k2u, k2b, pu, pb = self.bufs
        self.rhs(t0, u, b, k1u, k1b)
        np.multiply(k1u, dt, out=pu)
        pu += u
        np.multiply(k1b, dt, out=pb)
        pb += b
        self.rhs(t0 + dt, pu, pb, k2u, k2b)
        half = self.dtype(0.5) * dt
        for y, p, q in ((u, k1u, k2u), (b, k1b, k2b)):
            p += q
            p *= half
            y += p

    def simulate(self, steps, u, b):
        for t0, t1 in itertools.pairwise(steps):
            self.heun(t0, t1 - t0, u, b)
        return u, b


# ------------------------------------------------------------------------------------- timing
def median_time(fn, repeats: int) -> float:
    fn()  # warm-up (caches, page faults; jit functions are compiled before this)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def compiled(fn, *args):
    t0 = time.perf_counter()
    c = jax.jit(fn).lower(*args).compile()
    return c, time.perf_counter() - t0


def rel_diff(a, ref) -> float:
    """max |a - ref| over max |ref|, the worse of the two species."""
    return max(
        float(np.max(np.abs(np.asarray(x, np.float64) - r)) / np.max(np.abs(r)))
        for x, r in zip(a, ref, strict=True)
    )


def run_size(n: int, args, dtype) -> dict:
    grid = Grid((n, n, n), args.spacing_mm)
    d, k1, k2, k3 = tissue_maps(n, args.spacing_mm, args.seed + n)
    op = Diffusion(grid, d)
    kout_max = float(np.max(k2 + k3))
    n_steps = math.ceil(args.duration_h * (op.max_rate_per_h + kout_max))
    dt = args.duration_h / n_steps
    steps = step_grid(args.duration_h, dt)
    n_steps = len(steps) - 1
    n_cells = grid.n_cells
    n_faces = sum(f.size for f in op.face_rate)
    word = np.dtype(dtype).itemsize
    bytes_rhs = (7 * n_cells + n_faces) * word
    bytes_step = (16 * n_cells + 2 * n_faces) * word

    # twinjax: arrays travel as jit arguments (closing over them would bake them into the HLO).
    jargs = (op, jnp.asarray(k1, dtype), jnp.asarray(k2 + k3, dtype), jnp.asarray(k3, dtype))
    zero = jnp.zeros(grid.shape, dtype)
    y0 = (zero, zero)
    t_mid = jnp.asarray(steps[n_steps // 2], dtype)
    dt_j = jnp.asarray(steps[n_steps // 2 + 1] - steps[n_steps // 2], dtype)
    times = np.array([0.0, args.duration_h])

    # solve_pde is called as users call it, outside jit: its explicit method needs concrete
    # output times to build the step grid, so it cannot sit inside `jax.jit`; Diffrax compiles
    # its loop on the first call (compile time = first call - median of the later calls).
    def sim_pde(y, a):
        ys = solve_pde(twinjax_rhs, y, times, method="explicit", dt_h=dt, args=a,
                       stability_rate_per_h=op.max_rate_per_h, max_steps=n_steps + 16)  # fmt: skip
        return jax.tree.map(lambda v: v[-1], ys)

    def sim_loop(y, a):
        ts = jnp.asarray(steps, dtype)
        return jax.lax.fori_loop(
            0, n_steps, lambda i, yy: twinjax_heun(ts[i], ts[i + 1] - ts[i], yy, a), y
        )

    rhs_c, c_rhs = compiled(twinjax_rhs, t_mid, y0, jargs)
    step_c, c_step = compiled(twinjax_heun, t_mid, dt_j, y0, jargs)
    t0 = time.perf_counter()
    jax.block_until_ready(sim_pde(y0, jargs))
    t_first_pde = time.perf_counter() - t0
    loop_c, c_loop = compiled(sim_loop, y0, jargs)

    def timed_sim(fn):
        out, ts = None, []
        for _ in range(args.sim_repeats):
            t0 = time.perf_counter()
            out = jax.block_until_ready(fn(y0, jargs))
            ts.append(time.perf_counter() - t0)
        return out, statistics.median(ts)

    y_pde, t_pde = timed_sim(sim_pde)
    c_pde = t_first_pde - t_pde
    y_loop, t_loop = timed_sim(loop_c)
    y_mid = y_loop  # single evaluations: at the final (non-trivial) state, t = mid-run
    t_rhs = median_time(lambda: jax.block_until_ready(rhs_c(t_mid, y_mid, jargs)), args.repeats)
    t_step = median_time(
        lambda: jax.block_until_ready(step_c(t_mid, dt_j, y_mid, jargs)), args.repeats
    )

    # NumPy.
    npy = NumpyTracer(d, k1, k2, k3, args.spacing_mm, dtype)
    u, b = np.zeros(grid.shape, dtype), np.zeros(grid.shape, dtype)
    steps_np = steps.astype(dtype)
    ts = []
    for _ in range(args.sim_repeats):
        u.fill(0.0)
        b.fill(0.0)
        t0 = time.perf_counter()
        npy.simulate(steps_np, u, b)
        ts.append(time.perf_counter() - t0)
    t_np_sim = statistics.median(ts)
    ref = (u.astype(np.float64), b.astype(np.float64))
    um, bm = (np.array(v) for v in y_mid)
    du, db = np.empty_like(um), np.empty_like(bm)
    tm, dtm = dtype(float(t_mid)), dtype(float(dt_j))
    t_np_rhs = median_time(lambda: npy.rhs(tm, um, bm, du, db), args.repeats)
    rhs_j = rhs_c(t_mid, y_mid, jargs)
    npy.rhs(tm, um, bm, du, db)
    rhs_diff = rel_diff(rhs_j, (du.astype(np.float64), db.astype(np.float64)))
    uu, bb = um.copy(), bm.copy()
    npy.heun(tm, dtm, uu, bb)
    step_diff = rel_diff(
        step_c(t_mid, dt_j, y_mid, jargs), (uu.astype(np.float64), bb.astype(np.float64))
    )
    t_np_step = median_time(lambda: npy.heun(tm, dtm, uu, bb), args.repeats)

    def row(t_jax, t_np, updates, nbytes, diff=None, compile_s=None):
        return {
            "twinjax_s": t_jax,
            "numpy_s": t_np,
            "twinjax_cell_updates_per_s": updates / t_jax,
            "numpy_cell_updates_per_s": updates / t_np,
            "ratio_twinjax_over_numpy": t_np / t_jax,
            "twinjax_GBps": nbytes / t_jax / 1e9,
            "numpy_GBps": nbytes / t_np / 1e9,
            "compile_s": compile_s,
            "max_rel_diff": diff,
        }

    return {
        "n": n,
        "cells": n_cells,
        "spacing_mm": args.spacing_mm,
        "steps": n_steps,
        "dt_h": dt,
        "max_rate_per_h": op.max_rate_per_h,
        "max_reaction_rate_per_h": kout_max,
        "bytes_per_rhs": bytes_rhs,
        "bytes_per_step": bytes_step,
        "rhs": row(t_rhs, t_np_rhs, n_cells, bytes_rhs, rhs_diff, c_rhs),
        "heun_step": row(t_step, t_np_step, n_cells, bytes_step, step_diff, c_step),
        "sim_solve_pde": row(
            t_pde, t_np_sim, n_cells * n_steps, bytes_step * n_steps, rel_diff(y_pde, ref), c_pde
        ),
        "sim_fori_loop": row(
            t_loop, t_np_sim, n_cells * n_steps, bytes_step * n_steps, rel_diff(y_loop, ref), c_loop
        ),
        "final_total_kBq": float((ref[0].sum() + ref[1].sum()) * grid.cell_volume_mL),
    }


def write_json(path: Path, payload: dict) -> None:
    """Atomically (temp file + rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "w") as fh:
        json.dump(payload, fh, indent=2)
        fh.write("\n")
    os.replace(tmp, path)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[64, 128], help="cells per edge")
    ap.add_argument("--quick", action="store_true", help="sizes 32 and 64")
    ap.add_argument("--spacing-mm", type=float, default=0.2)
    ap.add_argument("--duration-h", type=float, default=1.0, help="simulated time")
    ap.add_argument("--repeats", type=int, default=7, help="timed calls per single-step figure")
    ap.add_argument("--sim-repeats", type=int, default=1, help="timed full simulations per side")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--float32", action="store_true", help="single precision on both sides")
    ap.add_argument("--peak-gbps", type=float, default=4800.0, help="device peak (H200: 4800)")
    ap.add_argument("--json", type=Path, help="write the results here as JSON")
    args = ap.parse_args(argv)
    sizes = [32, 64] if args.quick else args.sizes
    dtype = np.float32 if args.float32 else np.float64
    if jnp.zeros(()).dtype != np.dtype(dtype):
        raise SystemExit(f"JAX computes in {jnp.zeros(()).dtype}, expected {np.dtype(dtype)}")

    dev = jax.devices()[0]
    backend = dev.platform
    on_gpu = backend == "gpu"
    load_before = os.getloadavg()[0]
    results = [run_size(n, args, dtype) for n in sizes]
    load_after = os.getloadavg()[0]

    print()
    print(
        "PDE benchmark: FDG-like tracer reaction-diffusion (free u, trapped b), heterogeneous D, "
        "no-flux, Heun at the stability-limited step; twinjax vs NumPy stencil, same scheme"
    )
    print(
        f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"jax {jax.__version__} on {backend} ({dev.device_kind}), numpy {np.__version__}, "
        f"twinjax {twinjax.__version__}, {np.dtype(dtype).name}; load average (1 min) "
        f"{load_before:.1f} before / {load_after:.1f} after"
    )
    print(
        "effective bandwidth = compulsory bytes / time: RHS 7N+F words, Heun step 16N+2F words "
        "(N cells, F faces); medians of "
        f"{args.repeats} calls (single evaluations), {args.sim_repeats} run(s) (simulations)"
    )
    peak_col = f"{'%peak':>7s}" if on_gpu else ""
    print()
    print(
        f"{'grid':>5s} {'what':28s}{'twinjax':>11s}{'cell-upd/s':>11s}{'numpy':>11s}"
        f"{'cell-upd/s':>11s}{'tj/np':>8s}{'GB/s tj':>9s}{peak_col}{'GB/s np':>9s}"
        f"{'compile':>9s}{'max rel diff':>13s}"
    )
    labels = {
        "rhs": "RHS evaluation",
        "heun_step": "Heun step",
        "sim_solve_pde": "{T:g} h, solve_pde ({s} steps)",
        "sim_fori_loop": "{T:g} h, fori_loop ({s} steps)",
    }
    for r in results:
        for key, lab in labels.items():
            x = r[key]
            peak = f"{100 * x['twinjax_GBps'] / args.peak_gbps:>6.1f}%" if on_gpu else ""
            diff = "" if x["max_rel_diff"] is None else f"{x['max_rel_diff']:.1e}"
            comp = f"{x['compile_s']:.2f}s"
            t_fmt = ".4f" if key in ("rhs", "heun_step") else ".2f"
            print(
                f"{r['n']:>4d}^3 {lab.format(T=args.duration_h, s=r['steps']):28s}"
                f"{x['twinjax_s']:>10{t_fmt}}s{x['twinjax_cell_updates_per_s']:>11.3g}"
                f"{x['numpy_s']:>10{t_fmt}}s{x['numpy_cell_updates_per_s']:>11.3g}"
                f"{x['ratio_twinjax_over_numpy']:>7.2f}x{x['twinjax_GBps']:>9.2f}{peak}"
                f"{x['numpy_GBps']:>9.2f}{comp:>9s}{diff:>13s}"
            )
        print(
            f"{'':6s}dt = {r['dt_h'] * 3600:.2f} s (max diffusion rate "
            f"{r['max_rate_per_h']:.1f}/h + "
            f"max reaction rate {r['max_reaction_rate_per_h']:.1f}/h), tracer in tissue at "
            f"{args.duration_h:g} h: {r['final_total_kBq']:.4g} kBq"
        )
    if on_gpu:
        print(f"%peak: twinjax effective bandwidth over --peak-gbps {args.peak_gbps:g} GB/s")
    print(
        "tj/np: NumPy time / twinjax time (higher is faster twinjax); max rel diff: "
        "max|twinjax - numpy| / max|numpy| of the final fields\n(RHS and step rows: of du/dt, "
        "db/dt and of one step from the same state)"
    )

    if args.json:
        payload = {
            "benchmark": "pde_step",
            "twinjax_version": twinjax.__version__,
            "jax_version": jax.__version__,
            "numpy_version": np.__version__,
            "backend": backend,
            "device_kind": dev.device_kind,
            "cpu_count": os.cpu_count(),
            "dtype": np.dtype(dtype).name,
            "seed": args.seed,
            "duration_h": args.duration_h,
            "peak_gbps": args.peak_gbps if on_gpu else None,
            "load_average_before_after": [load_before, load_after],
            "sizes": results,
        }
        write_json(args.json, payload)
        print(f"results written to {args.json}")


if __name__ == "__main__":
    main()
