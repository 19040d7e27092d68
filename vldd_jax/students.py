"""Evaluation students: the model a set is scored with, `evaluate.student`.

"same" is the experts' model (the paper's protocol). The others are the
cross-architecture students the trajectory-matching papers report: each maps
`config.model` to the student's model config. The ones that keep the ViT's
shape start from the workdir's pretrained tower; the others from scratch.
"""
from collections.abc import Callable

import ml_collections


def _lora8(model):
  model.lora.update(rank=8, alpha=8.0)


def _heads(model):
  model.update(trainable="heads")
  model.lora.rank = 0


def _all(model):
  model.trainable = "all"


def _vit_scratch(model):
  model.update(backbone="scratch", trainable="all")


def _wide_scratch(model):
  model.vit.update(width=2 * model.vit.width, mlp_dim=2 * model.vit.mlp_dim)
  model.update(backbone="scratch", trainable="all")


def _convnet(model):
  model.update(tower="convnet", backbone="scratch", trainable="all")


STUDENTS: dict[str, Callable[[ml_collections.ConfigDict], None]] = {
    "same": lambda model: None,
    "lora8": _lora8,  # LoRA of rank 8 instead of 4 on the pretrained tower.
    "heads": _heads,  # The pretrained tower frozen, heads only.
    "all": _all,  # The whole pretrained tower fine-tuned.
    "vit_scratch": _vit_scratch,  # The same ViT, every weight from scratch.
    "wide_scratch": _wide_scratch,  # A ViT twice as wide, from scratch.
    "convnet": _convnet,  # MTT's ConvNet tower, from scratch (slow on a CPU).
}


def student_config(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """`config` with `model` replaced by that of the student `evaluate.student`."""
  name = config.evaluate.student
  if name not in STUDENTS:
    raise ValueError(f"evaluate.student={name!r}: expected one of {sorted(STUDENTS)}.")
  out = config.copy_and_resolve_references()
  STUDENTS[name](out.model)
  return out
