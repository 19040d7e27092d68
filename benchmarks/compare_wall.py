"""Wall time of stage `compare` on a finished workdir: each row's seeds trained
one by one (`concurrent_students` at a time in threads) against one vmapped
program a row (`evaluate.vmap_seeds`), side by side.

  python -m benchmarks.compare_wall --workdir=/tmp/vldd_table1 \
      [--config=configs/shapes.py:table1] [--rounds=1] [--name=compare_wall]

`--workdir` is a finished run of `--config` with its `compare` stage done, so
every distilled set is on disk. Each run copies it, leaves out compare.json and
its table and plot, and runs `--config.stage=compare` in a fresh process with
an empty XLA cache: every cell is evaluated again and no set is distilled
again, so what differs is the evaluation students. The settings alternate, one
by one first. Writes benchmarks/results/<name>.{json,md}: each run's wall time
and the largest difference between the two settings' cells (the same students
up to float32 rounding of batched sums).
"""
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
_NAME = flags.DEFINE_string("name", "compare_wall", "Results file name.")

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_OUTPUTS = ("compare.json", "compare.md", "compare.png")  # What a compare run writes.
_METRICS = ("tr@1", "tr@5", "tr@10", "ir@1", "ir@5", "ir@10", "r_mean")


def run_once(vmap_seeds: bool, scratch: str) -> tuple[float, list[dict]]:
  """(wall seconds, compare.json's rows) of one compare run on a copy."""
  workdir = os.path.join(tempfile.mkdtemp(dir=scratch), "work")
  shutil.copytree(_WORKDIR.value, workdir, ignore=shutil.ignore_patterns(*_OUTPUTS))
  start = time.perf_counter()
  result = subprocess.run(
      [sys.executable, "-m", "vldd_jax.main", f"--config={_CONFIG.value}",
       f"--workdir={workdir}", f"--compile_cache={tempfile.mkdtemp(dir=scratch)}",
       "--config.stage=compare", f"--config.evaluate.vmap_seeds={vmap_seeds}"],
      cwd=_ROOT, capture_output=True, text=True, check=False)
  wall = time.perf_counter() - start
  if result.returncode:
    raise RuntimeError(f"exit {result.returncode}\n{result.stderr[-3000:]}")
  if re.search(r"Distilled \d+ pairs into", result.stderr):
    raise RuntimeError(f"{_WORKDIR.value}: a set was distilled again; finish its "
                       "compare stage with this config first.")
  with open(os.path.join(workdir, "compare.json"), encoding="utf-8") as f:
    rows = json.load(f)["rows"]
  shutil.rmtree(os.path.dirname(workdir))
  return round(wall, 1), rows


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
  runs = {"one by one": [], "vmapped": []}
  rows = {}
  started = time.perf_counter()
  try:
    for _ in range(_ROUNDS.value):
      for name, vmap_seeds in (("one by one", False), ("vmapped", True)):
        wall, rows[name] = run_once(vmap_seeds, scratch)
        runs[name].append(wall)
        print(name, wall, flush=True)
  finally:
    shutil.rmtree(scratch, ignore_errors=True)
  median = {k: statistics.median(v) for k, v in runs.items()}
  ratio = median["vmapped"] / median["one by one"]
  difference = largest_difference(rows["one by one"], rows["vmapped"])
  result = {"config": _CONFIG.value, "cells": len(rows["vmapped"]), "runs_s": runs,
            "median_wall_s": median, "ratio": round(ratio, 3),
            "largest_cell_difference": difference,
            "benchmark_wall_s": round(time.perf_counter() - started, 1),
            "machine": common.machine()}
  lines = [f"`python -m benchmarks.compare_wall --workdir=<finished {_CONFIG.value}> "
           f"--config={_CONFIG.value} --rounds={_ROUNDS.value}` "
           f"({result['benchmark_wall_s'] / 60:.0f} min; stage compare on a copy, "
           "sets on disk, empty XLA cache per run, settings alternating; "
           f"{result['machine']['backend']}: {result['machine']['devices'][0]})", "",
           "| evaluation students | runs (s) | median (s) | vs one by one |",
           "|---|---|---:|---:|"]
  for name, walls in runs.items():
    lines.append(f"| {name} | {', '.join(map(str, walls))} | {median[name]} | "
                 f"{median[name] / median['one by one']:.2f}x |")
  lines += ["", f"Largest difference of a cell's recall (mean or std over seeds) "
                f"between the two: {difference:.3g} points, over {result['cells']} cells."]
  common.write(_NAME.value, result, "\n".join(lines) + "\n")


if __name__ == "__main__":
  app.run(main)
