"""The embedded default dataset: coloured shapes with compositional captions.

Images are drawn on the spot (no download, no TensorFlow): 1 to `max_objects`
objects, each with a colour, shape, size and position, on a plain or textured
background. Each image has 5 distinct captions, like Flickr30K, that mention
different subsets of attributes, the object count and spatial relations, so
retrieval depends on composition rather than on a single class label.

Every example comes from its own generator,
`np.random.default_rng([seed, split_index, example_index])`, so examples do not
depend on generation order and splits are disjoint.
"""
from collections.abc import Iterator
import dataclasses
import functools
import math
import random

import ml_collections
import numpy as np
import tensorflow_datasets as tfds

from vldd_jax.data import tfds_temp
from vldd_jax.data.shapes_captions import (  # Re-exported vocabulary.
    BACKGROUND_COLOURS, COLOURS, COUNT_WORDS, NUM_CAPTIONS, SHAPES, SIZES,
    TEXTURES, Scene, captions)

SPLITS = {"train": 0, "val": 1, "test": 2, "pretrain": 3}

_RGB = np.array([(220, 40, 40), (245, 140, 20), (240, 220, 40),
                 (40, 180, 60), (40, 210, 220), (40, 80, 230), (140, 50, 200),
                 (245, 120, 190)], np.float32)
_BACKGROUND_RGB = np.array([(25, 25, 25), (125, 125, 125), (235, 235, 235),
                            (215, 200, 165), (105, 75, 50), (25, 35, 85)],
                           np.float32)
# Dark backgrounds are textured with a lighter shade, light ones with a darker.
_SHADE_SIGN = np.where(_BACKGROUND_RGB.mean(axis=1) < 128, 1, -1)
# Object colours far enough from each background colour to stand out on it.
_CONTRASTING = tuple(
    tuple(np.flatnonzero(np.linalg.norm(_RGB - rgb, axis=1) > 110).tolist())
    for rgb in _BACKGROUND_RGB)
_RADIUS = (0.14, 0.21)  # Half-width of small / large objects, in image widths.
_QUANT = 4  # Positions and radii snap to 1/4 pixel, so masks can be cached.
_SUPERSAMPLE = 4
_NOISE = 10.0  # Width of the uniform pixel noise (std ~2.9).



def _star(points: int, outer: float, inner: float, lift: float) -> np.ndarray:
  angles = np.pi / 2 + np.arange(2 * points) * np.pi / points
  radii = np.where(np.arange(2 * points) % 2 == 0, outer, inner)
  return np.stack([radii * np.cos(angles), radii * np.sin(angles) + lift], -1)


def _heart() -> np.ndarray:
  t = np.linspace(0, 2 * np.pi, 64, endpoint=False)
  x = 16 * np.sin(t) ** 3
  y = 13 * np.cos(t) - 5 * np.cos(2 * t) - 2 * np.cos(3 * t) - np.cos(4 * t)
  return np.stack([x / 16.5, (y + 2.5) / 15], -1)


# Outlines in a unit box (x right, y up), all fitting inside [-1, 1]^2.
_POLYGONS = {
    "square": np.array([(-.8, -.8), (.8, -.8), (.8, .8), (-.8, .8)]),
    "triangle": np.array([(0, .95), (-1, -.8), (1, -.8)]),
    "star": _star(5, 1.05, 0.45, -0.08),
    "diamond": np.array([(0, 1), (.72, 0), (0, -1), (-.72, 0)]),
    "cross": np.array([(-.3, 1), (.3, 1), (.3, .3), (1, .3), (1, -.3),
                       (.3, -.3), (.3, -1), (-.3, -1), (-.3, -.3), (-1, -.3),
                       (-1, .3), (-.3, .3)]),
    "hexagon": _star(3, 1.0, 1.0, 0.0)[:, ::-1],
    "heart": _heart(),
}


def _inside(shape: str, x: np.ndarray, y: np.ndarray) -> np.ndarray:
  """Whether unit-box points lie inside a shape (even-odd rule for polygons)."""
  if shape == "circle":
    return x**2 + y**2 <= 0.85**2
  inside = np.zeros(x.shape, bool)
  vertices = _POLYGONS[shape]
  for (x0, y0), (x1, y1) in zip(vertices, np.roll(vertices, -1, axis=0)):
    crosses = (y0 > y) != (y1 > y)
    with np.errstate(divide="ignore", invalid="ignore"):
      x_cross = x0 + (y - y0) * (x1 - x0) / (y1 - y0)
    inside ^= crosses & (x < x_cross)
  return inside


@functools.lru_cache(maxsize=None)
def _mask(shape: int, radius_q: int, frac_x: int,
          frac_y: int) -> tuple[np.ndarray, int, int]:
  """Anti-aliased coverage of an object over the pixels its box touches.

  The centre lies `frac / _QUANT` pixels into its pixel; also returns the
  patch's top-left pixel relative to that pixel.
  """
  radius = radius_q / _QUANT
  lo_x = int(np.floor(frac_x / _QUANT - radius))
  lo_y = int(np.floor(frac_y / _QUANT - radius))
  size = int(np.ceil(2 * radius)) + 2
  sub = (np.arange(size * _SUPERSAMPLE) + 0.5) / _SUPERSAMPLE
  x, y = np.meshgrid((sub + lo_x - frac_x / _QUANT) / radius,
                     (frac_y / _QUANT - lo_y - sub) / radius)
  inside = _inside(SHAPES[shape], x, y)
  alpha = inside.reshape(size, _SUPERSAMPLE, size, _SUPERSAMPLE).mean((1, 3))
  return alpha.astype(np.float32)[..., None], lo_x, lo_y


@functools.lru_cache(maxsize=None)
def _grid(image_size: int) -> tuple[np.ndarray, np.ndarray]:
  centres = np.arange(image_size, dtype=np.float32) + 0.5
  return np.meshgrid(centres, centres)


def _background(rng: np.random.Generator, py: random.Random, image_size: int,
                colour: int, texture: int) -> np.ndarray:
  """A background: `colour` mixed with a nearby shade by the texture."""
  base = _BACKGROUND_RGB[colour] + [py.uniform(-10, 10) for _ in range(3)]
  shade = base + py.uniform(35, 55) * _SHADE_SIGN[colour]
  xx, yy = _grid(image_size)
  name = TEXTURES[texture]
  if name == "plain":
    return np.broadcast_to(base, (image_size, image_size, 3)).copy()
  if name == "striped":
    angle = py.choice((0, 0.25, 0.5, 0.75)) * np.pi
    along = xx * np.cos(angle) + yy * np.sin(angle)
    period = py.uniform(image_size / 8, image_size / 4)
    mix = (along / period + py.random()) % 1 < 0.5
  elif name == "checkered":
    cell = py.uniform(image_size / 8, image_size / 5)
    mix = ((xx + py.uniform(0, cell)) // cell
           + (yy + py.uniform(0, cell)) // cell) % 2
  elif name == "gradient":
    angle = py.uniform(0, 2 * np.pi)
    cos, sin = np.cos(angle), np.sin(angle)
    half = image_size / 2
    mix = 0.5 + ((xx - half) * cos + (yy - half) * sin) / (
        image_size * (abs(cos) + abs(sin)))
  else:
    block = max(1, image_size // 16)
    cells = rng.random((image_size // block + 1,) * 2, np.float32)
    mix = np.repeat(np.repeat(cells, block, 0), block, 1)
    mix = mix[:image_size, :image_size]
  return base + mix[..., None] * (shade - base)


def _place(py: random.Random, image_size: int,
           num_objects: int) -> tuple[list[int], list[float], list[tuple]]:
  """Sizes, radii and centres (pixels, on the 1/_QUANT grid) of the objects."""
  while True:
    sizes = [py.randrange(len(SIZES)) for _ in range(num_objects)]
    radii = [round(_RADIUS[z] * image_size * py.uniform(0.92, 1.08) * _QUANT)
             / _QUANT for z in sizes]
    centres = []
    for radius in radii:
      for _ in range(64):
        # Both ends of the range are on the grid, so rounding stays inside.
        x, y = (round(py.uniform(radius, image_size - radius) * _QUANT) / _QUANT
                for _ in range(2))
        if all(math.hypot(x - cx, y - cy) >= 0.95 * (radius + r)
               for (cx, cy), r in zip(centres, radii)):
          centres.append((x, y))
          break
      else:
        break
    else:
      return sizes, radii, centres


def generate_example(seed: int, split_index: int, index: int, *,
                     image_size: int = 32, max_objects: int = 3) -> dict:
  """One example: image, 5 captions and per-object labels.

  Labels beyond `num_objects` are -1 (positions 0). Positions are object
  centres as (x, y) fractions of the image width and height, x to the right
  and y downwards.
  """
  rng = np.random.default_rng([seed, split_index, index])
  # Scalar draws are far cheaper from a Python generator seeded by `rng`.
  py = random.Random(int(rng.integers(2**63)))
  num_objects = py.randint(1, max_objects)
  bg_colour = py.randrange(len(BACKGROUND_COLOURS))
  texture = py.randrange(len(TEXTURES))
  colours = [py.choice(_CONTRASTING[bg_colour]) for _ in range(num_objects)]
  shapes = [py.randrange(len(SHAPES)) for _ in range(num_objects)]
  sizes, radii, centres = _place(py, image_size, num_objects)

  image = _background(rng, py, image_size, bg_colour, texture)
  for colour, shape, radius, (x, y) in zip(colours, shapes, radii, centres):
    qx, qy = round(x * _QUANT), round(y * _QUANT)
    alpha, lo_x, lo_y = _mask(shape, round(radius * _QUANT), qx % _QUANT,
                              qy % _QUANT)
    x0, y0 = qx // _QUANT + lo_x, qy // _QUANT + lo_y
    # The patch may run past the right and bottom edges: clip it there.
    alpha = alpha[:image_size - y0, :image_size - x0]
    patch = image[y0:y0 + alpha.shape[0], x0:x0 + alpha.shape[1]]
    rgb = _RGB[colour] + [py.uniform(-15, 15) for _ in range(3)]
    patch += alpha * (rgb - patch)
  # Uniform noise of width _NOISE, shifted by 0.5 so that truncation rounds.
  image += rng.random(image.shape, np.float32) * _NOISE + (0.5 - _NOISE / 2)
  image = np.clip(image, 0, 255).astype(np.uint8)

  positions = [(x / image_size, y / image_size) for x, y in centres]
  scene = Scene(colours, shapes, sizes, positions, bg_colour, texture)
  labels = {k: np.full(max_objects, -1, np.int32)
            for k in ("colour", "shape", "size")}
  for key, values in zip(labels, (colours, shapes, sizes)):
    labels[key][:num_objects] = values
  position = np.zeros((max_objects, 2), np.float32)
  position[:num_objects] = positions
  return {
      "image": image,
      "captions": captions(scene, py),
      "num_objects": np.int32(num_objects),
      **labels,
      "position": position,
      "background_colour": np.int32(bg_colour),
      "background_texture": np.int32(texture),
  }




@dataclasses.dataclass(eq=False)
class ShapesConfig(tfds.core.BuilderConfig):
  """Sizes and seed of a shapes dataset; the name is derived from them."""
  name: str = dataclasses.field(default="", init=False)
  image_size: int = 32
  num_train: int = 10000
  num_val: int = 1000
  num_test: int = 1000
  num_pretrain: int = 20000
  max_objects: int = 3
  seed: int = 0

  def __post_init__(self):
    if not 1 <= self.max_objects <= len(COUNT_WORDS):
      raise ValueError(f"max_objects must be in [1, {len(COUNT_WORDS)}], "
                       f"got {self.max_objects}.")
    self.name = (f"s{self.image_size}_o{self.max_objects}_tr{self.num_train}"
                 f"_va{self.num_val}_te{self.num_test}_pt{self.num_pretrain}"
                 f"_seed{self.seed}")


def _tensor(shape: tuple[int, ...],
            dtype: type[np.generic] = np.int32) -> tfds.features.Tensor:
  return tfds.features.Tensor(shape=shape, dtype=dtype)


class Shapes(tfds.core.GeneratorBasedBuilder):
  """Coloured shapes on textured backgrounds, 5 compositional captions each."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Initial release."}

  def __init__(self, *, config: ShapesConfig | None = None, **kwargs):
    super().__init__(config=config or ShapesConfig(), **kwargs)

  def _info(self) -> tfds.core.DatasetInfo:
    size = self.builder_config.image_size
    max_objects = self.builder_config.max_objects
    return tfds.core.DatasetInfo(
        builder=self,
        description=__doc__,
        features=tfds.features.FeaturesDict({
            # Raw bytes: the default stores each pixel as an int64.
            "image": tfds.features.Tensor(
                shape=(size, size, 3), dtype=np.uint8,
                encoding=tfds.features.Encoding.BYTES),
            "captions": tfds.features.Sequence(tfds.features.Text(),
                                               length=NUM_CAPTIONS),
            "num_objects": _tensor(()),
            "colour": _tensor((max_objects,)),
            "shape": _tensor((max_objects,)),
            "size": _tensor((max_objects,)),
            "position": _tensor((max_objects, 2), np.float32),
            "background_colour": _tensor(()),
            "background_texture": _tensor(()),
        }),
        disable_shuffling=True,
    )

  def _split_generators(self, dl_manager):
    del dl_manager  # Nothing to download.
    cfg = self.builder_config
    # TFDS cannot write an empty split, so a split of size 0 is left out.
    return {name: self._generate_examples(index, getattr(cfg, f"num_{name}"))
            for name, index in SPLITS.items() if getattr(cfg, f"num_{name}")}

  def _generate_examples(self, split_index: int,
                         num_examples: int) -> Iterator[tuple[int, dict]]:
    cfg = self.builder_config
    for index in range(num_examples):
      yield index, generate_example(cfg.seed, split_index, index,
                                    image_size=cfg.image_size,
                                    max_objects=cfg.max_objects)


def make_builder(data_config: ml_collections.ConfigDict,
                 data_dir: str) -> Shapes:
  """The (unprepared) shapes builder for `data_config`, under `data_dir`."""
  config = ShapesConfig(
      image_size=data_config.image_size, num_train=data_config.num_train,
      num_val=data_config.num_val, num_test=data_config.num_test,
      num_pretrain=data_config.num_pretrain,
      max_objects=data_config.max_objects, seed=data_config.seed)
  with tfds_temp.own_temp_dir():
    return Shapes(config=config, data_dir=data_dir)
