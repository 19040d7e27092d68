"""Test-wide settings: compiled-code speed does not matter in tests."""
import jax

jax.config.update("jax_disable_most_optimizations", True)
