"""`jit`: `jax.jit` with the XLA options each kind of program runs fastest with.

XLA:CPU (jaxlib 0.10) hands dots to its YNNPACK library both inside fusions
and one by one; one by one, the meta step's dots need many operands
transposed first (elementwise fusions writing transposed layouts, ~13% of an
iteration). Keeping the library to fused dots made the exact meta step 1.4x
faster and the student's train step ~1.15x (docs/benchmarks.md). MiniLM's
large dense layers are the other way round: they ran 1.2-1.3x faster with
oneDNN's dots than with YNNPACK's, and the ViT steps 1.3x slower
(`benchmarks/compile_options.py`). Other backends compile with their defaults.
"""
from collections.abc import Callable
import functools

import jax
import jax.numpy as jnp

_CPU = {
    # The image and text towers' train, meta and embedding steps.
    "steps": {"xla_cpu_experimental_ynn_fusion_type": "LIBRARY_FUSION_TYPE_DOT"},
    # The frozen text encoder (`text.TextEncoder`).
    "text_encoder": {"xla_cpu_experimental_onednn_fusion_type": "LIBRARY_FUSION_TYPE_DOT",
                     "xla_cpu_experimental_ynn_fusion_type": ""},
}


@functools.cache
def compiler_options(kind: str = "steps") -> dict | None:
  """The options for `kind` ("steps" or "text_encoder") on the default backend;
  None where there are none (another backend, or a jaxlib without them)."""
  if kind not in _CPU:
    raise ValueError(f"kind must be one of {sorted(_CPU)}, got {kind!r}")
  if jax.default_backend() != "cpu":
    return None
  try:
    jax.jit(lambda x: x @ x, compiler_options=_CPU[kind]).lower(jnp.ones((2, 2))).compile()
  except jax.errors.JaxRuntimeError:
    return None
  return dict(_CPU[kind])


def jit(fn: Callable | None = None, *, kind: str = "steps", **kwargs) -> Callable:
  """`jax.jit(fn, **kwargs)` with `compiler_options(kind)`; also a decorator
  (`functools.partial(jit, donate_argnums=0)`). Call it after
  `jax.distributed.initialize`: it asks JAX for the default backend."""
  if fn is None:
    return functools.partial(jit, kind=kind, **kwargs)
  return jax.jit(fn, compiler_options=compiler_options(kind), **kwargs)
