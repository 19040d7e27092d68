"""vldd_jax: vision-language dataset distillation in JAX."""
from vldd_jax.distilled_set import DistilledSet, load_distilled

__all__ = ["DistilledSet", "load_distilled"]
