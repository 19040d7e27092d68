"""Opens prepared splits: captions and labels in memory; images and cached
caption embeddings read from disk by rows, as batches ask for them."""
import dataclasses
import json
import os

import ml_collections
import numpy as np
import tensorflow_datasets as tfds
import tqdm

from vldd_jax import text
from vldd_jax import workdir_lib
from vldd_jax.data import embeddings
from vldd_jax.data import karpathy
from vldd_jax.data import lazy_arrays
from vldd_jax.data import shapes

_BUILDERS = {"shapes": shapes.make_builder, "karpathy": karpathy.make_builder}
_READ_CHUNK = 1024
# One builder per data config and folder in a process: TFDS logs "Using custom
# data configuration" for every builder it makes, 12 times in one default run.
_BUILT: dict[str, tfds.core.DatasetBuilder] = {}


@dataclasses.dataclass(frozen=True)
class Split:
  """One split.

  Attributes:
    images: uint8 [N, H, W, 3], from the prepared ArrayRecord files when
      indexed (or a NumPy array).
    captions: N lists of captions (5 per image).
    text_emb: float32 [N, captions_per_image, D] frozen-encoder embeddings,
      from the cache file when indexed (or a NumPy array); None when the split
      was opened without them.
    labels: other per-image features of the dataset (e.g. shapes' attributes).
  """
  images: np.ndarray | lazy_arrays.RowReader
  captions: list[list[str]]
  text_emb: np.ndarray | lazy_arrays.RowReader | None
  labels: dict[str, np.ndarray]

  def __len__(self) -> int:
    return len(self.images)

  @property
  def caption_to_image(self) -> np.ndarray:
    """Image index of every caption in flattened (image-major) order."""
    return np.repeat(np.arange(len(self.captions)), len(self.captions[0]))


def data_dir(config: ml_collections.ConfigDict, workdir: str) -> str:
  """Where TFDS data and the embedding cache live: config or <workdir>/tfds."""
  return config.data.data_dir or os.path.join(workdir, workdir_lib.DATA)


def builder(config: ml_collections.ConfigDict,
            workdir: str) -> tfds.core.DatasetBuilder:
  """The TFDS builder that `config.data.name` names."""
  name = config.data.name
  if name not in _BUILDERS:
    raise ValueError(f"config.data.name={name!r}: expected one of {sorted(_BUILDERS)}.")
  folder = data_dir(config, workdir)
  key = json.dumps([config.data.to_dict(), os.path.abspath(folder)], sort_keys=True,
                   default=str)
  if key not in _BUILT:
    _BUILT[key] = _BUILDERS[name](config.data, folder)
  return _BUILT[key]


def prepare(config: ml_collections.ConfigDict,
            workdir: str) -> tfds.core.DatasetBuilder:
  """Builds the dataset's splits unless they are already on disk."""
  ds_builder = builder(config, workdir)
  if not ds_builder.is_prepared():
    ds_builder.download_and_prepare(file_format="array_record")
  return ds_builder


def text_encoder(config: ml_collections.ConfigDict) -> text.LazyTextEncoder:
  """The frozen text encoder that `config.text` describes, loaded when it
  first encodes (captions found in the cache need no model)."""
  return text.LazyTextEncoder(config.text.path or None, pooling=config.text.pooling,
                              max_length=config.text.max_length)


def caption_embeddings(config: ml_collections.ConfigDict, workdir: str,
                       ds_builder: tfds.core.DatasetBuilder, split: str,
                       captions: list[list[str]],
                       encoder: text.LazyTextEncoder | None = None) -> lazy_arrays.RowReader:
  """Embeddings [N, captions_per_image, D] of a split's captions, cached."""
  flat = [c for image_captions in captions for c in image_captions]
  return embeddings.encode_cached(
      encoder or text_encoder(config), flat,
      cache_dir=os.path.join(data_dir(config, workdir), workdir_lib.CAPTION_CACHE),
      name=f"{ds_builder.name}-{ds_builder.builder_config.name}-{split}",
      batch_size=config.text.batch_size, texts_per_row=len(captions[0]))


def _nbytes(array: lazy_arrays.RowReader) -> int:
  return array.dtype.itemsize * int(np.prod(array.shape))


def load_split(config: ml_collections.ConfigDict, workdir: str, split: str, *,
               with_text_emb: bool = True,
               encoder: text.LazyTextEncoder | None = None) -> Split:
  """Opens a split (preparing the dataset if needed): reads its captions and
  labels, and its images and caption embeddings too if together they fit in
  `data.in_memory_mb`; if not, those stay on disk until indexed."""
  ds_builder = prepare(config, workdir)
  source = ds_builder.as_data_source()
  if split not in source:
    raise ValueError(f"Split {split!r} not in dataset {config.data.name!r}; "
                     f"expected one of {sorted(source)}.")
  source = source[split]
  image = ds_builder.info.features["image"]
  on_disk = lazy_arrays.record_feature(source, "image", (len(source),) + image.shape,
                                       image.np_dtype)
  budget = config.data.in_memory_mb * 2**20
  # The images are kept from this one pass over the records unless they alone
  # exceed the budget; a split that does not fit is read by rows after all.
  keep_images = _nbytes(on_disk) <= budget
  columns: dict[str, list] = {}
  for start in tqdm.trange(0, len(source), _READ_CHUNK, desc=f"read {split}",
                           leave=False):
    for example in source.__getitems__(
        range(start, min(start + _READ_CHUNK, len(source)))):
      for key, value in example.items():
        if key != "image" or keep_images:
          columns.setdefault(key, []).append(value)
  captions = [[c.decode("utf-8") if isinstance(c, bytes) else c for c in cs]
              for cs in columns.pop("captions")]
  images = np.stack(columns.pop("image")) if keep_images else on_disk
  labels = {k: np.asarray(v) for k, v in columns.items()}
  text_emb = (caption_embeddings(config, workdir, ds_builder, split, captions,
                                 encoder)
              if with_text_emb else None)
  text_bytes = 0 if text_emb is None else _nbytes(text_emb)
  if keep_images and _nbytes(on_disk) + text_bytes <= budget:
    # Small enough: indexing memory beats reading and parsing records per batch.
    text_emb = None if text_emb is None else np.asarray(text_emb)
  else:
    images = on_disk
  return Split(images=images, captions=captions, text_emb=text_emb, labels=labels)
