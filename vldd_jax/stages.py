"""The stages a run can select with `config.stage`.

`pipeline` runs data, pretrain and experts, distils the sets that the
distilled methods of `evaluate.methods` need at `distill.num_pairs`, then
evaluates; `compare` (every method at every budget, a distillation per budget)
is run on its own.
"""
import json
import os
from collections.abc import Callable

import ml_collections

from vldd_jax import compare
from vldd_jax import distill
from vldd_jax import evaluate
from vldd_jax import experts
from vldd_jax import pretrain
from vldd_jax.data import input_pipeline
from vldd_jax.data import prepare

Stage = Callable[[ml_collections.ConfigDict, str], None]

STAGES: dict[str, Stage] = {
    "data": prepare.run,
    "pretrain": pretrain.run,
    "experts": experts.run,
    "distill": distill.run,
    "evaluate": evaluate.run,
}
ALONE: dict[str, Stage] = {"compare": compare.run}


def pipeline(config: ml_collections.ConfigDict, workdir: str) -> None:
  """Data, pretrain and experts; the sets the results table evaluates; evaluate."""
  for stage in (prepare.run, pretrain.run, experts.run):
    stage(config, workdir)
  train = input_pipeline.load_split(config, workdir, "train")
  compare.distill_sets(config, workdir, (config.distill.num_pairs,),
                       config.evaluate.methods, train)
  evaluate.run(config, workdir)


def run(config: ml_collections.ConfigDict, workdir: str) -> None:
  """Runs `config.stage`, or every stage in order for `pipeline`."""
  if config.stage != "pipeline" and config.stage not in STAGES | ALONE:
    raise ValueError(f"config.stage={config.stage!r}: expected 'pipeline' or "
                     f"one of {list(STAGES | ALONE)}.")
  os.makedirs(workdir, exist_ok=True)
  with open(os.path.join(workdir, f"config_{config.stage}.json"), "w") as f:
    json.dump(config.to_dict(), f, indent=2)
  if config.stage == "pipeline":
    pipeline(config, workdir)
  else:
    (STAGES | ALONE)[config.stage](config, workdir)
