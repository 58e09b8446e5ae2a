"""ODE cohort benchmark: twinjax (one vmap-ed, jit-compiled call) vs a loop of SciPy solve_ivp.

Virtual patients of the reduced [177Lu]Lu-PSMA-617 PBPK (`psma617_reduced`, 25 compartments,
75 states: hot, cold and cumulated ligand) are drawn from the template's population variability
and given one 7.4 GBq administration. twinjax solves all of them in one `jax.vmap`-ed call
(Rodas4, PI step control); SciPy solves a subset one by one with `solve_ivp` (LSODA and BDF,
finite-difference Jacobians, the usual way it is called), on the same right-hand side, with the
same tolerances. Outputs compared: organ activities at the scan times and the cumulated activities
at the last time. Throughput (patients per second) and the ratio are printed.

    python benchmarks/ode_cohort.py                    # 10,000 patients, SciPy on 20 of them
    python benchmarks/ode_cohort.py --n 500 --subset 5 # quick run
"""

from __future__ import annotations

import argparse
import os
import platform
import time

import jax
import jax.numpy as jnp
import numpy as np
from scipy.integrate import solve_ivp

import twinjax

RTOL, ATOL = 1e-6, 1e-9
TIMES = np.array([4.0, 24.0, 48.0, 96.0, 168.0])


def scipy_rhs(model, params, lam):
    """The same right-hand side as twinjax's ODE path, in NumPy."""
    rates = jax.tree_util.tree_map(np.asarray, model.prepare(params))
    a0 = rates.a0
    n = a0.shape[0]
    sat_src, sat_dst = np.asarray(rates.sat_src, int), np.asarray(rates.sat_dst, int)
    b_src, b_dst = np.asarray(rates.bind_src, int), np.asarray(rates.bind_dst, int)

    def apply(x, tot):
        dx = a0 @ x
        if len(sat_src):
            f = rates.sat_vmax / (rates.sat_km_amount + np.maximum(tot[sat_src], 0)) * x[sat_src]
            np.add.at(dx, sat_dst, f)
            np.add.at(dx, sat_src, -f)
        if len(b_src):
            free = np.maximum(rates.bind_capacity - tot[b_dst], 0.0)
            f = rates.bind_kon_per_volume * free * x[b_src]
            np.add.at(dx, b_dst, f)
            np.add.at(dx, b_src, -f)
        return dx

    def rhs(t, y):
        hot, cold = y[:n], y[n : 2 * n]
        tot = hot + cold
        return np.concatenate([apply(hot, tot) - lam * hot, apply(cold, tot) + lam * hot, hot])

    return rhs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=10_000, help="virtual patients for twinjax")
    ap.add_argument("--subset", type=int, default=20, help="patients solved by SciPy")
    args = ap.parse_args()

    tpl = twinjax.load_template("psma617_reduced")
    model = tpl.model
    sched = twinjax.Schedule.single(7400.0, ligand_nmol=96.0)
    lam = sched.decay_constant_per_h
    draws = tpl.sample_params(jax.random.key(2026), args.n)
    draws = {k: v for k, v in draws.items() if k in model.parameter_names}
    rois = ("kidneys", "salivary", "liver", "spleen", "tumour")

    def one(p):
        tr = twinjax.simulate(model, p, sched, TIMES, rtol=RTOL, atol=ATOL, tail_half_lives=0.0)
        acts = jnp.stack([tr.activity(r) for r in rois])
        return acts, tr.cumulated_hot_nmol_h[-1]

    batched = jax.jit(jax.vmap(one))
    t0 = time.perf_counter()
    compiled = batched.lower(draws).compile()
    t_compile = time.perf_counter() - t0
    t0 = time.perf_counter()
    acts, cum = jax.block_until_ready(compiled(draws))
    t_jax = time.perf_counter() - t0

    n = model.n_compartments
    e = model.dose_vector()
    y0 = np.concatenate([float(sched.hot_nmol[0]) * e, float(sched.cold_nmol[0]) * e, np.zeros(n)])
    groups = [np.asarray(model.group(r)) for r in rois]
    results = {}
    for method in ("LSODA", "BDF"):
        t0 = time.perf_counter()
        errs = []
        for i in range(args.subset):
            p = {k: v[i] for k, v in draws.items()}
            sol = solve_ivp(
                scipy_rhs(model, p, lam),
                (0.0, TIMES[-1]),
                y0,
                method=method,
                t_eval=TIMES,
                rtol=RTOL,
                atol=ATOL,
            )
            if not sol.success:
                raise RuntimeError(f"solve_ivp {method} failed on patient {i}: {sol.message}")
            hot = sol.y[:n].T * sched.mbq_per_nmol
            ref_acts = np.stack([hot[:, g].sum(1) for g in groups])
            ref_cum = sol.y[2 * n :, -1]
            rel = np.abs(np.asarray(acts[i]) - ref_acts) / np.maximum(np.abs(ref_acts), 1e-3)
            big = ref_cum > 1e-6 * ref_cum.max()
            rel_cum = np.abs(np.asarray(cum[i])[big] - ref_cum[big]) / ref_cum[big]
            errs.append(max(rel.max(), rel_cum.max()))
        results[method] = (time.perf_counter() - t0, max(errs))

    thr_jax = args.n / t_jax
    print(
        f"ODE cohort benchmark: psma617_reduced ({n} compartments, {3 * n} states), "
        f"rtol={RTOL:g}, atol={ATOL:g} nmol"
    )
    print(
        f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"jax {jax.__version__} on {jax.devices()[0].platform}"
    )
    print(
        f"twinjax vmap : {args.n} patients in {t_jax:.2f} s (compile {t_compile:.1f} s) "
        f"-> {thr_jax:.1f} patients/s"
    )
    for method, (t, err) in results.items():
        thr = args.subset / t
        print(
            f"scipy {method:5s}: {args.subset} patients in {t:.2f} s -> {thr:.2f} patients/s; "
            f"ratio twinjax/scipy = {thr_jax / thr:.1f}x; max rel. difference {err:.1e}"
        )


if __name__ == "__main__":
    main()
