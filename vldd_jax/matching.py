"""Synthetic-set state, the trajectory-matching loss and the jitted meta step.

A synthetic set is `{"images": [N, H, W, C] model-space floats, "text_emb": [N, D]
frozen-encoder embeddings, "log_lr": [2] (image side, text side)}`, plus the
parts its objective learns (`objectives.py`, e.g. LoRS's similarity factors,
whose minibatch blocks are the student loss's soft targets). From an
expert's parameters at epoch t, `syn_steps` student SGD steps on synthetic
minibatches give theta_N; the loss is ||theta_N - theta*_{t+M}||^2 /
||theta*_t - theta*_{t+M}||^2 over the trainable partition (Cazenavette et
al. 2022; Wu et al. 2024 match LoRA + heads). The unroll is a `lax.scan` whose
reverse pass is written out as each step's Hessian-vector products
(`make_hvp_unroll`), so the meta-gradient is exact while reverse mode keeps
only each step's parameters and gradient, not its activations.
"""
from collections.abc import Callable
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax

from vldd_jax import compile_options
from vldd_jax import objectives
from vldd_jax.data.input_pipeline import Split
from vldd_jax.models.partition import ApplyFn, text_side_mask
from vldd_jax.trainer import augmented_images, student_loss, to_model_space

LR_SIDES = ("image", "text")
REVERSE_PASSES = ("hvp", "autodiff")


@dataclasses.dataclass(frozen=True)
class UnrollConfig:
  """Static settings of one student unroll."""
  syn_steps: int
  batch_size: int
  augment: bool = True
  augment_per_image: bool = True  # DSA's draws per image; False: one per minibatch.
  # The meta-gradient's reverse pass: "hvp", each step's Hessian-vector
  # products written out (`make_hvp_unroll`); "autodiff", `jax.grad` through
  # the scan, each step rematerialised if `remat`. The same gradient.
  reverse: str = "hvp"
  remat: bool = True
  # With a frozen tower (model.trainable="heads"), embed every step's images in
  # one batch before the unroll, which then runs the heads only. The same loss;
  # 1.4x slower per iteration on a 2-core CPU (docs/beyond_the_paper.md), so off
  # unless asked (distill.hoist_tower), e.g. for a heavy tower on an accelerator.
  hoist_tower: bool = False
  # First order (as RepBlend's and the MTT-family first-order variants): each
  # step's gradient is taken at parameters treated as constants, so the
  # meta-gradient drops the second-order terms across steps.
  first_order: bool = False

  def __post_init__(self):
    if self.reverse not in REVERSE_PASSES:
      raise ValueError(f"reverse={self.reverse!r}; expected one of {REVERSE_PASSES}.")


def _unit(text: np.ndarray) -> np.ndarray:
  return text / np.linalg.norm(text, axis=-1, keepdims=True)


# The starts `init_synthetic` draws itself (a coreset start is `_real` of its
# pairs): (real images, their captions' embeddings [N, captions, D], caption
# indices, rng) -> (images, text embeddings). Real captions' embeddings have
# unit norm already; the others are made so.
INITS: dict[str, Callable] = {
    "real": lambda images, text, captions, rng: (
        images, text[np.arange(len(text)), captions]),
    "real_mean": lambda images, text, captions, rng: (images, _unit(text.mean(axis=1))),
    "noise": lambda images, text, captions, rng: (
        rng.standard_normal(images.shape).astype(np.float32),
        _unit(rng.standard_normal((len(text), text.shape[-1])).astype(np.float32))),
}


def init_synthetic(train: Split, num_pairs: int, init: str, lr_init: float,
                   seed: int, pairs: tuple[np.ndarray, np.ndarray] | None = None
                   ) -> tuple[dict, np.ndarray]:
  """N synthetic pairs from real pairs or from noise.

  `init`: one of `INITS` ("real": random images, each with one of its
  captions; "real_mean": each image with the unit-norm mean of its captions'
  embeddings; "noise"), or a coreset, whose `pairs` (rows, captions) are given.

  Returns:
    (synthetic set, indices of the real images it started from).
  """
  if num_pairs > len(train):
    raise ValueError(f"distill.num_pairs={num_pairs} exceeds the {len(train)} "
                     "training pairs.")
  rng = np.random.default_rng([seed, num_pairs])
  if pairs is not None:
    (rows, captions), make = pairs, INITS["real"]
  elif init not in INITS:
    raise ValueError(f"distill.init={init!r}; expected one of {tuple(INITS)} or a coreset.")
  else:
    rows = np.sort(rng.choice(len(train), num_pairs, replace=False))
    captions = rng.integers(0, train.text_emb.shape[1], num_pairs)
    make = INITS[init]
  images = np.asarray(to_model_space(jnp.asarray(train.images[rows])))
  images, text = make(images, train.text_emb[rows], captions, rng)
  log_lr = np.full(len(LR_SIDES), np.log(lr_init), np.float32)
  return {"images": images, "text_emb": text, "log_lr": log_lr}, rows


def minibatch_indices(key: jax.Array, num_pairs: int, steps: int,
                      batch_size: int) -> jax.Array:
  """[steps, batch_size] indices: consecutive random permutations of the set, cut."""
  if batch_size > num_pairs:
    raise ValueError(f"student batch_size={batch_size} exceeds the {num_pairs} "
                     "synthetic pairs.")
  perms = -(-steps * batch_size // num_pairs)
  keys = jax.random.split(key, perms)
  order = jax.vmap(lambda k: jax.random.permutation(k, num_pairs))(keys).reshape(-1)
  return order[:steps * batch_size].reshape(steps, batch_size)


def make_student_step(apply_fn: ApplyFn, trainable_like: dict,
                      objective: objectives.Objective, augment: bool,
                      augment_per_image: bool = True, features: bool = False,
                      first_order: bool = False) -> Callable:
  """One SGD step on a synthetic minibatch with the (image, text) learning rates.

  Returns `step(trainable, frozen, images, text, lrs, key, targets=None) ->
  trainable`, the gradient being of `trainer.student_loss`, as for evaluation
  students, with the objective's representation blending (`blend_alpha`).
  `features=True`: `images` are tower features (`trainer.student_loss`).
  `first_order`: the gradient is taken at `stop_gradient(trainable)`, so the new
  parameters depend on the set only through this step's gradient.
  """
  is_text = text_side_mask(trainable_like)
  loss_fn = student_loss(apply_fn, objective, augment, augment_per_image,
                         objective.blend_alpha(), features)

  def step(trainable, frozen, images, text, lrs, key, targets=None):
    at = jax.lax.stop_gradient(trainable) if first_order else trainable
    grads, _ = jax.grad(loss_fn, has_aux=True)(at, frozen, images, text, key, targets)
    return _sgd(trainable, grads, _side_rates(lrs, is_text))

  return step


def _side_rates(lrs: jax.Array, is_text: dict) -> dict:
  """Each parameter's rate: the text side's `lrs[1]`, the image side's `lrs[0]`."""
  return jax.tree.map(lambda t: jnp.where(t, lrs[1], lrs[0]), is_text)


def _sgd(params: dict, grads: dict, rates: dict) -> dict:
  return jax.tree.map(lambda p, g, r: p - r * g, params, grads, rates)


def make_hvp_unroll(apply_fn: ApplyFn, trainable_like: dict,
                    objective: objectives.Objective, augment: bool,
                    augment_per_image: bool = True, features: bool = False,
                    first_order: bool = False) -> Callable:
  """`unroll(start, syn, per_step, batches, keys, frozen) -> theta_N`: the student
  SGD steps of `make_student_step` on the set's minibatches `batches` ([steps,
  B] rows; `per_step`: each step's images, stacked, when they do not come from
  `syn["images"]`, e.g. hoisted tower features; else None), with its reverse
  pass written out as Hessian-vector products.

  `jax.grad` of a scan of steps differentiates each step's backward pass in
  reverse mode again (reverse over reverse), after recomputing the step under
  remat. The VJP of a step theta' = theta - lr * g(theta, batch) at the
  cotangent v is v - H u on theta and -d<g, u>/d(batch) on the batch, with
  u = lr * v: both are the gradient of the directional derivative <g, u>, one
  reverse pass over a forward-mode (jvp) pass that also recomputes the step.
  Only each step's parameters and gradient (for the rates' cotangent) are kept
  between the passes, and the set's cotangent is summed in the reverse scan's
  carry. The same gradient as `jax.grad` up to float32 rounding (symmetric
  second derivatives), in 0.78-0.89x its time per meta step on the default
  shapes student (docs/benchmarks.md). `first_order`: each step's gradient is
  taken at constant parameters (`make_student_step`), so the cotangent passes
  back through a step unchanged and only the set's terms are computed.
  """
  is_text = text_side_mask(trainable_like)
  loss_fn = student_loss(apply_fn, objective, augment, augment_per_image,
                         objective.blend_alpha(), features)

  def step_inputs(syn, images, rows):
    """A step's (images, texts, targets) and its (image, text) rates."""
    images = syn["images"][rows] if images is None else images
    return ((images, syn["text_emb"][rows], objective.targets(syn, rows)),
            jnp.exp(syn["log_lr"]))

  def loss_of(theta, batch, frozen, key):
    images, text, targets = batch
    return loss_fn(theta, frozen, images, text, key, targets)[0]

  def forward(start, syn, per_step, batches, keys, frozen):
    def body(theta, xs):
      images, rows, key = xs
      batch, lrs = step_inputs(syn, images, rows)
      grads = jax.grad(loss_of)(theta, batch, frozen, key)
      return _sgd(theta, grads, _side_rates(lrs, is_text)), (theta, grads)
    final, (thetas, grads) = jax.lax.scan(body, start, (per_step, batches, keys))
    return final, (thetas, grads, syn, per_step, batches, keys, frozen)

  def backward(res, v_final):
    thetas, grads, syn, per_step, batches, keys, frozen = res

    def body(carry, xs):
      v, syn_bar = carry
      theta, grad, images, rows, key = xs
      (batch, lrs), inputs_vjp = jax.vjp(lambda s, x: step_inputs(s, x, rows),
                                         syn, images)
      u = jax.tree.map(jnp.multiply, v, _side_rates(lrs, is_text))
      directional = lambda th, b: jax.jvp(lambda t: loss_of(t, b, frozen, key),
                                          (th,), (u,))[1]
      if first_order:
        h_theta, h_batch = None, jax.grad(directional, argnums=1)(theta, batch)
      else:
        h_theta, h_batch = jax.grad(directional, argnums=(0, 1))(theta, batch)
      # d theta' / d lr = -g on that rate's side (LR_SIDES: image, text).
      side = jnp.eye(len(LR_SIDES), dtype=lrs.dtype)
      lrs_bar = -sum(jnp.sum(g * vi) * side[int(t)] for g, vi, t in zip(
          jax.tree.leaves(grad), jax.tree.leaves(v), jax.tree.leaves(is_text)))
      step_syn_bar, images_bar = inputs_vjp((jax.tree.map(jnp.negative, h_batch),
                                             lrs_bar))
      if h_theta is not None:
        v = jax.tree.map(jnp.subtract, v, h_theta)
      return (v, jax.tree.map(jnp.add, syn_bar, step_syn_bar)), images_bar

    (v_start, syn_bar), per_step_bar = jax.lax.scan(
        body, (v_final, jax.tree.map(jnp.zeros_like, syn)),
        (thetas, grads, per_step, batches, keys), reverse=True)
    return v_start, syn_bar, per_step_bar, None, None, None

  unroll = jax.custom_vjp(lambda *args: forward(*args)[0])
  unroll.defvjp(forward, backward)
  return unroll


def _sq_dist(a: dict, b: dict) -> jax.Array:
  return sum(jnp.sum(jnp.square(x - y)) for x, y in zip(jax.tree.leaves(a),
                                                       jax.tree.leaves(b)))


def make_matching_loss(apply_fn: ApplyFn, trainable_like: dict, cfg: UnrollConfig,
                       objective: objectives.Objective | None = None,
                       feature_fn: Callable | None = None) -> Callable:
  """`loss(syn, start, target, frozen, key)`: normalised distance after the unroll.

  `objective` (default: plain pairs) gives the student loss and its targets.
  When no tower parameter trains (`model.trainable="heads"`) and `feature_fn`
  (`models.make_feature_fn`) is given, the tower embeds all steps' augmented
  minibatches at once before the unroll: the same loss, without running the
  tower, or rematerialising it, inside the scan (RepBlend's head-only matching).
  """
  objective = objective or objectives.Plain()
  hoist = cfg.hoist_tower and feature_fn is not None and "img" not in trainable_like
  if cfg.reverse == "hvp":
    unroll = make_hvp_unroll(apply_fn, trainable_like, objective, cfg.augment,
                             cfg.augment_per_image, features=hoist,
                             first_order=cfg.first_order)
  else:
    unroll = _autodiff_unroll(make_student_step(
        apply_fn, trainable_like, objective, cfg.augment, cfg.augment_per_image,
        features=hoist, first_order=cfg.first_order), objective, cfg.remat)

  def loss(syn, start, target, frozen, key):
    k_batches, k_steps = jax.random.split(key)
    batches = minibatch_indices(k_batches, syn["text_emb"].shape[0], cfg.syn_steps,
                                cfg.batch_size)
    step_keys = jax.random.split(k_steps, cfg.syn_steps)
    features = None  # Else each step indexes its images inside the scan.
    if hoist:
      features = jax.vmap(lambda rows, k: feature_fn(start, frozen, augmented_images(
          syn["images"][rows], k, cfg.augment, cfg.augment_per_image)))(batches, step_keys)
    final = unroll(start, syn, features, batches, step_keys, frozen)
    return _sq_dist(final, target) / _sq_dist(start, target)

  return loss


def _autodiff_unroll(step: Callable, objective: objectives.Objective,
                     remat: bool) -> Callable:
  """`make_hvp_unroll`'s unroll as a plain scan of `step`s, for `jax.grad`
  (`UnrollConfig(reverse="autodiff")`), each step rematerialised if `remat`."""

  def unroll(start, syn, per_step, batches, keys, frozen):
    lrs = jnp.exp(syn["log_lr"])

    def body(params, xs):
      images, rows, key = xs
      images = syn["images"][rows] if images is None else images
      return step(params, frozen, images, syn["text_emb"][rows], lrs, key,
                  objective.targets(syn, rows)), None

    final, _ = jax.lax.scan(jax.checkpoint(body) if remat else body, start,
                            (per_step, batches, keys))
    return final

  return unroll


def _normalize_rms() -> optax.GradientTransformation:
  """Divides each gradient array by its root mean square (ours)."""
  return optax.stateless(lambda updates, _: jax.tree.map(
      lambda g: g / (jnp.sqrt(jnp.mean(jnp.square(g))) + 1e-20), updates))


# `distill.meta_optimizer`: (rate, momentum) -> the optimizer of one part of the set.
META_OPTIMIZERS: dict[str, Callable[[float, float], optax.GradientTransformation]] = {
    "sgd": lambda rate, momentum: optax.sgd(rate, momentum=momentum),
    "normalized": lambda rate, momentum: optax.chain(
        _normalize_rms(), optax.sgd(rate, momentum=momentum)),
    "adam": lambda rate, momentum: optax.adam(rate),
}


def make_meta_optimizer(meta_lr_images: float, meta_lr_text: float,
                        meta_lr_rates: float, momentum: float,
                        extra_rates: dict[str, float] | None = None,
                        optimizer: str = "sgd") -> optax.GradientTransformation:
  """One rate per synthetic-set part, with SGD, normalised SGD or Adam.

  "sgd": SGD with `momentum` (the VLDD/MTT code: 0.5); a step is rate x
  gradient, so good rates depend on the gradient's scale, hence on the
  dataset and tower. "normalized": the same on each part's gradient divided
  by its root mean square, so a rate is the RMS step of that part per
  iteration (before momentum) whatever the gradient's scale, and the step
  keeps the gradient's direction. "adam": a step of about the rate per
  coordinate (momentum is Adam's own), which also moves coordinates whose
  gradient is tiny. `extra_rates` are those of the parts an objective learns
  (`Objective.rates`).
  """
  if optimizer not in META_OPTIMIZERS:
    raise ValueError(f"distill.meta_optimizer={optimizer!r}: expected one of "
                     f"{tuple(META_OPTIMIZERS)}.")
  rates = {"images": meta_lr_images, "text_emb": meta_lr_text, "log_lr": meta_lr_rates,
           **(extra_rates or {})}
  return optax.multi_transform(
      {name: META_OPTIMIZERS[optimizer](rate, momentum) for name, rate in rates.items()},
      lambda syn: {name: jax.tree.map(lambda _, n=name: n, part)
                   for name, part in syn.items()})


def make_meta_step(apply_fn: ApplyFn, trainable_like: dict, cfg: UnrollConfig,
                   tx: optax.GradientTransformation,
                   objective: objectives.Objective | None = None,
                   feature_fn: Callable | None = None) -> Callable:
  """The jitted `meta_step(state, starts, targets, frozen, key) -> (state, loss)`.

  `starts`/`targets` stack a meta batch of expert parameters on a leading axis
  (sharded over devices); the loss is their mean matching loss. `state` holds
  `syn`, `opt_state`, `iteration` and `first_bad`: an iteration whose loss or
  gradient is not finite leaves `syn` unchanged and is recorded there (-1: none),
  so the caller can stop without a host sync per iteration. A state made by
  `init_state(..., ema=True)` also keeps `ema`, the exponential moving average
  of `syn` with the objective's `ema_decay` (PTM-ST). `state` is donated.
  """
  matching_loss = make_matching_loss(apply_fn, trainable_like, cfg, objective, feature_fn)
  ema_decay = (objective or objectives.Plain()).ema_decay()

  def mean_loss(syn, starts, targets, frozen, key):
    keys = jax.random.split(key, jax.tree.leaves(starts)[0].shape[0])
    per_start = jax.vmap(matching_loss, in_axes=(None, 0, 0, None, 0))(
        syn, starts, targets, frozen, keys)
    return per_start.mean()

  @compile_options.jit(donate_argnums=0)
  def meta_step(state, starts, targets, frozen, key):
    loss, grads = jax.value_and_grad(mean_loss)(state["syn"], starts, targets, frozen, key)
    finite = jnp.isfinite(loss) & jnp.isfinite(optax.tree.norm(grads))
    updates, opt_state = tx.update(grads, state["opt_state"], state["syn"])
    syn = optax.apply_updates(state["syn"], updates)
    keep = lambda new, old: jax.tree.map(lambda n, o: jnp.where(finite, n, o), new, old)
    first_bad = jnp.where((state["first_bad"] < 0) & ~finite, state["iteration"],
                          state["first_bad"])
    new_state = {"syn": keep(syn, state["syn"]),
                 "opt_state": keep(opt_state, state["opt_state"]),
                 "iteration": state["iteration"] + 1,
                 "first_bad": first_bad}
    if "ema" in state:
      new_state["ema"] = jax.tree.map(lambda e, x: ema_decay * e + (1 - ema_decay) * x,
                                      state["ema"], new_state["syn"])
    return new_state, loss

  return meta_step


def init_state(syn: dict, tx: optax.GradientTransformation, ema: bool = False) -> dict:
  """The meta-optimisation state at iteration 0; `ema`: also keep a moving
  average of the set, starting at the set."""
  syn = jax.tree.map(jnp.asarray, syn)
  state = {"syn": syn, "opt_state": tx.init(syn), "iteration": jnp.int32(0),
           "first_bad": jnp.int32(-1)}
  if ema:
    state["ema"] = jax.tree.map(jnp.copy, syn)
  return state
