"""Where a student's image-tower weights come from: `config.model.backbone`.

"pretrain" is the workdir's pretrain stage (its base weights, checked against
the config through the settings its summary records), "scratch" keeps the
fresh initialisation, anything else is a Hugging Face ViT folder or file.
"""
from collections.abc import Callable
import os

import jax.numpy as jnp
import ml_collections
import orbax.checkpoint as ocp
from flax import traverse_util

from vldd_jax import jsonfile
from vldd_jax import provenance
from vldd_jax.models import load_hf_vit

SUMMARY = "summary.json"
# The settings a pretrained tower used on other data must share with the config.
TOWER_FIELDS = ("model.tower", "model.vit.", "model.convnet.")


def pretrain_dir(workdir: str) -> str:
  """Where the pretrain stage keeps its checkpoint and `summary.json`."""
  return os.path.join(workdir, "pretrain")


def _is_base(path: str) -> bool:
  return not path.endswith(("/lora_a", "/lora_b"))


def _graft(tower: dict, base: dict) -> dict:
  flat = traverse_util.flatten_dict(tower, sep="/")
  loaded = traverse_util.flatten_dict(base, sep="/")
  expected = {k for k in flat if _is_base(k)}
  if expected != loaded.keys() or any(flat[k].shape != v.shape for k, v in loaded.items()):
    raise ValueError("The pretrained tower in the workdir does not match config.model "
                     "(was it pretrained with other model settings?); delete "
                     "<workdir>/pretrain to pretrain again.")
  flat.update({k: jnp.asarray(v) for k, v in loaded.items()})
  return traverse_util.unflatten_dict(flat, sep="/")


def loader(config: ml_collections.ConfigDict,
           workdir: str) -> Callable[[dict], dict] | None:
  """What replaces a fresh tower's base weights: `config.model.backbone`.

  "pretrain": this workdir's pretrain stage; "scratch": nothing (None); a
  folder holding `summary.json`: another workdir's `pretrain/` (e.g. the
  shapes tower for other data; only its tower settings must match); any other
  value: a Hugging Face ViT folder or .safetensors file.
  """
  source = config.model.backbone
  if source == "scratch":
    return None
  if source == "pretrain":
    folder, fields = pretrain_dir(workdir), None
  elif os.path.exists(os.path.join(source, SUMMARY)):
    folder, fields = source, TOWER_FIELDS
  else:
    return lambda tower: load_hf_vit(source, target=tower)
  summary = os.path.join(folder, SUMMARY)
  if not os.path.exists(summary):
    raise FileNotFoundError(f"{summary} not found: run --config.stage=pretrain first, "
                            "or set config.model.backbone.")
  check_settings(config, summary, fields)
  with ocp.CheckpointManager(os.path.join(folder, "ckpt")) as mngr:
    base = mngr.restore(mngr.latest_step(), args=ocp.args.Composite(
        tower=ocp.args.StandardRestore())).tower
  return lambda tower: _graft(tower, base)


def check_settings(config: ml_collections.ConfigDict, summary: str,
                   fields: tuple[str, ...] | None = None) -> None:
  """Raises if the pretrained tower of `summary` was made under other settings
  (of those starting with one of `fields`, if given); summaries from before
  `settings` existed are taken as matching."""
  saved = jsonfile.read(summary).get("settings")
  if saved is None:
    return
  wanted = provenance.settings(config, "pretrain")
  if fields is not None:
    saved, wanted = ({k: v for k, v in d.items() if k.startswith(fields)}
                     for d in (saved, wanted))
  provenance.check(saved, wanted, os.path.dirname(summary),
                   "use a new workdir, or delete that folder to pretrain anew.")
