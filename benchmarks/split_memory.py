"""Peak memory and epoch time of the experts stage as the train split grows,
with splits read by rows from disk and read whole into memory.

  python -m benchmarks.split_memory [--cases=10000@32,10000@64,80000@64] \
      [--epochs=3] [--rounds=1] [--data_root=/tmp/vldd_split_memory]

A case is `num_train@image_size` of the shapes config (default model, tower
from scratch so no pretraining, one expert). Its data are prepared once under
`--data_root` (caption encoding takes minutes for large cases). Each
measurement is a fresh process running `experts.run` on an empty workdir with
`data.in_memory_mb=0` (`by_rows`: every split read by rows from disk) or a
budget every split fits (`in_memory`). Reported: the process's peak RSS and
the median epoch time after the first epoch (the first compiles), and which
of the two the default `data.in_memory_mb` picks for the train split. The
variants alternate within each round.
Writes benchmarks/results/split_memory.{json,md}.
"""
import os
import statistics
import sys
import tempfile

from absl import app, flags

from benchmarks import common
from vldd_jax import config_lib
from vldd_jax import experts
from vldd_jax import trajectories
from vldd_jax.data import prepare

_CASES = flags.DEFINE_list("cases", ["10000@32", "10000@64", "80000@64"],
                           "num_train@image_size of each case.")
_EPOCHS = flags.DEFINE_integer("epochs", 3, "Expert epochs per measurement.")
_ROUNDS = flags.DEFINE_integer("rounds", 1, "Alternating rounds per case.")
_DATA_ROOT = flags.DEFINE_string("data_root", "/tmp/vldd_split_memory",
                                 "Where each case's data are prepared (kept).")
_CHILD = flags.DEFINE_string("child", None, "prepare | by_rows | in_memory (internal).")
_CASE = flags.DEFINE_string("case", None, "The child's case (internal).")

# data.in_memory_mb of each variant.
VARIANTS = {"by_rows": 0, "in_memory": 1 << 20}


def _config(case: str, variant: str | None = None):
  num_train, image_size = map(int, case.split("@"))
  config = config_lib.load_config(os.path.join(os.path.dirname(__file__), "..",
                                               "configs/shapes.py"))
  config.data.update(num_train=num_train, image_size=image_size, num_pretrain=100,
                     data_dir=os.path.join(_DATA_ROOT.value, case.replace("@", "_")))
  if variant in VARIANTS:
    config.data.in_memory_mb = VARIANTS[variant]
  config.model.backbone = "scratch"
  config.experts.update(num_experts=1, epochs=_EPOCHS.value)
  return config


def _child(variant: str, case: str) -> dict:
  config = _config(case, variant)
  with tempfile.TemporaryDirectory() as workdir:
    if variant == "prepare":
      prepare.run(config, workdir)
      return {}
    experts.run(config, workdir)
    history = trajectories.read_manifest(workdir, 0)["history"]
  seconds = [h["seconds"] for h in history if h["epoch"] >= 2]
  return {"variant": variant, "case": case, "peak_rss_mib": round(common.peak_rss_mib()),
          "epoch_s": statistics.median(seconds), "epoch_seconds": seconds}


def _default_choice(case: str) -> str:
  """What the default data.in_memory_mb picks for the case's train split."""
  num_train, size = map(int, case.split("@"))
  pair_bytes = size * size * 3 + 5 * 384 * 4  # uint8 image, 5 float32 caption embeddings.
  default = _config(case).data.in_memory_mb
  return "in_memory" if num_train * pair_bytes <= default * 2**20 else "by_rows"


def main(argv):
  del argv
  if _CHILD.value:
    common.emit(_child(_CHILD.value, _CASE.value))
    return
  cmd = lambda variant, case: [sys.executable, "-m", "benchmarks.split_memory",
                               f"--child={variant}", f"--case={case}",
                               f"--epochs={_EPOCHS.value}", f"--data_root={_DATA_ROOT.value}"]
  for case in _CASES.value:
    common.child_result(cmd("prepare", case))
  runs = []
  for _ in range(_ROUNDS.value):
    for case in _CASES.value:
      for variant in VARIANTS:
        runs.append(common.child_result(cmd(variant, case)))
        print(runs[-1], flush=True)
  lines = ["| train images @ px | variant | peak RSS (MiB) | epoch (s) | the default picks |",
           "|---|---|---:|---:|---|"]
  rows = []
  for case in _CASES.value:
    for variant in VARIANTS:
      mine = [r for r in runs if r["case"] == case and r["variant"] == variant]
      rows.append({"case": case, "variant": variant,
                   "peak_rss_mib": max(r["peak_rss_mib"] for r in mine),
                   "epoch_s": statistics.median(r["epoch_s"] for r in mine)})
      picked = "yes" if _default_choice(case) == variant else ""
      lines.append(f"| {case} | {variant} | {rows[-1]['peak_rss_mib']} | "
                   f"{rows[-1]['epoch_s']:.2f} | {picked} |")
  common.write("split_memory", {"rows": rows, "runs": runs, "epochs": _EPOCHS.value,
                                "machine": common.machine()}, "\n".join(lines))


if __name__ == "__main__":
  app.run(main)
