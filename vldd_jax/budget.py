"""Distillation settings that follow the budget: the trajectory window and the
meta rates of the set and of its learned rates.

An iteration draws a start epoch t from [lo, hi) and unrolls `syn_steps`
student steps from the expert at t toward the expert at t + expert_epochs.
DATM (Guo et al., "Towards Lossless Dataset Distillation via Difficulty-Aligned
Trajectory Matching", ICLR 2024) shows the window must follow the budget: small
sets learn the early, easy part of training, large sets need later epochs and
longer unrolls, or they learn nothing beyond their initialisation; and the
upper bound of the start range can rise during distillation (their
"sequential generation").

The rule here, for N pairs and d = log2(N / budget_reference) doublings above
the reference budget (0 at or below it):

  lo  = min_start_epoch       + round(start_shift_per_doubling * d)
  hi  = max_start_epoch       + round(start_shift_per_doubling * d)
  hi+ = max_start_epoch_final + round(start_shift_per_doubling * d)
        (max_start_epoch_final 0: hi+ = hi, the range stays put)
  syn_steps(N) = round(syn_steps * (N / budget_reference) ** syn_steps_exponent)
        (at least syn_steps)

and hi moves linearly from hi at the first iteration to hi+ at the last.
With `start_shift_per_doubling = syn_steps_exponent = 0` every budget matches
the window as written.

The student rates a set learns fit its short unroll, but an evaluation
student trains on the set for `evaluate.epochs` passes, N / batch_size steps
each: ten times longer at 1000 pairs than at 100. On shapes, learned rates
then hurt large sets (docs/budget.md), so their meta rate falls with the budget:

  meta_lr_rates(N) = meta_lr_rates * (budget_reference / N) ** meta_lr_rates_exponent

(N above the reference; exponent 0: the same at every budget).

The set's own meta rates fall too. With `meta_optimizer="normalized"` a rate
is the RMS step over the whole set, but an iteration's gradient reaches only
the pairs its unroll draws (syn_steps x batch_size), so above that many pairs
each drawn pair moves about sqrt(N / drawn) times further per step. On
shapes at 1000 pairs, 3x the rates cost 14 r_mean and 1/2 gained 2.5
(docs/budget.md), so

  meta_lr_images(N) = meta_lr_images * (budget_reference / N) ** meta_lr_set_exponent

and alike for meta_lr_text; 0.5 undoes the sqrt growth.
"""
import dataclasses
import math

import ml_collections


@dataclasses.dataclass(frozen=True)
class Window:
  """The window one distillation matches (epochs are expert checkpoints)."""
  syn_steps: int
  expert_epochs: int
  min_start: int  # lo: the lowest start epoch.
  max_start: int  # hi: start epochs are < hi at the first iteration...
  max_start_final: int  # ... and < hi+ at the last.

  def start_range(self, iteration: int, iterations: int) -> tuple[int, int]:
    """[lo, hi) of the start epochs drawn at `iteration` of `iterations`."""
    frac = iteration / max(iterations - 1, 1)
    hi = self.max_start + int(math.floor((self.max_start_final - self.max_start) * frac))
    return self.min_start, hi

  @property
  def last_epoch(self) -> int:
    """The latest expert epoch the window can reach (a target)."""
    return max(self.max_start, self.max_start_final) - 1 + self.expert_epochs


def doublings(num_pairs: int, reference: int) -> float:
  """log2(num_pairs / reference), 0 at or below the reference budget."""
  return max(0.0, math.log2(num_pairs / reference))


def _falling(rate: float, exponent: float, cfg: ml_collections.ConfigDict,
             num_pairs: int) -> float:
  return rate * min(1.0, cfg.budget_reference / num_pairs) ** exponent


def meta_lr_rates(cfg: ml_collections.ConfigDict, num_pairs: int) -> float:
  """The meta rate of the learned student rates at `num_pairs` (module docstring)."""
  return _falling(cfg.meta_lr_rates, cfg.meta_lr_rates_exponent, cfg, num_pairs)


def meta_lr_set(cfg: ml_collections.ConfigDict, num_pairs: int) -> tuple[float, float]:
  """The meta rates of the pixels and the text embeddings at `num_pairs`."""
  return tuple(_falling(rate, cfg.meta_lr_set_exponent, cfg, num_pairs)
               for rate in (cfg.meta_lr_images, cfg.meta_lr_text))


def window(cfg: ml_collections.ConfigDict, num_pairs: int) -> Window:
  """The window of a `num_pairs` set under the rule of the module docstring."""
  shift = round(cfg.start_shift_per_doubling * doublings(num_pairs, cfg.budget_reference))
  final = cfg.max_start_epoch_final or cfg.max_start_epoch
  steps = cfg.syn_steps * max(1.0, num_pairs / cfg.budget_reference) ** cfg.syn_steps_exponent
  return Window(syn_steps=max(cfg.syn_steps, round(steps)),
                expert_epochs=cfg.expert_epochs,
                min_start=cfg.min_start_epoch + shift,
                max_start=cfg.max_start_epoch + shift,
                max_start_final=final + shift)


def check(window: Window, expert_epochs_saved: int, num_pairs: int) -> None:
  """Raises ValueError if `window` is empty or reaches past the experts' epochs."""
  where = (f"the trajectory window at {num_pairs} pairs (distill.min_start_epoch, "
           "max_start_epoch, max_start_epoch_final, start_shift_per_doubling)")
  if not window.min_start < min(window.max_start, window.max_start_final):
    raise ValueError(f"{where} draws start epochs from [{window.min_start}, "
                     f"{min(window.max_start, window.max_start_final)}): an empty range.")
  if window.last_epoch > expert_epochs_saved:
    raise ValueError(f"{where} matches up to expert epoch {window.last_epoch} (start "
                     f"< {max(window.max_start, window.max_start_final)} plus "
                     f"distill.expert_epochs={window.expert_epochs}), but the experts "
                     f"saved {expert_epochs_saved} epochs: train longer experts "
                     "(experts.epochs) or move the window.")
