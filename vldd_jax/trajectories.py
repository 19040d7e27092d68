"""The expert trajectory store: one Orbax checkpoint per (expert, epoch).

Layout under `<workdir>/experts/expert_NNN/`:

  ckpt/<epoch>/   Orbax items `params` (the trainable partition), `opt_state`,
                  `correct` (int8 [N]: 1/0 whether each training pair's image
                  found its own caption first in its batch, -1 not in a batch;
                  epochs >= 1), `metrics` (JSON) and, at epoch 0 only, `frozen`.
  manifest.json   model and data config, epochs done, dtype, per-epoch
                  validation recall, loss and wall time; `finished`.

Loading one (expert, epoch) reads only that checkpoint's `params` item.
"""
import json
import os
import re
from collections.abc import Sequence

import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from absl import logging

from vldd_jax import checksums
from vldd_jax import jsonfile
from vldd_jax import provenance
from vldd_jax import workdir_lib

_ARRAY_ITEMS = ("params", "opt_state", "frozen", "correct")


def expert_indices(workdir: str) -> list[int]:
  """The experts that `experts/` holds a folder of, sorted: exactly the names
  `workdir_lib.expert_dir` writes (`workdir_lib.EXPERT_NAME`). Anything else there is ignored with a
  warning naming it, so a stray copy is neither counted twice nor a crash."""
  root = workdir_lib.experts_dir(workdir)
  names = os.listdir(root) if os.path.isdir(root) else []
  matches = {name: re.fullmatch(workdir_lib.EXPERT_NAME, name) for name in names}
  ignored = sorted(name for name, match in matches.items() if match is None)
  if ignored:
    logging.warning("Ignoring %s in %s: experts are the folders expert_NNN only.",
                    ", ".join(ignored), root)
  return sorted(int(match[1]) for match in matches.values() if match is not None)


# What to do about a damaged or missing epoch checkpoint.
RETRAIN_EPOCH = ("Delete that epoch's folder and rerun --config.stage=experts: it trains "
                 "that expert again from the epoch before (the same trajectory).")


def _check_metrics(workdir: str, expert: int) -> None:
  """Raises naming the first epoch's `metrics` file that is not valid JSON."""
  for epoch in saved_epochs(workdir, expert):
    path = os.path.join(workdir_lib.expert_dir(workdir, expert), "ckpt", str(epoch),
                        "metrics", "metrics")
    try:
      with open(path, encoding="utf-8") as f:
        json.load(f)
    except FileNotFoundError:
      pass  # An interrupted save; Orbax skips it.
    except ValueError as e:
      raise ValueError(f"{path} cannot be read ({type(e).__name__}: {e}). "
                       f"{RETRAIN_EPOCH}") from e


def checkpoint_manager(workdir: str, expert: int) -> ocp.CheckpointManager:
  """The manager of one expert's checkpoints; every epoch is kept. Raises naming
  the file when an epoch's metrics (which Orbax reads on creation) are damaged."""
  handlers = {name: ocp.StandardCheckpointHandler() for name in _ARRAY_ITEMS}
  handlers["metrics"] = ocp.JsonCheckpointHandler()
  try:
    return workdir_lib.checkpoint_manager(workdir_lib.expert_dir(workdir, expert), max_to_keep=None,
                                          item_handlers=handlers)
  except Exception:
    _check_metrics(workdir, expert)  # Names a damaged file; else the error is Orbax's.
    raise


def _restore_items(mngr: ocp.CheckpointManager, epochs: Sequence[int], name: str) -> list:
  """Item `name` of each of `epochs`, on this process's first device, whatever
  devices saved it. The first epoch's metadata gives every epoch's shapes: an
  expert's items keep theirs, and reading it again took a third of a restore."""
  device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
  restored, target = [], None
  for epoch in epochs:
    try:
      if target is None:
        target = jax.tree.map(
            lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=device),
            mngr.item_metadata(epoch)[name])
      restored.append(mngr.restore(epoch, args=ocp.args.Composite(
          **{name: ocp.args.StandardRestore(target)}))[name])
    except Exception as e:  # Orbax/TensorStore errors name neither file nor fix.
      raise ValueError(f"{mngr.directory}/{epoch}/{name} cannot be read ({type(e).__name__}: "
                       f"{e}). {RETRAIN_EPOCH}") from e
  return restored


def write_manifest(workdir: str, expert: int, manifest: dict) -> None:
  """Writes the manifest atomically (process 0 only)."""
  jsonfile.write(os.path.join(workdir_lib.expert_dir(workdir, expert), workdir_lib.MANIFEST),
                 manifest)


def read_manifest(workdir: str, expert: int) -> dict | None:
  """The expert's manifest, or None if it has not started."""
  path = os.path.join(workdir_lib.expert_dir(workdir, expert), workdir_lib.MANIFEST)
  if not os.path.exists(path):
    return None
  return jsonfile.read(path)


def check_settings(config: ml_collections.ConfigDict, workdir: str, expert: int) -> None:
  """Raises if the expert's manifest records other settings than `config`'s."""
  manifest = read_manifest(workdir, expert)
  if manifest is None:
    return
  provenance.check(manifest.get("settings", {}), provenance.settings(config, "experts"),
                   workdir_lib.expert_dir(workdir, expert),
                   "use a new workdir, or delete its experts/ folder to train anew.")


def saved_epochs(workdir: str, expert: int) -> list[int]:
  """The epochs whose checkpoint folder exists, sorted (Orbax's temporary
  folders of an interrupted save are not epochs)."""
  path = os.path.join(workdir_lib.expert_dir(workdir, expert), "ckpt")
  return sorted(int(n) for n in os.listdir(path) if n.isdigit()) if os.path.isdir(path) else []


def resumable_epoch(epochs: list[int]) -> int | None:
  """The last epoch before the first missing one in `epochs` (None: no epoch 0)."""
  last = None
  for epoch in range(len(epochs)):
    if epoch not in epochs:
      break
    last = epoch
  return last


def is_finished(workdir: str, expert: int) -> bool:
  """Whether the expert's manifest says finished and every epoch's checkpoint,
  0 to the last, is there. One with a deleted epoch is not: the experts stage
  trains it again from the epoch before (`experts.py`)."""
  manifest = read_manifest(workdir, expert) or {}
  return bool(manifest.get("finished")) and (
      saved_epochs(workdir, expert) == list(range(manifest["epochs"] + 1)))


def finished_experts(workdir: str,
                     config: ml_collections.ConfigDict | None = None) -> list[int]:
  """Indices of the experts whose training finished, sorted; with `config`,
  raises if one was trained under other settings (`check_settings`)."""
  finished = [e for e in expert_indices(workdir) if is_finished(workdir, e)]
  for e in finished if config is not None else ():
    check_settings(config, workdir, e)
  return finished


def load_trajectory(workdir: str, expert: int, epochs: Sequence[int]) -> list[dict]:
  """The trainable parameters of `expert` after each of `epochs` (0: its start),
  checked against the checksums recorded when they were saved."""
  expert_dir = workdir_lib.expert_dir(workdir, expert)
  with checkpoint_manager(workdir, expert) as mngr:
    missing = sorted(set(epochs) - set(mngr.all_steps()))
    if missing:
      raise FileNotFoundError(f"{expert_dir} has no epoch {missing[0]}; saved epochs: "
                              f"{sorted(mngr.all_steps())}. Rerun --config.stage=experts: "
                              "it trains that expert again from the epoch before.")
    params = _restore_items(mngr, epochs, "params")
  recorded = {}  # An epoch's first record, as the manifest lists them.
  for h in (read_manifest(workdir, expert) or {}).get("history", []):
    recorded.setdefault(h["epoch"], h.get("params_sha256"))
  for epoch, p in zip(epochs, params):
    if recorded.get(epoch) is None or checksums.tree_sha256(p) != recorded[epoch]:
      raise ValueError(f"{expert_dir}/ckpt/{epoch}: the parameters do not match the "
                       "checksum recorded when they were saved (a damaged file). "
                       f"{RETRAIN_EPOCH}")
  return params


def load_params(workdir: str, expert: int, epoch: int) -> dict:
  """`load_trajectory` at one epoch."""
  return load_trajectory(workdir, expert, [epoch])[0]


def load_frozen(workdir: str, expert: int) -> dict:
  """The frozen parameters the expert trained with (the same at every epoch).

  `{}` when nothing was frozen (`model.trainable='all'`).
  """
  with checkpoint_manager(workdir, expert) as mngr:
    if "frozen" in mngr.item_metadata(0):
      return _restore_items(mngr, [0], "frozen")[0]
  if (read_manifest(workdir, expert) or {}).get("model", {}).get("trainable") == "all":
    return {}
  raise FileNotFoundError(
      f"{workdir_lib.expert_dir(workdir, expert)}/ckpt/0/frozen is missing: this expert froze a "
      "backbone (model.trainable is not 'all') and saved it there. Delete that epoch's "
      "folder and rerun --config.stage=experts: it trains that expert again.")


def load_correct(workdir: str, expert: int, epochs: Sequence[int] | None = None) -> np.ndarray:
  """int8 [epochs, N]: per training pair and epoch, found (1), missed (0), unseen
  (-1); at every saved epoch from 1 on, or at `epochs`."""
  saved = saved_epochs(workdir, expert)[1:]
  if saved != list(range(1, len(saved) + 1)):
    raise FileNotFoundError(f"{workdir_lib.expert_dir(workdir, expert)}/ckpt misses epochs: it has "
                            f"{saved}. Rerun --config.stage=experts to train them again.")
  with checkpoint_manager(workdir, expert) as mngr:
    return np.stack([np.asarray(c) for c in _restore_items(
        mngr, saved if epochs is None else epochs, "correct")])
