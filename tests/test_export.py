"""A distilled set as a TFDS folder (`python -m vldd_jax.export`)."""
import json
import os
import tempfile

import numpy as np
import tensorflow_datasets as tfds

from vldd_jax import distilled_set
from vldd_jax import export
from vldd_jax import workdir_lib


def test_a_set_exports_as_a_tfds_folder_that_reads_back_equal(distilled, tmp_path,
                                                              monkeypatch):
  _, workdir = distilled
  path = os.path.join(distilled_set.set_dir(workdir, 8), workdir_lib.DISTILLED)
  # TFDS leaves an empty mkdtemp folder behind for each unprepared builder.
  system_tmp = tmp_path / "tmp"
  system_tmp.mkdir()
  monkeypatch.setattr(tempfile, "tempdir", os.fspath(system_tmp))
  folder = export.export(path, str(tmp_path / "tfds"))
  assert list(system_tmp.iterdir()) == []
  source = tfds.builder_from_directory(folder).as_data_source()["train"]
  raw = np.load(path)
  assert len(source) == 8
  got = source.__getitems__(range(8))
  for key, field in (("images", "image"), ("images_uint8", "image_uint8"),
                     ("text_emb", "text_emb")):
    np.testing.assert_array_equal(np.stack([g[field] for g in got]), raw[key], err_msg=key)
  sidecar = json.load(open(os.path.join(folder, export.SIDECAR)))
  assert sidecar["lr_image"] == float(raw["lr_image"])
  assert sidecar["provenance"]["objective"] == "plain"
