"""The student's optimizer: one compiled train step for students of any rates."""
import jax
import jax.numpy as jnp
import numpy as np

from vldd_jax import objectives
from vldd_jax import trainer
from test_matching import IMAGE, TEXT_DIM, _problem


def test_students_of_any_rates_share_one_compiled_step_and_train_as_plain_sgd():
  apply_fn, trainable, frozen, *_ = _problem(jnp.float32)
  images = jax.random.normal(jax.random.key(0), (4,) + IMAGE)
  text = jax.random.normal(jax.random.key(1), (4, TEXT_DIM))
  loss = trainer.student_loss(apply_fn, objectives.Plain())
  shared = trainer.make_train_step(
      loss, trainer.make_optimizer(0.1, 0.5, lr_text=0.1, rates_in_state=True))
  copy = lambda tree: jax.tree.map(jnp.array, tree)
  for lr_image, lr_text in ((0.05, 0.2), (0.3, 0.01)):
    ours, state = copy(trainable), trainer.make_optimizer(
        lr_image, 0.5, lr_text=lr_text, rates_in_state=True).init(trainable)
    tx = trainer.make_optimizer(lr_image, 0.5, lr_text=lr_text)
    plain = trainer.make_train_step(loss, tx)
    theirs, plain_state = copy(trainable), tx.init(trainable)
    for i in range(2):  # Two steps: momentum too.
      ours, state, *_ = shared(ours, state, frozen, images, text, jax.random.key(i))
      theirs, plain_state, *_ = plain(theirs, plain_state, frozen, images, text,
                                      jax.random.key(i))
    for a, b in zip(jax.tree.leaves(ours), jax.tree.leaves(theirs)):
      # float32, two programs that fuse and sum differently: 2e-6 apart seen.
      np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
  assert shared._cache_size() == 1  # Both students ran one compiled step.
