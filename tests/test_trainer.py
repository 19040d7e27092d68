"""The student's train step: one compiled step for students of any rates, splits
read from disk, and a row of students stepped as one vmapped program."""
import re
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

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


def test_a_split_read_from_disk_trains_and_embeds_as_one_in_memory(data_dir):
  from conftest import tiny_config
  from vldd_jax import parallel
  from vldd_jax.data import input_pipeline, lazy_arrays
  config = tiny_config(data_dir)
  assert config.data.in_memory_mb == 0  # By rows; a budget it fits reads it whole:
  config.data.in_memory_mb = 1
  assert isinstance(input_pipeline.load_split(config, "unused", "train").images, np.ndarray)
  config.data.in_memory_mb = 0
  streamed = input_pipeline.load_split(config, "unused", "train")
  assert isinstance(streamed.images, lazy_arrays.RowReader)
  assert isinstance(streamed.text_emb, lazy_arrays.RowReader)
  # Images parsed from the raw records are the ones TFDS decodes.
  source = input_pipeline.builder(config, "unused").as_data_source()["train"]
  rows = np.array([5, 0, 63, 5, 17])
  np.testing.assert_array_equal(
      streamed.images[rows], np.stack([e["image"] for e in source.__getitems__(rows.tolist())]))
  in_memory = input_pipeline.Split(np.asarray(streamed.images), streamed.captions,
                                   np.asarray(streamed.text_emb), streamed.labels)
  student = trainer.init_student(config.model, jax.random.key(0),
                                 in_memory.images.shape[1:], in_memory.text_emb.shape[-1], None)
  tx = trainer.make_optimizer(0.1, 0.9)
  step = trainer.make_train_step(trainer.student_loss(student.apply_fn, objectives.Plain()), tx)
  results = []
  for split in (streamed, in_memory):
    trainable = jax.tree.map(jnp.array, student.trainable)  # The step donates it.
    state = (trainable, tx.init(trainable))
    for epoch in range(2):  # The same batches, captions and order in every epoch.
      state, loss, correct = trainer.train_epoch(
          step, state, student.frozen, split.images, split.text_emb, batch_size=16,
          seed=(0, epoch))
    embedder = trainer.Embedder(student.apply_fn, parallel.make_mesh(), 16)
    results.append((state[0], loss, correct,
                    trainer.evaluate_retrieval(embedder, state[0], student.frozen, split)))
  (params, loss, correct, recall), (params_mem, loss_mem, correct_mem, recall_mem) = results
  assert loss == loss_mem and recall == recall_mem
  np.testing.assert_array_equal(correct, correct_mem)
  for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(params_mem)):
    np.testing.assert_array_equal(a, b)


def test_a_row_of_students_in_one_vmapped_program_trains_each_as_alone(data_dir):
  # One tower for the row, as a loaded backbone gives every seed.
  row_trains_each_as_alone(data_dir, shared_frozen=True, epochs=2)


def test_a_row_on_four_devices_trains_each_as_alone(data_dir):
  # Each student's batch split over the devices inside the vmapped program;
  # each student its own frozen tower, as a tower from scratch gives.
  from conftest import ROOT, subprocess_env
  code = ("import sys; sys.path.insert(0, 'tests'); import test_trainer; "
          f"test_trainer.row_trains_each_as_alone({str(data_dir)!r}, False, epochs=1); "
          "import jax; print('devices', jax.device_count())")
  result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                          text=True, timeout=600, env=subprocess_env(devices=4))
  assert result.returncode == 0, result.stderr[-3000:]
  assert "devices 4" in result.stdout


def row_trains_each_as_alone(data_dir: str, shared_frozen: bool, epochs: int) -> None:
  """Asserts that `train_row_epochs` trains 3 students as `train_epoch` trains
  each (from a split read by rows from disk), as evaluation trains a row's
  seeds with `evaluate.vmap_seeds`: SGD with momentum and rates in the state,
  LoRS's learned targets, 5 captions an image."""
  from conftest import tiny_config
  from vldd_jax import config_lib, parallel
  from vldd_jax.data import input_pipeline
  config = tiny_config(data_dir)
  split = input_pipeline.load_split(config, "unused", "train")
  assert split.text_emb.ndim == 3
  cfg = config_lib.distill_config()
  cfg.objective = "lowrank"
  objective = objectives.build(cfg)
  syn = objective.init(len(split), jax.random.key(7))
  syn["sim"]["right"] = 0.3 * jax.random.normal(jax.random.key(8),
                                                syn["sim"]["right"].shape)
  targets = objective.eval_targets(objective.export(syn))
  tx = trainer.make_optimizer(0.1, 0.5, lr_text=0.2, rates_in_state=True)
  seeds = (3, 4, 5)
  fresh = [trainer.init_student(config.model, jax.random.key(s), split.images.shape[1:],
                                split.text_emb.shape[-1]) for s in seeds]
  frozens = [fresh[0].frozen if shared_frozen else f.frozen for f in fresh]
  loss = trainer.student_loss(fresh[0].apply_fn, objective, augment=True)
  alone_step = trainer.make_train_step(loss, tx)
  alone = []
  for student, frozen, seed in zip(fresh, frozens, seeds):
    state = (jax.tree.map(jnp.array, student.trainable), tx.init(student.trainable))
    for epoch in range(epochs):
      state, mean_loss, correct = trainer.train_epoch(
          alone_step, state, frozen, split.images, split.text_emb, batch_size=16,
          seed=(seed, epoch), targets=targets)
    alone.append((state[0], mean_loss, correct))

  stack = lambda trees: jax.tree.map(lambda *x: jnp.stack(x), *trees)
  mesh = parallel.make_mesh()
  row_epochs = trainer.make_row_epochs(loss, tx, shared_frozen, mesh)
  programs = []  # The row program as XLA compiled it for the devices.
  recorded = lambda *args: programs.append(
      row_epochs.lower(*args).compile().as_text()) or row_epochs(*args)
  state = parallel.put_replicated(
      (stack([s.trainable for s in fresh]), stack([tx.init(s.trainable) for s in fresh])),
      mesh)
  pairs = parallel.put_replicated((np.asarray(split.images), np.asarray(split.text_emb),
                                   targets), mesh)
  state, losses, corrects = trainer.train_row_epochs(
      recorded, state, frozens[0] if shared_frozen else stack(frozens), pairs,
      batch_size=16, seeds=[[(s, epoch) for s in seeds] for epoch in range(epochs)])
  assert losses.shape == (3, epochs) and corrects.shape == (3, epochs, len(split))
  losses, corrects = losses[:, -1], corrects[:, -1]
  for s, (params, mean_loss, correct) in enumerate(alone):
    assert losses[s] == pytest.approx(mean_loss, rel=1e-5)
    np.testing.assert_array_equal(corrects[s], correct)
    for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(state[0])):
      # float32, batched against unbatched dots: they sum in another order.
      np.testing.assert_allclose(b[s], a, rtol=1e-4, atol=1e-6)
  # The students differ: a row is not one student three times.
  assert not np.allclose(losses[0], losses[1])
  # Each gathered batch [students, 16, 32, 32, 3] is split over the devices
  # along its batch axis, the students' axis whole.
  per_device = {int(b) for b in re.findall(r"\[3,(\d+),32,32,3\]", programs[0])}
  assert per_device == {16 // jax.device_count()}, per_device
