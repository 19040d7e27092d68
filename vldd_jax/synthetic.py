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

`load_distilled` reads any such file into a `DistilledSet`.
"""
import dataclasses
import json
import os
import zipfile

import numpy as np

RESULT = "distilled.npz"
# 1: provenance and format_version added; files without them read as version 0.
FORMAT_VERSION = 1


def set_dir(workdir: str, num_pairs: int, objective: str = "plain") -> str:
  """The folder of the set of `num_pairs` pairs (and its checkpoints, settings)."""
  suffix = "" if objective == "plain" else f"_{objective}"
  return os.path.join(workdir, "distill", f"n{num_pairs}{suffix}")


def read(path: str) -> dict[str, np.ndarray]:
  """The arrays of a `distilled.npz`; a clear error if it is damaged."""
  try:
    with np.load(path) as data:
      return dict(data)
  except (zipfile.BadZipFile, EOFError, OSError, ValueError) as e:
    raise ValueError(f"{path} is damaged ({type(e).__name__}: {e}); rerun stage "
                     "distill with the same settings to write it again from its "
                     "last checkpoint.") from e


def load(workdir: str, num_pairs: int, objective: str = "plain") -> dict[str, np.ndarray]:
  """The arrays of the set of `num_pairs` pairs distilled with `objective`."""
  path = os.path.join(set_dir(workdir, num_pairs, objective), RESULT)
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
  provenance: dict  # Empty for version-0 files.
  format_version: int
  arrays: dict[str, np.ndarray]  # Everything in the file, objective parts included.

  @property
  def objective(self) -> str:
    """The objective that made it ("plain" for version-0 files)."""
    return self.provenance.get("objective", "plain")

  def __len__(self) -> int:
    return len(self.text_emb)


def load_distilled(path: str) -> DistilledSet:
  """Reads a `distilled.npz` of any workdir; refuses unknown format versions."""
  arrays = read(path)
  version = int(arrays.get("format_version", 0))
  if version > FORMAT_VERSION:
    raise ValueError(f"{path}: format_version={version}, but this vldd_jax reads "
                     f"versions up to {FORMAT_VERSION}: upgrade vldd_jax.")
  missing = [k for k in ("images", "images_uint8", "text_emb", "lr_image", "lr_text")
             if k not in arrays]
  if missing:
    raise ValueError(f"{path}: not a distilled set, missing field(s) {missing}.")
  provenance = json.loads(str(arrays["provenance_json"])) if version >= 1 else {}
  return DistilledSet(
      images=arrays["images"], images_uint8=arrays["images_uint8"],
      text_emb=arrays["text_emb"], lr_image=float(arrays["lr_image"]),
      lr_text=float(arrays["lr_text"]),
      nearest_caption=[str(c) for c in arrays.get("nearest_caption", [])],
      provenance=provenance, format_version=version, arrays=arrays)
