"""In-silico trial benchmark: virtual patients per second through the full chain PBPK -> TIA ->
dose -> BED -> NTCP/TCP with `twinjax.cohort.run_trial` on 1 and on 8 (forced) CPU devices,
and on the accelerators when JAX has any, against a Python loop of SciPy `solve_ivp`.

Virtual patients of the reduced [177Lu]Lu-PSMA-617 PBPK (`psma617_reduced`, 25 compartments)
are drawn with `virtual_cohort`; scenarios: one administration of 7.4 or 6.0 GBq (96 nmol
ligand). Regions: kidneys (LKB NTCP), salivary glands (LKB NTCP), the lumped tumour (0.4 kg,
prostate-cancer TCP). twinjax runs each device setting in a fresh process (the device count is
fixed when JAX starts): one warm-up trial of one chunk compiles, the timed trial runs `--n`
patients. SciPy solves the same augmented ODE (hot, cold, cumulated ligand and the repair
integrals D, q, J per region) patient by patient with `solve_ivp` (BDF and LSODA,
finite-difference Jacobians), closes the tail as `bed_from_model` does and computes BED, EQD2,
NTCP and TCP in NumPy; its doses and BEDs are compared with twinjax's for the same patients.

    python benchmarks/cohort.py                        # 64 patients x 2 scenarios, SciPy on 4
    python benchmarks/cohort.py --n 256 --subset 8
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time

import numpy as np

RTOL, ATOL = 1e-6, 1e-9
ACTIVITIES_MBQ = (7400.0, 6000.0)
LIGAND_NMOL = 96.0
TUMOUR_KG = 0.4
SEED = 2026


def setup():
    import twinjax
    from twinjax.forecast import Region, Scenario
    from twinjax.radiobiology import tissue

    tpl = twinjax.load_template("psma617_reduced")
    scenarios = [
        Scenario(f"{a / 1000:g} GBq", twinjax.Schedule.single(a, ligand_nmol=LIGAND_NMOL))
        for a in ACTIVITIES_MBQ
    ]
    regions = {
        "kidneys": Region(tissue("kidney")),
        "salivary_glands": Region(tissue("salivary_glands")),
        "tumour": Region(tissue("prostate_cancer"), mass_kg=TUMOUR_KG, kind="tumour"),
    }
    return tpl, scenarios, regions


def worker(n: int, chunk: int | None, subset: int) -> None:
    """One device setting (this process's JAX devices): prints a JSON line."""
    import jax

    from twinjax.cohort import run_trial, virtual_cohort

    tpl, scenarios, regions = setup()
    mesh = "auto" if jax.device_count() > 1 else None
    kw = {"chunk_size": chunk, "mesh": mesh, "rtol": RTOL, "atol": ATOL}
    if chunk is None:  # run_trial's default: 32 units per CPU device, 512 per accelerator
        chunk = jax.device_count() * (32 if jax.default_backend() == "cpu" else 512)
    t0 = time.perf_counter()  # warm-up: one chunk of the timed run's shape compiles
    run_trial(virtual_cohort(tpl, min(chunk, n), seed=SEED + 1), scenarios, regions, **kw)
    t_warm = time.perf_counter() - t0
    cohort = virtual_cohort(tpl, n, seed=SEED)
    t0 = time.perf_counter()
    trial = run_trial(cohort, scenarios, regions, **kw)
    t_run = time.perf_counter() - t0
    s = trial.summary()
    first = scenarios[0].name
    out = {
        "platform": jax.devices()[0].platform,
        "device_kind": jax.devices()[0].device_kind,
        "devices": jax.device_count(),
        "n": n,
        "chunk": trial.provenance["chunk_size"],
        "t_warm": t_warm,
        "t_run": t_run,
        "values": {
            r: {q: trial.values[r][q][:subset].tolist() for q in ("dose_Gy", "bed_Gy")}
            for r in regions
        },
        "kidney_bed_median": s[first]["kidneys"]["bed_Gy"]["median"],
        "kidney_bed_within_40": s[first]["kidneys"]["bed_limits"][0]["fraction"],
        "salivary_bed_median": s[first]["salivary_glands"]["bed_Gy"]["median"],
        "tumour_bed_median": s[first]["tumour"]["bed_Gy"]["median"],
    }
    print(json.dumps(out))


def run_worker(label: str, env_extra: dict, args) -> dict | None:
    env = {**os.environ, **env_extra}
    if "XLA_FLAGS" not in env_extra:
        env.pop("XLA_FLAGS", None)
    cmd = [sys.executable, __file__, "--worker", "--n", str(args.n), "--subset", str(args.subset)]
    if args.chunk is not None:
        cmd += ["--chunk", str(args.chunk)]
    p = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=1800)
    if p.returncode != 0:
        print(f"{label}: failed\n{p.stderr[-3000:]}")
        return None
    return json.loads(p.stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------------------- SciPy peer
def scipy_chain(model, params, schedule, regions, s_w, s_phys, vols_cm3, method):
    """The chain for one patient and one schedule with solve_ivp: per region dose, BED, EQD2,
    NTCP (organs with LKB) and TCP (tumours), in NumPy."""
    import jax
    from ode_cohort import scipy_rhs
    from scipy.integrate import solve_ivp
    from scipy.stats import norm

    n = model.n_compartments
    lam, mbq = schedule.decay_constant_per_h, schedule.mbq_per_nmol
    names = list(regions)
    k = len(names)
    c = np.zeros((k, n))
    for i, r in enumerate(names):
        for g in regions[r]["groups"]:
            c[i, np.asarray(model.group(g))] = 1.0
    w = mbq * s_w[:, None] * c
    ab = np.array([regions[r]["tissue"].alpha_beta_Gy for r in names])
    mu = np.log(2.0) / np.array([regions[r]["tissue"].repair_half_time_h for r in names])
    base = scipy_rhs(model, params, lam)

    def rhs(t, y):
        hot, q = y[:n], y[3 * n + k : 3 * n + 2 * k]
        r = w @ hot
        return np.concatenate([base(t, y[: 3 * n]), r, r - mu * q, r * q])

    e = model.dose_vector()
    times = np.asarray(schedule.time_h)
    t_end = times[-1] + 10.0 * np.log(2.0) / lam
    y = np.zeros(3 * n + 3 * k)
    for i, t0 in enumerate(times):
        y[:n] += float(schedule.hot_nmol[i]) * e
        y[n : 2 * n] += float(schedule.cold_nmol[i]) * e
        t1 = times[i + 1] if i + 1 < len(times) else t_end
        sol = solve_ivp(rhs, (t0, t1), y, method=method, rtol=RTOL, atol=ATOL)
        if not sol.success:
            raise RuntimeError(f"solve_ivp {method}: {sol.message}")
        y = sol.y[:, -1]
    hot, cum = y[:n], y[2 * n : 3 * n]
    dose, q, j = y[3 * n : 3 * n + k], y[3 * n + k : 3 * n + 2 * k], y[3 * n + 2 * k :]
    rates = model.prepare(params)
    m = np.asarray(jax.device_get(rates.matrix(y[:n] + y[n : 2 * n]))) - lam * np.eye(n)
    tail = -np.linalg.solve(m, hot)
    dose = dose + w @ tail
    tia = mbq * (c @ (cum + tail))
    r_end = w @ hot
    k_eff = np.maximum(-(w @ (m @ hot)) / r_end, lam)
    j = j + r_end * q / (k_eff + mu) + r_end**2 / (2.0 * k_eff * (k_eff + mu))
    bed = dose + 2.0 * j / ab
    eqd2 = bed / (1.0 + 2.0 / ab)
    out = {}
    gl_x, gl_w = np.polynomial.legendre.leggauss(96)
    for i, r in enumerate(names):
        t = regions[r]["tissue"]
        res = {"dose_Gy": tia[i] * s_phys[i] + (dose[i] - tia[i] * s_w[i]), "bed_Gy": bed[i]}
        if t.lkb is not None:
            res["ntcp"] = norm.cdf((eqd2[i] - t.lkb.td50_Gy) / (t.lkb.m * t.lkb.td50_Gy))
        if t.alpha_per_Gy is not None and t.clonogen_density_per_cm3 is not None:
            a, sd = t.alpha_per_Gy, t.alpha_sd_per_Gy or 0.0
            x, wt = np.array([a]), np.ones(1)  # individual TCP, or the population's:
            if sd > 0:  # truncated normal alpha, Gauss-Legendre on mean +- 8 SD (as tcp())
                lo, hi = max(a - 8 * sd, 0.0), a + 8 * sd
                x = 0.5 * (hi - lo) * gl_x + 0.5 * (hi + lo)
                wt = gl_w * np.exp(-0.5 * ((x - a) / sd) ** 2)
            ind = np.exp(-t.clonogen_density_per_cm3 * vols_cm3[i] * np.exp(-x * bed[i]))
            res["tcp"] = np.sum(wt * ind) / np.sum(wt)
        out[r] = res
    return out


def scipy_peer(args, method: str):
    import jax

    from twinjax.cohort import virtual_cohort
    from twinjax.dosimetry import reference_mass_kg, sphere_s_value

    tpl, scenarios, regions = setup()
    cohort = virtual_cohort(tpl, args.n, seed=SEED)  # the same patients as the workers'
    masses = np.array([reg.mass_kg or reference_mass_kg(r) for r, reg in regions.items()])
    spec = {r: {"groups": tpl.roi(r), "tissue": reg.tissue} for r, reg in regions.items()}
    model = tpl.model
    results = []
    t0 = time.perf_counter()
    for i in range(args.subset):
        p = {k: float(v[i]) for k, v in cohort.params.items()}
        params = {k: float(v) for k, v in jax.device_get(tpl.derive(p)).items()}
        row = []
        for sc in scenarios:
            nuc = sc.schedule.nuclide
            s_w = np.array([float(sphere_s_value(nuc, m, rbe_alpha=5.0)) for m in masses])
            s_phys = np.array([float(sphere_s_value(nuc, m)) for m in masses])
            row.append(scipy_chain(model, params, sc.schedule, spec, s_w, s_phys,
                                   masses * 1e3, method))  # fmt: skip
        results.append(row)
    return time.perf_counter() - t0, results


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=64, help="virtual patients per timed trial")
    ap.add_argument(
        "--chunk", type=int, default=None, help="run_trial chunk_size (default: its own)"
    )
    ap.add_argument("--subset", type=int, default=4, help="patients solved by SciPy")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        worker(args.n, args.chunk, args.subset)
        return

    import jax

    k = len(ACTIVITIES_MBQ)
    load0 = os.getloadavg()[0]
    runs = {
        "CPU, 1 device": run_worker("cpu1", {"JAX_PLATFORMS": "cpu"}, args),
        "CPU, 8 forced devices (NPROC=16)": run_worker(
            "cpu8",
            # NPROC: XLA:CPU's intra-op pool, larger than the device count (twinjax.cohort docs:
            # jaxlib's batched LU blocks pool threads; 8 devices on a 2-thread pool deadlock).
            {
                "JAX_PLATFORMS": "cpu",
                "NPROC": "16",
                "XLA_FLAGS": "--xla_force_host_platform_device_count=8",
            },
            args,
        ),
    }
    backend = jax.default_backend()
    if backend != "cpu":
        runs[f"{backend.upper()}, {jax.device_count()} device(s)"] = run_worker(backend, {}, args)
    peers = {m: scipy_peer(args, m) for m in ("BDF", "LSODA")}

    print(
        f"In-silico trial benchmark: psma617_reduced, {k} scenarios ({', '.join(f'{a / 1000:g}' for a in ACTIVITIES_MBQ)} GBq), "
        f"regions kidneys, salivary glands, tumour; rtol={RTOL:g}, atol={ATOL:g}"
    )
    print(
        f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"jax {jax.__version__}; accelerators: {'none' if backend == 'cpu' else backend}; "
        f"load average {load0:.1f} before, {os.getloadavg()[0]:.1f} after"
    )
    ref = runs["CPU, 1 device"]
    thr1 = None if ref is None else ref["n"] / ref["t_run"]
    for label, r in runs.items():
        if r is None:
            continue
        thr = r["n"] / r["t_run"]
        same = ""
        if ref is not None and r is not ref:  # the same patients' doses and BEDs
            diff = max(
                np.max(np.abs(np.subtract(v, ref["values"][reg][q])) / np.abs(v))
                for reg, qs in r["values"].items()
                for q, v in qs.items()
            )
            same = f"; max rel. difference from 1 device {diff:.1e}"
        print(
            f"twinjax {label:33s}: {r['n']} patients x {k} scenarios in {r['t_run']:.2f} s "
            f"(warm-up with compile {r['t_warm']:.1f} s, chunk {r['chunk']}) -> {thr:.2f} "
            f"patients/s ({thr * k:.2f} patient-scenarios/s){same}"
        )
    if ref is not None:
        print(
            f"trial (7.4 GBq): kidney BED median {ref['kidney_bed_median']:.2f} Gy, "
            f"{100 * ref['kidney_bed_within_40']:.0f} % within 40 Gy; salivary BED median "
            f"{ref['salivary_bed_median']:.2f} Gy; tumour BED median {ref['tumour_bed_median']:.2f} Gy"
        )
    for method, (t, res) in peers.items():
        thr = args.subset / t
        err = 0.0
        if ref is not None:
            for i, row in enumerate(res):
                for j, out in enumerate(row):
                    for r, qs in out.items():
                        for q in ("dose_Gy", "bed_Gy"):
                            tj = ref["values"][r][q][i][j]
                            err = max(err, abs(qs[q] - tj) / abs(tj))
        ratio = f"ratio twinjax (1 CPU device)/scipy = {thr1 / thr:.1f}x; " if thr1 else ""
        print(
            f"scipy {method:5s} loop: {args.subset} patients x {k} scenarios in {t:.2f} s -> "
            f"{thr:.3f} patients/s; {ratio}max rel. difference of dose and BED {err:.1e}"
        )


if __name__ == "__main__":
    main()
