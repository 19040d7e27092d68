"""configs/flickr30k.py and configs/coco.py: the paper's values, runlocal, structure.

Only loads configs (no data, no training), so it runs in about a second.
"""
import json
import os
import re

import pytest

from vldd_jax import config_lib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PAPER_CONFIGS = ("flickr30k", "coco")
ANN_FILES = {"flickr30k": "dataset_flickr30k.json", "coco": "dataset_coco.json"}
# Sections whose fields must be exactly those of configs/shapes.py.
SAME_FIELDS = ("experts", "distill", "evaluate", "compare")

# The paper's code, as the configs cite it (DESIGN.md, "What the reference code
# and papers say").
PAPER_VALUES = {
    "experts.num_experts": 100,
    "experts.epochs": 50,
    "experts.batch_size": 128,
    "experts.lr": 0.1,
    "experts.momentum": 0.0,
    "distill.num_pairs": 100,
    "distill.init": "real",
    "distill.syn_steps": 20,
    "distill.batch_size": 100,
    "distill.expert_epochs": 3,
    "distill.max_start_epoch": 25,
    "distill.iterations": 50_000,
    "distill.meta_lr_images": 1000.0,
    "distill.meta_lr_text": 1000.0,
    "distill.meta_lr_rates": 1e-3,
    "distill.momentum": 0.5,
    "distill.augment": True,
    "evaluate.seeds": 5,
    "evaluate.epochs": 50,
    "evaluate.report": "final",
    "compare.budgets": (100, 200, 500, 1000),
    "model.text_head": "paper",
    "model.image_head": "none",
    "model.dropout": 0.1,
    "model.temperature": 0.07,
    "model.learn_temperature": False,
}
# Fields that set the cost of a run; runlocal must shrink every one.
EXPENSIVE = ("experts.num_experts", "experts.epochs", "experts.batch_size",
             "experts.eval_batch_size", "distill.num_pairs", "distill.syn_steps",
             "distill.batch_size", "distill.iterations", "distill.max_start_epoch",
             "evaluate.seeds", "evaluate.epochs", "evaluate.batch_size")


def _path(name: str) -> str:
  return os.path.join(ROOT, "configs", f"{name}.py")


def _load(name: str, arg: str = ""):
  return config_lib.load_config(_path(name) + (f":{arg}" if arg else ""))


def _get(config, dotted: str):
  for key in dotted.split("."):
    config = config[key]
  return config


def _docstring(name: str) -> str:
  with open(_path(name), encoding="utf-8") as f:
    source = f.read()
  match = re.match(r'r?"""(.*?)"""', source, re.S)
  assert match, f"{name}.py has no module docstring"
  return match.group(1)


def _commands(doc: str) -> list[str]:
  """The `python -m vldd_jax.main` commands of a docstring, continuations joined."""
  joined = re.sub(r"\\\n\s*", "", doc)
  return [line.strip() for line in joined.splitlines()
          if line.strip().startswith("python -m vldd_jax.main")]


@pytest.fixture
def fake_vit(tmp_path):
  """A Hugging Face ViT folder with only its config.json (all a config reads)."""
  with open(tmp_path / "config.json", "w") as f:
    json.dump(dict(hidden_size=48, num_hidden_layers=2, num_attention_heads=4,
                   intermediate_size=96, patch_size=16, image_size=224), f)
  return str(tmp_path)


@pytest.mark.parametrize("name", PAPER_CONFIGS)
def test_paper_values(name):
  config = _load(name)
  for field, value in PAPER_VALUES.items():
    assert _get(config, field) == value, field
  assert config.model.embed_dim == config.model.vit.width  # No image head.
  assert config.distill.max_start_epoch + config.distill.expert_epochs <= (
      config.experts.epochs)
  assert config.data.name == "karpathy"
  assert config.data.ann_file.endswith(ANN_FILES[name])
  assert config.data.image_root
  # Without backbone=: a scratch tower, matched whole.
  assert config.model.backbone == "scratch"
  assert config.model.trainable == "all"


@pytest.mark.parametrize("name", PAPER_CONFIGS)
def test_sections_match_shapes(name):
  shapes = _load("shapes")
  for arg in ("", "runlocal"):
    config = _load(name, arg)
    # No `pretrain` section: that stage needs shapes' attribute labels.
    assert set(config.keys()) == set(shapes.keys()) - {"pretrain"}
    for section in SAME_FIELDS:
      assert set(config[section].keys()) == set(shapes[section].keys()), section
    assert set(shapes.model.keys()) <= set(config.model.keys())
    assert set(shapes.text.keys()) <= set(config.text.keys())


@pytest.mark.parametrize("name", PAPER_CONFIGS)
def test_runlocal_is_smaller_and_consistent(name):
  full, local = _load(name), _load(name, "runlocal")
  for field in EXPENSIVE:
    assert _get(local, field) < _get(full, field), field
  assert max(local.compare.budgets) < min(full.compare.budgets)
  assert len(local.compare.budgets) >= 2
  assert local.model.vit.patch > full.model.vit.patch  # Fewer tokens from scratch.
  assert local.distill.max_start_epoch + local.distill.expert_epochs <= (
      local.experts.epochs)
  assert local.distill.batch_size <= local.distill.num_pairs
  assert local.evaluate.batch_size <= min(local.compare.budgets)
  # Only the schedule shrinks: the data and the method stay the paper's.
  assert local.data == full.data
  for field in ("distill.meta_lr_images", "distill.meta_lr_text", "distill.meta_lr_rates",
                "distill.momentum", "experts.lr", "model.temperature"):
    assert _get(local, field) == _get(full, field), field


@pytest.mark.parametrize("name", PAPER_CONFIGS)
def test_backbone_and_bert_arguments(name, fake_vit):
  config = _load(name, f"backbone={fake_vit},bert=/models/bert-base-uncased")
  assert config.model.backbone == fake_vit
  assert (config.model.vit.width, config.model.vit.depth) == (48, 2)
  assert config.model.embed_dim == 48  # The text head projects to the tower width.
  assert config.model.trainable == "lora+heads"
  assert config.text.path == "/models/bert-base-uncased"
  assert config.text.pooling == "cls"
  local = _load(name, f"runlocal,backbone={fake_vit}")
  assert local.model.vit.patch == 16  # A checkpoint's architecture is kept.
  assert _load(name, "image_size=64").data.image_size == 64
  with pytest.raises(ValueError, match="Unknown config argument"):
    _load(name, "quick")


def test_coco_differs_from_flickr30k_only_in_data():
  for arg in ("", "runlocal"):
    flickr, coco = _load("flickr30k", arg).to_dict(), _load("coco", arg).to_dict()
    assert flickr.pop("data") != coco.pop("data")
    assert flickr == coco


@pytest.mark.parametrize("name", PAPER_CONFIGS)
def test_docstring_commands(name, fake_vit):
  commands = _commands(_docstring(name))
  assert commands, "the docstring shows no run command"
  assert re.search(rf"--config=configs/{name}\.py[:\s]", commands[0] + " ")
  config = _load(name)
  for command in commands:
    spec = re.search(r"--config=(\S+)", command).group(1)
    # The documented config argument loads (a stand-in for the ViT folder).
    spec = re.sub(r"backbone=[^,\s]+", f"backbone={fake_vit}", spec)
    config_lib.load_config(os.path.join(ROOT, spec))
    # Every overridden field exists.
    for field in re.findall(r"--config\.([\w.]+)=", command):
      _get(config, field)
