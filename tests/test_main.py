"""The command line: config files, overrides and the `data` stage end to end."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from vldd_jax import config_lib

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
