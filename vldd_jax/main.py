r"""Command-line entry point: one stage, or the whole pipeline.

  python -m vldd_jax.main --config=configs/shapes.py --workdir=/tmp/vldd
  python -m vldd_jax.main --config=configs/shapes.py:quick \
      --config.stage=data --config.data.num_train=2000 --workdir=/tmp/vldd
"""
import logging as py_logging

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

from vldd_jax import parallel
from vldd_jax import stages

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Path to a configs/*.py file, optionally with `:arg`.",
    lock_config=True)
_WORKDIR = flags.DEFINE_string(
    "workdir", None, "Directory for everything a run writes; reruns resume there.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  # Orbax narrates every save at INFO; keep its warnings only.
  logging.get_absl_handler().addFilter(
      lambda r: r.levelno >= py_logging.WARNING or "/orbax/" not in r.pathname)
  parallel.initialize(_CONFIG.value.multihost)
  stages.run(_CONFIG.value, _WORKDIR.value)


if __name__ == "__main__":
  app.run(main)
