"""Stage distill on the tiny config: outputs, resume, NaN stop, devices."""
import json
import logging
import os
import re
import shutil
import signal
import socket
import subprocess

import numpy as np
import pytest

from vldd_jax import distill
from vldd_jax import distilled_set
from vldd_jax import workdir_lib
from vldd_jax.data import input_pipeline

from conftest import (ROOT, distill_with, kill_when_exists, main_cmd, run_main,
                      subprocess_env)


def test_distilled_outputs(distilled):
  config, workdir = distilled
  n = config.distill.num_pairs
  out = distilled_set.set_dir(workdir, n)
  result = distilled_set.load(workdir, n)
  assert result["images"].shape == (n, 32, 32, 3) and result["images"].dtype == np.float32
  np.testing.assert_array_equal(result["images_uint8"], distill.to_uint8(result["images"]))
  assert result["text_emb"].shape == (n, 384)
  assert result["lr_image"] > 0 and result["lr_text"] > 0
  train = input_pipeline.load_split(config, workdir, "train")
  captions = {c for cs in train.captions for c in cs}
  assert set(result["nearest_caption"]) <= captions
  assert np.all(np.abs(result["nearest_cosine"]) <= 1 + 1e-5)
  # Started from real pairs, moved by the meta-gradient.
  start = train.images[result["init_rows"]]
  assert np.abs(result["images_uint8"].astype(int) - start).max() > 0
  for png in ("synthetic_grid.png", "matching_loss.png"):
    with open(os.path.join(out, png), "rb") as f:
      assert f.read(8) == b"\x89PNG\r\n\x1a\n"
  logged = [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))]
  assert [r["iteration"] for r in logged if r["stage"] == "distill" and
          r["num_pairs"] == n and r.get("objective", "plain") == "plain"] == [1, 3]


def test_rerun_with_other_settings_is_refused(distilled):
  config, workdir = distilled
  out = distilled_set.set_dir(workdir, config.distill.num_pairs)
  with open(os.path.join(out, workdir_lib.SET_SETTINGS)) as f:
    assert json.load(f) == distill.settings(config, config.experts.num_experts)
  other = config.copy_and_resolve_references()
  other.distill.meta_lr_images *= 2
  with pytest.raises(ValueError, match=r"n8 was made with other settings "
                                       r"\(distill\.meta_lr_images: saved 0\.002, config 0\.004\)"):
    distill.run(other, workdir)
  fewer = config.copy_and_resolve_references()
  fewer.distill.iterations -= 1
  with pytest.raises(ValueError, match=r"distill\.iterations: saved 4, config 3"):
    distill.run(fewer, workdir)
  # Logging cadence, the data's location and a plain set's similarity fields
  # do not change the set: the finished one is kept.
  same = config.copy_and_resolve_references()
  same.distill.update(log_every=1, meta_lr_lowrank=123.0)
  same.data.data_dir = "/elsewhere"
  before = os.path.getmtime(os.path.join(out, workdir_lib.DISTILLED))
  distill.run(same, workdir)
  assert os.path.getmtime(os.path.join(out, workdir_lib.DISTILLED)) == before


def _copy_experts(trained, tmp_path, name, *more):
  """A workdir `tmp_path/name` with the pretrain and experts folders of `trained`
  (or of the `distilled` fixture, which shares its workdir), its stamp, and
  `more` of its folders (e.g. "distill/n8", that fixture's set)."""
  _, workdir = trained
  target = tmp_path / name
  os.makedirs(target)
  for name in ("pretrain", "experts", workdir_lib.STAMP, *more):
    source = os.path.join(workdir, name)
    if os.path.isdir(source):
      shutil.copytree(source, target / name)
    else:
      shutil.copy(source, target / name)
  return target


def test_the_budget_rule_sets_the_meta_rates_distillation_uses(distilled, trained,
                                                               tmp_path):
  # 8 pairs over a reference of 2: the rule halves the set's meta rates
  # (exponent 0.5), which must give the set that halved rates give.
  config = trained[0].copy_and_resolve_references()
  config.distill.update(budget_reference=2, meta_lr_set_exponent=0.5)
  ruled = _copy_experts(trained, tmp_path, "ruled")
  distill.run(config, str(ruled))
  config.distill.update(meta_lr_set_exponent=0.0,
                        meta_lr_images=config.distill.meta_lr_images * 0.5,
                        meta_lr_text=config.distill.meta_lr_text * 0.5)
  halved = _copy_experts(trained, tmp_path, "halved")
  distill.run(config, str(halved))
  got, want = (distilled_set.load(str(w), 8) for w in (ruled, halved))
  for key in ("images", "text_emb", "lr_image", "lr_text"):
    np.testing.assert_array_equal(got[key], want[key], err_msg=key)
  # The same run at the full rates (the module's set) moves the pixels further.
  full = distilled_set.load(distilled[1], 8)["image_change_rms"]
  assert got["image_change_rms"] < 0.75 * full


def test_killed_distillation_resumes_to_the_same_set_and_its_rerun_compiles_nothing(
    trained, data_dir, tmp_path, caplog):
  # With a moving window (budget.py), whose draws depend on the iteration,
  # and the default start. The killed runs share their own XLA cache (not the
  # session's, which the in-process runs fill), every program written to it.
  cache, every_program = tmp_path / "xla", {"JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0"}
  flags = ("--config.stage=distill", "--config.distill.iterations=8",
           "--config.distill.max_start_epoch=1", "--config.distill.max_start_epoch_final=2",
           "--config.distill.init=easy_k_center", f"--compile_cache={cache}")
  # The uninterrupted reference and the resumed runs run in this process, with
  # the same settings; the killed ones are CLI children.
  fields = dict(iterations=8, max_start_epoch=1, max_start_epoch_final=2,
                init="easy_k_center")
  reference = _copy_experts(trained, tmp_path, "reference")
  distill_with(trained[0], reference, **fields)

  killed = _copy_experts(trained, tmp_path, "killed")
  kill_when_exists(killed, data_dir, flags, killed / "distill" / "n8" / "ckpt" / "2",
                   env=every_program)
  assert not (killed / "distill" / "n8" / workdir_lib.DISTILLED).exists()
  compiled = {f: os.stat(cache / f).st_mtime_ns for f in os.listdir(cache)}
  assert any(f.startswith("jit_meta_step") for f in compiled), sorted(compiled)
  with caplog.at_level("INFO"):
    distill_with(trained[0], killed, **fields)
  assert "Resuming distillation at iteration" in caplog.text
  want, got = (distilled_set.load(str(w), 8) for w in (reference, killed))
  for key in ("images", "text_emb", "lr_image", "lr_text"):
    np.testing.assert_array_equal(got[key], want[key], err_msg=key)

  # SIGTERM (a preempted VM) checkpoints at once, though the next checkpoint is
  # not due before the end, and the rerun goes on from there to the same set.
  stopped = _copy_experts(trained, tmp_path, "stopped")
  flags += ("--config.distill.checkpoint_every=8",)
  code, stderr = kill_when_exists(stopped, data_dir, flags, stopped / "metrics.jsonl",
                                  signal.SIGTERM, env=every_program)
  assert code == 128 + signal.SIGTERM, stderr[-3000:]
  done = int(re.search(r"Stopped by SIGTERM after iteration (\d) of 8; saved \S+"
                       r"/distill/n8/ckpt/(\d)", stderr).group(1))
  assert 2 <= done < 8 and (stopped / "distill" / "n8" / "ckpt" / str(done)).is_dir()
  assert not (stopped / "distill" / "n8" / workdir_lib.DISTILLED).exists()
  # The rerun (a restarted VM) read every compilation from the cache: it wrote,
  # and so compiled, nothing; its iterations are checked by the resumed set.
  assert {f: os.stat(cache / f).st_mtime_ns for f in os.listdir(cache)} == compiled
  caplog.clear()
  with caplog.at_level("INFO"):
    distill_with(trained[0], stopped, checkpoint_every=8, **fields)
  assert f"Resuming distillation at iteration {done}" in caplog.text
  got = distilled_set.load(str(stopped), 8)
  for key in ("images", "text_emb", "lr_image", "lr_text"):
    np.testing.assert_array_equal(got[key], want[key], err_msg=key)


def test_non_finite_loss_stops_without_a_bad_checkpoint(trained, tmp_path):
  workdir = _copy_experts(trained, tmp_path, "nan")
  huge = dict(meta_lr_images=1e38, meta_lr_text=1e38, meta_lr_rates=1e38)
  with pytest.raises(FloatingPointError, match="non-finite loss or gradient at "
                                               "iteration") as stopped:
    distill_with(trained[0], workdir, **huge)
  out = workdir / "distill" / "n8"
  assert not (out / workdir_lib.DISTILLED).exists()
  saved = sorted(os.listdir(out / "ckpt")) if (out / "ckpt").exists() else []
  assert saved in ([], ["2"]), saved  # Nothing saved after the first bad iteration.
  if not saved:  # Nothing to resume: nothing blocks a corrected rerun either.
    assert "no checkpoint was saved before it" in str(stopped.value)
    assert not (out / workdir_lib.SET_SETTINGS).exists()
    distill_with(trained[0], workdir)
    assert (out / workdir_lib.DISTILLED).exists()
  else:
    assert f"the last good checkpoint ({out}/ckpt/2) is kept" in str(stopped.value)


def test_a_checkpoint_past_the_asked_iterations_is_refused(distilled, tmp_path, caplog):
  # The finished 4-iteration set, then a run to 6 killed after its last
  # checkpoint: settings.json and distilled.npz still say 4, ckpt/ holds 6.
  workdir = _copy_experts(distilled, tmp_path, "past", "distill/n8")
  out = workdir / "distill" / "n8"
  four = {name: (out / name).read_bytes()
          for name in (workdir_lib.SET_SETTINGS, workdir_lib.DISTILLED)}
  distill_with(distilled[0], workdir, iterations=6)
  six = (out / workdir_lib.DISTILLED).read_bytes()
  for name, content in four.items():
    (out / name).write_bytes(content)
  with pytest.raises(ValueError, match=r"n8/ckpt holds iteration 6, past distill."
                                       r"iterations=5"):
    distill_with(distilled[0], workdir, iterations=5)
  assert (out / workdir_lib.DISTILLED).read_bytes() == four[workdir_lib.DISTILLED]  # Kept.
  # Killed between writing the 6-iteration set and its settings: settings.json
  # says 4, the file holds 6 iterations. It is not handed back as the 4-iteration set.
  (out / workdir_lib.DISTILLED).write_bytes(six)
  with (caplog.at_level("WARNING"),
        pytest.raises(ValueError, match=r"n8/ckpt holds iteration 6, past "
                                        r"distill.iterations=4")):
    distill_with(distilled[0], workdir)
  assert re.search(r"n8/distilled.npz holds a set distilled for 6 iterations, not the 4 "
                   "asked", caplog.text)
  assert (out / workdir_lib.DISTILLED).read_bytes() == six  # Kept.


_DEVICES_FLAGS = ("--config.stage=distill", "--config.distill.meta_batch=4",
                  "--config.distill.iterations=2")


@pytest.fixture(scope="module")
def four_devices(trained, data_dir, tmp_path_factory):
  """A workdir distilled by one process with 4 devices (meta batch 4)."""
  workdir = _copy_experts(trained, tmp_path_factory.mktemp("devices"), "four")
  run_main(workdir, data_dir, *_DEVICES_FLAGS, devices=4)
  return distilled_set.load(str(workdir), 8)


def _assert_same_set(got, want):
  for key in ("images", "text_emb", "lr_image", "lr_text"):
    # Float32 sums in another order: agree to ~1e-5 of the values' scale.
    np.testing.assert_allclose(got[key], want[key], rtol=1e-3,
                               atol=1e-5 * np.abs(want[key]).max(), err_msg=key)


def test_one_and_four_devices_distill_the_same_set(trained, data_dir, tmp_path,
                                                   four_devices):
  one = _copy_experts(trained, tmp_path, "one")
  run_main(one, data_dir, *_DEVICES_FLAGS)
  _assert_same_set(distilled_set.load(str(one), 8), four_devices)


def test_two_processes_distill_the_set_of_one_process(trained, data_dir, tmp_path,
                                                      four_devices):
  """2 processes x 2 CPU devices, joined by jax.distributed, as 1 process x 4."""
  workdir = _copy_experts(trained, tmp_path, "two")
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
  procs = [subprocess.Popen(
      main_cmd(workdir, data_dir, *_DEVICES_FLAGS, "--config.multihost=True"), cwd=ROOT,
      stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
      env=dict(subprocess_env(devices=2), JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{port}",
               JAX_NUM_PROCESSES="2", JAX_PROCESS_ID=str(i)))
      for i in range(2)]
  errors = [p.communicate(timeout=600)[1] for p in procs]
  for p, err in zip(procs, errors):
    assert p.returncode == 0, err[-3000:]
  _assert_same_set(distilled_set.load(str(workdir), 8), four_devices)


def test_lowrank_distillation_learns_s_and_resumes_with_it(trained, tmp_path):
  config = trained[0].copy_and_resolve_references()
  # DSA off: the resumed draws are checked with it in the killed-run test.
  config.distill.update(objective="lowrank", iterations=4, augment=False)
  straight = _copy_experts(trained, tmp_path, "straight")
  distill.run(config, str(straight))
  resumed = _copy_experts(trained, tmp_path, "resumed")
  half = config.copy_and_resolve_references()
  half.distill.iterations = 2
  distill.run(half, str(resumed))
  # More iterations than a finished set had: it goes on from its last checkpoint.
  distill.run(config, str(resumed))
  want, got = (distilled_set.load(str(w), 8, "lowrank") for w in (straight, resumed))
  for key in ("images", "text_emb", "lr_image", "lr_text", "similarity"):
    np.testing.assert_array_equal(got[key], want[key], err_msg=key)
  assert want["similarity"].shape == (8, 8)
  assert np.abs(want["similarity"] - np.eye(8)).max() > 1e-4  # S moved.


def test_loss_rise_compares_the_last_window_with_the_first():
  falling = [1.0, 0.9, 0.8, 0.7, 0.6, 0.5]
  assert distill.loss_rise(falling, 2, 1.2) is None
  noisy_flat = [1.0, 1.1, 0.9, 1.15, 1.05, 1.1]  # Last 2 average 1.075 < 1.2 x 1.05.
  assert distill.loss_rise(noisy_flat, 2, 1.2) is None
  rising = [1.04, 1.0, 1.1, 1.2, 1.3, 1.32]
  assert distill.loss_rise(rising, 2, 1.2) == pytest.approx((1.02, 2, 1.31, 2))
  assert distill.loss_rise(rising[:3], 2, 1.2) is None  # Too early to tell.


def test_a_damaged_set_is_reported_and_written_again(distilled, tmp_path):
  config, _ = distilled
  workdir = _copy_experts(distilled, tmp_path, "damaged", "distill/n8")
  path = workdir / "distill" / "n8" / workdir_lib.DISTILLED
  good = distilled_set.read(str(path))
  path.write_bytes(path.read_bytes()[:100])  # Truncated, as by a full disk.
  with pytest.raises(ValueError, match=r"n8/distilled.npz is damaged \(BadZipFile"):
    distilled_set.read(str(path))
  distill.run(config, str(workdir))  # Rewritten from the last checkpoint.
  for key, value in distilled_set.read(str(path)).items():
    np.testing.assert_array_equal(value, good[key], err_msg=key)


def test_a_failing_distillation_warns_and_an_improving_one_does_not(trained, tmp_path,
                                                                    caplog):
  config, _ = trained
  config = config.copy_and_resolve_references()
  config.distill.update(iterations=8, log_every=2, checkpoint_every=8)
  # The default rates, with the draw noise of the tiny config removed (one
  # expert, start epoch 0, the whole set per step, no augmentation): the loss
  # falls from 0.99 to 0.77.
  quiet = config.copy_and_resolve_references()
  quiet.distill.update(num_experts=1, max_start_epoch=1, augment=False, batch_size=8)
  with caplog.at_level(logging.WARNING):
    distill.run(quiet, str(_copy_experts(trained, tmp_path, "improving")))
  assert "is failing" not in caplog.text
  # Pixels thrown an RMS of 3 per iteration: the set gets worse at once.
  config.distill.update(meta_optimizer="normalized", meta_lr_images=3.0, meta_lr_text=0.3)
  with caplog.at_level(logging.WARNING):
    distill.run(config, str(_copy_experts(trained, tmp_path, "failing")))
  assert re.search(r"Distillation into \S+/n8 is failing: the matching loss rose from "
                   r"[\d.]+ \(mean of the first 2 iterations\) to [\d.]+ \(the last 2\)",
                   caplog.text), caplog.text[-2000:]
  assert sum("is failing" in r.getMessage() for r in caplog.records) == 1  # Once a run.
