"""Tests for recall@K against a brute-force ranking definition."""
import jax.numpy as jnp
import numpy as np
import pytest

from vldd_jax import retrieval


def _brute_force(sim, c2i, ks):
  """Recall by sorting every query's candidates explicitly (no ties assumed)."""
  n_images, n_captions = sim.shape
  tr_ranks = []
  for i in range(n_images):
    ranking = np.argsort(-sim[i])
    tr_ranks.append(np.flatnonzero(c2i[ranking] == i)[0])
  ir_ranks = []
  for j in range(n_captions):
    ranking = np.argsort(-sim[:, j])
    ir_ranks.append(np.flatnonzero(ranking == c2i[j])[0])
  out = {f"tr@{k}": 100 * np.mean(np.array(tr_ranks) < k) for k in ks}
  out.update({f"ir@{k}": 100 * np.mean(np.array(ir_ranks) < k) for k in ks})
  out["r_mean"] = np.mean(list(out.values()))
  return out


def _captions(rng, n_images, max_per_image):
  """Shuffled caption→image map with 1..max_per_image captions per image."""
  counts = rng.integers(1, max_per_image + 1, size=n_images)
  return rng.permutation(np.repeat(np.arange(n_images), counts))


def _assert_same(got, expected):
  assert list(got) == list(expected)
  for key in expected:
    assert isinstance(got[key], float)
    assert got[key] == pytest.approx(expected[key], abs=1e-9), key


@pytest.mark.parametrize(
    "n_images,max_per_image,chunk_size",
    [(1, 1, 4), (1, 3, 1), (7, 1, 3), (12, 5, 5), (30, 4, 7), (40, 2, 1000)],
)
def test_matches_brute_force_on_random_scores(n_images, max_per_image, chunk_size):
  rng = np.random.default_rng(n_images * 10 + max_per_image)
  c2i = _captions(rng, n_images, max_per_image)
  # A weak signal on correct pairs so recall is neither 0 nor 100.
  sim = rng.standard_normal((n_images, c2i.size))
  sim[c2i, np.arange(c2i.size)] += 1.5
  ks = (1, 2, 5, 10)
  expected = _brute_force(sim, c2i, ks)
  _assert_same(retrieval.recall_at_k(sim, c2i, ks, chunk_size=chunk_size), expected)


def test_five_captions_per_image_karpathy_order():
  rng = np.random.default_rng(5)
  c2i = np.repeat(np.arange(20), 5)
  sim = rng.standard_normal((20, 100)).astype(np.float32)
  sim[c2i, np.arange(100)] += 2.0
  got = retrieval.recall_at_k(sim, c2i)
  assert list(got) == ["tr@1", "tr@5", "tr@10", "ir@1", "ir@5", "ir@10", "r_mean"]
  _assert_same(got, _brute_force(sim, c2i, (1, 5, 10)))
  assert 0 < got["ir@1"] < got["ir@5"] < got["ir@10"] < 100


def test_accepts_jax_arrays_and_lists():
  rng = np.random.default_rng(6)
  c2i = _captions(rng, 9, 3)
  sim = rng.standard_normal((9, c2i.size)).astype(np.float32)
  expected = retrieval.recall_at_k(sim, c2i)
  _assert_same(retrieval.recall_at_k(jnp.asarray(sim), jnp.asarray(c2i)), expected)
  _assert_same(retrieval.recall_at_k(sim, c2i.tolist()), expected)


def test_chunk_sizes_give_identical_results():
  rng = np.random.default_rng(7)
  c2i = _captions(rng, 23, 4)
  sim = rng.standard_normal((23, c2i.size))
  results = [retrieval.recall_at_k(sim, c2i, chunk_size=c) for c in (1, 2, 5, 10, 23, 64)]
  for r in results[1:]:
    assert r == results[0]


def test_constant_similarity_is_pessimistic():
  # 3 images with 2, 1 and 3 captions; every score ties.
  c2i = np.array([0, 0, 1, 2, 2, 2])
  got = retrieval.recall_at_k(np.zeros((3, 6)), c2i, ks=(1, 2, 3, 4, 5))
  # Text→image: 2 wrong images tie with the right one, so rank 2.
  assert [got[f"ir@{k}"] for k in (1, 2, 3, 4, 5)] == [0, 0, 100, 100, 100]
  # Image→text: 4, 5 and 3 wrong captions tie with the best right one.
  assert [got[f"tr@{k}"] for k in (1, 2, 3, 4, 5)] == pytest.approx(
      [0, 0, 0, 100 / 3, 200 / 3]
  )


def test_ties_with_the_correct_item_count_against_it():
  c2i = np.array([0, 1, 2])
  sim = np.array([
      [0.9, 0.9, 0.1],  # image 0: its caption ties with caption 1 → rank 1
      [0.2, 0.5, 0.5],  # image 1: its caption ties with caption 2 → rank 1
      [0.0, 0.0, 0.5],  # image 2: strictly first → rank 0
  ])
  got = retrieval.recall_at_k(sim, c2i, ks=(1, 2))
  assert got["tr@1"] == pytest.approx(100 / 3)
  assert got["tr@2"] == 100
  # Columns: caption 0 has its image strictly first (rank 0), caption 1 is
  # beaten by image 0 (rank 1), caption 2's image ties with image 1 (rank 1).
  assert got["ir@1"] == pytest.approx(100 / 3)
  assert got["ir@2"] == 100


def test_tr_uses_best_correct_caption_and_ties_among_correct_are_free():
  # Image 0 owns captions 0..2; they tie with each other but beat everything.
  c2i = np.array([0, 0, 0, 1])
  sim = np.array([[0.8, 0.8, 0.8, 0.3], [0.1, 0.1, 0.1, 0.9]])
  got = retrieval.recall_at_k(sim, c2i, ks=(1,))
  assert got["tr@1"] == 100
  # A wrong caption tying with the best right one pushes it to rank 1.
  sim[0, 3] = 0.8
  assert retrieval.recall_at_k(sim, c2i, ks=(1,))["tr@1"] == 50


def test_perfect_similarity_gives_100():
  rng = np.random.default_rng(8)
  c2i = _captions(rng, 15, 5)
  sim = (c2i[None, :] == np.arange(15)[:, None]).astype(np.float32)
  got = retrieval.recall_at_k(sim, c2i, chunk_size=4)
  assert all(v == 100.0 for v in got.values())


@pytest.mark.parametrize("chunk_size", [3, 16, 1024])
def test_retrieval_metrics_equals_recall_on_product(chunk_size):
  rng = np.random.default_rng(9)
  c2i = _captions(rng, 25, 5)
  img = rng.standard_normal((25, 8))
  img /= np.linalg.norm(img, axis=1, keepdims=True)
  txt = img[c2i] + 0.8 * rng.standard_normal((c2i.size, 8))
  txt /= np.linalg.norm(txt, axis=1, keepdims=True)
  expected = retrieval.recall_at_k(img @ txt.T, c2i)
  got = retrieval.retrieval_metrics(img, txt, c2i, chunk_size=chunk_size)
  _assert_same(got, expected)
  assert 0 < got["r_mean"] < 100
  got32 = retrieval.retrieval_metrics(
      jnp.asarray(img, jnp.float32), jnp.asarray(txt, jnp.float32), c2i, chunk_size=chunk_size
  )
  _assert_same(got32, expected)


def test_retrieval_metrics_collapsed_embeddings_are_not_perfect():
  c2i = np.repeat(np.arange(4), 5)
  img = np.ones((4, 3)) / np.sqrt(3)
  txt = np.ones((20, 3)) / np.sqrt(3)
  got = retrieval.retrieval_metrics(img, txt, c2i, ks=(1, 5, 10))
  assert got["tr@1"] == got["tr@5"] == got["tr@10"] == 0
  assert got["ir@1"] == 0 and got["ir@5"] == got["ir@10"] == 100


def test_chance_recall_closed_form_values():
  c2i = np.repeat(np.arange(1000), 5)
  got = retrieval.chance_recall(1000, 5000, c2i, ks=(1, 5, 10))
  assert got["ir@1"] == pytest.approx(0.1)
  assert got["ir@10"] == pytest.approx(1.0)
  assert got["tr@1"] == pytest.approx(0.1)
  # 1 − C(4995, 5) / C(5000, 5), written as a product.
  miss = np.prod([(4995 - t) / (5000 - t) for t in range(5)])
  assert got["tr@5"] == pytest.approx(100 * (1 - miss))
  assert retrieval.chance_recall(2, 3, [0, 1, 1], ks=(5,))["ir@5"] == 100


def test_chance_recall_matches_monte_carlo():
  rng = np.random.default_rng(10)
  n_images = 12
  c2i = _captions(rng, n_images, 4)
  ks = (1, 3, 5)
  trials = [
      retrieval.recall_at_k(rng.random((n_images, c2i.size)), c2i, ks)
      for _ in range(600)
  ]
  expected = retrieval.chance_recall(n_images, c2i.size, c2i, ks)
  for key, value in expected.items():
    estimate = np.mean([t[key] for t in trials])
    # Standard error is at most 100 * 0.5 / sqrt(600 * 12) ≈ 0.6 points.
    assert estimate == pytest.approx(value, abs=2.5), key


@pytest.mark.parametrize(
    "sim,c2i,match",
    [
        (np.zeros(4), [0], "2-D"),
        (np.zeros((2, 3)), [0, 1], r"shape \(3,\)"),
        (np.zeros((2, 3)), [0, 1, 2], r"caption_to_image\[2\] = 2 is outside \[0, 2\)"),
        (np.zeros((2, 3)), [0, -1, 1], "outside"),
        (np.zeros((3, 3)), [0, 0, 2], "no caption, e.g. image 1"),
        (np.zeros((2, 2)), [0.0, 1.0], "integers"),
        (np.array([[0.0, np.nan], [0.0, 0.0]]), [0, 1], "NaN"),
    ],
)
def test_invalid_inputs_raise(sim, c2i, match):
  with pytest.raises(ValueError, match=match):
    retrieval.recall_at_k(sim, c2i)


def test_invalid_arguments_raise():
  sim, c2i = np.zeros((2, 2)), [0, 1]
  with pytest.raises(ValueError, match="ks"):
    retrieval.recall_at_k(sim, c2i, ks=(0, 1))
  with pytest.raises(ValueError, match="ks"):
    retrieval.recall_at_k(sim, c2i, ks=(1, 1))
  with pytest.raises(ValueError, match="chunk_size"):
    retrieval.recall_at_k(sim, c2i, chunk_size=0)
  with pytest.raises(ValueError, match=r"\[n_images, d\]"):
    retrieval.retrieval_metrics(np.zeros((2, 3)), np.zeros((2, 4)), c2i)
  with pytest.raises(ValueError, match="no caption"):
    retrieval.chance_recall(3, 2, c2i)
