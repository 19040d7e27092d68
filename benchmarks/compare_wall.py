"""Wall time of stage `compare` on a finished workdir, two ways side by side:
each row's seeds trained one by one (`concurrent_students` at a time in
threads) against one vmapped program a row (`evaluate.vmap_seeds`), or, with
`--baseline`, a baseline commit against this tree.

  python -m benchmarks.compare_wall --workdir=/tmp/vldd_table1 \
      [--config=configs/shapes.py:table1] [--rounds=1] [--baseline=COMMIT] \
      [--name=compare_wall]

`--workdir` is a finished run of `--config` with its `compare` stage done, so
every distilled set is on disk. Each run copies it, leaves out compare.json and
its table and plot, and runs `--config.stage=compare` in a fresh process with
an empty XLA cache: every cell is evaluated again and no set is distilled
again, so what differs is evaluation (coreset selection and students). The two
alternate, the first named first; a baseline is checked out with `git
worktree`. Writes benchmarks/results/<name>.{json,md}: each run's wall time,
the seconds each method's cells took (from compare's log, where the tree logs
them) and the largest difference between the two ways' cells (the same
students up to float32 rounding of batched sums).
"""
import collections
import json
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

_WORKDIR = flags.DEFINE_string("workdir", None, "A finished workdir of --config, compare "
                               "included.", required=True)
_CONFIG = flags.DEFINE_string("config", "configs/shapes.py:table1", "Its config.")
_ROUNDS = flags.DEFINE_integer("rounds", 1, "Runs of each setting.")
_BASELINE = flags.DEFINE_string("baseline", None, "A commit to run against this tree "
                                 "(both one by one), instead of vmapped against one by one.")
_NAME = flags.DEFINE_string("name", "compare_wall", "Results file name.")

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_OUTPUTS = ("compare.json", "compare.md", "compare.png")  # What a compare run writes.
_METRICS = ("tr@1", "tr@5", "tr@10", "ir@1", "ir@5", "ir@10", "r_mean")


def run_once(tree: str, vmap_seeds: bool, scratch: str) -> tuple[dict, list[dict]]:
  """({wall_s, cells_s}, compare.json's rows) of one compare run on a copy, from
  `tree`; cells_s: seconds by method, summed over its budgets."""
  workdir = os.path.join(tempfile.mkdtemp(dir=scratch), "work")
  shutil.copytree(_WORKDIR.value, workdir, ignore=shutil.ignore_patterns(*_OUTPUTS))
  start = time.perf_counter()
  result = subprocess.run(
      [sys.executable, "-m", "vldd_jax.main", f"--config={_CONFIG.value}",
       f"--workdir={workdir}", f"--compile_cache={tempfile.mkdtemp(dir=scratch)}",
       "--config.stage=compare", f"--config.evaluate.vmap_seeds={vmap_seeds}"],
      cwd=tree, capture_output=True, text=True, check=False)
  wall = time.perf_counter() - start
  if result.returncode:
    raise RuntimeError(f"{tree}: exit {result.returncode}\n{result.stderr[-3000:]}")
  if re.search(r"Distilled \d+ pairs into", result.stderr):
    raise RuntimeError(f"{_WORKDIR.value}: a set was distilled again; finish its "
                       "compare stage with this config first.")
  cells = collections.defaultdict(float)
  for method, seconds in re.findall(r"compare: the \((\w+), \d+ pairs\) cell in ([\d.]+) s",
                                    result.stderr):
    cells[method] += float(seconds)
  with open(os.path.join(workdir, "compare.json"), encoding="utf-8") as f:
    rows = json.load(f)["rows"]
  shutil.rmtree(os.path.dirname(workdir))
  return {"wall_s": round(wall, 1), "cells_s": {k: round(v, 1) for k, v in cells.items()}}, rows


def largest_difference(a: list[dict], b: list[dict]) -> float:
  """The largest |difference| of a recall (mean or std over seeds) between two
  runs' cells."""
  cells = {(r["method"], r["budget"]): r for r in b}
  if cells.keys() != {(r["method"], r["budget"]) for r in a}:
    raise ValueError("The two settings filled different cells.")
  return max(abs(r[k] - cells[r["method"], r["budget"]][k])
             for r in a for m in _METRICS for k in (m, f"{m}_std"))


def main(argv):
  del argv
  if not os.path.exists(os.path.join(_WORKDIR.value, "compare.json")):
    raise SystemExit(f"{_WORKDIR.value}/compare.json not found: run --config="
                     f"{_CONFIG.value} there (its compare stage included) first.")
  scratch = tempfile.mkdtemp(prefix="compare_wall_")
  rows = {}
  started = time.perf_counter()
  try:
    with common.worktree(_BASELINE.value, os.path.join(scratch, "baseline")) as baseline:
      if baseline:
        ways = {f"baseline ({_BASELINE.value})": (baseline, False),
                f"this tree ({common.head_commit()})": (_ROOT, False)}
      else:
        ways = {"one by one": (_ROOT, False), "vmapped": (_ROOT, True)}
      runs = {name: [] for name in ways}
      for _ in range(_ROUNDS.value):
        for name, (tree, vmap_seeds) in ways.items():
          run, rows[name] = run_once(tree, vmap_seeds, scratch)
          runs[name].append(run)
          print(name, run, flush=True)
  finally:
    shutil.rmtree(scratch, ignore_errors=True)
  first, second = ways
  median = {k: statistics.median(r["wall_s"] for r in v) for k, v in runs.items()}
  ratio = median[second] / median[first]
  difference = largest_difference(rows[first], rows[second])
  result = {"config": _CONFIG.value, "baseline": _BASELINE.value,
            "cells": len(rows[second]), "runs": runs,
            "median_wall_s": median, "ratio": round(ratio, 3),
            "largest_cell_difference": difference,
            "benchmark_wall_s": round(time.perf_counter() - started, 1),
            "machine": common.machine()}
  methods = list(dict.fromkeys(m for v in runs.values() for r in v for m in r["cells_s"]))
  flag = f" --baseline={_BASELINE.value}" if _BASELINE.value else ""
  lines = [f"`python -m benchmarks.compare_wall --workdir=<finished {_CONFIG.value}> "
           f"--config={_CONFIG.value} --rounds={_ROUNDS.value}{flag}` "
           f"({result['benchmark_wall_s'] / 60:.0f} min; stage compare on a copy, "
           "sets on disk, empty XLA cache per run, the two alternating; "
           f"{result['machine']['backend']}: {result['machine']['devices'][0]})", "",
           "| run | wall (s) | vs the first | " + " | ".join(methods) + " |",
           "|---|---:|---:|" + "---:|" * len(methods)]
  for name, name_runs in runs.items():
    for r in name_runs:
      lines.append(f"| {name} | {r['wall_s']} | {r['wall_s'] / median[first]:.2f}x | "
                   + " | ".join(str(r["cells_s"].get(m, "")) for m in methods) + " |")
  lines += ["", f"Median: {second} {ratio:.2f}x {first}. Method columns: seconds of its "
                "cells at every budget, from compare's log. Largest difference of a "
                f"cell's recall (mean or std over seeds) between the two: {difference:.3g} "
                f"points, over {result['cells']} cells."]
  common.write(_NAME.value, result, "\n".join(lines) + "\n")


if __name__ == "__main__":
  app.run(main)
