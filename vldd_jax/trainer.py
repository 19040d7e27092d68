"""Contrastive training of a dual encoder's trainable partition, and its evaluation.

Shared by the experts and evaluation stages: a fresh student (backbone plus new
LoRA and heads), a jitted optax step over the `('data',)` mesh, epochs that
draw one caption per image, and recall@K on a split.
"""
from collections.abc import Callable
import dataclasses

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from vldd_jax import augment as augment_lib
from vldd_jax import compile_options
from vldd_jax import objectives
from vldd_jax import parallel
from vldd_jax import retrieval
from vldd_jax.data import lazy_arrays
from vldd_jax.data.input_pipeline import Split
from vldd_jax.models import build_model, init_params, make_apply_fn, split_params
from vldd_jax.models.partition import ApplyFn, text_side_mask

# uint8 pixels map to [-1, 1]; synthetic images live in this space.
PIXEL_MEAN = 0.5
PIXEL_STD = 0.5

TrainStep = Callable[..., tuple]


def to_model_space(images: jax.Array) -> jax.Array:
  """uint8 images to the model's normalised pixel space; floats pass through."""
  if images.dtype == jnp.uint8:
    return (images.astype(jnp.float32) / 255.0 - PIXEL_MEAN) / PIXEL_STD
  return images


@dataclasses.dataclass(frozen=True)
class Student:
  """A dual encoder split into what trains and what stays frozen."""
  apply_fn: ApplyFn
  trainable: dict
  frozen: dict


def init_student(model_config: ml_collections.ConfigDict, rng: jax.Array,
                 image_shape: tuple[int, ...], text_dim: int,
                 backbone: Callable[[dict], dict] | None = None) -> Student:
  """A fresh student: parameters from `rng`, image tower replaced by `backbone`.

  Args:
    model_config: `config.model`.
    rng: PRNG key for the LoRA factors and heads (and the tower, if no backbone).
    image_shape: (H, W, C).
    text_dim: size of the frozen text embeddings.
    backbone: maps the fresh tower parameters `params["img"]` to the ones to
      use (keeping the fresh LoRA factors); see `backbone.loader`.
  """
  model = build_model(model_config)
  params = dict(init_params(model, rng, image_shape, text_dim))
  if backbone is not None:
    params["img"] = backbone(params["img"])
  trainable, frozen = split_params(params, model_config.trainable)
  return Student(make_apply_fn(model), trainable, frozen)


def make_optimizer(lr: float, momentum: float = 0.0, lr_text: float | None = None,
                   rates_in_state: bool = False) -> optax.GradientTransformation:
  """Plain SGD (the paper's experts: lr 0.1, no momentum), optional momentum.

  With `lr_text`, the text side (`partition.is_text_side`) uses that rate and
  the image side `lr`, as a distilled set's two learned rates ask.
  `rates_in_state`: the rates live in the optimizer state
  (`optax.inject_hyperparams`), so one compiled train step serves students of
  any rates: build it once, and `init` each student's state from an optimizer
  made with its rates.
  """
  sgd = optax.inject_hyperparams(optax.sgd) if rates_in_state else optax.sgd
  if lr_text is None:
    return sgd(lr, momentum=momentum or None)
  return optax.multi_transform(
      {False: sgd(lr, momentum=momentum or None),
       True: sgd(lr_text, momentum=momentum or None)},
      text_side_mask)


def student_loss(apply_fn: ApplyFn, objective: objectives.Objective, augment: bool = False,
                 augment_per_image: bool = True, blend_alpha: float = 0.0,
                 features: bool = False) -> Callable:
  """The loss every student trains with: experts, distillation and evaluation.

  Returns `loss(trainable, frozen, images, text_emb, key, targets=None) ->
  (loss, (image_emb, text_emb))`: images (uint8 or model space) get DSA
  (`augment.py`) if `augment`, then `objective.loss` against `targets`, the
  [B, B] block of the set's learned targets (None for pairs).

  `blend_alpha > 0` blends each head's input with a permutation of the batch
  by lam ~ Beta(alpha, alpha), the same for images and texts (RepBlend, Zhang
  et al., NeurIPS 2025; distillation students only). `features=True`: `images`
  are tower features, already augmented (`augmented_images`), for a frozen
  tower run once outside the unroll (`matching`).
  """

  def loss_fn(trainable, frozen, images, text_emb, key, targets=None):
    _, k_dropout = jax.random.split(key)
    if not features:
      images = augmented_images(images, key, augment, augment_per_image)
    blend = None
    if blend_alpha > 0:
      k_lam, k_perm = jax.random.split(jax.random.fold_in(key, 1))
      blend = (jax.random.beta(k_lam, blend_alpha, blend_alpha),
               jax.random.permutation(k_perm, text_emb.shape[0]))
    img, txt, scale = apply_fn(trainable, frozen, images, text_emb, train=True,
                               rng=k_dropout, features=features, blend=blend)
    return objective.loss(img, txt, scale, targets), (img, txt)

  return loss_fn


def augmented_images(images: jax.Array, key: jax.Array, augment: bool,
                     augment_per_image: bool = True) -> jax.Array:
  """A student step's input images: model space, with DSA drawn from `key` (the
  step's key, as `student_loss` splits it) if `augment`."""
  images = to_model_space(images)
  if augment:
    images = augment_lib.augment(images, jax.random.split(key)[0], augment_per_image)
  return images


def make_train_step(loss_fn: Callable, tx: optax.GradientTransformation) -> TrainStep:
  """The jitted step `(trainable, opt_state, frozen, images, text_emb, rng[, targets])`
  of `loss_fn` (a `student_loss`).

  Returns `(trainable, opt_state, loss, correct)` where `correct[i]` says
  whether image i's most similar text in the batch is its own. The first two
  inputs are donated.
  """
  return compile_options.jit(_train_step(loss_fn, tx), donate_argnums=(0, 1))


def make_row_epochs(loss_fn: Callable, tx: optax.GradientTransformation,
                    shared_frozen: bool, mesh: jax.sharding.Mesh) -> Callable:
  """Epochs of a row of students (a row's seeds, stacked along a leading
  axis) as one program: `make_train_step`'s step scanned over every step of
  the epochs and vmapped over the students (`train_row_epochs` runs it).

  `(trainable, opt_state, frozen, pairs, draws) -> (trainable, opt_state,
  losses [S, E, steps], correct [S, E, steps, B])`: `pairs` (images,
  text_emb, targets or None) whole on every device, each step's batch gathered
  from them by the `draws` (rows [S, E, steps, B]; captions [S, E, N], one per
  image, or None; keys [S, E]) and split over the devices, its key folded from
  its epoch's; `frozen` has the students' axis unless `shared_frozen`. The
  first two inputs are donated.
  """
  step = _train_step(loss_fn, tx)
  split = lambda x: jax.lax.with_sharding_constraint(x, parallel.batch_sharded(mesh))

  def student(trainable, opt_state, frozen, pairs, draws):
    (images, text_emb, targets), (rows, captions, keys) = pairs, draws
    epochs, steps, batch = rows.shape

    def body(state, xs):
      e, i, r = xs
      texts = text_emb[r] if captions is None else text_emb[r, captions[e, r]]
      block = None if targets is None else _target_block(targets, r)
      trainable, opt_state, loss, correct = step(
          *state, frozen, split(images[r]), split(texts), jax.random.fold_in(keys[e], i),
          block)
      return (trainable, opt_state), (loss, correct)

    e, i = jnp.divmod(jnp.arange(epochs * steps), steps)
    (trainable, opt_state), (losses, correct) = jax.lax.scan(
        body, (trainable, opt_state), (e, i, rows.reshape(epochs * steps, batch)))
    return (trainable, opt_state, losses.reshape(epochs, steps),
            correct.reshape(epochs, steps, batch))

  in_axes = (0, 0, None if shared_frozen else 0, None, 0)
  return compile_options.jit(jax.vmap(student, in_axes=in_axes), donate_argnums=(0, 1))


def _train_step(loss_fn: Callable, tx: optax.GradientTransformation) -> Callable:
  """The train step before jit (`make_train_step`'s signature and results)."""

  def train_step(trainable, opt_state, frozen, images, text_emb, rng, targets=None):
    (loss, (img, txt)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
        trainable, frozen, images, text_emb, rng, targets)
    updates, opt_state = tx.update(grads, opt_state, trainable)
    trainable = optax.apply_updates(trainable, updates)
    correct = jnp.argmax(img @ txt.T, axis=1) == jnp.arange(img.shape[0])
    return trainable, opt_state, loss, correct

  return train_step


def train_epoch(train_step: TrainStep, state: tuple[dict, optax.OptState],
                frozen: dict, images: lazy_arrays.Rows, text_emb: lazy_arrays.Rows, *,
                batch_size: int, seed: tuple[int, ...], targets: np.ndarray | None = None
                ) -> tuple[tuple[dict, optax.OptState], float, np.ndarray]:
  """One epoch over the pairs in a random order, one random caption per image.

  The order, captions and dropout keys depend only on `seed`, so a resumed run
  repeats an uninterrupted one. The last partial batch is dropped (a
  different one each epoch), which keeps one compiled step.

  Args:
    state: (trainable parameters, optimizer state), as returned.
    images: [N, H, W, C], uint8 or model-space floats.
    text_emb: [N, captions_per_image, D] or [N, D] (one text per image).
    seed: e.g. (run seed, expert, epoch).
    targets: learned student targets of the pairs (`Objective.eval_targets`):
      [N, N] arrays, of which a batch takes its block, and scalars.

  Returns:
    ((trainable, opt_state), mean loss, correct) with `correct` int8 [N]: 1 if the
    image's own caption was its top match in its batch, 0 if not, -1 if the
    pair was in the dropped partial batch.
  """
  epoch = _EpochDraw.of(len(images), text_emb, batch_size, seed)
  trainable, opt_state = state
  mesh = parallel.make_mesh()  # Batches split over every device, as the step's inputs.
  step_losses, step_correct = [], []
  for i in range(epoch.steps):
    rows = epoch.rows(i)
    # Images stay unread until placed: each process reads its own devices' rows.
    batch = parallel.put_batch((lazy_arrays.rows_of(images, rows),
                                epoch.texts(text_emb, rows)), mesh)
    rng_i = parallel.put_replicated(jax.random.fold_in(epoch.key, i), mesh)
    block = () if targets is None else (
        parallel.put_replicated(_target_block(targets, rows), mesh),)
    trainable, opt_state, loss, correct = train_step(
        trainable, opt_state, frozen, *batch, rng_i, *block)
    step_losses.append(loss)
    step_correct.append(correct)
  record = epoch.record([parallel.to_host(c) for c in step_correct])
  return (trainable, opt_state), float(np.mean(jax.device_get(step_losses))), record


def _target_block(targets: dict, rows) -> dict:
  """The targets between a batch's pairs: each [N, N] entry's rows x rows block
  (LoRS's similarities), the others whole."""
  return jax.tree.map(lambda t: t[rows[:, None], rows[None, :]] if np.ndim(t) == 2 else t,
                      targets)


def train_row_epochs(row_epochs: Callable, state: tuple[dict, optax.OptState],
                     frozen: dict, pairs: tuple[jax.Array, jax.Array, dict | None], *,
                     batch_size: int, seeds: list[list[tuple[int, ...]]]
                     ) -> tuple[tuple[dict, optax.OptState], np.ndarray, np.ndarray]:
  """`train_epoch` for a row of students stacked along a leading axis, several
  epochs in one `make_row_epochs` program: student s draws epoch e's order,
  captions and keys from `seeds[e][s]` as `train_epoch` does, so it trains as
  it would alone (up to float32 rounding of the batched arithmetic).

  Args:
    pairs: (images, text_emb, targets or None), placed on every device once
      for all the row's epochs (`parallel.put_replicated`).

  Returns ((trainable, opt_state), mean loss [S, E], correct [S, E, N]).
  """
  images, text_emb, _ = pairs
  draws = [[_EpochDraw.of(len(images), text_emb, batch_size, seed) for seed in epoch]
           for epoch in seeds]  # [E][S]
  steps = draws[0][0].steps
  per_student = lambda f: np.stack([[f(draw) for draw in epoch] for epoch in draws], 1)
  rows = per_student(lambda draw: np.stack([draw.rows(i) for i in range(steps)]))
  captions = (None if draws[0][0].captions is None else
              per_student(lambda draw: draw.captions))
  keys = jnp.stack([jnp.stack([draw.key for draw in epoch]) for epoch in draws], 1)
  mesh = parallel.make_mesh()
  trainable, opt_state, losses, correct = row_epochs(
      *state, frozen, pairs, parallel.put_replicated((rows, captions, keys), mesh))
  correct = parallel.to_host(correct)
  records = np.stack([[draw.record(list(correct[s, e])) for s, draw in enumerate(epoch)]
                      for e, epoch in enumerate(draws)], 1)
  return (trainable, opt_state), parallel.to_host(losses).mean(axis=2), records


@dataclasses.dataclass(frozen=True)
class _EpochDraw:
  """What an epoch's seed draws: the pairs' order, one caption per image (of
  [N, captions, D] texts) and the steps' key."""
  order: np.ndarray
  captions: np.ndarray | None
  key: jax.Array
  batch_size: int

  @classmethod
  def of(cls, n: int, text_emb: lazy_arrays.Rows, batch_size: int,
         seed: tuple[int, ...]) -> "_EpochDraw":
    if n < batch_size:
      raise ValueError(f"batch_size={batch_size} is larger than the {n} training pairs.")
    rng = np.random.default_rng(seed)
    order = rng.permutation(n)
    captions = rng.integers(0, text_emb.shape[1], n) if text_emb.ndim == 3 else None
    return cls(order, captions, jax.random.key(rng.integers(2**31)), batch_size)

  @property
  def steps(self) -> int:
    return len(self.order) // self.batch_size

  def rows(self, step: int) -> np.ndarray:
    return self.order[step * self.batch_size:(step + 1) * self.batch_size]

  def texts(self, text_emb: lazy_arrays.Rows, rows: np.ndarray) -> np.ndarray:
    return text_emb[rows] if self.captions is None else text_emb[rows, self.captions[rows]]

  def record(self, step_correct: list[np.ndarray]) -> np.ndarray:
    """Per pair: 1/0 from its step's `correct`, -1 in the dropped partial batch."""
    record = np.full(len(self.order), -1, np.int8)
    record[self.order[:self.steps * self.batch_size]] = np.concatenate(step_correct)
    return record


class Embedder:
  """Embeds a split with a student's current parameters, in fixed-size batches."""

  def __init__(self, apply_fn: ApplyFn, mesh: jax.sharding.Mesh, batch_size: int = 512):
    parallel.check_divisible(batch_size, "eval batch_size")
    self._mesh = mesh
    self._batch_size = batch_size
    self._images = compile_options.jit(lambda t, f, x: apply_fn(t, f, to_model_space(x), None)[0])
    self._texts = compile_options.jit(lambda t, f, x: apply_fn(t, f, None, x)[1])

  def _run(self, fn, trainable, frozen, x: np.ndarray) -> np.ndarray:
    out = []
    for start in range(0, len(x), self._batch_size):
      chunk = x[start:start + self._batch_size]
      pad = self._batch_size - len(chunk)
      padded = np.concatenate([chunk, np.zeros((pad,) + chunk.shape[1:], chunk.dtype)])
      emb = fn(trainable, frozen, parallel.put_batch(padded, self._mesh))
      out.append(parallel.to_host(emb)[:len(chunk)])
    return np.concatenate(out)

  def images(self, trainable: dict, frozen: dict, images: lazy_arrays.Rows) -> np.ndarray:
    """Unit image embeddings [N, embed_dim]."""
    return self._run(self._images, trainable, frozen, images)

  def texts(self, trainable: dict, frozen: dict, text_emb: np.ndarray) -> np.ndarray:
    """Unit text embeddings [N, embed_dim] from frozen-encoder embeddings [N, D]."""
    return self._run(self._texts, trainable, frozen, text_emb)


def evaluate_retrieval(embedder: Embedder, trainable: dict, frozen: dict,
                       split: Split) -> dict[str, float]:
  """recall@1/5/10 both ways (percent) of the student on a split, every caption."""
  img = embedder.images(trainable, frozen, split.images)
  txt = embedder.texts(trainable, frozen,
                       split.text_emb[:].reshape(-1, split.text_emb.shape[-1]))
  return retrieval.recall_at_k(img @ txt.T, split.caption_to_image)
