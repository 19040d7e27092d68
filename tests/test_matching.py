"""The trajectory-matching loss and meta step: exactness, reverse-pass memory, NaN guard."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vldd_jax import augment
from vldd_jax import compile_options
from vldd_jax import config_lib
from vldd_jax import matching
from vldd_jax import objectives
from vldd_jax import trainer
from vldd_jax.data.input_pipeline import Split

TEXT_DIM = 8
IMAGE = (16, 16, 3)


def _student(dtype=jnp.float32):
  config = config_lib.model_config()
  config.vit.update(dict(patch=8, width=8, depth=1, heads=2, mlp_dim=16))
  config.lora.rank = 2
  config.embed_dim = 4
  student = trainer.init_student(config, jax.random.key(0), IMAGE, TEXT_DIM)
  cast = lambda tree: jax.tree.map(lambda x: x.astype(dtype), tree)
  return student.apply_fn, cast(student.trainable), cast(student.frozen)


def _perturb(tree, key, scale):
  leaves, treedef = jax.tree.flatten(tree)
  keys = jax.random.split(key, len(leaves))
  return treedef.unflatten([x + scale * jax.random.normal(k, x.shape, x.dtype)
                            for x, k in zip(leaves, keys)])


def _problem(dtype, n=6):
  apply_fn, trainable, frozen = _student(dtype)
  start = _perturb(trainable, jax.random.key(1), 0.3)  # LoRA B away from zero.
  target = _perturb(start, jax.random.key(2), 0.05)
  k1, k2 = jax.random.split(jax.random.key(3))
  syn = {"images": jax.random.normal(k1, (n,) + IMAGE, dtype),
         "text_emb": jax.random.normal(k2, (n, TEXT_DIM), dtype),
         "log_lr": jnp.log(jnp.array([0.1, 0.2], dtype))}
  return apply_fn, trainable, frozen, start, target, syn


def test_meta_gradient_matches_central_differences():
  with jax.enable_x64(True):
    apply_fn, trainable, frozen, start, target, syn = _problem(jnp.float64)
    cfg = matching.UnrollConfig(syn_steps=3, batch_size=4, augment=True)
    loss = jax.jit(lambda s: matching.make_matching_loss(apply_fn, trainable, cfg)(
        s, start, target, frozen, jax.random.key(4)))
    grad = jax.grad(loss)(syn)
    for part in ("images", "text_emb", "log_lr"):
      direction = jax.random.normal(jax.random.key(5), syn[part].shape, jnp.float64)
      h = 1e-5
      plus = loss({**syn, part: syn[part] + h * direction})
      minus = loss({**syn, part: syn[part] - h * direction})
      numeric = (plus - minus) / (2 * h)
      analytic = jnp.vdot(grad[part], direction)
      assert abs(analytic) > 1e-6, part  # The gradient reaches this part.
      np.testing.assert_allclose(analytic, numeric, rtol=1e-3, err_msg=part)


def _python_unrolled_loss(apply_fn, trainable, cfg, syn, start, target, frozen, key):
  step = matching.make_student_step(apply_fn, trainable, objectives.Plain(), cfg.augment)
  k_batches, k_steps = jax.random.split(key)
  batches = matching.minibatch_indices(k_batches, syn["text_emb"].shape[0], cfg.syn_steps,
                                       cfg.batch_size)
  params = start
  for rows, k in zip(batches, jax.random.split(k_steps, cfg.syn_steps)):
    params = step(params, frozen, syn["images"][rows], syn["text_emb"][rows],
                  jnp.exp(syn["log_lr"]), k)
  dist = lambda a, b: sum(jnp.sum((x - y) ** 2) for x, y in zip(jax.tree.leaves(a),
                                                               jax.tree.leaves(b)))
  return dist(params, target) / dist(start, target)


def test_scan_equals_python_unrolled_gradient():
  with jax.enable_x64(True):  # Same maths, different op order: compare in float64.
    apply_fn, trainable, frozen, start, target, syn = _problem(jnp.float64)
    cfg = matching.UnrollConfig(syn_steps=3, batch_size=4, augment=True)
    key = jax.random.key(6)
    scanned = jax.jit(jax.value_and_grad(lambda s: matching.make_matching_loss(
        apply_fn, trainable, cfg)(s, start, target, frozen, key)))(syn)
    unrolled = jax.jit(jax.value_and_grad(lambda s: _python_unrolled_loss(
        apply_fn, trainable, cfg, s, start, target, frozen, key)))(syn)
    np.testing.assert_allclose(scanned[0], unrolled[0], rtol=1e-10)
    for part in syn:
      np.testing.assert_allclose(scanned[1][part], unrolled[1][part], rtol=1e-8,
                                 atol=1e-12, err_msg=part)


def test_cpu_compile_options_are_valid_and_change_no_result():
  # A jaxlib without the option would silently give back the 1.4x (the helper
  # falls back to XLA's defaults): this is where that shows.
  assert compile_options.compiler_options() == {
      "xla_cpu_experimental_ynn_fusion_type": "LIBRARY_FUSION_TYPE_DOT"}
  assert compile_options.compiler_options("text_encoder") == {
      "xla_cpu_experimental_onednn_fusion_type": "LIBRARY_FUSION_TYPE_DOT",
      "xla_cpu_experimental_ynn_fusion_type": ""}
  apply_fn, trainable, frozen, start, target, syn = _problem(jnp.float32, n=8)
  cfg = matching.UnrollConfig(syn_steps=3, batch_size=4, augment=False)
  value_and_grad = jax.value_and_grad(lambda s: matching.make_matching_loss(
      apply_fn, trainable, cfg)(s, start, target, frozen, jax.random.key(7)))
  ours, xla_defaults = compile_options.jit(value_and_grad)(syn), jax.jit(value_and_grad)(syn)
  np.testing.assert_allclose(ours[0], xla_defaults[0], rtol=1e-5)
  for part in syn:  # float32 rounding, relative to the part's largest entry.
    scale = float(np.abs(xla_defaults[1][part]).max())
    np.testing.assert_allclose(ours[1][part], xla_defaults[1][part], rtol=1e-4,
                               atol=1e-5 * scale, err_msg=part)


def _temp_bytes(steps, reverse, remat=True, n=64):
  apply_fn, trainable, frozen, start, target, syn = _problem(jnp.float32, n=n)
  cfg = matching.UnrollConfig(syn_steps=steps, batch_size=n, augment=False,
                              reverse=reverse, remat=remat)
  loss = matching.make_matching_loss(apply_fn, trainable, cfg)
  grad = jax.jit(jax.grad(lambda s: loss(s, start, target, frozen, jax.random.key(0))))
  return grad.lower(syn).compile().memory_analysis().temp_size_in_bytes


def test_reverse_passes_save_the_carry_not_the_activations():
  carry = sum(x.nbytes for x in jax.tree.leaves(_student()[1]))
  hvp = _temp_bytes(16, "hvp") - _temp_bytes(4, "hvp")
  with_remat = _temp_bytes(16, "autodiff") - _temp_bytes(4, "autodiff")
  without = _temp_bytes(16, "autodiff", False) - _temp_bytes(4, "autodiff", False)
  # Per extra step, the written-out reverse pass keeps the step's parameters
  # and gradient (two carries) and remat one carry, plus a batch of
  # indices/keys; without remat, every step's activations stay alive for the
  # backward pass.
  assert hvp / 12 < 4 * carry, (hvp, carry)
  assert with_remat / 12 < 3 * carry, (with_remat, carry)
  assert without > 4 * max(with_remat, hvp), (without, with_remat, hvp)


def test_written_out_reverse_pass_equals_autodiff_for_every_objective():
  # LoRS's targets come from the set and blending draws inside the loss: each
  # reaches the set through `make_hvp_unroll`'s cotangents as through jax.grad.
  # (Hoisted per-step features: test_blend's head-only central differences;
  # DSA, which compiles slowly: test_scan_equals_python_unrolled_gradient.)
  with jax.enable_x64(True):
    apply_fn, trainable, frozen, start, target, syn = _problem(jnp.float64, n=8)
    for name in ("lowrank", "blend"):
      cfg = config_lib.distill_config()
      cfg.objective = name
      objective = objectives.build(cfg)
      full = {**syn, **jax.tree.map(lambda x: x.astype(jnp.float64),
                                    objective.init(8, jax.random.key(8)))}
      grads = {}
      for reverse in matching.REVERSE_PASSES:
        unroll = matching.UnrollConfig(syn_steps=3, batch_size=4, augment=False,
                                       reverse=reverse)
        loss = matching.make_matching_loss(apply_fn, trainable, unroll, objective)
        grads[reverse] = jax.jit(jax.value_and_grad(
            lambda s: loss(s, start, target, frozen, jax.random.key(9))))(full)
      np.testing.assert_allclose(grads["hvp"][0], grads["autodiff"][0], rtol=1e-10)
      hvp, autodiff = (jax.tree_util.tree_flatten_with_path(grads[r][1])[0]
                       for r in matching.REVERSE_PASSES)
      if name == "lowrank":  # S's factors are compared too.
        assert len(hvp) == len(syn) + 3, jax.tree.map(jnp.shape, grads["hvp"][1])
      for (path, ours), (_, reference) in zip(hvp, autodiff):
        np.testing.assert_allclose(ours, reference, rtol=1e-8, atol=1e-12,
                                   err_msg=f"{name} {jax.tree_util.keystr(path)}")


def test_meta_step_moves_the_set_and_guards_non_finite():
  apply_fn, trainable, frozen, start, target, syn = _problem(jnp.float32)
  cfg = matching.UnrollConfig(syn_steps=2, batch_size=4, augment=False)
  tx = matching.make_meta_optimizer(100.0, 100.0, 1e-2, momentum=0.5)
  meta_step = matching.make_meta_step(apply_fn, trainable, cfg, tx)
  stack = lambda tree: jax.tree.map(lambda x: jnp.stack([x, x]), tree)
  state = matching.init_state(syn, tx)
  before = jax.tree.map(np.asarray, state["syn"])
  state, loss = meta_step(state, stack(start), stack(target), frozen, jax.random.key(0))
  assert np.isfinite(float(loss)) and int(state["first_bad"]) == -1
  assert int(state["iteration"]) == 1
  for part in before:
    assert not np.allclose(before[part], state["syn"][part]), part

  good = jax.tree.map(np.asarray, state["syn"])
  state["syn"]["log_lr"] = jnp.array([np.inf, 0.0], jnp.float32)  # Diverges.
  good["log_lr"] = np.asarray(state["syn"]["log_lr"])
  state, loss = meta_step(state, stack(start), stack(target), frozen, jax.random.key(1))
  assert not np.isfinite(float(loss))
  assert int(state["first_bad"]) == 1 and int(state["iteration"]) == 2
  for part in good:  # The update was skipped.
    np.testing.assert_array_equal(state["syn"][part], good[part], err_msg=part)


META_RATES = {"images": 1e-2, "text_emb": 1e-3, "log_lr": 1e-1}


def _first_meta_step(optimizer: str, momentum: float) -> tuple[dict, dict]:
  """(how far each part of the set moved, its meta-gradient) after one meta
  step with `optimizer` at `META_RATES`, over a meta batch of two draws."""
  apply_fn, trainable, frozen, start, target, syn = _problem(jnp.float32)
  cfg = matching.UnrollConfig(syn_steps=2, batch_size=4, augment=False)
  tx = matching.make_meta_optimizer(META_RATES["images"], META_RATES["text_emb"],
                                    META_RATES["log_lr"], momentum=momentum,
                                    optimizer=optimizer)
  loss = matching.make_matching_loss(apply_fn, trainable, cfg)
  # Jitted: op-by-op dispatch of the unrolled loss took most of the test's time.
  grads = jax.jit(jax.grad(lambda s: sum(loss(s, start, target, frozen, k) for k in
                                         jax.random.split(jax.random.key(0), 2))))(syn)
  before = jax.tree.map(np.asarray, syn)
  meta_step = matching.make_meta_step(apply_fn, trainable, cfg, tx)
  stack = lambda tree: jax.tree.map(lambda x: jnp.stack([x, x]), tree)
  state, _ = meta_step(matching.init_state(syn, tx), stack(start), stack(target),
                       frozen, jax.random.key(0))
  return ({part: np.asarray(state["syn"][part]) - before[part] for part in META_RATES},
          jax.tree.map(np.asarray, grads))


def test_adam_meta_steps_move_each_part_by_its_rate_whatever_the_gradient_scale():
  steps, grads = _first_meta_step("adam", momentum=0.0)
  for part, rate in META_RATES.items():
    # Adam's first step is rate x sign(gradient) wherever the gradient is not
    # tiny next to eps; the gradients' own scales differ by orders of magnitude.
    big = np.abs(grads[part]) > 1e-6
    assert big.any(), part
    np.testing.assert_allclose(np.abs(steps[part])[big], rate, rtol=1e-2, err_msg=part)
  with pytest.raises(ValueError, match="meta_optimizer='rmsprop'"):
    matching.make_meta_optimizer(1.0, 1.0, 1.0, 0.0, optimizer="rmsprop")


def test_minibatch_indices_cover_the_set_evenly():
  rows = np.asarray(matching.minibatch_indices(jax.random.key(0), 10, steps=5, batch_size=4))
  assert rows.shape == (5, 4)
  flat = rows.reshape(-1)
  # Two full permutations of 10 cover 20 draws: every pair exactly twice.
  np.testing.assert_array_equal(np.bincount(flat, minlength=10), np.full(10, 2))
  with pytest.raises(ValueError, match="exceeds the 3 synthetic pairs"):
    matching.minibatch_indices(jax.random.key(0), 3, steps=1, batch_size=4)


def test_augmentations_keep_shape_and_pass_gradients():
  image = jax.random.normal(jax.random.key(0), IMAGE)
  np.testing.assert_allclose(
      augment._resample(image, jnp.eye(2), jnp.zeros(2)), image, atol=1e-5)
  for i, fn in enumerate(augment.AUGMENTATIONS):
    out = fn(image, jax.random.key(i))
    assert out.shape == image.shape and not np.allclose(out, image), fn.__name__
    grad = jax.grad(lambda x: jnp.sum(fn(x, jax.random.key(i)) ** 2))(image)
    assert np.abs(grad).sum() > 0, fn.__name__


@pytest.mark.parametrize("per_image", [True, False])
def test_augment_draws_per_image_and_passes_gradients(per_image):
  # One image repeated: per-image draws (DSA's default) give different views
  # of it across the batch; a shared draw (DSA's batchmode) the same view.
  images = jnp.broadcast_to(jax.random.normal(jax.random.key(0), IMAGE), (8,) + IMAGE)
  for seed in range(6):  # Every transform is chosen for some seed.
    key = jax.random.key(seed)
    out = augment.augment(images, key, per_image)
    distinct = len({np.asarray(o).tobytes() for o in out})
    assert (distinct > 1) == per_image, seed
    grad = jax.grad(lambda x: jnp.sum(augment.augment(x, key, per_image) ** 2))(images)
    assert np.all(np.abs(grad).sum(axis=(1, 2, 3)) > 0), seed  # Every image gets one.


def _lowrank(**fields):
  cfg = config_lib.distill_config()
  cfg.update(objective="lowrank", lowrank_rank=3, **fields)
  return objectives.build(cfg)


def test_identity_similarity_targets_reduce_to_the_plain_loss():
  apply_fn, trainable, frozen, start, target, syn = _problem(jnp.float32)
  cfg = matching.UnrollConfig(syn_steps=2, batch_size=4)
  loss = lambda s, objective: matching.make_matching_loss(
      apply_fn, trainable, cfg, objective)(s, start, target, frozen, jax.random.key(4))
  lowrank = _lowrank(lowrank_loss="softmax")
  with_sim = {**syn, **lowrank.init(6, jax.random.key(7))}
  np.testing.assert_allclose(jax.jit(loss, static_argnums=1)(with_sim, lowrank),
                             jax.jit(loss, static_argnums=1)(syn, objectives.Plain()),
                             rtol=1e-6)  # float32: the two programs sum in other orders.


def test_meta_gradient_reaches_the_similarity_factors():
  with jax.enable_x64(True):
    apply_fn, trainable, frozen, start, target, syn = _problem(jnp.float64)
    lowrank = _lowrank()
    sim = lowrank.init(6, jax.random.key(7))["sim"]
    cfg = matching.UnrollConfig(syn_steps=2, batch_size=4, augment=False)
    loss = jax.jit(lambda s: matching.make_matching_loss(apply_fn, trainable, cfg, lowrank)(
        s, start, target, frozen, jax.random.key(4)))
    at_init = jax.grad(loss)({**syn, "sim": sim})["sim"]
    # As LoRA's: with R = 0, L gets no gradient until R moves.
    assert np.abs(at_init["right"]).max() > 0 and np.abs(at_init["a"]).max() > 0
    np.testing.assert_array_equal(at_init["left"], 0.0)
    sim["right"] = 0.3 * jax.random.normal(jax.random.key(8), sim["right"].shape)
    syn = {**syn, "sim": jax.tree.map(lambda x: x.astype(jnp.float64), sim)}
    grad = jax.grad(loss)(syn)["sim"]
    for part in ("a", "left", "right"):
      direction = jax.random.normal(jax.random.key(5), sim[part].shape, jnp.float64)
      h = 1e-5
      shifted = lambda sign: {**syn, "sim": {**syn["sim"],
                                             part: syn["sim"][part] + sign * h * direction}}
      numeric = (loss(shifted(1)) - loss(shifted(-1))) / (2 * h)
      analytic = jnp.vdot(grad[part], direction)
      assert abs(analytic) > 1e-6, part
      np.testing.assert_allclose(analytic, numeric, rtol=1e-3, err_msg=part)


def test_train_step_trains_against_given_similarity_targets():
  apply_fn, trainable, frozen, _, _, syn = _problem(jnp.float32)
  tx = trainer.make_optimizer(0.1)
  images, text = syn["images"][:4], syn["text_emb"][:4]
  run = lambda objective, *targets: float(trainer.make_train_step(
      trainer.student_loss(apply_fn, objective), tx)(
          jax.tree.map(jnp.copy, trainable), tx.init(trainable), frozen, images, text,
          jax.random.key(0), *targets)[2])
  plain = run(objectives.Plain())
  soft, wbce = _lowrank(lowrank_loss="softmax"), _lowrank(lowrank_loss="wbce")
  assert run(soft, {"sim": jnp.eye(4)}) == pytest.approx(plain, rel=1e-6)
  assert run(wbce, {"sim": jnp.eye(4)}) != pytest.approx(plain, rel=1e-3)


def test_normalized_meta_steps_have_the_rate_as_rms_and_the_gradients_direction():
  steps, grads = _first_meta_step("normalized", momentum=0.5)
  for part, rate in META_RATES.items():
    step = steps[part]
    np.testing.assert_allclose(np.sqrt(np.mean(step ** 2)), rate, rtol=1e-3, err_msg=part)
    cosine = -np.vdot(step, grads[part]) / np.linalg.norm(step) / np.linalg.norm(grads[part])
    assert cosine > 0.999, part  # Down the gradient, not its sign.


def test_init_synthetic_from_real_pairs_their_caption_mean_or_noise():
  rng = np.random.default_rng(0)
  text_emb = rng.standard_normal((10, 5, TEXT_DIM)).astype(np.float32)
  text_emb /= np.linalg.norm(text_emb, axis=-1, keepdims=True)
  train = Split(images=rng.integers(0, 256, (10,) + IMAGE, dtype=np.uint8),
                captions=[["c"] * 5] * 10, text_emb=text_emb, labels={})
  real, rows = matching.init_synthetic(train, 4, "real", 0.1, seed=0)
  mean, rows_mean = matching.init_synthetic(train, 4, "real_mean", 0.1, seed=0)
  np.testing.assert_array_equal(rows, rows_mean)
  np.testing.assert_array_equal(real["images"], mean["images"])
  np.testing.assert_allclose(real["images"], trainer.to_model_space(train.images[rows]),
                             atol=1e-6)
  for i, row in enumerate(rows):  # One of its own captions / their mean, unit norm.
    assert any(np.array_equal(real["text_emb"][i], c) for c in text_emb[row])
    centre = text_emb[row].mean(axis=0)
    np.testing.assert_allclose(mean["text_emb"][i], centre / np.linalg.norm(centre), rtol=1e-5)
  np.testing.assert_allclose(real["log_lr"], np.log([0.1, 0.1]))
  noise, _ = matching.init_synthetic(train, 4, "noise", 0.1, seed=0)
  np.testing.assert_allclose(np.linalg.norm(noise["text_emb"], axis=-1), 1.0, rtol=1e-5)
  with pytest.raises(ValueError, match="distill.init='mean'"):
    matching.init_synthetic(train, 4, "mean", 0.1, seed=0)


def test_first_order_gradient_is_exact_for_one_step_and_drops_cross_step_terms():
  with jax.enable_x64(True):
    apply_fn, trainable, frozen, start, target, syn = _problem(jnp.float64)
    key = jax.random.key(6)

    def grad(steps, first_order):  # DSA off: the gradient through it is tested above.
      cfg = matching.UnrollConfig(syn_steps=steps, batch_size=4, augment=False,
                                  first_order=first_order)
      loss = matching.make_matching_loss(apply_fn, trainable, cfg)
      return jax.jit(jax.grad(lambda s: loss(s, start, target, frozen, key)))(syn)

    one_exact, one_first = grad(1, False), grad(1, True)
    for part in syn:  # From the expert's start, the one step's parameters are constants.
      np.testing.assert_allclose(one_first[part], one_exact[part], rtol=1e-10, err_msg=part)

    # Three steps against the definition: with theta_i the unrolled parameters
    # and v = dL/dtheta_N, the gradient is sum_i d/dsyn <v, step_i(theta_i fixed, syn)>.
    # Jitted: op-by-op dispatch of these steps took a third of the test's time.
    step = jax.jit(matching.make_student_step(apply_fn, trainable, objectives.Plain(), False))
    k_batches, k_steps = jax.random.split(key)
    batches = matching.minibatch_indices(k_batches, syn["text_emb"].shape[0], 3, 4)
    keys = jax.random.split(k_steps, 3)
    take = lambda s, rows, k, params: step(params, frozen, s["images"][rows],
                                            s["text_emb"][rows], jnp.exp(s["log_lr"]), k)
    thetas = [start]
    for rows, k in zip(batches, keys):
      thetas.append(take(syn, rows, k, thetas[-1]))
    dist = lambda a, b: sum(jnp.sum((x - y) ** 2) for x, y in zip(jax.tree.leaves(a),
                                                                 jax.tree.leaves(b)))
    v = jax.jit(jax.grad(lambda p: dist(p, target) / dist(start, target)))(thetas[-1])
    reference = jax.jit(jax.grad(lambda s, ks, thetas: sum(
        sum(jnp.vdot(a, b) for a, b in zip(jax.tree.leaves(v), jax.tree.leaves(
            take(s, rows, k, theta))))
        for rows, k, theta in zip(batches, ks, thetas))))(syn, list(keys), thetas[:-1])
    first, exact = grad(3, True), grad(3, False)
    for part in syn:
      np.testing.assert_allclose(first[part], reference[part], rtol=1e-8, atol=1e-14,
                                 err_msg=part)
      assert not np.allclose(first[part], exact[part], rtol=1e-3), part  # An approximation.


def test_sigmoid_objective_learns_its_bias_and_evaluates_with_it():
  with jax.enable_x64(True):
    apply_fn, trainable, frozen, start, target, syn = _problem(jnp.float64)
    sigmoid = _lowrank(lowrank_loss="sigmoid")
    parts = jax.tree.map(lambda x: jnp.asarray(x, jnp.float64),
                         sigmoid.init(6, jax.random.key(7)))
    assert float(parts["bias"]) == -10.0 and sigmoid.rates()["bias"] > 0
    cfg = matching.UnrollConfig(syn_steps=2, batch_size=4, augment=False)
    loss = jax.jit(lambda s: matching.make_matching_loss(apply_fn, trainable, cfg, sigmoid)(
        s, start, target, frozen, jax.random.key(4)))
    syn = {**syn, **parts}
    h = 1e-5
    numeric = (loss({**syn, "bias": syn["bias"] + h}) -
               loss({**syn, "bias": syn["bias"] - h})) / (2 * h)
    analytic = jax.grad(loss)(syn)["bias"]
    assert abs(analytic) > 1e-8
    np.testing.assert_allclose(analytic, numeric, rtol=1e-3)
    # The saved set carries S and the bias.
    arrays = sigmoid.export({**syn, "bias": jnp.float64(-7.5)})
    assert float(arrays["loss_bias"]) == -7.5 and arrays["similarity"].shape == (6, 6)
  assert sigmoid.extra_floats(6) == 6 * 7 + 1
  # An evaluation student trains against a batch's block of S and the bias.
  apply_fn, trainable, frozen, _, _, syn32 = _problem(jnp.float32)
  tx = trainer.make_optimizer(0.1)
  step = trainer.make_train_step(trainer.student_loss(apply_fn, sigmoid), tx)
  run = lambda bias: float(step(jax.tree.map(jnp.copy, trainable), tx.init(trainable),
                                frozen, syn32["images"][:4], syn32["text_emb"][:4],
                                jax.random.key(0),
                                {"sim": jnp.eye(4), "bias": jnp.float32(bias)})[2])
  assert np.isfinite(run(-7.5)) and run(-7.5) != pytest.approx(run(0.0), rel=1e-3)
