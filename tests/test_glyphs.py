"""benchmarks/glyphs_karpathy.py writes a Karpathy-format set the data stage accepts,
and the whole pipeline runs on it."""
import json
import subprocess
import sys

import numpy as np
from PIL import Image

from vldd_jax.data import karpathy

from conftest import ROOT, subprocess_env


def test_glyphs_set_reads_as_karpathy_data(tmp_path):
  subprocess.run([sys.executable, "-m", "benchmarks.glyphs_karpathy", f"--out={tmp_path}",
                  "--splits=train=6,val=2,test=3"], cwd=ROOT, check=True,
                 capture_output=True)
  entries, skipped = karpathy.read_annotations(str(tmp_path / "dataset_glyphs.json"),
                                               str(tmp_path / "images"))
  assert {s: len(e) for s, e in entries.items()} == {"train": 6, "val": 2, "test": 3}
  assert not skipped
  for entry in entries["train"]:
    pixels = np.asarray(Image.open(entry.path))
    assert pixels.shape == (32, 32, 3) and pixels.std() > 0
    assert len(entry.captions) == 5 and len(set(entry.captions)) == 5
    assert "background" in entry.captions[0]


def test_own_small_data_runs_data_to_evaluate_with_every_row(tmp_path):
  """A Karpathy folder of real PNGs made here, through every stage on the
  `small` config (shrunk further to seconds), to a table with every row."""
  subprocess.run([sys.executable, "-m", "benchmarks.glyphs_karpathy", f"--out={tmp_path}",
                  "--splits=train=40,val=8,test=8"], cwd=ROOT, check=True,
                 capture_output=True)
  workdir = tmp_path / "work"
  flags = [
      "--config=configs/karpathy.py:small", f"--workdir={workdir}",
      f"--config.data.ann_file={tmp_path / 'dataset_glyphs.json'}",
      f"--config.data.image_root={tmp_path / 'images'}",
      "--config.model.vit.width=16", "--config.model.vit.depth=1",
      "--config.model.vit.heads=2", "--config.model.vit.mlp_dim=32",
      "--config.model.embed_dim=16", "--config.experts.num_experts=2",
      "--config.experts.epochs=3", "--config.experts.batch_size=8",
      "--config.experts.eval_batch_size=8", "--config.distill.num_pairs=8",
      "--config.distill.batch_size=4", "--config.distill.syn_steps=2",
      "--config.distill.iterations=4", "--config.distill.max_start_epoch=2",
      "--config.distill.log_every=2", "--config.evaluate.seeds=1",
      "--config.evaluate.epochs=2", "--config.evaluate.batch_size=8"]
  result = subprocess.run([sys.executable, "-m", "vldd_jax.main", *flags], cwd=ROOT,
                          capture_output=True, text=True, timeout=900,
                          env=subprocess_env())
  assert result.returncode == 0, result.stderr[-3000:]
  rows = json.load(open(workdir / "results.json"))["rows"]
  assert [r["method"] for r in rows] == [
      "full train split (experts)", "distilled", "random", "herding", "k_center",
      "forgetting", "easy", "easy_k_center", "chance"]
  assert all(r["tr@1"] is not None and 0 <= r["tr@1"] <= 100 for r in rows)
  assert rows[1]["budget"] == 8
