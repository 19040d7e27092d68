r"""Writes `glyphs`, a Karpathy-format image-caption set unlike `shapes`, offline.

Distillation settings tuned on `shapes` need checking on data nobody tuned them
for. `glyphs` has other statistics: one or two rendered letters or digits (Pillow's
scalable default font, random size and angle) in several colours, on a
background of another colour that is plain, a gradient, striped or noisy; five
templated captions per image name the glyphs, their colours, sizes and places,
and the background. It goes through the user's path (`configs/karpathy.py`):

  python -m benchmarks.glyphs_karpathy --out=/tmp/glyphs
  python -m vldd_jax.main --config=configs/karpathy.py:image_size=32 \
      --config.data.ann_file=/tmp/glyphs/dataset_glyphs.json \
      --config.data.image_root=/tmp/glyphs/images --workdir=/tmp/vldd_glyphs
"""
import json
import os

import numpy as np
from absl import app, flags
from PIL import Image, ImageDraw, ImageFont

_OUT = flags.DEFINE_string("out", None, "Folder for dataset_glyphs.json and images/.")
_SPLITS = flags.DEFINE_list("splits", ["train=3000", "val=300", "test=300"],
                            "Images per Karpathy split.")
_SEED = flags.DEFINE_integer("seed", 0, "The set is a function of its seed and sizes.")

SIZE = 32
COLOURS = {"red": (220, 40, 40), "green": (40, 170, 60), "blue": (50, 80, 220),
           "yellow": (235, 210, 40), "purple": (150, 60, 190), "orange": (240, 140, 30),
           "white": (245, 245, 245), "black": (20, 20, 20)}
GLYPHS = {**{str(d): f"digit {d}" for d in range(10)},
          **{c: f"letter {c}" for c in "AEHKMRSTXZ"}}
TEXTURES = ("plain", "gradient", "striped", "noisy")
PLACES = {"left": (0.28, 0.5), "right": (0.72, 0.5), "top": (0.5, 0.28),
          "bottom": (0.5, 0.72), "centre": (0.5, 0.5)}


def _background(rng: np.random.Generator, colour: tuple, texture: str) -> np.ndarray:
  base = np.ones((SIZE * 2, SIZE * 2, 3)) * np.array(colour, float)
  ys, xs = np.mgrid[0:SIZE * 2, 0:SIZE * 2] / (SIZE * 2)
  if texture == "gradient":
    base *= (0.45 + 0.55 * (xs if rng.random() < 0.5 else ys))[..., None]
  elif texture == "striped":
    base *= (0.65 + 0.35 * (np.sin(ys * rng.integers(8, 16) * np.pi) > 0))[..., None]
  elif texture == "noisy":
    base *= rng.uniform(0.55, 1.0, base.shape[:2])[..., None]
  return base


def render(rng: np.random.Generator) -> tuple[np.ndarray, list[str]]:
  """One image (uint8 [32, 32, 3]) and its five captions."""
  names = list(COLOURS)
  bg_colour, texture = names[rng.integers(len(names))], TEXTURES[rng.integers(4)]
  image = Image.fromarray(_background(rng, COLOURS[bg_colour], texture).astype(np.uint8))
  count = 1 + int(rng.random() < 0.5)
  places = rng.choice(["left", "right"] if count == 2 else list(PLACES), count,
                      replace=False)
  objects = []
  for place in places:
    colour = rng.choice([n for n in names if n != bg_colour])
    glyph = rng.choice(list(GLYPHS))
    big = rng.random() < 0.5
    font = ImageFont.load_default(size=int(SIZE * (1.1 if big else 0.7)))
    layer = Image.new("L", image.size, 0)
    cx, cy = PLACES[place]
    ImageDraw.Draw(layer).text((cx * SIZE * 2, cy * SIZE * 2), glyph, fill=255,
                               font=font, anchor="mm")
    layer = layer.rotate(rng.uniform(-25, 25), center=(cx * SIZE * 2, cy * SIZE * 2))
    image.paste(Image.new("RGB", image.size, COLOURS[colour]), mask=layer)
    objects.append((("large" if big else "small"), colour, GLYPHS[glyph], place))
  image = image.resize((SIZE, SIZE), Image.LANCZOS)
  things = [f"a {size} {colour} {glyph}" for size, colour, glyph, _ in objects]
  placed = [f"{t} on the {place}" if place != "centre" else f"{t} in the middle"
            for t, (*_, place) in zip(things, objects)]
  ground = f"{texture} {bg_colour} background"
  plain = [f"{colour} {glyph}" for _, colour, glyph, _ in objects]
  captions = [
      " and ".join(placed) + f" on a {ground}",
      f"{' and '.join(things)} drawn over a {ground}",
      f"a {ground} with {' and '.join(plain)}",
      f"{' and '.join(p.replace('digit ', '').replace('letter ', '') for p in plain)} "
      f"on {bg_colour}",
      f"an image of {' and '.join(plain)}, the background {texture} and {bg_colour}",
  ]
  return np.asarray(image), captions


def main(argv: list[str]) -> None:
  del argv
  rng = np.random.default_rng(_SEED.value)
  os.makedirs(os.path.join(_OUT.value, "images"), exist_ok=True)
  entries = []
  for item in _SPLITS.value:
    split, count = item.split("=")
    for _ in range(int(count)):
      pixels, captions = render(rng)
      name = f"{len(entries):05d}.png"
      Image.fromarray(pixels).save(os.path.join(_OUT.value, "images", name))
      entries.append({"filename": name, "split": split,
                      "sentences": [{"raw": c} for c in captions]})
  with open(os.path.join(_OUT.value, "dataset_glyphs.json"), "w") as f:
    json.dump({"images": entries, "dataset": "glyphs"}, f)
  print(f"Wrote {len(entries)} images to {_OUT.value}.")


if __name__ == "__main__":
  flags.mark_flag_as_required("out")
  app.run(main)
