"""Distillation objectives: what a set learns besides its pairs, and its students' loss.

An objective is one class in `OBJECTIVES`, chosen by `distill.objective`. The
distillation student (`matching`) and the evaluation student (`trainer`) both
train with `trainer.student_loss`, which calls `Objective.loss`, so the two
cannot drift apart. A set of objective `name` lives in `distill/n<N>_<name>`
(`n<N>` for "plain") and is the row `distilled_<name>` (`distilled`) of the
results tables. Besides its loss and learned parts, an objective may blend the
distillation students' head inputs (`blend_alpha`) and save a moving average
of the set (`ema_decay`); `docs/beyond_the_paper.md` measures each.
"""
from typing import ClassVar

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from vldd_jax import losses
from vldd_jax import lowrank


class Objective:
  """The base of every objective: pairs trained with the symmetric InfoNCE
  loss, nothing learned beside them. Subclasses override what differs."""
  name: ClassVar[str]
  # The `distill` fields a set of this objective depends on beyond the shared ones.
  fields: ClassVar[tuple[str, ...]] = ()

  def __init__(self, cfg: ml_collections.ConfigDict | None = None):
    self.cfg = cfg  # `config.distill`; the plain loss needs none of it.

  def init(self, num_pairs: int, key: jax.Array) -> dict:
    """Learnable parts of the set beyond images, text and log rates."""
    return {}

  def rates(self) -> dict[str, float]:
    """Their meta learning rates, by part."""
    return {}

  def targets(self, syn: dict, rows: jax.Array) -> jax.Array | dict | None:
    """Student targets for the minibatch `rows` of the set ([B, B] arrays and
    scalars, as `eval_targets` gives a batch); None: pairs."""
    return None

  def loss(self, image_emb: jax.Array, text_emb: jax.Array, scale: jax.Array,
           targets: jax.Array | None) -> jax.Array:
    """The student's loss on a minibatch."""
    return losses.contrastive_loss(image_emb, text_emb, scale)

  def export(self, syn: dict) -> dict[str, np.ndarray]:
    """Arrays `distilled.npz` stores for the learned parts."""
    return {}

  def exported(self, num_pairs: int) -> dict[str, tuple[int, ...]]:
    """The shape of each array `export` writes for a set of `num_pairs` pairs
    (a saved set must hold them: `distilled_set.read`)."""
    return {}

  def eval_targets(self, arrays: dict[str, np.ndarray]) -> np.ndarray | dict | None:
    """The targets an evaluation student trains against, from `export`: [N, N]
    arrays (a batch takes their block) and scalars."""
    return None

  def extra_floats(self, num_pairs: int) -> int:
    """Storage of the learned parts, in floats (budgets count it)."""
    return 0

  def student_batch(self, batch_size: int) -> int:
    """Synthetic pairs per distillation student step, given `distill.batch_size`."""
    return batch_size

  def blend_alpha(self) -> float:
    """Beta(alpha, alpha) of the distillation students' representation
    blending (`trainer.student_loss`); 0: none."""
    return 0.0

  def ema_decay(self) -> float:
    """Decay of the moving average of the set that is saved (`matching.
    make_meta_step`); 0: the set itself."""
    return 0.0


class Plain(Objective):
  """Pairs trained with the symmetric InfoNCE loss (VLDD)."""
  name = "plain"


class LowRankSimilarity(Objective):
  """LoRS (Xu et al., ICML 2024): also learn S = diag(a) + alpha/rank L R^T,
  the soft targets of the student loss (`lowrank.py`), chosen from `LOSSES`
  by `lowrank_loss`; a loss's scalar parameters (SigLIP's bias) are learned
  with S."""
  name = "lowrank"
  fields = ("lowrank_rank", "lowrank_alpha", "meta_lr_lowrank", "lowrank_loss",
            "lowrank_batch_size")
  # name: (loss(image_emb, text_emb, scale, S block, **scalars), {scalar: initial
  # value}). LoRS's default (WBCE); the soft-target InfoNCE, which equals the
  # plain loss while S is the identity; SigLIP's sigmoid loss with a learned
  # bias, from SigLIP's -10 (Zhai et al., ICCV 2023).
  LOSSES = {"wbce": (losses.weighted_bce_loss, {}),
            "softmax": (losses.soft_contrastive_loss, {}),
            "sigmoid": (losses.sigmoid_loss, {"bias": -10.0})}

  def __init__(self, cfg: ml_collections.ConfigDict):
    super().__init__(cfg)
    if cfg.lowrank_loss not in self.LOSSES:
      raise ValueError(f"distill.lowrank_loss={cfg.lowrank_loss!r}: expected one "
                       f"of {tuple(self.LOSSES)}.")
    self._loss, self._scalars = self.LOSSES[cfg.lowrank_loss]

  def init(self, num_pairs, key):
    return {"sim": lowrank.init(num_pairs, self.cfg.lowrank_rank, key),
            **{k: jnp.float32(v) for k, v in self._scalars.items()}}

  def rates(self):
    # A scalar moves at S's rate: one float next to S's N (1 + 2 rank).
    return {part: self.cfg.meta_lr_lowrank for part in ("sim", *self._scalars)}

  def targets(self, syn, rows):
    return {"sim": lowrank.targets(syn["sim"], rows, self.cfg.lowrank_alpha),
            **{k: syn[k] for k in self._scalars}}

  def loss(self, image_emb, text_emb, scale, targets):
    return self._loss(image_emb, text_emb, scale, targets["sim"],
                      **{k: targets[k] for k in self._scalars})

  def export(self, syn):
    rows = np.arange(syn["sim"]["a"].shape[0])
    return {"similarity": np.asarray(lowrank.targets(  # The whole S.
        syn["sim"], rows, self.cfg.lowrank_alpha)),
            **{f"loss_{k}": np.asarray(syn[k]) for k in self._scalars}}

  def exported(self, num_pairs):
    return {"similarity": (num_pairs, num_pairs), **{f"loss_{k}": () for k in self._scalars}}

  def eval_targets(self, arrays):
    return {"sim": arrays["similarity"], **{k: arrays[f"loss_{k}"] for k in self._scalars}}

  def extra_floats(self, num_pairs):
    return lowrank.num_floats(num_pairs, self.cfg.lowrank_rank) + len(self._scalars)

  def student_batch(self, batch_size):
    # S is learned on the blocks of the pairs that share a step.
    return self.cfg.lowrank_batch_size or batch_size


class MovingAverage(Objective):
  """Plain pairs, of which the exponential moving average over the iterations
  is what is saved (PTM-ST, ICLR 2026). Evaluation students train on the pairs
  as plain ones."""
  name = "ema"
  fields = ("ema_decay",)

  def ema_decay(self):
    return float(self.cfg.ema_decay)


class Blend(MovingAverage):
  """Pairs distilled against modality collapse: RepBlend's representation
  blending (Zhang et al., NeurIPS 2025) in every distillation student step,
  and, as RepBlend's successors, the moving average of the set (`ema_decay`;
  0: the set itself)."""
  name = "blend"
  fields = ("blend_alpha", "ema_decay")

  def blend_alpha(self):
    return float(self.cfg.blend_alpha)


OBJECTIVES: dict[str, type[Objective]] = {
    o.name: o for o in (Plain, LowRankSimilarity, MovingAverage, Blend)}


def build(cfg: ml_collections.ConfigDict) -> Objective:
  """The objective `cfg.objective` (`cfg` is `config.distill`)."""
  if cfg.objective not in OBJECTIVES:
    raise ValueError(f"distill.objective={cfg.objective!r}: expected one of "
                     f"{sorted(OBJECTIVES)}.")
  return OBJECTIVES[cfg.objective](cfg)


def suffix(name: str) -> str:
  """What tells an objective's sets from plain ones, in their row and folder names."""
  return "" if name == Plain.name else f"_{name}"


def method(name: str) -> str:
  """The results-table row of an objective's sets."""
  return "distilled" + suffix(name)


def methods() -> dict[str, str]:
  """{row: objective} for every registered objective."""
  return {method(name): name for name in OBJECTIVES}


def all_fields() -> tuple[str, ...]:
  """The `distill` fields of every registered objective."""
  return tuple(dict.fromkeys(f for o in OBJECTIVES.values() for f in o.fields))


def other_fields(name: str) -> tuple[str, ...]:
  """The `distill` fields of every objective but `name` (a set ignores them)."""
  return tuple(f for f in all_fields() if f not in OBJECTIVES[name].fields)
