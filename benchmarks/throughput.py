"""Expert training pairs/second and retrieval evaluation time.

  python -m benchmarks.throughput [--steps=30]

- Expert training: the default shapes model and expert optimiser (SGD, batch
  128, no augmentation), `trainer.make_train_step` on random pairs; the median
  step time after compilation gives pairs/second.
- Retrieval: `retrieval.recall_at_k` on unit embeddings of the size of the
  Flickr30K (1,000 images x 5,000 captions) and COCO (5,000 x 25,000) test
  splits, including the similarity matmul.

Writes benchmarks/results/throughput.{json,md}.
"""
import statistics
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
  return {"batch_size": batch, "step_s": round(step_s, 4),
          "pairs_per_s": round(batch / step_s, 1), "first_step_s": round(first_s, 2)}


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
  expert = expert_training(_STEPS.value)
  retrievals = [retrieval_time(1000, 5, _REPEATS.value),
                retrieval_time(5000, 5, _REPEATS.value)]
  lines = ["| what | measured |", "|---|---:|",
           f"| expert training, batch {expert['batch_size']} | "
           f"{expert['pairs_per_s']:.0f} pairs/s ({1000 * expert['step_s']:.0f} ms/step) |"]
  lines += [f"| recall@1/5/10 both ways, {r['images']:,} × {r['captions']:,} | "
            f"{r['seconds']:.2f} s |" for r in retrievals]
  common.write("throughput", {"expert_training": expert, "retrieval": retrievals,
                              "machine": common.machine()}, "\n".join(lines))


if __name__ == "__main__":
  app.run(main)
