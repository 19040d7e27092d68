"""On-disk cache of caption embeddings from the frozen text encoder."""
from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Sequence

import numpy as np
from absl import logging

from vldd_jax import jsonfile
from vldd_jax.data import lazy_arrays
from vldd_jax.text import LazyTextEncoder, TextEncoder

# Texts encoded and written at a time (~100 MB of 384-d embeddings).
_ENCODE_CHUNK = 1 << 16
# An entry's name; `cache_paths` makes the files `workdir_lib.CAPTION_ENTRY`.
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")


def texts_digest(texts: Sequence[str]) -> str:
  """sha256 of a list of texts; length-prefixed so boundaries are unambiguous."""
  digest = hashlib.sha256()
  for text in texts:
    data = text.encode("utf-8")
    digest.update(len(data).to_bytes(8, "little"))
    digest.update(data)
  return digest.hexdigest()


def cache_paths(cache_dir: str, name: str, key: dict) -> tuple[str, str]:
  """The .npy and .json paths of one cache entry."""
  key_hash = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
  stem = os.path.join(cache_dir, f"{name}-{key_hash}")
  return stem + ".npy", stem + ".json"


def _load(npy: str, sidecar: str, key: dict, count: int,
          texts_per_row: int) -> lazy_arrays.RowReader | None:
  """The cached array, unread, or None if absent or not matching its sidecar."""
  if not os.path.exists(sidecar):
    return None
  try:
    with open(sidecar, encoding="utf-8") as f:
      meta = json.load(f)
    array = lazy_arrays.npy_rows(npy)
    problem = None
    if meta.get("key") != key:
      problem = f"sidecar key {meta.get('key')} != {key}"
    elif array.dtype != np.float32 or array.shape != (count, meta.get("dim")):
      problem = f"array {array.dtype}{array.shape}, expected float32({count}, {meta.get('dim')})"
    elif lazy_arrays.npy_sha256(npy) != meta.get("sha256"):
      problem = "content checksum mismatch"
  except (OSError, ValueError, EOFError) as e:
    problem = f"unreadable ({e})"
  if problem is not None:
    logging.warning("Caption embedding cache %s is corrupt: %s; recomputing.", npy, problem)
    return None
  return _view(npy, array.shape, texts_per_row)


def _view(npy: str, shape: tuple[int, int], texts_per_row: int) -> lazy_arrays.RowReader:
  count, dim = shape
  rows = (count,) if texts_per_row == 1 else (count // texts_per_row, texts_per_row)
  return lazy_arrays.npy_rows(npy, rows + (dim,))


def encode_cached(encoder: TextEncoder | LazyTextEncoder, texts: Sequence[str],
                  cache_dir: str, name: str, batch_size: int = 256,
                  texts_per_row: int = 1) -> lazy_arrays.RowReader:
  """Encodes texts with the encoder, or loads the result of an earlier identical call.

  An entry is keyed by the encoder fingerprint, `name` and a hash of the texts,
  so a changed dataset or encoder never reuses a stale file. The .npy and its
  JSON sidecar are written atomically, sidecar last, so an interrupted run never
  leaves an entry that looks complete.

  Args:
    encoder: the frozen text encoder; a lazy one is loaded only to encode.
    texts: captions, in the order the rows of the result follow.
    cache_dir: folder of the cache (created if missing).
    name: a short label for the file name, e.g. `shapes-train`.
    batch_size: captions per encoder call.
    texts_per_row: consecutive texts that make one row of the result (an
      image's captions).

  Returns:
    The cached file's float32 [len(texts) / texts_per_row, texts_per_row,
    encoder.dim] L2-normalised embeddings (squeezed to 2 axes when
    texts_per_row is 1), read from disk when indexed.
  """
  if not _NAME.fullmatch(name):
    raise ValueError(f"name must match {_NAME.pattern} (it becomes a file name), got {name!r}")
  texts = list(texts)
  if texts_per_row < 1 or len(texts) % texts_per_row:
    raise ValueError(f"texts_per_row={texts_per_row} does not divide {len(texts)} texts")
  key = {"encoder": encoder.fingerprint, "name": name, "texts_sha256": texts_digest(texts)}
  npy, sidecar = cache_paths(cache_dir, name, key)
  cached = _load(npy, sidecar, key, len(texts), texts_per_row)
  if cached is not None:
    logging.info("Loaded %d cached caption embeddings from %s.", len(texts), npy)
    return cached
  os.makedirs(cache_dir, exist_ok=True)
  # The sidecar marks an entry complete: drop a stale one before replacing the .npy.
  if os.path.exists(sidecar):
    os.remove(sidecar)
  shape = (len(texts), encoder.dim)
  digest = hashlib.sha256()

  def write(f) -> None:
    np.lib.format.write_array_header_1_0(
        f, {"descr": np.lib.format.dtype_to_descr(np.dtype(np.float32)),
            "fortran_order": False, "shape": shape})
    # A chunk at a time, so that encoding a large split holds one chunk's
    # embeddings, not the split's.
    for start in range(0, len(texts), _ENCODE_CHUNK):
      chunk = _encode_unique(encoder, texts[start:start + _ENCODE_CHUNK], batch_size)
      digest.update(chunk.tobytes())
      f.write(chunk.tobytes())
  jsonfile.write_file(npy, write)
  meta = {"key": key, "count": len(texts), "dim": encoder.dim, "sha256": digest.hexdigest()}
  jsonfile.write(sidecar, meta)
  logging.info("Encoded %d captions and cached them at %s.", len(texts), npy)
  return _view(npy, shape, texts_per_row)


def _encode_unique(encoder: TextEncoder | LazyTextEncoder, texts: Sequence[str],
                   batch_size: int) -> np.ndarray:
  """float32 [len(texts), encoder.dim] embeddings, each distinct text encoded once
  (template captions repeat: 22% of shapes' train captions)."""
  unique, inverse = np.unique(np.asarray(texts, dtype=object), return_inverse=True)
  return encoder.encode(list(unique), batch_size=batch_size)[inverse].astype(np.float32)
