"""What a workdir output depends on: recorded beside it, checked alike by every reader.

Each stage output (the pretrained tower, an expert, a distilled set, a
comparison) stores `settings(config, kind)`: the config fields it depends on,
less those that cannot change it (where the data lives, logging cadence, how
many experts there are). A later run compares that record with its own config
through `check`, which refuses with every differing field, its saved and its
new value, so a workdir never mixes results made under different settings.
A tower from outside the workdir (`model.backbone` a path) is recorded by its
content too, `model.backbone_sha256`.
"""
import json

import ml_collections
from flax import traverse_util

from vldd_jax import checksums
from vldd_jax import config_lib

# The config sections (or single fields) each kind of output depends on.
DEPENDS = {
    # The tower is pretrained without LoRA or heads, so the rest of `model`
    # cannot change it.
    "pretrain": ("seed", "data", "model.tower", "model.vit", "model.convnet",
                 "pretrain"),
    "experts": ("seed", "data", "text", "model", "pretrain", "experts"),
    "distill": ("seed", "data", "text", "model", "pretrain", "experts", "distill"),
    "compare": ("seed", "data", "text", "model", "pretrain", "experts", "distill",
                "evaluate"),
}
# Fields that never change an output: locations, cadences, how many experts a
# folder holds (each expert is its own output), embedding batch sizes, how many
# students train at once and in what program (the same students, to float32
# rounding), and where a frozen tower runs in the unroll (the same loss).
IGNORED = ("concurrent_students", "data.data_dir", "data.in_memory_mb", "text.batch_size",
           "experts.num_experts",
           "experts.eval_batch_size", "distill.log_every", "distill.checkpoint_every",
           "distill.loss_rise_warning", "distill.hoist_tower", "evaluate.distilled_path",
           "evaluate.vmap_seeds")


def settings(config: ml_collections.ConfigDict, kind: str,
             ignore: tuple[str, ...] = ()) -> dict:
  """The flat `{"section.field": value}` record of what a `kind` output depends on.

  `ignore` drops more dotted fields or whole sections (a prefix).
  """
  nested = {}
  for name in DEPENDS[kind]:
    value = config_lib.get_field(config, name)
    if isinstance(value, ml_collections.ConfigDict):
      value = value.to_dict()
    if value is not None:  # A config without the section (no pretrain stage).
      nested[name] = value
  flat = flatten(nested, ignore)
  source = flat.get("model.backbone")
  if source is not None and source not in config_lib.NAMED_BACKBONES:
    # A tower from outside the workdir is recorded by what it holds, so one
    # replaced under the same path is refused like a changed setting.
    flat["model.backbone_sha256"] = checksums.backbone_sha256(source)
  return flat


def flatten(nested: dict, ignore: tuple[str, ...] = ()) -> dict:
  """`{"a": {"b": 1}}` -> `{"a.b": 1}` as JSON stores it (tuples as lists), less
  the `IGNORED` fields and `ignore` (fields or prefixes)."""
  flat = traverse_util.flatten_dict(nested, sep=".")
  dropped = IGNORED + tuple(ignore)
  kept = {k: v for k, v in flat.items()
          if not any(k == d or k.startswith(d + ".") for d in dropped)}
  return json.loads(json.dumps(kept, default=list))


def differences(saved: dict, wanted: dict) -> list[str]:
  """Sorted fields whose saved and wanted values differ (or that only one has)."""
  return sorted(k for k in saved.keys() | wanted.keys() if saved.get(k) != wanted.get(k))


def check(saved: dict, wanted: dict, what: str, remedy: str,
          allowed: tuple[str, ...] = ()) -> list[str]:
  """Raises ValueError naming each differing field of `what` outside `allowed`.

  Returns the differing fields that `allowed` lets through (the caller acts on
  them, e.g. distilling further).
  """
  differ = differences(saved, wanted)
  refused = [k for k in differ if k not in allowed]
  if refused:
    listed = ", ".join(f"{k}: saved {saved.get(k)!r}, config {wanted.get(k)!r}"
                       for k in refused)
    raise ValueError(f"{what} was made with other settings ({listed}); {remedy}")
  return differ
