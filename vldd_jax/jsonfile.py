"""JSON files the stages write: atomically, and from process 0 only."""
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
