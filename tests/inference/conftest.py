import jax
import pytest


@pytest.fixture(scope="module", autouse=True)
def _standard_promotion():
    """NumPyro's samplers mix integer and float arrays internally; twinjax's own code stays
    strict (tests elsewhere), inference tests run NumPyro under JAX's standard promotion."""
    with jax.numpy_dtype_promotion("standard"):
        yield
