"""A deterministic mix of shapes-style and Flickr-style captions to encode."""
import numpy as np

_COLOURS = ["red", "blue", "green", "yellow", "purple", "orange", "white", "black"]
_SHAPES = ["circle", "square", "triangle", "star", "hexagon", "cross"]
_RELATIONS = ["above", "below", "to the left of", "to the right of", "next to"]
_SUBJECTS = ["A man", "A woman", "Two children", "A brown dog", "A group of people",
             "An old man", "A young girl", "Several cyclists"]
_ACTIONS = ["is walking along", "are playing near", "sits beside", "runs across",
            "is standing in front of", "are waiting at"]
_PLACES = ["a busy street", "the beach", "a wooden fence", "a snowy hill",
           "a crowded market", "the bus stop", "a small fountain", "the river bank"]


def captions(count: int, seed: int = 0) -> list[str]:
  """Half shapes-style, half Flickr-style captions, deterministic."""
  rng = np.random.default_rng(seed)
  pick = lambda words: words[rng.integers(len(words))]
  out = []
  for i in range(count):
    if i % 2:
      out.append(f"a {pick(['small', 'large'])} {pick(_COLOURS)} {pick(_SHAPES)} "
                 f"{pick(_RELATIONS)} a {pick(_COLOURS)} {pick(_SHAPES)}")
    else:
      out.append(f"{pick(_SUBJECTS)} {pick(_ACTIONS)} {pick(_PLACES)} "
                 f"while it {pick(['rains', 'snows', 'gets dark', 'is sunny'])}.")
  return out
