"""Shared test settings and fixtures: the tiny shapes config, data and experts."""
import os

import jax
import pytest

from vldd_jax import config_lib
from vldd_jax import experts
from vldd_jax import pretrain
from vldd_jax.data import prepare

# Tests check numbers, not speed: compile fast.
jax.config.update("jax_disable_most_optimizations", True)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def subprocess_env(devices: int = 1) -> dict[str, str]:
  """Environment for a `python -m vldd_jax.main` child: fast compiles, N CPU devices."""
  env = dict(os.environ, JAX_DISABLE_MOST_OPTIMIZATIONS="true")
  if devices > 1:
    env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
  return env


def tiny_config(data_dir: str):
  """`configs/shapes.py:tiny` reading its data from `data_dir`."""
  config = config_lib.load_config(os.path.join(ROOT, "configs/shapes.py:tiny"))
  config.data.data_dir = data_dir
  return config


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory):
  """The tiny shapes splits and their caption embeddings, built once."""
  path = str(tmp_path_factory.mktemp("tfds"))
  prepare.run(tiny_config(path), str(tmp_path_factory.mktemp("prepare")))
  return path


@pytest.fixture(scope="session")
def trained(data_dir, tmp_path_factory):
  """(config, workdir) after the pretrain and experts stages, run in this process."""
  workdir = str(tmp_path_factory.mktemp("work"))
  config = tiny_config(data_dir)
  pretrain.run(config, workdir)
  experts.run(config, workdir)
  return config, workdir
