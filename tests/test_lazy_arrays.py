"""Arrays read by rows from disk index as the NumPy arrays they stand for."""
import hashlib

import numpy as np
import pytest

from vldd_jax.data import lazy_arrays


@pytest.fixture
def saved(tmp_path):
  array = np.random.default_rng(0).normal(size=(24, 5)).astype(np.float32)
  path = str(tmp_path / "a.npy")
  np.save(path, array)
  return array, path


_INDEXES = [3, -1, slice(None), slice(2, 20, 3), slice(-4, None), np.array([7, 2, 7, 0, 23]),
            np.array([], int), np.arange(24) % 2 == 0, (slice(1, 4), 2),
            (np.array([5, 1]), np.array([0, 4])), (np.array([4, 5, 6, 10]), slice(1, 3))]


@pytest.mark.parametrize("index", _INDEXES, ids=str)
def test_an_npy_file_indexes_as_the_array_it_holds(saved, index):
  array, path = saved
  np.testing.assert_array_equal(lazy_arrays.npy_rows(path)[index], array[index])


def test_a_view_groups_rows_and_reads_whole_groups(saved):
  array, path = saved
  grouped = lazy_arrays.npy_rows(path, (8, 3, 5))
  view = array.reshape(8, 3, 5)
  assert (grouped.shape, grouped.ndim, len(grouped)) == ((8, 3, 5), 3, 8)
  rows, captions = np.array([6, 0, 3]), np.array([2, 0, 1])
  np.testing.assert_array_equal(grouped[rows, captions], view[rows, captions])
  np.testing.assert_array_equal(grouped[2:5], view[2:5])
  np.testing.assert_array_equal(np.asarray(grouped), view)
  with pytest.raises(ValueError, match=r"cannot be viewed as \(7, 3, 5\)"):
    lazy_arrays.npy_rows(path, (7, 3, 5))


def test_out_of_range_rows_raise_as_numpy_does(saved):
  _, path = saved
  rows = lazy_arrays.npy_rows(path)
  for index in (24, -25, np.array([0, 24]), np.ones(23, bool)):
    with pytest.raises(IndexError):
      rows[index]


def test_a_truncated_file_is_refused_with_its_sizes(saved):
  _, path = saved
  with open(path, "r+b") as f:
    f.truncate(200)
  with pytest.raises(ValueError, match=r"a.npy: 200 bytes, expected 608 .*truncated"):
    lazy_arrays.npy_rows(path)


def test_the_data_checksum_is_that_of_the_array_bytes(saved):
  array, path = saved
  assert lazy_arrays.npy_sha256(path) == hashlib.sha256(array.tobytes()).hexdigest()


class _Source:
  """A data source of 10 examples that records every key it is asked for."""

  def __init__(self):
    self.asked = []

  def __len__(self):
    return 10

  def __getitems__(self, keys):
    self.asked += keys
    return [{"image": np.full((2, 2, 3), k, np.uint8), "captions": [b"x"]} for k in keys]


def test_a_subset_reads_nothing_until_indexed_then_only_its_rows():
  source = _Source()
  images = lazy_arrays.record_feature(source, "image", (10, 2, 2, 3), np.uint8)
  batch = lazy_arrays.rows_of(images, np.array([9, 4, 6, 1]))
  assert source.asked == [] and batch.shape == (4, 2, 2, 3)
  np.testing.assert_array_equal(batch[1:3][:, 0, 0, 0], [4, 6])
  assert source.asked == [4, 6]
  tail = lazy_arrays.rows_of(images, slice(7, None))
  np.testing.assert_array_equal(tail[:, 0, 0, 0], [7, 8, 9])
  in_memory = np.arange(10)
  np.testing.assert_array_equal(lazy_arrays.rows_of(in_memory, np.array([3, 1])), [3, 1])
