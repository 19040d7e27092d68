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
import subprocess
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

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Run with the tree as the working directory, so that its vldd_jax is imported.
_CHILD = """
import json, sys, time
from vldd_jax import coreset, distill, trajectories
from vldd_jax.data import input_pipeline
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
  trees = {}
  scratch = tempfile.mkdtemp(prefix="trajectory_reads_")
  commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=_ROOT, check=True,
                          capture_output=True, text=True).stdout.strip()
  if _BASELINE.value:
    baseline = os.path.join(scratch, "baseline")
    subprocess.run(["git", "worktree", "add", "--detach", baseline, _BASELINE.value],
                   cwd=_ROOT, check=True, capture_output=True)
    trees[f"baseline ({_BASELINE.value})"] = baseline
  trees[f"this tree ({commit})"] = _ROOT
  runs = {name: [] for name in trees}
  started = time.perf_counter()
  try:
    for _ in range(_ROUNDS.value):
      for name, tree in trees.items():
        runs[name].append(run_once(tree))
        print(name, runs[name][-1], flush=True)
  finally:
    if _BASELINE.value:
      subprocess.run(["git", "worktree", "remove", "--force", baseline], cwd=_ROOT,
                     check=False, capture_output=True)
    shutil.rmtree(scratch, ignore_errors=True)
  keys = ("buffer_s", "correct_first_s", "correct_again_s")
  median = {name: {k: round(statistics.median(r[k] for r in rs), 3) for k in keys}
            for name, rs in runs.items()}
  result = {"workdir": _WORKDIR.value, "last_epoch": _LAST_EPOCH.value,
            "experts": runs[name][0]["experts"], "runs": runs, "median": median,
            "benchmark_wall_s": round(time.perf_counter() - started, 1),
            "machine": common.machine()}
  lines = ["| tree | expert buffer (s) | correct_at_last_epoch, first (s) | again (s) |",
           "|---|---:|---:|---:|"]
  lines += [f"| {name} | {m['buffer_s']} | {m['correct_first_s']} | {m['correct_again_s']} |"
            for name, m in median.items()]
  common.write(_NAME.value, result, "\n".join(lines))


if __name__ == "__main__":
  app.run(main)
