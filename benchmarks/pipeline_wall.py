"""Wall time of a whole run, this tree against an earlier commit, side by side.

  python -m benchmarks.pipeline_wall --baseline=b8ca95e [--config=configs/shapes.py]
      [--rounds=2]
  python -m benchmarks.pipeline_wall --baseline=b8ca95e --config=configs/shapes.py:table1

Each run starts a fresh process on an empty workdir with an empty XLA cache,
as a new user's first run does; the two trees alternate (baseline first), so
a machine that slows down during the benchmark slows both. The baseline is
checked out with `git worktree` into a temporary folder and run from there.
Writes benchmarks/results/pipeline_wall.{json,md} (pipeline_wall_<arg> for a
config argument such as `:table1`); stage times come from the timestamps of
each stage's last log line.
"""
import datetime
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

from absl import app, flags

from benchmarks import common

_BASELINE = flags.DEFINE_string("baseline", None, "Commit to compare with.", required=True)
_CONFIG = flags.DEFINE_string("config", "configs/shapes.py", "Config (and :arg) to run.")
_ROUNDS = flags.DEFINE_integer("rounds", 2, "Runs of each tree.")

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The line that ends each stage in the log (absl's "I1201 02:18:19.313038 ..." prefix).
_STAGE_ENDS = (("data", r"prepare\.py:\d+\] Split test"),
               ("pretrain", r"pretrain\.py:\d+\] Pretrained tower"),
               ("experts", r"experts\.py:\d+\] Expert \d+ finished"),
               ("distill", r"distill\.py:\d+\] Distilled"),
               ("evaluate", r"evaluate\.py:\d+\] Results written"),
               ("compare", r"compare\.py:\d+\] Comparison of \d+ cells written"))
_STAMP = re.compile(r"^[IWE]\d{4} (\d\d):(\d\d):(\d\d\.\d+)")


def _seconds(line: str) -> float:
  h, m, s = _STAMP.match(line).groups()
  return int(h) * 3600 + int(m) * 60 + float(s)


def stage_seconds(log: str, start: float) -> dict[str, float]:
  """Seconds each stage took: from the previous stage's end (or the process's
  start, `start` in seconds since midnight) to its own last line before the
  next stage's first (compare distils again, after evaluate)."""
  lines = [l for l in log.splitlines() if _STAMP.match(l)]
  hits = [[i for i, l in enumerate(lines) if re.search(pattern, l)]
          for _, pattern in _STAGE_ENDS]
  out, previous = {}, start
  for k, (stage, _) in enumerate(_STAGE_ENDS):
    later = [h[0] for h in hits[k + 1:] if h]
    ends = [i for i in hits[k] if not later or i < later[0]]
    if ends:
      end = _seconds(lines[ends[-1]])
      out[stage], previous = round(end - previous, 1), end
  return out


def run_once(tree: str, scratch: str) -> dict:
  """One run of the pipeline from `tree` on an empty workdir and XLA cache."""
  workdir, cache = tempfile.mkdtemp(dir=scratch), tempfile.mkdtemp(dir=scratch)
  now = datetime.datetime.now()  # absl stamps its lines in local time.
  start_of_day = now.hour * 3600 + now.minute * 60 + now.second + now.microsecond / 1e6
  start = time.perf_counter()
  result = subprocess.run(
      [sys.executable, "-m", "vldd_jax.main", f"--config={_CONFIG.value}",
       f"--workdir={workdir}", f"--compile_cache={cache}"],
      cwd=tree, capture_output=True, text=True, check=False)
  wall = time.perf_counter() - start
  if result.returncode:
    raise RuntimeError(f"{tree}: exit {result.returncode}\n{result.stderr[-3000:]}")
  log = result.stderr.replace("\r", "\n")
  return {"wall_s": round(wall, 1),
          "stages_s": stage_seconds(log, start_of_day)}


def main(argv):
  del argv
  scratch = tempfile.mkdtemp(prefix="pipeline_wall_")
  commit = common.head_commit()
  runs = {"baseline": [], "this tree": []}
  started = time.perf_counter()
  try:
    with common.worktree(_BASELINE.value, os.path.join(scratch, "baseline")) as baseline:
      for _ in range(_ROUNDS.value):
        for name, tree in (("baseline", baseline), ("this tree", _ROOT)):
          runs[name].append(run_once(tree, scratch))
          print(name, runs[name][-1], flush=True)
  finally:
    shutil.rmtree(scratch, ignore_errors=True)  # Workdirs and caches: ~0.5 GB a run.
  median = {k: statistics.median(r["wall_s"] for r in v) for k, v in runs.items()}
  ratio = median["this tree"] / median["baseline"]
  result = {"config": _CONFIG.value, "baseline": _BASELINE.value, "this_tree": commit,
            "runs": runs, "median_wall_s": median, "ratio": round(ratio, 3),
            "benchmark_wall_s": round(time.perf_counter() - started, 1),
            "machine": common.machine()}
  stages = [s for s, _ in _STAGE_ENDS
            if any(s in r["stages_s"] for tree_runs in runs.values() for r in tree_runs)]
  lines = [f"`python -m benchmarks.pipeline_wall --baseline={_BASELINE.value} "
           f"--config={_CONFIG.value} --rounds={_ROUNDS.value}` "
           f"({result['benchmark_wall_s'] / 60:.0f} min; empty workdir and XLA cache "
           "per run, trees alternating)", "",
           "| tree | run | wall (s) | " + " | ".join(stages) + " |",
           "|---|---:|---:|" + "---:|" * len(stages)]
  for name, tree_runs in runs.items():
    label = f"{name} ({_BASELINE.value if name == 'baseline' else commit})"
    for i, r in enumerate(tree_runs, 1):
      lines.append(f"| {label} | {i} | {r['wall_s']} | "
                   + " | ".join(str(r["stages_s"].get(s, "")) for s in stages) + " |")
  lines += ["", f"Median wall time: this tree {ratio:.2f}x the baseline's."]
  arg = _CONFIG.value.partition(":")[2]
  common.write("pipeline_wall" + (f"_{arg}" if arg else ""), result,
               "\n".join(lines) + "\n")


if __name__ == "__main__":
  app.run(main)
