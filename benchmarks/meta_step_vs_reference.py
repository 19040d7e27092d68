"""The meta step next to the PyTorch reference pattern, on the same student.

  python -m benchmarks.meta_step_vs_reference [--steps=10,20,40] [--rounds=3] \
      [--reference="/tmp/torchvenv/bin/python ../shared/perf/torch_reference_meta_step.py"]

The reference (unrolled autograd with create_graph=True, as the VLDD/MTT code)
is not part of this project: `--reference` is a command that takes the number
of student steps and prints one JSON line with `iteration_s` and
`peak_rss_mib`; run it from a throwaway virtualenv. Our side is the default
shapes student (ViT width 64, depth 2, LoRA rank 4 + heads), 100 pairs, 50 per
step, augmentation off, meta batch 1, with the exact meta-gradient and with
`distill.gradient=first_order`, and the exact one compiled with XLA's default
options (as before `vldd_jax.compile_options`). Each measurement is its own process (median of
`--iterations` meta steps after a warm-up one); the implementations alternate
within each round, and a setting's time is the median over rounds. Writes
benchmarks/results/meta_step_vs_reference.{json,md}.
"""
import shlex
import statistics
import sys

from absl import app, flags

from benchmarks import common
from benchmarks import shapes_problem

_STEPS = flags.DEFINE_list("steps", ["10", "20", "40"], "syn_steps values.")
_ROUNDS = flags.DEFINE_integer("rounds", 3, "Alternating rounds per setting.")
_ITERATIONS = flags.DEFINE_integer("iterations", 5, "Timed meta steps per process.")
_REFERENCE = flags.DEFINE_string("reference", "", "Command of the reference (optional).")
_CHILD = flags.DEFINE_string("child", None, "One of GRADIENTS (internal).")
_CHILD_STEPS = flags.DEFINE_integer("child_steps", 0, "syn_steps (internal).")


GRADIENTS = ("exact", "exact_xla_defaults", "first_order")


def _measure(steps: int, gradient: str, iterations: int) -> dict:
  _, student, _, meta_step, state, starts, targets, key = shapes_problem.build(
      steps, augment=False, first_order=gradient == "first_order",
      xla_defaults=gradient == "exact_xla_defaults")
  _, iteration_s = shapes_problem.time_meta_step(meta_step, state, starts, targets,
                                                 student.frozen, key, iterations)
  return {"impl": f"vldd_jax {gradient}", "syn_steps": steps,
          "iteration_s": round(iteration_s, 4),
          "peak_rss_mib": round(common.peak_rss_mib())}


def main(argv):
  del argv
  if _CHILD.value:
    common.emit(_measure(_CHILD_STEPS.value, _CHILD.value, _ITERATIONS.value))
    return
  runs = []
  for steps in map(int, _STEPS.value):
    for _ in range(_ROUNDS.value):
      cmds = {g: [sys.executable, "-m", "benchmarks.meta_step_vs_reference",
                  f"--child={g}", f"--child_steps={steps}",
                  f"--iterations={_ITERATIONS.value}"] for g in GRADIENTS}
      if _REFERENCE.value:
        cmds["reference"] = shlex.split(_REFERENCE.value) + [str(steps)]
      for name, cmd in cmds.items():
        runs.append({"name": name, "syn_steps": steps, **common.child_result(cmd)})
        print(runs[-1], flush=True)
  rows = []
  for steps in map(int, _STEPS.value):
    row = {"syn_steps": steps}
    for name in GRADIENTS + ("reference",):
      mine = [r for r in runs if r["name"] == name and r["syn_steps"] == steps]
      if mine:
        row[f"{name}_s"] = statistics.median(r["iteration_s"] for r in mine)
        row[f"{name}_rss_mib"] = max(r["peak_rss_mib"] for r in mine)
    rows.append(row)
  lines = ["| syn_steps | exact (s) | exact, XLA defaults (s) | first order (s) | "
           "reference (s) | exact / reference | exact, XLA defaults / reference | "
           "first order / reference | RSS exact / first order / reference (MiB) |",
           "|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
  for r in rows:
    ref = r.get("reference_s")
    ratio = lambda k: f"{r[k] / ref:.2f}x" if ref else "–"
    lines.append(f"| {r['syn_steps']} | {r['exact_s']:.3f} | {r['exact_xla_defaults_s']:.3f} | "
                 f"{r['first_order_s']:.3f} | {ref if ref else '–'} | {ratio('exact_s')} | "
                 f"{ratio('exact_xla_defaults_s')} | {ratio('first_order_s')} | "
                 f"{r['exact_rss_mib']} / {r['first_order_rss_mib']} / "
                 f"{r.get('reference_rss_mib', '–')} |")
  common.write("meta_step_vs_reference", {"rows": rows, "runs": runs,
                                          "reference": _REFERENCE.value,
                                          "machine": common.machine()}, "\n".join(lines))


if __name__ == "__main__":
  app.run(main)
