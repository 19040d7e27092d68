"""Speed and memory of the meta step against the number of unrolled student steps.

  python -m benchmarks.distill_bench [--steps=10,20,40,80] [--iterations=7]

On the default shapes model (configs/shapes.py: ViT width 64, depth 2, LoRA
rank 4 + heads trainable; 100 synthetic pairs, 50 per student step, DSA on,
meta batch 1), for each syn_steps and each reverse pass (`REVERSES`: the
written-out Hessian-vector products the meta step uses, and `jax.grad` through
the scan with `jax.checkpoint` on and off), in a fresh process each (so peak
RSS is per setting):

- compile_s: lowering + XLA compilation of the jitted meta step;
- iteration_s: median of `--iterations` meta steps after a warm-up one;
- student_step_s: median time of one plain jitted student SGD step (the same
  loss, augmentation and minibatch size), and R = iteration_s / (syn_steps *
  student_step_s): what the exact meta-gradient costs relative to training;
- step_vjp_s: the reverse pass through one student step (w.r.t. parameters,
  images, texts and rates): by jax.grad, a gradient of a scalar of the step's
  output; written out, the gradient of a one-step unroll less a student step.
  R_floor = (forward + recompute if remat + that reverse pass) / student step:
  the ratio the unroll's structure implies, before any overhead (the written-out
  pass recomputes the step inside its own time);
- XLA's `memory_analysis()` of the compiled meta step (temporaries, arguments,
  outputs) and the process's peak RSS.

Writes benchmarks/results/distill_bench.{json,md}.
"""
import statistics
import sys
import time

import jax
import jax.numpy as jnp
from absl import app, flags

from benchmarks import common
from benchmarks import shapes_problem
from vldd_jax import matching
from vldd_jax import objectives

_STEPS = flags.DEFINE_list("steps", ["10", "20", "40", "80"], "syn_steps values.")
_ITERATIONS = flags.DEFINE_integer("iterations", 7, "Timed meta steps per setting.")
_ONLY_STEPS = flags.DEFINE_integer("only_steps", 0, "Measure one setting (internal).")
_REVERSE = flags.DEFINE_string("reverse", "hvp", "With --only_steps: UnrollConfig.reverse.")
_REMAT = flags.DEFINE_boolean("remat", True, "With --only_steps: jax.checkpoint on.")

# (UnrollConfig.reverse, remat) of each setting; remat only matters to autodiff.
REVERSES = (("hvp", True), ("autodiff", True), ("autodiff", False))

_MIB = 2**20


def _median_time(fn, repeats: int) -> tuple[float, list[float]]:
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(fn())
    times.append(time.perf_counter() - start)
  return statistics.median(times), times


def measure(syn_steps: int, reverse: str, remat: bool, iterations: int) -> dict:
  """One setting, in this process."""
  config, student, syn, meta_step, state, starts, targets, key = shapes_problem.build(
      syn_steps, remat, reverse=reverse)
  cfg = config.distill
  rss_before = common.peak_rss_mib()

  start = time.perf_counter()
  compiled = meta_step.lower(state, starts, targets, student.frozen, key).compile()
  compile_s = time.perf_counter() - start
  memory = compiled.memory_analysis()

  def iterate():
    nonlocal state
    state, loss = compiled(state, starts, targets, student.frozen, key)
    return loss

  iterate()  # Warm-up: first-touch allocations.
  iteration_s, iteration_times = _median_time(iterate, iterations)

  step = jax.jit(matching.make_student_step(student.apply_fn, student.trainable,
                                            objectives.Plain(), cfg.augment))
  batch = (jnp.asarray(syn["images"][:cfg.batch_size]),
           jnp.asarray(syn["text_emb"][:cfg.batch_size]), jnp.exp(syn["log_lr"]))
  step_fn = lambda: step(student.trainable, student.frozen, *batch, key)
  step_fn()
  step_s, _ = _median_time(step_fn, 30)
  if reverse == "autodiff":
    # Reverse mode through one student step (what the meta-gradient adds per
    # step): the gradient of a scalar of its output w.r.t. everything it reads.
    step_vjp = jax.jit(jax.grad(
        lambda p, images, text, lrs: sum(jnp.sum(x) for x in jax.tree.leaves(
            step(p, student.frozen, images, text, lrs, key))), argnums=(0, 1, 2, 3)))
    vjp_fn = lambda: step_vjp(student.trainable, *batch)
  else:  # A one-step unroll's gradient: its forward, then its reverse.
    unroll = matching.make_hvp_unroll(student.apply_fn, student.trainable,
                                      objectives.Plain(), cfg.augment,
                                      cfg.augment_per_image)
    rows, keys = jnp.arange(cfg.batch_size)[None], jax.random.split(key, 1)
    one_step = jax.jit(jax.grad(lambda p, s: sum(jnp.sum(x) for x in jax.tree.leaves(
        unroll(p, s, None, rows, keys, student.frozen))), argnums=(0, 1)))
    vjp_fn = lambda: one_step(student.trainable, jax.tree.map(jnp.asarray, syn))
  vjp_fn()
  vjp_s, _ = _median_time(vjp_fn, 30)
  if reverse == "hvp":
    vjp_s -= step_s
  # Written out, nothing is recomputed outside the reverse pass's own time.
  recomputes = reverse == "autodiff" and remat
  return {
      "syn_steps": syn_steps, "reverse": reverse, "remat": recomputes,
      "compile_s": round(compile_s, 2),
      "iteration_s": round(iteration_s, 4),
      "iteration_times_s": [round(t, 4) for t in iteration_times],
      "student_step_s": round(step_s, 5),
      "R": round(iteration_s / (syn_steps * step_s), 2),
      "step_vjp_s": round(vjp_s, 5),
      # Floor from the parts: forward unroll + (recompute) + reverse per step.
      "R_floor": round(((2 if recomputes else 1) * step_s + vjp_s) / step_s, 2),
      "temp_mib": round(memory.temp_size_in_bytes / _MIB, 2),
      "argument_mib": round(memory.argument_size_in_bytes / _MIB, 2),
      "output_mib": round(memory.output_size_in_bytes / _MIB, 2),
      "peak_rss_mib": round(common.peak_rss_mib(), 1),
      "rss_before_compile_mib": round(rss_before, 1),
      "trainable_params": sum(x.size for x in jax.tree.leaves(student.trainable)),
  }


def table(rows: list[dict]) -> str:
  """Markdown: one row per (syn_steps, reverse pass)."""
  lines = ["| syn_steps | reverse pass | compile (s) | iteration (s) | student step (ms) | "
           "reverse step (ms) | R | R floor | XLA temp (MiB) | peak RSS (MiB) |",
           "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
  for r in rows:
    how = ("Hessian-vector products" if r["reverse"] == "hvp" else
           f"jax.grad, remat {'on' if r['remat'] else 'off'}")
    lines.append(f"| {r['syn_steps']} | {how} | "
                 f"{r['compile_s']:.1f} | {r['iteration_s']:.3f} | "
                 f"{1000 * r['student_step_s']:.1f} | {1000 * r['step_vjp_s']:.1f} | "
                 f"{r['R']:.2f} | {r['R_floor']:.2f} | "
                 f"{r['temp_mib']:.1f} | {r['peak_rss_mib']:.0f} |")
  return "\n".join(lines)


def main(argv):
  del argv
  if _ONLY_STEPS.value:
    common.emit(measure(_ONLY_STEPS.value, _REVERSE.value, _REMAT.value,
                        _ITERATIONS.value))
    return
  rows = []
  for steps in map(int, _STEPS.value):
    for reverse, remat in REVERSES:
      row = common.child_result(
          [sys.executable, "-m", "benchmarks.distill_bench", f"--only_steps={steps}",
           f"--reverse={reverse}", "--remat" if remat else "--noremat",
           f"--iterations={_ITERATIONS.value}"])
      print(row, flush=True)
      rows.append(row)
  by = {(r["syn_steps"], r["reverse"]): r for r in rows if r["reverse"] == "hvp"}
  summary = {}
  if (20, "hvp") in by:
    summary["R_at_20_steps"] = by[20, "hvp"]["R"]
  if (10, "hvp") in by and (80, "hvp") in by:
    summary["temp_80_over_10"] = round(
        by[80, "hvp"]["temp_mib"] / by[10, "hvp"]["temp_mib"], 2)
    summary["rss_80_over_10"] = round(
        by[80, "hvp"]["peak_rss_mib"] / by[10, "hvp"]["peak_rss_mib"], 2)
  common.write("distill_bench", {"rows": rows, "summary": summary,
                                 "machine": common.machine()}, table(rows))


if __name__ == "__main__":
  app.run(main)
