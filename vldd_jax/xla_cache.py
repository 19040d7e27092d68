"""XLA's persistent compilation cache: a later process reuses what an earlier one
compiled (the meta step takes 8-34 s to compile on a CPU)."""
import os

import jax

# Shared by every run on this machine; `main.py --compile_cache` overrides it.
DEFAULT = os.environ.get("VLDD_COMPILE_CACHE", "~/.cache/vldd_jax/xla")


def enable(path: str) -> None:
  """Caches in `path` ('': off) every compilation that took over JAX's
  `jax_persistent_cache_min_compile_time_secs` (1 s unless set, e.g. by the
  environment variable of that name)."""
  if path:
    jax.config.update("jax_compilation_cache_dir", os.path.expanduser(path))
