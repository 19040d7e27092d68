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
import hashlib
import os

import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from flax import traverse_util

from vldd_jax import jsonfile
from vldd_jax import provenance

MANIFEST = "manifest.json"
_ARRAY_ITEMS = ("params", "opt_state", "frozen", "correct")


def experts_dir(workdir: str) -> str:
  return os.path.join(workdir, "experts")


def expert_dir(workdir: str, expert: int) -> str:
  return os.path.join(experts_dir(workdir), f"expert_{expert:03d}")


def checkpoint_manager(workdir: str, expert: int) -> ocp.CheckpointManager:
  """The manager of one expert's checkpoints; every epoch is kept."""
  options = ocp.CheckpointManagerOptions(max_to_keep=None, create=True)
  handlers = {name: ocp.StandardCheckpointHandler() for name in _ARRAY_ITEMS}
  handlers["metrics"] = ocp.JsonCheckpointHandler()
  return ocp.CheckpointManager(os.path.join(expert_dir(workdir, expert), "ckpt"),
                               options=options, item_handlers=handlers)


def _restore_item(mngr: ocp.CheckpointManager, epoch: int, name: str):
  """One array item on this process's first device, whatever devices saved it."""
  device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
  target = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=device),
                        mngr.item_metadata(epoch)[name])
  restored = mngr.restore(epoch, args=ocp.args.Composite(
      **{name: ocp.args.StandardRestore(target)}))
  return restored[name]


def write_manifest(workdir: str, expert: int, manifest: dict) -> None:
  """Writes the manifest atomically (process 0 only)."""
  jsonfile.write(os.path.join(expert_dir(workdir, expert), MANIFEST), manifest)


def read_manifest(workdir: str, expert: int) -> dict | None:
  """The expert's manifest, or None if it has not started."""
  path = os.path.join(expert_dir(workdir, expert), MANIFEST)
  if not os.path.exists(path):
    return None
  return jsonfile.read(path)


def check_settings(config: ml_collections.ConfigDict, workdir: str, expert: int) -> None:
  """Raises if the expert's manifest records other settings than `config`'s.

  Manifests written before `settings` existed are checked on the fields they
  store (data, text, model, epochs and optimiser).
  """
  manifest = read_manifest(workdir, expert)
  if manifest is None:
    return
  wanted = provenance.settings(config, "experts")
  saved = manifest.get("settings")
  if saved is None:
    saved = provenance.flatten({
        "data": manifest["data"], "text": manifest["text"], "model": manifest["model"],
        "experts": {"epochs": manifest["epochs"], **manifest["optimizer"]}})
    wanted = {k: v for k, v in wanted.items() if k in saved}
  provenance.check(saved, wanted, expert_dir(workdir, expert),
                   "use a new workdir, or delete its experts/ folder to train anew.")


def finished_experts(workdir: str,
                     config: ml_collections.ConfigDict | None = None) -> list[int]:
  """Indices of the experts whose training finished, sorted; with `config`,
  raises if one was trained under other settings (`check_settings`)."""
  root = experts_dir(workdir)
  if not os.path.isdir(root):
    return []
  indices = sorted(int(name.split("_")[1]) for name in os.listdir(root)
                   if name.startswith("expert_"))
  finished = [e for e in indices if (read_manifest(workdir, e) or {}).get("finished")]
  for e in finished if config is not None else ():
    check_settings(config, workdir, e)
  return finished


def digest(params: dict) -> str:
  """SHA-256 of a parameter tree's paths, dtypes, shapes and bytes (host arrays)."""
  sha = hashlib.sha256()
  for path, leaf in sorted(traverse_util.flatten_dict(params, sep="/").items()):
    leaf = np.ascontiguousarray(leaf)
    sha.update(f"{path}:{leaf.dtype}:{leaf.shape};".encode())
    sha.update(leaf.tobytes())
  return sha.hexdigest()


def load_params(workdir: str, expert: int, epoch: int) -> dict:
  """The trainable parameters of `expert` after `epoch` epochs (0: its start),
  checked against the checksum recorded when they were saved."""
  with checkpoint_manager(workdir, expert) as mngr:
    if epoch not in mngr.all_steps():
      raise FileNotFoundError(f"{expert_dir(workdir, expert)} has no epoch {epoch}; "
                              f"saved epochs: {sorted(mngr.all_steps())}. Delete that "
                              "folder and rerun --config.stage=experts to train it again.")
    params = _restore_item(mngr, epoch, "params")
  recorded = [h.get("params_sha256") for h in (read_manifest(workdir, expert) or {}).get(
      "history", []) if h["epoch"] == epoch]
  if recorded and recorded[0] and digest(jax.device_get(params)) != recorded[0]:
    raise ValueError(f"{expert_dir(workdir, expert)}/ckpt/{epoch}: the parameters do not "
                     "match the checksum recorded when they were saved (a damaged file); "
                     "delete that expert's folder and rerun --config.stage=experts to "
                     "train it again.")
  return params


def load_frozen(workdir: str, expert: int) -> dict:
  """The frozen parameters the expert trained with (the same at every epoch).

  `{}` when nothing was frozen (`model.trainable='all'`).
  """
  with checkpoint_manager(workdir, expert) as mngr:
    if "frozen" not in mngr.item_metadata(0):
      return {}
    return _restore_item(mngr, 0, "frozen")


def load_correct(workdir: str, expert: int) -> np.ndarray:
  """int8 [epochs, N]: per training pair and epoch, found (1), missed (0), unseen (-1)."""
  with checkpoint_manager(workdir, expert) as mngr:
    epochs = sorted(s for s in mngr.all_steps() if s > 0)
    return np.stack([np.asarray(_restore_item(mngr, s, "correct")) for s in epochs])
