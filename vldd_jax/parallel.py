"""Data parallelism: one `('data',)` mesh over every device, for every stage.

The same jitted step runs on one CPU device, eight TPU cores or a multi-host
pod: inputs whose leading axis is the batch are sharded over `data`,
parameters are replicated, and XLA inserts the gradient all-reduce.
"""
import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

DATA_AXIS = "data"


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


def put_batch(tree, mesh: Mesh):
  """Places host arrays (the global batch) sharded along their leading axis."""
  sharding = batch_sharded(mesh)
  if jax.process_count() == 1:
    return jax.device_put(tree, sharding)
  # Multi-host: every process holds the same global batch; keep its own rows.
  def local(x):
    x = np.asarray(x)
    rows = x.shape[0] // jax.process_count()
    start = jax.process_index() * rows
    return jax.make_array_from_process_local_data(
        sharding, x[start:start + rows], x.shape)
  return jax.tree.map(local, tree)


def put_replicated(tree, mesh: Mesh):
  """Places a pytree on every device."""
  return jax.device_put(tree, replicated(mesh))
