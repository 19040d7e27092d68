"""The stages a run can select with `config.stage`.

`pipeline` runs data, pretrain and experts, distils the sets that the
distilled methods of `evaluate.methods` need at `distill.num_pairs`, then
evaluates; `compare` (every method at every budget, a distillation per budget)
runs on its own, or at the end of the pipeline with `compare.in_pipeline`.
"""
import errno
import os
from collections.abc import Callable

import jax
import ml_collections

from vldd_jax import compare
from vldd_jax import config_lib
from vldd_jax import coreset
from vldd_jax import distill
from vldd_jax import evaluate
from vldd_jax import experts
from vldd_jax import jsonfile
from vldd_jax import matching
from vldd_jax import models
from vldd_jax import objectives
from vldd_jax import pretrain
from vldd_jax import students
from vldd_jax import workdir_lib
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
  """Data, pretrain and experts; the sets the results table evaluates; evaluate;
  then `compare` if `compare.in_pipeline`."""
  for stage in (prepare.run, pretrain.run, experts.run):
    stage(config, workdir)
  train = input_pipeline.load_split(config, workdir, "train")
  compare.distill_sets(config, workdir, (config.distill.num_pairs,),
                       config.evaluate.methods, train)
  evaluate.run(config, workdir)
  if config.compare.in_pipeline:
    compare.run(config, workdir)


def check_choices(config: ml_collections.ConfigDict) -> None:
  """Raises on a name no registry holds (`evaluate.methods`, `distill.objective`,
  `distill.init`, `distill.meta_optimizer`, `evaluate.student`, `evaluate.report`,
  `evaluate.split`, the model's tower, heads and pools, the experts' and the
  evaluation students'), up front as `config_lib.validate`: not at the end of a
  pipeline."""
  evaluate.check_methods(config.evaluate.methods)
  objectives.build(config.distill)
  choices = {"distill.init": tuple(matching.INITS) + tuple(coreset.SELECTORS),
             "distill.meta_optimizer": tuple(matching.META_OPTIMIZERS),
             "evaluate.split": evaluate.SPLITS}
  for field, allowed in choices.items():
    value = config_lib.get_field(config, field)
    if value not in allowed:
      raise ValueError(f"{field}={value!r}: expected one of {allowed}.")
  evaluate.selects_on(config.evaluate.report)
  models.check_config(config.model)
  models.check_config(students.student_config(config).model)


def _disk_full(error: BaseException) -> bool:
  return ((isinstance(error, OSError) and error.errno == errno.ENOSPC)
          or "No space left on device" in str(error))


def run(config: ml_collections.ConfigDict, workdir: str) -> None:
  """Runs `config.stage`, or every stage in order for `pipeline`, after checking
  the config, taking the workdir's lock, checking (or stamping) its format
  version and removing what interrupted runs left (on one host; a multi-host
  run leaves them): `workdir_lib`."""
  if not workdir:  # os.makedirs('') says only "FileNotFoundError: ''".
    raise ValueError("--workdir is empty: give the folder a run writes to, e.g. "
                     "--workdir=/tmp/vldd.")
  if config.stage != "pipeline" and config.stage not in STAGES | ALONE:
    raise ValueError(f"config.stage={config.stage!r}: expected 'pipeline' or "
                     f"one of {list(STAGES | ALONE)}.")
  config_lib.validate(config)
  check_choices(config)
  os.makedirs(workdir, exist_ok=True)
  with workdir_lib.lock(workdir):
    workdir_lib.claim(workdir)
    if jax.process_count() == 1:
      workdir_lib.remove_leftovers(workdir)
    try:
      jsonfile.write(os.path.join(workdir, workdir_lib.stage_config(config.stage)),
                     config.to_dict())
      if config.stage == "pipeline":
        pipeline(config, workdir)
      else:
        (STAGES | ALONE)[config.stage](config, workdir)
    except Exception as e:
      if not _disk_full(e):
        raise
      raise OSError(errno.ENOSPC, f"No space left on the device of {workdir} (stage "
                    f"{config.stage}: {e}). Free space and rerun the same command: "
                    "finished work is kept and the stage resumes from its last "
                    "checkpoint.") from e
