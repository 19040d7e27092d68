"""The one evaluation protocol, and stage `evaluate` (the results table).

`train_and_evaluate` trains a fresh student (the backbone, new LoRA and heads
from a seed) on any set of pairs -- distilled, a coreset, random real pairs --
then reports recall@K on the test split. `report="final"` (default, the
paper's convention) takes the last epoch; `"best_val"` the epoch with the best
validation r_mean; `"best_test_lors"` the best of the per-epoch test
evaluations, as LoRS reports (optimistic: it selects on test, and is labelled
so in every output).
"""
import dataclasses
import json
import os
import threading
from collections.abc import Callable
from typing import Any

import jax
import ml_collections
import numpy as np
from absl import logging

from vldd_jax import backbone
from vldd_jax import checksums
from vldd_jax import coreset
from vldd_jax import distilled_set
from vldd_jax import jsonfile
from vldd_jax import objectives
from vldd_jax import parallel
from vldd_jax import retrieval
from vldd_jax import students
from vldd_jax import text
from vldd_jax import trainer
from vldd_jax import trajectories
from vldd_jax import workdir_lib
from vldd_jax.data import input_pipeline
from vldd_jax.models import build_model, make_apply_fn

# What `evaluate.report` names: the split a student's reported epoch is chosen
# on (the best r_mean there), or None for its last epoch.
REPORTS: dict[str, str | None] = {"final": None, "best_val": "val", "best_test_lors": "test"}
SPLITS = ("test", "val")
RECALL_KEYS = ("tr@1", "tr@5", "tr@10", "ir@1", "ir@5", "ir@10", "r_mean")


@dataclasses.dataclass(frozen=True)
class Pairs:
  """What a student trains on, from any provider (a distilled set, a saved
  file, a coreset): pairs, the SGD rates of the image and text sides, and the
  objective whose student loss it trains with, with the set's learned targets."""
  images: np.ndarray  # [N, H, W, C] uint8 or model-space floats.
  text_emb: np.ndarray  # [N, D] or [N, captions, D].
  lr_image: float
  lr_text: float
  objective: objectives.Objective = dataclasses.field(default_factory=objectives.Plain)
  targets: Any = None  # `Objective.eval_targets` of the set; None: plain pairs.


def methods() -> tuple[str, ...]:
  """Every row `evaluate.methods` can ask for: one per registered objective's
  distilled sets, then the coresets."""
  return tuple(objectives.methods()) + tuple(coreset.SELECTORS)


def check_methods(methods_asked) -> None:
  """Raises unless every entry of `evaluate.methods` is known."""
  known = methods()
  unknown = [m for m in methods_asked if m not in known]
  if unknown or not methods_asked:
    raise ValueError(f"evaluate.methods={tuple(methods_asked)!r}: expected a non-empty "
                     f"subset of {known}.")


def selects_on(report: str) -> str | None:
  """The split `report` chooses a student's epoch on (`REPORTS`); raises naming
  `evaluate.report` if it is none of them."""
  if report not in REPORTS:
    raise ValueError(f"evaluate.report={report!r}; expected one of {tuple(REPORTS)}.")
  return REPORTS[report]


def train_and_evaluate(config: ml_collections.ConfigDict, pairs: Pairs, *, seed: int,
                       tower: Callable[[dict], dict] | None, test: input_pipeline.Split,
                       val: input_pipeline.Split | None = None) -> dict[str, float] | None:
  """Trains a fresh student on `pairs` (with their rates, objective and targets)
  and returns its test recall (percent), or None if its loss diverged.

  Args:
    config: the run config (`model`, `evaluate`, `seed` are read).
    seed: the student's initialisation and data order.
    tower: what sets the student's base tower weights (`backbone.loader` of the
      student's config), loaded once for every student of a run.
    test, val: splits to report on and (for `best_val`) select on.
  """
  config, batch_size = _protocol(config, pairs, val)
  mesh = parallel.make_mesh()
  train_step, embedder = _compiled(config, mesh, pairs.objective)
  trainable, frozen, opt_state = parallel.put_replicated(
      _fresh_student(config, pairs, seed, tower), mesh)
  best = _BestEpoch(config, embedder, test, val)
  for epoch in range(1, config.evaluate.epochs + 1):
    (trainable, opt_state), loss, _ = trainer.train_epoch(
        train_step, (trainable, opt_state), frozen, pairs.images, pairs.text_emb,
        batch_size=batch_size, seed=(seed, epoch), targets=pairs.targets)
    best.offer(trainable, frozen)
  return _scored(embedder, best.or_last(trainable), frozen, test, loss, seed)


def train_row_and_evaluate(config: ml_collections.ConfigDict, pairs: Pairs, *,
                           seeds: list[int], tower: Callable[[dict], dict] | None,
                           test: input_pipeline.Split,
                           val: input_pipeline.Split | None = None
                           ) -> list[dict[str, float] | None]:
  """`train_and_evaluate` for each of `seeds`, their students stacked and
  trained by one vmapped program (`evaluate.vmap_seeds`): every epoch in one
  call, or one call an epoch when `evaluate.report` chooses an epoch, the
  pairs on the devices once. Each trains as it would alone, up to float32
  rounding of the batched arithmetic."""
  config, batch_size = _protocol(config, pairs, val)
  mesh = parallel.make_mesh()
  trainables, frozens, opt_states = zip(
      *[_fresh_student(config, pairs, seed, tower) for seed in seeds])
  # A loaded tower is the same for every seed: one copy serves them all. Its
  # leaves are the same arrays (`backbone.loader` reads it once), so the check
  # compares values only where a seed's frozen part is its own.
  same = lambda a, b: a is b or np.array_equal(a, b)
  shared = all(jax.tree.all(jax.tree.map(same, frozens[0], f)) for f in frozens)
  stack = lambda trees: jax.tree.map(lambda *leaves: np.stack(leaves), *trees)
  trainable, frozen, opt_state = parallel.put_replicated(
      (stack(trainables), frozens[0] if shared else stack(frozens), stack(opt_states)),
      mesh)
  del trainables, frozens, opt_states  # Only the stacked copies stay.
  row_epochs, embedder = _compiled(config, mesh, pairs.objective, row=shared)
  on_devices = parallel.put_replicated((pairs.images, pairs.text_emb, pairs.targets), mesh)
  frozen_of = lambda s: frozen if shared else _one_of(frozen, s)
  bests = [_BestEpoch(config, embedder, test, val) for _ in seeds]
  # One program for every epoch, or one an epoch when an epoch is chosen.
  select = selects_on(config.evaluate.report)
  epochs = range(1, config.evaluate.epochs + 1)
  for chunk in ([[e] for e in epochs] if select else [epochs]):
    (trainable, opt_state), losses, _ = trainer.train_row_epochs(
        row_epochs, (trainable, opt_state), frozen, on_devices, batch_size=batch_size,
        seeds=[[(seed, epoch) for seed in seeds] for epoch in chunk])
    for s, best in enumerate(bests if select else ()):
      best.offer(_one_of(trainable, s), frozen_of(s))
  return [_scored(embedder, best.or_last(_one_of(trainable, s)), frozen_of(s), test,
                  losses[s, -1], seed) for s, (seed, best) in enumerate(zip(seeds, bests))]


def _one_of(stacked: dict, s: int) -> dict:
  """Student `s`'s parameters of a row's stacked ones."""
  return jax.tree.map(lambda x: x[s], stacked)


def _protocol(config: ml_collections.ConfigDict, pairs: Pairs,
              val: input_pipeline.Split | None) -> tuple[ml_collections.ConfigDict, int]:
  """(the students' config, their batch size), checking `evaluate.report`."""
  if selects_on(config.evaluate.report) == "val" and val is None:
    raise ValueError(f"evaluate.report={config.evaluate.report!r} needs the val split.")
  batch_size = min(config.evaluate.batch_size, len(pairs.images))
  batch_size -= batch_size % jax.device_count()
  if not batch_size:
    raise ValueError(f"evaluate.batch_size={config.evaluate.batch_size} on "
                     f"{len(pairs.images)} pairs leaves no batch that splits over the "
                     f"{jax.device_count()} devices: use at least that many of each.")
  return students.student_config(config), batch_size


def _fresh_student(config: ml_collections.ConfigDict, pairs: Pairs, seed: int,
                   tower: Callable[[dict], dict] | None) -> tuple[dict, dict, Any]:
  """(trainable, frozen, optimizer state) of seed `seed`'s new student."""
  student = trainer.init_student(config.model, jax.random.key(seed),
                                 pairs.images.shape[1:], pairs.text_emb.shape[-1], tower)
  # The rates live in the state, so every student shares one compiled step.
  opt_state = trainer.make_optimizer(pairs.lr_image, config.evaluate.momentum,
                                     lr_text=pairs.lr_text,
                                     rates_in_state=True).init(student.trainable)
  return student.trainable, student.frozen, opt_state


class _BestEpoch:
  """A student's parameters at its best epoch on the split `evaluate.report`
  selects on (none: its last epoch is reported)."""

  def __init__(self, config: ml_collections.ConfigDict, embedder: trainer.Embedder,
               test: input_pipeline.Split, val: input_pipeline.Split | None):
    select_on = selects_on(config.evaluate.report)
    self._embedder = embedder
    self._split = {"val": val, "test": test, None: None}[select_on]
    self._best, self._score = None, -np.inf

  def offer(self, trainable: dict, frozen: dict) -> None:
    """Scores an epoch's parameters; keeps them if they are the best so far."""
    if self._split is None:
      return
    score = trainer.evaluate_retrieval(self._embedder, trainable, frozen,
                                       self._split)["r_mean"]
    if score > self._score:
      self._score, self._best = score, jax.tree.map(np.asarray, trainable)

  def or_last(self, trainable: dict) -> dict:
    """The best epoch's parameters, or `trainable` (the last epoch's)."""
    return trainable if self._best is None else self._best


def _scored(embedder: trainer.Embedder, trainable: dict, frozen: dict,
            test: input_pipeline.Split, loss: float, seed: int) -> dict[str, float] | None:
  """The student's recall on `test`, or None (logged) if its loss diverged."""
  if not np.isfinite(loss):
    logging.warning("Evaluation student (seed %d) diverged: loss %s; its row counts it "
                    "as diverged.", seed, loss)
    return None
  return trainer.evaluate_retrieval(embedder, trainable, frozen, test)


_COMPILED: dict[str, tuple] = {}
_COMPILING = threading.Lock()
_TOWERS: dict[str, Callable[[dict], dict] | None] = {}


def student_tower(config: ml_collections.ConfigDict,
                  workdir: str) -> Callable[[dict], dict] | None:
  """`backbone.loader` of the evaluation students' config, read from disk once
  per process for every row and seed that shares it."""
  config = students.student_config(config)
  key = json.dumps([config.model.to_dict(), os.path.abspath(workdir)], sort_keys=True,
                   default=str)
  if key not in _TOWERS:
    _TOWERS[key] = backbone.loader(config, workdir)
  return _TOWERS[key]


def _compiled(config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh,
              objective: objectives.Objective, row: bool | None = None) -> tuple:
  """(train step, embedder), built once per student loss, whatever the rates
  (they are in the optimizer state), so every seed and set reuses them. `row`:
  the epochs of a row of students instead (`trainer.make_row_epochs`), True if
  they share one frozen part; None: one student's step."""
  objective_fields = {f: objective.cfg[f] for f in objective.fields}
  key = json.dumps([config.model.to_dict(), config.evaluate.to_dict(),
                    config.experts.eval_batch_size, objective.name, objective_fields,
                    jax.device_count(), row], sort_keys=True, default=str)
  with _COMPILING:  # A row's seeds ask at once (`config.concurrent_students`).
    if key not in _COMPILED:
      apply_fn = make_apply_fn(build_model(config.model))
      tx = trainer.make_optimizer(config.evaluate.lr, config.evaluate.momentum,
                                  lr_text=config.evaluate.lr, rates_in_state=True)
      loss = trainer.student_loss(apply_fn, objective, config.evaluate.augment)
      step = (trainer.make_train_step(loss, tx) if row is None else
              trainer.make_row_epochs(loss, tx, row, mesh))
      _COMPILED[key] = (step, trainer.Embedder(apply_fn, mesh,
                                               config.experts.eval_batch_size))
  return _COMPILED[key]


def summarize(method: str, budget: int, recalls: list[dict[str, float] | None],
              report: str) -> dict:
  """One results row: mean and std over seeds of every recall; `diverged`
  counts the students that diverged (None), left out of the mean (a row whose
  students all diverged has None recalls)."""
  finished = [r for r in recalls if r is not None]
  row = {"method": method, "budget": budget, "seeds": len(recalls), "report": report,
         "diverged": len(recalls) - len(finished)}
  for key in RECALL_KEYS:
    values = np.array([r[key] for r in finished])
    row[key] = round(float(values.mean()), 2) if finished else None
    row[key + "_std"] = round(float(values.std()), 2) if finished else None
  return row


def format_cell(row: dict, key: str) -> str:
  """`mean ± std` of a recall over seeds, or `diverged`."""
  if row[key] is None:
    return "diverged"
  if row["seeds"] - row.get("diverged", 0) > 1:
    return f"{row[key]:.1f} ± {row[key + '_std']:.1f}"
  return f"{row[key]:.1f}"


def evaluate_pairs(config: ml_collections.ConfigDict, workdir: str, method: str,
                   pairs: Pairs, test: input_pipeline.Split,
                   val: input_pipeline.Split | None, budget: int | None = None) -> dict:
  """`train_and_evaluate` over `config.evaluate.seeds` seeds, as one row
  (`train_row_and_evaluate`, one program for them all, with `evaluate.vmap_seeds`).

  `budget` (default: the number of pairs) labels the row; it differs when what
  the objective learned takes part of the storage.
  """
  tower = student_tower(config, workdir)
  seeds = [1000 + s for s in range(config.evaluate.seeds)]
  if config.evaluate.vmap_seeds:
    recalls = train_row_and_evaluate(config, pairs, seeds=seeds, tower=tower, test=test,
                                     val=val)
  else:
    recalls = parallel.map_concurrently(
        lambda seed: train_and_evaluate(config, pairs, seed=seed, tower=tower, test=test,
                                        val=val),
        seeds, config.concurrent_students)
  row = summarize(method, budget or len(pairs.images), recalls, config.evaluate.report)
  row["pairs"] = len(pairs.images)
  logging.info("%s: %s", method, row)
  return row


def method_pairs(config: ml_collections.ConfigDict, workdir: str, method: str,
                 budget: int, selector: coreset.Selector,
                 split: input_pipeline.Split) -> Pairs:
  """The pairs of a `method` row at `budget`: this workdir's distilled set (its
  learned rates and targets; it must exist: stage `distill`, or `compare` and
  `pipeline`, which make missing ones), or a coreset at `evaluate.lr`. `split`
  sizes a pair (`distilled_set.SetSpec`)."""
  spec = distilled_set.SetSpec.of_row(config, method, budget, split)
  if spec is None:
    images, text_emb = selector.select(method, budget)
    return Pairs(images, text_emb, config.evaluate.lr, config.evaluate.lr)
  objective = objectives.build(spec.config(config).distill)
  syn = distilled_set.load(workdir, spec.num_pairs, spec.objective)
  return Pairs(syn["images"], syn["text_emb"], float(syn["lr_image"]),
               float(syn["lr_text"]), objective, objective.eval_targets(syn))


def file_pairs(config: ml_collections.ConfigDict, path: str,
               text_dim: int | None = None) -> Pairs:
  """The pairs of a saved set of any workdir (`evaluate.distilled_path`), with
  its learned rates and its objective, checked against this config's data (and
  its text embeddings' width `text_dim`, when given)."""
  distilled = distilled_set.load_distilled(path)
  fingerprint = text.fingerprint(config.text.path or None, config.text.pooling,
                                 config.text.max_length)
  distilled.check_compatible(config, path, fingerprint, text_dim)
  objective = objectives.build(ml_collections.ConfigDict(distilled.provenance["distill"]))
  return Pairs(distilled.images, distilled.text_emb, distilled.lr_image,
               distilled.lr_text, objective, objective.eval_targets(distilled.arrays))


def method_row(config: ml_collections.ConfigDict, workdir: str, method: str,
               budget: int, selector: coreset.Selector, test: input_pipeline.Split,
               val: input_pipeline.Split | None) -> dict:
  """One row: the pairs `method_pairs` gives, scored as every other row."""
  pairs = method_pairs(config, workdir, method, budget, selector, test)
  return evaluate_pairs(config, workdir, method, pairs, test, val, budget=budget)


def full_data_row(config: ml_collections.ConfigDict, workdir: str,
                  num_train: int) -> dict:
  """The experts themselves: fresh students trained on the whole train split,
  scored on `evaluate.split` after their last epoch."""
  experts = trajectories.finished_experts(workdir, config)
  split = config.evaluate.split
  manifests = [trajectories.read_manifest(workdir, e) for e in experts]
  recalls = [m["test"] if split == "test" else m["history"][-1]["val"] for m in manifests]
  return summarize("full train split (experts)", num_train, recalls, "final")


def chance_row(test: input_pipeline.Split) -> dict:
  """Expected recall of a random ranking on the test split."""
  recall = retrieval.chance_recall(len(test), len(test.caption_to_image),
                                   test.caption_to_image)
  return summarize("chance", 0, [recall], "expected")


def format_table(rows: list[dict]) -> str:
  """A Markdown table: mean ± std of each recall per row."""
  lines = ["| method | pairs | " + " | ".join(RECALL_KEYS) + " |",
           "|---|---:|" + "---:|" * len(RECALL_KEYS)]
  for row in rows:
    label = row["method"] + (f" [{row['report']}]" if REPORTS.get(row["report"]) else "")
    if row.get("pairs", row["budget"]) != row["budget"]:
      label += f" ({row['pairs']} pairs + S)"
    if row.get("diverged"):
      label += f" ({row['diverged']}/{row['seeds']} students diverged)"
    cells = [format_cell(row, k) for k in RECALL_KEYS]
    lines.append(f"| {label} | {row['budget']} | " + " | ".join(cells) + " |")
  return "\n".join(lines)


def load_splits(config: ml_collections.ConfigDict, workdir: str):
  """(train, scored, val) splits: `scored` is `evaluate.split`, which every row
  reports on; val only when `evaluate.report` selects on it."""
  cfg = config.evaluate
  if cfg.split not in SPLITS:
    raise ValueError(f"evaluate.split={cfg.split!r}; expected one of {SPLITS}.")
  if cfg.split == "val" and selects_on(cfg.report):
    raise ValueError(f"evaluate.report={cfg.report!r} selects an epoch on a split; "
                     "scoring on val, use evaluate.report='final'.")
  val = (input_pipeline.load_split(config, workdir, "val")
         if selects_on(cfg.report) == "val" else None)
  return (input_pipeline.load_split(config, workdir, "train"),
          input_pipeline.load_split(config, workdir, cfg.split), val)


def file_row(config: ml_collections.ConfigDict, workdir: str, path: str,
             test: input_pipeline.Split, val: input_pipeline.Split | None) -> dict:
  """A row for a saved set of any workdir (`evaluate.distilled_path`)."""
  pairs = file_pairs(config, path, test.text_emb.shape[-1])
  return evaluate_pairs(config, workdir, f"distilled ({path})", pairs, test, val)


def run(config: ml_collections.ConfigDict, workdir: str) -> None:
  """Writes `<workdir>/results.json` and prints the table: full data, each method, chance.

  Methods (`evaluate.methods`) are evaluated at `distill.num_pairs` pairs; with
  `evaluate.distilled_path`, that saved set instead of this workdir's, next to
  the coresets of its size, into `results_<its sha256[:12]>.json`.
  """
  check_methods(config.evaluate.methods)
  experts = trajectories.finished_experts(workdir, config)  # Refuses other settings.
  train, test, val = load_splits(config, workdir)
  selector = coreset.Selector(config, workdir, train)
  rows = [full_data_row(config, workdir, len(train))] if experts else []
  path = config.evaluate.distilled_path
  if path:
    rows.append(file_row(config, workdir, path, test, val))
    budget = rows[-1]["budget"]
    rows += [method_row(config, workdir, method, budget, selector, test, val)
             for method in config.evaluate.methods if method in coreset.SELECTORS]
  else:
    rows += [method_row(config, workdir, method, config.distill.num_pairs, selector,
                        test, val) for method in config.evaluate.methods]
  rows.append(chance_row(test))
  table = f"Scored on the {config.evaluate.split} split.\n\n" + format_table(rows)
  print(table)
  name = (workdir_lib.EXTERNAL_RESULTS.format(checksums.file_sha256(path)[:12]) if path
          else workdir_lib.RESULTS)
  out = os.path.join(workdir, name)
  jsonfile.write(out, {"split": config.evaluate.split, "rows": rows, "table": table,
                       "config": config.to_dict()})
  logging.info("Results written to %s.", out)
