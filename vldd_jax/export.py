"""Export a distilled set as a TFDS dataset folder, for training without vldd_jax.

  python -m vldd_jax.export <distilled.npz> <out_dir>

writes `<out_dir>/distilled_pairs/n<N>/1.0.0/` (array_record files, no
TensorFlow), one split `train` of N examples: `image` (float32 model space,
(pixels / 255 - 0.5) / 0.5, the learned values), `image_uint8`, `text_emb`,
`index`, and row i of each per-pair array its objective learned
(`Objective.exported`: LoRS's `similarity`, S). The learned student rates, the
objective's other learned values (e.g. `loss_bias`) and the set's provenance
are in `distilled.json` beside it (the rates also in the dataset's
description), with the SHA-256 of the source file: exporting the
same file again is a no-op, and a folder made from another file is never
overwritten. Read it back with

  tfds.builder_from_directory(folder).as_data_source()["train"]
"""
import dataclasses
import json
import os
import shutil
import sys
from collections.abc import Iterator

import ml_collections
import numpy as np
import tensorflow_datasets as tfds

from vldd_jax import checksums
from vldd_jax import distilled_set
from vldd_jax import objectives
from vldd_jax.data import tfds_temp

SIDECAR = "distilled.json"


@dataclasses.dataclass
class _SetConfig(tfds.core.BuilderConfig):
  arrays: dict = dataclasses.field(default_factory=dict, repr=False)
  per_pair: tuple[str, ...] = ()  # Learned arrays of one row per pair.


def _learned(distilled: distilled_set.DistilledSet) -> tuple[tuple[str, ...], dict]:
  """(names of the per-pair arrays, {name: value} of the other ones) that the
  set's objective added (`Objective.exported`)."""
  objective = objectives.build(ml_collections.ConfigDict(distilled.provenance["distill"]))
  n = len(distilled)
  shapes = objective.exported(n)
  per_pair = tuple(k for k, shape in shapes.items() if shape[:1] == (n,))
  others = {k: distilled.arrays[k].tolist() for k in shapes if k not in per_pair}
  return per_pair, others


class DistilledPairs(tfds.core.GeneratorBasedBuilder):
  """The pairs of one distilled set (see vldd_jax.export)."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Initial release."}

  def _info(self) -> tfds.core.DatasetInfo:
    arrays = self.builder_config.arrays
    n, h, w, c = arrays["images"].shape
    features = {
        "image": tfds.features.Tensor(shape=(h, w, c), dtype=np.float32,
                                      encoding=tfds.features.Encoding.BYTES),
        "image_uint8": tfds.features.Tensor(shape=(h, w, c), dtype=np.uint8,
                                            encoding=tfds.features.Encoding.BYTES),
        "text_emb": tfds.features.Tensor(shape=arrays["text_emb"].shape[1:],
                                         dtype=np.float32),
        "index": tfds.features.Tensor(shape=(), dtype=np.int32),
    }
    for name in self.builder_config.per_pair:
      features[name] = tfds.features.Tensor(shape=arrays[name].shape[1:], dtype=np.float32)
    return tfds.core.DatasetInfo(
        builder=self, features=tfds.features.FeaturesDict(features),
        description=(f"A distilled set of {n} pairs (vldd_jax). Learned student rates: "
                     f"image side {float(arrays['lr_image']):.6g}, text side "
                     f"{float(arrays['lr_text']):.6g}."),
        disable_shuffling=True)

  def _split_generators(self, dl_manager):
    del dl_manager  # Everything is in the builder config.
    return {"train": self._generate_examples()}

  def _generate_examples(self) -> Iterator[tuple[int, dict]]:
    arrays = self.builder_config.arrays
    for i in range(len(arrays["text_emb"])):
      example = {"image": arrays["images"][i].astype(np.float32),
                 "image_uint8": arrays["images_uint8"][i],
                 "text_emb": arrays["text_emb"][i].astype(np.float32), "index": i}
      for name in self.builder_config.per_pair:
        example[name] = arrays[name][i].astype(np.float32)
      yield i, example


def _source_checksum(folder: str) -> str | None:
  """The source checksum an export folder records; None if it records none."""
  try:
    with open(os.path.join(folder, SIDECAR), encoding="utf-8") as f:
      sidecar = json.load(f)
  except (OSError, ValueError):
    return None
  return sidecar.get("source_sha256") if isinstance(sidecar, dict) else None


def export(path: str, out_dir: str) -> str:
  """Writes the set at `path` (a distilled.npz) as a TFDS folder under `out_dir`;
  returns the folder `tfds.builder_from_directory` reads.

  Exporting the same file again leaves its folder as it is; a non-empty folder
  that is not an export of this file is refused. The folder is built in a
  temporary sibling and renamed into place when complete, so a killed export
  leaves no partial folder (the next export removes its temporary)."""
  distilled = distilled_set.load_distilled(path)
  source_sha256 = checksums.file_sha256(path)
  name = f"n{len(distilled)}"
  version = str(DistilledPairs.VERSION)
  folder = os.path.join(out_dir, DistilledPairs.name, name, version)
  if os.path.isdir(folder) and os.listdir(folder):
    if _source_checksum(folder) == source_sha256:
      return folder  # This file's export, complete (it was renamed into place whole).
    raise ValueError(f"{folder} is not empty and is not an export of {path} (its "
                     f"{SIDECAR} records another source checksum, or none): export into "
                     "another out_dir.")
  # Ours alone: one per target folder, so a rerun replaces what a kill left.
  tmp = os.path.join(os.path.dirname(folder), f".{version}.export-tmp")
  shutil.rmtree(tmp, ignore_errors=True)
  per_pair, others = _learned(distilled)
  with tfds_temp.own_temp_dir():
    builder = DistilledPairs(config=_SetConfig(name=name, arrays=distilled.arrays,
                                               per_pair=per_pair), data_dir=tmp)
  builder.download_and_prepare(file_format="array_record")
  with open(os.path.join(builder.data_dir, SIDECAR), "w", encoding="utf-8") as f:
    json.dump({"lr_image": distilled.lr_image, "lr_text": distilled.lr_text,
               "source": os.path.abspath(path), "source_sha256": source_sha256,
               "provenance": distilled.provenance, "learned": others}, f, indent=2)
  if os.path.isdir(folder):
    os.rmdir(folder)  # Empty (checked above).
  os.rename(builder.data_dir, folder)
  shutil.rmtree(tmp)
  return folder


if __name__ == "__main__":
  if len(sys.argv) != 3:
    sys.exit("usage: python -m vldd_jax.export <distilled.npz> <out_dir>")
  print(export(sys.argv[1], sys.argv[2]))
