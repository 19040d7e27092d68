"""Builders made without TFDS's leftover temp folders."""
import contextlib
import tempfile
from collections.abc import Iterator


@contextlib.contextmanager
def own_temp_dir() -> Iterator[None]:
  """Inside, `tempfile`'s folders go into one of ours, removed on exit.

  TFDS makes an empty `mkdtemp("tfds")` folder for every builder of an
  unprepared dataset and leaves it (DatasetInfo.initialize_from_bucket): one
  per run and ~60 per test session in the system temp dir, before this.
  """
  with tempfile.TemporaryDirectory(prefix="vldd_jax_builder_") as scratch:
    system_tmp, tempfile.tempdir = tempfile.tempdir, scratch
    try:
      yield
    finally:
      tempfile.tempdir = system_tmp
