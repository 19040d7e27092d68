"""Tests for the contrastive losses against a plain NumPy definition."""
import jax
import jax.numpy as jnp
from jax.test_util import check_grads
import numpy as np
import pytest

from vldd_jax import losses


def _normalised(rng, b, d, dtype=np.float32):
  x = rng.standard_normal((b, d))
  return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(dtype)


def _log_softmax(logits):
  m = logits.max(axis=1, keepdims=True)
  return logits - m - np.log(np.exp(logits - m).sum(axis=1, keepdims=True))


def _numpy_soft_loss(img, txt, scale, targets):
  logits = scale * img.astype(np.float64) @ txt.astype(np.float64).T
  i2t = -(targets * _log_softmax(logits)).sum(axis=1).mean()
  t2i = -(targets.T * _log_softmax(logits.T)).sum(axis=1).mean()
  return 0.5 * (i2t + t2i)


def _random_targets(rng, b):
  # Row-stochastic and column-stochastic at once: a mix of permutation matrices.
  weights = rng.dirichlet(np.ones(3))
  return sum(w * np.eye(b)[rng.permutation(b)] for w in weights)


@pytest.mark.parametrize("b,d,scale", [(1, 4, 1.0), (6, 8, 1 / 0.07), (17, 5, 3.0)])
def test_contrastive_loss_matches_numpy(b, d, scale):
  rng = np.random.default_rng(b)
  img, txt = _normalised(rng, b, d), _normalised(rng, b, d)
  expected = _numpy_soft_loss(img, txt, scale, np.eye(b))
  got = losses.contrastive_loss(jnp.asarray(img), jnp.asarray(txt), scale)
  assert got.shape == ()
  np.testing.assert_allclose(float(got), expected, rtol=1e-5, atol=1e-6)


def test_contrastive_loss_closed_forms():
  rng = np.random.default_rng(0)
  img = _normalised(rng, 1, 4)
  assert float(losses.contrastive_loss(img, img, 1 / 0.07)) == pytest.approx(0.0, abs=1e-6)
  eye = np.eye(4, dtype=np.float32)
  # Orthogonal pairs at scale s: every row is log(1 + 3 exp(-s)).
  np.testing.assert_allclose(
      float(losses.contrastive_loss(eye, eye, 2.0)), np.log1p(3 * np.exp(-2.0)), rtol=1e-6
  )


@pytest.mark.parametrize("b", [3, 9])
def test_soft_contrastive_loss_matches_numpy(b):
  rng = np.random.default_rng(10 + b)
  img, txt = _normalised(rng, b, 6), _normalised(rng, b, 6)
  targets = _random_targets(rng, b)
  expected = _numpy_soft_loss(img, txt, 5.0, targets)
  got = losses.soft_contrastive_loss(img, txt, 5.0, jnp.asarray(targets, jnp.float32))
  np.testing.assert_allclose(float(got), expected, rtol=1e-5, atol=1e-6)


def test_soft_loss_uses_rows_for_i2t_and_columns_for_t2i():
  # A row-stochastic but not column-stochastic target: only the image→text
  # half is a proper cross-entropy, and the NumPy definition spells out both.
  rng = np.random.default_rng(3)
  img, txt = _normalised(rng, 4, 6), _normalised(rng, 4, 6)
  targets = rng.dirichlet(np.ones(4), size=4)
  expected = _numpy_soft_loss(img, txt, 2.0, targets)
  got = losses.soft_contrastive_loss(img, txt, 2.0, jnp.asarray(targets, jnp.float32))
  np.testing.assert_allclose(float(got), expected, rtol=1e-5)
  swapped = _numpy_soft_loss(img, txt, 2.0, targets.T)
  assert abs(float(got) - swapped) > 1e-3


def test_identity_targets_equal_contrastive_loss():
  rng = np.random.default_rng(1)
  img, txt = _normalised(rng, 8, 16), _normalised(rng, 8, 16)
  hard = losses.contrastive_loss(img, txt, 1 / 0.07)
  soft = losses.soft_contrastive_loss(img, txt, 1 / 0.07, jnp.eye(8))
  np.testing.assert_allclose(float(soft), float(hard), rtol=1e-6)


def test_losses_invariant_to_consistent_batch_permutation():
  rng = np.random.default_rng(2)
  img, txt = _normalised(rng, 7, 5), _normalised(rng, 7, 5)
  targets = _random_targets(rng, 7).astype(np.float32)
  perm = rng.permutation(7)
  hard = losses.contrastive_loss(img, txt, 4.0)
  hard_perm = losses.contrastive_loss(img[perm], txt[perm], 4.0)
  np.testing.assert_allclose(float(hard_perm), float(hard), rtol=1e-6)
  soft = losses.soft_contrastive_loss(img, txt, 4.0, targets)
  soft_perm = losses.soft_contrastive_loss(
      img[perm], txt[perm], 4.0, targets[perm][:, perm]
  )
  np.testing.assert_allclose(float(soft_perm), float(soft), rtol=1e-6)
  # Permuting only one side breaks the pairing and changes the loss.
  broken = losses.contrastive_loss(img[perm], txt, 4.0)
  assert abs(float(broken) - float(hard)) > 1e-2


def test_gradients_match_finite_differences_in_float64():
  rng = np.random.default_rng(4)
  with jax.enable_x64(True):
    img = jnp.asarray(_normalised(rng, 5, 3, np.float64))
    txt = jnp.asarray(_normalised(rng, 5, 3, np.float64))
    targets = jnp.asarray(_random_targets(rng, 5))
    scale = jnp.asarray(2.5, jnp.float64)
    check_grads(losses.contrastive_loss, (img, txt, scale), order=1, modes=("rev",))
    check_grads(
        lambda i, t, s: losses.soft_contrastive_loss(i, t, s, targets),
        (img, txt, scale),
        order=1,
        modes=("rev",),
    )


def test_shape_errors():
  with pytest.raises(ValueError, match="same shape"):
    losses.contrastive_loss(jnp.ones((3, 4)), jnp.ones((2, 4)), 1.0)
  with pytest.raises(ValueError, match="targets"):
    losses.soft_contrastive_loss(jnp.ones((3, 4)), jnp.ones((3, 4)), 1.0, jnp.eye(2))


def test_weighted_bce_matches_its_definition():
  rng = np.random.default_rng(3)
  img, txt = _normalised(rng, 5, 4), _normalised(rng, 5, 4)
  targets = np.clip(np.eye(5) + 0.3 * rng.standard_normal((5, 5)), 0, 1)
  logits = 3.0 * img.astype(np.float64) @ txt.astype(np.float64).T
  p = 1 / (1 + np.exp(-logits))
  bce = -(targets * np.log(p) + (1 - targets) * np.log(1 - p))
  pos = targets > 0.5
  expected = 0.5 * (bce[pos].mean() + bce[~pos].mean())
  got = losses.weighted_bce_loss(jnp.asarray(img), jnp.asarray(txt), 3.0,
                                 jnp.asarray(targets, jnp.float32))
  np.testing.assert_allclose(got, expected, rtol=1e-5)
  # The 5 positives weigh as much as the 20 negatives: with the positives
  # right (logit 50) and every negative undecided (orthogonal: logit 0, BCE
  # log 2), the loss is half of log 2 whatever the batch size.
  eye = jnp.eye(5)
  np.testing.assert_allclose(losses.weighted_bce_loss(eye, eye, 50.0, eye),
                             0.5 * np.log(2), rtol=1e-6)


def _numpy_sigmoid_loss(img, txt, scale, targets, bias):
  logits = scale * img @ txt.T + bias
  log_sig = lambda x: -np.log1p(np.exp(-x))
  return -np.sum(targets * log_sig(logits) + (1 - targets) * log_sig(-logits)) / len(img)


def test_sigmoid_loss_is_siglips_definition():
  rng = np.random.default_rng(0)
  unit = lambda x: x / np.linalg.norm(x, axis=1, keepdims=True)
  img, txt = unit(rng.standard_normal((5, 3))), unit(rng.standard_normal((5, 3)))
  ours = float(losses.sigmoid_loss(jnp.asarray(img), jnp.asarray(txt), 10.0,
                                   jnp.eye(5), -10.0))
  # SigLIP's own form: z = +1 on the diagonal, -1 elsewhere.
  z = 2 * np.eye(5) - 1
  siglip = -np.sum(np.log(1 / (1 + np.exp(-z * (10.0 * img @ txt.T - 10.0))))) / 5
  np.testing.assert_allclose(ours, siglip, rtol=1e-5)
  soft = rng.uniform(size=(5, 5))
  np.testing.assert_allclose(
      float(losses.sigmoid_loss(jnp.asarray(img), jnp.asarray(txt), 3.0,
                                jnp.asarray(soft), 0.5)),
      _numpy_sigmoid_loss(img, txt, 3.0, soft, 0.5), rtol=1e-5)
