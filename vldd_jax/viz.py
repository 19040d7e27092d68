"""PNG figures: synthetic images with their nearest real captions, and curves."""
import textwrap

import numpy as np

from vldd_jax import jsonfile


def _figure(figsize: tuple[float, float]):
  """A matplotlib Figure of its own: no pyplot, so no global state to close."""
  # Imported here: matplotlib adds most of a second to every start, and only
  # the stages that draw need it.
  from matplotlib.figure import Figure  # pylint: disable=g-import-not-at-top
  return Figure(figsize=figsize)


def _save(fig, path: str) -> None:
  fig.tight_layout()
  jsonfile.write_file(path, lambda f: fig.savefig(f, format="png", dpi=110))


def image_grid(images: np.ndarray, captions: list[str], path: str,
               max_images: int = 40, columns: int = 8) -> None:
  """Saves up to `max_images` uint8 images [N, H, W, 3], each over its caption."""
  n = min(len(images), max_images)
  rows = -(-n // columns)
  fig = _figure((2.0 * columns, 2.4 * rows))
  axes = fig.subplots(rows, columns, squeeze=False)
  for i, ax in enumerate(axes.flat):
    ax.axis("off")
    if i < n:
      ax.imshow(images[i], interpolation="nearest")
      ax.set_title("\n".join(textwrap.wrap(captions[i], 28)[:3]), fontsize=6)
  _save(fig, path)


def loss_curve(steps: list[int], values: list[float], path: str,
               ylabel: str = "matching loss") -> None:
  """Saves a line plot of `values` against `steps`."""
  fig = _figure((5, 3.2))
  ax = fig.subplots()
  ax.plot(steps, values, linewidth=0.8)
  ax.set_xlabel("iteration")
  ax.set_ylabel(ylabel)
  ax.grid(alpha=0.3)
  _save(fig, path)


def budget_plot(rows: list[dict], keys: tuple[str, ...], path: str) -> None:
  """Saves one panel per recall key: mean ± std against budget, a line per method."""
  fig = _figure((5 * len(keys), 3.6))
  axes = fig.subplots(1, len(keys), squeeze=False)
  methods = list(dict.fromkeys(r["method"] for r in rows))
  for ax, key in zip(axes.flat, keys):
    for method in methods:
      mine = sorted((r for r in rows if r["method"] == method and r[key] is not None),
                    key=lambda r: r["budget"])
      ax.errorbar([r["budget"] for r in mine], [r[key] for r in mine],
                  yerr=[r[key + "_std"] for r in mine], marker="o", capsize=3,
                  label=method)
    ax.set_xscale("log")
    ax.set_xlabel("pairs")
    ax.set_ylabel(f"{key} (%)")
    ax.grid(alpha=0.3)
  axes.flat[0].legend(fontsize=8)
  _save(fig, path)
