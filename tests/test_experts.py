"""The pretrain and experts stages: trajectories, resume after a kill, device count."""
import json
import os
import re
import shutil
import signal

import jax
import numpy as np
import pytest
from flax import traverse_util

from vldd_jax import backbone
from vldd_jax import experts
from vldd_jax import pretrain
from vldd_jax import trajectories
from vldd_jax import workdir_lib
from vldd_jax.models import split_params

from conftest import kill_when_exists, run_main, tiny_config


def _flat(tree):
  return traverse_util.flatten_dict(jax.device_get(tree), sep="/")


def test_pretrain_saves_tower_that_experts_start_from(trained):
  config, workdir = trained
  summary = json.load(open(os.path.join(workdir_lib.pretrain_dir(workdir),
                                        workdir_lib.PRETRAIN_SUMMARY)))
  assert set(summary["held_out_accuracy"]) == set(pretrain.HEADS)
  loader = backbone.loader(config, workdir)
  for expert in range(config.experts.num_experts):
    frozen = _flat(trajectories.load_frozen(workdir, expert))
    # The frozen tower is the pretrained one, whatever the expert's seed.
    pretrained = {"img": loader(jax.tree.map(np.zeros_like, _tower(workdir, expert)))}
    for key, value in _flat(pretrained).items():
      if not key.endswith(("lora_a", "lora_b")):
        np.testing.assert_array_equal(frozen[key], value, err_msg=key)


def _tower(workdir, expert):
  """The expert's whole tower at epoch 0: frozen base leaves and LoRA factors."""
  params = trajectories.load_params(workdir, expert, 0)
  merged = traverse_util.flatten_dict(trajectories.load_frozen(workdir, expert), sep="/")
  merged.update(traverse_util.flatten_dict(params, sep="/"))
  return traverse_util.unflatten_dict(merged, sep="/")["img"]


def test_trajectories_manifests_and_correct_records(trained):
  config, workdir = trained
  cfg = config.experts
  assert trajectories.finished_experts(workdir) == list(range(cfg.num_experts))
  starts = []
  for expert in range(cfg.num_experts):
    manifest = trajectories.read_manifest(workdir, expert)
    assert manifest["epochs_done"] == cfg.epochs and manifest["dtype"] == "float32"
    assert [h["epoch"] for h in manifest["history"]] == list(range(cfg.epochs + 1))
    assert set(manifest["test"]) == {"tr@1", "tr@5", "tr@10", "ir@1", "ir@5", "ir@10",
                                     "r_mean"}
    assert manifest["model"]["trainable"] == "lora+heads"
    params = [_flat(trajectories.load_params(workdir, expert, e))
              for e in range(cfg.epochs + 1)]
    assert all(k.endswith(("lora_a", "lora_b")) or k.startswith(("img_head", "txt_head"))
               for k in params[0])
    # LoRA B starts at zero and moves; every epoch changes the parameters.
    assert all(not np.any(v) for k, v in params[0].items() if k.endswith("lora_b"))
    for before, after in zip(params, params[1:]):
      assert any(not np.array_equal(before[k], after[k]) for k in before)
    starts.append(params[0])
    correct = trajectories.load_correct(workdir, expert)
    # 64 pairs in batches of 16: every pair is seen every epoch.
    assert correct.shape == (cfg.epochs, config.data.num_train)
    assert set(np.unique(correct)) <= {0, 1}
    accuracy = [h["in_batch_accuracy"] for h in manifest["history"][1:]]
    np.testing.assert_allclose(100 * correct.mean(axis=1), accuracy, atol=0.01)
  # Experts start from different seeds.
  assert not np.array_equal(starts[0]["txt_head/projection/kernel"],
                            starts[1]["txt_head/projection/kernel"])
  with pytest.raises(FileNotFoundError, match="no epoch 99"):
    trajectories.load_params(workdir, 0, 99)


def test_rerun_skips_finished_experts(trained):
  config, workdir = trained
  before = os.path.getmtime(os.path.join(workdir_lib.expert_dir(workdir, 0), "manifest.json"))
  experts.run(config, workdir)
  after = os.path.getmtime(os.path.join(workdir_lib.expert_dir(workdir, 0), "manifest.json"))
  assert before == after


def _run_stages(workdir, data_dir, *flags, devices=1):
  for stage in ("pretrain", "experts"):
    run_main(workdir, data_dir, f"--config.stage={stage}", *flags, devices=devices)


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM])
def test_killed_run_resumes_to_the_same_trajectories(trained, data_dir, tmp_path, sig,
                                                     caplog):
  # The uninterrupted reference is the session's `trained` workdir (the same
  # tiny config, 2 experts x 3 epochs, run in this process); the killed run
  # starts from its pretrained tower, since only the experts stage is killed.
  # The rerun runs in this process too: the resume is the stage's, not the CLI's.
  config, reference = trained
  killed = tmp_path / "killed"
  shutil.copytree(os.path.join(reference, "pretrain"), killed / "pretrain")
  shutil.copy(os.path.join(reference, workdir_lib.STAMP), killed)
  # One expert at a time: two tiny experts side by side could both finish
  # before the signal lands (it happened once under CI's load).
  code, stderr = kill_when_exists(killed, data_dir,
                                  ("--config.stage=experts", "--config.concurrent_students=1"),
                                  killed / "experts" / "expert_000" / "ckpt" / "2", sig)
  assert not trajectories.finished_experts(str(killed)) == [0, 1], "killed too late"
  if sig == signal.SIGTERM:  # A preempted VM: the epoch in progress is saved, then a clean exit.
    assert code == 128 + signal.SIGTERM, stderr[-3000:]
    assert re.search(r"Stopped by SIGTERM after epoch [23] of expert 0; saved \S+ckpt/[23]\. "
                     "Rerun the same command", stderr), stderr[-3000:]

  # Trained and resumed one expert at a time: the reference trained them at once.
  one_by_one = config.copy_and_resolve_references()
  one_by_one.concurrent_students = 1
  with caplog.at_level("INFO"):
    experts.run(one_by_one, str(killed))
  assert "resuming after epoch" in caplog.text
  for expert in (0, 1):
    for epoch in range(4):
      want = _flat(trajectories.load_params(reference, expert, epoch))
      got = _flat(trajectories.load_params(str(killed), expert, epoch))
      for key in want:
        np.testing.assert_array_equal(got[key], want[key], err_msg=f"{expert}/{epoch}/{key}")
    np.testing.assert_array_equal(trajectories.load_correct(str(killed), expert),
                                  trajectories.load_correct(reference, expert))


def test_one_and_four_devices_train_the_same_expert(trained, data_dir, tmp_path):
  # One device: the session's `trained` workdir (this process, 1 CPU device);
  # four: a child process with 4 CPU devices running both stages.
  _, one = trained
  four = tmp_path / "four"
  _run_stages(four, data_dir, devices=4)
  for expert, epoch in ((0, 1), (0, 3), (1, 3)):
    want = _flat(trajectories.load_params(one, expert, epoch))
    got = _flat(trajectories.load_params(str(four), expert, epoch))
    for key in want:
      np.testing.assert_allclose(got[key], want[key], rtol=1e-4, atol=1e-5,
                                 err_msg=f"{expert}/{epoch}/{key}")


def test_split_of_expert_params_matches_model_partition(trained):
  config, workdir = trained
  params = trajectories.load_params(workdir, 0, 0)
  merged = traverse_util.flatten_dict(trajectories.load_frozen(workdir, 0), sep="/")
  merged.update(traverse_util.flatten_dict(params, sep="/"))
  trainable, _ = split_params(traverse_util.unflatten_dict(merged, sep="/"),
                              config.model.trainable)
  assert _flat(trainable).keys() == _flat(params).keys()


def test_experts_trained_with_other_settings_are_refused(trained):
  config, workdir = trained
  config = config.copy_and_resolve_references()
  config.experts.lr = 0.05
  with pytest.raises(ValueError, match=r"lr: saved 0.1, config 0.05"):
    experts.run(config, workdir)


def test_an_all_trainable_expert_saves_and_loads_without_a_frozen_item(data_dir, tmp_path):
  config = tiny_config(data_dir)
  config.model.update(trainable="all", backbone="scratch")
  config.experts.update(num_experts=1, epochs=1)
  experts.run(config, str(tmp_path))
  assert trajectories.load_frozen(str(tmp_path), 0) == {}
  params = trajectories.load_params(str(tmp_path), 0, 1)
  assert "img" in params and jax.tree.leaves(params)
