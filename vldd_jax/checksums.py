"""SHA-256 checksums: of files, of parameter trees, and of an image-tower source.

A file or tree is recorded by what is in it, not by where it is, so a stage can
tell a damaged or replaced input from the one its outputs were made with.
"""
import hashlib
import json
import os

import jax
import numpy as np

from vldd_jax import hf_checkpoint
from vldd_jax import parallel
from vldd_jax import workdir_lib

# The files of a Hugging Face ViT source that decide its weights.
_HF_FILES = (hf_checkpoint.WEIGHTS_FILE, hf_checkpoint.CONFIG_FILE)
_CHUNK = 1 << 22
# file_sha256 results by (path, size, mtime): a Hugging Face tower is read once
# per process however many records name it.
_FILE_MEMO: dict[tuple[str, int, int], str] = {}


def file_sha256(path: str) -> str:
  """The SHA-256 hex digest of a file's bytes."""
  stat = os.stat(path)
  key = (os.path.realpath(path), stat.st_size, stat.st_mtime_ns)
  if key not in _FILE_MEMO:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
      for chunk in iter(lambda: f.read(_CHUNK), b""):
        digest.update(chunk)
    _FILE_MEMO[key] = digest.hexdigest()
  return _FILE_MEMO[key]


def _key_name(key) -> str:
  return str(getattr(key, "key", getattr(key, "name", getattr(key, "idx", key))))


def tree_sha256(tree) -> str:
  """SHA-256 of a pytree's leaf paths ("img/lora_a"), dtypes, shapes and bytes;
  device arrays are gathered to the host first (`parallel.to_host`)."""
  leaves = {"/".join(map(_key_name, path)): leaf
            for path, leaf in jax.tree_util.tree_leaves_with_path(tree)}
  sha = hashlib.sha256()
  for path, leaf in sorted(leaves.items()):
    leaf = np.ascontiguousarray(parallel.to_host(leaf) if isinstance(leaf, jax.Array)
                                else leaf)
    sha.update(f"{path}:{leaf.dtype}:{leaf.shape};".encode())
    sha.update(leaf.tobytes())
  return sha.hexdigest()


def backbone_sha256(source: str) -> str:
  """What an outside image-tower source holds, by content.

  A pretrain folder (it has `summary.json`): the checksum of the tower its
  pretrain stage recorded. A Hugging Face folder or .safetensors file: the
  SHA-256 of its weights and `config.json`. Raises naming the file when a
  summary records no checksum.
  """
  summary = os.path.join(source, workdir_lib.PRETRAIN_SUMMARY)
  if os.path.isfile(summary):
    with open(summary, encoding="utf-8") as f:
      recorded = json.load(f).get("tower_sha256")
    if not isinstance(recorded, str):
      raise ValueError(f"{summary} records no tower_sha256, so the tower in that folder "
                       "cannot be told from a replaced one: pretrain it with this "
                       "version of vldd_jax (in its own workdir) and point "
                       "config.model.backbone at the new pretrain/ folder.")
    return recorded
  folder = source if os.path.isdir(source) else os.path.dirname(source)
  files = ([os.path.join(folder, name) for name in _HF_FILES] if os.path.isdir(source)
           else [source, os.path.join(folder, _HF_FILES[1])])
  digest = hashlib.sha256()
  for file in files:
    if not os.path.isfile(file):
      raise FileNotFoundError(f"config.model.backbone={source!r}: {file} not found (a "
                              "Hugging Face ViT needs model.safetensors and config.json, "
                              "a pretrain folder needs summary.json).")
    digest.update(f"{os.path.basename(file)}:{file_sha256(file)};".encode())
  return digest.hexdigest()
