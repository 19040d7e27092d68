"""The default shapes steps and the text encoder compiled with the options
`vldd_jax.compile_options` gives their kind, with the other kind's options, and
with XLA's defaults, timed alternately in one process.

  python -m benchmarks.compile_options [--rounds=4]

Steps: the exact meta step (10 student steps of 50 pairs, DSA on, as
`configs/shapes.py` distills), the student's train step (a batch of 128 real
pairs, as the experts train) and MiniLM encoding 512 captions (as the data
stage does, packed into rows of 32 tokens). Each round runs every variant
`--repeats` times; a cell is the median over all runs after the first. Writes
benchmarks/results/compile_options.{json,md}.
"""
import statistics
import time
from unittest import mock

import jax
import numpy as np
from absl import app, flags

from benchmarks import caption_mix
from benchmarks import common
from benchmarks import shapes_problem
from vldd_jax import compile_options
from vldd_jax import objectives
from vldd_jax import text
from vldd_jax import trainer

_ROUNDS = flags.DEFINE_integer("rounds", 4, "Alternating rounds.")
_REPEATS = flags.DEFINE_integer("repeats", 3, "Runs of each variant per round.")

_KINDS = {"meta step": "steps", "train step": "steps", "text encoder": "text_encoder"}
_OTHER = {"steps": "text_encoder", "text_encoder": "steps"}


def _options(options: dict | None):
  """Every `compile_options.jit` made inside compiles with `options`."""
  return mock.patch.object(compile_options, "compiler_options",
                           lambda kind="steps": options)


def _meta_step(options: dict | None):
  with _options(options):
    _, student, _, meta_step, state, starts, targets, key = shapes_problem.build(10)
    run = meta_step.lower(state, starts, targets, student.frozen, key).compile()

  def call():
    nonlocal state
    state, loss = run(state, starts, targets, student.frozen, key)
    jax.block_until_ready(loss)

  return call


def _train_step(options: dict | None):
  config, student, *_ = shapes_problem.build(1)
  tx = trainer.make_optimizer(config.experts.lr, config.experts.momentum)
  with _options(options):
    step = trainer.make_train_step(trainer.student_loss(student.apply_fn,
                                                        objectives.Plain()), tx)
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, (config.experts.batch_size, 32, 32, 3), np.uint8)
  text_emb = rng.standard_normal((config.experts.batch_size, 384)).astype(np.float32)
  params, opt_state = student.trainable, tx.init(student.trainable)

  def call():
    nonlocal params, opt_state
    params, opt_state, loss, _ = step(params, opt_state, student.frozen, images, text_emb,
                                      jax.random.key(0))
    jax.block_until_ready(loss)

  return call


def _text_encoder(options: dict | None):
  with _options(options):
    encoder = text.TextEncoder.from_pretrained()
  captions = caption_mix.captions(512)
  return lambda: encoder.encode(captions, progress=False)


def main(argv):
  del argv
  makers = {"meta step": _meta_step, "train step": _train_step,
            "text encoder": _text_encoder}
  variants = {}
  for name, make in makers.items():
    kind = _KINDS[name]
    for variant, options in (("ours", compile_options.compiler_options(kind)),
                             ("other kind's", compile_options.compiler_options(_OTHER[kind])),
                             ("XLA defaults", None)):
      variants[(name, variant)] = make(options)
  times = {k: [] for k in variants}
  for call in variants.values():
    call()  # Compile and warm up.
  for _ in range(_ROUNDS.value):
    for k, call in variants.items():
      for _ in range(_REPEATS.value):
        start = time.perf_counter()
        call()
        times[k].append(time.perf_counter() - start)
  rows = []
  for name, kind in _KINDS.items():
    ours, other, xla = (statistics.median(times[(name, v)][1:])
                        for v in ("ours", "other kind's", "XLA defaults"))
    rows.append({"step": name, "kind": kind, "compile_options_ms": round(ours * 1e3, 1),
                 "other_kind_ms": round(other * 1e3, 1), "xla_defaults_ms": round(xla * 1e3, 1),
                 "speedup_over_defaults": round(xla / ours, 2),
                 "speedup_over_other_kind": round(other / ours, 2)})
  lines = ["| step (kind) | with its options (ms) | the other kind's options (ms) | "
           "XLA defaults (ms) | speed-up over the other | over defaults |",
           "|---|---:|---:|---:|---:|---:|"]
  lines += [f"| {r['step']} (`{r['kind']}`) | {r['compile_options_ms']} | "
            f"{r['other_kind_ms']} | {r['xla_defaults_ms']} | "
            f"{r['speedup_over_other_kind']}x | {r['speedup_over_defaults']}x |" for r in rows]
  options = {kind: compile_options.compiler_options(kind) for kind in _OTHER}
  common.write("compile_options", {"rows": rows, "options": options,
                                   "machine": common.machine()}, "\n".join(lines))


if __name__ == "__main__":
  app.run(main)
