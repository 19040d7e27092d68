"""Stage `distill`: learn N synthetic pairs by matching the experts' trajectories.

Per iteration, each of `meta_batch` trajectories (sharded over devices) draws
an expert e and a start epoch t from the budget's trajectory window
(`budget.py`); the set moves to bring `syn_steps` student steps from
theta*_{e,t} close to theta*_{e,t+expert_epochs} (see `matching.py`). The state is checkpointed with Orbax every
`checkpoint_every` iterations and a rerun resumes from the last one; a
non-finite loss stops the run before it can overwrite a good checkpoint.
`settings.json` records what the set depends on; a rerun with other settings
is refused rather than resumed or silently handed the old set, except that
raising `iterations` goes on from the last checkpoint, finished or not.

Outputs in `<workdir>/distill/n<N>/` (`n<N>_<objective>/` for objectives other
than "plain", e.g. LoRS's learned similarity, `distill.objective="lowrank"`;
`distilled_set.py`): `distilled.npz`,
`settings.json`, `synthetic_grid.png` (images with the nearest real caption to
their text), `matching_loss.png`.
"""
import json
import os
import time

import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
import tqdm
from absl import logging
from flax import traverse_util

from vldd_jax import budget
from vldd_jax import checksums
from vldd_jax import coreset
from vldd_jax import distilled_set
from vldd_jax import jsonfile
from vldd_jax import matching
from vldd_jax import metrics_log
from vldd_jax import objectives
from vldd_jax import parallel
from vldd_jax import preemption
from vldd_jax import provenance
from vldd_jax import text
from vldd_jax import trainer
from vldd_jax import trajectories
from vldd_jax import viz
from vldd_jax import workdir_lib
from vldd_jax.data import input_pipeline
from vldd_jax.data import lazy_arrays
from vldd_jax.models import build_model, make_apply_fn, make_feature_fn



class ExpertBuffer:
  """Expert parameters at the epochs distillation can draw, stacked in host memory."""

  def __init__(self, workdir: str, experts: list[int], last_epoch: int):
    per_expert = []
    for e in tqdm.tqdm(experts, desc="load experts", leave=False):
      epochs = trajectories.load_trajectory(workdir, e, range(last_epoch + 1))
      per_expert.append(jax.tree.map(lambda *xs: np.stack(xs), *jax.device_get(epochs)))
    self.params = jax.tree.map(lambda *xs: np.stack(xs), *per_expert)  # [E, T+1, ...]
    self.num_experts = len(experts)

  def sample(self, rng: np.random.Generator, meta_batch: int, start_range: tuple[int, int],
             expert_epochs: int) -> tuple[dict, dict]:
    """(starts, targets), each stacking `meta_batch` draws on a leading axis;
    start epochs are drawn from [lo, hi) = `start_range`."""
    e = rng.integers(0, self.num_experts, meta_batch)
    t = rng.integers(*start_range, meta_batch)
    return (jax.tree.map(lambda x: x[e, t], self.params),
            jax.tree.map(lambda x: x[e, t + expert_epochs], self.params))


def _shared_frozen(workdir: str, experts: list[int]) -> dict:
  frozen = trajectories.load_frozen(workdir, experts[0])
  reference = traverse_util.flatten_dict(jax.device_get(frozen), sep="/")
  for e in experts[1:]:
    other = traverse_util.flatten_dict(jax.device_get(trajectories.load_frozen(workdir, e)),
                                       sep="/")
    differ = sorted(k for k in reference.keys() | other.keys() if k not in other or
                    k not in reference or not np.array_equal(other[k], reference[k]))
    if any("lora_" in k for k in differ):
      raise ValueError(f"Experts 0 and {e} have different frozen LoRA factors "
                       f"({differ[0]}, ...): with model.trainable='heads' the experts "
                       "must share their tower, so train them with model.lora.rank=0.")
    if differ:
      raise ValueError(f"Experts 0 and {e} have different frozen parameters "
                       f"({differ[0]}, ...): distillation needs a shared backbone "
                       "(model.backbone 'pretrain' or a checkpoint, or "
                       "model.trainable='all').")
  return frozen


def _check(config: ml_collections.ConfigDict, experts: list[int], workdir: str,
           matched: budget.Window) -> None:
  cfg = config.distill
  if not experts:
    raise FileNotFoundError(f"No finished experts in {workdir_lib.experts_dir(workdir)}: "
                            "run --config.stage=experts first.")
  budget.check(matched, trajectories.read_manifest(workdir, experts[0])["epochs"],
               cfg.num_pairs)
  if cfg.meta_batch % jax.device_count():
    raise ValueError(f"distill.meta_batch={cfg.meta_batch} must be a multiple of the "
                     f"{jax.device_count()} devices.")


def _init_pairs(config: ml_collections.ConfigDict, workdir: str,
                train: input_pipeline.Split, selector: coreset.Selector | None
                ) -> tuple[np.ndarray, np.ndarray] | None:
  """(rows, captions) of the real pairs a coreset `distill.init` starts from;
  None for the inits `matching.init_synthetic` draws itself."""
  if config.distill.init not in coreset.SELECTORS:
    return None
  selector = selector or coreset.Selector(config, workdir, train)
  return selector.rows(config.distill.init, config.distill.num_pairs)


def settings(config: ml_collections.ConfigDict, num_experts: int) -> dict:
  """What a distilled set depends on (`provenance`), with the number of experts
  it matches; not on the fields of other objectives than its own."""
  ignore = objectives.other_fields(config.distill.objective)
  out = provenance.settings(config, "distill",
                            ignore=tuple(f"distill.{k}" for k in ignore))
  out["distill.experts_used"] = num_experts
  return out


def _check_settings(config: ml_collections.ConfigDict, out: str,
                    num_experts: int) -> int | None:
  """The iterations `out` was distilled for (None if it records none).

  Raises if its settings differ from the config's, except for more
  `distill.iterations`: that run goes on from its last checkpoint.
  """
  path = os.path.join(out, workdir_lib.SET_SETTINGS)
  if not os.path.exists(path):
    return None
  saved = jsonfile.read(path)
  wanted = settings(config, num_experts)
  remedy = "rerun with those settings, or move that folder away to distill anew."
  if provenance.check(saved, wanted, out, remedy, allowed=("distill.iterations",)):
    if wanted["distill.iterations"] < saved["distill.iterations"]:
      provenance.check(saved, wanted, out, remedy)  # Fewer iterations: refused.
    logging.info("Distilling %s further: %d -> %d iterations.", out,
                 saved["distill.iterations"], wanted["distill.iterations"])
  return saved["distill.iterations"]


def _checkpoint_manager(out: str) -> ocp.CheckpointManager:
  return workdir_lib.checkpoint_manager(
      out, max_to_keep=2, item_handlers={"state": ocp.StandardCheckpointHandler(),
                                         "history": ocp.JsonCheckpointHandler()})


def _restore(mngr: ocp.CheckpointManager, like: dict, out: str) -> tuple[dict, list[dict]]:
  """(state, history) of the latest checkpoint, checked against the checksum
  saved with it."""
  where = f"{out}/ckpt/{mngr.latest_step()}"
  remedy = ("Delete that folder and rerun: distillation resumes from the checkpoint "
            "before it, or starts again.")
  restore = lambda like: mngr.restore(mngr.latest_step(), args=ocp.args.Composite(
      state=ocp.args.StandardRestore(like), history=ocp.args.JsonRestore()))
  try:
    restored = restore(like)
  except Exception as e:  # Orbax/TensorStore/JSON errors name neither file nor fix.
    raise ValueError(f"{where} cannot be read ({type(e).__name__}: {e}). {remedy}") from e
  record = restored.history
  if not isinstance(record, dict) or not isinstance(record.get("history"), list):
    raise ValueError(f"{where}: its history item is not a history record. {remedy}")
  if checksums.tree_sha256(restored.state) != record.get("state_sha256"):
    raise ValueError(f"{where}: the set does not match the checksum recorded when it "
                     f"was saved (a damaged file). {remedy}")
  return restored.state, list(record["history"])


def run(config: ml_collections.ConfigDict, workdir: str,
        selector: coreset.Selector | None = None) -> None:
  """Distills `config.distill.num_pairs` pairs unless already done.

  `selector`: the caller's, over this workdir's train split, for a start from a
  coreset to share its features and selections (`compare`'s rows select the same).
  """
  cfg = config.distill
  objective = objectives.build(cfg)
  out = distilled_set.set_dir(workdir, cfg.num_pairs, cfg.objective)
  experts = trajectories.finished_experts(workdir, config)
  if cfg.num_experts > len(experts):
    raise ValueError(f"distill.num_experts={cfg.num_experts}, but "
                     f"{workdir_lib.experts_dir(workdir)} has {len(experts)} finished "
                     "experts: train more (--config.stage=experts) or use fewer.")
  experts = experts[:cfg.num_experts or None]
  logging.info("Matching the trajectories of %d experts (%s; distill.num_experts=%d, 0: "
               "every finished one).", len(experts), experts, cfg.num_experts)
  saved_iterations = _check_settings(config, out, len(experts))
  result = os.path.join(out, workdir_lib.DISTILLED)
  finished = os.path.exists(result)
  if finished and saved_iterations in (None, cfg.iterations):
    try:
      made = distilled_set.load_distilled(result).provenance.get("iterations")
      if made == cfg.iterations:
        logging.info("Distilled set found: %s", result)
        return
      # A longer run that stopped between writing its set and its settings.
      logging.warning("%s holds a set distilled for %s iterations, not the %d asked; "
                      "going on from the checkpoints.", result, made, cfg.iterations)
    except ValueError as e:  # Damaged: the loop below rewrites it.
      logging.warning("%s Writing it again.", e)
  matched = budget.window(cfg, cfg.num_pairs)
  _check(config, experts, workdir, matched)
  logging.info("Trajectory window at %d pairs: %s.", cfg.num_pairs, matched)
  os.makedirs(out, exist_ok=True)
  train = input_pipeline.load_split(config, workdir, "train")
  buffer = ExpertBuffer(workdir, experts, matched.last_epoch)
  mesh = parallel.make_mesh()
  frozen = parallel.put_replicated(_shared_frozen(workdir, experts), mesh)
  trainable_like = jax.tree.map(lambda x: x[0, 0], buffer.params)
  model = build_model(config.model)
  apply_fn = make_apply_fn(model)
  unroll = matching.UnrollConfig(matched.syn_steps,
                                 min(objective.student_batch(cfg.batch_size), cfg.num_pairs),
                                 cfg.augment, cfg.augment_per_image,
                                 hoist_tower=cfg.hoist_tower,
                                 first_order=cfg.gradient == "first_order")
  tx = matching.make_meta_optimizer(*budget.meta_lr_set(cfg, cfg.num_pairs),
                                    budget.meta_lr_rates(cfg, cfg.num_pairs), cfg.momentum,
                                    objective.rates(), cfg.meta_optimizer)
  meta_step = matching.make_meta_step(apply_fn, trainable_like, unroll, tx, objective,
                                      make_feature_fn(model))
  syn, rows = matching.init_synthetic(train, cfg.num_pairs, cfg.init,
                                      config.experts.lr, config.seed,
                                      _init_pairs(config, workdir, train, selector))
  syn.update(jax.device_get(objective.init(cfg.num_pairs, jax.random.key(config.seed))))
  state = matching.init_state(syn, tx, ema=objective.ema_decay() > 0)
  history: list[dict] = []

  with _checkpoint_manager(out) as mngr, preemption.StopOnSigterm() as stop:
    if mngr.latest_step() is not None:
      state, history = _restore(mngr, state, out)
      if int(state["iteration"]) > cfg.iterations:  # A longer run was stopped.
        raise ValueError(
            f"{out}/ckpt holds iteration {int(state['iteration'])}, past "
            f"distill.iterations={cfg.iterations}: rerun with at least that many "
            "iterations, or move that folder away to distill anew.")
      logging.info("Resuming distillation at iteration %d.", int(state["iteration"]))
    state = parallel.put_replicated(state, mesh)
    start = int(state["iteration"])
    pending: list[tuple[int, jax.Array]] = []
    warned = False
    t0 = time.time()
    bar = tqdm.trange(start, cfg.iterations, initial=start, total=cfg.iterations,
                      desc=f"distill n={cfg.num_pairs}")
    for it in bar:
      starts, targets = buffer.sample(np.random.default_rng([config.seed, it]),
                                      cfg.meta_batch,
                                      matched.start_range(it, cfg.iterations),
                                      cfg.expert_epochs)
      starts, targets = parallel.put_batch((starts, targets), mesh)
      key = jax.random.fold_in(jax.random.key(config.seed), it)
      state, loss = meta_step(state, starts, targets, frozen, key)
      pending.append((it, loss))
      done = it + 1 == cfg.iterations
      stopping = stop.requested  # SIGTERM: log, checkpoint, then stop.
      if (it + 1) % cfg.log_every == 0 or done or stopping:
        _stop_if_non_finite(state, out, mngr, objective)
        losses = jax.device_get([l for _, l in pending])
        history += [{"iteration": i, "loss": float(l)} for (i, _), l in zip(pending, losses)]
        pending = []
        rise = loss_rise([h["loss"] for h in history], cfg.log_every, cfg.loss_rise_warning)
        if rise and not warned:
          warned = True
          logging.warning(_RISE_MESSAGE, out, *rise)
        lrs = np.exp(np.asarray(state["syn"]["log_lr"]))
        bar.set_postfix(loss=f"{history[-1]['loss']:.4f}", lr_img=f"{lrs[0]:.3g}",
                        lr_txt=f"{lrs[1]:.3g}")
        metrics_log.append(workdir, {
            "stage": "distill", "num_pairs": cfg.num_pairs, "objective": cfg.objective,
            "iteration": it,
            "loss": history[-1]["loss"], "lr_image": float(lrs[0]),
            "lr_text": float(lrs[1]),
            "seconds_per_iteration": (time.time() - t0) / (it + 1 - start)})
      if (it + 1) % cfg.checkpoint_every == 0 or done or stopping:
        _stop_if_non_finite(state, out, mngr, objective)
        if not finished and mngr.latest_step() is None:
          # Recorded with the first checkpoint, so a run that fails before it
          # leaves nothing that blocks a corrected rerun. A finished set keeps
          # its settings until its longer result replaces it, below.
          jsonfile.write(os.path.join(out, workdir_lib.SET_SETTINGS),
                         settings(config, len(experts)))
        record = {"history": history, "state_sha256": checksums.tree_sha256(state)}
        mngr.save(it + 1, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                                  history=ocp.args.JsonSave(record)))
      if stopping and not done:
        mngr.wait_until_finished()
        stop.stop_if_requested(f"iteration {it + 1} of {cfg.iterations}; saved "
                               f"{out}/ckpt/{it + 1}")
    mngr.wait_until_finished()
  saved = state["ema"] if "ema" in state else state["syn"]
  _write_outputs(out, jax.tree.map(parallel.to_host, saved), rows, train, history,
                 objective, provenance_record(config, len(experts), history))
  jsonfile.write(os.path.join(out, workdir_lib.SET_SETTINGS), settings(config, len(experts)))


_RISE_MESSAGE = (
    "Distillation into %s is failing: the matching loss rose from %.4g (mean of "
    "the first %d iterations) to %.4g (the last %d), so the set is getting worse. "
    "Likely culprits: meta rates too large for this data (distill.meta_lr_images, "
    "distill.meta_lr_text; with distill.meta_optimizer='normalized' a rate is the RMS "
    "step per iteration, whatever the gradient's scale), or an image tower trained from scratch "
    "(model.backbone): LoRA matching on a pretrained tower is what works.")


def loss_rise(losses: list[float], window: int,
              factor: float) -> tuple[float, int, float, int] | None:
  """(first mean, window, last mean, window) if the last `window` losses average
  more than `factor` x the first `window`; None otherwise or too early."""
  if window < 1 or len(losses) < 2 * window:
    return None
  first, last = np.mean(losses[:window]), np.mean(losses[-window:])
  return (float(first), window, float(last), window) if last > factor * first else None


def _stop_if_non_finite(state: dict, out: str, mngr: ocp.CheckpointManager,
                        objective: objectives.Objective) -> None:
  first_bad = int(state["first_bad"])
  if first_bad < 0:
    return
  if mngr.latest_step() is None:
    where = ("no checkpoint was saved before it, so a rerun with corrected settings "
             "starts afresh")
  else:
    where = (f"the last good checkpoint ({out}/ckpt/{mngr.latest_step()}) is kept; "
             "to retry with other settings, move that folder away first")
  rates = ["distill.meta_lr_images", "distill.meta_lr_text", "distill.meta_lr_rates"] + [
      f"distill.{f}" for f in objective.fields if f.startswith("meta_lr_")]
  raise FloatingPointError(
      f"Distillation hit a non-finite loss or gradient at iteration {first_bad}; "
      f"{where}. Likely culprits: meta rates too large ({', '.join(rates)}), or "
      "experts that did not move between the "
      "epochs matched (the loss divides by that distance).")


def to_uint8(images: np.ndarray) -> np.ndarray:
  """Model-space images back to uint8 pixels (clipped)."""
  pixels = (images * trainer.PIXEL_STD + trainer.PIXEL_MEAN) * 255.0
  return np.clip(np.round(pixels), 0, 255).astype(np.uint8)


def provenance_record(config: ml_collections.ConfigDict, num_experts: int,
                      history: list[dict]) -> dict:
  """What a distilled file records of how it was made (`distilled_set.py`)."""
  text_path = config.text.path or text.default_model_path()
  return {
      "objective": config.distill.objective,
      "dataset": config.data.to_dict(),
      "text": {**config.text.to_dict(), "folder": os.path.basename(text_path.rstrip("/")),
               "fingerprint": text.fingerprint(config.text.path or None,
                                               config.text.pooling, config.text.max_length)},
      "image": {"size": config.data.image_size, "pixel_mean": trainer.PIXEL_MEAN,
                "pixel_std": trainer.PIXEL_STD},
      "model": config.model.to_dict(),
      "distill": config.distill.to_dict(),
      "settings": settings(config, num_experts),
      "iterations": int(history[-1]["iteration"]) + 1 if history else 0,
      "metrics": {"first_matching_loss": history[0]["loss"] if history else None,
                  "final_matching_loss": history[-1]["loss"] if history else None},
  }


def _nearest_captions(unit_text: np.ndarray, real: lazy_arrays.Rows,
                      chunk: int = 4096) -> tuple[np.ndarray, np.ndarray]:
  """(flat index, cosine) of each text's nearest real caption embedding, with
  `chunk` images' captions read at a time."""
  best = np.full(len(unit_text), -np.inf, np.float32)
  index = np.zeros(len(unit_text), np.int64)
  per_image = int(np.prod(real.shape[1:-1]))  # Captions per image (or 1).
  for start in range(0, len(real), chunk):
    block = real[start:start + chunk]
    cosine = unit_text @ block.reshape(-1, block.shape[-1]).T
    top = cosine.argmax(axis=1)
    better = cosine[np.arange(len(top)), top] > best
    best[better] = cosine[better, top[better]]
    index[better] = start * per_image + top[better]
  return index, best


def _write_outputs(out: str, syn: dict, rows: np.ndarray, train: input_pipeline.Split,
                   history: list[dict], objective: objectives.Objective,
                   provenance_json: dict) -> None:
  if jax.process_index():
    return
  unit_text = syn["text_emb"] / np.linalg.norm(syn["text_emb"], axis=-1, keepdims=True)
  nearest, nearest_cosine = _nearest_captions(unit_text, train.text_emb)
  flat_captions = [c for cs in train.captions for c in cs]
  nearest_captions = [flat_captions[i] for i in nearest]
  images_uint8 = to_uint8(syn["images"])
  # How far distillation moved the set from the real pairs it started from
  # (model-space pixels span [-1, 1]; text embeddings have unit norm).
  start_images = np.asarray(trainer.to_model_space(train.images[rows]))
  image_change = float(np.sqrt(np.mean((syn["images"] - start_images) ** 2)))
  arrays = dict(images=syn["images"], images_uint8=images_uint8, text_emb=syn["text_emb"],
                lr_image=np.exp(syn["log_lr"][0]), lr_text=np.exp(syn["log_lr"][1]),
                init_rows=rows, nearest_caption=np.asarray(nearest_captions),
                nearest_cosine=nearest_cosine, image_change_rms=image_change,
                format_version=distilled_set.FORMAT_VERSION,
                provenance_json=json.dumps(provenance_json, default=str),
                **objective.export(syn))
  viz.image_grid(images_uint8, nearest_captions, os.path.join(out, workdir_lib.SET_GRID))
  viz.loss_curve([h["iteration"] for h in history], [h["loss"] for h in history],
                 os.path.join(out, workdir_lib.SET_LOSS_CURVE))
  # Last: the set's file marks the stage done.
  jsonfile.write_file(os.path.join(out, workdir_lib.DISTILLED), lambda f: np.savez(f, **arrays))
  logging.info("Distilled %d pairs into %s (learned lr image %.4g, text %.4g; "
               "pixels moved %.3g RMS from the real images they started as).",
               len(rows), out, arrays["lr_image"], arrays["lr_text"], image_change)
