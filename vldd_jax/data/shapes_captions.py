"""Captions of the `shapes` dataset and the vocabulary they draw on.

Five distinct captions per image from nine templates with paraphrases (object
lists, spatial relations, unique definite references, extreme positions,
backgrounds, colours, shapes, sizes); every caption is true of its scene and
no caption is a bare class label.
"""
from collections.abc import Iterator
import dataclasses
import random

COLOURS = ("red", "orange", "yellow", "green", "cyan", "blue", "purple", "pink")
SHAPES = ("circle", "square", "triangle", "star", "diamond", "cross", "hexagon",
          "heart")
SIZES = ("small", "large")
BACKGROUND_COLOURS = ("black", "grey", "white", "beige", "brown", "navy")
TEXTURES = ("plain", "striped", "checkered", "gradient", "noisy")
COUNT_WORDS = ("one", "two", "three", "four")
NUM_CAPTIONS = 5
ALIGNED = 0.15  # Closer on an axis (image widths): no relation stated.

_SIZE_WORDS = (("small", "little"), ("large", "big"))
_NOUNS = ("shape", "object", "figure")
_TEXTURE_WORDS = (("plain", ""), ("striped",), ("checkered", "checkerboard"),
                  ("gradient", "shaded"), ("noisy", "speckled"))
_ABOVE, _BELOW = ("above", "over"), ("below", "under", "beneath")
_LEFT, _RIGHT = ("to the left of", "left of"), ("to the right of", "right of")


@dataclasses.dataclass(frozen=True)
class Scene:
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


def _desc(s: Scene, i: int, rng: random.Random,
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


def _a(s: Scene, i: int, rng: random.Random,
       attrs: tuple[str, ...] | None = None) -> str:
  return _article(_desc(s, i, rng, attrs))


def _the(s: Scene, i: int, rng: random.Random) -> str | None:
  """'the ...' naming object i and no other one, or None if none does."""
  others = [j for j in range(s.n) if j != i]
  unique = [attrs for attrs in _DEFINITE
            if not any(all(s.attribute(a)[j] == s.attribute(a)[i]
                           for a in attrs) for j in others)]
  return "the " + _desc(s, i, rng, rng.choice(unique)) if unique else None


def _bg(s: Scene, rng: random.Random) -> str:
  colour = BACKGROUND_COLOURS[s.background_colour]
  texture = rng.choice(_TEXTURE_WORDS[s.texture] + ("",))
  words = [texture, colour] if rng.random() < 0.5 else [colour, texture]
  return _article(" ".join(w for w in words if w) + " background")


def _count(s: Scene, rng: random.Random) -> str:
  plural = "s" if s.n > 1 else ""
  return f"{COUNT_WORDS[s.n - 1]} {rng.choice(_NOUNS)}{plural}"


def _relation(s: Scene, i: int, j: int, rng: random.Random) -> str | None:
  """Where object i is relative to j, on axes where they are not aligned."""
  dx = s.positions[i][0] - s.positions[j][0]
  dy = s.positions[i][1] - s.positions[j][1]
  parts = []
  if abs(dy) >= ALIGNED:
    parts.append(rng.choice(_ABOVE if dy < 0 else _BELOW))
  if abs(dx) >= ALIGNED:
    parts.append(rng.choice(_LEFT if dx < 0 else _RIGHT))
  if len(parts) == 2 and rng.random() < 0.3:
    return " and ".join(parts)
  return rng.choice(parts) if parts else None


def _related_pairs(s: Scene, rng: random.Random
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


def _t_list(s: Scene, rng: random.Random) -> str:
  if s.n == 1:
    return rng.choice((f"a single {_desc(s, 0, rng)} on {_bg(s, rng)}",
                       f"just one {rng.choice(_NOUNS)}, {_a(s, 0, rng)}"))
  items = _join([_a(s, i, rng) for i in _order(rng, s.n)])
  return rng.choice((f"{_count(s, rng)} on {_bg(s, rng)}: {items}",
                     f"{_count(s, rng)}: {items}", f"{items} on {_bg(s, rng)}"))


def _t_relation(s: Scene, rng: random.Random) -> str | None:
  if s.n == 1:
    return f"{_a(s, 0, rng)} {_region(s.positions[0], rng)}"
  for i, j, relation in _related_pairs(s, rng):
    return f"{_a(s, i, rng)} {relation} {_a(s, j, rng)}"
  return None


def _t_including(s: Scene, rng: random.Random) -> str:
  if s.n == 1:
    return f"{_bg(s, rng)} with a single {_desc(s, 0, rng)}"
  i = rng.randrange(s.n)
  count, obj = _count(s, rng), _a(s, i, rng)
  return rng.choice((f"{count} on {_bg(s, rng)}, including {obj}",
                     f"{count}, among them {obj}",
                     f"a picture of {count} including {obj}"))


def _t_definite(s: Scene, rng: random.Random) -> str | None:
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


def _t_extreme(s: Scene, rng: random.Random) -> str | None:
  if s.n == 1:
    return f"{_a(s, 0, rng)} {_region(s.positions[0], rng)} of {_bg(s, rng)}"
  for k in _order(rng, len(_EXTREMES)):
    axis, sign, phrases = _EXTREMES[k]
    along = [sign * p[axis] for p in s.positions]
    first, second = sorted(range(s.n), key=along.__getitem__, reverse=True)[:2]
    if along[first] - along[second] >= ALIGNED:
      subject = rng.choice(phrases).format(rng.choice(_NOUNS))
      return f"{subject} is {_a(s, first, rng)}"
  return None


def _t_background(s: Scene, rng: random.Random) -> str:
  items = _join([_a(s, i, rng) for i in _order(rng, s.n)])
  return f"{_bg(s, rng)} with {items}"


def _t_colours(s: Scene, rng: random.Random) -> str:
  order = _order(rng, s.n)
  names = [COLOURS[c] for c in dict.fromkeys(s.colours[i] for i in order)]
  if s.n == 1:
    return f"{_article(names[0])} {rng.choice(_NOUNS)} on {_bg(s, rng)}"
  if len(names) == 1:
    head, _, noun = _count(s, rng).partition(" ")
    return f"{head} {names[0]} {noun}"
  return f"{_count(s, rng)} in {_join(names)}"


def _t_shapes(s: Scene, rng: random.Random) -> str:
  if s.n == 1:
    shape, colour = SHAPES[s.shapes[0]], COLOURS[s.colours[0]]
    return rng.choice((f"{_article(shape)} coloured {colour}",
                       f"{_a(s, 0, rng, ('size', 'shape'))} in {colour}"))
  items = _join([_a(s, i, rng, ("shape",)) for i in _order(rng, s.n)])
  return f"{items} on {_bg(s, rng)}"


def _t_sizes(s: Scene, rng: random.Random) -> str | None:
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


def captions(scene: Scene, rng: random.Random) -> list[str]:
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
