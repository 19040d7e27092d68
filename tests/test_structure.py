"""Libraries and evaluation never import a stage; only orchestrators make sets."""
import subprocess
import sys

import pytest

from vldd_jax import evaluate

from conftest import ROOT

STAGE_MODULES = ("vldd_jax.compare", "vldd_jax.distill", "vldd_jax.experts",
                 "vldd_jax.pretrain", "vldd_jax.stages", "vldd_jax.main",
                 "vldd_jax.data.prepare")
LIBRARIES = ("backbone", "coreset", "losses", "matching", "provenance", "retrieval",
             "similarity", "synthetic", "trainer", "trajectories", "models")


@pytest.mark.parametrize("module", ("evaluate",) + LIBRARIES)
def test_importing_a_library_or_evaluate_pulls_in_no_stage(module):
  code = (f"import sys, vldd_jax.{module}; "
          f"print(sorted(m for m in sys.modules if m in {STAGE_MODULES!r}))")
  out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                       text=True, check=True).stdout
  assert out.strip() == "[]", out


def test_evaluate_refuses_a_missing_set_instead_of_distilling_it(trained, tmp_path):
  config, workdir = trained
  other = config.copy_and_resolve_references()
  other.distill.num_pairs = 5  # No set of 5 pairs exists.
  with pytest.raises(FileNotFoundError, match=r"distill/n5/distilled.npz not found: run "
                                              r"--config.stage=distill"):
    evaluate.run(other, workdir)
