"""Where an evaluation row's time goes, and what training its seeds in one
program would save: the default shapes evaluation student on 100 pairs (one
batch of 100 per epoch, `--steps` epochs, `--seeds` seeds; 50 and 3 by
default), timed alternately in one process, on whatever backend JAX has (the
check to run on a GPU or TPU).

  python -m benchmarks.eval_students [--rounds=3] [--seeds=3] [--steps=50] \
      [--name=eval_students]

Variants, each in milliseconds per student step (a default row is 150 of them):
- today's loop: one jitted step per dispatch (`trainer.make_train_step`);
- the same step without DSA: augmentation's share;
- one program per student: its steps as a `lax.scan`;
- one program per row: that scan vmapped over the seeds;
- one program per row as `evaluate.vmap_seeds=True` trains it
  (`trainer.make_row_epochs`: the pairs on the device, each step's batch
  gathered in the program, every epoch of one step in one call);
- today's loop for the seeds at once, one thread each
  (`parallel.map_concurrently`, as `config.concurrent_students` runs them).
Writes benchmarks/results/<name>.{json,md}.
"""
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import app, flags

from benchmarks import common
from vldd_jax import config_lib
from vldd_jax import objectives
from vldd_jax import parallel
from vldd_jax import trainer

_ROUNDS = flags.DEFINE_integer("rounds", 3, "Alternating rounds of every variant.")
_SEEDS = flags.DEFINE_integer("seeds", 3, "Students of the row.")
_STEPS = flags.DEFINE_integer("steps", 50, "Steps (epochs of one batch) per student.")
_NAME = flags.DEFINE_string("name", "eval_students", "Results file name.")
PAIRS = 100


def _variants(config, seeds: int, steps: int) -> tuple[dict, tuple]:
  """{name: (run(trainables, opt_states, keys) -> trainables, student steps)} and
  the inputs every variant starts from."""
  rng = np.random.default_rng(0)
  images = jnp.asarray(rng.integers(0, 256, (PAIRS, 32, 32, 3), np.uint8))
  text = rng.standard_normal((PAIRS, 384)).astype(np.float32)
  text = jnp.asarray(text / np.linalg.norm(text, axis=1, keepdims=True))
  students = [trainer.init_student(config.model, jax.random.key(s), (32, 32, 3), 384)
              for s in range(seeds)]
  frozen = students[0].frozen
  tx = trainer.make_optimizer(0.1, lr_text=0.1, rates_in_state=True)
  starts = ([s.trainable for s in students], [tx.init(s.trainable) for s in students])
  keys = jax.random.split(jax.random.key(1), (seeds, steps))
  losses = {aug: trainer.student_loss(students[0].apply_fn, objectives.Plain(), aug)
            for aug in (True, False)}

  def loop(augment, at_once=1):
    step = trainer.make_train_step(losses[augment], tx)

    def student(start):
      trainable, opt_state, seed_keys = start
      trainable = jax.tree.map(jnp.copy, trainable)  # The step donates it.
      opt_state = jax.tree.map(jnp.copy, opt_state)
      for key in seed_keys:
        trainable, opt_state, _, _ = step(trainable, opt_state, frozen, images, text, key)
      return jax.block_until_ready(trainable)

    return lambda ts, os, ks: parallel.map_concurrently(student, zip(ts, os, ks), at_once)

  def one_step(carry, key):
    trainable, opt_state = carry
    grads, _ = jax.grad(losses[True], has_aux=True)(trainable, frozen, images, text, key)
    updates, opt_state = tx.update(grads, opt_state, trainable)
    return (optax.apply_updates(trainable, updates), opt_state), None

  scan = jax.jit(lambda t, o, k: jax.lax.scan(one_step, (t, o), k)[0][0])
  row = jax.jit(jax.vmap(lambda t, o, k: jax.lax.scan(one_step, (t, o), k)[0][0]))
  stack = lambda trees: jax.tree.map(lambda *x: jnp.stack(x), *trees)
  mesh = parallel.make_mesh()
  row_epochs = trainer.make_row_epochs(losses[True], tx, True, mesh)
  on_devices = parallel.put_replicated((images, text, None), mesh)
  frozen_on_devices = parallel.put_replicated(frozen, mesh)

  def library_row(ts, os, ks):  # Its own draws: it picks the keys as evaluation does.
    state = (stack(ts), stack(os))  # New arrays: the program donates them.
    state, _, _ = trainer.train_row_epochs(
        row_epochs, state, frozen_on_devices, on_devices, batch_size=PAIRS,
        seeds=[[(s, e) for s in range(seeds)] for e in range(steps)])
    return jax.block_until_ready(state[0])

  variants = {
      "today's loop: one step per dispatch": loop(True),
      "the same step without DSA": loop(False),
      f"the {seeds} seeds at once, one thread each (concurrent_students={seeds})":
          loop(True, seeds),
      "one program per student (lax.scan over its steps)":
          lambda ts, os, ks: [scan(t, o, k) for t, o, k in zip(ts, os, ks)],
      f"one program per row (the scan vmapped over {seeds} seeds)":
          lambda ts, os, ks: row(stack(ts), stack(os), ks),
      "one program per row, as evaluate.vmap_seeds trains it": library_row,
  }
  return variants, (*starts, keys)


def main(argv):
  del argv
  config = config_lib.load_config("configs/shapes.py")
  seeds, steps = _SEEDS.value, _STEPS.value
  variants, inputs = _variants(config, seeds, steps)
  for run in variants.values():  # Compile and warm up.
    jax.block_until_ready(run(*inputs))
  times = {name: [] for name in variants}
  for _ in range(_ROUNDS.value):
    for name, run in variants.items():
      start = time.perf_counter()
      jax.block_until_ready(run(*inputs))
      times[name].append((time.perf_counter() - start) / (seeds * steps) * 1e3)
  today = statistics.median(times["today's loop: one step per dispatch"])
  rows = [{"variant": name, "ms_per_student_step": round(statistics.median(t), 2),
           "vs_today": round(statistics.median(t) / today, 2),
           "rounds_ms": [round(x, 2) for x in t]} for name, t in times.items()]
  lines = ["| variant | ms per student step | vs today's loop |", "|---|---:|---:|"]
  lines += [f"| {r['variant']} | {r['ms_per_student_step']} | {r['vs_today']}x |"
            for r in rows]
  common.write(_NAME.value, {"rows": rows, "seeds": seeds, "steps": steps,
                                 "pairs": PAIRS, "machine": common.machine()},
               "\n".join(lines))


if __name__ == "__main__":
  app.run(main)
