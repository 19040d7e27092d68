"""The data-parallel helpers on 4 simulated CPU devices vs one device."""
import json
import os
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

from vldd_jax import parallel

_SCRIPT = r"""
import json, sys
import jax, jax.numpy as jnp, numpy as np
from vldd_jax import parallel

mesh = parallel.make_mesh()
rng = np.random.default_rng(0)
x, y = rng.normal(size=(8, 3)).astype(np.float32), rng.normal(size=8).astype(np.float32)
w = np.array([0.5, -1.0, 2.0], np.float32)
batch = parallel.put_batch({"x": x, "y": y}, mesh)
params = parallel.put_replicated(w, mesh)
loss = lambda w, b: jnp.mean((b["x"] @ w - b["y"]) ** 2)
grad = jax.jit(jax.grad(loss))(params, batch)
from vldd_jax.data import lazy_arrays
asked = []
def read(rows):
  asked.append(rows.tolist())
  return x[rows]
rows = np.array([5, 0, 7, 2, 6, 1, 4, 3])
lazy = parallel.put_batch(lazy_arrays.RowReader(x.shape, x.dtype, read).subset(rows), mesh)
try:
  parallel.check_divisible(6, "batch_size")
  error = ""
except ValueError as e:
  error = str(e)
print(json.dumps({
    "devices": jax.device_count(),
    "rows_per_shard": sorted({s.data.shape[0] for s in batch["x"].addressable_shards}),
    "grad": np.asarray(grad).tolist(),
    "lazy_equal": bool((np.asarray(lazy) == x[rows]).all()),
    "lazy_reads": sorted(asked),
    "error": error}))
"""


def _run(devices: int) -> dict:
  env = dict(os.environ,
             XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}",
             JAX_PLATFORMS="cpu")
  out = subprocess.run([sys.executable, "-c", _SCRIPT], env=env, check=True,
                       capture_output=True, text=True, timeout=300).stdout
  return json.loads(out.strip().splitlines()[-1])


def test_sharded_gradient_matches_one_device_and_numpy():
  one, four = _run(1), _run(4)
  assert (one["devices"], four["devices"]) == (1, 4)
  assert one["rows_per_shard"] == [8] and four["rows_per_shard"] == [2]
  rng = np.random.default_rng(0)
  x, y = rng.normal(size=(8, 3)), rng.normal(size=8)
  w = np.array([0.5, -1.0, 2.0])
  expected = 2 * x.T @ (x @ w - y) / len(y)
  np.testing.assert_allclose(one["grad"], expected, rtol=1e-5)
  np.testing.assert_allclose(four["grad"], one["grad"], rtol=1e-5)
  # A batch read from disk: each device's rows read once, by that device's shard.
  assert one["lazy_equal"] and four["lazy_equal"]
  assert one["lazy_reads"] == [[5, 0, 7, 2, 6, 1, 4, 3]]
  assert four["lazy_reads"] == [[4, 3], [5, 0], [6, 1], [7, 2]]
  assert one["error"] == ""
  assert "batch_size=6 must be a multiple of the number of devices (4)" in four["error"]


def test_map_concurrently_runs_at_most_at_once_keeps_order_and_fails_fast():
  lock, running, peak, done = threading.Lock(), [0], [0], []

  def fn(x):
    with lock:
      running[0] += 1
      peak[0] = max(peak[0], running[0])
    time.sleep(0.05)
    with lock:
      running[0] -= 1
      done.append(x)
    if x == 1:
      raise ValueError("one")
    return 10 * x

  assert parallel.map_concurrently(fn, [0, 2, 3, 4, 5], 2) == [0, 20, 30, 40, 50]
  assert peak[0] == 2
  done.clear()
  with pytest.raises(ValueError, match="one"):
    parallel.map_concurrently(fn, range(4), 3)
  assert {0, 1, 2} <= set(done)  # Started together: each ran to its end.

  def slow_or_failing(x):
    if x == 1:
      raise ValueError("one")
    time.sleep(0.5 if x == 0 else 0.2)
    with lock:
      done.append(x)

  done.clear()
  with pytest.raises(ValueError, match="one"):
    parallel.map_concurrently(slow_or_failing, range(6), 2)
  # 0 was running and ended; 2 may have started on 1's thread; 3-5 never ran.
  assert 0 in done and set(done) <= {0, 2}
  peak[0] = 0
  assert parallel.map_concurrently(fn, [2, 3], 1) == [20, 30] and peak[0] == 1
