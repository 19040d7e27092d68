"""The workdir: its layout, its format version, its lock, its checkpoint
managers, and the sweep of what killed runs left.

  workdir.json               the format version (`claim`); a workdir without
                             it, or with another version, is refused
  .lock                      held by the running stage (`lock`)
  config_<stage>.json        the config each stage last ran with
  metrics.jsonl              one JSON line per logged step, every stage
  tfds/                      prepared splits (`data.data_dir` moves them) and
    caption_embeddings/      the frozen text encoder's caption cache
  pretrain/ckpt, summary.json
  experts/expert_NNN/ckpt, manifest.json   (`trajectories`)
  distill/n<pairs>[_<objective>]/          a set: ckpt, settings.json,
                             distilled.npz and its figures (`distilled_set`)
  results.json, results_<sha12>.json       stage evaluate
  compare.json, compare.md, compare.png    stage compare

Every file goes through `jsonfile` (atomic, never through a link), so the sweep
knows each temporary name; checkpoints go through `checkpoint_manager`.
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
from collections.abc import Iterator

import jax
import orbax.checkpoint as ocp
from absl import logging

from vldd_jax import jsonfile

# Bumped when a change makes older outputs unreadable or silently different;
# a workdir of another version is refused, never migrated.
FORMAT_VERSION = 1
STAMP = "workdir.json"
LOCK = ".lock"
METRICS_LOG = "metrics.jsonl"
DATA = "tfds"
CAPTION_CACHE = "caption_embeddings"
PRETRAIN = "pretrain"
PRETRAIN_SUMMARY = "summary.json"
EXPERTS = "experts"
# The folder names `expert_dir` writes (`expert_000`, ..., `expert_1000`), and
# nothing else: not a copy `expert_000_backup`, not `expert_0001`.
EXPERT_NAME = r"expert_(\d{3}|[1-9]\d{3,})"
MANIFEST = "manifest.json"
DISTILL = "distill"
SET_FOLDER = r"n\d+(_\w+)?"  # The folder names `distilled_set.set_dir` writes.
DISTILLED = "distilled.npz"
SET_SETTINGS = "settings.json"
SET_FIGURES = SET_GRID, SET_LOSS_CURVE = "synthetic_grid.png", "matching_loss.png"
RESULTS = "results.json"
# The results of an outside set (`evaluate.distilled_path`), named by the first
# 12 hex digits of its file's SHA-256, so they never replace the workdir's own.
EXTERNAL_RESULTS = "results_{}.json"
COMPARE_RESULT, COMPARE_TABLE, COMPARE_FIGURE = "compare.json", "compare.md", "compare.png"
# A caption cache entry: `<encoder>-<split>-<16 hex>.npy` and its `.json`.
CAPTION_ENTRY = r"[A-Za-z0-9][A-Za-z0-9_.-]*-[0-9a-f]{16}\.(npy|json)"


def stage_config(stage: str) -> str:
  """The file that records the config `stage` last ran with."""
  return f"config_{stage}.json"


def pretrain_dir(workdir: str) -> str:
  """Where the pretrain stage keeps its checkpoint and summary."""
  return os.path.join(workdir, PRETRAIN)


def experts_dir(workdir: str) -> str:
  return os.path.join(workdir, EXPERTS)


def expert_dir(workdir: str, expert: int) -> str:
  return os.path.join(experts_dir(workdir), f"expert_{expert:03d}")


def checkpoint_manager(folder: str, max_to_keep: int | None,
                       item_handlers: dict | None = None) -> ocp.CheckpointManager:
  """The Orbax manager of `<folder>/ckpt` (made if missing), keeping the last
  `max_to_keep` steps when it saves (None: all)."""
  return ocp.CheckpointManager(
      os.path.join(folder, "ckpt"),
      options=ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True),
      item_handlers=item_handlers)


# `stage_config`'s and `EXTERNAL_RESULTS`'s names, as regexes.
_STAGE_CONFIGS = r"config_\w+\.json"
_EXTERNAL = r"results_[0-9a-f]{12}\.json"
# The top-level names only this project writes (never as a link): a folder
# holding one of them but no stamp was made before the format version existed.
_OURS = re.compile(r"|".join([re.escape(n) for n in (
    PRETRAIN, EXPERTS, DISTILL, METRICS_LOG, RESULTS, COMPARE_RESULT)]
    + [_STAGE_CONFIGS, _EXTERNAL]))


def claim(workdir: str) -> None:
  """Stamps a new workdir with `FORMAT_VERSION` (process 0); raises on one that
  holds this project's outputs of another format (or none recorded)."""
  stamp = os.path.join(workdir, STAMP)
  if os.path.lexists(stamp):
    version = jsonfile.read(stamp).get("format_version")
    if version == FORMAT_VERSION:
      return
    made = f"workdir format {version}"
  else:
    ours = sorted(e.name for e in _entries(workdir)
                  if re.fullmatch(_OURS, e.name) and not e.is_symlink())
    if not ours:
      jsonfile.write(stamp, {"format_version": FORMAT_VERSION})
      return
    made = f"an older vldd_jax, before workdir formats were recorded ({', '.join(ours)})"
  raise ValueError(f"{workdir} was made by {made}; this vldd_jax reads workdir format "
                   f"{FORMAT_VERSION} only. Start a new workdir (--workdir): the old "
                   "one is left as it is.")


@contextlib.contextmanager
def lock(workdir: str) -> Iterator[None]:
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


# The TFDS builders' names (`data/shapes.py`, `data/karpathy.py`; a test checks):
# their folders under `tfds/` are this project's, not any other folder there.
DATASETS = ("shapes", "karpathy")
_TFDS = (DATA, "|".join(DATASETS))
# Orbax's unfinished step of a checkpoint folder, `<step>.orbax-checkpoint-tmp`
# (`-<time>` in some Orbax versions); its unfinished items are inside it.
_ORBAX = r"\d+\.orbax-checkpoint-tmp(-\d+)?"
LEFTOVERS: tuple[Leftover, ...] = (
    # TFDS builds `<dataset>/<config>/<version>` in `incomplete.XXXXXX_<version>`
    # and writes `<dataset>/.config/metadata.json` via `incomplete.<hex>.metadata.json`.
    Leftover((*_TFDS, r"[^.].*"), r"incomplete\.[A-Z0-9]{6}_\d+\.\d+\.\d+", folder=True),
    Leftover((*_TFDS, r"\.config"), r"incomplete\.[0-9a-f]{32}\.metadata\.json"),
    Leftover((DATA, CAPTION_CACHE), CAPTION_ENTRY + re.escape(jsonfile.TMP)),
    Leftover((), f"({_EXTERNAL}|{_STAGE_CONFIGS})" + re.escape(jsonfile.TMP)),
    Leftover((), _replaced(STAMP, COMPARE_RESULT, COMPARE_TABLE, COMPARE_FIGURE, RESULTS)),
    Leftover((PRETRAIN,), _replaced(PRETRAIN_SUMMARY)),
    Leftover((EXPERTS, EXPERT_NAME), _replaced(MANIFEST)),
    Leftover((DISTILL, SET_FOLDER), _replaced(SET_SETTINGS, DISTILLED, *SET_FIGURES)),
    Leftover((PRETRAIN, "ckpt"), _ORBAX, folder=True),
    Leftover((EXPERTS, EXPERT_NAME, "ckpt"), _ORBAX, folder=True),
    Leftover((DISTILL, SET_FOLDER, "ckpt"), _ORBAX, folder=True),
)


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
