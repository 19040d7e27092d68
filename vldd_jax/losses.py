"""Contrastive image-text losses: symmetric InfoNCE, its soft-target variant, LoRS's
weighted BCE and the SigLIP sigmoid loss."""
import jax
import jax.numpy as jnp
import optax


def _logits(
    image_emb: jax.Array, text_emb: jax.Array, logit_scale: jax.Array | float
) -> jax.Array:
  if image_emb.ndim != 2 or image_emb.shape != text_emb.shape:
    raise ValueError(
        "image_emb and text_emb must both be [B, D] with the same shape, got "
        f"{image_emb.shape} and {text_emb.shape}"
    )
  return logit_scale * image_emb @ text_emb.T


def contrastive_loss(
    image_emb: jax.Array, text_emb: jax.Array, logit_scale: jax.Array | float
) -> jax.Array:
  """Symmetric InfoNCE (CLIP) loss over a batch of aligned pairs.

  Args:
    image_emb: L2-normalised image embeddings, [B, D].
    text_emb: L2-normalised text embeddings, [B, D]; pair i is (image i, text i).
    logit_scale: multiplier on the cosine similarities (the VLDD paper fixes it
      at 1 / 0.07); may be a traced scalar if it is learned.

  Returns:
    Scalar: mean of the image→text and text→image cross-entropies, each
    averaged over the batch.
  """
  logits = _logits(image_emb, text_emb, logit_scale)
  labels = jnp.arange(logits.shape[0])
  i2t = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
  t2i = optax.softmax_cross_entropy_with_integer_labels(logits.T, labels)
  return 0.5 * (i2t.mean() + t2i.mean())


def soft_contrastive_loss(
    image_emb: jax.Array,
    text_emb: jax.Array,
    logit_scale: jax.Array | float,
    targets: jax.Array,
) -> jax.Array:
  """Symmetric InfoNCE against a soft target similarity matrix.

  Image→text uses row i of `targets` as the distribution over texts for image
  i; text→image uses column j as the distribution over images for text j. So
  rows should sum to 1 for the first direction and columns for the second
  (a doubly stochastic matrix serves both). With `targets = eye(B)` this
  equals `contrastive_loss`.

  Args:
    image_emb: L2-normalised image embeddings, [B, D].
    text_emb: L2-normalised text embeddings, [B, D].
    logit_scale: multiplier on the cosine similarities.
    targets: target similarity matrix, [B, B], indexed [image, text].

  Returns:
    Scalar: mean of the two soft cross-entropies, each averaged over the batch.
  """
  logits = _logits(image_emb, text_emb, logit_scale)
  if targets.shape != logits.shape:
    raise ValueError(
        f"targets must be {logits.shape} (batch × batch), got {targets.shape}"
    )
  i2t = optax.softmax_cross_entropy(logits, targets)
  t2i = optax.softmax_cross_entropy(logits.T, targets.T)
  return 0.5 * (i2t.mean() + t2i.mean())


def weighted_bce_loss(
    image_emb: jax.Array,
    text_emb: jax.Array,
    logit_scale: jax.Array | float,
    targets: jax.Array,
) -> jax.Array:
  """LoRS's weighted binary cross-entropy against a target similarity matrix.

  Every (image, text) logit is an independent binary prediction of its target
  in [0, 1]; the mean BCE over the positive entries (target > 0.5) and the mean
  over the negative ones are averaged, so the B positives weigh as much as the
  B² - B negatives (Xu et al., "Low-Rank Similarity Mining for Multimodal
  Dataset Distillation", ICML 2024; `loss_type=WBCE` in their code, the
  default of every LoRS script). Arguments as `soft_contrastive_loss`; returns
  the scalar (mean positive BCE + mean negative BCE) / 2.
  """
  logits = _logits(image_emb, text_emb, logit_scale)
  if targets.shape != logits.shape:
    raise ValueError(
        f"targets must be {logits.shape} (batch × batch), got {targets.shape}"
    )
  bce = optax.sigmoid_binary_cross_entropy(logits, targets)
  positive = jax.lax.stop_gradient(targets > 0.5)

  def masked_mean(mask):
    return jnp.sum(jnp.where(mask, bce, 0.0)) / jnp.maximum(jnp.sum(mask), 1)

  return 0.5 * (masked_mean(positive) + masked_mean(~positive))


def sigmoid_loss(
    image_emb: jax.Array,
    text_emb: jax.Array,
    logit_scale: jax.Array | float,
    targets: jax.Array,
    bias: jax.Array | float,
) -> jax.Array:
  """SigLIP's sigmoid loss (Zhai et al., ICCV 2023) against soft targets.

  Each (image, text) logit, scale x cosine + `bias`, is a binary prediction of
  its target: -1/B sum_ij [t_ij log sigmoid(l_ij) + (1 - t_ij) log sigmoid(-l_ij)],
  which with `targets = eye(B)` is SigLIP's -1/B sum_ij log sigmoid(z_ij l_ij),
  z = +1 on the diagonal and -1 elsewhere. The bias (SigLIP: learned, from
  -10) offsets the B^2 - B negatives, which plain (weighted) BCE lacks.
  """
  logits = _logits(image_emb, text_emb, logit_scale) + bias
  if targets.shape != logits.shape:
    raise ValueError(
        f"targets must be {logits.shape} (batch × batch), got {targets.shape}"
    )
  return optax.sigmoid_binary_cross_entropy(logits, targets).sum() / logits.shape[0]
