"""Uncertainty studies and scan design: which parameters drive a dose, and when to scan next.

```python
e = dose_elasticities(kidney_dose, typical_params)          # d ln D / d ln theta, per parameter
s = sobol_indices(kidney_dose, prior, n=2048)                # first-order and total Sobol indices
plan = next_scan_time(post, np.arange(72.0, 337.0, 12.0))    # the scan that narrows the dose most
plan.best_time_h, plan.variance_reduction
```

**Local sensitivity.** [`dose_elasticities`][] differentiates the logarithm of each output with
respect to the logarithm of each parameter at one point: ``e_i = d ln D / d ln theta_i``, the
relative change of the dose per relative change of the parameter (a 1 % larger theta_i gives an
about e_i % larger dose). Elasticities are unit-free, so parameters of any unit compare.

**Global sensitivity.** [`sobol_indices`][] decomposes the variance of an output over independent
uncertain inputs (Sobol 2001, Math Comput Simul 55:271): the first-order index S_i is the share of
the variance explained by input i alone, the total index ST_i the share involving input i in any
interaction; ``sum S_i <= 1`` and ``ST_i >= S_i``. Estimators (Saltelli et al. 2010, Comput Phys
Commun 181:259, Table 2): from two independent sample matrices A and B (n rows each) and, for each
input i, the matrix A_B^(i) (A with column i taken from B),

    S_i  = mean((f(B) - f0) (f(A_B^(i)) - f(A))) / V   (Saltelli 2010, eq. b, centred)
    ST_i = mean((f(A) - f(A_B^(i)))^2) / (2 V)        (Jansen 1999)

with V the variance and f0 the mean of f over A and B (centring f(B) lowers the estimator's
variance without changing its limit): ``n (d + 2)`` evaluations in all. Intervals come from a
bootstrap over the rows. Over a template's prior (a [`PopulationPrior`][]) the inputs are its
independent standard-normal coordinates z, mapped to the physical parameters.

**Scan design (preposterior analysis).** [`next_scan_time`][] asks, for each candidate time t of
the next scan: if the twin scanned then, how small would the posterior variance of the target
dose be, on average over the data that scan could show? With the current posterior draws
theta_k (k = 1..n) and the observation model of the fit (lognormal region noise, a calibration
factor shared by the scan's regions), two estimators of this expected posterior variance
``EPV(t) = E_y[Var(D | data, y_t)]``:

- ``method="importance"`` (default): simulate data sets y_t from the predictive distribution
  (a draw theta_j, then noise), reweight the posterior draws by the likelihood of y_t
  (``w_k ~ p(y_t | theta_k)``: the updated posterior, by importance sampling from the current
  one) and average the weighted variance of D over the data sets. Consistent for any model; the
  effective sample size of the weights says how many draws carry an update.
- ``method="linear"``: the linear-Gaussian (Bayes linear) approximation on log activities,
  ``Var(D) - C_Dh (C_hh + Sigma)^-1 C_hD`` with the draws' covariances of D and the predicted
  log activities h and the noise covariance Sigma. Exact when D and h are jointly Gaussian; no
  data sets to simulate.

The best time is the candidate with the smallest EPV. The lower-level
[`expected_posterior_variance`][] takes the draws' target values and predicted activities as
arrays, for any model.

Units: time h, activity MBq, TIA MBq h, mass kg, dose Gy; elasticities and indices unit-free.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Literal

import jax
import jax.numpy as jnp
import numpy as np

from .._errors import InputError
from ..dosimetry import reference_mass_kg, sphere_s_value
from ..imaging.observe import LognormalError
from ..models._simulate import simulate
from .model import ATOL, RTOL
from .priors import PopulationPrior

__all__ = [
    "ScanDesign",
    "SobolIndices",
    "dose_elasticities",
    "expected_posterior_variance",
    "next_scan_time",
    "sobol_indices",
]

#: kg/L of soft tissue: a region's mass from its CT volume, as `twinjax.forecast` computes it
#: (`twinjax.forecast.SOFT_TISSUE_KG_PER_L`; not imported: forecasts sit above inference).
SOFT_TISSUE_KG_PER_L = 1.05


# ------------------------------------------------------------------------------ helpers
def _outputs(value) -> tuple[tuple[str, ...], jax.Array]:
    """Names and flat values of a function's output: a scalar ("value"), a 1-D array ("0",
    "1", ...) or a mapping of scalars (its keys, in order)."""
    if isinstance(value, Mapping):
        names = tuple(str(k) for k in value)
        vals = [jnp.asarray(v) for v in value.values()]
        if not vals or any(v.ndim != 0 for v in vals):
            raise InputError(
                f"fn returned a mapping with shapes {[tuple(v.shape) for v in vals]}; allowed: "
                "a mapping of scalars (one per output)"
            )
        return names, jnp.stack(vals)
    v = jnp.asarray(value)
    if v.ndim == 0:
        return ("value",), v[None]
    if v.ndim == 1 and v.shape[0] >= 1:
        return tuple(str(i) for i in range(v.shape[0])), v
    raise InputError(
        f"fn returned shape {tuple(v.shape)}; allowed: a scalar, a 1-D array or a mapping of "
        "scalars"
    )


def _positive_int(name: str, v, lo: int) -> int:
    if isinstance(v, bool) or not isinstance(v, int | np.integer) or v < lo:
        raise InputError(f"{name} = {v!r}; allowed: an integer >= {lo}")
    return int(v)


def _level(level) -> float:
    if not (isinstance(level, int | float) and 0 < level < 1):
        raise InputError(f"level = {level!r}; allowed: a probability in (0, 1), e.g. 0.9")
    return float(level)


# ----------------------------------------------------------------------- local sensitivity
def dose_elasticities(
    fn: Callable,
    params: Mapping[str, float],
    *,
    names: Sequence[str] | None = None,
    mode: Literal["forward", "reverse"] = "forward",
) -> dict[str, dict[str, float]]:
    """Normalised local sensitivities ``d ln f / d ln theta_i`` of `fn` at `params`.

    **Arguments:**
    - `fn`: a JAX-traceable function of a dict of parameters (name -> scalar, in the units the
      function expects, e.g. canonical twinjax units) returning a positive scalar (e.g. a dose in
      Gy), a 1-D array or a mapping of positive scalars (e.g. ``{"kidneys": D_k, "tumour":
      D_t}``).
    - `params`: the point (name -> finite positive scalar), e.g. a patient's typical values or
      posterior medians; every entry is passed to `fn`.
    - `names`: the parameters to differentiate with respect to (default: all of `params`);
      the others are held fixed.
    - `mode`: ``"forward"`` (``jax.jacfwd``; default: one tangent per parameter, the mode
      `twinjax.simulate`'s default adjoint supports) or ``"reverse"`` (``jax.jacrev``: for many
      parameters; ODE solves inside `fn` need ``adjoint="reverse"``).

    **Returns:** ``{output: {parameter: elasticity}}``; the output of a scalar `fn` is called
    ``"value"``, those of a 1-D array ``"0"``, ``"1"``, ...

    **Raises:** `InputError` for a parameter that is not finite and positive, a name not in
    `params`, an unknown mode, or an output that is not finite and positive at `params` (its
    logarithm, and so its elasticity, is undefined).
    """
    if not isinstance(params, Mapping) or not params:
        raise InputError("params is empty; allowed: a mapping name -> positive scalar")
    point = {}
    for k, v in params.items():
        arr = np.asarray(v, dtype=float)
        if arr.ndim != 0 or not (math.isfinite(float(arr)) and float(arr) > 0):
            raise InputError(f"params[{k!r}] = {v!r}; allowed: a finite scalar > 0")
        point[str(k)] = float(arr)
    names = tuple(point) if names is None else tuple(names)
    if not names:
        raise InputError("names is empty; allowed: one or more keys of params")
    missing = [n for n in names if n not in point]
    if missing:
        raise InputError(f"names {missing} are not in params; allowed: {sorted(point)}")
    if mode not in ("forward", "reverse"):
        raise InputError(f"mode = {mode!r}; allowed: 'forward' or 'reverse'")
    seen: list[tuple[str, ...]] = []

    def flat(p):
        names_, v = _outputs(fn(p))
        seen.append(names_)  # the output names, recorded while tracing
        return v

    values = np.asarray(jax.jit(flat)({k: jnp.asarray(v) for k, v in point.items()}))
    out_names = seen[0]
    bad = [(o, float(v)) for o, v in zip(out_names, values, strict=True)
           if not (math.isfinite(v) and v > 0)]  # fmt: skip
    if bad:
        raise InputError(
            f"fn at params gives {bad}; allowed: finite outputs > 0 (elasticities are "
            "derivatives of their logarithms)"
        )
    fixed = {k: jnp.asarray(v) for k, v in point.items() if k not in names}

    def log_fn(u):
        # ln f as a function of ln theta: its Jacobian is the elasticity matrix.
        theta = {**fixed, **{n: jnp.exp(u[i]) for i, n in enumerate(names)}}
        return jnp.log(_outputs(fn(theta))[1])

    u0 = jnp.log(jnp.asarray([point[n] for n in names]))
    jac = jax.jit((jax.jacfwd if mode == "forward" else jax.jacrev)(log_fn))(u0)
    jac = np.asarray(jac)
    return {o: {n: float(jac[j, i]) for i, n in enumerate(names)} for j, o in enumerate(out_names)}


# ---------------------------------------------------------------------- global sensitivity
@dataclasses.dataclass(frozen=True)
class SobolIndices:
    """Sobol indices of a model's outputs over independent inputs ([`sobol_indices`][]).

    **Fields:** `names` (inputs), `outputs` (output names); `first_order`, `total` arrays
    ``(outputs, inputs)``; `first_order_interval`, `total_interval` ``(2, outputs, inputs)``
    (bootstrap lower and upper bounds at `level`); `mean`, `variance` of each output ``(outputs,)``
    (in the output's units and their square); `n` (rows of each sample matrix) and
    `n_evaluations` (``n (d + 2)``).
    """

    names: tuple[str, ...]
    outputs: tuple[str, ...]
    first_order: np.ndarray
    total: np.ndarray
    first_order_interval: np.ndarray
    total_interval: np.ndarray
    mean: np.ndarray
    variance: np.ndarray
    n: int
    n_evaluations: int
    level: float

    def table(self, output: str | None = None) -> dict[str, dict[str, float]]:
        """``{input: {"S1", "S1_lower", "S1_upper", "ST", "ST_lower", "ST_upper"}}`` of one
        output (default: the first)."""
        o = self.outputs[0] if output is None else output
        if o not in self.outputs:
            raise InputError(f"output = {output!r}; allowed: {list(self.outputs)}")
        j = self.outputs.index(o)
        return {
            n: {
                "S1": float(self.first_order[j, i]),
                "S1_lower": float(self.first_order_interval[0, j, i]),
                "S1_upper": float(self.first_order_interval[1, j, i]),
                "ST": float(self.total[j, i]),
                "ST_lower": float(self.total_interval[0, j, i]),
                "ST_upper": float(self.total_interval[1, j, i]),
            }
            for i, n in enumerate(self.names)
        }


def _prior_sampler(prior: PopulationPrior):
    """Independent inputs of a prior: its standard-normal coordinates (sampled), mapped to the
    physical parameters (passed to the function)."""
    if not np.allclose(prior.scale_tril, np.diag(np.diag(prior.scale_tril))):
        raise InputError(
            "the prior correlates its parameters; allowed: a prior without correlation (Sobol "
            "indices as estimated here need independent inputs)"
        )

    def sample(key, n):
        return jax.random.normal(key, (n, prior.dim), dtype=float)

    return prior.names, sample, prior.theta


def _marginal_sampler(inputs: Mapping[str, Callable]):
    names = tuple(str(k) for k in inputs)
    if not names:
        raise InputError("inputs is empty; allowed: name -> sampler(key, n) of each input")
    for k, f in inputs.items():
        if not callable(f):
            raise InputError(f"inputs[{k!r}] = {f!r}; allowed: a function (key, n) -> (n,) draws")

    def sample(key, n):
        keys = jax.random.split(key, len(names))
        cols = []
        for k, n_, f in zip(keys, names, inputs.values(), strict=True):
            x = jnp.asarray(f(k, n), dtype=float)
            if x.shape != (n,):
                raise InputError(
                    f"inputs[{n_!r}] returned shape {tuple(x.shape)}; allowed: ({n},) draws"
                )
            cols.append(x)
        return jnp.stack(cols, axis=1)

    def to_params(x):
        return {n: x[i] for i, n in enumerate(names)}

    return names, sample, to_params


def sobol_indices(
    fn: Callable,
    inputs,
    *,
    n: int = 1024,
    seed: int = 0,
    batch_size: int = 1024,
    level: float = 0.9,
    n_bootstrap: int = 200,
) -> SobolIndices:
    """First-order and total Sobol indices of `fn` over independent random inputs (module docs).

    **Arguments:**
    - `fn`: a JAX-traceable function of a dict of inputs (name -> scalar) returning a scalar, a
      1-D array or a mapping of scalars (several outputs share the evaluations).
    - `inputs`: a [`PopulationPrior`][] (its parameters, lognormal around the patient's
      typical values; sampled through independent standard-normal coordinates; a prior with
      correlations is refused), or a mapping name -> ``sampler(key, n)`` returning ``(n,)``
      independent draws of that input (e.g. uniform on an interval).
    - `n`: rows of each of the two sample matrices (>= 16); the cost is ``n (d + 2)``
      evaluations of `fn` for d inputs. The indices' Monte Carlo error falls as 1/sqrt(n).
    - `seed`: the PRNG seed of the samples and the bootstrap.
    - `batch_size`: evaluations per compiled, `vmap`-ed call (bounds memory; every batch has
      the same shape, so `fn` compiles once).
    - `level`, `n_bootstrap`: central interval and bootstrap resamples of the indices.

    **Returns:** [`SobolIndices`][].

    **Raises:** `InputError` for bad arguments, and for outputs that are not finite at some
    sample (naming the first such input values) or that do not vary at all.
    """
    n = _positive_int("n", n, 16)
    batch_size = _positive_int("batch_size", batch_size, 1)
    n_bootstrap = _positive_int("n_bootstrap", n_bootstrap, 10)
    level = _level(level)
    if isinstance(inputs, PopulationPrior):
        names, sample, to_params = _prior_sampler(inputs)
    elif isinstance(inputs, Mapping):
        names, sample, to_params = _marginal_sampler(inputs)
    else:
        raise InputError(
            f"inputs is a {type(inputs).__name__}; allowed: a PopulationPrior or a mapping "
            "name -> sampler(key, n)"
        )
    d = len(names)
    key = jax.random.key(seed)
    k_a, k_b = jax.random.split(key)
    a = np.asarray(sample(k_a, n))
    b = np.asarray(sample(k_b, n))
    # rows: A, B, then A_B^(i) for each input i
    ab = np.repeat(a[None], d, axis=0)
    for i in range(d):
        ab[i, :, i] = b[:, i]
    x = np.concatenate([a, b, ab.reshape(d * n, d)])
    out_names, _ = _outputs(fn(to_params(jnp.asarray(x[0]))))
    one = jax.jit(jax.vmap(lambda row: _outputs(fn(to_params(row)))[1]))
    total = x.shape[0]
    size = min(batch_size, total)
    ys = []
    for start in range(0, total, size):
        chunk = x[start : start + size]
        pad = size - chunk.shape[0]
        if pad:  # same shape for every call: one compilation
            chunk = np.concatenate([chunk, np.repeat(chunk[-1:], pad, axis=0)])
        ys.append(np.asarray(one(jnp.asarray(chunk)))[: size - pad])
    y = np.concatenate(ys)  # (rows, outputs)
    bad = ~np.all(np.isfinite(y), axis=1)
    if bad.any():
        row = x[int(np.argmax(bad))]
        shown = {k: float(v) for k, v in to_params(jnp.asarray(row)).items()}
        raise InputError(
            f"fn is not finite at {int(bad.sum())} of {total} samples, e.g. at {shown}; "
            "allowed: finite outputs over the whole input distribution"
        )
    f_a, f_b = y[:n], y[n : 2 * n]
    f_ab = y[2 * n :].reshape(d, n, -1)
    both = np.concatenate([f_a, f_b])
    var = both.var(axis=0, ddof=1)
    if np.any(var <= 0):
        flat = [o for o, v in zip(out_names, var, strict=True) if v <= 0]
        raise InputError(f"outputs {flat} do not vary over the inputs; allowed: varying outputs")

    def estimate(idx):
        fa, fb, fab = f_a[idx], f_b[idx], f_ab[:, idx]
        v = np.concatenate([fa, fb]).var(axis=0, ddof=1)
        # f(B) centred on the sample mean: the same estimator in the limit, with a smaller
        # variance when the output's mean is large against its spread (Sobol 2007)
        f0 = np.concatenate([fa, fb]).mean(axis=0)
        s1 = np.mean((fb - f0)[None] * (fab - fa[None]), axis=1) / v
        st = 0.5 * np.mean((fa[None] - fab) ** 2, axis=1) / v
        return s1.T, st.T  # (outputs, inputs)

    s1, st = estimate(np.arange(n))
    rng = np.random.default_rng(seed)
    boot = [estimate(rng.integers(0, n, n)) for _ in range(n_bootstrap)]
    lo, hi = 100 * (1 - level) / 2, 100 * (1 + level) / 2
    s1_b = np.stack([b[0] for b in boot])
    st_b = np.stack([b[1] for b in boot])
    return SobolIndices(
        names=tuple(names),
        outputs=out_names,
        first_order=s1,
        total=st,
        first_order_interval=np.percentile(s1_b, [lo, hi], axis=0),
        total_interval=np.percentile(st_b, [lo, hi], axis=0),
        mean=both.mean(axis=0),
        variance=var,
        n=n,
        n_evaluations=int(total),
        level=level,
    )


# ---------------------------------------------------------------------------- scan design
@dataclasses.dataclass(frozen=True)
class ScanDesign:
    """Expected posterior variance of a target quantity after one more scan at each candidate
    time ([`next_scan_time`][], [`expected_posterior_variance`][]).

    **Fields:** `times_h` (candidates, h); `expected_variance` ``(T,)`` (the quantity's units
    squared, e.g. Gy^2) and its Monte Carlo `standard_error` (zero for ``"linear"``);
    `current_variance` (of the current posterior draws); `best_time_h` (the candidate with the
    smallest expected variance); `effective_sample_size` ``(T,)`` (median over simulated data
    sets of the importance weights' ESS; NaN for ``"linear"``); `n_draws`; `method`;
    `quantity` (what the variance is of, e.g. ``"dose_Gy of kidneys"``); `rois` (regions the
    scan images).
    """

    times_h: np.ndarray
    expected_variance: np.ndarray
    standard_error: np.ndarray
    current_variance: float
    best_time_h: float
    effective_sample_size: np.ndarray
    n_draws: int
    method: str
    quantity: str = ""
    rois: tuple[str, ...] = ()

    @property
    def expected_sd(self) -> np.ndarray:
        """Square root of the expected posterior variance (the quantity's units)."""
        return np.sqrt(self.expected_variance)

    @property
    def variance_reduction(self) -> np.ndarray:
        """``1 - EPV(t) / current variance`` per candidate: the expected share of the present
        variance that a scan at t removes."""
        return 1.0 - self.expected_variance / self.current_variance


def _noise_covariance(sigma_r: np.ndarray, sigma_cal: float) -> np.ndarray:
    """Covariance of the log measurement errors of one scan's regions: independent region noise
    plus the calibration factor they share."""
    return np.diag(sigma_r**2) + sigma_cal**2


def expected_posterior_variance(
    quantity,
    predicted_MBq,
    cv,
    *,
    calibration_cv: float = 0.0,
    times_h=None,
    method: Literal["importance", "linear"] = "importance",
    n_data: int = 128,
    seed: int = 0,
) -> ScanDesign:
    """Expected posterior variance of `quantity` after one scan, for each candidate time, from
    posterior draws (module docs).

    **Arguments:**
    - `quantity`: ``(n,)`` values of the target per posterior draw (e.g. kidney dose, Gy).
    - `predicted_MBq`: ``(n, T)`` or ``(n, T, R)`` predicted activities (MBq, > 0) of the R
      regions the scan images, per draw and candidate time.
    - `cv`: the regions' measurement CVs (a scalar or ``(R,)``; lognormal, > 0).
    - `calibration_cv`: CV of the scan's calibration factor, shared by its regions (>= 0).
    - `times_h`: the candidate times (h), ``(T,)``; default ``0, 1, ..., T - 1``.
    - `method`: ``"importance"`` or ``"linear"`` (module docs).
    - `n_data`: simulated data sets per candidate (importance; the same draws and noise for
      every candidate, so differences between candidates are not blurred by independent
      Monte Carlo noise).
    - `seed`: PRNG seed of the simulated data.

    **Returns:** a [`ScanDesign`][].
    """
    q = np.asarray(quantity, dtype=float)
    if q.ndim != 1 or q.size < 10 or not np.all(np.isfinite(q)):
        raise InputError(
            f"quantity has shape {q.shape}; allowed: (n,) finite values with n >= 10 draws"
        )
    pred = np.asarray(predicted_MBq, dtype=float)
    if pred.ndim == 2:
        pred = pred[..., None]
    if pred.ndim != 3 or pred.shape[0] != q.size or pred.shape[1] < 1:
        raise InputError(
            f"predicted_MBq has shape {np.shape(predicted_MBq)}; allowed: ({q.size}, T) or "
            f"({q.size}, T, R) for {q.size} draws"
        )
    if not np.all(np.isfinite(pred) & (pred > 0)):
        raise InputError(
            "predicted_MBq has values that are not finite or not > 0; allowed: > 0 MBq"
        )
    n, n_t, n_r = pred.shape
    cv_arr = np.asarray(cv, dtype=float)
    if (
        cv_arr.ndim > 1
        or cv_arr.size not in (1, n_r)
        or not np.all(np.isfinite(cv_arr) & (cv_arr > 0))
    ):
        raise InputError(f"cv = {cv!r}; allowed: a CV > 0, or one per region ({n_r})")
    cvs = np.broadcast_to(cv_arr.reshape(-1), (n_r,))
    if not (isinstance(calibration_cv, int | float) and math.isfinite(calibration_cv)
            and calibration_cv >= 0):  # fmt: skip
        raise InputError(f"calibration_cv = {calibration_cv!r}; allowed: a CV >= 0")
    times = np.arange(n_t, dtype=float) if times_h is None else np.asarray(times_h, dtype=float)
    if times.shape != (n_t,):
        raise InputError(f"times_h has shape {times.shape}; allowed: ({n_t},) candidate times")
    if method not in ("importance", "linear"):
        raise InputError(f"method = {method!r}; allowed: 'importance' or 'linear'")
    n_data = _positive_int("n_data", n_data, 2)
    sigma_r = np.sqrt(np.log1p(cvs**2))
    sigma_c = math.sqrt(math.log1p(calibration_cv**2))
    cov = _noise_covariance(sigma_r, sigma_c)
    h = np.log(pred)  # (n, T, R)
    current = float(q.var(ddof=1))
    epv = np.empty(n_t)
    se = np.zeros(n_t)
    ess = np.full(n_t, np.nan)
    if method == "linear":
        for t in range(n_t):
            c = np.cov(np.column_stack([q, h[:, t]]), rowvar=False)
            c_qh, c_hh = c[0, 1:], c[1:, 1:]
            epv[t] = current - c_qh @ np.linalg.solve(c_hh + cov, c_qh)
    else:
        rng = np.random.default_rng(seed)
        # the simulated patients (draws of the current posterior) and their noise: shared by
        # every candidate (common random numbers)
        truth = rng.permutation(n)[: min(n_data, n)] if n_data <= n else rng.integers(0, n, n_data)
        eps = rng.standard_normal((truth.size, n_r)) @ np.linalg.cholesky(cov).T
        prec = np.linalg.inv(cov)
        for t in range(n_t):
            y = h[truth, t] + eps  # (m, R) log measurements
            d = y[:, None, :] - h[None, :, t]  # (m, n, R)
            logw = -0.5 * np.einsum("mnr,rs,mns->mn", d, prec, d)
            # leave the simulated patient's own draw out of its update: with it, the weights
            # favour the truth by construction and the variance comes out too small
            logw[np.arange(truth.size), truth] = -np.inf
            w = np.exp(logw - logw.max(axis=1, keepdims=True))
            w /= w.sum(axis=1, keepdims=True)
            mean = w @ q
            var = w @ q**2 - mean**2
            var = np.maximum(var, 0.0)
            epv[t] = var.mean()
            se[t] = var.std(ddof=1) / math.sqrt(var.size)
            ess[t] = float(np.median(1.0 / np.sum(w**2, axis=1)))
    best = int(np.argmin(epv))
    return ScanDesign(
        times_h=times,
        expected_variance=epv,
        standard_error=se,
        current_variance=current,
        best_time_h=float(times[best]),
        effective_sample_size=ess,
        n_draws=n,
        method=method,
    )


def _target_mass(posterior, target: str, mass_kg, sex: str) -> float:
    """`mass_kg`, else the patient's CT volume of `target` (1.05 kg/L), else ICRP 89."""
    if mass_kg is not None:
        if not (isinstance(mass_kg, int | float) and math.isfinite(mass_kg) and mass_kg > 0):
            raise InputError(f"mass_kg = {mass_kg!r}; allowed: a finite mass > 0 (kg)")
        return float(mass_kg)
    cov = posterior.context.patient.covariates
    if f"ct_volume_L_{target}" in cov:
        return float(cov[f"ct_volume_L_{target}"]) * SOFT_TISSUE_KG_PER_L
    try:
        return float(reference_mass_kg(target, sex))
    except InputError as err:
        raise InputError(f"target {target!r} needs mass_kg (kg): {err}") from None


def next_scan_time(
    posterior,
    candidate_times_h,
    *,
    rois: Sequence[str] | None = None,
    target: str = "kidneys",
    quantity: Literal["dose_Gy", "tia_MBqh"] = "dose_Gy",
    mass_kg: float | None = None,
    noise: LognormalError | None = None,
    method: Literal["importance", "linear"] = "importance",
    n_data: int = 128,
    max_draws: int = 1000,
    sex: Literal["male", "female"] = "male",
    seed: int = 0,
    rtol: float = RTOL,
    atol: float = ATOL,
) -> ScanDesign:
    """The time of the next scan that is expected to shrink the posterior variance of the
    target's dose the most (preposterior analysis; module docs).

    **Arguments:**
    - `posterior`: a [`Posterior`][twinjax.inference.Posterior] of [`twinjax.fit`][] or
      `assimilate` (it carries the template, the patient's schedule and the noise model).
    - `candidate_times_h`: candidate scan times (h on the schedule's clock), after the last
      scan in the posterior's data.
    - `rois`: regions the next scan images (default: the regions of the posterior's data); they
      share the scan's calibration factor.
    - `target`: the region whose dose (or TIA) should be known better.
    - `quantity`: ``"dose_Gy"`` (self-dose, sphere S-value of the target's mass) or
      ``"tia_MBqh"`` (time-integrated activity to infinity). The best time is the same for
      both (the S-value is a constant factor); the variances differ by its square.
    - `mass_kg`: the target's mass (kg); default the patient's CT volume
      (``ct_volume_L_<target>`` at 1.05 kg/L), else the ICRP 89 reference mass for `sex`.
    - `noise`: the next scan's observation model (default: the fit's).
    - `method`, `n_data`: as [`expected_posterior_variance`][]; `max_draws`: posterior draws
      used (evenly thinned); `seed`; `rtol`, `atol` of the ODE solves.

    **Returns:** a [`ScanDesign`][] (`best_time_h`, the expected variances and their reduction).

    **Raises:** `InputError` for a posterior without its fit context, candidate times that are
    not finite, sorted, distinct and after the last scan, unknown regions, regions without a
    measurement CV, or a bad mass.
    """
    context = getattr(posterior, "context", None)
    if context is None or not hasattr(posterior, "observed"):
        raise InputError(
            f"posterior is a {type(posterior).__name__} without its fit context; allowed: a "
            "Posterior returned by twinjax.fit or twinjax.assimilate"
        )
    template, schedule = context.template, context.patient.schedule
    noise = context.noise if noise is None else noise
    if not isinstance(noise, LognormalError):
        raise InputError(f"noise is a {type(noise).__name__}; allowed: a LognormalError")
    times = np.asarray(candidate_times_h, dtype=float).reshape(-1)
    last = float(np.max(posterior.observed.time_h))
    if times.size == 0 or not np.all(np.isfinite(times)) or np.any(np.diff(times) <= 0):
        raise InputError(
            f"candidate_times_h = {times.tolist()}; allowed: finite, strictly increasing times (h)"
        )
    if times[0] <= last:
        raise InputError(
            f"candidate_times_h starts at {times[0]:g} h; allowed: times after the last scan "
            f"in the posterior's data ({last:g} h)"
        )
    rois = tuple(posterior.observed.rois if rois is None else rois)
    if not rois:
        raise InputError("rois is empty; allowed: one or more imaged regions")
    groups = {r: template.roi(r) for r in rois}  # unknown regions fail here
    cvs = np.array([float(noise.cv[r]) if r in noise.cv else np.nan for r in rois])
    if np.any(np.isnan(cvs)):
        missing = [r for r, c in zip(rois, cvs, strict=True) if np.isnan(c)]
        raise InputError(f"no measurement CV for regions {missing}; known: {sorted(noise.cv)}")
    target_groups = template.roi(target)
    if quantity not in ("dose_Gy", "tia_MBqh"):
        raise InputError(f"quantity = {quantity!r}; allowed: 'dose_Gy' or 'tia_MBqh'")
    s_value = 1.0
    if quantity == "dose_Gy":
        mass = _target_mass(posterior, target, mass_kg, sex)
        s_value = float(sphere_s_value(schedule.nuclide, mass))
    max_draws = _positive_int("max_draws", max_draws, 10)
    names = posterior.names
    draws = {k: posterior.draws(k) for k in names}
    total = len(next(iter(draws.values())))
    idx = np.linspace(0, total - 1, min(max_draws, total)).round().astype(int)
    theta = {k: jnp.asarray(v[idx], dtype=float) for k, v in draws.items()}
    base = {k: jnp.asarray(v, dtype=float) for k, v in posterior.prior.base.items()}
    t_all = jnp.asarray(times)

    def one(th):
        params = template.derive({**base, **th})
        tr = simulate(template.model, params, schedule, t_all, rtol=rtol, atol=atol, throw=False)
        act = jnp.stack([sum(tr.activity(g) for g in gs) for gs in groups.values()], axis=-1)
        tia = sum(tr.tia(g) for g in target_groups)
        return act, tia, tr.success

    act, tia, ok = jax.jit(jax.vmap(one))(theta)
    ok = np.asarray(ok)
    if not ok.all():
        raise InputError(
            f"{int((~ok).sum())} of {ok.size} posterior draws fail to solve at the candidate "
            "times; allowed: draws the model solves (check rtol/atol)"
        )
    # Regions that the model predicts empty at a time carry no information there; a floor keeps
    # their logarithm finite without weighting the draws.
    act = np.maximum(np.asarray(act), 1e-300)
    design = expected_posterior_variance(
        s_value * np.asarray(tia),
        act,
        cvs,
        calibration_cv=float(noise.calibration_cv),
        times_h=times,
        method=method,
        n_data=n_data,
        seed=seed,
    )
    return dataclasses.replace(design, quantity=f"{quantity} of {target}", rois=rois)
