"""The budget rule (budget.py): window ranges per budget, growth, checks, rates."""
import pytest

from vldd_jax import budget
from vldd_jax import config_lib


def _distill(**fields):
  cfg = config_lib.distill_config()
  cfg.update({"syn_steps": 8, "expert_epochs": 1, "min_start_epoch": 0,
              "max_start_epoch": 3, "budget_reference": 100, **fields})
  return cfg


def test_without_scaling_every_budget_matches_the_window_as_written():
  for n in (10, 100, 1000):
    w = budget.window(_distill(), n)
    assert (w.syn_steps, w.min_start, w.max_start, w.max_start_final) == (8, 0, 3, 3)
    assert w.start_range(0, 150) == w.start_range(149, 150) == (0, 3)
    assert w.last_epoch == 3


def test_each_doubling_shifts_the_range_and_lengthens_the_unroll():
  cfg = _distill(start_shift_per_doubling=1.0, syn_steps_exponent=0.5,
                 max_start_epoch_final=5)
  # d = log2(N / 100): 0, 1, 2.32, 3.32 -> shifts 0, 1, 2, 3; steps 8 * sqrt(N / 100).
  want = {100: (8, 0, 3, 5), 200: (11, 1, 4, 6), 500: (18, 2, 5, 7), 1000: (25, 3, 6, 8)}
  for n, expected in want.items():
    w = budget.window(cfg, n)
    assert (w.syn_steps, w.min_start, w.max_start, w.max_start_final) == expected, n
  assert budget.window(cfg, 50).syn_steps == 8  # Never fewer than configured.
  assert budget.window(cfg, 1000).last_epoch == 8


def test_the_top_of_the_start_range_moves_linearly_to_its_final_value():
  w = budget.window(_distill(max_start_epoch_final=7), 100)
  tops = [w.start_range(it, 9)[1] for it in range(9)]
  assert tops == [3, 3, 4, 4, 5, 5, 6, 6, 7]
  assert all(w.start_range(it, 9)[0] == 0 for it in range(9))
  shrinking = budget.window(_distill(max_start_epoch=6, max_start_epoch_final=2), 100)
  assert [shrinking.start_range(it, 5)[1] for it in range(5)] == [6, 5, 4, 3, 2]


def test_a_window_past_the_experts_or_an_empty_one_is_refused():
  cfg = _distill(start_shift_per_doubling=2.0)
  budget.check(budget.window(cfg, 100), 10, 100)
  with pytest.raises(ValueError, match=r"at 1000 pairs .* up to expert epoch 10 .* the "
                                       r"experts saved 8 epochs"):
    budget.check(budget.window(cfg, 1000), 8, 1000)
  with pytest.raises(ValueError, match=r"draws start epochs from \[3, 3\): an empty range"):
    budget.check(budget.window(_distill(min_start_epoch=3), 100), 10, 100)


def test_the_rates_meta_rate_falls_with_the_budget_above_the_reference():
  cfg = _distill(meta_lr_rates=1e-2, meta_lr_rates_exponent=1.0)
  rates = {n: budget.meta_lr_rates(cfg, n) for n in (50, 100, 200, 500, 1000)}
  assert rates == pytest.approx({50: 1e-2, 100: 1e-2, 200: 5e-3, 500: 2e-3, 1000: 1e-3})
  assert budget.meta_lr_rates(_distill(meta_lr_rates=1e-2), 1000) == 1e-2


def test_the_sets_meta_rates_fall_with_the_square_root_of_the_budget():
  cfg = _distill(meta_lr_images=2e-3, meta_lr_text=3e-3, meta_lr_set_exponent=0.5)
  assert budget.meta_lr_set(cfg, 50) == budget.meta_lr_set(cfg, 100) == (2e-3, 3e-3)
  assert budget.meta_lr_set(cfg, 400) == pytest.approx((1e-3, 1.5e-3))
  assert budget.meta_lr_set(cfg, 1000) == pytest.approx((2e-3 / 10 ** 0.5, 3e-3 / 10 ** 0.5))
  assert budget.meta_lr_set(_distill(meta_lr_images=2e-3), 1000)[0] == 2e-3
