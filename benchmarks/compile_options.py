"""The default shapes steps compiled with `vldd_jax.compile_options` and with
XLA's default options, timed alternately in one process.

  python -m benchmarks.compile_options [--rounds=4]

Steps: the exact meta step (10 student steps of 50 pairs, DSA on, as
`configs/shapes.py` distills) and the student's train step (a batch of 128 real
pairs, as the experts train). Each round runs every variant `--repeats` times;
a cell is the median over all runs after the first. Writes
benchmarks/results/compile_options.{json,md}.
"""
import contextlib
import statistics
import time
from unittest import mock

import jax
import numpy as np
from absl import app, flags

from benchmarks import common
from benchmarks import shapes_problem
from vldd_jax import compile_options
from vldd_jax import objectives
from vldd_jax import trainer

_ROUNDS = flags.DEFINE_integer("rounds", 4, "Alternating rounds.")
_REPEATS = flags.DEFINE_integer("repeats", 3, "Runs of each variant per round.")


def _meta_step(xla_defaults: bool):
  _, student, _, meta_step, state, starts, targets, key = shapes_problem.build(
      10, xla_defaults=xla_defaults)
  run = meta_step.lower(state, starts, targets, student.frozen, key).compile()

  def call():
    nonlocal state
    state, loss = run(state, starts, targets, student.frozen, key)
    jax.block_until_ready(loss)

  return call


def _train_step(xla_defaults: bool):
  config, student, *_ = shapes_problem.build(1)
  tx = trainer.make_optimizer(config.experts.lr, config.experts.momentum)
  with (mock.patch.object(compile_options, "compiler_options", lambda: None)
        if xla_defaults else contextlib.nullcontext()):
    step = trainer.make_train_step(trainer.student_loss(student.apply_fn,
                                                        objectives.Plain()), tx)
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, (config.experts.batch_size, 32, 32, 3), np.uint8)
  text = rng.standard_normal((config.experts.batch_size, 384)).astype(np.float32)
  params, opt_state = student.trainable, tx.init(student.trainable)

  def call():
    nonlocal params, opt_state
    params, opt_state, loss, _ = step(params, opt_state, student.frozen, images, text,
                                      jax.random.key(0))
    jax.block_until_ready(loss)

  return call


def main(argv):
  del argv
  variants = {(name, defaults): make(defaults)
              for name, make in (("meta step", _meta_step), ("train step", _train_step))
              for defaults in (False, True)}
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
  for name in ("meta step", "train step"):
    ours, xla = (statistics.median(times[(name, d)][1:]) for d in (False, True))
    rows.append({"step": name, "compile_options_ms": round(ours * 1e3, 1),
                 "xla_defaults_ms": round(xla * 1e3, 1), "speedup": round(xla / ours, 2)})
  lines = ["| step | with compile_options (ms) | XLA defaults (ms) | speed-up |",
           "|---|---:|---:|---:|"]
  lines += [f"| {r['step']} | {r['compile_options_ms']} | {r['xla_defaults_ms']} | "
            f"{r['speedup']}x |" for r in rows]
  common.write("compile_options", {"rows": rows, "options": compile_options.compiler_options(),
                                   "machine": common.machine()}, "\n".join(lines))


if __name__ == "__main__":
  app.run(main)
