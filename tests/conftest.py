"""Shared test settings and fixtures: the tiny shapes config, data and experts."""
import atexit
import inspect
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time

import jax
import pytest

from vldd_jax import config_lib
from vldd_jax import distill
from vldd_jax import experts
from vldd_jax import pretrain
from vldd_jax import workdir_lib
from vldd_jax.data import prepare

# The suite checks the library on CPU, the platform CI has: its multi-device
# tests simulate devices on the host, and its equality checks (vmapped students
# against one-by-one ones, threads against a loop) are claims about XLA:CPU's
# float32 arithmetic. On a GPU or TPU, benchmarks/ checks the accelerator
# (docs/benchmarks.md). A JAX_PLATFORMS the user sets wins; children inherit it.
jax.config.update("jax_platforms", os.environ.setdefault("JAX_PLATFORMS", "cpu"))

# Tests check numbers, not speed: compile fast. Without the fusion emitters
# XLA:CPU compiled a tiny meta-gradient 1.5-1.7x faster (alone, alternating
# runs; these tests are mostly compilation); this process's backend starts
# after this line, and children inherit the variable.
jax.config.update("jax_disable_most_optimizations", True)
os.environ["XLA_FLAGS"] = " ".join(
    filter(None, [os.environ.get("XLA_FLAGS"), "--xla_cpu_use_fusion_emitters=false"]))

# Many tests (and their `python -m vldd_jax.main` children, which inherit the
# environment) compile the same tiny programs: share one compilation cache per
# test session. It took a repeated tiny distillation from 55 s to 34 s. The
# process that makes it (pytest, or pytest-xdist's controller) removes it;
# xdist's workers inherit the variable and so compile the session fixtures'
# programs once between them. Children take it as their `--compile_cache`
# default (VLDD_COMPILE_CACHE): without it they wrote to, and read from, the
# user's ~/.cache/vldd_jax/xla. Programs that compile in under 0.3 s are left
# out: writing hundreds of them cost more than compiling them again (the
# matching and blend tests took 0.91x their time, 2 runs of each).
_MIN_COMPILE_SECS = 0.3
_CACHE_DIR = os.environ.get("VLDD_JAX_TEST_CACHE")
if not _CACHE_DIR:
  _CACHE_DIR = tempfile.mkdtemp(prefix="vldd_jax_test_cache_")
  os.environ["VLDD_JAX_TEST_CACHE"] = _CACHE_DIR
  atexit.register(shutil.rmtree, _CACHE_DIR, ignore_errors=True)
os.environ.update(JAX_COMPILATION_CACHE_DIR=_CACHE_DIR, VLDD_COMPILE_CACHE=_CACHE_DIR,
                  JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS=str(_MIN_COMPILE_SECS),
                  JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0")
jax.config.update("jax_compilation_cache_dir", _CACHE_DIR)
jax.config.update("jax_persistent_cache_min_compile_time_secs", _MIN_COMPILE_SECS)
jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def subprocess_env(devices: int = 1) -> dict[str, str]:
  """Environment for a `python -m vldd_jax.main` child: fast compiles, N CPU devices."""
  env = dict(os.environ, JAX_DISABLE_MOST_OPTIMIZATIONS="true")
  if devices > 1:
    env["XLA_FLAGS"] += f" --xla_force_host_platform_device_count={devices}"
  return env


def main_cmd(workdir, data_dir: str, *flags: str) -> list[str]:
  """`python -m vldd_jax.main` on the tiny config with `data_dir`."""
  return [sys.executable, "-m", "vldd_jax.main", "--config=configs/shapes.py:tiny",
          f"--workdir={workdir}", f"--config.data.data_dir={data_dir}", *flags]


def run_main(workdir, data_dir: str, *flags: str, devices: int = 1,
             check: bool = True) -> subprocess.CompletedProcess:
  """Runs `main_cmd` to the end; with `check`, asserts it succeeded."""
  result = subprocess.run(main_cmd(workdir, data_dir, *flags), cwd=ROOT,
                          capture_output=True, text=True, timeout=600,
                          env=subprocess_env(devices))
  if check:
    assert result.returncode == 0, result.stderr[-3000:]
  return result


def kill_when_exists(workdir, data_dir: str, flags: tuple[str, ...], marker,
                     sig: int = signal.SIGKILL, env: dict | None = None) -> tuple[int, str]:
  """Starts `main_cmd` (with `env` added to `subprocess_env()`), sends it `sig`
  as soon as the path `marker` exists and returns its (exit code, stderr)."""
  with tempfile.TemporaryFile("w+") as stderr:
    proc = subprocess.Popen(main_cmd(workdir, data_dir, *flags), cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=stderr,
                            env={**subprocess_env(), **(env or {})})
    deadline = time.time() + 300
    while not marker.exists() and proc.poll() is None and time.time() < deadline:
      time.sleep(0.02)
    proc.send_signal(sig)
    proc.wait()
    assert marker.exists(), f"the run ended before {marker} was saved"
    stderr.seek(0)
    return proc.returncode, stderr.read()


def distill_with(config, workdir, **fields) -> None:
  """Stage distill on `workdir` in this process, `config` with `distill` fields changed."""
  config = config.copy_and_resolve_references()
  config.distill.update(fields)
  distill.run(config, str(workdir))


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
  """(config, workdir) after the pretrain and experts stages, run in this process;
  stamped as `stages.run` would, so copies with its stamp run as CLI workdirs."""
  workdir = str(tmp_path_factory.mktemp("work"))
  workdir_lib.claim(workdir)
  config = tiny_config(data_dir)
  pretrain.run(config, workdir)
  experts.run(config, workdir)
  return config, workdir


@pytest.fixture(scope="session")
def distilled(trained):
  """(config, workdir) after stage distill too, on `trained`'s workdir."""
  config, workdir = trained
  distill.run(config, workdir)
  return config, workdir


# A test that starts a child interpreter (`python -m vldd_jax.main` or another)
# pays JAX's import and its own compilations again: marked `slow`, so that
# `pytest -m "not slow"` is the quick in-process loop.
_CHILD_STARTERS = re.compile(r"\b(run_main|main_cmd|kill_when_exists|subprocess\.\w+|"
                             r"nbclient|os\.system)\b")


def pytest_configure(config):
  config.addinivalue_line("markers", "slow: starts a child interpreter (a subprocess)")


def _starts_a_child(module) -> set[str]:
  """Names of `module`'s functions that start a child, directly or through
  another function of the module."""
  functions = {name: inspect.getsource(f) for name, f in vars(module).items()
               if inspect.isfunction(f) and f.__module__ == module.__name__}
  starters = {n for n, source in functions.items() if _CHILD_STARTERS.search(source)}
  while starters:
    calls = re.compile(r"\b(" + "|".join(map(re.escape, starters)) + r")\(")
    more = {n for n, source in functions.items() if calls.search(source)}
    if more <= starters:
      break
    starters |= more
  return starters


def pytest_collection_modifyitems(items):
  starters = {}
  for item in items:
    function = getattr(item, "function", None)
    if function is None:
      continue
    module = inspect.getmodule(function)
    if module.__name__ not in starters:
      starters[module.__name__] = _starts_a_child(module)
    if function.__name__ in starters[module.__name__]:
      item.add_marker(pytest.mark.slow)
