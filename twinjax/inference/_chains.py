"""Parallel MCMC chains, one per device, without ``pmap``.

NumPyro's ``chain_method="parallel"`` maps the chains with ``jax.pmap``, which JAX (0.10) runs as a
``shard_map``: every value traced inside it carries a manual-mesh sharding in its abstract type,
except constants, which carry none. Equinox's closure conversion and Lineax's structure checks
compare these shardings, so the implicit ODE solvers (``Kvaerno5``: Newton iterations with Lineax
linear solves) fail under it with "pytree does not match out_structure" or "Closure-converted
function called with different dynamic arguments" (lineax#185, diffrax#765), even though the
shapes and dtypes agree. Any ``lineax.linear_solve`` inside ``pmap`` fails the same way.

[`on_devices`][] runs the same per-chain function as ``pmap`` would, but as one ordinary ``jit``
per device: traced once, compiled for each device concurrently, dispatched asynchronously, so the
chains run at the same time. Each chain computes exactly what it computes when run sequentially.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import jax
import jax.numpy as jnp
from jax.sharding import SingleDeviceSharding

__all__ = ["on_devices"]


def on_devices(fn: Callable) -> Callable:
    """A NumPyro ``chain_method``: map `fn` over the leading (chain) axis of its argument, chain
    ``i`` on local device ``i``. Needs at least as many local devices as chains."""

    def run(map_args):
        n = jax.tree.leaves(map_args)[0].shape[0]
        devices = jax.local_devices()[:n]
        if len(devices) < n:
            raise ValueError(f"{n} chains need {n} devices; JAX has {len(devices)}")
        chains = [
            jax.tree.map(lambda x, i=i, d=d: jax.device_put(x[i], d), map_args)
            for i, d in enumerate(devices)
        ]
        # Tracing runs the model's Python code and is not thread-safe; it is cached, so only the
        # first device traces. Compilation (XLA) releases the GIL and runs in parallel.
        lowered = [
            jax.jit(fn, in_shardings=SingleDeviceSharding(d)).trace(c).lower()
            for c, d in zip(chains, devices, strict=True)
        ]
        with ThreadPoolExecutor(n) as pool:
            compiled = list(pool.map(lambda lo: lo.compile(), lowered))
        # Asynchronous dispatch: each call returns at once and the chains run concurrently.
        outs = [c(x) for c, x in zip(compiled, chains, strict=True)]
        home = devices[0]
        return jax.tree.map(lambda *xs: jnp.stack([jax.device_put(x, home) for x in xs]), *outs)

    return run
