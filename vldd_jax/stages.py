"""The stages a run can select with `config.stage`, in pipeline order."""
import json
import os
from collections.abc import Callable

import ml_collections

from vldd_jax import distill
from vldd_jax import evaluate
from vldd_jax import experts
from vldd_jax import pretrain
from vldd_jax.data import prepare

Stage = Callable[[ml_collections.ConfigDict, str], None]

STAGES: dict[str, Stage] = {
    "data": prepare.run,
    "pretrain": pretrain.run,
    "experts": experts.run,
    "distill": distill.run,
    "evaluate": evaluate.run,
}


def run(config: ml_collections.ConfigDict, workdir: str) -> None:
  """Runs `config.stage`, or every stage in order for `pipeline`."""
  if config.stage != "pipeline" and config.stage not in STAGES:
    raise ValueError(f"config.stage={config.stage!r}: expected 'pipeline' or "
                     f"one of {list(STAGES)}.")
  os.makedirs(workdir, exist_ok=True)
  with open(os.path.join(workdir, f"config_{config.stage}.json"), "w") as f:
    json.dump(config.to_dict(), f, indent=2)
  names = list(STAGES) if config.stage == "pipeline" else [config.stage]
  for name in names:
    STAGES[name](config, workdir)
