"""Trainable/frozen partition of the parameter pytree, and the pure apply function.

Which leaves train is chosen by regexes on the '/'-joined parameter path (as
big_vision's optimizer config does), so LoRA-only, heads-only and full training
share one code path.
"""
import re
from collections.abc import Callable

import flax.linen as nn
import jax
from flax import traverse_util

from vldd_jax.models.dual_encoder import TRAINABLE_MODES

_LORA = r".*/lora_[ab]"
_HEADS = r"(img_head|txt_head)/.*|log_scale"
TRAINABLE_PATTERNS = {
    "lora+heads": (_LORA, _HEADS),
    "heads": (_HEADS,),
    "all": (r".*",),
}

ApplyFn = Callable[..., tuple[jax.Array | None, jax.Array | None, jax.Array]]


def is_text_side(path: str) -> bool:
  """Whether a parameter belongs to the text side (text head, temperature).

  Distilled sets learn one learning rate for each side, as in the paper.
  """
  return re.fullmatch(r"txt_head/.*|log_scale", path) is not None


def text_side_mask(params: dict) -> dict:
  """A pytree of bools like `params`: True on the text side."""
  flat = traverse_util.flatten_dict(params, sep="/")
  return traverse_util.unflatten_dict({k: is_text_side(k) for k in flat}, sep="/")


def is_trainable(path: str, mode: str) -> bool:
  """Whether the parameter at '/'-joined `path` trains in `mode`."""
  if mode not in TRAINABLE_MODES:
    raise ValueError(f"Unknown trainable mode {mode!r}; expected one of {TRAINABLE_MODES}.")
  return any(re.fullmatch(p, path) for p in TRAINABLE_PATTERNS[mode])


def split_params(params: dict, mode: str) -> tuple[dict, dict]:
  """Splits `params` into (trainable, frozen) nested dicts holding disjoint leaves."""
  flat = traverse_util.flatten_dict(params, sep="/")
  trainable = {k: v for k, v in flat.items() if is_trainable(k, mode)}
  frozen = {k: v for k, v in flat.items() if k not in trainable}
  assert len(trainable) + len(frozen) == len(flat), "a leaf is not covered exactly once"
  if mode == "lora+heads" and not any(re.fullmatch(_LORA, k) for k in trainable):
    raise ValueError("trainable='lora+heads' but the model has no LoRA factors (LoRA "
                     "rank 0, no targets, or a ConvNet tower); use 'heads' or 'all'.")
  return (traverse_util.unflatten_dict(trainable, sep="/"),
          traverse_util.unflatten_dict(frozen, sep="/"))


def merge_params(trainable: dict, frozen: dict) -> dict:
  """The inverse of `split_params`; the two trees must not share a leaf."""
  flat_trainable = traverse_util.flatten_dict(trainable, sep="/")
  flat_frozen = traverse_util.flatten_dict(frozen, sep="/")
  shared = sorted(flat_trainable.keys() & flat_frozen.keys())
  if shared:
    raise ValueError(f"Leaves both trainable and frozen: {shared}")
  return traverse_util.unflatten_dict(flat_trainable | flat_frozen, sep="/")


def make_apply_fn(model: nn.Module) -> ApplyFn:
  """Returns the pure `apply_fn(trainable, frozen, images, text_emb, *, train, rng,
  features, blend)`.

  It returns `(image_emb, text_emb, logit_scale)`; pass `images=None` or
  `text_emb=None` to embed one side only (its output is then None). `rng` feeds
  dropout and is needed only when `train` is True. `features=True`: `images`
  are already the tower's output (`make_feature_fn`). `blend=(lam, perm)`
  mixes each head's input with its rows `perm`, lam * x + (1 - lam) * x[perm]
  (RepBlend's representation blending).
  """

  def apply_fn(trainable: dict, frozen: dict, images: jax.Array | None,
               text_emb: jax.Array | None, *, train: bool = False,
               rng: jax.Array | None = None, features: bool = False,
               blend: tuple[jax.Array, jax.Array] | None = None):
    mix = (lambda x: x) if blend is None else (
        lambda x: blend[0] * x + (1 - blend[0]) * x[blend[1]])

    def run(module):
      img = txt = None
      if images is not None:
        z = images if features else module.image_features(images)
        img = module.embed_image_features(mix(z), train=train)
      if text_emb is not None:
        txt = module.embed_texts(mix(text_emb), train=train)
      return img, txt, module.logit_scale()

    rngs = None if rng is None else {"dropout": rng}
    return model.apply({"params": merge_params(trainable, frozen)}, method=run, rngs=rngs)

  return apply_fn


def make_feature_fn(model: nn.Module) -> Callable[[dict, dict, jax.Array], jax.Array]:
  """Returns `features(trainable, frozen, images)`: the image tower's output."""

  def features(trainable: dict, frozen: dict, images: jax.Array) -> jax.Array:
    return model.apply({"params": merge_params(trainable, frozen)}, images,
                       method=lambda module, x: module.image_features(x))

  return features
