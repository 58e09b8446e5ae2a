"""NUTS in chunks with a checkpoint file: a killed run resumes where its last chunk ended.

[`run_chunked`][] drives NumPyro's NUTS kernel itself, `every` iterations per compiled call,
warm-up included, and after each call writes the complete sampler state (every array of the
``HMCState``, adaptation state and PRNG keys included), the draws so far and a fingerprint of the
run to one file, atomically. A fit started again with the same inputs reads the file, skips the
iterations it records and continues from its state, so the chain is the one an uninterrupted run
follows: on CPU the draws are bit-identical to `MCMC.run` with the same key (tested).

Why not `MCMC.warmup` / `MCMC.run` with `post_warmup_state`: NumPyro (0.22) wraps its loop body
in a new ``jax.jit`` at every call and passes it as a static argument of the loop's ``jit``, so the
compiled loop is never reused: every call, and every chain of a sequential run, compiles the whole
NUTS step again (10-20 s for the small test model on 2 CPU cores, more for PBPK models). Here a
chunk is one ``jax.jit`` of the kernel's own `sample` in a loop with a traced trip count, compiled
once per fit and reused for every chunk and every chain. Each iteration does what `MCMC` does
(``kernel.sample``, then `postprocess_fn` of the new ``z``), so the numbers are the same.

File layout: a format line (`MAGIC`), the SHA-256 (hex) of everything after it, then an
uncompressed ``.npz`` read with ``allow_pickle=False``: a JSON header (fingerprint, progress, one
descriptor per state leaf: its pytree path and, for typed PRNG keys, stored as ``key_data``, the
name of their implementation) and plain arrays. The state's tree structure is not stored: on
resume it comes from the kernel's own `init` (only traced), which the kernel needs anyway, and
every leaf's path, dtype and shape is checked against it.
"""

from __future__ import annotations

import dataclasses
import glob
import hashlib
import io
import itertools
import json
import zipfile
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.sharding import SingleDeviceSharding

from .._errors import InputError
from .._files import atomic_write as _atomic_write
from ._chains import on_devices

__all__ = ["Checkpoint", "fingerprint", "read_checkpoint", "run_chunked"]

#: First line of a checkpoint file: what it is and the version of its layout.
MAGIC = b"twinjax NUTS checkpoint v1\n"


def _after_chunk(path: Path, steps_done: int, total_steps: int) -> None:
    """Called after each chunk's checkpoint is on disk (a seam for tests: a kill lands here)."""


# --------------------------------------------------------------------------- fingerprint


def _sha256_tree(tree) -> str:
    """SHA-256 of a pytree: its structure (static fields included) and every leaf's bytes."""
    h = hashlib.sha256(str(jax.tree_util.tree_structure(tree)).encode())
    for leaf in jax.tree.leaves(tree):
        a = np.asarray(leaf)
        h.update(f"{a.dtype.str}{a.shape}".encode())
        h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()


def fingerprint(
    *,
    template,
    data_sha256: str,
    covariates: Mapping[str, float],
    schedule,
    noise,
    names,
    cv: Mapping[str, float] | None,
    num_chains: int,
    num_warmup: int,
    num_samples: int,
    dense_mass: bool,
    chain_method: str,
    seed: int,
    rtol: float,
    atol: float,
    warm_start: Mapping | None,
) -> dict:
    """Everything that decides the chain a fit follows, as a flat JSON-able dict: a checkpoint
    resumes only a run with an equal fingerprint. `chain_method` is the resolved one
    (``"sequential"``, ``"parallel"``, ``"vectorized"``). The chunk length is not part of it:
    chunk boundaries do not change the chain, so a run may resume with another one."""
    import numpyro

    from .. import __version__

    return {
        "template": template.name,
        # The validated spec, not the file's bytes: a path-less template is covered too, and an
        # edited comment does not orphan a checkpoint.
        "template_spec_sha256": hashlib.sha256(
            template.spec.model_dump_json().encode()
        ).hexdigest(),
        "data_sha256": data_sha256,
        "covariates": {k: float(v) for k, v in sorted(covariates.items())},
        "schedule_sha256": _sha256_tree(schedule),
        "noise": {
            "cv": {k: float(v) for k, v in sorted(noise.cv.items())},
            "calibration_cv": float(noise.calibration_cv),
            "detection_limit_MBq": float(noise.detection_limit_MBq),
        },
        "names": list(names),
        "cv": None if cv is None else {k: float(v) for k, v in sorted(cv.items())},
        "num_chains": int(num_chains),
        "num_warmup": int(num_warmup),
        "num_samples": int(num_samples),
        "dense_mass": bool(dense_mass),
        "chain_method": chain_method,
        "seed": int(seed),
        "rtol": float(rtol),
        "atol": float(atol),
        "warm_start_sha256": None
        if warm_start is None
        else _sha256_tree({k: np.asarray(v) for k, v in sorted(warm_start.items())}),
        "x64": bool(jax.config.jax_enable_x64),
        "versions": {
            "twinjax": __version__,
            "jax": jax.__version__,
            "numpyro": numpyro.__version__,
        },
    }


# --------------------------------------------------------------------------- file format


@dataclasses.dataclass(frozen=True)
class Checkpoint:
    """A verified checkpoint: `header` (fingerprint, `steps_done`, leaf descriptors) and
    the arrays: `state` (host arrays; PRNG keys as key data), `draws` and `extra` (site or field
    -> ``(chains, draws so far, ...)``)."""

    header: dict
    state: list
    draws: dict
    extra: dict

    @property
    def steps_done(self) -> int:
        """Iterations per chain behind the stored state, warm-up included."""
        return int(self.header["steps_done"])


def _host_leaves(state) -> tuple[list[dict], list[np.ndarray]]:
    """The state's leaves as host arrays, PRNG keys as key data, with a descriptor per leaf."""
    meta, arrays = [], []
    for path, x in jax.tree_util.tree_flatten_with_path(state)[0]:
        impl = None
        if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
            impl = str(jax.random.key_impl(x))
            x = jax.random.key_data(x)
        a = np.asarray(x)
        arrays.append(a)
        meta.append({"path": jax.tree_util.keystr(path), "key_impl": impl})
    return meta, arrays


def write_checkpoint(
    path: Path, fp: dict, steps_done: int, total_steps: int, state, draws: dict, extra: dict
) -> None:
    """Write the sampler `state` (leading chain axis), the draws and the extra fields so far to
    `path`, atomically (temp file + rename): a kill at any moment leaves the previous
    checkpoint or this one, never a mixture."""
    meta, leaves = _host_leaves(state)
    arrays = {f"state_{i:04d}": a for i, a in enumerate(leaves)}
    arrays |= {f"draws_{i:04d}": np.asarray(draws[k]) for i, k in enumerate(draws)}
    arrays |= {f"extra_{i:04d}": np.asarray(extra[k]) for i, k in enumerate(extra)}
    header = {
        "fingerprint": fp,
        "steps_done": int(steps_done),
        "total_steps": int(total_steps),
        "state": meta,
        "draws": list(draws),
        "extra": list(extra),
    }
    buf = io.BytesIO()
    np.savez(buf, header=np.frombuffer(json.dumps(header).encode(), dtype=np.uint8), **arrays)
    payload = buf.getvalue()
    # The digest covers every byte after it, zip metadata included: any flipped bit is seen.
    digest = hashlib.sha256(payload).hexdigest().encode()
    path.parent.mkdir(parents=True, exist_ok=True)
    _atomic_write(path, MAGIC + digest + b"\n" + payload)


def read_checkpoint(path: Path) -> Checkpoint:
    """Read and verify (format line, SHA-256 of the rest) a checkpoint written by
    [`write_checkpoint`][].

    **Raises:** `InputError` for a file that is not one, or is truncated or corrupt.
    """
    bad = (
        f"checkpoint {str(path)!r} is unreadable: truncated, corrupt or not a twinjax NUTS "
        "checkpoint ({}); delete it (the run restarts) or pass another path"
    )
    try:
        raw = path.read_bytes()
    except OSError as err:
        raise InputError(bad.format(f"{type(err).__name__}: {err}")) from None
    if not raw.startswith(MAGIC):
        family = MAGIC[: MAGIC.index(b" v") + 2]
        if raw.startswith(family) and b"\n" in raw[: len(MAGIC) + 8]:
            found = raw[: raw.index(b"\n")].decode(errors="replace")
            raise InputError(
                f"checkpoint {str(path)!r} has format {found!r}; this twinjax reads "
                f"{MAGIC.strip().decode()!r}; delete it (the run restarts) or pass another path"
            )
        raise InputError(bad.format("no checkpoint format line"))
    digest, payload = raw[len(MAGIC) : len(MAGIC) + 64], raw[len(MAGIC) + 65 :]
    got = hashlib.sha256(payload).hexdigest()
    if raw[len(MAGIC) + 64 : len(MAGIC) + 65] != b"\n" or digest != got.encode():
        recorded = digest.decode(errors="replace")
        raise InputError(
            bad.format(
                f"SHA-256 mismatch: the content has SHA-256 {got}, the file records {recorded}"
            )
        )
    try:
        with np.load(io.BytesIO(payload), allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
        header = json.loads(arrays.pop("header").tobytes().decode())
        state = [arrays[f"state_{i:04d}"] for i in range(len(header["state"]))]
        draws = {k: arrays[f"draws_{i:04d}"] for i, k in enumerate(header["draws"])}
        extra = {k: arrays[f"extra_{i:04d}"] for i, k in enumerate(header["extra"])}
        int(header["steps_done"])
    except (OSError, ValueError, KeyError, TypeError, EOFError, zipfile.BadZipFile) as err:
        raise InputError(bad.format(f"{type(err).__name__}: {err}")) from None
    return Checkpoint(header, state, draws, extra)


def _short(v) -> str:
    s = json.dumps(v, sort_keys=True)
    return s if len(s) <= 80 else s[:77] + "..."


def check_fingerprint(path: Path, ckpt: Checkpoint, fp: dict) -> None:
    """Refuse a checkpoint of another run, naming every field in which the runs differ."""
    saved = ckpt.header.get("fingerprint", {})
    fp = json.loads(json.dumps(fp))  # as it reads back from the file (tuples become lists)
    absent = "<absent>"
    diff = sorted(k for k in set(saved) | set(fp) if saved.get(k, absent) != fp.get(k, absent))
    if diff:
        rows = "; ".join(
            f"{k}: {_short(saved.get(k, absent))} (checkpoint) vs "
            f"{_short(fp.get(k, absent))} (this fit)"
            for k in diff
        )
        raise InputError(
            f"checkpoint {str(path)!r} belongs to another run; fields differ: {rows}. Delete it, "
            "pass another checkpoint path, or fit with the checkpoint's settings"
        )


def load_matching(path: Path, fp: dict) -> Checkpoint | None:
    """The verified checkpoint at `path` if it belongs to the run `fp`, None if there is none.

    **Raises:** `InputError` for an unreadable file or one of another run."""
    if path.is_dir():
        raise InputError(f"checkpoint = {str(path)!r} is a directory; allowed: a file path")
    if not path.exists():
        return None
    ckpt = read_checkpoint(path)
    check_fingerprint(path, ckpt, fp)
    total = fp["num_warmup"] + fp["num_samples"]
    if not 0 < ckpt.steps_done <= total:
        raise InputError(
            f"checkpoint {str(path)!r}: steps_done = {ckpt.steps_done} outside 1..{total}"
        )
    shape = (fp["num_chains"], max(0, ckpt.steps_done - fp["num_warmup"]))
    for k, a in {**ckpt.draws, **ckpt.extra}.items():
        if a.shape[:2] != shape:
            raise InputError(
                f"checkpoint {str(path)!r}: {k} has shape {a.shape}; after {ckpt.steps_done} "
                f"iterations it must start with {shape} (chains, draws)"
            )
    return ckpt


def _restore_state(
    path: Path, ckpt: Checkpoint, prototype, batched_prototype: bool, chains: int, impl: str
):
    """Rebuild the stored state on the tree structure of `prototype` (shapes and dtypes of the
    kernel's `init`, one chain unless `batched_prototype`), checking every leaf's path, dtype
    and shape; PRNG keys are rebuilt with implementation `impl` (that of the run's key)."""
    flat, _ = jax.tree_util.tree_flatten_with_path(prototype)
    meta = ckpt.header["state"]
    paths = [jax.tree_util.keystr(p) for p, _ in flat]
    if paths != [m["path"] for m in meta]:
        raise InputError(
            f"checkpoint {str(path)!r}: its sampler state has leaves {[m['path'] for m in meta]}, "
            f"this NUTS kernel {paths}; it was written by another NumPyro; delete it"
        )
    leaves = []
    for (_, proto), m, a in zip(flat, meta, ckpt.state, strict=True):
        shape = tuple(proto.shape) if batched_prototype else (chains, *proto.shape)
        if m["key_impl"] is not None:
            if not jax.dtypes.issubdtype(proto.dtype, jax.dtypes.prng_key):
                raise InputError(f"checkpoint {str(path)!r}: {m['path']} is a PRNG key there only")
            if m["key_impl"] != impl:
                raise InputError(
                    f"checkpoint {str(path)!r}: {m['path']} is a {m['key_impl']} key; this run "
                    f"uses {impl}"
                )
            x = jax.random.wrap_key_data(jnp.asarray(a), impl=impl)
        else:
            x = jnp.asarray(a)
        if tuple(x.shape) != shape or x.dtype != proto.dtype:
            raise InputError(
                f"checkpoint {str(path)!r}: {m['path']} is {x.dtype}{list(x.shape)}; this run "
                f"needs {proto.dtype}{list(shape)}"
            )
        leaves.append(x)
    return jax.tree.unflatten(jax.tree.structure(prototype), leaves)


# --------------------------------------------------------------------------- the sampler


class _Chains:
    """`num_chains` NUTS chains advanced `n` iterations per call by one compiled program.

    ``"sequential"``: chain after chain through one ``jit``; ``"vectorized"``: one ``vmap`` over
    chains (the kernel's `init` on a batch of keys vectorises its `sample`, as in `MCMC`);
    ``"parallel"``: chain ``i`` on device ``i``, compiled once per device (as `on_devices` does,
    but kept for every chunk). Per chain, each does what `MCMC.run` does with `chain_method`.
    """

    def __init__(self, kernel, mode: str, num_chains: int, num_warmup: int, size: int, fields):
        self.kernel, self.mode, self.chains = kernel, mode, num_chains
        self.num_warmup, self.size, self.fields = num_warmup, size, tuple(fields)
        self._compiled = None

    def init(self, key, init_params) -> object:
        """The chains' initial states (leading chain axis), keys split as `MCMC.run` splits them."""
        keys = jax.random.split(key, self.chains) if self.chains > 1 else key[None]
        if self.mode == "vectorized":
            return self.kernel.init(keys, self.num_warmup, init_params, (), {})
        per_chain = [
            (keys[c], {k: v[c] for k, v in init_params.items()}) for c in range(self.chains)
        ]
        if self.mode == "parallel":
            # `on_devices` initialises each chain inside its device's compiled program, where XLA
            # may round differently from the op-by-op `init` of "sequential": do the same.
            def init(k, p):
                return self.kernel.init(k, self.num_warmup, p, (), {})

            home = jax.local_devices()[0]
            states = [
                jax.device_put(jax.jit(init)(*jax.device_put(a, d)), home)
                for a, d in zip(per_chain, jax.local_devices(), strict=False)
            ]
        else:
            states = [self.kernel.init(k, self.num_warmup, p, (), {}) for k, p in per_chain]
        return jax.tree.map(lambda *xs: jnp.stack(xs), *states)

    def prototype(self, key, init_params):
        """Prepare the kernel for a stored state (instead of `init`, never both: a batched
        `init` vectorises the kernel's `sample` each time): its `init` builds the `sample`
        function, here only traced (no compilation, no op-by-op dispatch); returns the shapes
        and dtypes of the state (all chains when vectorised, else one) and whether they carry
        the chain axis."""
        keys = jax.random.split(key, self.chains) if self.chains > 1 else key[None]
        if self.mode == "vectorized":
            keys, params, batched = keys, init_params, True
        else:
            keys, params, batched = keys[0], {k: v[0] for k, v in init_params.items()}, False

        def init(k, p):
            return self.kernel.init(k, self.num_warmup, p, (), {})

        return jax.eval_shape(init, keys, params), batched

    def _chunk_fn(self):
        post = self.kernel.postprocess_fn((), {})
        if self.mode == "vectorized":
            post = jax.vmap(post)
        fields = self.fields

        def collect(s):
            return post(s.z), {f: getattr(s, f) for f in fields}

        def chunk(state, n):
            # A loop with a traced trip count: one compiled program serves every chunk length.
            out = jax.eval_shape(collect, state)
            buf = jax.tree.map(lambda v: jnp.zeros((self.size, *v.shape), v.dtype), out)

            def body(i, carry):
                s, b = carry
                s = self.kernel.sample(s, (), {})
                return s, jax.tree.map(lambda bb, v: bb.at[i].set(v), b, collect(s))

            return lax.fori_loop(0, n, body, (state, buf))

        return chunk

    def advance(self, state, n: int):
        """Run `n` (<= size) iterations from `state`; returns the new state and the collected
        ``(samples, extra)`` as host arrays of shape ``(chains, n, ...)``."""
        steps = jnp.asarray(n, dtype=jnp.int64 if jax.config.jax_enable_x64 else jnp.int32)
        if self.mode == "vectorized":
            if self._compiled is None:
                self._compiled = jax.jit(self._chunk_fn())
            state, (z, ex) = self._compiled(state, steps)
            z, ex = jax.tree.map(lambda x: np.swapaxes(np.asarray(x)[:n], 0, 1), (z, ex))
            return state, z, ex
        per_chain = [jax.tree.map(lambda x, c=c: x[c], state) for c in range(self.chains)]
        if self.mode == "parallel":
            outs = self._on_devices(per_chain, steps)
        else:
            if self._compiled is None:
                self._compiled = jax.jit(self._chunk_fn())
            outs = [self._compiled(s, steps) for s in per_chain]
        home = jax.local_devices()[0] if self.mode == "parallel" else None
        states = [o[0] if home is None else jax.device_put(o[0], home) for o in outs]
        state = jax.tree.map(lambda *xs: jnp.stack(xs), *states)
        z, ex = jax.tree.map(
            lambda *xs: np.stack([np.asarray(x)[:n] for x in xs]), *[o[1] for o in outs]
        )
        return state, z, ex

    def _on_devices(self, per_chain, steps):
        devices = jax.local_devices()[: self.chains]
        args = [jax.device_put((s, steps), d) for s, d in zip(per_chain, devices, strict=True)]
        if self._compiled is None:
            fn = self._chunk_fn()
            # Tracing is not thread-safe and is cached: trace on this thread, compile (XLA,
            # which releases the GIL) for all devices at once, keep the executables for every chunk.
            lowered = [
                jax.jit(fn, in_shardings=SingleDeviceSharding(d)).trace(*a).lower()
                for a, d in zip(args, devices, strict=True)
            ]
            with ThreadPoolExecutor(len(lowered)) as pool:
                self._compiled = list(pool.map(lambda lo: lo.compile(), lowered))
        # Asynchronous dispatch: the chains run concurrently, one per device.
        return [c(*a) for c, a in zip(self._compiled, args, strict=True)]


def chain_mode(chain_method, num_chains: int) -> str:
    """The name of a resolved `chain_method` (from `fit._chain_method`)."""
    if num_chains == 1:
        return "sequential"  # as MCMC: one chain runs directly, whatever the method
    if chain_method is on_devices:
        return "parallel"
    if chain_method in ("sequential", "vectorized"):
        return chain_method
    raise InputError(f"chain_method = {chain_method!r} cannot be checkpointed")


def run_chunked(
    kernel,
    key,
    init_params: Mapping[str, jax.Array],
    *,
    path: Path,
    fp: dict,
    resume: Checkpoint | None,
    num_chains: int,
    num_warmup: int,
    num_samples: int,
    every: int,
    mode: str,
    fields: tuple[str, ...],
    progress_bar: bool,
) -> tuple[dict, dict, object]:
    """Run NUTS `kernel` for `num_warmup` + `num_samples` iterations per chain in chunks of at
    most `every`, writing the checkpoint `path` after each chunk; start from `resume` when given.

    **Arguments:**
    - `key`: the run's PRNG key (split into one key per chain as `MCMC.run` splits it).
    - `init_params`: initial unconstrained values, site -> ``(num_chains, ...)``.
    - `fp`: the run's [`fingerprint`][]; `mode`: [`chain_mode`][]; `fields`: state fields
      collected besides the samples (e.g. ``("diverging", "energy", "num_steps")``).

    **Returns:** ``(samples, extra, last_state)``: site -> ``(chains, num_samples, ...)``,
    field -> ``(chains, num_samples)`` and the final state (leading chain axis).
    """
    chains = _Chains(kernel, mode, num_chains, num_warmup, every, fields)
    total = num_warmup + num_samples
    # Temp files of a writer killed mid-write (`_atomic_write` names them ".<name>.*.tmp"): one
    # run per checkpoint path, so none of them is live.
    for stale in path.parent.glob(f".{glob.escape(path.name)}.*.tmp"):
        stale.unlink(missing_ok=True)
    if resume is None:
        state, done, draws, extra = chains.init(key, init_params), 0, {}, {}
    else:
        proto, batched = chains.prototype(key, init_params)
        impl = str(jax.random.key_impl(key))
        state = _restore_state(path, resume, proto, batched, num_chains, impl)
        done, draws, extra = resume.steps_done, dict(resume.draws), dict(resume.extra)
    bounds = chunk_ends(num_warmup, total, every, done)
    progress = _Progress(total, done) if progress_bar else None
    try:
        for lo, hi in itertools.pairwise([done, *bounds]):
            state, z, ex = chains.advance(state, hi - lo)
            if lo >= num_warmup:
                draws = _append(draws, z)
                extra = _append(extra, ex)
            write_checkpoint(path, fp, hi, total, state, draws, extra)
            done = hi
            if progress is not None:
                progress.update(done, num_warmup)
            _after_chunk(path, done, total)
    finally:
        if progress is not None:
            progress.close()
    return draws, extra, state


def chunk_ends(num_warmup: int, total: int, every: int, done: int) -> list[int]:
    """Iteration counts at which the chunks after `done` end: every `every` iterations, counted
    from the start and again from the end of warm-up (so each sampling chunk but the last holds
    `every` draws, and no chunk mixes warm-up and draws), and at `total`. A resumed run starts
    at `done`, which may lie between two ends if its file was written with another `every`."""
    ends = {*range(every, num_warmup, every), num_warmup, *range(num_warmup + every, total, every)}
    return sorted(e for e in {*ends, total} if e > done)


def _append(acc: dict, new: dict) -> dict:
    if not acc:
        return dict(new)
    return {k: np.concatenate([acc[k], new[k]], axis=1) for k in acc}


class _Progress:
    """A rich progress bar over iterations per chain, advanced once per checkpointed chunk."""

    def __init__(self, total: int, done: int):
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

        self._bar = Progress(
            "[progress.description]{task.description}",
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
        )
        self._bar.start()
        what = "NUTS (resumed)" if done else "NUTS"
        self._task = self._bar.add_task(what, total=total, completed=done)

    def update(self, done: int, num_warmup: int) -> None:
        phase = "warm-up" if done <= num_warmup else "sampling"
        self._bar.update(self._task, completed=done, description=f"NUTS {phase}, checkpointed")

    def close(self) -> None:
        self._bar.stop()
