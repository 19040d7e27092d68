"""Seconds per distillation iteration of each objective and option, side by side.

  python -m benchmarks.objective_speed [--iterations=7]

The default shapes meta step (8 student steps of 50 of 100 pairs, DSA on, meta
batch 1), one fresh process per variant, run in turn: plain LoRA matching,
RepBlend's blending, the EMA of the set, LoRS's similarity (WBCE and sigmoid),
the first-order gradient, and head-only matching (tower frozen, LoRA rank 0)
with the tower in every step and hoisted out of the unroll.
Writes benchmarks/results/objective_speed.{json,md}.
"""
import sys

import jax
from absl import app, flags

from benchmarks import common
from benchmarks import shapes_problem

_ITERATIONS = flags.DEFINE_integer("iterations", 7, "Timed meta steps per variant.")
_CHILD = flags.DEFINE_string("child", None, "Variant to time (internal).")

_HEADS = {"model.trainable": "heads", "model.lora.rank": 0}
VARIANTS = {
    "plain": {},
    "blend (alpha 1)": {"distill.objective": "blend", "distill.ema_decay": 0.0},
    "EMA 0.97": {"distill.objective": "blend", "distill.blend_alpha": 0.0,
                 "distill.ema_decay": 0.97},
    "lowrank wbce": {"distill.objective": "lowrank"},
    "lowrank sigmoid": {"distill.objective": "lowrank", "distill.lowrank_loss": "sigmoid"},
    "first order": {"first_order": True},
    "head-only": _HEADS,
    "head-only, tower hoisted out of the unroll": {**_HEADS, "hoist": True},
}


def _time(name: str, iterations: int) -> dict:
  overrides = dict(VARIANTS[name])
  first_order = overrides.pop("first_order", False)
  hoist = overrides.pop("hoist", False)
  _, student, _, meta_step, state, starts, targets, key = shapes_problem.build(
      8, first_order=first_order, overrides=overrides, hoist_tower=hoist)
  compile_s, iteration_s = shapes_problem.time_meta_step(
      meta_step, state, starts, targets, student.frozen, key, iterations)
  return {"variant": name, "syn_steps": 8, "compile_s": round(compile_s, 2),
          "iteration_s": round(iteration_s, 4),
          "trainable_params": sum(x.size for x in jax.tree.leaves(student.trainable)),
          "peak_rss_mib": round(common.peak_rss_mib())}


def main(argv):
  del argv
  if _CHILD.value:
    common.emit(_time(_CHILD.value, _ITERATIONS.value))
    return
  rows = [common.child_result([sys.executable, "-m", "benchmarks.objective_speed",
                               f"--child={name}", f"--iterations={_ITERATIONS.value}"])
          for name in VARIANTS]
  plain = rows[0]["iteration_s"]
  lines = ["| variant | trainable params | s / iteration | vs plain | compile (s) | "
           "peak RSS (MiB) |", "|---|---:|---:|---:|---:|---:|"]
  lines += [f"| {r['variant']} | {r['trainable_params']:,} | {r['iteration_s']:.3f} | "
            f"{r['iteration_s'] / plain:.2f}x | {r['compile_s']:.1f} | "
            f"{r['peak_rss_mib']} |" for r in rows]
  common.write("objective_speed", {"rows": rows, "machine": common.machine()},
               "\n".join(lines))


if __name__ == "__main__":
  app.run(main)
