"""vldd_jax: vision-language dataset distillation in JAX."""
