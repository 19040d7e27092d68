"""benchmarks/glyphs_karpathy.py writes a Karpathy-format set the data stage accepts."""
import subprocess
import sys

import numpy as np
from PIL import Image

from vldd_jax.data import karpathy

from conftest import ROOT


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
