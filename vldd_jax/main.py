r"""Command-line entry point: one stage, or the whole pipeline.

  python -m vldd_jax.main --config=configs/shapes.py --workdir=/tmp/vldd
  python -m vldd_jax.main --config=configs/shapes.py:quick \
      --config.stage=data --config.data.num_train=2000 --workdir=/tmp/vldd
"""
import logging as py_logging
import signal
import sys

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

from vldd_jax import config_lib
from vldd_jax import parallel
from vldd_jax import preemption
from vldd_jax import stages
from vldd_jax import xla_cache

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Path to a configs/*.py file, optionally with `:arg`.",
    lock_config=True)
_WORKDIR = flags.DEFINE_string(
    "workdir", None, "Directory for everything a run writes; reruns resume there.")
_COMPILE_CACHE = flags.DEFINE_string(
    "compile_cache", xla_cache.DEFAULT,
    "Folder of XLA's persistent compilation cache, so a later run on this machine "
    "reuses what an earlier one compiled (default: $VLDD_COMPILE_CACHE or "
    "~/.cache/vldd_jax/xla); '' turns it off.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  # Orbax narrates every save at INFO; keep its warnings only.
  logging.get_absl_handler().addFilter(
      lambda r: r.levelno >= py_logging.WARNING or "/orbax/" not in r.pathname)
  xla_cache.enable(_COMPILE_CACHE.value)
  parallel.initialize(_CONFIG.value.multihost)
  try:
    stages.run(_CONFIG.value, _WORKDIR.value)
  except preemption.Stopped as e:
    logging.warning("%s", e)
    sys.exit(128 + signal.SIGTERM)  # What a shell reports for a SIGTERM'd process.


def unknown_field(argv: list[str]) -> str | None:
  """What is wrong with the first `--config.<field>` of `argv` that the config
  file lacks (ml_collections only says `AttributeError: 'foo'`); None if none."""
  spec = next((a.split("=", 1)[1] for a in argv if a.startswith("--config=")), None)
  if spec is None:
    return None
  config = config_lib.load_config(spec)
  for arg in argv:
    if not arg.startswith("--config."):
      continue
    path = arg[len("--config."):].split("=", 1)[0]
    if path in config_lib.RENAMED:
      return f"--config.{path} is now --config.{config_lib.RENAMED[path]}."
    node, walked = config, []
    for part in path.split("."):
      if not hasattr(node, "keys") or part not in node:
        where = ".".join(walked) or "the config"
        fields = sorted(node.keys()) if hasattr(node, "keys") else []
        return (f"--config.{path}: {where} has no field {part!r} "
                f"(its fields: {', '.join(fields)}).")
      node, walked = node[part], walked + [part]
  return None


if __name__ == "__main__":
  try:
    app.run(main)
  except (AttributeError, KeyError):
    message = unknown_field(sys.argv)
    if message is None:
      raise
    sys.exit(message)
