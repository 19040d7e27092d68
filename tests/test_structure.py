"""Libraries and evaluation never import a stage; only orchestrators make sets;
a new objective is one registered class, a new coreset one registered function."""
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from vldd_jax import compare
from vldd_jax import coreset
from vldd_jax import evaluate
from vldd_jax import losses
from vldd_jax import objectives
from vldd_jax import stages
from vldd_jax import synthetic
from vldd_jax.data import input_pipeline

from conftest import ROOT

STAGE_MODULES = ("vldd_jax.compare", "vldd_jax.distill", "vldd_jax.experts",
                 "vldd_jax.pretrain", "vldd_jax.stages", "vldd_jax.main",
                 "vldd_jax.data.prepare")
LIBRARIES = ("backbone", "coreset", "losses", "matching", "objectives", "provenance",
             "retrieval", "similarity", "synthetic", "trainer", "trajectories", "models")


@pytest.mark.parametrize("module", ("evaluate",) + LIBRARIES)
def test_importing_a_library_or_evaluate_pulls_in_no_stage(module):
  code = (f"import sys, vldd_jax.{module}; "
          f"print(sorted(m for m in sys.modules if m in {STAGE_MODULES!r}))")
  out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                       text=True, check=True).stdout
  assert out.strip() == "[]", out


def test_evaluate_refuses_a_missing_set_instead_of_distilling_it(trained, tmp_path):
  config, workdir = trained
  other = config.copy_and_resolve_references()
  other.distill.num_pairs = 5  # No set of 5 pairs exists.
  with pytest.raises(FileNotFoundError, match=r"distill/n5/distilled.npz not found: run "
                                              r"--config.stage=distill"):
    evaluate.run(other, workdir)


class _HalfTemperature(objectives.Plain):
  """A toy objective: the plain loss at twice the temperature."""
  name = "toy"
  traced = 0  # How often a student loss was built from it.

  def loss(self, image_emb, text_emb, scale, targets):
    _HalfTemperature.traced += 1
    return losses.contrastive_loss(image_emb, text_emb, scale / 2)


def test_a_new_objective_is_one_registered_class(trained, tmp_path, monkeypatch):
  config, workdir = trained
  monkeypatch.setitem(objectives.OBJECTIVES, "toy", _HalfTemperature)
  work = tmp_path / "work"
  os.makedirs(work)
  for folder in ("pretrain", "experts"):
    shutil.copytree(os.path.join(workdir, folder), work / folder)
  config = config.copy_and_resolve_references()
  config.evaluate.methods = ("distilled_toy",)
  config.compare.budgets = (8,)
  compare.run(config, str(work))
  # Distilled into its own folder, and both students trained with its loss.
  assert synthetic.load(str(work), 8, "toy")["images"].shape[0] == 8
  assert _HalfTemperature.traced >= 2
  rows = json.load(open(work / compare.RESULT))["rows"]
  assert [r["method"] for r in rows] == ["distilled_toy"]


def test_a_new_coreset_is_one_registered_function(trained, monkeypatch):
  config, workdir = trained
  first_images = lambda selector, budget: (np.arange(budget), np.zeros(budget, int))
  monkeypatch.setitem(coreset.SELECTORS, "first_images", first_images)
  config = config.copy_and_resolve_references()
  config.evaluate.methods = ("first_images",)
  stages.check_choices(config)  # A known row now.
  train, test = (input_pipeline.load_split(config, workdir, s) for s in ("train", "test"))
  selector = coreset.Selector(config, workdir, train)
  images, text_emb = selector.select("first_images", 3)
  np.testing.assert_array_equal(images, train.images[:3])
  np.testing.assert_array_equal(text_emb, train.text_emb[:3, 0])
  row = evaluate.method_row(config, workdir, "first_images", 3, selector, test, None)
  assert row["method"] == "first_images" and row["pairs"] == 3 and row["r_mean"] > 0
