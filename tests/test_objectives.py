"""The objectives (`objectives.py`): LoRS's low-rank S and weighted BCE
(`distill.objective=lowrank`) against values computed by hand from the
formulas (docs/lors_comparison.md):

  S = diag(a) + (alpha / rank) L R^T,  a = 1, L ~ N(0, 1), R = 0 at init (S = I);
  WBCE = (mean of BCE over targets > 0.5 + mean of BCE over the rest) / 2,
  BCE(l, t) = -t log sigmoid(l) - (1 - t) log(1 - sigmoid(l)) = softplus(l) - t l.

Nothing here trains.
"""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vldd_jax import config_lib
from vldd_jax import losses
from vldd_jax import objectives
from vldd_jax import lowrank


def _softplus(x: float) -> float:
  return math.log1p(math.exp(x))


def _sigmoid(x: float) -> float:
  return 1.0 / (1.0 + math.exp(-x))


def _lowrank(rank=10, alpha=3.0, loss="wbce", **fields) -> objectives.LowRankSimilarity:
  cfg = config_lib.distill_config()
  cfg.update(objective="lowrank", lowrank_rank=rank, lowrank_alpha=alpha,
             lowrank_loss=loss, **fields)
  obj = objectives.build(cfg)
  assert isinstance(obj, objectives.LowRankSimilarity)
  return obj


# A 2-pair batch whose cosines are [[0.6, 0.8], [0.8, 0.6]] (unit rows), so at
# logit scale 5 the logits are [[3, 4], [4, 3]].
IMG = np.array([[1.0, 0.0], [0.0, 1.0]], np.float32)
TXT = np.array([[0.6, 0.8], [0.8, 0.6]], np.float32)
SCALE = 5.0


# --- S parametrisation -------------------------------------------------------

def test_init_is_identity_with_gaussian_left_and_zero_right():
  n, rank = 200, 10
  sim = lowrank.init(n, rank, jax.random.key(0))
  np.testing.assert_array_equal(sim["a"], np.ones(n))
  np.testing.assert_array_equal(sim["right"], np.zeros((n, rank)))
  left = np.asarray(sim["left"])
  assert left.shape == (n, rank)
  # 2,000 draws of N(0, 1): mean within 5 standard errors, std within 10 %.
  assert abs(left.mean()) < 5 / math.sqrt(left.size)
  assert 0.9 < left.std() < 1.1
  rows = np.array([5, 0, 17, 199])
  np.testing.assert_array_equal(lowrank.targets(sim, rows, 3.0), np.eye(4))
  np.testing.assert_array_equal(lowrank.targets(sim, np.arange(n), 3.0), np.eye(n))


def test_storage_is_n_times_one_plus_two_rank():
  assert lowrank.num_floats(99, 10) == 99 * 21 == 2079
  assert _lowrank(rank=10).extra_floats(99) == 2079


# Hand example: a = (1, 2, 3), rank 2, alpha 3, so alpha / rank = 1.5;
# L R^T = [[0, 1, 2], [1, 0, -1], [1, 1, 1]].
HAND = {"a": jnp.array([1.0, 2.0, 3.0]),
        "left": jnp.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]),
        "right": jnp.array([[0.0, 1.0], [1.0, 0.0], [2.0, -1.0]])}
HAND_S = np.array([[1.0, 1.5, 3.0],
                   [1.5, 2.0, -1.5],
                   [1.5, 1.5, 4.5]])


def test_full_matrix_by_hand():
  np.testing.assert_allclose(lowrank.targets(HAND, np.arange(3), 3.0), HAND_S,
                             rtol=0, atol=1e-6)


def test_minibatch_block_is_rows_and_columns_of_s():
  # Rows (2, 0): diag(a[[2, 0]]) + 1.5 L[[2, 0]] R[[2, 0]]^T
  #            = diag(3, 1) + 1.5 [[1, 1], [2, 0]] = [[4.5, 1.5], [3, 1]].
  rows = np.array([2, 0])
  block = np.asarray(lowrank.targets(HAND, rows, 3.0))
  np.testing.assert_allclose(block, [[4.5, 1.5], [3.0, 1.0]], rtol=0, atol=1e-6)
  np.testing.assert_allclose(block, HAND_S[np.ix_(rows, rows)], rtol=0, atol=1e-6)


def test_objective_targets_export_and_rates():
  obj = _lowrank(rank=2, alpha=3.0)
  syn = {"sim": HAND}
  assert set(obj.targets(syn, np.array([2, 0]))) == {"sim"}
  np.testing.assert_allclose(obj.targets(syn, np.array([2, 0]))["sim"],
                             [[4.5, 1.5], [3.0, 1.0]], rtol=0, atol=1e-6)
  exported = obj.export(syn)
  assert set(exported) == {"similarity"}
  np.testing.assert_allclose(exported["similarity"], HAND_S, rtol=0, atol=1e-6)
  np.testing.assert_allclose(obj.eval_targets(exported)["sim"], HAND_S, rtol=0, atol=1e-6)
  assert obj.rates() == {"sim": obj.cfg.meta_lr_lowrank}
  fresh = obj.init(6, jax.random.key(1))
  assert set(fresh) == {"sim"}
  np.testing.assert_array_equal(obj.targets(fresh, np.array([3, 1, 4]))["sim"], np.eye(3))


# --- WBCE --------------------------------------------------------------------

def test_wbce_identity_targets_by_hand():
  # Positives (diagonal, logit 3): softplus(-3); negatives (logit 4): softplus(4).
  pos = _softplus(-3.0)            # 0.048587
  neg = _softplus(4.0)             # 4.018150
  want = 0.5 * (pos + neg)         # 2.033368
  got = losses.weighted_bce_loss(IMG, TXT, SCALE, np.eye(2, dtype=np.float32))
  assert float(got) == pytest.approx(want, rel=1e-5)
  assert want == pytest.approx(2.033368, abs=1e-6)


def test_wbce_soft_targets_by_hand():
  # Targets [[0.9, 0.3], [0.6, 0.2]] against logits [[3, 4], [4, 3]]:
  # positives (> 0.5): (0,0) t=.9 l=3, (1,0) t=.6 l=4;
  # negatives: (0,1) t=.3 l=4, (1,1) t=.2 l=3; BCE = softplus(l) - t l.
  targets = np.array([[0.9, 0.3], [0.6, 0.2]], np.float32)
  pos = ((_softplus(3.0) - 0.9 * 3.0) + (_softplus(4.0) - 0.6 * 4.0)) / 2  # 0.983368
  neg = ((_softplus(4.0) - 0.3 * 4.0) + (_softplus(3.0) - 0.2 * 3.0)) / 2  # 2.633368
  got = losses.weighted_bce_loss(IMG, TXT, SCALE, targets)
  assert float(got) == pytest.approx(0.5 * (pos + neg), rel=1e-5)
  assert 0.5 * (pos + neg) == pytest.approx(1.808368, abs=1e-6)


def test_wbce_half_is_negative_and_targets_outside_unit_interval():
  # t = 0.5 is not > 0.5: negative. S's entries may leave [0, 1] (no clipping,
  # as in LoRS): BCE stays softplus(l) - t l.
  targets = np.array([[1.5, 0.5], [-0.5, 0.7]], np.float32)
  pos = ((_softplus(3.0) - 1.5 * 3.0) + (_softplus(3.0) - 0.7 * 3.0)) / 2
  neg = ((_softplus(4.0) - 0.5 * 4.0) + (_softplus(4.0) + 0.5 * 4.0)) / 2
  got = losses.weighted_bce_loss(IMG, TXT, SCALE, targets)
  assert float(got) == pytest.approx(0.5 * (pos + neg), rel=1e-5)


def test_wbce_all_positive_batch_has_no_negative_term():
  # Every target > 0.5: the empty negative mean is 0 (LoRS: 0 / (0 + 1e-6) = 0).
  targets = np.full((2, 2), 0.8, np.float32)
  pos = sum(_softplus(l) - 0.8 * l for l in (3.0, 4.0, 4.0, 3.0)) / 4
  got = losses.weighted_bce_loss(IMG, TXT, SCALE, targets)
  assert float(got) == pytest.approx(0.5 * pos, rel=1e-5)


def test_wbce_gradient_by_hand():
  # dWBCE/dl_ij = (sigmoid(l_ij) - t_ij) / (2 n_group); l = s C, so
  # dWBCE/ds = sum_ij (sigmoid(l_ij) - t_ij) C_ij / (2 n_group(ij)); the mask
  # itself carries no gradient.
  cos = TXT.T  # IMG is the identity: C = IMG @ TXT.T = TXT.T (symmetric here).
  want = sum((_sigmoid(SCALE * cos[i, j]) - (i == j)) * cos[i, j] / (2 * 2)
             for i in range(2) for j in range(2))  # 0.378578
  got = jax.grad(lambda s: losses.weighted_bce_loss(IMG, TXT, s, jnp.eye(2)))(SCALE)
  assert float(got) == pytest.approx(want, rel=1e-4)
  assert want == pytest.approx(0.378578, abs=1e-5)


def test_wbce_is_exact_log_sigmoid_at_the_logit_bound():
  # Fixed scale 1 / 0.07: |logit| <= 14.29. At a positive with cosine -1, ours
  # is softplus(14.29) = 14.29 (exact); LoRS's -log(sigmoid(l) + 1e-6) would
  # give 13.33 there (docs/lors_comparison.md): a difference only near |cos| = 1.
  scale = 1 / 0.07
  img = np.array([[1.0, 0.0]], np.float32)
  txt = np.array([[-1.0, 0.0]], np.float32)
  got = losses.weighted_bce_loss(img, txt, scale, np.eye(1, dtype=np.float32))
  assert float(got) == pytest.approx(0.5 * _softplus(scale), rel=1e-5)
  lors = -math.log(_sigmoid(-scale) + 1e-6)
  assert lors == pytest.approx(13.33, abs=0.01)


def test_wbce_differs_from_infonce_at_identity_targets():
  # S = I does not give the plain loss under WBCE (it does under "softmax"):
  # InfoNCE on logits [[3, 4], [4, 3]] is log(1 + e) = 1.313262 both ways.
  eye = np.eye(2, dtype=np.float32)
  infonce = math.log1p(math.e)
  assert float(losses.contrastive_loss(IMG, TXT, SCALE)) == pytest.approx(infonce, rel=1e-5)
  assert float(losses.soft_contrastive_loss(IMG, TXT, SCALE, eye)) == pytest.approx(
      infonce, rel=1e-5)
  assert float(losses.weighted_bce_loss(IMG, TXT, SCALE, eye)) == pytest.approx(
      0.5 * (_softplus(-3.0) + _softplus(4.0)), rel=1e-5)


def test_objective_loss_is_wbce_against_the_block():
  obj = _lowrank(rank=2, alpha=3.0)
  block = obj.targets({"sim": HAND}, np.array([2, 0]))  # [[4.5, 1.5], [3, 1]]
  # All four > 0.5: positives only, the negative mean is 0.
  pos = sum(_softplus(l) - t * l for l, t in ((3.0, 4.5), (4.0, 1.5), (4.0, 3.0),
                                              (3.0, 1.0))) / 4
  got = obj.loss(jnp.asarray(IMG), jnp.asarray(TXT), SCALE, block)
  assert float(got) == pytest.approx(0.5 * pos, rel=1e-5)


def test_lowrank_learns_s_on_its_own_student_batch():
  # LoRS's mini_batch_size: S's blocks are the pairs that share a student step.
  assert _lowrank().student_batch(50) == 20
  assert _lowrank(lowrank_batch_size=0).student_batch(50) == 50
  assert objectives.Plain().student_batch(50) == 50


def test_the_moving_average_objective_never_blends_and_blend_keeps_repblends_alpha():
  cfg = config_lib.small_data_distill_config()
  cfg.objective = "ema"
  ema = objectives.build(cfg)
  assert (ema.ema_decay(), ema.blend_alpha(), ema.fields) == (0.97, 0.0, ("ema_decay",))
  cfg.objective = "blend"
  blend = objectives.build(cfg)
  assert (blend.ema_decay(), blend.blend_alpha()) == (0.97, 1.0)
  assert objectives.methods() == {"distilled": "plain", "distilled_lowrank": "lowrank",
                                 "distilled_ema": "ema", "distilled_blend": "blend"}
