"""Stage compare on the tiny config: every cell, outputs, resume, stale settings."""
import json
import logging
import os
import re
import shutil

import jax
import pytest

from vldd_jax import compare
from vldd_jax import coreset
from vldd_jax import distilled_set
from vldd_jax import evaluate
from vldd_jax import workdir_lib


def test_compare_fills_every_cell_and_resumes_only_missing_ones(trained, tmp_path,
                                                                monkeypatch, caplog):
  config, shared = trained
  workdir = str(tmp_path / "work")  # Sets other tests left in `shared` would be reused.
  for folder in ("pretrain", "experts"):
    shutil.copytree(os.path.join(shared, folder), os.path.join(workdir, folder))
  config = config.copy_and_resolve_references()
  # Every coreset, and the objectives that differ in what compare handles:
  # plain and lowrank (fewer pairs at equal storage, learned targets). The
  # others' cells take plain's path with their own set (ema: the moving
  # average, tests/test_blend.py).
  distilled = ("distilled", "distilled_lowrank")
  config.evaluate.methods = distilled + tuple(coreset.SELECTORS)
  # This test is about the table's cells, not about how good the sets are:
  # each of the four distillations needs only its one checkpoint (2 iterations),
  # and without augmentation its meta step compiles about a third faster.
  config.distill.update(iterations=2, augment=False)
  config.evaluate.update(epochs=1, augment=False)
  # k-center runs once a set size: its row, easy_k_center's and the
  # distillations' easy_k_center starts share compare's selector.
  k_center_sizes, select = [], coreset.k_center
  monkeypatch.setattr(coreset, "k_center", lambda features, budget, seed:
                      k_center_sizes.append(budget) or select(features, budget, seed))
  # Set globally: `jax.log_compiles()` is thread-local, and a row's seeds train
  # in threads (`concurrent_students`).
  jax.config.update("jax_log_compiles", True)
  try:
    with caplog.at_level(logging.INFO):
      compare.run(config, workdir)
  finally:
    jax.config.update("jax_log_compiles", False)
  assert config.distill.init == "easy_k_center"
  assert sorted(k_center_sizes) == [3, 4, 7, 8]  # lowrank: 3 and 7 pairs + S.
  # One distillation per (budget, objective), each compiling its meta step
  # once for all its iterations: nothing in the loop triggers a recompile.
  compiles = [r for r in caplog.records
              if r.getMessage().startswith("Compiling jit(meta_step)")]
  assert len(compiles) == 2 * len(distilled), [r.getMessage()[:200] for r in compiles]
  # Evaluation compiles one train step per student loss and input, whatever
  # the learned rates: each objective's float sets and the coresets' uint8
  # images, at batches of 4 and 8 pairs (LoRS: 3 and 7).
  train_steps = [r for r in caplog.records
                 if r.getMessage().startswith("Compiling jit(train_step)")]
  assert len(train_steps) == 2 * (len(distilled) + 1), len(train_steps)
  path = os.path.join(workdir, workdir_lib.COMPARE_RESULT)
  rows = json.load(open(path))["rows"]
  cells = {(r["method"], r["budget"]) for r in rows}
  assert cells == {(m, b) for m in config.evaluate.methods for b in (4, 8)}
  # Each cell logs its time and the part of it spent distilling.
  timed = {}
  for record in caplog.records:
    if match := re.match(r"compare: the \((\w+), (\d+) pairs\) cell in ([\d.]+) s, "
                         r"([\d.]+) s of it distilling", record.getMessage()):
      method, budget, total, distilling = match.groups()
      timed[method, int(budget)] = float(total), float(distilling)
  assert timed.keys() == cells
  for (method, _), (total, distilling) in timed.items():
    assert total >= distilling and (distilling > 1) == (method in distilled), method
  # 7 pairs of 32x32x3 pixels + a 384-d text, plus S's 7 x 21 floats, fit in
  # the storage of 8 pairs; 3 pairs + S in that of 4.
  lowrank = {r["budget"]: r["pairs"] for r in rows if r["method"] == "distilled_lowrank"}
  assert lowrank == {4: 3, 8: 7}
  assert distilled_set.load(workdir, 7, "lowrank")["similarity"].shape == (7, 7)
  assert all(r["seeds"] == config.evaluate.seeds for r in rows)
  assert os.path.exists(os.path.join(workdir, "distill", "n4", "distilled.npz"))
  with open(os.path.join(workdir, "compare.png"), "rb") as f:
    assert f.read(8) == b"\x89PNG\r\n\x1a\n"
  table = open(os.path.join(workdir, "compare.md")).read()
  assert "| tr@1 | 4 pairs | 8 pairs |" in table and "| k_center | 8 |" in table

  # Another rate for S makes only the learned-similarity cells stale.
  assert compare.load_rows(path, config) == rows
  other_s = config.copy_and_resolve_references()
  other_s.distill.meta_lr_lowrank *= 2
  kept = {(r["method"], r["budget"]) for r in compare.load_rows(path, other_s)}
  assert kept == cells - {("distilled_lowrank", 4), ("distilled_lowrank", 8)}

  # Drop one finished cell, as if the run had been killed before it: only that
  # cell is evaluated again, the others are kept as they were.
  saved = json.load(open(path))
  saved["rows"] = [r for r in rows if (r["method"], r["budget"]) != ("herding", 8)]
  json.dump(saved, open(path, "w"))
  calls = []
  original = evaluate.train_and_evaluate
  monkeypatch.setattr(evaluate, "train_and_evaluate",
                      lambda *a, **k: calls.append(len(a[1].images)) or original(*a, **k))
  compare.run(config, workdir)
  assert calls == [8] * config.evaluate.seeds
  again = json.load(open(path))["rows"]
  assert again[:-1] == saved["rows"]
  assert again[-1] == next(r for r in rows if (r["method"], r["budget"]) == ("herding", 8))

  other = config.copy_and_resolve_references()
  other.evaluate.epochs += 1
  with pytest.raises(ValueError, match=r"compare.json was made with other settings \(evaluate\.epochs: saved 1, config 2\)"):
    compare.run(other, workdir)

  # Stage evaluate's table (distill.num_pairs = 8) is compare's 8-pair cells,
  # under the same settings: a new comparison takes them from results.json,
  # the same numbers it computed itself above, and trains only the 4-pair cells.
  os.remove(path)
  two = config.copy_and_resolve_references()
  two.evaluate.methods = ("distilled_lowrank", "herding")
  evaluate.run(two, workdir)
  calls.clear()
  compare.run(two, workdir)
  assert sorted(calls) == [3] * 2 + [4] * 2
  cell = lambda r: (r["method"], r["budget"])
  assert sorted(json.load(open(path))["rows"], key=cell) == sorted(
      (r for r in rows if r["method"] in two.evaluate.methods), key=cell)
  # Not with other settings, nor a distilled cell of other objective settings.
  assert compare.evaluated_rows(workdir, other) == []
  assert [r["method"] for r in compare.evaluated_rows(workdir, other_s)] == ["herding"]
