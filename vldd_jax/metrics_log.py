"""The run's metrics log: one JSON object per line in `<workdir>/metrics.jsonl`."""
import json
import os

import jax

METRICS_LOG = "metrics.jsonl"


def append(workdir: str, record: dict) -> None:
  """Appends `record` as one line (process 0 only)."""
  if jax.process_index() == 0:
    with open(os.path.join(workdir, METRICS_LOG), "a") as f:
      f.write(json.dumps(record) + "\n")
