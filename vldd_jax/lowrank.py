"""Learned low-rank similarity targets for a distilled set (LoRS).

Xu et al., "Low-Rank Similarity Mining for Multimodal Dataset Distillation"
(ICML 2024) distil, besides N pairs, an N x N matrix S that says how much each
synthetic image matches each synthetic text, used as soft targets of the
student's contrastive loss:

  S = diag(a) + (alpha / rank) * L @ R.T,   indexed [image, text],

with a = 1, L ~ N(0, 1) and R = 0 at the start, so S starts as the identity:
the plain one-to-one targets. Their Flickr30K 100-pair script uses rank 10,
alpha 3 and learning rate 10 for S.
"""
import jax
import jax.numpy as jnp


def init(num_pairs: int, rank: int, key: jax.Array) -> dict[str, jax.Array]:
  """The factors {a, left, right} of S = identity."""
  return {"a": jnp.ones(num_pairs),
          "left": jax.random.normal(key, (num_pairs, rank)),
          "right": jnp.zeros((num_pairs, rank))}


def targets(sim: dict[str, jax.Array], rows: jax.Array, alpha: float) -> jax.Array:
  """S restricted to a minibatch: [B, B] for images `rows` and texts `rows`."""
  rank = sim["left"].shape[1]
  low_rank = (alpha / rank) * sim["left"][rows] @ sim["right"][rows].T
  return jnp.diag(sim["a"][rows]) + low_rank


def num_floats(num_pairs: int, rank: int) -> int:
  """Storage of S in floats: a, L and R."""
  return num_pairs * (1 + 2 * rank)
