"""Arrays whose rows are read from disk when indexed, so that a split's size
does not set a process's memory: images from a prepared ArrayRecord split,
caption embeddings from their cached .npy file."""
from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Sequence

import numpy as np
from tensorflow_datasets.proto import tf_example_pb2

_CHUNK_BYTES = 64 << 20


class RowReader:
  """A read-only array of `shape` whose rows are read on demand.

  Indexing picks rows first, as NumPy does: `x[rows]`, `x[a:b]`, `x[i]`, or a
  tuple whose first entry picks rows and whose others index what was read
  (`x[rows, captions]` pairs them, as NumPy's advanced indexing would).
  Every index returns a NumPy array; `np.asarray(x)` reads every row.
  """

  def __init__(self, shape: Sequence[int], dtype, read_rows: Callable[[np.ndarray], np.ndarray]):
    self.shape = tuple(int(s) for s in shape)
    self.dtype = np.dtype(dtype)
    self._read_rows = read_rows

  @property
  def ndim(self) -> int:
    return len(self.shape)

  def __len__(self) -> int:
    return self.shape[0]

  def __getitem__(self, index) -> np.ndarray:
    rows, rest = (index[0], index[1:]) if isinstance(index, tuple) else (index, ())
    if isinstance(rows, slice):
      picked, position = np.arange(*rows.indices(len(self))), slice(None)
    elif np.ndim(rows) == 0:
      row = int(rows)
      if not -len(self) <= row < len(self):
        raise IndexError(f"row {row} out of range for {len(self)} rows")
      picked, position = np.array([row % len(self)]), 0
    else:
      picked = np.asarray(rows)
      if picked.dtype == bool:
        if picked.shape != (len(self),):
          raise IndexError(f"a mask of shape {picked.shape} for {len(self)} rows")
        picked = np.flatnonzero(picked)
      if picked.ndim != 1:
        raise IndexError(f"rows must be one-dimensional, got shape {picked.shape}")
      if picked.size and not (-len(self) <= picked.min() and picked.max() < len(self)):
        raise IndexError(f"rows out of range for {len(self)} rows")
      picked, position = picked % max(len(self), 1), np.arange(len(picked))
    block = self._read_rows(picked) if picked.size else np.empty(
        (0,) + self.shape[1:], self.dtype)
    return block[(position,) + rest]

  def __array__(self, dtype=None, copy=None) -> np.ndarray:
    whole = self[:]
    return whole if dtype is None else whole.astype(dtype)

  def subset(self, rows: np.ndarray | slice) -> RowReader:
    """The rows `rows` of this array, still unread (e.g. a global batch, of
    which each process reads only its own devices' rows)."""
    rows = np.arange(len(self))[rows] if isinstance(rows, slice) else np.asarray(rows)
    return RowReader((len(rows),) + self.shape[1:], self.dtype,
                     lambda picked: self._read_rows(rows[picked]))


# What reads rows like an array: a NumPy array or a RowReader.
Rows = np.ndarray | RowReader


def rows_of(array: Rows, rows: np.ndarray | slice) -> Rows:
  """`array[rows]`, left unread when `array` is read from disk."""
  return array.subset(rows) if isinstance(array, RowReader) else array[rows]


def _runs(rows: np.ndarray) -> list[np.ndarray]:
  """`rows` cut where it stops counting up by one: each piece is one read."""
  return np.split(rows, np.flatnonzero(np.diff(rows) != 1) + 1)


def record_feature(source, key: str, shape: Sequence[int], dtype) -> RowReader:
  """Feature `key` of every example of a TFDS data source (e.g. an ArrayRecord
  split's `as_data_source()[split]`), one row per example.

  A fixed-size tensor stored as bytes (`tfds.features.Encoding.BYTES`) is
  parsed from the raw records alone, about 7x faster than TFDS decoding every
  feature of every example (4-5 ms against 43 ms for 128 random shapes
  examples); other features go through TFDS's decoding.
  """
  shape, dtype = tuple(shape), np.dtype(dtype)
  row_bytes = int(np.prod(shape[1:])) * dtype.itemsize
  raw = getattr(source, "data_source", None)  # The serialized records, if exposed.

  def decoded(rows: np.ndarray) -> np.ndarray:
    return np.stack([np.asarray(example[key], dtype) for example in
                     source.__getitems__(rows.tolist())])

  def read(rows: np.ndarray) -> np.ndarray:
    if raw is None:
      return decoded(rows)
    values = [tf_example_pb2.Example.FromString(record).features.feature[key].bytes_list.value
              for record in raw.__getitems__(rows.tolist())]
    if not all(len(v) == 1 and len(v[0]) == row_bytes for v in values):
      return decoded(rows)
    return np.frombuffer(bytearray(b"".join(v[0] for v in values)), dtype).reshape(
        (len(rows),) + shape[1:])
  return RowReader(shape, dtype, read)


def _npy_header(path: str) -> tuple[tuple[int, ...], np.dtype, int]:
  with open(path, "rb") as f:
    version = np.lib.format.read_magic(f)
    read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                   else np.lib.format.read_array_header_2_0)
    shape, fortran_order, dtype = read_header(f)
    if fortran_order or dtype.hasobject:
      raise ValueError(f"{path}: expected a C-ordered numeric .npy file")
    offset = f.tell()
    expected = offset + int(np.prod(shape)) * dtype.itemsize
    if os.fstat(f.fileno()).st_size != expected:
      raise ValueError(f"{path}: {os.fstat(f.fileno()).st_size} bytes, expected {expected} "
                       f"for {dtype}{shape} (truncated?)")
    return shape, dtype, offset


def npy_rows(path: str, shape: Sequence[int] | None = None) -> RowReader:
  """Rows of a C-ordered .npy file, optionally viewed as `shape` (its total
  size; e.g. [N * C, D] captions seen as [N, C, D] images' captions)."""
  file_shape, dtype, offset = _npy_header(path)
  shape = tuple(shape or file_shape)
  if int(np.prod(shape)) != int(np.prod(file_shape)) or not shape:
    raise ValueError(f"{path}: holds {file_shape}, which cannot be viewed as {shape}")
  row_size = int(np.prod(shape[1:]))
  row_bytes = row_size * dtype.itemsize

  def read(rows: np.ndarray) -> np.ndarray:
    out = np.empty((len(rows), row_size), dtype)
    order = np.argsort(rows, kind="stable")
    done = 0
    with open(path, "rb") as f:
      for run in _runs(rows[order]):
        f.seek(offset + int(run[0]) * row_bytes)
        out[order[done:done + len(run)]] = np.frombuffer(
            f.read(len(run) * row_bytes), dtype).reshape(len(run), row_size)
        done += len(run)
    return out.reshape((len(rows),) + shape[1:])
  return RowReader(shape, dtype, read)


def npy_sha256(path: str) -> str:
  """sha256 of a .npy file's data (as `array.tobytes()`), read in chunks."""
  _, _, offset = _npy_header(path)
  digest = hashlib.sha256()
  with open(path, "rb") as f:
    f.seek(offset)
    while chunk := f.read(_CHUNK_BYTES):
      digest.update(chunk)
  return digest.hexdigest()
