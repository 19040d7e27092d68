"""The stages a run can select with `config.stage`.

`pipeline` runs data, pretrain and experts, distils the sets that the
distilled methods of `evaluate.methods` need at `distill.num_pairs`, then
evaluates; `compare` (every method at every budget, a distillation per budget)
runs on its own, or at the end of the pipeline with `compare.in_pipeline`.
"""
import contextlib
import errno
import fcntl
import json
import os
import re
import shutil
import socket
from collections.abc import Callable, Iterator

import jax
import ml_collections
from absl import logging

from vldd_jax import compare
from vldd_jax import config_lib
from vldd_jax import coreset
from vldd_jax import distill
from vldd_jax import evaluate
from vldd_jax import experts
from vldd_jax import matching
from vldd_jax import objectives
from vldd_jax import pretrain
from vldd_jax import students
from vldd_jax.data import input_pipeline
from vldd_jax.data import prepare

Stage = Callable[[ml_collections.ConfigDict, str], None]
LOCK = ".lock"
# What a killed run can leave: TFDS's unfinished splits, Orbax's unfinished
# checkpoints, the temporary files of atomic writes (jsonfile, embeddings, sets).
LEFTOVER = re.compile(r"^incomplete\.|\.orbax-checkpoint-tmp|\.tmp(\.npz)?$")

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


@contextlib.contextmanager
def workdir_lock(workdir: str) -> Iterator[None]:
  """Holds `<workdir>/.lock` for this run; a second run on the workdir stops with
  the holder's PID. The OS drops the lock when the process ends, even killed."""
  if jax.process_index():  # Process 0 holds it for all hosts of a run.
    yield
    return
  with open(os.path.join(workdir, LOCK), "a+") as f:
    try:
      fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      f.seek(0)
      raise RuntimeError(f"{workdir} is in use by {f.read().strip() or 'another run'}; "
                         "wait for that run to end, or use another workdir.") from None
    f.seek(0)
    f.truncate()
    f.write(f"PID {os.getpid()} on {socket.gethostname()}\n")
    f.flush()
    yield


def check_choices(config: ml_collections.ConfigDict) -> None:
  """Raises on a name no registry holds (`evaluate.methods`, `distill.objective`,
  `distill.init`, `evaluate.student`), up front as `config_lib.validate`: not at
  the end of a pipeline."""
  evaluate.check_methods(config.evaluate.methods)
  objectives.build(config.distill)
  inits = matching.INITS + tuple(coreset.SELECTORS)
  if config.distill.init not in inits:
    raise ValueError(f"distill.init={config.distill.init!r}: expected one of {inits}.")
  students.student_config(config)


def remove_leftovers(workdir: str) -> list[str]:
  """Deletes what interrupted runs left under `workdir` (`LEFTOVER`); call it
  holding the lock. Returns the deleted paths."""
  removed = []
  for root, dirs, files in os.walk(workdir):
    for name in [d for d in dirs if LEFTOVER.search(d)]:
      dirs.remove(name)
      shutil.rmtree(os.path.join(root, name))
      removed.append(os.path.join(root, name))
    for name in [f for f in files if LEFTOVER.search(f)]:
      os.remove(os.path.join(root, name))
      removed.append(os.path.join(root, name))
  if removed:
    logging.info("Removed %d leftovers of interrupted runs: %s", len(removed), removed)
  return removed


def _disk_full(error: BaseException) -> bool:
  return ((isinstance(error, OSError) and error.errno == errno.ENOSPC)
          or "No space left on device" in str(error))


def run(config: ml_collections.ConfigDict, workdir: str) -> None:
  """Runs `config.stage`, or every stage in order for `pipeline`, after checking
  the config, taking the workdir's lock and removing what interrupted runs left
  (on one host; a multi-host run leaves them)."""
  if config.stage != "pipeline" and config.stage not in STAGES | ALONE:
    raise ValueError(f"config.stage={config.stage!r}: expected 'pipeline' or "
                     f"one of {list(STAGES | ALONE)}.")
  config_lib.validate(config)
  check_choices(config)
  os.makedirs(workdir, exist_ok=True)
  with workdir_lock(workdir):
    if jax.process_count() == 1:
      remove_leftovers(workdir)
    try:
      with open(os.path.join(workdir, f"config_{config.stage}.json"), "w") as f:
        json.dump(config.to_dict(), f, indent=2)
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
