"""Test configuration: float64 everywhere and strict dtype promotion, as in production."""

import os

os.environ.setdefault("MPLBACKEND", "Agg")

import jax

import twinjax  # noqa: F401  (enables x64)

jax.config.update("jax_enable_x64", True)
jax.config.update("jax_numpy_dtype_promotion", "strict")
