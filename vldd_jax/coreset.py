"""Coreset baselines: B real training pairs (an image with one of its captions).

The paper compares its distilled sets with four classification coresets
adapted to image-text pairs (Wu et al., "Vision-Language Dataset Distillation",
TMLR 2024, Sec. 5 and Table 1); how each is adapted here:

- `random`: B distinct images, each with a random caption.
- `herding` (Welling, ICML 2009): greedily add the pair that keeps the mean of
  the selected joint features closest to the mean over all pairs.
- `k_center` (Sener & Savarese, ICLR 2018): greedy farthest-point selection; the
  first centre is drawn by the seed, each next one is the pair farthest from
  its nearest centre.
- `forgetting` (Toneva et al., ICLR 2019): the images with the most forgetting
  events (found their caption first in the batch at one presentation, missed
  it at the next) summed over the experts' training. Toneva et al. count an
  image never got right as forgotten infinitely often; with several experts it
  counts `epochs` events per expert that never got it right (more than any
  learned image can have), so images no expert learned come first. Ties are
  broken by the seed; the caption is drawn by the seed.
- `easy` (DATM, Guo et al., ICLR 2024, initialise from samples the experts
  predict correctly): images ranked by how many experts found their caption
  first in the batch during their last epoch, so only pairs every expert got
  right come first; ties and the caption are drawn by the seed.
- `easy_k_center`: k-center's coverage with DATM's easy pairs. Every pair joins
  the cluster of its nearest k-center centre; each cluster gives its pair that
  the most experts found, nearest its centre among those. `easy` alone takes
  the most learnable pairs, which on data where they are alike (glyphs) is a
  narrow start (docs/budget.md).

Herding and k-center see every (image, caption) pair as a candidate, with the
joint feature [image embedding, caption embedding] / sqrt(2) (unit norm) from
the first expert's final parameters, and take at most one pair per image.
Every selector is a deterministic function of its inputs and the seed.
"""
from collections.abc import Callable

import ml_collections
import numpy as np
import tqdm

from vldd_jax import parallel
from vldd_jax import trainer
from vldd_jax import trajectories
from vldd_jax.data import input_pipeline
from vldd_jax.models import build_model, make_apply_fn


def random_selection(num_images: int, num_captions: int, budget: int,
                     seed: int) -> tuple[np.ndarray, np.ndarray]:
  """(rows, captions): `budget` distinct random images, one random caption each."""
  rng = np.random.default_rng([seed, budget, 1])
  rows = np.sort(rng.choice(num_images, budget, replace=False))
  return rows, rng.integers(0, num_captions, budget)


def herding(features: np.ndarray, budget: int,
            start: tuple[np.ndarray, np.ndarray] | None = None
            ) -> tuple[np.ndarray, np.ndarray]:
  """Greedy herding on features [N, C, F] of N images with C captions each.

  Returns (rows, captions) in selection order: step k adds the pair whose
  feature brings the running mean of the k selected ones closest to the mean
  of all N * C pairs, at most one pair per image. Herding has no seed, so a
  smaller budget's selection is this one's beginning: given it as `start`,
  the selection goes on from there (the same numbers as from scratch).
  """
  n, c, _ = features.shape
  flat = features.reshape(n * c, -1).astype(np.float64)
  target = flat.mean(axis=0)
  sq_norms = np.einsum("ij,ij->i", flat, flat)
  available = np.ones(n * c, bool)
  total = np.zeros_like(target)
  chosen = []

  def take(best: int) -> None:
    chosen.append(best)
    total[:] += flat[best]
    available[(best // c) * c:(best // c + 1) * c] = False

  for best in [] if start is None else start[0] * c + start[1]:
    take(int(best))
  for k in range(len(chosen), budget):
    # ||(total + x) / (k+1) - target||^2, up to terms that do not depend on x.
    score = sq_norms + 2.0 * (flat @ (total - (k + 1) * target))
    take(int(np.argmin(np.where(available, score, np.inf))))
  chosen = np.asarray(chosen[:budget])
  return chosen // c, chosen % c


def k_center(features: np.ndarray, budget: int,
             seed: int) -> tuple[np.ndarray, np.ndarray]:
  """Greedy k-center on features [N, C, F]; (rows, captions) in selection order.

  The first centre is a seeded random pair; then, repeatedly, the pair
  farthest (Euclidean) from its nearest centre, skipping images already taken.
  """
  n, c, _ = features.shape
  flat = features.reshape(n * c, -1).astype(np.float64)
  first = int(np.random.default_rng([seed, budget, 2]).integers(n * c))
  chosen = [first]
  nearest = _distances(flat, flat[first], np.empty(n * c))
  distance = np.empty(n * c)
  available = np.ones(n * c, bool)
  available[(first // c) * c:(first // c + 1) * c] = False
  for _ in range(budget - 1):
    best = int(np.argmax(np.where(available, nearest, -np.inf)))
    chosen.append(best)
    np.minimum(nearest, _distances(flat, flat[best], distance), out=nearest)
    available[(best // c) * c:(best // c + 1) * c] = False
  chosen = np.asarray(chosen)
  return chosen // c, chosen % c


def _distances(flat: np.ndarray, centre: np.ndarray, out: np.ndarray,
               chunk: int = 4096) -> np.ndarray:
  """Euclidean distances of the rows of `flat` to `centre`, into `out`.

  The same numbers as `np.linalg.norm(flat - centre, axis=1)` (row by row, the
  same operations), in chunks of rows that stay in cache: 7.5-7.9 ms against
  24-27 ms on table1's 50,000 pairs of 128 floats (docs/benchmarks.md), where
  greedy k-center spends its time.
  """
  buffer = np.empty((min(chunk, len(flat)), flat.shape[1]))
  for start in range(0, len(flat), chunk):
    rows = flat[start:start + chunk]
    diff = buffer[:len(rows)]
    np.subtract(rows, centre, out=diff)
    np.multiply(diff, diff, out=diff)
    np.sqrt(np.add.reduce(diff, axis=1), out=out[start:start + len(rows)])
  return out


def forgetting_events(correct: np.ndarray) -> np.ndarray:
  """Forgetting events per pair from a record [epochs, N] of 1 / 0 / -1 (unseen).

  An event is a presentation where the pair was found (1) followed by its next
  presentation where it was missed (0); unseen epochs are skipped. Pairs never
  found get `epochs`, more than a found pair can reach (epochs // 2): Toneva et
  al.'s infinity, kept finite so that counts add up over experts.
  """
  events = np.zeros(correct.shape[1], np.int64)
  last = np.full(correct.shape[1], -1, np.int8)
  for epoch in correct:
    seen = epoch >= 0
    events += seen & (last == 1) & (epoch == 0)
    last = np.where(seen, epoch, last)
  ever_found = (correct == 1).any(axis=0)
  return np.where(ever_found, events, len(correct))


def forgetting(events: np.ndarray, num_captions: int, budget: int,
               seed: int) -> tuple[np.ndarray, np.ndarray]:
  """(rows, captions): the `budget` images with the most events, ties by seed."""
  rng = np.random.default_rng([seed, budget, 3])
  shuffled = rng.permutation(len(events))
  rows = shuffled[np.argsort(-events[shuffled], kind="stable")[:budget]]
  return rows, rng.integers(0, num_captions, budget)


def easy(correct: np.ndarray, num_captions: int, budget: int,
         seed: int) -> tuple[np.ndarray, np.ndarray]:
  """(rows, captions): the `budget` images found by the most experts, ties by seed.

  `correct` is [experts, N]: 1 / 0 / -1 (unseen) for each expert at one epoch.
  """
  rng = np.random.default_rng([seed, budget, 4])
  found = (correct == 1).sum(axis=0)
  shuffled = rng.permutation(len(found))
  rows = shuffled[np.argsort(-found[shuffled], kind="stable")[:budget]]
  return rows, rng.integers(0, num_captions, budget)


def easy_k_center(features: np.ndarray, correct: np.ndarray,
                  centres: tuple[np.ndarray, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
  """(rows, captions): the easiest pair of each cluster of `k_center`'s selection.

  `features` is [N, C, F] (unit rows), `correct` [experts, N] as for `easy`,
  `centres` the (rows, captions) `k_center` gave: one pair per cluster.
  Clusters are taken in k-center's order; a cluster whose pairs all belong to
  images already taken gives the untaken pair nearest its centre.
  """
  n, c, _ = features.shape
  flat = features.reshape(n * c, -1).astype(np.float32)
  budget = len(centres[0])
  centres = flat[centres[0] * c + centres[1]]
  # Nearest centre by the largest dot product (unit features), in chunks of
  # pairs so that a [pairs, budget] matrix never has to fit at once.
  cluster = np.empty(n * c, np.int64)
  closeness = np.empty(n * c, np.float32)
  for start in range(0, n * c, 4096):
    dots = flat[start:start + 4096] @ centres.T
    cluster[start:start + 4096] = dots.argmax(axis=1)
    closeness[start:start + 4096] = dots.max(axis=1)
  found = np.repeat((correct == 1).sum(axis=0), c)
  # Within a cluster: the most experts first, then nearest the centre.
  order = np.lexsort((-closeness, -found, cluster))
  bounds = np.searchsorted(cluster[order], np.arange(budget + 1))
  taken = np.zeros(n, bool)
  chosen = []
  for k in range(budget):
    members = order[bounds[k]:bounds[k + 1]]
    free = members[~taken[members // c]]
    if len(free) == 0:  # Rare: the nearest untaken pair to this centre.
      dots = np.where(np.repeat(taken, c), -np.inf, flat @ centres[k])
      free = np.asarray([int(np.argmax(dots))])
    chosen.append(int(free[0]))
    taken[free[0] // c] = True
  chosen = np.asarray(chosen)
  return chosen // c, chosen % c


def expert_features(config: ml_collections.ConfigDict, workdir: str,
                    train: input_pipeline.Split) -> np.ndarray:
  """Joint unit features [N, C, 2 * embed_dim] of every training pair (first expert)."""
  expert = trajectories.finished_experts(workdir)[0]
  last = trajectories.read_manifest(workdir, expert)["epochs"]
  params = trajectories.load_params(workdir, expert, last)
  frozen = trajectories.load_frozen(workdir, expert)
  mesh = parallel.make_mesh()
  params, frozen = parallel.put_replicated((params, frozen), mesh)
  embedder = trainer.Embedder(make_apply_fn(build_model(config.model)), mesh,
                              config.experts.eval_batch_size)
  n, c, d = train.text_emb.shape
  img = embedder.images(params, frozen, train.images)
  chunk = config.experts.eval_batch_size  # Captions of this many images at a time.
  txt = np.concatenate([
      embedder.texts(params, frozen, train.text_emb[start:start + chunk].reshape(-1, d))
      for start in range(0, n, chunk)]).reshape(n, c, -1)
  img = np.broadcast_to(img[:, None], txt.shape)
  return np.concatenate([img, txt], axis=-1) / np.sqrt(2.0)


def total_forgetting_events(workdir: str) -> np.ndarray:
  """Forgetting events per training image, summed over every finished expert."""
  experts = trajectories.finished_experts(workdir)
  return sum(forgetting_events(trajectories.load_correct(workdir, e))
             for e in tqdm.tqdm(experts, desc="forgetting events", leave=False))


class Selector:
  """Selects coresets of any budget from one train split; features and
  forgetting events load once, when a method first needs them."""

  def __init__(self, config: ml_collections.ConfigDict, workdir: str,
               train: input_pipeline.Split):
    self.config, self.workdir, self.train = config, workdir, train
    self._features: np.ndarray | None = None
    self._events: np.ndarray | None = None
    self._correct: np.ndarray | None = None
    self._k_centers: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    self._herding: tuple[np.ndarray, np.ndarray] | None = None  # The longest yet.

  def features(self) -> np.ndarray:
    """The first finished expert's image-text features of every training pair."""
    if self._features is None:
      self._features = expert_features(self.config, self.workdir, self.train)
    return self._features

  def k_center(self, budget: int) -> tuple[np.ndarray, np.ndarray]:
    """k-center's (rows, captions) at `budget`, selected once: its row,
    easy_k_center's and a distillation starting from either share it."""
    if budget not in self._k_centers:
      self._k_centers[budget] = k_center(self.features(), budget, self.config.seed)
    return self._k_centers[budget]

  def herding(self, budget: int) -> tuple[np.ndarray, np.ndarray]:
    """Herding's (rows, captions) at `budget`: the beginning of a longer
    selection made before, or that one carried on."""
    longest = self._herding
    if longest is None or len(longest[0]) < budget:
      self._herding = longest = herding(self.features(), budget, start=longest)
    return longest[0][:budget], longest[1][:budget]

  def events(self) -> np.ndarray:
    """Forgetting events per training image over every finished expert."""
    if self._events is None:
      self._events = total_forgetting_events(self.workdir)
    return self._events

  def correct_at_last_epoch(self) -> np.ndarray:
    """[experts, N]: whether each expert found each pair during its last epoch."""
    if self._correct is None:
      self._correct = np.stack([
          trajectories.load_correct(self.workdir, e, trajectories.saved_epochs(
              self.workdir, e)[-1:])[0]
          for e in trajectories.finished_experts(self.workdir)])
    return self._correct

  def rows(self, method: str, budget: int) -> tuple[np.ndarray, np.ndarray]:
    """(image rows, caption indices) of a coreset."""
    n = self.train.text_emb.shape[0]
    if not 0 < budget <= n:
      raise ValueError(f"Coreset budget {budget}: expected 1..{n} (the train split).")
    if method not in SELECTORS:
      raise ValueError(f"Coreset method {method!r}: expected one of {tuple(SELECTORS)}.")
    return SELECTORS[method](self, budget)

  def select(self, method: str, budget: int) -> tuple[np.ndarray, np.ndarray]:
    """(images uint8 [B, H, W, 3], text embeddings [B, D]) of a coreset."""
    rows, captions = self.rows(method, budget)
    return self.train.images[rows], self.train.text_emb[rows, captions]


# name -> (image rows, caption indices) of a coreset of `budget` pairs: a new
# coreset is one function and one entry here (and a row of `evaluate.methods`).
SELECTORS: dict[str, Callable[[Selector, int], tuple[np.ndarray, np.ndarray]]] = {
    "random": lambda s, budget: random_selection(*s.train.text_emb.shape[:2], budget,
                                                 s.config.seed),
    "herding": lambda s, budget: s.herding(budget),
    "k_center": lambda s, budget: s.k_center(budget),
    "forgetting": lambda s, budget: forgetting(s.events(), s.train.text_emb.shape[1],
                                               budget, s.config.seed),
    "easy": lambda s, budget: easy(s.correct_at_last_epoch(), s.train.text_emb.shape[1],
                                   budget, s.config.seed),
    "easy_k_center": lambda s, budget: easy_k_center(
        s.features(), s.correct_at_last_epoch(), s.k_center(budget)),
}
