"""`distilled_set.SetSpec`: which set a results row means, and where it lives."""
import os
import types

import numpy as np
import pytest

from vldd_jax import config_lib
from vldd_jax import distilled_set
from vldd_jax import lowrank


def _split(side=32, text_dim=384):
  return types.SimpleNamespace(images=np.zeros((4, side, side, 3), np.uint8),
                               text_emb=np.zeros((4, 5, text_dim), np.float32))


def test_a_row_names_its_set_at_equal_storage():
  config = config_lib.load_config("configs/shapes.py")
  per_pair = 32 * 32 * 3 + 384
  for budget in (2, 100, 500, 1000):
    plain = distilled_set.SetSpec.of_row(config, "distilled", budget, _split())
    assert plain == distilled_set.SetSpec("plain", budget, budget)
    with_s = distilled_set.SetSpec.of_row(config, "distilled_lowrank", budget, _split())
    # The most pairs whose storage, with S's, is at most the budget's.
    floats = lambda n: n * per_pair + lowrank.num_floats(n, config.distill.lowrank_rank)
    assert floats(with_s.num_pairs) <= budget * per_pair < floats(with_s.num_pairs + 1)
  assert distilled_set.SetSpec.of_row(config, "distilled_lowrank", 100, _split()).num_pairs == 99
  assert distilled_set.SetSpec.of_row(config, "k_center", 100, _split()) is None
  with pytest.raises(ValueError, match="budget of 1 pairs leaves no room"):
    distilled_set.SetSpec.of_row(config, "distilled_lowrank", 1, _split())

  spec = distilled_set.SetSpec("lowrank", 100, 99)
  assert distilled_set.set_dir("w", 99, "lowrank") == os.path.join("w", "distill", "n99_lowrank")
  assert distilled_set.set_dir("w", 8) == os.path.join("w", "distill", "n8")
  made = spec.config(config)
  assert (made.distill.objective, made.distill.num_pairs) == ("lowrank", 99)
  assert config.distill.objective == "plain"  # A copy.
