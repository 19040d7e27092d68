r"""The embedded `shapes` dataset: distillation end to end on a CPU, offline.

Run the pipeline (data, pretrain, experts, distill, evaluate):

  python -m vldd_jax.main --config=configs/shapes.py --workdir=/tmp/vldd_shapes

Every method (distilled, coresets) at budgets 100, 200, 500 and 1000 pairs:

  python -m vldd_jax.main --config=configs/shapes.py --config.stage=compare \
      --workdir=/tmp/vldd_shapes

One stage, a smaller variant, and a field override:

  python -m vldd_jax.main --config=configs/shapes.py:quick \
      --config.stage=data --config.data.num_train=2000 --workdir=/tmp/vldd_quick

The whole pipeline and then every method at every budget (the paper's Table
1), from an empty workdir:

  python -m vldd_jax.main --config=configs/shapes.py:table1 --workdir=/tmp/vldd_table1

Config arguments (after the `:`): `table1` ends the pipeline with stage
`compare`; `quick` shrinks every split for a run of a few minutes; `tiny` is
seconds-long, for tests.
"""
import ml_collections

from vldd_jax import config_lib


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """Returns the shapes config; `arg` as documented in the module docstring."""
  arg = config_lib.parse_arg(arg, quick=False, tiny=False, table1=False)
  config = ml_collections.ConfigDict()
  config.stage = "pipeline"
  config.seed = 0
  config.multihost = False  # True: jax.distributed.initialize() (parallel.py).
  # Experts, and an evaluation row's seeds, trained this many at a time in
  # threads: a tiny model's step leaves a core idle part of the time, and three
  # at once train ~1.3x as fast here, with the same results (docs/benchmarks.md).
  config.concurrent_students = 3

  config.data = ml_collections.ConfigDict(dict(
      name="shapes",
      data_dir="",  # Empty: <workdir>/tfds.
      # A split whose images and caption embeddings fit in this many MiB is read
      # whole into memory (fastest); a larger one by rows from disk, as batches
      # need them, so memory does not grow with the dataset (docs/scaling.md).
      in_memory_mb=512,
      image_size=32,
      max_objects=3,
      num_train=10_000,
      num_val=1_000,
      num_test=1_000,
      num_pretrain=20_000,  # Disjoint split with attribute labels.
      seed=0,
  ))
  config.text = config_lib.text_config()
  config.model = config_lib.model_config()

  config.pretrain = config_lib.pretrain_config()

  # The paper's expert optimiser; fewer, shorter runs suffice on shapes. 20
  # epochs (10 before the budget study, docs/budget.md, which ran on 20): the
  # full-data row and the `easy_k_center` start read the last one.
  config.experts = config_lib.experts_config()
  config.experts.update(num_experts=3, epochs=20)

  # The paper's meta rates (SGD, 1000 / 1000) blow pixels and unit-norm MiniLM
  # embeddings far out of distribution here (docs/results_shapes.md).
  config.distill = config_lib.small_data_distill_config()
  config.evaluate = config_lib.evaluate_config()
  config.compare = config_lib.compare_config()
  if arg.table1:  # The paper's Table 1 on shapes: every method at every budget.
    config.compare.in_pipeline = True

  if arg.quick:
    config.data.update(num_train=800, num_val=100, num_test=200, num_pretrain=2_000)
    config.pretrain.update(epochs=3, batch_size=64)
    # Smaller batches: 800 images give experts 25 steps an epoch, not 6.
    config.experts.update(num_experts=2, epochs=5, batch_size=32)
    config.distill.update(max_start_epoch=3, iterations=20, syn_steps=5)
    config.evaluate.epochs = 30
    config.compare.budgets = (50, 100, 200)
  if arg.tiny:
    # in_memory_mb=0: the tests run the by-rows reading that large datasets take.
    config.data.update(num_train=64, num_val=16, num_test=16, num_pretrain=80,
                       in_memory_mb=0)
    config.model.vit.update(width=32, depth=1, heads=2, mlp_dim=64)
    config.model.embed_dim = 32
    config.pretrain.update(epochs=1, batch_size=16)
    config.experts.update(num_experts=2, epochs=3, batch_size=16, eval_batch_size=16)
    config.distill.update(num_pairs=8, syn_steps=2, batch_size=4, expert_epochs=1,
                          max_start_epoch=2, iterations=4, log_every=2,
                          checkpoint_every=2)
    config.evaluate.update(seeds=2, epochs=2, batch_size=8)
    config.compare.budgets = (4, 8)
  return config
