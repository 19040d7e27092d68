r"""The embedded `shapes` dataset: distillation end to end on a CPU, offline.

Run everything (data, and later pretrain, experts, distill, evaluate):

  python -m vldd_jax.main --config=configs/shapes.py --workdir=/tmp/vldd_shapes

One stage, a smaller variant, and a field override:

  python -m vldd_jax.main --config=configs/shapes.py:quick \
      --config.stage=data --config.data.num_train=2000 --workdir=/tmp/vldd_quick

Config arguments (after the `:`): `quick` shrinks every split for a run of a
few minutes.
"""
import ml_collections

from vldd_jax import config_lib


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """Returns the shapes config; `arg` as documented in the module docstring."""
  arg = config_lib.parse_arg(arg, quick=False)
  config = ml_collections.ConfigDict()
  config.stage = "pipeline"
  config.seed = 0

  config.data = ml_collections.ConfigDict(dict(
      name="shapes",
      data_dir="",  # Empty: <workdir>/tfds.
      image_size=32,
      max_objects=3,
      num_train=10_000,
      num_val=1_000,
      num_test=1_000,
      num_pretrain=20_000,  # Disjoint split with attribute labels.
      seed=0,
  ))
  config.text = config_lib.text_config()

  if arg.quick:
    config.data.num_train = 2_000
    config.data.num_val = 200
    config.data.num_test = 500
    config.data.num_pretrain = 4_000
  return config
