"""Every file a stage writes into the workdir goes through here: atomically,
from process 0 only, never through a symbolic link; and JSON read back with
errors that name the file."""
from collections.abc import Callable
import errno
import json
import os
from typing import BinaryIO

import jax

# The temporary name `write` uses; `workdir_lib.LEFTOVERS` removes the ones a kill left.
TMP = ".tmp"


def open_nofollow(path: str, flags: int) -> int:
  """`os.open(path, flags)` that never follows a symbolic link at `path`: in a
  shared workdir, a planted link would send this run's write to someone else's
  file. Raises naming `path` when it is a link."""
  try:
    return os.open(path, flags | os.O_NOFOLLOW | os.O_CLOEXEC, 0o666)
  except OSError as e:
    # O_NOFOLLOW fails with ELOOP on a link; O_CREAT | O_EXCL with EEXIST.
    if e.errno in (errno.ELOOP, errno.EEXIST) and os.path.islink(path):
      raise _link_error(path) from None
    raise


def _link_error(path: str) -> OSError:
  return OSError(f"{path} is a symbolic link: a run never writes through one (it could "
                 "overwrite any file the link points to). Remove the link and rerun.")


def write_file(path: str, write: Callable[[BinaryIO], object]) -> None:
  """Calls `write(f)` on `<path>.tmp`, then renames it to `path`, so a kill never
  leaves half a file; refuses a symbolic link at `path` or at the temporary
  name. The file gets the usual mode (0666 less the umask)."""
  if jax.process_index():
    return
  if os.path.islink(path):
    raise _link_error(path)
  tmp = path + TMP
  if os.path.lexists(tmp) and not os.path.islink(tmp):
    os.remove(tmp)  # Left by a killed write; O_EXCL below wants a fresh file.
  try:
    with os.fdopen(open_nofollow(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL), "wb") as f:
      write(f)
      f.flush()
      os.fsync(f.fileno())
  except BaseException:
    os.remove(tmp)  # Ours (O_EXCL made it); a full disk keeps no half file.
    raise
  os.replace(tmp, path)  # Replaces a name, never a link's target.


def write(path: str, obj) -> None:
  """Writes `obj` as indented JSON to `path` (`write_file`)."""
  write_file(path, lambda f: f.write(json.dumps(obj, indent=2).encode()))


def write_text(path: str, text: str) -> None:
  """Writes `text` (UTF-8) to `path` (`write_file`)."""
  write_file(path, lambda f: f.write(text.encode()))


def append_line(path: str, line: str) -> None:
  """Appends `line` and a newline to `path` (process 0 only), never through a link."""
  if jax.process_index():
    return
  with os.fdopen(open_nofollow(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND), "a") as f:
    f.write(line + "\n")


def read(path: str, expected: type = dict):
  """The JSON object in `path`; a clear error naming the file if it is not
  valid JSON or not of the `expected` type (a damaged or hand-edited file)."""
  try:
    with open(path) as f:
      obj = json.load(f)
  except (json.JSONDecodeError, UnicodeDecodeError) as e:
    raise ValueError(f"{path} is not valid JSON ({e}); it was damaged or edited: "
                     "restore it, or move its folder away to recompute it.") from e
  if not isinstance(obj, expected):
    raise ValueError(f"{path} holds a {type(obj).__name__}, expected a JSON "
                     f"{'object' if expected is dict else expected.__name__}: restore "
                     "it, or move its folder away to recompute it.")
  return obj
