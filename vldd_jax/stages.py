"""The stages a run can select with `config.stage`.

`pipeline` runs data, pretrain and experts, distils the sets that the
distilled methods of `evaluate.methods` need at `distill.num_pairs`, then
evaluates; `compare` (every method at every budget, a distillation per budget)
runs on its own, or at the end of the pipeline with `compare.in_pipeline`.
"""
import contextlib
import dataclasses
import errno
import fcntl
import os
import re
import shutil
import socket
import stat
from collections.abc import Callable, Iterator

import jax
import ml_collections
from absl import logging

from vldd_jax import backbone
from vldd_jax import compare
from vldd_jax import config_lib
from vldd_jax import coreset
from vldd_jax import distill
from vldd_jax import evaluate
from vldd_jax import experts
from vldd_jax import jsonfile
from vldd_jax import matching
from vldd_jax import objectives
from vldd_jax import pretrain
from vldd_jax import students
from vldd_jax import synthetic
from vldd_jax import trajectories
from vldd_jax.data import embeddings
from vldd_jax.data import input_pipeline
from vldd_jax.data import karpathy
from vldd_jax.data import prepare
from vldd_jax.data import shapes

Stage = Callable[[ml_collections.ConfigDict, str], None]
LOCK = ".lock"

STAGES: dict[str, Stage] = {
    "data": prepare.run,
    "pretrain": pretrain.run,
    "experts": experts.run,
    "distill": distill.run,
    "evaluate": evaluate.run,
}
ALONE: dict[str, Stage] = {"compare": compare.run}


@dataclasses.dataclass(frozen=True)
class Leftover:
  """What a killed run of this project can leave: a `name` (a regex, matched
  whole) in the folders `under` the workdir (one regex per level); a folder if
  `folder`, else a file. Nothing else is a leftover: a user's `notes.tmp` stays."""
  under: tuple[str, ...]
  name: str
  folder: bool = False


def _replaced(*names: str) -> str:
  """A regex of the temporary files `jsonfile.write_file` writes `names` through."""
  return "|".join(re.escape(name + jsonfile.TMP) for name in names)


_EXPERT = trajectories.EXPERT_NAME
_TFDS = ("tfds", "|".join(re.escape(b.name) for b in (shapes.Shapes, karpathy.Karpathy)))
# Orbax's unfinished step of a checkpoint folder, `<step>.orbax-checkpoint-tmp`
# (`-<time>` in older Orbax); its unfinished items are inside it.
_ORBAX = r"\d+\.orbax-checkpoint-tmp(-\d+)?"
LEFTOVERS: tuple[Leftover, ...] = (
    # TFDS builds `<dataset>/<config>/<version>` in `incomplete.XXXXXX_<version>`
    # and writes `<dataset>/.config/metadata.json` via `incomplete.<hex>.metadata.json`.
    Leftover((*_TFDS, r"[^.].*"), r"incomplete\.[A-Z0-9]{6}_\d+\.\d+\.\d+", folder=True),
    Leftover((*_TFDS, r"\.config"), r"incomplete\.[0-9a-f]{32}\.metadata\.json"),
    Leftover(("tfds", "caption_embeddings"), embeddings.ENTRY + re.escape(jsonfile.TMP)),
    Leftover((), evaluate.EXTERNAL_RESULTS.format("[0-9a-f]{12}") + re.escape(jsonfile.TMP)),
    Leftover((), _replaced(compare.RESULT, compare.TABLE, compare.FIGURE, evaluate.RESULTS,
                           *(f"config_{s}.json" for s in ("pipeline", *STAGES, *ALONE)))),
    Leftover(("pretrain",), _replaced(backbone.SUMMARY)),
    Leftover(("experts", _EXPERT), _replaced(trajectories.MANIFEST)),
    Leftover(("distill", synthetic.SET_FOLDER),
             _replaced(distill.SETTINGS, synthetic.RESULT, *distill.FIGURES)),
    Leftover(("pretrain", "ckpt"), _ORBAX, folder=True),
    Leftover(("experts", _EXPERT, "ckpt"), _ORBAX, folder=True),
    Leftover(("distill", synthetic.SET_FOLDER, "ckpt"), _ORBAX, folder=True),
)


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
  path = os.path.join(workdir, LOCK)
  # Not through a link: a `.lock` planted in a shared workdir must not make this
  # run truncate the file it points to.
  try:
    fd = jsonfile.open_nofollow(path, os.O_RDWR | os.O_CREAT)
  except OSError as e:
    if e.errno not in (errno.EROFS, errno.EACCES, errno.EPERM):
      raise
    raise OSError(e.errno, f"{workdir} is not writable ({e.strerror}): every stage "
                  "writes there (results, checkpoints, its lock). To evaluate or extend "
                  "a finished workdir on a read-only mount, copy it to a writable place "
                  "and pass that copy as --workdir.") from None
  with os.fdopen(fd, "r+") as f:
    if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
      raise RuntimeError(f"{path} is not a regular file: remove it and rerun.")
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
  inits = tuple(matching.INITS) + tuple(coreset.SELECTORS)
  if config.distill.init not in inits:
    raise ValueError(f"distill.init={config.distill.init!r}: expected one of {inits}.")
  students.student_config(config)


def _entries(folder: str) -> list[os.DirEntry]:
  try:
    with os.scandir(folder) as entries:
      return list(entries)
  except (FileNotFoundError, NotADirectoryError):
    return []


def _find(folder: str, names: tuple[str, ...]) -> Iterator[os.DirEntry]:
  """The entries at `folder/<names[0]>/<names[1]>/...` (regexes matched whole),
  through real folders only: a symbolic link is never followed."""
  for entry in _entries(folder):
    if re.fullmatch(names[0], entry.name):
      if len(names) == 1:
        yield entry
      elif entry.is_dir(follow_symlinks=False):
        yield from _find(entry.path, names[1:])


def remove_leftovers(workdir: str) -> list[str]:
  """Deletes what interrupted runs left under `workdir`: the `LEFTOVERS` only,
  never a symbolic link; call it holding the lock. Returns the deleted paths."""
  removed = []
  for leftover in LEFTOVERS:
    for entry in _find(workdir, (*leftover.under, leftover.name)):
      if leftover.folder and entry.is_dir(follow_symlinks=False):
        shutil.rmtree(entry.path)
      elif not leftover.folder and entry.is_file(follow_symlinks=False):
        os.remove(entry.path)
      else:
        continue
      removed.append(entry.path)
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
  if not workdir:  # os.makedirs('') says only "FileNotFoundError: ''".
    raise ValueError("--workdir is empty: give the folder a run writes to, e.g. "
                     "--workdir=/tmp/vldd.")
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
      jsonfile.write(os.path.join(workdir, f"config_{config.stage}.json"),
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
