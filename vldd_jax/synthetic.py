"""The distilled-set file: where stage `distill` writes a set, and loading it.

`<workdir>/distill/n<N>/distilled.npz` (`n<N>_<objective>/` for objectives
other than "plain") holds `images` (model space), `images_uint8`, `text_emb`,
the learned rates `lr_image` and `lr_text`, `init_rows`, the nearest real
caption of each text (`nearest_caption`, `nearest_cosine`),
`image_change_rms` and what the objective learned (`Objective.export`, e.g.
LoRS's `similarity` [N, N]).
"""
import os
import zipfile

import numpy as np

RESULT = "distilled.npz"


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
