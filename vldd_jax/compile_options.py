"""`jit`: `jax.jit` with the XLA options this project's steps run fastest with.

XLA:CPU (jaxlib 0.10) hands dots to its YNNPACK library both inside fusions
and one by one; one by one, the meta step's dots need many operands
transposed first (elementwise fusions writing transposed layouts, ~13% of an
iteration). Keeping the library to fused dots made the exact meta step 1.4x
faster and the student's train step ~1.15x (docs/benchmarks.md). Other
backends compile with their defaults.
"""
from collections.abc import Callable
import functools

import jax
import jax.numpy as jnp

_CPU = {"xla_cpu_experimental_ynn_fusion_type": "LIBRARY_FUSION_TYPE_DOT"}


@functools.cache
def compiler_options() -> dict | None:
  """The options for the default backend; None where there are none (another
  backend, or a jaxlib without this option)."""
  if jax.default_backend() != "cpu":
    return None
  try:
    jax.jit(lambda x: x @ x, compiler_options=_CPU).lower(jnp.ones((2, 2))).compile()
  except jax.errors.JaxRuntimeError:
    return None
  return dict(_CPU)


def jit(fn: Callable | None = None, **kwargs) -> Callable:
  """`jax.jit(fn, **kwargs)` with `compiler_options()`; also a decorator
  (`functools.partial(jit, donate_argnums=0)`). Call it after
  `jax.distributed.initialize`: it asks JAX for the default backend."""
  if fn is None:
    return functools.partial(jit, **kwargs)
  return jax.jit(fn, compiler_options=compiler_options(), **kwargs)
