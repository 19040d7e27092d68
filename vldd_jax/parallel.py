"""Data parallelism: one `('data',)` mesh over every device, for every stage.

The same jitted step runs on one CPU device, eight TPU cores or a multi-host
pod: inputs whose leading axis is the batch are sharded over `data`,
parameters are replicated, and XLA inserts the gradient all-reduce.
Independent trainings (experts, an evaluation row's seeds) can also run at
once, in threads (`map_concurrently`).
"""
from collections.abc import Callable, Iterable
import concurrent.futures
import os

import jax
import numpy as np
import orbax.checkpoint as ocp
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from vldd_jax.data import lazy_arrays

DATA_AXIS = "data"


def initialize(multihost: bool) -> None:
  """Joins the processes of a multi-host run into one JAX cluster (`config.multihost`).

  On TPU VMs (and Slurm, Open MPI) JAX finds the coordinator, process count
  and process id itself. Elsewhere set `JAX_COORDINATOR_ADDRESS` (host:port of
  process 0), `JAX_NUM_PROCESSES` and `JAX_PROCESS_ID` in each process.
  Must run before anything touches a device.
  """
  if not multihost:
    return
  kwargs = {name: int(os.environ[var]) for name, var in
            (("num_processes", "JAX_NUM_PROCESSES"), ("process_id", "JAX_PROCESS_ID"))
            if var in os.environ}
  # CPU processes need a collectives backend to all-reduce across processes;
  # accelerators use their own interconnect and ignore this.
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  jax.distributed.initialize(**kwargs)


def make_mesh() -> Mesh:
  """A 1-D mesh over all devices of all processes.

  Its axis is `Auto`: XLA propagates the shardings (jax 0.10's default,
  `Explicit`, would put shardings into every array's type).
  """
  return jax.make_mesh((jax.device_count(),), (DATA_AXIS,),
                       axis_types=(jax.sharding.AxisType.Auto,))


def replicated(mesh: Mesh) -> NamedSharding:
  """Sharding for values every device holds whole (parameters, rng keys)."""
  return NamedSharding(mesh, P())


def batch_sharded(mesh: Mesh) -> NamedSharding:
  """Sharding that splits the leading (batch) axis over the devices."""
  return NamedSharding(mesh, P(DATA_AXIS))


def check_divisible(batch_size: int, what: str) -> None:
  """Raises a clear error when a batch cannot be split over the devices."""
  if batch_size % jax.device_count():
    raise ValueError(f"{what}={batch_size} must be a multiple of the number of "
                     f"devices ({jax.device_count()}).")


def _put(tree, sharding: NamedSharding):
  def put(x):
    if isinstance(x, lazy_arrays.RowReader):  # Read only what this process's devices hold.
      return jax.make_array_from_callback(x.shape, sharding, lambda index: x[index])
    if jax.process_count() == 1:
      return jax.device_put(x, sharding)
    # Multi-host: every process holds the same host value and transfers only
    # the slices its own devices hold.
    if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
      return jax.random.wrap_key_data(put(jax.random.key_data(x)),
                                      impl=jax.random.key_impl(x))
    x = np.asarray(x)
    return jax.make_array_from_callback(x.shape, sharding, lambda index: x[index])
  return jax.tree.map(put, tree)


def put_batch(tree, mesh: Mesh):
  """Places host arrays (the global batch) sharded along their leading axis."""
  return _put(tree, batch_sharded(mesh))


def put_replicated(tree, mesh: Mesh):
  """Places a pytree on every device (of every process)."""
  return _put(tree, replicated(mesh))


def to_host(x: jax.Array) -> np.ndarray:
  """The whole value of an array as NumPy, gathering other processes' shards."""
  if x.is_fully_addressable:
    return np.asarray(x)
  return np.asarray(multihost_utils.process_allgather(x, tiled=True))


def sync(name: str, timeout_s: int = 6 * 3600) -> None:
  """Waits until every process reaches the barrier `name` (no-op on one process).

  A coordination-service barrier, not a device collective: collectives give
  up after 30 s, while other processes may wait hours for process 0 here.
  """
  if jax.process_count() > 1:
    ocp.multihost.get_barrier_sync_fn()(key=name, timeout_ms=1000 * timeout_s)


def map_concurrently(fn: Callable, items: Iterable, at_once: int) -> list:
  """`[fn(x) for x in items]`, up to `at_once` calls at a time in threads.

  A tiny model's step leaves cores idle part of the time (the default shapes
  expert's step takes 50 ms on one of a 2-core CPU's cores and 28 ms on both,
  `benchmarks/throughput.py`); steps dispatched from several threads fill
  those gaps, and each training gives bit for bit what it gives alone. With several processes the
  calls run one by one: every process must issue its collectives in the
  same order. Once a call raises (a SIGTERM's `preemption.Stopped` too), the
  calls not yet started are dropped; the first exception in `items`' order is
  raised when the running ones have ended.
  """
  items = list(items)
  at_once = min(at_once, len(items)) if jax.process_count() == 1 else 1
  if at_once <= 1:
    return [fn(x) for x in items]
  with concurrent.futures.ThreadPoolExecutor(at_once) as pool:
    futures = [pool.submit(fn, x) for x in items]
    concurrent.futures.wait(futures, return_when=concurrent.futures.FIRST_EXCEPTION)
    for future in futures:
      future.cancel()  # Only the ones not started; the pool waits for the rest.
  for future in futures:
    if not future.cancelled() and future.exception() is not None:
      raise future.exception()
  return [f.result() for f in futures]
