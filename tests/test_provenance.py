"""Every stage refuses a workdir made under other data, text, model or experts settings."""
import json
import os
import shutil

import chex
import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest
import safetensors.numpy

from vldd_jax import backbone
from vldd_jax import checksums
from vldd_jax import distill
from vldd_jax import evaluate
from vldd_jax import experts
from vldd_jax import pretrain
from vldd_jax import provenance
from vldd_jax import trainer
from vldd_jax import trajectories
from vldd_jax import workdir_lib

# (field, new value, the stages whose outputs depend on it).
CHANGES = [
    ("data.num_train", 48, ("pretrain", "experts", "distill", "evaluate")),
    ("data.seed", 1, ("pretrain", "experts", "distill", "evaluate")),
    ("text.max_length", 64, ("experts", "distill", "evaluate")),
    ("seed", 7, ("pretrain", "experts", "distill", "evaluate")),
    ("model.lora.rank", 2, ("experts", "distill", "evaluate")),
    ("model.vit.depth", 2, ("pretrain", "experts", "distill", "evaluate")),
    ("experts.lr", 0.05, ("experts", "distill", "evaluate")),
    ("experts.epochs", 4, ("experts", "distill", "evaluate")),
]
STAGES = {"pretrain": pretrain.run, "experts": experts.run, "distill": distill.run,
          "evaluate": evaluate.run}


def _get(config, field):
  for part in field.split("."):
    config = config[part]
  return config


def _changed(config, field, value):
  other = config.copy_and_resolve_references()
  section, _, name = field.rpartition(".")
  (_get(other, section) if section else other)[name] = value
  return other


def _snapshot(workdir):
  return {os.path.join(root, f): os.path.getmtime(os.path.join(root, f))
          for root, _, files in os.walk(workdir) for f in files}


@pytest.mark.parametrize("field,value,stages", CHANGES)
def test_a_changed_setting_is_refused_by_every_stage_that_depends_on_it(
    trained, field, value, stages):
  config, workdir = trained
  other = _changed(config, field, value)
  before = _snapshot(workdir)
  for stage, run in STAGES.items():
    if stage in stages:
      with pytest.raises(ValueError, match=rf"was made with other settings \(.*{field}: "
                                           rf"saved {_get(config, field)!r}, "
                                           rf"config {value!r}"):
        run(other, workdir)
  assert _snapshot(workdir) == before  # Nothing was written or rewritten.


def test_unchanged_settings_reuse_the_outputs(trained):
  config, workdir = trained
  before = _snapshot(workdir)
  pretrain.run(config, workdir)
  experts.run(config, workdir)
  assert _snapshot(workdir) == before
  # Neither where the data lives nor how many experts there are changes them.
  moved = config.copy_and_resolve_references()
  moved.data.data_dir += "/"
  assert trajectories.finished_experts(workdir, moved) == [0, 1]


def test_how_students_train_at_once_changes_no_recorded_setting(trained):
  # Compare's cells were made with one setting and resume with the other.
  config, _ = trained
  other = config.copy_and_resolve_references()
  other.concurrent_students = 1
  other.evaluate.vmap_seeds = not config.evaluate.vmap_seeds
  for kind in provenance.DEPENDS:
    assert provenance.settings(other, kind) == provenance.settings(config, kind), kind


def test_distill_refuses_more_experts_than_finished(trained):
  config, workdir = trained
  other = config.copy_and_resolve_references()
  other.distill.num_experts = 3
  with pytest.raises(ValueError, match=r"distill.num_experts=3, but .*experts has 2 "
                                       "finished experts"):
    distill.run(other, workdir)


def test_every_finished_expert_is_matched_logged_and_recorded(trained, tmp_path, caplog):
  config, workdir = trained
  for folder in ("pretrain", "experts"):
    shutil.copytree(os.path.join(workdir, folder), tmp_path / folder)
  three = config.copy_and_resolve_references()
  three.experts.num_experts = 3
  experts.run(three, str(tmp_path))  # Trains a third expert beside the two.
  with caplog.at_level("INFO"):
    distill.run(config, str(tmp_path))  # experts.num_experts=2, distill.num_experts=0.
  assert "Matching the trajectories of 3 experts ([0, 1, 2]" in caplog.text
  settings = json.loads((tmp_path / "distill" / "n8" / workdir_lib.SET_SETTINGS).read_text())
  assert settings["distill.experts_used"] == 3


def test_another_workdirs_pretrained_tower_serves_other_data_with_the_same_tower(
    trained):
  config, workdir = trained
  other = _changed(config, "data.num_train", 48)
  other.model.backbone = os.path.join(workdir, "pretrain")
  student = lambda cfg, load: trainer.init_student(cfg.model, jax.random.key(0),
                                                   (32, 32, 3), 384, load)
  mine = student(config, backbone.loader(config, workdir))
  borrowed = student(other, backbone.loader(other, "/nonexistent"))
  chex.assert_trees_all_equal(borrowed.frozen, mine.frozen)  # The same base weights.
  deeper = _changed(other, "model.vit.depth", 2)
  with pytest.raises(ValueError, match=r"model\.vit\.depth: saved 1, config 2"):
    backbone.loader(deeper, "/nonexistent")


@pytest.mark.parametrize("content,message", [
    ("{not json", r"manifest.json is not valid JSON \(Expecting property name"),
    ("[1, 2]", r"manifest.json holds a list, expected a JSON object")])
def test_a_garbage_json_file_is_named_with_what_to_do(trained, tmp_path, content,
                                                      message):
  config, workdir = trained
  copy = tmp_path / "work"
  os.makedirs(workdir_lib.expert_dir(str(copy), 0))
  (copy / "experts" / "expert_000" / workdir_lib.MANIFEST).write_text(content)
  with pytest.raises(ValueError, match=message + ".*move its folder away"):
    trajectories.finished_experts(str(copy), config)


def test_a_pretrained_tower_whose_checkpoint_was_deleted_is_pretrained_again(
    trained, tmp_path, caplog):
  config, workdir = trained
  copy = tmp_path / "work"
  shutil.copytree(os.path.join(workdir, "pretrain"), copy / "pretrain")
  shutil.rmtree(copy / "pretrain" / "ckpt")
  with caplog.at_level("WARNING"):
    pretrain.run(config, str(copy))
  assert "pretraining again" in caplog.text
  tower = lambda w: trainer.init_student(config.model, jax.random.key(0), (32, 32, 3), 384,
                                        backbone.loader(config, str(w))).frozen
  for a, b in zip(jax.tree.leaves(tower(copy)), jax.tree.leaves(tower(workdir))):
    np.testing.assert_array_equal(a, b)  # The same tower as the first pretraining.


def test_a_damaged_trajectory_checkpoint_is_refused_not_loaded(trained, tmp_path):
  config, workdir = trained
  copy = tmp_path / "work"
  shutil.copytree(os.path.join(workdir, "experts"), copy / "experts")
  good = jax.device_get(trajectories.load_params(str(copy), 0, 1))  # Checks out.
  assert checksums.tree_sha256(good) == trajectories.read_manifest(
      str(copy), 0)["history"][1]["params_sha256"]
  # Epoch 0's parameters in epoch 1's place: a damage that still decodes (flipped
  # bytes in the compressed store may fail to decode instead, another message).
  ckpt = copy / "experts" / "expert_000" / "ckpt"
  shutil.rmtree(ckpt / "1" / "params")
  shutil.copytree(ckpt / "0" / "params", ckpt / "1" / "params")
  with pytest.raises(ValueError, match=r"expert_000/ckpt/1: the parameters do not match "
                                       "the checksum"):
    trajectories.load_params(str(copy), 0, 1)


def _lend_tower(workdir, tmp_path):
  """A copy of the trained workdir's pretrain/ folder, and the config that borrows it."""
  config, workdir = workdir
  lent = tmp_path / "lent" / "pretrain"
  shutil.copytree(os.path.join(workdir, "pretrain"), lent)
  borrower = config.copy_and_resolve_references()
  borrower.model.backbone = str(lent)
  return borrower, lent


def _overwrite_tower(lent, record: bool) -> None:
  """Saves another tower into `lent` (scaled weights); with `record`, its summary
  records the new checksum, as pretraining into that folder again would."""
  ckpt = str(lent / "ckpt")
  with ocp.CheckpointManager(ckpt) as mngr:
    step = mngr.latest_step()
    tower = mngr.restore(step, args=ocp.args.Composite(
        tower=ocp.args.StandardRestore())).tower
  tower = jax.tree.map(lambda w: np.asarray(w) * 1.5, tower)
  shutil.rmtree(ckpt)
  with ocp.CheckpointManager(ckpt) as mngr:
    mngr.save(step, args=ocp.args.Composite(tower=ocp.args.StandardSave(tower)))
    mngr.wait_until_finished()
  if record:
    summary = json.loads((lent / workdir_lib.PRETRAIN_SUMMARY).read_text())
    summary["tower_sha256"] = checksums.tree_sha256(tower)
    (lent / workdir_lib.PRETRAIN_SUMMARY).write_text(json.dumps(summary))


def test_a_borrowed_tower_replaced_under_the_same_path_is_refused(trained, tmp_path):
  borrower, lent = _lend_tower(trained, tmp_path)
  recorded = json.loads((lent / workdir_lib.PRETRAIN_SUMMARY).read_text())["tower_sha256"]
  assert provenance.settings(borrower, "distill")["model.backbone_sha256"] == recorded
  mine = str(tmp_path / "mine")
  borrower.experts.num_experts = 1
  experts.run(borrower, mine)
  assert trajectories.finished_experts(mine, borrower) == [0]
  _overwrite_tower(lent, record=True)  # Its owner pretrains that folder again.
  with pytest.raises(ValueError, match=rf"model\.backbone_sha256: saved '{recorded}', "
                                       "config '[0-9a-f]{64}'"):
    trajectories.finished_experts(mine, borrower)


def test_a_damaged_borrowed_tower_is_refused_not_loaded(trained, tmp_path):
  borrower, lent = _lend_tower(trained, tmp_path)
  backbone.loader(borrower, "/nonexistent")  # The intact copy loads.
  _overwrite_tower(lent, record=False)
  with pytest.raises(ValueError, match=r"pretrain/ckpt: the tower does not match the "
                                       "tower_sha256"):
    backbone.loader(borrower, "/nonexistent")
  summary = json.loads((lent / workdir_lib.PRETRAIN_SUMMARY).read_text())
  del summary["tower_sha256"]
  (lent / workdir_lib.PRETRAIN_SUMMARY).write_text(json.dumps(summary))
  with pytest.raises(ValueError, match=r"summary.json records no tower_sha256"):
    provenance.settings(borrower, "experts")


def test_a_hugging_face_tower_is_recorded_by_its_bytes(trained, tmp_path):
  config, _ = trained
  (tmp_path / "config.json").write_text("{}")
  weights = tmp_path / "model.safetensors"
  safetensors.numpy.save_file({"w": np.zeros(4, np.float32)}, str(weights))
  config = config.copy_and_resolve_references()
  config.model.backbone = str(tmp_path)
  first = provenance.settings(config, "compare")["model.backbone_sha256"]
  assert provenance.settings(config, "pretrain").get("model.backbone_sha256") is None
  safetensors.numpy.save_file({"w": np.ones(4, np.float32)}, str(weights))
  os.utime(weights, ns=(1, 1))  # A new mtime: the memo is keyed by path, size, mtime.
  assert provenance.settings(config, "compare")["model.backbone_sha256"] != first
  config.model.backbone = str(weights)  # The file itself, config.json beside it.
  assert len(provenance.settings(config, "experts")["model.backbone_sha256"]) == 64
  os.remove(tmp_path / "config.json")
  with pytest.raises(FileNotFoundError, match=r"config.json not found"):
    provenance.settings(config, "experts")
