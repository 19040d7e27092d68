"""Stage evaluate and its protocol on the tiny config's distilled set: the results
table, determinism, reports, diverged students, a saved set from another workdir."""
import json
import os
import subprocess

import jax
import numpy as np
import pytest

from vldd_jax import backbone
from vldd_jax import checksums
from vldd_jax import coreset
from vldd_jax import distilled_set
from vldd_jax import evaluate
from vldd_jax import trainer
from vldd_jax import workdir_lib
from vldd_jax.data import input_pipeline


def test_evaluate_writes_results_with_every_row(distilled, capsys):
  config, workdir = distilled
  evaluate.run(config, workdir)
  results = json.load(open(os.path.join(workdir, workdir_lib.RESULTS)))
  methods = [row["method"] for row in results["rows"]]
  assert methods == ["full train split (experts)", *config.evaluate.methods, "chance"]
  for row in results["rows"]:
    for key in evaluate.RECALL_KEYS:
      assert 0 <= row[key] <= 100 and row[key + "_std"] >= 0
  assert results["rows"][1]["seeds"] == config.evaluate.seeds
  assert "| distilled | 8 |" in capsys.readouterr().out


def _set_and_splits(distilled, lr_text: float = 0.1):
  """(config, workdir, the 8-pair distilled set's Pairs, test, val)."""
  config, workdir = distilled
  data = distilled_set.load(workdir, 8)
  return (config, workdir, evaluate.Pairs(data["images"], data["text_emb"], 0.1, lr_text),
          *(input_pipeline.load_split(config, workdir, s) for s in ("test", "val")))


def test_evaluation_is_deterministic_and_reports_as_asked(distilled):
  config, workdir, pairs, test, val = _set_and_splits(distilled)
  run = lambda cfg, seed: evaluate.train_and_evaluate(
      cfg, pairs, seed=seed, tower=evaluate.student_tower(cfg, workdir), test=test, val=val)
  first, again = run(config, 0), run(config, 0)
  assert first == again
  # A row's seeds trained at once give what they give one by one.
  rows = []
  for at_once in (1, 2):
    cfg = config.copy_and_resolve_references()
    cfg.concurrent_students = at_once
    rows.append(evaluate.evaluate_pairs(cfg, workdir, "distilled", pairs, test, val))
  assert rows[0] == rows[1] and rows[0]["r_mean_std"] > 0
  lors = config.copy_and_resolve_references()
  lors.evaluate.report = "best_test_lors"
  assert run(lors, 0)["r_mean"] >= first["r_mean"]  # The best epoch includes the last.
  bad = config.copy_and_resolve_references()
  bad.evaluate.report = "best"
  with pytest.raises(ValueError, match="evaluate.report='best'"):
    run(bad, 0)


def test_a_row_in_one_vmapped_program_scores_as_its_students_one_by_one(distilled):
  config, workdir, pairs, test, val = _set_and_splits(distilled, lr_text=0.05)
  for report in ("final", "best_val"):
    rows = []
    for vmap_seeds in (False, True):
      cfg = config.copy_and_resolve_references()
      cfg.evaluate.update(report=report, vmap_seeds=vmap_seeds)
      rows.append(evaluate.evaluate_pairs(cfg, workdir, "distilled", pairs, test, val))
    # Recall is a count of ranks: float32 rounding of the batched arithmetic
    # moves no caption's rank here.
    assert rows[0] == rows[1] and rows[0]["r_mean_std"] > 0, report


def test_a_row_of_students_from_scratch_in_one_program_scores_as_one_by_one(
    distilled, monkeypatch):
  # No tower: each seed's frozen part is its own, stacked with the students.
  config, _, pairs, test, _ = _set_and_splits(distilled)
  config = config.copy_and_resolve_references()
  config.evaluate.epochs = 2
  alone = [evaluate.train_and_evaluate(config, pairs, seed=s, tower=None, test=test)
           for s in (0, 1)]
  shared = []
  make = trainer.make_row_epochs
  monkeypatch.setattr(trainer, "make_row_epochs",
                      lambda *args: shared.append(args[2]) or make(*args))
  monkeypatch.setattr(evaluate, "_COMPILED", {})
  row = evaluate.train_row_and_evaluate(config, pairs, seeds=[0, 1], tower=None, test=test)
  assert shared == [False]
  assert row == alone and alone[0] != alone[1]


def test_a_batch_that_cannot_split_over_the_devices_is_named(distilled, monkeypatch):
  config, _, pairs, _, _ = _set_and_splits(distilled)
  monkeypatch.setattr(jax, "device_count", lambda: 16)
  with pytest.raises(ValueError, match=r"evaluate.batch_size=\d+ on 8 pairs leaves no batch "
                                       "that splits over the 16 devices"):
    evaluate.train_and_evaluate(config, pairs, seed=0, tower=None, test=None)


def test_the_students_tower_is_read_once_for_every_row_and_seed(distilled, monkeypatch):
  config, workdir = distilled
  test = input_pipeline.load_split(config, workdir, "test")
  data = distilled_set.load(workdir, 8)
  pairs = evaluate.Pairs(data["images"], data["text_emb"], 0.1, 0.1)
  reads = []
  original = backbone.loader
  monkeypatch.setattr(backbone, "loader", lambda *a: reads.append(a) or original(*a))
  monkeypatch.setattr(evaluate, "_TOWERS", {})
  for method in ("one", "two"):
    row = evaluate.evaluate_pairs(config, workdir, method, pairs, test, None)
    assert row["seeds"] == config.evaluate.seeds > 1 and row["diverged"] == 0
  assert len(reads) == 1


def test_summarize_is_mean_and_population_std():
  recalls = [{k: v for k in evaluate.RECALL_KEYS} for v in (10.0, 20.0, 30.0)]
  row = evaluate.summarize("m", 5, recalls, "final")
  assert row["tr@1"] == 20.0 and row["tr@1_std"] == round(np.std([10, 20, 30]), 2)
  assert row["seeds"] == 3 and row["budget"] == 5


def test_a_diverged_student_is_reported_without_losing_the_other_rows(distilled):
  config, workdir = distilled
  test = input_pipeline.load_split(config, workdir, "test")
  data = distilled_set.load(workdir, 8)
  rows = [evaluate.evaluate_pairs(config, workdir, name, evaluate.Pairs(
               data["images"], data["text_emb"], lr, lr), test, None)
          for name, lr in (("huge_lr", 1e30), ("sane_lr", 0.1))]
  assert rows[0]["diverged"] == config.evaluate.seeds and rows[0]["tr@1"] is None
  assert rows[1]["diverged"] == 0 and 0 <= rows[1]["tr@1"] <= 100
  table = evaluate.format_table(rows)
  assert "| huge_lr (2/2 students diverged) | 8 | diverged |" in table
  assert "| sane_lr | 8 | " in table and "diverged" not in table.splitlines()[-1]
  partial = evaluate.summarize("mixed", 8, [None, dict.fromkeys(evaluate.RECALL_KEYS, 10.0)],
                               "final")
  assert partial["diverged"] == 1 and partial["tr@1"] == 10.0


def test_a_saved_set_evaluates_in_another_workdir_as_in_its_own(distilled, tmp_path):
  config, workdir = distilled
  path = os.path.join(distilled_set.set_dir(workdir, 8), workdir_lib.DISTILLED)
  train, test, _ = evaluate.load_splits(config, workdir)
  own = evaluate.method_row(config, workdir, "distilled", 8,
                            coreset.Selector(config, workdir, train), test, None)
  other = tmp_path / "other"  # Same data and tower, no experts, no distillation.
  os.makedirs(other)
  subprocess.run(["cp", "-r", os.path.join(workdir, "pretrain"), str(other)], check=True)
  file_config = config.copy_and_resolve_references()
  file_config.evaluate.update(distilled_path=path, methods=("distilled", "random"))
  (other / workdir_lib.RESULTS).write_text("the workdir's own results")
  evaluate.run(file_config, str(other))
  assert (other / workdir_lib.RESULTS).read_text() == "the workdir's own results"  # Kept.
  named = workdir_lib.EXTERNAL_RESULTS.format(checksums.file_sha256(path)[:12])
  rows = json.load(open(other / named))["rows"]
  assert [r["method"] for r in rows] == [f"distilled ({path})", "random", "chance"]
  for key in evaluate.RECALL_KEYS:
    assert rows[0][key] == own[key], key
  assert rows[1]["budget"] == 8

  # A set made with another text encoder (or pooling) is refused, never scored.
  raw = dict(np.load(path))
  made = json.loads(str(raw["provenance_json"]))
  made["text"]["fingerprint"] = "0123456789abcdef"
  foreign = tmp_path / "foreign.npz"
  np.savez(foreign, **{**raw, "provenance_json": json.dumps(made)})
  file_config.evaluate.distilled_path = str(foreign)
  with pytest.raises(ValueError, match=r"provenance\.text\.fingerprint=0123456789abcdef"):
    evaluate.run(file_config, str(other))
