"""The run's metrics log: one JSON object per line in `<workdir>/metrics.jsonl`."""
import json
import os

from vldd_jax import jsonfile

METRICS_LOG = "metrics.jsonl"


def append(workdir: str, record: dict) -> None:
  """Appends `record` as one line (process 0 only)."""
  jsonfile.append_line(os.path.join(workdir, METRICS_LOG), json.dumps(record))
