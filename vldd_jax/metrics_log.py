"""The run's metrics log: one JSON object per line in `<workdir>/metrics.jsonl`."""
import json
import os

from vldd_jax import jsonfile
from vldd_jax import workdir_lib


def append(workdir: str, record: dict) -> None:
  """Appends `record` as one line (process 0 only)."""
  jsonfile.append_line(os.path.join(workdir, workdir_lib.METRICS_LOG), json.dumps(record))
