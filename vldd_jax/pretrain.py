"""Stage `pretrain`: the image tower learns object attributes, as ImageNet stands in.

The paper starts from ImageNet weights and leaves the projection heads
untrained, so zero-shot retrieval is at chance. On `shapes` the tower instead
learns, on the disjoint `pretrain` split, which (colour, shape) pairs are
present, which colours lie in each image quadrant, how many objects there are,
and the background colour and texture: no captions, no retrieval. Its base
weights (no LoRA factors) are saved with Orbax in `<workdir>/pretrain`.

Real data sets `config.model.backbone` to a Hugging Face ViT folder instead.
"""
import os
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import orbax.checkpoint as ocp
import tqdm
from absl import logging

from vldd_jax import backbone
from vldd_jax import checksums
from vldd_jax import compile_options
from vldd_jax import jsonfile
from vldd_jax import parallel
from vldd_jax import preemption
from vldd_jax import provenance
from vldd_jax import trainer
from vldd_jax import workdir_lib
from vldd_jax.data import input_pipeline
from vldd_jax.data import lazy_arrays
from vldd_jax.data import shapes_captions as vocab
from vldd_jax.models import build_model, init_params

_HELD_OUT = 0.1  # Fraction of the pretrain split kept to report accuracy.
_QUADRANTS = 4
# Output name -> (classes, multi-label?).
HEADS = {
    "colour_shape": (len(vocab.COLOURS) * len(vocab.SHAPES), True),
    "colour_quadrant": (len(vocab.COLOURS) * _QUADRANTS, True),
    "count": (None, False),  # max_objects classes, set from the data.
    "background_colour": (len(vocab.BACKGROUND_COLOURS), False),
    "background_texture": (len(vocab.TEXTURES), False),
}


def attribute_targets(labels: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
  """Per-image targets from shapes' labels: multi-hot floats or class indices."""
  colour, shape, position = labels["colour"], labels["shape"], labels["position"]
  n, max_objects = colour.shape
  present = colour >= 0
  rows = np.repeat(np.arange(n), max_objects)[present.ravel()]
  colour_shape = np.zeros((n, len(vocab.COLOURS) * len(vocab.SHAPES)), np.float32)
  colour_shape[rows, (colour * len(vocab.SHAPES) + shape)[present]] = 1
  quadrant = (position[..., 0] >= 0.5) + 2 * (position[..., 1] >= 0.5)
  colour_quadrant = np.zeros((n, len(vocab.COLOURS) * _QUADRANTS), np.float32)
  colour_quadrant[rows, (colour * _QUADRANTS + quadrant)[present]] = 1
  return {
      "colour_shape": colour_shape,
      "colour_quadrant": colour_quadrant,
      "count": labels["num_objects"].astype(np.int32) - 1,
      "background_colour": labels["background_colour"].astype(np.int32),
      "background_texture": labels["background_texture"].astype(np.int32),
  }


class AttributeHeads(nn.Module):
  """One linear classifier per attribute on the tower's pooled features."""
  classes: dict[str, int]

  @nn.compact
  def __call__(self, features: jax.Array) -> dict[str, jax.Array]:
    return {name: nn.Dense(k, name=name)(features) for name, k in self.classes.items()}


def _attribute_loss(logits: dict, targets: dict) -> tuple[jax.Array, dict]:
  total, accuracy = 0.0, {}
  for name, (_, multi_label) in HEADS.items():
    if multi_label:
      total += optax.sigmoid_binary_cross_entropy(logits[name], targets[name]).sum(-1).mean()
      hit = jnp.all((logits[name] > 0) == (targets[name] > 0.5), axis=-1)
    else:
      total += optax.softmax_cross_entropy_with_integer_labels(
          logits[name], targets[name]).mean()
      hit = jnp.argmax(logits[name], -1) == targets[name]
    accuracy[name] = hit.mean()
  return total, accuracy


def _make_step(tower_apply, heads_apply, tx):

  def loss_fn(params, images, targets):
    logits = heads_apply(params["heads"], tower_apply(params["tower"], images))
    return _attribute_loss(logits, targets)

  @compile_options.jit
  def train_step(params, opt_state, images, targets):
    (loss, accuracy), grads = jax.value_and_grad(loss_fn, has_aux=True)(
        params, trainer.to_model_space(images), targets)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss, accuracy

  @compile_options.jit
  def eval_step(params, images, targets):
    return loss_fn(params, trainer.to_model_space(images), targets)[1]

  return train_step, eval_step


def run(config: ml_collections.ConfigDict, workdir: str) -> None:
  """Pretrains the tower unless `config.model.backbone` names another source."""
  if config.model.backbone != "pretrain":
    logging.info("config.model.backbone=%r: nothing to pretrain.", config.model.backbone)
    return
  if config.data.name != "shapes":
    raise ValueError(f"The pretrain stage needs the attribute labels of the shapes "
                     f"dataset, not {config.data.name!r}: set config.model.backbone to "
                     "a Hugging Face ViT folder (or 'scratch').")
  out = workdir_lib.pretrain_dir(workdir)
  cfg = config.pretrain
  summary = os.path.join(out, workdir_lib.PRETRAIN_SUMMARY)
  if os.path.exists(summary):
    backbone.check_settings(config, summary)
    if _has_checkpoint(out, cfg.epochs):
      logging.info("Pretrained tower found in %s.", out)
      return
    logging.warning("%s exists but %s/ckpt/%d does not (deleted?): pretraining "
                    "again; the same settings and seed give the same tower.", summary,
                    out, cfg.epochs)
    os.remove(summary)
  split = input_pipeline.load_split(config, workdir, "pretrain", with_text_emb=False)
  targets = attribute_targets(split.labels)
  classes = {name: k or int(split.labels["colour"].shape[1])
             for name, (k, _) in HEADS.items()}
  n_held = max(1, int(len(split) * _HELD_OUT))
  train_x = lazy_arrays.rows_of(split.images, slice(n_held, None))
  held_x = split.images[:n_held]
  train_t = {k: v[n_held:] for k, v in targets.items()}
  held_t = {k: v[:n_held] for k, v in targets.items()}

  model_config = config.model.copy_and_resolve_references()
  model_config.lora.rank = 0  # Base weights only; every expert adds its own LoRA.
  model = build_model(model_config)
  key_tower, key_heads = jax.random.split(jax.random.key(config.seed))
  tower = init_params(model, key_tower, split.images.shape[1:], 1)["img"]
  tower_apply = lambda p, x: model.apply({"params": {"img": p}}, x, method=lambda m, x: m.img(x))
  features = jax.eval_shape(tower_apply, tower, split.images[:1].astype(np.float32))
  heads = AttributeHeads(classes)
  params = {"tower": tower,
            "heads": heads.init(key_heads, jnp.zeros(features.shape))["params"]}
  heads_apply = lambda p, f: heads.apply({"params": p}, f)
  steps_per_epoch = len(train_x) // cfg.batch_size
  total_steps = steps_per_epoch * cfg.epochs
  schedule = optax.warmup_cosine_decay_schedule(0.0, cfg.lr, total_steps // 10, total_steps)
  tx = optax.adamw(schedule, weight_decay=cfg.weight_decay)
  train_step, eval_step = _make_step(tower_apply, heads_apply, tx)
  mesh = parallel.make_mesh()
  parallel.check_divisible(cfg.batch_size, "pretrain.batch_size")

  with (workdir_lib.checkpoint_manager(out, max_to_keep=1) as mngr,
        preemption.StopOnSigterm() as stop):  # SIGTERM: stop after the epoch saved.
    opt_state = tx.init(params)
    start = mngr.latest_step() or 0
    if start:
      restored = mngr.restore(start, args=ocp.args.Composite(
          tower=ocp.args.StandardRestore(params["tower"]),
          heads=ocp.args.StandardRestore(params["heads"]),
          opt_state=ocp.args.StandardRestore(opt_state)))
      params = {"tower": restored.tower, "heads": restored.heads}
      opt_state = restored.opt_state
      logging.info("Resuming pretraining after epoch %d.", start)
    params, opt_state = parallel.put_replicated((params, opt_state), mesh)
    t0 = time.time()
    bar = tqdm.trange(start, cfg.epochs, desc="pretrain", initial=start, total=cfg.epochs)
    for epoch in bar:
      order = np.random.default_rng([config.seed, epoch]).permutation(len(train_x))
      for i in range(steps_per_epoch):
        rows = order[i * cfg.batch_size:(i + 1) * cfg.batch_size]
        batch = parallel.put_batch((lazy_arrays.rows_of(train_x, rows),
                                    {k: v[rows] for k, v in train_t.items()}), mesh)
        params, opt_state, loss, _ = train_step(params, opt_state, *batch)
      bar.set_postfix(loss=f"{float(loss):.3f}")
      mngr.save(epoch + 1, args=ocp.args.Composite(
          tower=ocp.args.StandardSave(params["tower"]),
          heads=ocp.args.StandardSave(params["heads"]),
          opt_state=ocp.args.StandardSave(opt_state)))
      stop.stop_if_requested(f"pretraining epoch {epoch + 1}; saved {out}/ckpt/{epoch + 1}")
    mngr.wait_until_finished()

  accuracy = _held_out_accuracy(eval_step, params, held_x, held_t, cfg.batch_size, mesh)
  logging.info("Pretrained tower, held-out accuracy: %s", accuracy)
  jsonfile.write(os.path.join(out, workdir_lib.PRETRAIN_SUMMARY),
                 {"settings": provenance.settings(config, "pretrain"),
                  "tower_sha256": checksums.tree_sha256(params["tower"]),
                  "epochs": cfg.epochs, "held_out_examples": n_held,
                  "held_out_accuracy": accuracy,
                  "seconds_this_run": round(time.time() - t0, 1)})


def _has_checkpoint(out: str, epoch: int) -> bool:
  """Whether the final checkpoint of `epoch` is on disk (Orbax names a folder by
  its step only once it is complete)."""
  return os.path.isdir(os.path.join(out, "ckpt", str(epoch)))


def _held_out_accuracy(eval_step, params, images, targets, batch_size, mesh):
  """Accuracy per attribute in percent, over whole batches (at least one)."""
  sums, count = {}, 0
  for start in range(0, max(1, len(images) - batch_size + 1), batch_size):
    rows = slice(start, start + batch_size)
    batch = parallel.put_batch((images[rows], {k: v[rows] for k, v in targets.items()}), mesh)
    rows_in_batch = len(images[rows])
    for name, value in eval_step(params, *batch).items():
      sums[name] = sums.get(name, 0.0) + float(value) * rows_in_batch
    count += rows_in_batch
  return {name: round(100 * total / count, 2) for name, total in sums.items()}
