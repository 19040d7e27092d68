"""Post-LoRS options: representation blending, head-only matching, EMA of the set."""
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from vldd_jax import config_lib
from vldd_jax import distill
from vldd_jax import matching
from vldd_jax import models
from vldd_jax import objectives
from vldd_jax import trainer
from vldd_jax import trajectories
from test_matching import IMAGE, TEXT_DIM, _perturb, _problem


def _blend(alpha=1.0, decay=0.0) -> objectives.Blend:
  return objectives.Blend(ml_collections.ConfigDict(
      dict(objective="blend", blend_alpha=alpha, ema_decay=decay)))


def test_blend_with_coefficient_one_is_the_plain_forward_and_mixes_head_inputs():
  apply_fn, trainable, frozen, *_ = _problem(jnp.float32)
  images = jax.random.normal(jax.random.key(0), (5,) + IMAGE)
  text = jax.random.normal(jax.random.key(1), (5, TEXT_DIM))
  perm = jnp.array([3, 0, 4, 1, 2])
  plain = apply_fn(trainable, frozen, images, text)
  same = apply_fn(trainable, frozen, images, text, blend=(jnp.float32(1.0), perm))
  for a, b in zip(plain[:2], same[:2]):
    np.testing.assert_array_equal(a, b)
  # lam = 0.3: each head sees 0.3 x + 0.7 x[perm] of its input.
  model = models.build_model(_config())
  features = models.make_feature_fn(model)(trainable, frozen, images)
  mixed = 0.3 * features + 0.7 * features[perm]
  img, txt, _ = apply_fn(trainable, frozen, images, text, blend=(jnp.float32(0.3), perm))
  np.testing.assert_allclose(img, apply_fn(trainable, frozen, mixed, None,
                                           features=True)[0], rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(txt, apply_fn(trainable, frozen, None,
                                           0.3 * text + 0.7 * text[perm])[1],
                             rtol=1e-5, atol=1e-6)


def _config(trainable="lora+heads", rank=2):
  config = config_lib.model_config()
  config.vit.update(dict(patch=8, width=8, depth=1, heads=2, mlp_dim=16))
  config.lora.rank = rank
  config.embed_dim = 4
  config.trainable = trainable
  return config


def _check_central_differences(loss, syn):
  """The gradient of `loss` along a random direction of each part of the set
  against central differences (float64)."""
  grad = jax.grad(loss)(syn)
  for part in ("images", "text_emb", "log_lr"):
    direction = jax.random.normal(jax.random.key(5), syn[part].shape, jnp.float64)
    h = 1e-5
    numeric = (loss({**syn, part: syn[part] + h * direction}) -
               loss({**syn, part: syn[part] - h * direction})) / (2 * h)
    analytic = jnp.vdot(grad[part], direction)
    assert abs(analytic) > 1e-6, part  # The gradient reaches this part.
    np.testing.assert_allclose(analytic, numeric, rtol=1e-3, err_msg=part)


def test_blend_meta_gradient_matches_central_differences():
  with jax.enable_x64(True):
    apply_fn, trainable, frozen, start, target, syn = _problem(jnp.float64)
    # Without DSA (test_matching checks the gradient through it): a third of
    # the compile time.
    cfg = matching.UnrollConfig(syn_steps=3, batch_size=4, augment=False)
    matching_loss = matching.make_matching_loss(apply_fn, trainable, cfg, _blend(1.0))
    loss = jax.jit(lambda s: matching_loss(s, start, target, frozen, jax.random.key(4)))
    plain = matching.make_matching_loss(apply_fn, trainable, cfg)
    assert abs(float(loss(syn)) - float(plain(syn, start, target, frozen,
                                              jax.random.key(4)))) > 1e-6  # It blends.
    _check_central_differences(loss, syn)


def _heads_problem(rank):
  config = _config("heads", rank)
  model = models.build_model(config)
  student = trainer.init_student(config, jax.random.key(0), IMAGE, TEXT_DIM)
  f64 = lambda tree: jax.tree.map(lambda x: x.astype(jnp.float64), tree)
  trainable, frozen = f64(student.trainable), f64(student.frozen)
  start = _perturb(trainable, jax.random.key(1), 0.3)
  target = _perturb(start, jax.random.key(2), 0.05)
  *_, syn = _problem(jnp.float64)
  return student.apply_fn, models.make_feature_fn(model), trainable, frozen, start, target, syn


def test_head_only_matching_runs_the_tower_once_with_the_same_loss_and_gradient():
  with jax.enable_x64(True):
    # A tower without LoRA, with DSA drawn outside the unroll when hoisted, and
    # one whose LoRA stays frozen (DSA off: its compilations take a third longer).
    for rank, augment in ((0, True), (2, False)):
      apply_fn, feature_fn, trainable, frozen, start, target, syn = _heads_problem(rank)
      assert "img" not in trainable
      values = {}
      for hoist in (True, False):
        cfg = matching.UnrollConfig(syn_steps=3, batch_size=4, augment=augment,
                                    hoist_tower=hoist)
        loss = matching.make_matching_loss(apply_fn, trainable, cfg, _blend(1.0),
                                           feature_fn)
        values[hoist] = jax.jit(jax.value_and_grad(
            lambda s: loss(s, start, target, frozen, jax.random.key(7))))(syn)
      np.testing.assert_allclose(values[True][0], values[False][0], rtol=1e-10)
      for part in syn:
        assert np.abs(values[True][1][part]).max() > 0, part
        np.testing.assert_allclose(values[True][1][part], values[False][1][part],
                                   rtol=1e-8, atol=1e-12, err_msg=part)


def test_head_only_meta_gradient_matches_central_differences():
  with jax.enable_x64(True):
    apply_fn, feature_fn, trainable, frozen, start, target, syn = _heads_problem(0)
    cfg = matching.UnrollConfig(syn_steps=3, batch_size=4, augment=True, hoist_tower=True)
    matching_loss = matching.make_matching_loss(apply_fn, trainable, cfg, None, feature_fn)
    loss = jax.jit(lambda s: matching_loss(s, start, target, frozen, jax.random.key(4)))
    _check_central_differences(loss, syn)


def _meta_steps(objective, ema: bool, steps=3):
  apply_fn, trainable, frozen, start, target, syn = _problem(jnp.float32)
  cfg = matching.UnrollConfig(syn_steps=2, batch_size=4, augment=False)
  tx = matching.make_meta_optimizer(1e-2, 1e-2, 1e-2, momentum=0.5,
                                    optimizer="normalized")
  meta_step = matching.make_meta_step(apply_fn, trainable, cfg, tx, objective)
  stack = lambda tree: jax.tree.map(lambda x: x[None], tree)
  state = matching.init_state(syn, tx, ema=ema)
  history = [jax.tree.map(np.asarray, state["syn"])]
  for i in range(steps):
    state, _ = meta_step(state, stack(start), stack(target), frozen, jax.random.key(i))
    history.append(jax.tree.map(np.asarray, state["syn"]))
  return jax.tree.map(np.asarray, state), history


def test_the_ema_is_the_moving_average_of_the_set_and_changes_nothing_else():
  plain, _ = _meta_steps(_blend(0.0, 0.0), ema=False)
  state, history = _meta_steps(_blend(0.0, 0.6), ema=True)
  for part in plain["syn"]:
    np.testing.assert_array_equal(state["syn"][part], plain["syn"][part])  # EMA only reads.
    expected = history[0][part]
    for syn in history[1:]:
      expected = 0.6 * expected + 0.4 * syn[part]
    np.testing.assert_allclose(state["ema"][part], expected, rtol=1e-5, atol=1e-7)
    assert not np.allclose(state["ema"][part], state["syn"][part]), part


def test_head_only_experts_with_frozen_lora_are_refused_with_the_fix(monkeypatch):
  frozen = {0: {"img": {"block": {"lora_a": np.zeros(3)}, "w": np.ones(2)}},
            1: {"img": {"block": {"lora_a": np.ones(3)}, "w": np.ones(2)}}}
  monkeypatch.setattr(trajectories, "load_frozen", lambda workdir, e: frozen[e])
  with pytest.raises(ValueError, match=r"img/block/lora_a.*model\.lora\.rank=0"):
    distill._shared_frozen("w", [0, 1])
  frozen[1] = {"img": {"block": {"lora_a": np.zeros(3)}, "w": np.zeros(2)}}
  with pytest.raises(ValueError, match=r"\(img/w, \.\.\.\): distillation needs a shared"):
    distill._shared_frozen("w", [0, 1])


def test_a_non_finite_stop_names_the_objectives_own_rates():
  class NoCheckpoint:
    def latest_step(self):
      return None

  lowrank = objectives.build(ml_collections.ConfigDict(dict(
      objective="lowrank", lowrank_rank=2, lowrank_alpha=1.0, meta_lr_lowrank=1.0,
      lowrank_loss="wbce")))
  with pytest.raises(FloatingPointError,
                     match=r"distill\.meta_lr_rates, distill\.meta_lr_lowrank\)"):
    distill._stop_if_non_finite({"first_bad": 64}, "out", NoCheckpoint(), lowrank)
  distill._stop_if_non_finite({"first_bad": -1}, "out", NoCheckpoint(), lowrank)
