"""Stage `experts`: E dual-encoder runs on the full train split, saved every epoch.

Each expert starts from the backbone with LoRA factors and heads drawn from its
own seed and trains the trainable partition with optax SGD. Its trajectory goes
to the Orbax store of `trajectories.py`. A rerun skips finished experts and
resumes an unfinished one at its last saved epoch; the data order of an epoch
depends only on (seed, expert, epoch), so resuming repeats an uninterrupted run.
"""
import os
import queue
import threading
import time
from typing import NamedTuple

import jax
import ml_collections
import numpy as np
import optax
import orbax.checkpoint as ocp
import tqdm
from absl import logging

from vldd_jax import backbone
from vldd_jax import checksums
from vldd_jax import metrics_log
from vldd_jax import objectives
from vldd_jax import parallel
from vldd_jax import preemption
from vldd_jax import provenance
from vldd_jax import trainer
from vldd_jax import trajectories
from vldd_jax import workdir_lib
from vldd_jax.data import input_pipeline
from vldd_jax.models import build_model, make_apply_fn

# One Orbax call at a time: saves from concurrent experts' threads (its
# temporary folders, its operation ids) corrupt each other.
_ORBAX = threading.Lock()


def _save(mngr: ocp.CheckpointManager, epoch: int, items: dict) -> None:
  for name in ("opt_state", "frozen"):  # Plain SGD keeps no state; trainable=all
    if name in items and not jax.tree.leaves(items[name]):  # freezes nothing.
      del items[name]
  with _ORBAX:
    mngr.save(epoch, args=ocp.args.Composite(**{
        name: ocp.args.JsonSave(value) if name == "metrics" else ocp.args.StandardSave(value)
        for name, value in items.items()}))
    mngr.wait_until_finished()


def _restore(mngr: ocp.CheckpointManager, epoch: int, params, opt_state):
  items = {"params": ocp.args.StandardRestore(params)}
  if jax.tree.leaves(opt_state):
    items["opt_state"] = ocp.args.StandardRestore(opt_state)
  with _ORBAX:
    restored = mngr.restore(epoch, args=ocp.args.Composite(**items))
  return restored.params, restored.get("opt_state", opt_state)


def _history(mngr: ocp.CheckpointManager, last: int) -> list[dict]:
  history = []
  for epoch in range(last + 1):
    try:
      with _ORBAX:
        history.append(mngr.restore(epoch, args=ocp.args.Composite(
            metrics=ocp.args.JsonRestore())).metrics)
    except Exception as e:  # Orbax/JSON errors name neither file nor fix.
      raise ValueError(f"{mngr.directory}/{epoch}/metrics cannot be read ("
                       f"{type(e).__name__}: {e}). {trajectories.RETRAIN_EPOCH}") from e
  return history


def _rounded(recall: dict[str, float]) -> dict[str, float]:
  return {k: round(v, 2) for k, v in recall.items()}


def run(config: ml_collections.ConfigDict, workdir: str) -> None:
  """Trains `config.experts.num_experts` experts, skipping finished ones."""
  cfg = config.experts
  parallel.check_divisible(cfg.batch_size, "experts.batch_size")
  for e in range(cfg.num_experts):
    trajectories.check_settings(config, workdir, e)
  todo = [e for e in range(cfg.num_experts) if not trajectories.is_finished(workdir, e)]
  if not todo:
    logging.info("All %d experts finished in %s.", cfg.num_experts,
                 workdir_lib.experts_dir(workdir))
    return
  encoder = input_pipeline.text_encoder(config)
  train = input_pipeline.load_split(config, workdir, "train", encoder=encoder)
  val = input_pipeline.load_split(config, workdir, "val", encoder=encoder)
  test = input_pipeline.load_split(config, workdir, "test", encoder=encoder)
  tower = backbone.loader(config, workdir)
  mesh = parallel.make_mesh()
  tx = trainer.make_optimizer(cfg.lr, cfg.momentum)
  # One compiled step and embedder for every expert.
  apply_fn = make_apply_fn(build_model(config.model))
  program = _Program(tx, trainer.make_train_step(
      trainer.student_loss(apply_fn, objectives.Plain()), tx),
      trainer.Embedder(apply_fn, mesh, cfg.eval_batch_size), mesh)
  at_once = config.concurrent_students
  bar_lines = queue.SimpleQueue()  # The terminal lines of progress bars not in use.
  for line in range(at_once):
    bar_lines.put(line)
  with preemption.StopOnSigterm() as stop:  # SIGTERM: stop after the epoch saved.

    def train_expert(expert: int) -> None:
      student = trainer.init_student(
          config.model, jax.random.fold_in(jax.random.key(config.seed), expert),
          train.images.shape[1:], train.text_emb.shape[-1], tower)
      line = bar_lines.get()
      try:
        _train_expert(config, workdir, expert, student, program, (train, val, test), stop,
                      bar_position=line)
      finally:
        bar_lines.put(line)

    # Each expert stops after its epoch is saved; the pool waits for them all.
    parallel.map_concurrently(train_expert, todo, at_once)


class _Program(NamedTuple):
  """What every expert shares: the optimizer, the compiled step, the embedder."""
  tx: optax.GradientTransformation
  train_step: trainer.TrainStep
  embedder: trainer.Embedder
  mesh: jax.sharding.Mesh


def _train_expert(config, workdir, expert, student, program: _Program,
                  splits: tuple[input_pipeline.Split, ...],
                  stop: preemption.StopOnSigterm, bar_position: int = 0) -> None:
  cfg = config.experts
  tx, train_step, embedder, mesh = program
  train, val, test = splits
  os.makedirs(workdir_lib.expert_dir(workdir, expert), exist_ok=True)
  # Global (replicated) arrays from the start: multi-host Orbax saves only those.
  trainable, opt_state, frozen = parallel.put_replicated(
      (student.trainable, tx.init(student.trainable), student.frozen), mesh)
  with _ORBAX:
    mngr = trajectories.checkpoint_manager(workdir, expert)
  with mngr:
    saved = sorted(mngr.all_steps())
    last = trajectories.resumable_epoch(saved)
    if saved and last != saved[-1]:  # An epoch's folder was deleted.
      logging.warning("Expert %d: epoch %s missing from %s/ckpt; training again from "
                      "there (the same trajectory: the data order is fixed).", expert,
                      0 if last is None else last + 1, workdir_lib.expert_dir(workdir, expert))
      for step in saved:
        if last is None or step > last:
          with _ORBAX:
            mngr.delete(step)
    if last is None:
      metrics = {"epoch": 0, "val": _rounded(trainer.evaluate_retrieval(
          embedder, trainable, frozen, val)), "seconds": 0.0,
                 "params_sha256": checksums.tree_sha256(trainable)}
      _save(mngr, 0, dict(params=trainable, opt_state=opt_state, frozen=frozen,
                          metrics=metrics))
      last = 0
    else:
      trainable, opt_state = _restore(mngr, last, trainable, opt_state)
      logging.info("Expert %d: resuming after epoch %d.", expert, last)
    history = _history(mngr, last)
    bar = tqdm.trange(last, cfg.epochs, initial=last, total=cfg.epochs,
                      desc=f"expert {expert + 1}/{cfg.num_experts}", position=bar_position)
    for epoch in range(last + 1, cfg.epochs + 1):
      t0 = time.time()
      (trainable, opt_state), loss, correct = trainer.train_epoch(
          train_step, (trainable, opt_state), frozen, train.images, train.text_emb,
          batch_size=cfg.batch_size, seed=(config.seed, expert, epoch))
      if not np.isfinite(loss):
        raise FloatingPointError(f"Expert {expert}: loss {loss} at epoch {epoch}; lower "
                                 "config.experts.lr. Epochs before it are saved.")
      recall = _rounded(trainer.evaluate_retrieval(embedder, trainable, frozen, val))
      metrics = {"epoch": epoch, "loss": round(loss, 5), "val": recall,
                 "in_batch_accuracy": round(100 * float(np.mean(correct[correct >= 0])), 2),
                 "seconds": round(time.time() - t0, 2),
                 "params_sha256": checksums.tree_sha256(trainable)}
      _save(mngr, epoch, dict(params=trainable, opt_state=opt_state, correct=correct,
                              metrics=metrics))
      history.append(metrics)
      metrics_log.append(workdir, {"stage": "experts", "expert": expert, **metrics})
      _write_manifest(config, workdir, expert, history, finished=False)
      bar.update()
      bar.set_postfix(loss=f"{loss:.3f}", val_tr1=recall["tr@1"], val_ir1=recall["ir@1"])
      stop.stop_if_requested(f"epoch {epoch} of expert {expert}; saved "
                             f"{workdir_lib.expert_dir(workdir, expert)}/ckpt/{epoch}")
    bar.close()
  test_recall = _rounded(trainer.evaluate_retrieval(embedder, trainable, frozen, test))
  logging.info("Expert %d finished: test %s", expert, test_recall)
  _write_manifest(config, workdir, expert, history, finished=True, test=test_recall)


def _write_manifest(config, workdir, expert, history, *, finished, test=None) -> None:
  manifest = {
      "expert": expert,
      "finished": finished,
      "settings": provenance.settings(config, "experts"),
      "epochs_done": history[-1]["epoch"],
      "epochs": config.experts.epochs,
      "dtype": "float32",
      "model": config.model.to_dict(),
      "data": config.data.to_dict(),
      "text": config.text.to_dict(),
      "optimizer": {k: config.experts[k] for k in ("lr", "momentum", "batch_size")},
      "history": history,
      "wall_seconds": round(sum(h["seconds"] for h in history), 1),
  }
  if test is not None:
    manifest["test"] = test
  trajectories.write_manifest(workdir, expert, manifest)
