"""Expert training pairs/second and retrieval evaluation time.

  python -m benchmarks.throughput [--steps=30]

- Expert training: the default shapes model and expert optimiser (SGD, batch
  128, no augmentation), `trainer.make_train_step` on random pairs; the median
  step time after compilation gives pairs/second, and XLA's cost analysis of
  the compiled step its GFLOP and GFLOP/s. The same step again in a child
  process held to one core (`os.sched_setaffinity`) shows how much of the
  second core a lone step uses (`config.concurrent_students`).
- Retrieval: `retrieval.recall_at_k` on unit embeddings of the size of the
  Flickr30K (1,000 images x 5,000 captions) and COCO (5,000 x 25,000) test
  splits, including the similarity matmul.

Writes benchmarks/results/throughput.{json,md}.
"""
import os
import statistics
import sys
import time

import jax
import numpy as np
from absl import app, flags

from benchmarks import common
from vldd_jax import config_lib
from vldd_jax import objectives
from vldd_jax import parallel
from vldd_jax import retrieval
from vldd_jax import trainer

_STEPS = flags.DEFINE_integer("steps", 30, "Timed expert steps.")
_REPEATS = flags.DEFINE_integer("repeats", 3, "Timed retrieval evaluations per size.")
_CORES = flags.DEFINE_integer(
    "cores", 0, "Internal: time only the expert step, on this many cores, and emit it.")


def expert_training(steps: int) -> dict:
  """Pairs per second of the experts' jitted SGD step on the default model."""
  config = config_lib.load_config("configs/shapes.py")
  batch = config.experts.batch_size
  student = trainer.init_student(config.model, jax.random.key(0), (32, 32, 3), 384)
  tx = trainer.make_optimizer(config.experts.lr, config.experts.momentum)
  train_step = trainer.make_train_step(
      trainer.student_loss(student.apply_fn, objectives.Plain()), tx)
  mesh = parallel.make_mesh()
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, (batch, 32, 32, 3), dtype=np.uint8)
  text = rng.standard_normal((batch, 384)).astype(np.float32)
  images, text = parallel.put_batch((images, text), mesh)
  trainable, frozen = parallel.put_replicated((student.trainable, student.frozen), mesh)
  opt_state = tx.init(trainable)
  key = jax.random.key(1)
  start = time.perf_counter()
  trainable, opt_state, loss, _ = train_step(trainable, opt_state, frozen, images, text, key)
  jax.block_until_ready(loss)
  first_s = time.perf_counter() - start
  times = []
  for _ in range(steps):
    start = time.perf_counter()
    trainable, opt_state, loss, _ = train_step(trainable, opt_state, frozen, images, text,
                                               key)
    jax.block_until_ready(loss)
    times.append(time.perf_counter() - start)
  step_s = statistics.median(times)
  gflop = common.gflop(
      train_step.lower(trainable, opt_state, frozen, images, text, key).compile())
  return {"batch_size": batch, "step_s": round(step_s, 4),
          "pairs_per_s": round(batch / step_s, 1), "first_step_s": round(first_s, 2),
          "gflop_per_step": round(gflop, 3), "gflop_per_s": round(gflop / step_s, 1),
          "cores": len(os.sched_getaffinity(0))}


def retrieval_time(images: int, captions_per_image: int, repeats: int) -> dict:
  """Seconds for recall@K both ways from unit embeddings, matmul included."""
  rng = np.random.default_rng(0)
  unit = lambda n: (lambda x: x / np.linalg.norm(x, axis=1, keepdims=True))(
      rng.standard_normal((n, 64)).astype(np.float32))
  img, txt = unit(images), unit(images * captions_per_image)
  caption_to_image = np.repeat(np.arange(images), captions_per_image)
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    retrieval.recall_at_k(img @ txt.T, caption_to_image)
    times.append(time.perf_counter() - start)
  return {"images": images, "captions": images * captions_per_image,
          "seconds": round(statistics.median(times), 3)}


def main(argv):
  del argv
  if _CORES.value:  # Before JAX starts its CPU client, which sizes its threads.
    os.sched_setaffinity(0, sorted(os.sched_getaffinity(0))[:_CORES.value])
    common.emit(expert_training(_STEPS.value))
    return
  expert = expert_training(_STEPS.value)
  one_core = common.child_result([sys.executable, "-m", "benchmarks.throughput",
                                  "--cores=1", f"--steps={_STEPS.value}"])
  retrievals = [retrieval_time(1000, 5, _REPEATS.value),
                retrieval_time(5000, 5, _REPEATS.value)]
  lines = ["| what | measured |", "|---|---:|",
           f"| expert training, batch {expert['batch_size']} | "
           f"{expert['pairs_per_s']:.0f} pairs/s ({1000 * expert['step_s']:.0f} ms/step) |",
           f"| the same step's arithmetic | {expert['gflop_per_step']:.2f} GFLOP, "
           f"{expert['gflop_per_s']:.0f} GFLOP/s on {expert['cores']} cores |",
           f"| the same step held to one core | {1000 * one_core['step_s']:.0f} ms/step "
           f"({one_core['step_s'] / expert['step_s']:.2f}x) |"]
  lines += [f"| recall@1/5/10 both ways, {r['images']:,} × {r['captions']:,} | "
            f"{r['seconds']:.2f} s |" for r in retrievals]
  common.write("throughput", {"expert_training": expert,
                              "expert_training_one_core": one_core, "retrieval": retrievals,
                              "machine": common.machine()}, "\n".join(lines))


if __name__ == "__main__":
  app.run(main)
