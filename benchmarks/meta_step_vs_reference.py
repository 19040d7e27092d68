"""The meta step next to the PyTorch reference pattern, on the same student.

  python -m benchmarks.meta_step_vs_reference [--steps=10,20,40] [--rounds=3] \
      [--variants=exact,exact_autodiff,first_order] [--name=meta_step_vs_reference] \
      [--reference="/tmp/torchvenv/bin/python ../shared/perf/torch_reference_meta_step.py"]

The reference (unrolled autograd with create_graph=True, as the VLDD/MTT code)
is not part of this project: `--reference` is a command that takes the number
of student steps and prints one JSON line with `iteration_s` and
`peak_rss_mib`; run it from a throwaway virtualenv. Our side is the default
shapes student (ViT width 64, depth 2, LoRA rank 4 + heads), 100 pairs, 50 per
step, augmentation off, meta batch 1, in one of `VARIANTS`: the exact
meta-gradient (its reverse pass written out as Hessian-vector products,
`matching.make_hvp_unroll`); the same compiled with XLA's default options (as
before `vldd_jax.compile_options`); `distill.gradient=first_order`; and the
exact one by `jax.grad` through the scan (`reverse="autodiff"`), each unrolled
step rematerialised keeping only the scan's carry (`exact_autodiff`), also
every matmul output (`exact_remat_dots`,
`jax.checkpoint_policies.dots_saveable`), or every activation
(`exact_no_remat`). Each measurement is its own process (median of
`--iterations` meta steps after a warm-up one); the variants alternate within
each round, and a setting's time is the median over rounds, its memory the
largest peak RSS. Writes benchmarks/results/<name>.{json,md}.
"""
import functools
import shlex
import statistics
import sys

import jax
from absl import app, flags

from benchmarks import common
from benchmarks import shapes_problem

_STEPS = flags.DEFINE_list("steps", ["10", "20", "40"], "syn_steps values.")
_ROUNDS = flags.DEFINE_integer("rounds", 3, "Alternating rounds per setting.")
_ITERATIONS = flags.DEFINE_integer("iterations", 5, "Timed meta steps per process.")
_VARIANTS = flags.DEFINE_list("variants", ["exact", "exact_autodiff", "first_order"],
                              "Which of VARIANTS to run.")
_NAME = flags.DEFINE_string("name", "meta_step_vs_reference", "Results file name.")
_REFERENCE = flags.DEFINE_string("reference", "", "Command of the reference (optional).")
_CHILD = flags.DEFINE_string("child", None, "One of VARIANTS (internal).")
_CHILD_STEPS = flags.DEFINE_integer("child_steps", 0, "syn_steps (internal).")

VARIANTS = ("exact", "exact_xla_defaults", "first_order", "exact_autodiff",
            "exact_remat_dots", "exact_no_remat")
_AUTODIFF = ("exact_autodiff", "exact_remat_dots", "exact_no_remat")


def _measure(steps: int, variant: str, iterations: int) -> dict:
  if variant == "exact_remat_dots":  # This child only: matching.py's remat keeps dots.
    jax.checkpoint = functools.partial(jax.checkpoint,
                                       policy=jax.checkpoint_policies.dots_saveable)
  _, student, _, meta_step, state, starts, targets, key = shapes_problem.build(
      steps, remat=variant != "exact_no_remat", augment=False,
      first_order=variant == "first_order", xla_defaults=variant == "exact_xla_defaults",
      reverse="autodiff" if variant in _AUTODIFF else "hvp")
  _, iteration_s = shapes_problem.time_meta_step(meta_step, state, starts, targets,
                                                 student.frozen, key, iterations)
  return {"impl": f"vldd_jax {variant}", "syn_steps": steps,
          "iteration_s": round(iteration_s, 4),
          "peak_rss_mib": round(common.peak_rss_mib())}


def main(argv):
  del argv
  if _CHILD.value:
    common.emit(_measure(_CHILD_STEPS.value, _CHILD.value, _ITERATIONS.value))
    return
  unknown = set(_VARIANTS.value) - set(VARIANTS)
  if unknown:
    raise app.UsageError(f"--variants: unknown {sorted(unknown)}; expected some of {VARIANTS}")
  names = tuple(_VARIANTS.value) + (("reference",) if _REFERENCE.value else ())
  runs = []
  for steps in map(int, _STEPS.value):
    for _ in range(_ROUNDS.value):
      for name in names:
        cmd = (shlex.split(_REFERENCE.value) + [str(steps)] if name == "reference" else
               [sys.executable, "-m", "benchmarks.meta_step_vs_reference",
                f"--child={name}", f"--child_steps={steps}",
                f"--iterations={_ITERATIONS.value}"])
        runs.append({"name": name, "syn_steps": steps, **common.child_result(cmd)})
        print(runs[-1], flush=True)
  rows = []
  for steps in map(int, _STEPS.value):
    row = {"syn_steps": steps}
    for name in names:
      mine = [r for r in runs if r["name"] == name and r["syn_steps"] == steps]
      row[f"{name}_s"] = statistics.median(r["iteration_s"] for r in mine)
      row[f"{name}_rss_mib"] = max(r["peak_rss_mib"] for r in mine)
    rows.append(row)
  ours = names[:len(_VARIANTS.value)]
  ratios = [f"{n} / reference" for n in ours] if _REFERENCE.value else []
  lines = ["| syn_steps | " + " | ".join(f"{n} (s)" for n in names) + " | " +
           "".join(f"{r} | " for r in ratios) + "RSS " + " / ".join(names) + " (MiB) |",
           "|---:|" + "---:|" * (len(names) + len(ratios)) + "---|"]
  for r in rows:
    cells = [f"{r[f'{n}_s']:.3f}" for n in names]
    cells += [f"{r[f'{n}_s'] / r['reference_s']:.2f}x" for n in ours] if ratios else []
    rss = " / ".join(str(r[f"{n}_rss_mib"]) for n in names)
    lines.append(f"| {r['syn_steps']} | " + " | ".join(cells) + f" | {rss} |")
  common.write(_NAME.value, {"rows": rows, "runs": runs, "reference": _REFERENCE.value,
                             "machine": common.machine()}, "\n".join(lines))


if __name__ == "__main__":
  app.run(main)
