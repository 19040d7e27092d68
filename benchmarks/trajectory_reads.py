"""Seconds to read a finished workdir's expert trajectories the way distillation
and the coreset rows do, in this tree and, with `--baseline`, in a baseline
commit (checked out with `git worktree`), alternating, a fresh process a run.

  python -m benchmarks.trajectory_reads --workdir=/tmp/vldd_table1 \
      [--baseline=COMMIT] [--last_epoch=20] [--rounds=3] [--name=trajectory_reads]

Each run times, in that tree's code: `distill.ExpertBuffer` over every finished
expert up to `--last_epoch` (what each distillation loads before its first
iteration), and a `coreset.Selector`'s `correct_at_last_epoch()` called twice
(what `easy` and `easy_k_center` read, a row and a distillation's start each).
Writes benchmarks/results/<name>.{json,md}.
"""
import os
import shutil
import statistics
import sys
import tempfile
import time

from absl import app, flags

from benchmarks import common

_WORKDIR = flags.DEFINE_string("workdir", None, "A workdir with finished experts.",
                               required=True)
_BASELINE = flags.DEFINE_string("baseline", None, "A commit to time beside this tree.")
_LAST_EPOCH = flags.DEFINE_integer("last_epoch", 20, "The buffer's last epoch "
                                   "(table1: max_start_epoch_final + expert_epochs).")
_ROUNDS = flags.DEFINE_integer("rounds", 3, "Runs of each tree.")
_NAME = flags.DEFINE_string("name", "trajectory_reads", "Results file name.")

# Run with the tree as the working directory, so that its vldd_jax is imported.
_CHILD = """
import json, sys, time
from vldd_jax import coreset, distill, trajectories
workdir, last_epoch = sys.argv[1], int(sys.argv[2])
experts = trajectories.finished_experts(workdir)
start = time.perf_counter()
distill.ExpertBuffer(workdir, experts, last_epoch)
buffer_s = time.perf_counter() - start
selector = coreset.Selector(None, workdir, None)
times = []
for _ in range(2):
  start = time.perf_counter()
  selector.correct_at_last_epoch()
  times.append(time.perf_counter() - start)
print(json.dumps({"experts": len(experts), "buffer_s": buffer_s,
                  "correct_first_s": times[0], "correct_again_s": times[1]}))
"""


def run_once(tree: str) -> dict:
  """One fresh process's timings in `tree`."""
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  return common.child_result([sys.executable, "-c", _CHILD, _WORKDIR.value,
                              str(_LAST_EPOCH.value)], cwd=tree, env=env)


def main(argv):
  del argv
  scratch = tempfile.mkdtemp(prefix="trajectory_reads_")
  started = time.perf_counter()
  try:
    with common.worktree(_BASELINE.value, os.path.join(scratch, "baseline")) as baseline:
      trees = {f"baseline ({_BASELINE.value})": baseline} if baseline else {}
      trees[f"this tree ({common.head_commit()})"] = common.ROOT
      runs = {name: [] for name in trees}
      for _ in range(_ROUNDS.value):
        for name, tree in trees.items():
          runs[name].append(run_once(tree))
          print(name, runs[name][-1], flush=True)
  finally:
    shutil.rmtree(scratch, ignore_errors=True)
  keys = ("buffer_s", "correct_first_s", "correct_again_s")
  median = {name: {k: round(statistics.median(r[k] for r in rs), 3) for k in keys}
            for name, rs in runs.items()}
  result = {"workdir": _WORKDIR.value, "last_epoch": _LAST_EPOCH.value,
            "experts": next(iter(runs.values()))[0]["experts"], "runs": runs, "median": median,
            "benchmark_wall_s": round(time.perf_counter() - started, 1),
            "machine": common.machine()}
  lines = ["| tree | expert buffer (s) | correct_at_last_epoch, first (s) | again (s) |",
           "|---|---:|---:|---:|"]
  lines += [f"| {name} | {m['buffer_s']} | {m['correct_first_s']} | {m['correct_again_s']} |"
            for name, m in median.items()]
  common.write(_NAME.value, result, "\n".join(lines))


if __name__ == "__main__":
  app.run(main)
