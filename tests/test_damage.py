"""Damaged, missing and half-written files in a workdir, and a full disk: each is
repaired by a rerun or named with what to do, and no finished work is lost."""
import errno
import json
import os
import shutil

import jax
import numpy as np
import pytest

from vldd_jax import distilled_set
from vldd_jax import experts
from vldd_jax import stages
from vldd_jax import trajectories
from vldd_jax import workdir_lib

from conftest import distill_with


def _copy(trained, root, *folders):
  """A workdir `root/work` with `folders` of `trained`'s and its format stamp."""
  _, workdir = trained
  for folder in folders:
    shutil.copytree(os.path.join(workdir, folder), root / "work" / folder)
  shutil.copy(os.path.join(workdir, workdir_lib.STAMP), root / "work")
  return root / "work"


def _ckpt(work, expert=0):
  return work / "experts" / f"expert_{expert:03d}" / "ckpt"


def test_a_finished_expert_missing_an_epoch_trains_again_to_the_same_trajectory(
    trained, tmp_path, caplog):
  config, workdir = trained
  work = _copy(trained, tmp_path, "pretrain", "experts")
  shutil.rmtree(_ckpt(work) / "2")
  assert trajectories.finished_experts(str(work)) == [1]  # Not a usable expert now.
  with pytest.raises(FileNotFoundError, match=r"expert_000/ckpt misses epochs"):
    trajectories.load_correct(str(work), 0)
  with caplog.at_level("WARNING"):
    experts.run(config, str(work))
  assert "epoch 2 missing" in caplog.text
  assert trajectories.finished_experts(str(work)) == [0, 1]
  for epoch in range(config.experts.epochs + 1):
    for got, want in zip(jax.tree.leaves(trajectories.load_params(str(work), 0, epoch)),
                         jax.tree.leaves(trajectories.load_params(workdir, 0, epoch))):
      np.testing.assert_array_equal(got, want, err_msg=f"epoch {epoch}")
  np.testing.assert_array_equal(trajectories.load_correct(str(work), 0),
                                trajectories.load_correct(workdir, 0))


def test_a_missing_frozen_item_is_named_with_what_to_do(trained, tmp_path):
  work = _copy(trained, tmp_path, "experts")
  shutil.rmtree(_ckpt(work) / "0" / "frozen")
  with pytest.raises(FileNotFoundError, match=r"expert_000/ckpt/0/frozen is missing.*"
                                              "rerun --config.stage=experts"):
    trajectories.load_frozen(str(work), 0)


def test_garbage_in_an_expert_checkpoint_is_named_with_what_to_do(trained, tmp_path):
  config, _ = trained
  work = _copy(trained, tmp_path, "pretrain", "experts")
  shutil.rmtree(_ckpt(work) / str(config.experts.epochs))  # Unfinished: resumes.
  (_ckpt(work) / "1" / "metrics" / "metrics").write_text("{not json")
  with pytest.raises(ValueError, match=r"expert_000/ckpt/1/metrics/metrics cannot be read "
                                       r"\(.*Delete that epoch's folder"):
    experts.run(config, str(work))
  shutil.rmtree(_ckpt(work) / "1")  # As the message says: trained again from epoch 0.
  experts.run(config, str(work))
  assert trajectories.finished_experts(str(work)) == [0, 1]


@pytest.mark.parametrize("damage,message", [
    ("state", r"ckpt/4: the set does not match the checksum"),
    ("history", r"ckpt/4 cannot be read \(")])
def test_a_damaged_distillation_checkpoint_is_named_and_the_one_before_resumes(
    distilled, tmp_path, damage, message):
  config, _ = distilled
  work = _copy(distilled, tmp_path, "pretrain", "experts", "distill/n8")  # 4 iterations.
  ckpt = work / "distill" / "n8" / "ckpt"
  if damage == "state":
    # A state item that decodes but holds another set: flipped bytes in the
    # compressed store may instead fail to decode, a different message.
    assert sorted(os.listdir(ckpt)) == ["2", "4"]
    shutil.rmtree(ckpt / "4" / "state")
    shutil.copytree(ckpt / "2" / "state", ckpt / "4" / "state")
  else:
    (ckpt / "4" / "history" / "metadata").write_text("[{not json")
  with pytest.raises(ValueError, match=message + r".*Delete that folder and rerun"):
    distill_with(config, work, iterations=6)  # Goes on from the last checkpoint.
  shutil.rmtree(ckpt / "4")
  distill_with(config, work, iterations=6)
  assert distilled_set.load_distilled(str(work / "distill" / "n8" / workdir_lib.DISTILLED)
                                  ).provenance["iterations"] == 6


def _finished_expert(folder, epochs: int = 1) -> None:
  """A folder that `trajectories.is_finished` counts as a finished expert."""
  for epoch in range(epochs + 1):
    (folder / "ckpt" / str(epoch)).mkdir(parents=True)
  (folder / workdir_lib.MANIFEST).write_text(json.dumps({"finished": True, "epochs": epochs}))


@pytest.mark.parametrize("stray", ["expert_000_backup", "expert_001.old", "expert_0001"])
def test_experts_are_exactly_the_expert_nnn_folders_and_others_are_named(tmp_path, caplog,
                                                                         stray):
  for name in ("expert_000", "expert_001", stray):
    _finished_expert(tmp_path / "experts" / name)
  with caplog.at_level("WARNING"):
    assert trajectories.finished_experts(str(tmp_path)) == [0, 1]  # Not 0 twice, no crash.
  assert f"Ignoring {stray} in {tmp_path / 'experts'}" in caplog.text


def test_a_full_disk_names_the_workdir_and_a_rerun_finishes(trained, tmp_path,
                                                           monkeypatch):
  config, _ = trained
  work = _copy(trained, tmp_path, "pretrain", "experts")
  (work / "distill" / "n8").mkdir(parents=True)
  (work / "distill" / "n8" / "distilled.npz.tmp").write_text("half")  # A killed write.
  config = config.copy_and_resolve_references()
  config.stage = "distill"

  def full(*args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")

  monkeypatch.setattr(np, "savez", full)
  with pytest.raises(OSError, match=f"No space left on the device of {work} "
                                    r"\(stage distill: .*Free space and rerun"):
    stages.run(config, str(work))
  assert (work / "distill" / "n8" / "ckpt" / "4").is_dir()  # Finished work is kept.
  monkeypatch.undo()
  stages.run(config, str(work))
  assert not (work / "distill" / "n8" / "distilled.npz.tmp").exists()
  saved = distilled_set.read(str(work / "distill" / "n8" / workdir_lib.DISTILLED))
  assert saved["images"].shape[0] == 8
