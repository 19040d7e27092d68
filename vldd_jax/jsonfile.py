"""JSON files the stages write (atomically, from process 0 only) and read back."""
import json
import os

import jax


def write(path: str, obj) -> None:
  """Writes `obj` to `path` via a temporary file, so a kill never leaves half a file."""
  if jax.process_index():
    return
  with open(path + ".tmp", "w") as f:
    json.dump(obj, f, indent=2)
  os.replace(path + ".tmp", path)


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
