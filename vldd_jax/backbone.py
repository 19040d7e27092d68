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

from vldd_jax import checksums
from vldd_jax import jsonfile
from vldd_jax import provenance
from vldd_jax import workdir_lib
from vldd_jax.models import hf_vit_grafter

# The settings a pretrained tower used on other data must share with the config.
TOWER_FIELDS = ("model.tower", "model.vit.", "model.convnet.")


def _is_base(path: str) -> bool:
  return not path.endswith(("/lora_a", "/lora_b"))


def _graft(tower: dict, base: dict, folder: str) -> dict:
  flat = traverse_util.flatten_dict(tower, sep="/")
  loaded = traverse_util.flatten_dict(base, sep="/")
  expected = {k for k in flat if _is_base(k)}
  differ = sorted(expected ^ loaded.keys()) or [
      k for k, v in loaded.items() if flat[k].shape != v.shape]
  if differ:
    raise ValueError(f"The tower in {folder} does not fit config.model (first differing "
                     f"weights: {', '.join(differ[:3])}): it was made for another "
                     "architecture. Set config.model to the settings it was pretrained "
                     "with, or point config.model.backbone at a tower made for these.")
  flat.update({k: jnp.asarray(v) for k, v in loaded.items()})
  return traverse_util.unflatten_dict(flat, sep="/")


# The named sources (`config_lib.NAMED_BACKBONES`): the pretrain folder of a
# workdir whose tower they load, or None for the fresh initialisation.
NAMED: dict[str, Callable[[str], str | None]] = {
    "pretrain": workdir_lib.pretrain_dir,
    "scratch": lambda workdir: None,
}


def loader(config: ml_collections.ConfigDict,
           workdir: str) -> Callable[[dict], dict] | None:
  """What replaces a fresh tower's base weights: `config.model.backbone`.

  "pretrain": this workdir's pretrain stage; "scratch": nothing (None); a
  folder holding `summary.json`: another workdir's `pretrain/` (e.g. the
  shapes tower for other data; only its tower settings must match); any other
  value: a Hugging Face ViT folder or .safetensors file.
  """
  source = config.model.backbone
  if source in NAMED:
    folder, fields = NAMED[source](workdir), None
    if folder is None:
      return None
  elif os.path.exists(os.path.join(source, workdir_lib.PRETRAIN_SUMMARY)):
    folder, fields = source, TOWER_FIELDS
  else:  # Read and checked here, once for every student that uses it.
    return hf_vit_grafter(source)
  summary = os.path.join(folder, workdir_lib.PRETRAIN_SUMMARY)
  if not os.path.exists(summary):
    raise FileNotFoundError(f"{summary} not found: run --config.stage=pretrain first, "
                            "or set config.model.backbone.")
  check_settings(config, summary, fields)
  recorded = checksums.backbone_sha256(folder)
  with workdir_lib.checkpoint_manager(folder, max_to_keep=1) as mngr:
    base = mngr.restore(mngr.latest_step(), args=ocp.args.Composite(
        tower=ocp.args.StandardRestore())).tower
  if checksums.tree_sha256(base) != recorded:
    raise ValueError(f"{folder}/ckpt: the tower does not match the tower_sha256 that "
                     f"{summary} recorded when it was pretrained (a damaged or replaced "
                     "checkpoint).")
  return lambda tower: _graft(tower, base, folder)


def check_settings(config: ml_collections.ConfigDict, summary: str,
                   fields: tuple[str, ...] | None = None) -> None:
  """Raises if the pretrained tower of `summary` was made under other settings
  (of those starting with one of `fields`, if given)."""
  saved = jsonfile.read(summary).get("settings", {})
  wanted = provenance.settings(config, "pretrain")
  if fields is not None:
    saved, wanted = ({k: v for k, v in d.items() if k.startswith(fields)}
                     for d in (saved, wanted))
  provenance.check(saved, wanted, os.path.dirname(summary),
                   "use a new workdir, or delete that folder to pretrain anew.")
