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

COLOURS = ("red", "orange", "yellow", "green", "cyan", "blue", "purple", "pink")
SHAPES = ("circle", "square", "triangle", "star", "diamond", "cross", "hexagon",
          "heart")
SIZES = ("small", "large")
BACKGROUND_COLOURS = ("black", "grey", "white", "beige", "brown", "navy")
TEXTURES = ("plain", "striped", "checkered", "gradient", "noisy")
COUNT_WORDS = ("one", "two", "three", "four")
SPLITS = {"train": 0, "val": 1, "test": 2, "pretrain": 3}
NUM_CAPTIONS = 5

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
_ALIGNED = 0.15  # Closer on an axis (image widths): no relation stated.
_NOISE = 10.0  # Width of the uniform pixel noise (std ~2.9).

_SIZE_WORDS = (("small", "little"), ("large", "big"))
_NOUNS = ("shape", "object", "figure")
_TEXTURE_WORDS = (("plain", ""), ("striped",), ("checkered", "checkerboard"),
                  ("gradient", "shaded"), ("noisy", "speckled"))
_ABOVE, _BELOW = ("above", "over"), ("below", "under", "beneath")
_LEFT, _RIGHT = ("to the left of", "left of"), ("to the right of", "right of")


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
  scene = _Scene(colours, shapes, sizes, positions, bg_colour, texture)
  labels = {k: np.full(max_objects, -1, np.int32)
            for k in ("colour", "shape", "size")}
  for key, values in zip(labels, (colours, shapes, sizes)):
    labels[key][:num_objects] = values
  position = np.zeros((max_objects, 2), np.float32)
  position[:num_objects] = positions
  return {
      "image": image,
      "captions": _captions(scene, py),
      "num_objects": np.int32(num_objects),
      **labels,
      "position": position,
      "background_colour": np.int32(bg_colour),
      "background_texture": np.int32(texture),
  }


@dataclasses.dataclass(frozen=True)
class _Scene:
  """Object attributes of one image; positions as (x, y) image fractions."""
  colours: list[int]
  shapes: list[int]
  sizes: list[int]
  positions: list[tuple[float, float]]
  background_colour: int
  texture: int

  @property
  def n(self) -> int:
    return len(self.colours)

  def attribute(self, name: str) -> list[int]:
    return getattr(self, name + "s")


def _order(rng: random.Random, n: int) -> list[int]:
  return rng.sample(range(n), n)


def _article(phrase: str) -> str:
  return ("an " if phrase[0] in "aeiou" else "a ") + phrase


def _join(items: list[str]) -> str:
  if len(items) == 1:
    return items[0]
  return ", ".join(items[:-1]) + " and " + items[-1]


# More attributes are likelier, as in human captions.
_DESCRIPTIONS = (("size", "colour", "shape"), ("size", "colour", "shape"),
                 ("colour", "shape"), ("colour", "shape"), ("colour", "shape"),
                 ("size", "shape"), ("shape",), ("colour",), ("size", "colour"))
_DEFINITE = (("colour", "shape"), ("shape",), ("colour",), ("size", "shape"),
             ("size", "colour", "shape"))


def _desc(s: _Scene, i: int, rng: random.Random,
          attrs: tuple[str, ...] | None = None) -> str:
  """Words for object i without an article, e.g. 'small red triangle'."""
  attrs = attrs or rng.choice(_DESCRIPTIONS)
  words = []
  if "size" in attrs:
    words.append(rng.choice(_SIZE_WORDS[s.sizes[i]]))
  if "colour" in attrs:
    words.append(COLOURS[s.colours[i]])
  words.append(SHAPES[s.shapes[i]] if "shape" in attrs else rng.choice(_NOUNS))
  return " ".join(words)


def _a(s: _Scene, i: int, rng: random.Random,
       attrs: tuple[str, ...] | None = None) -> str:
  return _article(_desc(s, i, rng, attrs))


def _the(s: _Scene, i: int, rng: random.Random) -> str | None:
  """'the ...' naming object i and no other one, or None if none does."""
  others = [j for j in range(s.n) if j != i]
  unique = [attrs for attrs in _DEFINITE
            if not any(all(s.attribute(a)[j] == s.attribute(a)[i]
                           for a in attrs) for j in others)]
  return "the " + _desc(s, i, rng, rng.choice(unique)) if unique else None


def _bg(s: _Scene, rng: random.Random) -> str:
  colour = BACKGROUND_COLOURS[s.background_colour]
  texture = rng.choice(_TEXTURE_WORDS[s.texture] + ("",))
  words = [texture, colour] if rng.random() < 0.5 else [colour, texture]
  return _article(" ".join(w for w in words if w) + " background")


def _count(s: _Scene, rng: random.Random) -> str:
  plural = "s" if s.n > 1 else ""
  return f"{COUNT_WORDS[s.n - 1]} {rng.choice(_NOUNS)}{plural}"


def _relation(s: _Scene, i: int, j: int, rng: random.Random) -> str | None:
  """Where object i is relative to j, on axes where they are not aligned."""
  dx = s.positions[i][0] - s.positions[j][0]
  dy = s.positions[i][1] - s.positions[j][1]
  parts = []
  if abs(dy) >= _ALIGNED:
    parts.append(rng.choice(_ABOVE if dy < 0 else _BELOW))
  if abs(dx) >= _ALIGNED:
    parts.append(rng.choice(_LEFT if dx < 0 else _RIGHT))
  if len(parts) == 2 and rng.random() < 0.3:
    return " and ".join(parts)
  return rng.choice(parts) if parts else None


def _related_pairs(s: _Scene, rng: random.Random
                   ) -> Iterator[tuple[int, int, str]]:
  pairs = [(i, j) for i in range(s.n) for j in range(s.n) if i != j]
  for k in _order(rng, len(pairs)):
    i, j = pairs[k]
    if (relation := _relation(s, i, j, rng)) is not None:
      yield i, j, relation


def _region(position: tuple[float, float], rng: random.Random) -> str:
  x, y = position
  h = "left" if x < 0.4 else "right" if x > 0.6 else ""
  v = "top" if y < 0.4 else "bottom" if y > 0.6 else ""
  if h and v:
    return rng.choice((f"in the {v} {h} corner", f"at the {v} {h}"))
  if v:
    return rng.choice((f"at the {v}", f"near the {v}"))
  if h:
    return rng.choice((f"on the {h}", f"on the {h} side"))
  return rng.choice(("in the centre", "in the middle"))


def _t_list(s: _Scene, rng: random.Random) -> str:
  if s.n == 1:
    return rng.choice((f"a single {_desc(s, 0, rng)} on {_bg(s, rng)}",
                       f"just one {rng.choice(_NOUNS)}, {_a(s, 0, rng)}"))
  items = _join([_a(s, i, rng) for i in _order(rng, s.n)])
  return rng.choice((f"{_count(s, rng)} on {_bg(s, rng)}: {items}",
                     f"{_count(s, rng)}: {items}", f"{items} on {_bg(s, rng)}"))


def _t_relation(s: _Scene, rng: random.Random) -> str | None:
  if s.n == 1:
    return f"{_a(s, 0, rng)} {_region(s.positions[0], rng)}"
  for i, j, relation in _related_pairs(s, rng):
    return f"{_a(s, i, rng)} {relation} {_a(s, j, rng)}"
  return None


def _t_including(s: _Scene, rng: random.Random) -> str:
  if s.n == 1:
    return f"{_bg(s, rng)} with a single {_desc(s, 0, rng)}"
  i = rng.randrange(s.n)
  count, obj = _count(s, rng), _a(s, i, rng)
  return rng.choice((f"{count} on {_bg(s, rng)}, including {obj}",
                     f"{count}, among them {obj}",
                     f"a picture of {count} including {obj}"))


def _t_definite(s: _Scene, rng: random.Random) -> str | None:
  if s.n == 1:
    noun = rng.choice(_NOUNS)
    return rng.choice((f"the only {noun} in the image is {_a(s, 0, rng)}",
                       f"there is only one {noun}, {_a(s, 0, rng)}"))
  for i, j, relation in _related_pairs(s, rng):
    first, second = _the(s, i, rng), _the(s, j, rng)
    if first and second:
      return f"{first} is {relation} {second}"
  return None


_EXTREMES = ((0, -1, ("the leftmost {}", "the {} on the left")),
             (0, 1, ("the rightmost {}", "the {} on the right")),
             (1, -1, ("the topmost {}", "the highest {}", "the {} at the top")),
             (1, 1, ("the lowest {}", "the {} at the bottom")))


def _t_extreme(s: _Scene, rng: random.Random) -> str | None:
  if s.n == 1:
    return f"{_a(s, 0, rng)} {_region(s.positions[0], rng)} of {_bg(s, rng)}"
  for k in _order(rng, len(_EXTREMES)):
    axis, sign, phrases = _EXTREMES[k]
    along = [sign * p[axis] for p in s.positions]
    first, second = sorted(range(s.n), key=along.__getitem__, reverse=True)[:2]
    if along[first] - along[second] >= _ALIGNED:
      subject = rng.choice(phrases).format(rng.choice(_NOUNS))
      return f"{subject} is {_a(s, first, rng)}"
  return None


def _t_background(s: _Scene, rng: random.Random) -> str:
  items = _join([_a(s, i, rng) for i in _order(rng, s.n)])
  return f"{_bg(s, rng)} with {items}"


def _t_colours(s: _Scene, rng: random.Random) -> str:
  order = _order(rng, s.n)
  names = [COLOURS[c] for c in dict.fromkeys(s.colours[i] for i in order)]
  if s.n == 1:
    return f"{_article(names[0])} {rng.choice(_NOUNS)} on {_bg(s, rng)}"
  if len(names) == 1:
    head, _, noun = _count(s, rng).partition(" ")
    return f"{head} {names[0]} {noun}"
  return f"{_count(s, rng)} in {_join(names)}"


def _t_shapes(s: _Scene, rng: random.Random) -> str:
  if s.n == 1:
    shape, colour = SHAPES[s.shapes[0]], COLOURS[s.colours[0]]
    return rng.choice((f"{_article(shape)} coloured {colour}",
                       f"{_a(s, 0, rng, ('size', 'shape'))} in {colour}"))
  items = _join([_a(s, i, rng, ("shape",)) for i in _order(rng, s.n)])
  return f"{items} on {_bg(s, rng)}"


def _t_sizes(s: _Scene, rng: random.Random) -> str | None:
  if len(set(s.sizes)) == 1:
    head, _, noun = _count(s, rng).partition(" ")
    phrase = f"{head} {rng.choice(_SIZE_WORDS[s.sizes[0]])} {noun}"
    if s.n == 1 or rng.random() < 0.5:
      return f"{phrase} on {_bg(s, rng)}"
    example = _a(s, rng.randrange(s.n), rng, ("colour", "shape"))
    return f"{phrase}, including {example}"
  i = rng.choice([k for k in range(s.n) if s.sizes[k] == 0])
  j = rng.choice([k for k in range(s.n) if s.sizes[k] == 1])
  if (s.colours[i], s.shapes[i]) == (s.colours[j], s.shapes[j]):
    return None  # "a red star smaller than a red star" says nothing.
  comparative = "smaller"
  if rng.random() < 0.5:
    i, j, comparative = j, i, rng.choice(("bigger", "larger"))
  no_size = ("colour", "shape")
  first, second = _a(s, i, rng, no_size), _a(s, j, rng, no_size)
  return f"{first} {comparative} than {second}"


_TEMPLATES = (_t_list, _t_relation, _t_including, _t_definite, _t_extreme,
              _t_background, _t_colours, _t_shapes, _t_sizes)


def _captions(scene: _Scene, rng: random.Random) -> list[str]:
  """5 distinct true captions, from different templates where possible."""
  order = _order(rng, len(_TEMPLATES))
  out = []
  for k in order * 4:
    caption = _TEMPLATES[k](scene, rng)
    if caption and caption not in out:
      out.append(caption)
      if len(out) == NUM_CAPTIONS:
        return out
  raise RuntimeError(f"No {NUM_CAPTIONS} distinct captions for {scene}.")


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
  return Shapes(config=config, data_dir=data_dir)
