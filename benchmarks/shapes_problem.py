"""The default shapes distillation problem the speed benchmarks time."""
import contextlib
import statistics
import time
from unittest import mock

import jax
import numpy as np

from vldd_jax import compile_options
from vldd_jax import config_lib
from vldd_jax import matching
from vldd_jax import objectives
from vldd_jax import trainer
from vldd_jax.models import build_model, make_feature_fn


def build(syn_steps: int, remat: bool = True, augment: bool | None = None,
          first_order: bool = False, overrides: dict | None = None,
          hoist_tower: bool = False, xla_defaults: bool = False,
          reverse: str = "hvp") -> tuple:
  """(config, student, syn, meta_step, state, starts, targets, key) of the default
  shapes distillation (`augment` None: the config's), with `overrides` of dotted
  config fields (e.g. {"distill.objective": "blend", "model.trainable": "heads"});
  `xla_defaults`: the meta step compiles without `compile_options`'s options;
  `reverse`, `remat`: `matching.UnrollConfig`'s."""
  config = config_lib.load_config("configs/shapes.py")
  for path, value in (overrides or {}).items():
    section, _, field = path.rpartition(".")
    (config_lib.get_field(config, section) if section else config)[field] = value
  cfg = config.distill
  objective = objectives.build(cfg)
  student = trainer.init_student(config.model, jax.random.key(0), (32, 32, 3), 384)
  rng = np.random.default_rng(0)
  text = rng.standard_normal((cfg.num_pairs, 384)).astype(np.float32)
  syn = {"images": rng.standard_normal((cfg.num_pairs, 32, 32, 3)).astype(np.float32),
         "text_emb": text / np.linalg.norm(text, axis=1, keepdims=True),
         "log_lr": np.full(2, np.log(config.experts.lr), np.float32),
         **jax.device_get(objective.init(cfg.num_pairs, jax.random.key(2)))}
  starts = jax.tree.map(lambda x: x[None], student.trainable)
  targets = jax.tree.map(lambda x: x + 0.01, starts)
  unroll = matching.UnrollConfig(
      syn_steps, cfg.batch_size, cfg.augment if augment is None else augment,
      cfg.augment_per_image, reverse=reverse, remat=remat, hoist_tower=hoist_tower,
      first_order=first_order)
  tx = matching.make_meta_optimizer(cfg.meta_lr_images, cfg.meta_lr_text,
                                    cfg.meta_lr_rates, cfg.momentum, objective.rates(),
                                    cfg.meta_optimizer)
  with (mock.patch.object(compile_options, "compiler_options", lambda kind="steps": None)
        if xla_defaults else contextlib.nullcontext()):
    meta_step = matching.make_meta_step(student.apply_fn, student.trainable, unroll, tx,
                                        objective, make_feature_fn(build_model(config.model)))
  state = matching.init_state(syn, tx, ema=objective.ema_decay() > 0)
  return config, student, syn, meta_step, state, starts, targets, jax.random.key(1)



def time_meta_step(meta_step, state, starts, targets, frozen, key,
                   iterations: int) -> tuple[float, float]:
  """(compile seconds, median seconds of `iterations` meta steps after a warm-up one)."""
  start = time.perf_counter()
  compiled = meta_step.lower(state, starts, targets, frozen, key).compile()
  compile_s = time.perf_counter() - start
  times = []
  for _ in range(iterations + 1):
    start = time.perf_counter()
    state, loss = compiled(state, starts, targets, frozen, key)
    jax.block_until_ready(loss)
    times.append(time.perf_counter() - start)
  return compile_s, statistics.median(times[1:])
