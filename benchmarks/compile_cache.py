"""Compile times with XLA's persistent cache: a first process, then a second.

Tracing (Python to StableHLO) is not cached; XLA's compilation is.

  python -m benchmarks.compile_cache

Two fresh processes share an empty cache folder (as `main.py`'s
`--compile_cache`, `vldd_jax/xla_cache.py`); each compiles the default shapes meta step (8 student
steps, DSA on) and the evaluation student's train step. The first fills the
cache, the second should read everything back. A third process without the
cache is the control. Writes benchmarks/results/compile_cache.{json,md}.
"""
import sys
import tempfile
import time

import jax
import jax.numpy as jnp
from absl import app, flags

from benchmarks import common
from benchmarks import shapes_problem
from vldd_jax import objectives
from vldd_jax import trainer
from vldd_jax import xla_cache

_CHILD = flags.DEFINE_string("child", None, "Cache folder to compile with (internal; "
                             "'' for none).")


def _compile_times(cache: str) -> dict:
  xla_cache.enable(cache)
  config, student, syn, meta_step, state, starts, targets, key = (
      shapes_problem.build(8))
  start = time.perf_counter()
  lowered = meta_step.lower(state, starts, targets, student.frozen, key)
  trace_s = time.perf_counter() - start
  lowered.compile()
  meta_s = time.perf_counter() - start - trace_s
  loss = trainer.student_loss(student.apply_fn, objectives.Plain(), config.evaluate.augment)
  tx = trainer.make_optimizer(0.1, lr_text=0.1, rates_in_state=True)
  step = trainer.make_train_step(loss, tx)
  batch = config.evaluate.batch_size
  args = (student.trainable, tx.init(student.trainable), student.frozen,
          jnp.asarray(syn["images"][:batch]), jnp.asarray(syn["text_emb"][:batch]), key)
  start = time.perf_counter()
  step.lower(*args).compile()
  return {"syn_steps": 8, "meta_step_trace_s": round(trace_s, 2),
          "meta_step_compile_s": round(meta_s, 2),
          "train_step_compile_s": round(time.perf_counter() - start, 2)}


def main(argv):
  del argv
  if _CHILD.value is not None:
    common.emit(_compile_times(_CHILD.value))
    return
  rows = []
  with tempfile.TemporaryDirectory() as cache:
    for process, folder in (("first (empty cache)", cache), ("second (same cache)", cache),
                            ("no cache", "")):
      rows.append({"process": process, **common.child_result(
          [sys.executable, "-m", "benchmarks.compile_cache", f"--child={folder}"])})
      print(rows[-1], flush=True)
  lines = ["| process | meta step trace (s) | meta step compile (s) | "
           "evaluation train step trace + compile (s) |", "|---|---:|---:|---:|"]
  lines += [f"| {r['process']} | {r['meta_step_trace_s']:.2f} | "
            f"{r['meta_step_compile_s']:.2f} | "
            f"{r['train_step_compile_s']:.2f} |" for r in rows]
  common.write("compile_cache", {"rows": rows, "machine": common.machine(),
                                 "jax": jax.__version__}, "\n".join(lines))


if __name__ == "__main__":
  app.run(main)
