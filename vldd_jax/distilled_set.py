"""The distilled-set file: where stage `distill` writes a set, and loading it.

`<workdir>/distill/n<N>/distilled.npz` (`n<N>_<objective>/` for objectives
other than "plain"), format version `FORMAT_VERSION` (docs/distilled_format.md):

- `images` (model space: (pixels / 255 - 0.5) / 0.5) and `images_uint8`;
- `text_emb`, the frozen text encoder's space;
- the learned student rates `lr_image` and `lr_text`;
- what the objective learned (`Objective.export`, e.g. LoRS's `similarity`
  [N, N] and, with the sigmoid loss, `loss_bias`);
- `nearest_caption` / `nearest_cosine` (the nearest real caption of each text),
  `init_rows`, `image_change_rms`;
- `format_version` and `provenance_json`: the dataset config, the text encoder
  (folder name, pooling, max length, fingerprint), image size and pixel
  normalisation, the expert model config, the distill settings and objective,
  the iterations run and the final matching loss.

`read` and `load_distilled` (which reads any such file into a `DistilledSet`)
check it in full first: the sizes its zip entries and array headers declare
before decompressing anything, then every field's shape, dtype and values, and
the provenance and the arrays its objective needs ("What a saved set is
checked for" in docs/distilled_format.md).
"""
import dataclasses
import json
import math
import os
import re
import zipfile
import zlib
from typing import TYPE_CHECKING

import ml_collections
import numpy as np

from vldd_jax import objectives
from vldd_jax import workdir_lib

if TYPE_CHECKING:  # Only its type: reading a set needs no dataset code.
  from vldd_jax.data import input_pipeline

# 1: the first format; every file carries it and provenance_json.
FORMAT_VERSION = 1


def set_dir(workdir: str, num_pairs: int, objective: str = "plain") -> str:
  """The folder of the set of `num_pairs` pairs (and its checkpoints, settings)."""
  return os.path.join(workdir, workdir_lib.DISTILL, f"n{num_pairs}{objectives.suffix(objective)}")


@dataclasses.dataclass(frozen=True)
class SetSpec:
  """The distilled set a results row means: made with `objective`, counted
  against the storage of `budget` pairs, and so holding `num_pairs` pairs,
  fewer than `budget` when the objective stores more than pairs (LoRS's S)."""
  objective: str
  budget: int
  num_pairs: int

  @classmethod
  def of_row(cls, config: ml_collections.ConfigDict, method: str, budget: int,
             split: "input_pipeline.Split") -> "SetSpec | None":
    """The set of the `method` row at `budget`; None for a coreset row.

    A pair stores an image and a text embedding of `split`'s sizes. The set
    gets as many pairs as fit, next to what its objective learns, in the
    storage of `budget` pairs, as LoRS compares 99 pairs + S with 100 pairs.
    """
    name = objectives.methods().get(method)
    if name is None:
      return None
    cfg = config.distill.copy_and_resolve_references()
    cfg.objective = name
    objective = objectives.build(cfg)
    pair_floats = math.prod(split.images.shape[1:]) + split.text_emb.shape[-1]
    pairs = budget
    while pairs * pair_floats + objective.extra_floats(pairs) > budget * pair_floats:
      pairs -= 1
    if pairs < 1:
      raise ValueError(f"A budget of {budget} pairs leaves no room for a pair next to "
                       f"what objective {name!r} stores; use a larger budget.")
    return cls(name, budget, pairs)

  def config(self, config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """`config` with the `distill` fields that make this set."""
    out = config.copy_and_resolve_references()
    out.distill.objective, out.distill.num_pairs = self.objective, self.num_pairs
    return out


class DistilledFileError(ValueError):
  """A distilled-set file that cannot be used; the message names the file, the
  field at fault and what was expected."""


# Limits checked on what the zip entries and .npy headers declare, before
# anything is decompressed: a small compressed file can declare gigabytes of
# zeros. Generous: the float32 images of 4000 pairs of 224 px are 2.4 GB.
MAX_MEMBER_BYTES = 4 << 30  # Any one array, uncompressed.
MAX_TEXT_DIM = 1 << 16  # The width D of text_emb (text encoders have 384 to 8192).
# A member whose size the shapes do not fix (strings, fields this version does
# not know) may be this large, or as large as the images if they are larger.
MAX_OTHER_BYTES = 64 << 20

# Each field's shape, in N (pairs), H (image side) and D (text width), and its
# dtype: exactly one, or any of the kinds "f" (floating), "iu" (integer), "U"
# (string).
_FIELDS: dict[str, tuple[tuple, np.dtype | str]] = {
    "images": (("N", "H", "H", 3), np.dtype(np.float32)),
    "images_uint8": (("N", "H", "H", 3), np.dtype(np.uint8)),
    "text_emb": (("N", "D"), "f"),
    "lr_image": ((), "f"),
    "lr_text": ((), "f"),
    "format_version": ((), "iu"),
    "provenance_json": ((), "U"),
    "nearest_caption": (("N",), "U"),
    "nearest_cosine": (("N",), "f"),
    "init_rows": (("N",), "iu"),
    "image_change_rms": ((), "f"),
    # The registered objectives' arrays, checked wherever they are (export
    # writes any it finds); which must be there comes from `Objective.exported`.
    "similarity": (("N", "N"), "f"),
    "loss_bias": ((), "f"),
}
_REQUIRED = ("images", "images_uint8", "text_emb", "lr_image", "lr_text")
_KIND_NAMES = {"f": "floating", "iu": "integer", "U": "string"}


@dataclasses.dataclass(frozen=True)
class _Member:
  """One array of the file, as its zip entry and .npy header declare it."""
  info: zipfile.ZipInfo
  shape: tuple[int, ...]
  dtype: np.dtype

  @property
  def nbytes(self) -> int:
    return math.prod(self.shape) * self.dtype.itemsize


def _advice(path: str) -> str:
  """What to do about a set that cannot be used. Only a workdir's own set is
  ours to write again; any other file is someone's copy."""
  folder = os.path.dirname(os.path.abspath(path))
  if (os.path.basename(path) == workdir_lib.DISTILLED
      and re.fullmatch(workdir_lib.SET_FOLDER, os.path.basename(folder))
      and os.path.basename(os.path.dirname(folder)) == workdir_lib.DISTILL):
    return (" Rerun stage distill with the same settings to write it again from its "
            "last checkpoint.")
  return " Copy it again from the workdir that made it (distill/n<N>/distilled.npz)."


def _invalid(path: str, what: str) -> DistilledFileError:
  return DistilledFileError(f"{path}: {what}.{_advice(path)}")


def _members(path: str, zf: zipfile.ZipFile) -> dict[str, _Member]:
  """Every array's declared shape and dtype, from its header alone; refuses a
  member whose size is not what they imply, or is over `MAX_MEMBER_BYTES`."""
  members = {}
  for info in zf.infolist():
    field = info.filename.removesuffix(".npy")
    if field == info.filename or field in members:
      raise _invalid(path, f"zip member {info.filename!r} is not one .npy array")
    with zf.open(info) as f:
      try:
        version = np.lib.format.read_magic(f)
        read_header = {(1, 0): np.lib.format.read_array_header_1_0,
                       (2, 0): np.lib.format.read_array_header_2_0}.get(version)
        if read_header is None:
          raise ValueError(f".npy format version {version} is not supported")
        shape, _, dtype = read_header(f)
      except ValueError as e:
        raise _invalid(path, f"{field} is not a NumPy array ({e})") from e
      header_bytes = f.tell()
    if dtype.hasobject or dtype.fields is not None or dtype.subdtype is not None:
      raise _invalid(path, f"{field} has dtype {dtype}, expected numbers or strings "
                     "(Python objects are never unpickled)")
    member = _Member(info, shape, dtype)
    if min(shape, default=0) < 0 or info.file_size != header_bytes + member.nbytes:
      raise _invalid(path, f"{field} declares {info.file_size} bytes uncompressed, but "
                     f"its header's shape {shape} and dtype {dtype} make "
                     f"{header_bytes + max(member.nbytes, 0)}")
    if member.nbytes > MAX_MEMBER_BYTES:
      raise _invalid(path, f"{field} declares {member.nbytes} bytes uncompressed (shape "
                     f"{shape}, dtype {dtype}), over the limit of {MAX_MEMBER_BYTES}")
    members[field] = member
  return members


def _check_member(path: str, field: str, member: _Member, shape: tuple,
                  dtype: np.dtype | str, sizes: dict[str, int]) -> None:
  """Raises unless `member` has `shape` (its letters read in `sizes`) and `dtype`."""
  want = tuple(sizes.get(d, d) for d in shape)
  ok_dtype = member.dtype == dtype if isinstance(dtype, np.dtype) else member.dtype.kind in dtype
  if member.shape != want or not ok_dtype:
    kind = dtype if isinstance(dtype, np.dtype) else _KIND_NAMES[dtype]
    raise _invalid(path, f"{field} has shape {member.shape} and dtype {member.dtype}, "
                   f"expected {list(want)} {kind}")


def _layout(path: str, members: dict[str, _Member]) -> dict[str, int]:
  """Checks every known field's declared shape and dtype; returns N, H and D."""
  missing = [k for k in _REQUIRED if k not in members]
  if missing:
    raise _invalid(path, f"not a distilled set, missing field(s) {missing}")
  images, text_emb = members["images"].shape, members["text_emb"].shape
  if len(images) != 4 or images[1] != images[2] or images[3] != 3 or not images[0]:
    raise _invalid(path, f"images has shape {images}, expected [N, H, H, 3]: N >= 1 "
                   "square RGB images")
  if len(text_emb) != 2 or not 1 <= text_emb[1] <= MAX_TEXT_DIM:
    raise _invalid(path, f"text_emb has shape {text_emb}, expected [N, D] with "
                   f"1 <= D <= {MAX_TEXT_DIM}")
  sizes = {"N": images[0], "H": images[1], "D": text_emb[1]}
  other_limit = max(MAX_OTHER_BYTES, members["images"].nbytes)
  for field, member in members.items():
    if field in _FIELDS:
      _check_member(path, field, member, *_FIELDS[field], sizes)
    if (field not in _FIELDS or member.dtype.kind == "U") and member.nbytes > other_limit:
      raise _invalid(path, f"{field} declares {member.nbytes} bytes uncompressed, over "
                     f"the limit of {other_limit} for a field of that kind")
  return sizes


def _value(zf: zipfile.ZipFile, member: _Member) -> np.ndarray:
  with zf.open(member.info) as f:
    return np.lib.format.read_array(f, allow_pickle=False)


def _provenance(path: str, text: str) -> dict:
  """The provenance record: a JSON object naming a registered objective and
  holding its distill config."""
  try:
    provenance = json.loads(text)
  except json.JSONDecodeError as e:
    raise _invalid(path, f"provenance_json is not valid JSON ({e})") from e
  if not isinstance(provenance, dict):
    raise _invalid(path, f"provenance_json is a JSON {type(provenance).__name__}, "
                   "expected an object")
  name = provenance.get("objective")
  if not isinstance(name, str) or name not in objectives.OBJECTIVES:
    raise _invalid(path, f"provenance_json.objective={name!r}, expected one of "
                   f"{sorted(objectives.OBJECTIVES)}")
  distill = provenance.get("distill")
  if not isinstance(distill, dict) or distill.get("objective") != name:
    raise _invalid(path, "provenance_json.distill is not the distill config of objective "
                   f"{name!r}")
  return provenance


def _objective(path: str, provenance: dict) -> objectives.Objective:
  """The objective that made the set, built from its provenance."""
  try:
    objective = objectives.build(ml_collections.ConfigDict(provenance["distill"]))
  except (AttributeError, KeyError, TypeError, ValueError) as e:
    raise _invalid(path, f"provenance_json.distill does not describe objective "
                   f"{provenance['objective']!r} ({type(e).__name__}: {e})") from e
  return objective


def _read_zip(path: str, zf: zipfile.ZipFile) -> tuple[dict[str, np.ndarray], int, dict]:
  """Checks what the headers declare, then the few small fields that say what
  else must be there, and only then decompresses everything."""
  members = _members(path, zf)
  for field in ("format_version", "provenance_json"):
    if field not in members:
      raise _invalid(path, f"no {field} (not a distilled set written by vldd_jax)")
  _check_member(path, "format_version", members["format_version"],
                *_FIELDS["format_version"], {})
  version = int(_value(zf, members["format_version"]))
  if version > FORMAT_VERSION:
    raise DistilledFileError(
        f"{path}: format_version={version}, but this vldd_jax reads versions up to "
        f"{FORMAT_VERSION}: upgrade vldd_jax.")
  if version < FORMAT_VERSION:
    raise _invalid(path, f"format_version={version}, expected {FORMAT_VERSION}")
  sizes = _layout(path, members)
  provenance = _provenance(path, str(_value(zf, members["provenance_json"])))
  objective = _objective(path, provenance)
  for field, shape in objective.exported(sizes["N"]).items():
    if field not in members:
      raise _invalid(path, f"provenance_json.objective={provenance['objective']!r} "
                     f"stores {field} {list(shape)}, but the file has no {field}")
    _check_member(path, field, members[field], shape, "f", {})
  arrays = {field: _value(zf, member) for field, member in members.items()}
  for field, array in arrays.items():
    if array.dtype.kind in "fc" and not np.isfinite(array).all():
      raise _invalid(path, f"{field} holds non-finite values (NaN or inf)")
  for field in ("lr_image", "lr_text"):
    if not arrays[field] > 0:
      raise _invalid(path, f"{field}={float(arrays[field])}, expected a learned rate > 0")
  return arrays, version, provenance


def _read_checked(path: str) -> tuple[dict[str, np.ndarray], int, dict]:
  """(arrays, format version, provenance) of a checked `distilled.npz`."""
  if os.path.isdir(path):
    raise IsADirectoryError(f"{path} is a directory, not a distilled set file: give the "
                            f"path of its {workdir_lib.DISTILLED}.")
  if not os.path.exists(path):
    raise FileNotFoundError(f"{path} not found: no distilled set file there.")
  if not os.path.isfile(path):
    raise DistilledFileError(f"{path} is not a regular file: a distilled set is one "
                             f"{workdir_lib.DISTILLED} file.")
  try:
    with zipfile.ZipFile(path) as zf:
      return _read_zip(path, zf)
  except DistilledFileError:
    raise
  except (zipfile.BadZipFile, zlib.error, EOFError, OSError, ValueError,
          NotImplementedError, RuntimeError) as e:  # Truncated, corrupt, encrypted.
    raise DistilledFileError(f"{path} is damaged ({type(e).__name__}: {e})."
                             f"{_advice(path)}") from e


def read(path: str) -> dict[str, np.ndarray]:
  """The arrays of a `distilled.npz`, checked in full (docs/distilled_format.md);
  a clear error naming the file and the field if anything is wrong."""
  return _read_checked(path)[0]


def load(workdir: str, num_pairs: int, objective: str = "plain") -> dict[str, np.ndarray]:
  """The arrays of the set of `num_pairs` pairs distilled with `objective`."""
  path = os.path.join(set_dir(workdir, num_pairs, objective), workdir_lib.DISTILLED)
  if not os.path.exists(path):
    raise FileNotFoundError(f"{path} not found: run --config.stage=distill with "
                            f"--config.distill.num_pairs={num_pairs} and "
                            f"--config.distill.objective={objective} first.")
  return read(path)


@dataclasses.dataclass(frozen=True)
class DistilledSet:
  """A distilled set as `load_distilled` reads it."""
  images: np.ndarray  # [N, H, W, C] float32, model space.
  images_uint8: np.ndarray  # [N, H, W, C] uint8 pixels.
  text_emb: np.ndarray  # [N, D] float32.
  lr_image: float
  lr_text: float
  nearest_caption: list[str]
  provenance: dict
  format_version: int
  arrays: dict[str, np.ndarray]  # Everything in the file, objective parts included.

  @property
  def objective(self) -> str:
    """The objective that made it ("plain", "lowrank", ...)."""
    return self.provenance["objective"]

  def __len__(self) -> int:
    return len(self.text_emb)

  def _provenance_field(self, path: str, *keys: str):
    """provenance[keys[0]][keys[1]]...; a clear error naming the field if absent."""
    value = self.provenance
    for key in keys:
      if not isinstance(value, dict) or key not in value:
        raise DistilledFileError(
            f"{path}: provenance_json has no {'.'.join(keys)}, so the set cannot be "
            "checked against this config's data.")
      value = value[key]
    return value

  def check_compatible(self, config: ml_collections.ConfigDict, path: str,
                       fingerprint: str, text_dim: int | None = None) -> None:
    """Raises unless the set (read from `path`) can be evaluated on `config`'s
    data: the text encoder of `fingerprint` (`text.fingerprint` of `config.text`),
    the image size and, given `text_dim`, the text width."""
    made = {key: self._provenance_field(path, "text", key)
            for key in ("fingerprint", "folder", "pooling", "max_length")}
    if made["fingerprint"] != fingerprint:
      raise ValueError(
          f"{path}: provenance.text.fingerprint={made['fingerprint']} ({made['folder']}, "
          f"pooling {made['pooling']}, max_length {made['max_length']}), but this "
          f"config's text encoder has {fingerprint} (text.path={config.text.path!r}, "
          f"pooling {config.text.pooling}, max_length {config.text.max_length}): its "
          "text embeddings would mean nothing to this data's captions.")
    size = self.images.shape[1]
    made_size = self._provenance_field(path, "image", "size")
    if size != config.data.image_size or made_size != size:
      raise ValueError(f"{path}: images of {size} px (provenance.image.size="
                       f"{made_size}), but data.image_size={config.data.image_size}.")
    if text_dim is not None and self.text_emb.shape[1] != text_dim:
      raise ValueError(f"{path}: text_emb of width {self.text_emb.shape[1]}, but this "
                       f"data's text embeddings have width {text_dim}.")


def load_distilled(path: str) -> DistilledSet:
  """Reads a `distilled.npz` of any workdir, checked in full (`read`); refuses
  unknown format versions."""
  arrays, version, provenance = _read_checked(path)
  return DistilledSet(
      images=arrays["images"], images_uint8=arrays["images_uint8"],
      text_emb=arrays["text_emb"], lr_image=float(arrays["lr_image"]),
      lr_text=float(arrays["lr_text"]),
      nearest_caption=[str(c) for c in arrays.get("nearest_caption", [])],
      provenance=provenance, format_version=version, arrays=arrays)
