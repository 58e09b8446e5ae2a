"""Virtual cohorts and in-silico trials: N virtual patients x K treatment scenarios (x S draws of
a hierarchical posterior) through the whole chain PBPK -> TIA -> dose -> BED -> NTCP/TCP, in
one vectorised, chunked and shardable computation.

```python
tpl = twinjax.load_template("psma617_reduced")
cohort = virtual_cohort(tpl, 10_000, seed=0, covariates={"weight_kg": weights})
trial = run_trial(cohort, scenarios, {"kidneys": Region(tissue("kidney")), ...}, mesh="auto")
trial.summary()                                          # per scenario: mean, median, 90 % interval
trial.fraction([("kidneys", "bed_Gy", "<=", 40.0)])     # patients within the kidney BED limit
```

**Cohorts.** [`virtual_cohort`][] draws patients from a template (lognormal between-patient
variability around the covariate-adjusted typical values, ``log theta = log typical(cov) +
sigma z``) or from a hierarchical [`twinjax.inference.CohortPosterior`][]: population
hyper-parameters (``mu``, ``omega``, the correlation) from the posterior, then patients from
them, ``log theta = log typical(cov) + mu + omega L eta``, as `fit_cohort`'s model. With
``draws=S`` every patient keeps its ``eta`` under S posterior draws, so a trial carries the
uncertainty of the population itself (an interval over draws of, e.g., the fraction of
patients within a limit).

**Computation.** Each unit (patient, draw) runs [`twinjax.radiobiology.bed_from_model`][]
(repair integrals in the model's ODE, exact G) for every scenario, then LKB NTCP for organs and
TCP for tumours, as [`twinjax.forecast.forecast`][] does for one patient. Scenarios with the
same structure (template, nuclide, number of administrations, infusions) are one compiled
function: their schedules (times, activities, ligand amounts) are a traced argument with a
leading scenario axis, so K scenarios compile once. Units are processed in chunks of
`chunk_size`; the last chunk is padded (with copies of the last unit) so one compiled shape
serves every chunk. At most two chunks are in flight (asynchronous dispatch of the next while
the previous one is copied to the host), which bounds device memory.

**Devices and hosts.** ``mesh="auto"`` shards the unit axis of every chunk over a 1-D
``jax.sharding.Mesh`` of ``jax.devices()`` (axis ``"patients"``, see [`patient_mesh`][]): the
chunk's arrays carry a ``NamedSharding`` and ``jax.jit`` partitions the computation (GSPMD);
each device solves its own units and the only collective is the all-reduce of the batched ODE
loop's "any unit still running" flag. Not ``shard_map``/``pmap``: values traced inside them
carry manual-axis types that Lineax's structure checks reject, so the implicit Diffrax solvers
fail there (``Kvaerno5`` with ``check_vma`` on or off; see `twinjax.inference._chains`), while
the GSPMD path runs every solver. Meshes with ``Explicit`` axes (``jax.make_mesh(...,
axis_types=(AxisType.Explicit,))``) break ``diffeqsolve`` on JAX 0.10.2 in the same way, so a
mesh given with them is rebuilt with ``Auto`` axes over the same devices.

On several hosts, call ``jax.distributed.initialize()`` in every process, then the same code
with the same seed: ``jax.devices()`` spans the hosts, every process builds its own devices'
shards of a chunk from its (identical) copy of the cohort (``jax.make_array_from_callback``) and
receives the full result (``process_allgather``).

CPU devices forced with ``--xla_force_host_platform_device_count`` (for tests) share XLA's
intra-op thread pool, whose size is the number of cores. jaxlib's batched LAPACK kernels (the
LU factorisations of the stiff solver, for matrices past ~60 x 60) split their batch over that
pool and block a pool thread until the parts finish; with as many devices running as there are
threads, every thread blocks and the process deadlocks (JAX 0.10.2, seen on `psma617_reduced`
with 8 devices on 2 cores). Setting ``NPROC`` (read by XLA:CPU for the pool size) to at least
twice the device count before JAX starts avoids it; `run_trial` warns otherwise.

Units: dose, BED, EQD2 Gy; TIA MBq h; mass kg; volume cm^3; probabilities in [0, 1].
"""

from __future__ import annotations

from ._cohort_draws import VirtualCohort as VirtualCohort
from ._cohort_draws import virtual_cohort as virtual_cohort
from ._cohort_result import TrialResult as TrialResult
from ._cohort_trial import _KERNELS as _KERNELS
from ._cohort_trial import _warn_cpu_pool as _warn_cpu_pool
from ._cohort_trial import patient_mesh as patient_mesh
from ._cohort_trial import run_trial as run_trial

__all__ = ["TrialResult", "VirtualCohort", "patient_mesh", "run_trial", "virtual_cohort"]
