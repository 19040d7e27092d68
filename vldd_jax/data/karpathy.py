"""TFDS builder for any image-caption set in Karpathy-split format.

A Karpathy-split file (`dataset_flickr30k.json`, `dataset_coco.json`, ...) has a
top-level `images` list; each entry has a `filename`, an optional `filepath`
(COCO: `train2014` / `val2014`) between the image folder and the file name, a
`split` in {train, restval, val, test} and `sentences`, each with a `raw`
caption. Images are stored as uint8 tensors (no TensorFlow needed), converted to
RGB, centre-cropped to a square and resized with Pillow (bicubic).

The whole annotation file, and the existence of every image it names, is checked
before any example is written; images that fail to decode are found while the
splits are written. TFDS writes into a temporary folder that only becomes the
dataset folder when every split is complete.
"""
import concurrent.futures
import dataclasses
import glob
import hashlib
import json
import os
import re
from typing import Any, Iterator

import ml_collections
import numpy as np
import tensorflow_datasets as tfds
from absl import logging
from etils import epath
from PIL import Image

from vldd_jax import checksums
from vldd_jax.data import tfds_temp

SPLITS = ("train", "val", "test")
JSON_SPLITS = ("train", "restval", "val", "test")
SKIPPED_FILE = "skipped_images.json"
_MAX_LISTED = 10
_DECODE_CHUNK = 256
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, Image.DecompressionBombError)

_DESCRIPTION = """\
An image-caption set in Karpathy-split format (Flickr30K, COCO or your own):
images centre-cropped and resized to a square, with their first captions."""

_CITATION = """\
@inproceedings{karpathy2015deep,
  title={Deep Visual-Semantic Alignments for Generating Image Descriptions},
  author={Karpathy, Andrej and Fei-Fei, Li},
  booktitle={CVPR},
  year={2015}
}"""


class KarpathyFormatError(ValueError):
  """The annotation file or an image it names is missing or malformed."""


@dataclasses.dataclass(eq=False)
class KarpathyConfig(tfds.core.BuilderConfig):
  """Inputs and preprocessing of one Karpathy-format dataset.

  Attributes:
    name: Derived from the inputs when empty, so that different annotation
      files, image folders or options never share a dataset folder.
    ann_file: The Karpathy-split JSON; empty: the only `dataset_*.json` in the
      TFDS manual dir.
    image_root: Folder the entries' `filepath/filename` are relative to; empty:
      `images/` in the TFDS manual dir.
    image_size: Side of the stored square images, in pixels.
    restval_to_train: Whether `restval` images join train (otherwise they are
      dropped).
    skip_bad_images: Skip missing, corrupt or under-captioned images (listed in
      `skipped_images.json`) instead of failing.
    captions_per_image: How many captions each example keeps (the first ones).
  """
  name: str = ""
  ann_file: str = ""
  image_root: str = ""
  image_size: int = 224
  restval_to_train: bool = True
  skip_bad_images: bool = False
  captions_per_image: int = 5

  def __post_init__(self):
    if not self.name:
      self.name = _config_name(self)


def _files_fingerprint(root: str) -> str:
  """A hash of every file's path, size and mtime under `root`: a replaced or
  fixed image gives prepared data another name, so it is read again (a stat
  per file: well under a second for COCO's 123,000 images)."""
  sha = hashlib.sha256()
  for folder, dirs, files in os.walk(root):
    dirs.sort()
    for name in sorted(files):
      stat = os.stat(os.path.join(folder, name))
      sha.update(f"{os.path.relpath(os.path.join(folder, name), root)}:{stat.st_size}:"
                 f"{stat.st_mtime_ns};".encode())
  return sha.hexdigest()


def _config_name(config: KarpathyConfig) -> str:
  """`<dataset>-<size>px-<restval>-<hash of the inputs and options>`."""
  if config.ann_file:
    path = os.path.abspath(config.ann_file)
    if not os.path.isfile(path):
      raise KarpathyFormatError(f"{path}: annotation file not found.")
    stem = os.path.splitext(os.path.basename(path))[0].lower()
    stem = re.sub(r"[^a-z0-9]+", "_", stem.removeprefix("dataset_")).strip("_")
    stat = os.stat(path)
    fingerprint = [path, stat.st_size, stat.st_mtime_ns]
  else:
    stem, fingerprint = "manual", []
  fingerprint += [os.path.abspath(config.image_root) if config.image_root else "",
                  _files_fingerprint(config.image_root) if config.image_root else "",
                  config.skip_bad_images, config.captions_per_image]
  digest = hashlib.sha256(json.dumps(fingerprint).encode()).hexdigest()[:10]
  restval = "restval" if config.restval_to_train else "norestval"
  return f"{stem or 'karpathy'}-{config.image_size}px-{restval}-{digest}"


@dataclasses.dataclass(frozen=True)
class Entry:
  """One image of the annotation file that will be written.

  Attributes:
    index: Position in the file's `images` list (also the example key).
    filename: `filepath/filename` as in the file (just `filename` if no path).
    path: Where the image is on disk.
    split: The output split (train, val or test).
    captions: The first `captions_per_image` captions, stripped.
  """
  index: int
  filename: str
  path: str
  split: str
  captions: tuple[str, ...]


def _skip_record(index: int, filename: str, split: str, reason: str) -> dict:
  return {"index": index, "filename": filename, "split": split, "reason": reason}


def _problem_list(problems: list[str]) -> str:
  listed = "\n  ".join(problems[:_MAX_LISTED])
  more = (f"\n  ... and {len(problems) - _MAX_LISTED} more"
          if len(problems) > _MAX_LISTED else "")
  return f"\n  {listed}{more}"


def _is_utf8(text: str) -> bool:
  try:
    text.encode("utf-8")
    return True
  except UnicodeEncodeError:
    return False


def _load_json(ann_file: str) -> dict[str, Any]:
  try:
    with open(ann_file, encoding="utf-8") as f:
      data = json.load(f)
  except FileNotFoundError:
    raise KarpathyFormatError(f"{ann_file}: annotation file not found.") from None
  except json.JSONDecodeError as e:
    raise KarpathyFormatError(
        f"{ann_file}: not valid JSON: {e.msg} at line {e.lineno}, column "
        f"{e.colno}.") from e
  except UnicodeDecodeError as e:
    raise KarpathyFormatError(f"{ann_file}: not UTF-8 text: {e}.") from e
  if not isinstance(data, dict) or not isinstance(data.get("images"), list):
    raise KarpathyFormatError(
        f"{ann_file}: no top-level 'images' list; expected a Karpathy-split "
        "file such as dataset_flickr30k.json.")
  return data


def read_annotations(ann_file: str, image_root: str, *,
                     restval_to_train: bool = True,
                     skip_bad_images: bool = False,
                     captions_per_image: int = 5,
                     ) -> tuple[dict[str, list[Entry]], list[dict]]:
  """Validates a Karpathy-split file and lists the images of each split.

  Structural problems (keys, types, split names) always raise. Missing image
  files and images with too few captions raise too, unless `skip_bad_images`.

  Args:
    ann_file: The Karpathy-split JSON.
    image_root: Folder the entries' `filepath/filename` are relative to.
    restval_to_train: Put `restval` images in train; otherwise drop them.
    skip_bad_images: Skip (and report) missing or under-captioned images.
    captions_per_image: Captions each image needs (the first ones are kept).

  Returns:
    The entries of each split in SPLITS, in file order, and the skipped images
    as dicts with `index`, `filename`, `split` and `reason`.

  Raises:
    KarpathyFormatError: naming the file, and each bad entry's index and name.
  """
  data = _load_json(ann_file)
  if not os.path.isdir(image_root):
    raise KarpathyFormatError(f"{image_root}: image folder not found (images "
                              f"of {ann_file}).")
  entries: dict[str, list[Entry]] = {split: [] for split in SPLITS}
  errors: list[str] = []
  skipped: list[dict] = []
  root = os.path.realpath(image_root)
  seen: dict[str, str] = {}  # Resolved image path -> where it was listed first.
  for index, image in enumerate(data["images"]):
    if not isinstance(image, dict):
      errors.append(f"images[{index}]: expected an object, got "
                    f"{type(image).__name__}.")
      continue
    filename = os.path.join(str(image.get("filepath") or ""),
                            str(image.get("filename", "")))
    where = f"images[{index}]" + (f" ({filename!r})" if "filename" in image else "")
    missing = [k for k in ("filename", "split", "sentences") if k not in image]
    if missing:
      errors.append(f"{where}: missing key(s) {', '.join(map(repr, missing))}.")
      continue
    split = image["split"]
    if split not in JSON_SPLITS:
      errors.append(f"{where}: unknown split {split!r}; valid splits: "
                    f"{', '.join(JSON_SPLITS)}.")
      continue
    sentences = image["sentences"]
    if not isinstance(sentences, list):
      errors.append(f"{where}: 'sentences' must be a list, got "
                    f"{type(sentences).__name__}.")
      continue
    bad = [j for j, s in enumerate(sentences)
           if not isinstance(s, dict) or not isinstance(s.get("raw"), str)]
    if bad:
      errors.append(f"{where}: sentences[{bad[0]}] has no 'raw' caption string.")
      continue
    unencodable = [j for j, s in enumerate(sentences) if not _is_utf8(s["raw"])]
    if unencodable:  # E.g. a lone surrogate ("\ud800") from a mangled JSON escape.
      errors.append(f"{where}: sentences[{unencodable[0]}] 'raw' is not valid text "
                    f"(cannot be encoded as UTF-8): {sentences[unencodable[0]]['raw']!r}.")
      continue
    if split == "restval":
      if not restval_to_train:
        continue
      split = "train"

    path = os.path.join(image_root, filename)
    resolved = os.path.realpath(path)
    if os.path.isabs(filename) or os.path.commonpath([root, resolved]) != root:
      errors.append(f"{where}: the image path leaves image_root ({image_root}); "
                    "entries name files inside it.")
      continue
    if resolved in seen:  # Within a split a duplicate; across splits a leak.
      errors.append(f"{where}: the same image as {seen[resolved]}; each image "
                    "may appear once (in one split).")
      continue
    seen[resolved] = f"{where} in split {image['split']!r}"
    captions = tuple(s["raw"].strip() for s in sentences[:captions_per_image])
    empty = [j for j, caption in enumerate(captions) if not caption]
    if not sentences:
      problem = "has no captions."
    elif len(sentences) < captions_per_image:
      problem = f"has {len(sentences)} captions, need {captions_per_image}."
    elif empty:
      problem = f"sentences[{empty[0]}] is empty (nothing but whitespace)."
    elif not os.path.isfile(path):
      problem = f"image file not found: {path}"
    else:
      entries[split].append(Entry(index, filename, path, split, captions))
      continue
    if skip_bad_images:
      skipped.append(_skip_record(index, filename, split, problem))
    else:
      errors.append(f"{where}: {problem}")
  if not errors:
    _drop_same_content(entries, skipped if skip_bad_images else None, errors)

  if errors:
    hint = ("" if skip_bad_images else "\n(skip_bad_images=True skips missing, "
            "corrupt and under-captioned images instead.)")
    raise KarpathyFormatError(
        f"{ann_file}: {len(errors)} bad image entries:{_problem_list(errors)}"
        f"{hint}")
  for split, split_entries in entries.items():
    if not split_entries:
      raise KarpathyFormatError(
          f"{ann_file}: no usable images in split {split!r}; a Karpathy-split "
          f"file needs images in each of {', '.join(SPLITS)}.")
  return entries, skipped


def _drop_same_content(entries: dict[str, list[Entry]], skipped: list[dict] | None,
                       errors: list[str]) -> None:
  """Finds an image file whose bytes another entry already has (a copy under
  another name: within a split a duplicate, across splits a leak); skips it
  into `skipped`, or names it in `errors` when `skipped` is None."""
  first: dict[str, str] = {}  # SHA-256 of the file -> where it was listed first.
  for split, split_entries in entries.items():
    kept = []
    for entry in split_entries:
      digest = checksums.file_sha256(entry.path)
      where = f"images[{entry.index}] ({entry.filename!r})"
      if digest not in first:
        first[digest] = f"{where} in split {entry.split!r}"
        kept.append(entry)
        continue
      problem = (f"the same bytes as {first[digest]}; each image may appear once (in "
                 "one split).")
      if skipped is None:
        errors.append(f"{where}: {problem}")
      else:
        skipped.append(_skip_record(entry.index, entry.filename, entry.split, problem))
    entries[split] = kept


def load_image(path: str, image_size: int) -> np.ndarray:
  """Decodes an image as RGB, centre-crops a square and resizes it (bicubic)."""
  with Image.open(path) as image:
    if image.mode.startswith("I;16") or image.mode == "I":
      # 16-bit greyscale: PIL's convert("RGB") clips every value above 255 to
      # white; scale 0..65535 to 0..255 instead (32-bit "I" of 8-bit data stays).
      values = np.asarray(image, dtype=np.float64)
      if image.mode != "I" or values.max() > 255:
        values = values / 257.0
      image = Image.fromarray(np.clip(np.round(values), 0, 255).astype(np.uint8), "L")
    image = image.convert("RGB")
  width, height = image.size
  side = min(width, height)
  left, top = (width - side) // 2, (height - side) // 2
  # Cropping first: `resize(box=...)` would blend in pixels from outside the box.
  image = image.crop((left, top, left + side, top + side))
  image = image.resize((image_size, image_size), Image.Resampling.BICUBIC)
  return np.asarray(image, dtype=np.uint8)


class Karpathy(tfds.core.GeneratorBasedBuilder):
  """Flickr30K, COCO or any image-caption set in Karpathy-split format."""

  VERSION = tfds.core.Version("1.1.0")
  RELEASE_NOTES = {"1.0.0": "First release.",
                   "1.1.0": "Images stored as raw bytes, not one int64 per pixel: "
                            "smaller, and read by rows without decoding each pixel."}
  BUILDER_CONFIG_CLASS = KarpathyConfig
  MANUAL_DOWNLOAD_INSTRUCTIONS = """\
  Used when the config leaves `ann_file` / `image_root` empty. Put in the manual
  dir (default `<data_dir>/downloads/manual/`):
    dataset_flickr30k.json (or dataset_coco.json, ...): one Karpathy-split file,
      from Karpathy's caption_datasets.zip;
    images/: the images (Flickr30K: flickr30k-images/*.jpg; COCO: the folders
      train2014/ and val2014/).
  """

  def _info(self) -> tfds.core.DatasetInfo:
    size = self.builder_config.image_size
    return tfds.core.DatasetInfo(
        builder=self,
        description=_DESCRIPTION,
        features=tfds.features.FeaturesDict({
            # Raw bytes: the default stores each pixel as an int64.
            "image": tfds.features.Tensor(shape=(size, size, 3), dtype=np.uint8,
                                          encoding=tfds.features.Encoding.BYTES),
            "captions": tfds.features.Sequence(
                tfds.features.Text(),
                length=self.builder_config.captions_per_image),
            "filename": tfds.features.Text(),
        }),
        disable_shuffling=True,
        homepage="https://cs.stanford.edu/people/karpathy/deepimagesent/",
        citation=_CITATION,
    )

  def _inputs(self, dl_manager: tfds.download.DownloadManager) -> tuple[str, str]:
    """The annotation file and image folder: from the config or the manual dir."""
    ann_file = self.builder_config.ann_file
    image_root = self.builder_config.image_root
    if ann_file and image_root:
      return ann_file, image_root
    manual_dir = dl_manager.manual_dir
    if not ann_file:
      found = sorted(manual_dir.glob("dataset_*.json"))
      if len(found) != 1:
        raise KarpathyFormatError(
            f"{manual_dir}: expected exactly one dataset_*.json, found "
            f"{[f.name for f in found]}.")
      ann_file = os.fspath(found[0])
    return ann_file, image_root or os.fspath(manual_dir / "images")

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    config = self.builder_config
    ann_file, image_root = self._inputs(dl_manager)
    entries, self._skipped = read_annotations(
        ann_file, image_root, restval_to_train=config.restval_to_train,
        skip_bad_images=config.skip_bad_images,
        captions_per_image=config.captions_per_image)
    self._ann_file = ann_file
    logging.info("%s: %s.", ann_file, ", ".join(
        f"{split} {len(e)} images" for split, e in entries.items()))
    return {split: self._generate_examples(e) for split, e in entries.items()}

  def _try_load(self, entry: Entry) -> np.ndarray | Exception:
    try:
      return load_image(entry.path, self.builder_config.image_size)
    except _DECODE_ERRORS as e:
      return e

  def _generate_examples(self, entries: list[Entry]) -> Iterator[tuple[int, dict]]:
    # Pillow releases the GIL while decoding and resizing; chunks bound memory.
    yielded = 0
    with concurrent.futures.ThreadPoolExecutor(os.cpu_count()) as pool:
      for start in range(0, len(entries), _DECODE_CHUNK):
        chunk = entries[start:start + _DECODE_CHUNK]
        for entry, image in zip(chunk, pool.map(self._try_load, chunk)):
          if isinstance(image, Exception):
            problem = f"cannot decode image {entry.path}: {image}"
            if not self.builder_config.skip_bad_images:
              raise KarpathyFormatError(
                  f"{self._ann_file}: images[{entry.index}] "
                  f"({entry.filename!r}): {problem}") from image
            self._skipped.append(
                _skip_record(entry.index, entry.filename, entry.split, problem))
            continue
          yielded += 1
          yield entry.index, {"image": image, "captions": list(entry.captions),
                              "filename": entry.filename}
    if entries and not yielded:  # Else TFDS fails with a bare AssertionError.
      raise KarpathyFormatError(
          f"{self._ann_file}: no usable images in split {entries[0].split!r}: all "
          f"{len(entries)} could not be decoded (skip_bad_images=True skipped them; "
          f"the first: {entries[0].path}). Fix or replace them, or move other images "
          "to that split.")

  def _download_and_prepare(self, dl_manager, download_config) -> None:
    super()._download_and_prepare(dl_manager, download_config)
    # Still inside TFDS's temporary folder: the list lands with the data.
    skipped = sorted(self._skipped, key=lambda record: record["index"])
    (epath.Path(self.data_dir) / SKIPPED_FILE).write_text(
        json.dumps(skipped, indent=1))
    if skipped:
      logging.warning(
          "%s: skipped %d bad images (listed in %s); the first ones:%s",
          self._ann_file, len(skipped), SKIPPED_FILE, _problem_list(
              [f"images[{r['index']}] ({r['filename']!r}): {r['reason']}"
               for r in skipped]))


def make_builder(data_config: ml_collections.ConfigDict, data_dir: str) -> Karpathy:
  """The builder for `config.data` of configs/karpathy.py."""
  ann_file, image_root = data_config.ann_file, data_config.image_root
  # The manual-dir layout, resolved here so that its files are fingerprinted
  # (`_config_name`) as given paths are.
  manual = os.path.join(data_dir, "downloads", "manual")
  found = sorted(glob.glob(os.path.join(glob.escape(manual), "dataset_*.json")))
  if not ann_file and len(found) == 1:
    ann_file = found[0]
  if not image_root and os.path.isdir(os.path.join(manual, "images")):
    image_root = os.path.join(manual, "images")
  config = KarpathyConfig(
      ann_file=ann_file,
      image_root=image_root,
      image_size=data_config.image_size,
      restval_to_train=data_config.restval_to_train,
      skip_bad_images=data_config.skip_bad_images,
      captions_per_image=data_config.captions_per_image)
  with tfds_temp.own_temp_dir():
    return Karpathy(config=config, data_dir=data_dir)
