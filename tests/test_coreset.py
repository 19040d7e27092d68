"""Coreset selectors: each one's defining property on small hand-made inputs."""
import itertools

import numpy as np
import pytest

from vldd_jax import coreset


def _features(n=30, c=3, f=4, seed=0):
  return np.random.default_rng(seed).normal(size=(n, c, f))


def _one_pair_per_image(rows, budget):
  assert len(rows) == budget and len(set(rows.tolist())) == budget


def test_herding_is_the_greedy_mean_tracker():
  feats = _features()
  rows, caps = coreset.herding(feats, 10)
  _one_pair_per_image(rows, 10)
  target = feats.reshape(-1, 4).mean(axis=0)
  for k in range(10):
    # Brute force: no pair of an image not yet taken gives a closer running mean.
    error = lambda x: np.linalg.norm(
        np.mean([*feats[rows[:k], caps[:k]], x], axis=0) - target)
    best = min(error(feats[i, j]) for i in range(30) for j in range(3)
               if i not in rows[:k])
    assert error(feats[rows[k], caps[k]]) == pytest.approx(best)


def test_herding_goes_on_from_a_smaller_budgets_selection():
  feats = _features(n=200, c=3, f=8)
  whole = coreset.herding(feats, 40)
  for got, want in zip(coreset.herding(feats, 40, start=coreset.herding(feats, 15)), whole):
    np.testing.assert_array_equal(got, want)


def test_herding_mean_error_shrinks_below_random_subsets():
  feats = _features(n=200, c=2)
  target = feats.reshape(-1, 4).mean(axis=0)
  rows, caps = coreset.herding(feats, 40)
  error = lambda k: np.linalg.norm(feats[rows[:k], caps[:k]].mean(axis=0) - target)
  assert error(40) < error(10) < error(1)
  rng = np.random.default_rng(1)
  random_errors = [np.linalg.norm(feats[rng.choice(200, 40, replace=False),
                                       rng.integers(0, 2, 40)].mean(axis=0) - target)
                   for _ in range(100)]
  assert error(40) < 0.2 * np.median(random_errors)


def test_k_center_is_greedy_and_within_twice_the_optimal_radius():
  feats = _features(n=8, c=1, f=2, seed=3)
  points = feats[:, 0]
  rows, caps = coreset.k_center(feats, 3, seed=5)
  _one_pair_per_image(rows, 3)
  assert (caps == 0).all()
  dist = np.linalg.norm(points[:, None] - points[None], axis=-1)
  for k in range(1, 3):  # Each centre is the farthest point from the earlier ones.
    nearest = dist[:, rows[:k]].min(axis=1)
    assert nearest[rows[k]] == pytest.approx(nearest.max())
  radius = lambda centres: dist[:, list(centres)].min(axis=1).max()
  optimal = min(radius(c) for c in itertools.combinations(range(8), 3))
  assert radius(rows) <= 2 * optimal + 1e-12
  np.testing.assert_array_equal(coreset.k_center(feats, 3, seed=5)[0], rows)


def test_k_center_on_many_pairs_selects_as_whole_array_distances_do():
  # 3,000 x 3 pairs: distances in chunks of 4096 rows, the last one partial,
  # must be the bits np.linalg.norm gives, or near-ties would pick otherwise.
  feats = _features(n=3000, c=3, f=16, seed=4)
  feats[1000:1100] = feats[:100]  # Exact ties between images.
  flat = feats.reshape(-1, 16)
  chosen = [int(np.random.default_rng([7, 40, 2]).integers(len(flat)))]
  nearest = np.linalg.norm(flat - flat[chosen[0]], axis=1)
  for _ in range(39):
    taken = np.repeat(np.isin(np.arange(3000), np.asarray(chosen) // 3), 3)
    chosen.append(int(np.argmax(np.where(taken, -np.inf, nearest))))
    nearest = np.minimum(nearest, np.linalg.norm(flat - flat[chosen[-1]], axis=1))
  rows, caps = coreset.k_center(feats, 40, seed=7)
  np.testing.assert_array_equal(rows * 3 + caps, chosen)
  for chunk in (1000, 4096):
    np.testing.assert_array_equal(
        coreset._distances(flat, flat[5], np.empty(len(flat)), chunk),
        np.linalg.norm(flat - flat[5], axis=1))


def test_forgetting_events_match_a_hand_count():
  correct = np.array([[1, 0, 1, 0, -1],
                      [0, 0, -1, 0, 0],
                      [1, 0, 0, 0, 0],
                      [-1, 0, 1, 0, 0],
                      [0, 0, 0, 0, 1]], np.int8)
  # Pair 0: 1,0,1,-1,0 -> forgotten twice. Pair 1: never found -> 5 (epochs).
  # Pair 2: 1,-1,0,1,0 -> the unseen epoch is skipped: 1->0 and 1->0, twice.
  # Pair 3: never found -> 5. Pair 4: -1,0,0,0,1 -> never forgotten.
  np.testing.assert_array_equal(coreset.forgetting_events(correct), [2, 5, 2, 5, 0])


def test_forgetting_takes_the_most_forgotten_and_breaks_ties_by_seed():
  events = np.array([0, 3, 1, 3, 3, 0, 2])
  rows, _ = coreset.forgetting(events, num_captions=5, budget=4, seed=0)
  assert set(rows[:3].tolist()) == {1, 3, 4} and rows[3] == 6
  orders = {tuple(coreset.forgetting(events, 5, 3, seed=s)[0]) for s in range(20)}
  assert len(orders) > 1 and all(set(o) == {1, 3, 4} for o in orders)
  again = coreset.forgetting(events, 5, 4, seed=0)
  np.testing.assert_array_equal(again[0], rows)


def test_random_selection_is_distinct_and_seeded():
  rows, caps = coreset.random_selection(50, 5, 20, seed=1)
  _one_pair_per_image(rows, 20)
  assert caps.min() >= 0 and caps.max() < 5
  np.testing.assert_array_equal(coreset.random_selection(50, 5, 20, seed=1)[0], rows)
  assert not np.array_equal(coreset.random_selection(50, 5, 20, seed=2)[0], rows)


def test_easy_takes_pairs_every_expert_found_before_any_other():
  rng = np.random.default_rng(0)
  correct = rng.choice(np.array([-1, 0, 1], np.int8), size=(3, 60), p=[0.1, 0.3, 0.6])
  all_found = set(np.flatnonzero((correct == 1).all(axis=0)).tolist())
  assert 0 < len(all_found) < 30
  rows, caps = coreset.easy(correct, 5, len(all_found), seed=0)
  assert set(rows.tolist()) == all_found and caps.min() >= 0 and caps.max() < 5
  # Past the pairs all experts found come those two of three found.
  more, _ = coreset.easy(correct, 5, len(all_found) + 4, seed=0)
  found = (correct == 1).sum(axis=0)
  assert found[more[len(all_found):]].tolist() == [2] * 4
  # Ties among them are broken by the seed, reproducibly.
  subset = lambda seed: set(coreset.easy(correct, 5, 5, seed)[0].tolist())
  assert subset(0) == subset(0) and subset(0) <= all_found
  assert any(subset(s) != subset(0) for s in range(1, 6))


def _easy_k_center_by_definition(features, correct, budget, seed):
  """Clusters in k-center's order, each giving its untaken pair with the most
  experts, then the nearest its centre; an exhausted cluster gives the untaken
  pair nearest its centre. Also returns how many clusters were exhausted."""
  n, c, _ = features.shape
  found = (correct == 1).sum(axis=0)
  centres = [features[r, j] for r, j in zip(*coreset.k_center(features, budget, seed))]
  pairs = [(i, j) for i in range(n) for j in range(c)]
  nearest = {p: int(np.argmax([features[p] @ z for z in centres])) for p in pairs}
  taken, chosen, exhausted = set(), [], 0
  for k, centre in enumerate(centres):
    members = [p for p in pairs if nearest[p] == k and p[0] not in taken]
    if members:
      best = max(members, key=lambda p: (found[p[0]], features[p] @ centre))
    else:
      exhausted += 1
      best = max((p for p in pairs if p[0] not in taken), key=lambda p: features[p] @ centre)
    chosen.append(best)
    taken.add(best[0])
  return chosen, exhausted


def test_easy_k_center_takes_the_easiest_pair_of_each_k_center_cluster():
  rng = np.random.default_rng(3)
  features = rng.normal(size=(40, 3, 6))
  features /= np.linalg.norm(features, axis=-1, keepdims=True)
  # Experts that agree on every pair: each cluster's nearest pair is its centre.
  same = np.ones((2, 40), np.int8)
  centres = coreset.k_center(features, 12, seed=1)
  for got, want in zip(coreset.easy_k_center(features, same, centres), centres):
    np.testing.assert_array_equal(got, want)
  exhausted = 0
  for n, budget in ((40, 12), (6, 5), (5, 5), (7, 6)):
    for seed in range(4):
      features = rng.normal(size=(n, 3, 4))
      features /= np.linalg.norm(features, axis=-1, keepdims=True)
      correct = rng.choice(np.array([-1, 0, 1], np.int8), size=(3, n), p=[0.1, 0.4, 0.5])
      rows, caps = coreset.easy_k_center(features, correct,
                                         coreset.k_center(features, budget, seed))
      want, count = _easy_k_center_by_definition(features, correct, budget, seed)
      assert list(zip(rows.tolist(), caps.tolist())) == want
      exhausted += count
  assert exhausted > 0  # The rule for a cluster left without a free image ran.


def test_easy_reads_the_last_epoch_of_every_expert_once(trained, monkeypatch):
  from vldd_jax import trajectories
  from vldd_jax.data import input_pipeline
  config, workdir = trained
  train = input_pipeline.load_split(config, workdir, "train")
  experts = trajectories.finished_experts(workdir)
  record = np.stack([trajectories.load_correct(workdir, e)[-1] for e in experts])
  all_found = np.flatnonzero((record == 1).all(axis=0))
  assert len(all_found) >= 2, "the tiny experts found too few pairs"
  # Each expert's last epoch only, once for every row that reads it.
  reads, load = [], trajectories.load_correct
  monkeypatch.setattr(trajectories, "load_correct", lambda workdir, e, epochs=None: reads.append(
      (e, list(epochs))) or load(workdir, e, epochs))
  selector = coreset.Selector(config, workdir, train)
  rows, _ = selector.rows("easy", len(all_found))
  assert sorted(rows.tolist()) == all_found.tolist()
  selector.rows("easy", 1), selector.rows("easy_k_center", 2)
  assert reads == [(e, [config.experts.epochs]) for e in experts]
  np.testing.assert_array_equal(selector.correct_at_last_epoch(), record)


def test_a_selector_selects_k_center_once_a_budget_and_herding_once(trained, monkeypatch):
  from vldd_jax.data import input_pipeline
  config, workdir = trained
  train = input_pipeline.load_split(config, workdir, "train")
  budgets, select = [], coreset.k_center
  monkeypatch.setattr(coreset, "k_center",
                      lambda features, budget, seed: budgets.append(budget)
                      or select(features, budget, seed))
  herded, herd = [], coreset.herding
  monkeypatch.setattr(coreset, "herding", lambda features, budget, start: herded.append(
      (budget, 0 if start is None else len(start[0]))) or herd(features, budget, start))
  selector = coreset.Selector(config, workdir, train)
  methods = ("k_center", "easy_k_center", "herding")
  got = {(m, b): selector.rows(m, b) for b in (6, 4, 9) for m in methods}
  selector.rows("k_center", 6)
  assert budgets == [6, 4, 9]
  assert herded == [(6, 0), (9, 6)]  # 4: the first 4 of 6; 9 goes on from 6.
  features = coreset.expert_features(config, workdir, train)
  for b in (6, 4, 9):
    centres = select(features, b, config.seed)
    easy = coreset.easy_k_center(features, selector.correct_at_last_epoch(), centres)
    wanted = {"k_center": centres, "easy_k_center": easy, "herding": herd(features, b)}
    for method, want in wanted.items():
      for w, h in zip(want, got[method, b]):
        np.testing.assert_array_equal(w, h)
