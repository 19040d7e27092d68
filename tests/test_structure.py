"""Libraries and evaluation never import a stage; only orchestrators make sets;
a new objective is one registered class, a new coreset one registered function."""
import ast
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from vldd_jax import backbone
from vldd_jax import compare
from vldd_jax import config_lib
from vldd_jax import coreset
from vldd_jax import distilled_set
from vldd_jax import evaluate
from vldd_jax import losses
from vldd_jax import objectives
from vldd_jax import stages
from vldd_jax import workdir_lib
from vldd_jax.data import input_pipeline

from conftest import ROOT

STAGE_MODULES = ("vldd_jax.compare", "vldd_jax.distill", "vldd_jax.experts",
                 "vldd_jax.pretrain", "vldd_jax.stages", "vldd_jax.main",
                 "vldd_jax.data.prepare")
LIBRARIES = ("backbone", "coreset", "losses", "matching", "objectives", "provenance",
             "retrieval", "lowrank", "distilled_set", "trainer", "trajectories", "models")


def _imports(module: str) -> set[str]:
  """The `vldd_jax` modules `module` imports (any statement, at any depth)."""
  path = os.path.join(ROOT, *module.split(".")) + ".py"
  if not os.path.exists(path):
    path = os.path.join(ROOT, *module.split("."), "__init__.py")
  found = set()
  for node in ast.walk(ast.parse(open(path).read())):
    if isinstance(node, ast.Import):
      found |= {a.name for a in node.names}
    elif isinstance(node, ast.ImportFrom) and node.module:
      base = node.module if node.level == 0 else ".".join(
          module.split(".")[:-node.level] + [node.module])
      # `from pkg import name` imports pkg.name when that is a module.
      found |= {base} | {f"{base}.{a.name}" for a in node.names}
  known = lambda m: os.path.exists(os.path.join(ROOT, *m.split(".")) + ".py") or (
      os.path.isdir(os.path.join(ROOT, *m.split("."))))
  # Importing a.b.c runs a/__init__ and a.b/__init__ first.
  parents = {".".join(m.split(".")[:i]) for m in found for i in range(2, m.count(".") + 1)}
  return {m for m in found | parents if m.startswith("vldd_jax") and known(m)}


def _closure(module: str) -> set[str]:
  seen, todo = set(), [module, "vldd_jax"]
  while todo:
    m = todo.pop()
    if m not in seen:
      seen.add(m)
      todo += _imports(m)
  return seen


def test_the_import_graph_reads_every_import_statement():
  # The graph finds what an interpreter really loads (one child, for the check).
  code = "import sys, vldd_jax.evaluate; print(sorted(m for m in sys.modules if " \
         "m.startswith('vldd_jax')))"
  loaded = set(json.loads(subprocess.run([sys.executable, "-c", code], cwd=ROOT,
                                         capture_output=True, text=True, check=True
                                         ).stdout.replace("'", '"')))
  assert loaded == _closure("vldd_jax.evaluate")


def test_config_files_load_no_model_code_and_no_flax():
  configs = sorted(f for f in os.listdir(os.path.join(ROOT, "configs")) if f.endswith(".py"))
  code = ("import sys; from vldd_jax import config_lib\n"
          f"for c in {configs!r}: config_lib.load_config('configs/' + c)\n"
          "print(sorted(m for m in sys.modules if m.startswith(('flax', 'vldd_jax.models'))))")
  result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                          text=True, check=True)
  assert len(configs) >= 4 and result.stdout.strip() == "[]", result.stdout


@pytest.mark.parametrize("module", ("evaluate",) + LIBRARIES)
def test_importing_a_library_or_evaluate_pulls_in_no_stage(module):
  assert not _closure(f"vldd_jax.{module}") & set(STAGE_MODULES)
  assert "vldd_jax.stages" in _closure("vldd_jax.main")  # The graph does see stages.


def test_evaluate_refuses_a_missing_set_instead_of_distilling_it(trained, tmp_path):
  config, workdir = trained
  other = config.copy_and_resolve_references()
  other.distill.num_pairs = 5  # No set of 5 pairs exists.
  with pytest.raises(FileNotFoundError, match=r"distill/n5/distilled.npz not found: run "
                                              r"--config.stage=distill"):
    evaluate.run(other, workdir)


class _HalfTemperature(objectives.Objective):
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
  # As in test_compare: the fewest steps that use the objective everywhere.
  config.distill.update(iterations=2, augment=False)
  config.evaluate.update(epochs=1, augment=False)
  compare.run(config, str(work))
  # Distilled into its own folder, and both students trained with its loss.
  assert distilled_set.load(str(work), 8, "toy")["images"].shape[0] == 8
  assert _HalfTemperature.traced >= 2
  rows = json.load(open(work / workdir_lib.COMPARE_RESULT))["rows"]
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


def test_the_named_backbones_are_the_loaders_registry():
  # provenance records a tower by content unless it is one of these names.
  assert tuple(backbone.NAMED) == config_lib.NAMED_BACKBONES


def test_no_function_takes_more_than_eight_parameters():
  wide = []
  for folder, _, files in os.walk(os.path.join(ROOT, "vldd_jax")):
    for name in (f for f in files if f.endswith(".py")):
      path = os.path.join(folder, name)
      for node in ast.walk(ast.parse(open(path).read())):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
          a = node.args
          params = [*a.posonlyargs, *a.args, *a.kwonlyargs, a.vararg, a.kwarg]
          params = [p for p in params if p is not None and p.arg not in ("self", "cls")]
          if len(params) > 8:
            wide.append(f"{os.path.relpath(path, ROOT)}:{node.lineno} {node.name}")
  assert not wide, wide
