"""The command line: config files, overrides and the `data` stage end to end."""
import errno
import json
import os
import re
import stat
import subprocess
import sys

import numpy as np
import pytest

from vldd_jax import config_lib
from vldd_jax import jsonfile
from vldd_jax import main
from vldd_jax import metrics_log
from vldd_jax import stages
from vldd_jax import text
from vldd_jax import viz
from vldd_jax import workdir_lib
from vldd_jax.data import input_pipeline

from conftest import tiny_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_parse_arg_types_and_errors():
  arg = config_lib.parse_arg("quick,budget=200", quick=False, budget=100, name="x")
  assert arg.quick is True and arg.budget == 200 and arg.name == "x"
  assert config_lib.parse_arg("quick=false", quick=True).quick is False
  with pytest.raises(ValueError, match="Unknown config argument 'nope'"):
    config_lib.parse_arg("nope", quick=False)
  with pytest.raises(ValueError, match="expected a boolean"):
    config_lib.parse_arg("quick=maybe", quick=False)
  with pytest.raises(ValueError, match="needs a value"):
    config_lib.parse_arg("budget", budget=1)


def _main(workdir, *flags):
  return subprocess.run(
      [sys.executable, "-m", "vldd_jax.main", f"--workdir={workdir}", *flags],
      cwd=ROOT, capture_output=True, text=True, timeout=600)


def test_data_stage_from_the_command_line(tmp_path):
  flags = ["--config=configs/shapes.py:quick", "--config.stage=data",
           "--config.data.num_train=12", "--config.data.num_val=4",
           "--config.data.num_test=4", "--config.data.num_pretrain=4"]
  result = _main(tmp_path, *flags)
  assert result.returncode == 0, result.stderr[-3000:]
  saved = json.load(open(tmp_path / "config_data.json"))
  assert saved["data"]["num_train"] == 12  # The field override won.
  assert saved["data"]["num_val"] == 4

  cache = tmp_path / "tfds" / "caption_embeddings"
  arrays = {f: np.load(cache / f) for f in os.listdir(cache) if f.endswith(".npy")}
  sizes = sorted(len(a) for a in arrays.values())
  assert sizes == [4 * 5, 4 * 5, 12 * 5]  # Five captions per image, per split.
  for a in arrays.values():
    np.testing.assert_allclose(np.linalg.norm(a, axis=-1), 1.0, rtol=1e-5)

  rerun = _main(tmp_path, *flags)  # Everything is on disk: nothing re-encoded.
  assert rerun.returncode == 0, rerun.stderr[-3000:]
  assert "Encoded" not in rerun.stderr
  assert rerun.stderr.count("Loaded") >= 3, rerun.stderr[-3000:]


def test_unknown_stage_is_a_clear_error(tmp_path):
  result = _main(tmp_path, "--config=configs/shapes.py", "--config.stage=distil")
  assert result.returncode != 0
  assert "config.stage='distil'" in result.stderr
  assert "'pipeline'" in result.stderr


@pytest.mark.parametrize("field,value", [
    ("distill.syn_steps", 0), ("distill.iterations", 0), ("distill.num_pairs", -1),
    ("distill.log_every", 0), ("distill.checkpoint_every", 0), ("distill.meta_batch", 0),
    ("distill.meta_lr_images", -1.0), ("experts.lr", 0.0), ("experts.lr", -0.1),
    ("evaluate.lr", -0.1), ("evaluate.seeds", 0), ("evaluate.epochs", 0),
    ("evaluate.batch_size", 0), ("experts.batch_size", 0), ("distill.momentum", 1.0),
    ("distill.expert_epochs", 0), ("distill.min_start_epoch", -1),
    ("distill.syn_steps_exponent", -0.5), ("compare.budgets", (8, 0)), ("compare.budgets", (-1,))])
def test_nonsense_settings_are_refused_before_anything_is_written(tmp_path, field, value):
  config = config_lib.load_config(os.path.join(ROOT, "configs/shapes.py:tiny"))
  section, name = field.split(".")
  config[section][name] = value
  with pytest.raises(ValueError,
                     match=rf"Invalid config: {field}={re.escape(repr(value))}: expected"):
    stages.run(config, str(tmp_path / "work"))
  assert not (tmp_path / "work").exists()


@pytest.mark.parametrize("field,value,message", [
    ("evaluate.methods", ("distilled", "randon"), r"evaluate.methods=\('distilled', "
     r"'randon'\): expected a non-empty"),
    ("distill.objective", "lowrnak", r"distill.objective='lowrnak': expected one of"),
    ("distill.init", "kcenter", r"distill.init='kcenter': expected one of \('real', "
     r"'real_mean', 'noise', 'random', 'herding', 'k_center', 'forgetting', 'easy', "
     r"'easy_k_center'\)"),
    ("evaluate.student", "vit", r"evaluate.student='vit': expected one of"),
    ("distill.meta_optimizer", "adamw", r"distill.meta_optimizer='adamw': expected one "
     r"of \('sgd', 'normalized', 'adam'\)"),
    ("evaluate.split", "train", r"evaluate.split='train': expected one of \('test', "
     r"'val'\)"),
    ("evaluate.report", "best", r"evaluate.report='best'; expected one of"),
    ("model.tower", "resnet", r"model.tower='resnet'; expected one of \('vit', "
     r"'convnet'\)"),
    ("model.text_head", "mlp", r"model.text_head='mlp'; expected one of"),
    ("model.vit.pool", "max", r"model.vit.pool='max'; expected one of")])
def test_an_unknown_name_is_refused_before_anything_is_written(tmp_path, field, value,
                                                              message):
  config = config_lib.load_config(os.path.join(ROOT, "configs/shapes.py:tiny"))
  section, _, name = field.rpartition(".")
  config_lib.get_field(config, section)[name] = value
  with pytest.raises(ValueError, match=message):
    stages.run(config, str(tmp_path / "work"))
  assert not (tmp_path / "work").exists()


def test_all_meta_rates_zero_is_refused(tmp_path):
  config = config_lib.load_config(os.path.join(ROOT, "configs/shapes.py:tiny"))
  config.distill.update(meta_lr_images=0.0, meta_lr_text=0.0, meta_lr_rates=0.0)
  with pytest.raises(ValueError, match="meta_lr_images, meta_lr_text and meta_lr_rates are all 0"):
    stages.run(config, str(tmp_path))


def test_unknown_config_field_names_the_field_and_its_siblings(tmp_path):
  result = _main(tmp_path, "--config=configs/shapes.py:tiny", "--config.distill.foo=1")
  assert result.returncode != 0
  assert ("--config.distill.foo: distill has no field 'foo' (its fields: augment, "
          in result.stderr), result.stderr[-2000:]
  result = _main(tmp_path, "--config=configs/shapes.py:tiny", "--config.nope.x=1")
  assert "--config.nope.x: the config has no field 'nope'" in result.stderr


def test_a_renamed_field_stops_with_its_new_name():
  # As a flag (checked here in-process; the child path is the test above)...
  assert main.unknown_field([f"--config={ROOT}/configs/shapes.py:tiny",
                             "--config.distill.similarity_rank=4"]) == (
      "--config.distill.similarity_rank is now --config.distill.lowrank_rank.")
  # ... and set by a config file, where ml_collections would just add the field.
  config = config_lib.load_config(os.path.join(ROOT, "configs/shapes.py:tiny"))
  config.distill.meta_lr_similarity = 0.1
  with pytest.raises(ValueError, match=r"distill.meta_lr_similarity is now "
                                       r"distill.meta_lr_lowrank"):
    config_lib.validate(config)


def test_a_second_run_on_a_workdir_in_use_is_refused_with_the_holders_pid(tmp_path):
  config = config_lib.load_config(os.path.join(ROOT, "configs/shapes.py:tiny"))
  config.stage = "nothing-to-do"
  with workdir_lib.lock(str(tmp_path)):
    result = _main(tmp_path, "--config=configs/shapes.py:tiny", "--config.stage=data")
    assert result.returncode != 0
    assert f"{tmp_path} is in use by PID {os.getpid()} on " in result.stderr, (
        result.stderr[-2000:])
  # Released: the lock no longer blocks (a wrong stage fails on its own).
  with pytest.raises(ValueError, match="config.stage='nothing-to-do'"):
    stages.run(config, str(tmp_path))


@pytest.mark.parametrize("name", [workdir_lib.LOCK, "config_data.json"])
def test_a_link_planted_in_the_workdir_is_refused_and_its_target_kept(tmp_path, monkeypatch,
                                                                     name):
  """A `.lock` or `config_<stage>.json` linked to another file must not make a run
  overwrite that file (anyone who can write to a shared workdir could plant one)."""
  outside = tmp_path / "someone_elses_file"
  outside.write_text("precious")
  work = tmp_path / "work"
  work.mkdir()
  (work / name).symlink_to(outside)
  monkeypatch.setitem(stages.STAGES, "data", lambda config, workdir: None)
  config = config_lib.load_config(os.path.join(ROOT, "configs/shapes.py:tiny"))
  config.stage = "data"
  with pytest.raises(OSError, match=re.escape(f"{work / name} is a symbolic link")):
    stages.run(config, str(work))
  assert outside.read_text() == "precious"
  assert (work / name).is_symlink()


def test_an_empty_workdir_is_refused_naming_the_flag(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  config = config_lib.load_config(os.path.join(ROOT, "configs/shapes.py:tiny"))
  with pytest.raises(ValueError, match="--workdir is empty"):
    stages.run(config, "")
  assert not os.listdir(tmp_path)


@pytest.mark.parametrize("name,write", [
    ("metrics.jsonl", lambda work: metrics_log.append(str(work), {"loss": 1.0})),
    ("compare.md", lambda work: jsonfile.write_text(str(work / "compare.md"), "| table |")),
    ("matching_loss.png", lambda work: viz.loss_curve([0, 1], [1.0, 0.5],
                                                      str(work / "matching_loss.png"))),
    ("distilled.npz", lambda work: jsonfile.write_file(
        str(work / "distilled.npz"), lambda f: np.savez(f, x=np.zeros(2))))])
def test_every_kind_of_workdir_file_refuses_a_planted_link(tmp_path, name, write):
  outside = tmp_path / "someone_elses_file"
  outside.write_text("precious")
  work = tmp_path / "work"
  work.mkdir()
  (work / name).symlink_to(outside)
  with pytest.raises(OSError, match=re.escape(f"{work / name} is a symbolic link")):
    write(work)
  assert outside.read_text() == "precious"
  assert sorted(os.listdir(work)) == [name]  # No temporary file left behind.


def test_workdir_files_get_the_usual_mode_and_a_failed_write_leaves_nothing(tmp_path):
  old = os.umask(0o022)
  try:
    jsonfile.write_text(str(tmp_path / "a.md"), "x")
  finally:
    os.umask(old)
  assert stat.S_IMODE(os.stat(tmp_path / "a.md").st_mode) == 0o644  # Not mkstemp's 0600.

  def fail(f):
    f.write(b"half")
    raise OSError(errno.ENOSPC, "No space left on device")

  with pytest.raises(OSError, match="No space left"):
    jsonfile.write_file(str(tmp_path / "b.npz"), fail)
  assert sorted(os.listdir(tmp_path)) == ["a.md"]


def test_the_caption_cache_is_readable_by_others_sharing_the_data_dir(data_dir):
  cache = os.path.join(data_dir, "caption_embeddings")
  modes = {stat.S_IMODE(os.stat(os.path.join(cache, f)).st_mode) for f in os.listdir(cache)}
  umask = os.umask(0)
  os.umask(umask)
  assert modes == {0o666 & ~umask}


def test_a_stage_finding_its_captions_cached_loads_no_text_model(data_dir, monkeypatch):
  config = tiny_config(data_dir)  # Prepared: every split's captions are cached.
  want = input_pipeline.load_split(config, "", "val").text_emb
  monkeypatch.setattr(text.TextEncoder, "from_pretrained",
                      lambda *a, **k: pytest.fail("loaded the text model"))
  got = input_pipeline.load_split(config, "", "val").text_emb
  rows = np.arange(len(want))
  np.testing.assert_array_equal(got[rows], want[rows])


def test_a_read_only_workdir_is_named_with_what_to_do(tmp_path, monkeypatch):
  def read_only(path, flags):  # What os.open says on a read-only mount (even as root).
    raise OSError(errno.EROFS, "Read-only file system", path)

  monkeypatch.setattr(jsonfile, "open_nofollow", read_only)
  with pytest.raises(OSError, match=rf"{tmp_path} is not writable \(Read-only file "
                                    r"system\).*copy it to a writable place"):
    with workdir_lib.lock(str(tmp_path)):
      pass
