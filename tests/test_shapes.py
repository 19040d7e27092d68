"""Tests for the embedded shapes dataset: renderer, captions, TFDS builder."""
import hashlib
import itertools
import pathlib
import re
import sys
import tempfile

import ml_collections
import numpy as np
import pytest

from vldd_jax.data import input_pipeline
from vldd_jax.data import shapes
from conftest import tiny_config

SIZES = dict(image_size=32, num_train=24, num_val=8, num_test=8,
             num_pretrain=16, max_objects=3, seed=0)
SIZE_WORDS = {"small": 0, "little": 0, "large": 1, "big": 1}
NOUNS = {"shape", "object", "figure"}
RELATIONS = {"above": (1, -1), "over": (1, -1), "below": (1, 1),
             "under": (1, 1), "beneath": (1, 1), "to the left of": (0, -1),
             "left of": (0, -1), "to the right of": (0, 1),
             "right of": (0, 1)}


def _build(data_dir: pathlib.Path, **overrides) -> shapes.Shapes:
  builder = shapes.make_builder(
      ml_collections.ConfigDict({**SIZES, **overrides}), str(data_dir))
  builder.download_and_prepare(file_format="array_record")
  return builder


def _read(builder: shapes.Shapes) -> dict[str, list[dict]]:
  source = builder.as_data_source()
  return {split: [source[split][i] for i in range(len(source[split]))]
          for split in source}


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> tuple[shapes.Shapes, dict[str, list[dict]]]:
  builder = _build(tmp_path_factory.mktemp("a"))
  return builder, _read(builder)


@pytest.fixture(scope="module")
def examples(built) -> list[tuple[dict, int]]:
  """All built examples plus more drawn directly, with their max_objects."""
  _, splits = built
  drawn = [(shapes.generate_example(7, 0, i, max_objects=m), m)
           for m in (1, 4) for i in range(150)]
  return [(ex, SIZES["max_objects"]) for ex in itertools.chain(
      *splits.values())] + drawn


def _captions(example: dict) -> list[str]:
  return [c.decode() if isinstance(c, bytes) else c
          for c in example["captions"]]


def test_builds_are_deterministic(built, tmp_path):
  builder, splits = built
  again = _build(tmp_path / "b")
  files = sorted(p.name for p in pathlib.Path(builder.data_dir).glob(
      "*.array_record*"))
  assert len(files) == 4
  for name in files:
    first = (pathlib.Path(builder.data_dir) / name).read_bytes()
    assert first == (pathlib.Path(again.data_dir) / name).read_bytes(), name
  for split, rebuilt in _read(again).items():
    for ex, ref in zip(rebuilt, splits[split], strict=True):
      np.testing.assert_equal(ex, ref)
  other = _read(_build(tmp_path / "c", seed=1))
  for split, reseeded in other.items():
    for ex, ref in zip(reseeded, splits[split], strict=True):
      assert not np.array_equal(ex["image"], ref["image"])


def test_index_is_example_index(built):
  _, splits = built
  for split, index in shapes.SPLITS.items():
    for i in (0, len(splits[split]) - 1):
      expected = shapes.generate_example(0, index, i)
      assert _captions(splits[split][i]) == expected["captions"]
      np.testing.assert_array_equal(splits[split][i]["image"],
                                    expected["image"])


def test_split_sizes_and_config_names(built):
  builder, splits = built
  assert {k: len(v) for k, v in splits.items()} == {
      "train": 24, "val": 8, "test": 8, "pretrain": 16}
  assert builder.builder_config.name == "s32_o3_tr24_va8_te8_pt16_seed0"
  assert builder.builder_config.name in builder.data_dir
  names = {shapes.ShapesConfig().name,
           shapes.ShapesConfig(num_train=10).name,
           shapes.ShapesConfig(num_pretrain=10).name,
           shapes.ShapesConfig(image_size=64).name,
           shapes.ShapesConfig(max_objects=2).name,
           shapes.ShapesConfig(seed=3).name}
  assert len(names) == 6
  with pytest.raises(ValueError):
    shapes.ShapesConfig(max_objects=len(shapes.COUNT_WORDS) + 1)


def test_empty_split_is_left_out(tmp_path):
  source = _build(tmp_path, num_val=0, num_pretrain=0).as_data_source()
  assert {k: len(v) for k, v in source.items()} == {"train": 24, "test": 8}


def test_labels_are_valid(examples):
  for ex, max_objects in examples:
    n = int(ex["num_objects"])
    assert 1 <= n <= max_objects
    for key, vocab in (("colour", shapes.COLOURS), ("shape", shapes.SHAPES),
                       ("size", shapes.SIZES)):
      labels = np.asarray(ex[key])
      assert labels.shape == (max_objects,) and labels.dtype == np.int32
      assert np.all((0 <= labels[:n]) & (labels[:n] < len(vocab)))
      assert np.all(labels[n:] == -1)
    position = np.asarray(ex["position"])
    assert position.shape == (max_objects, 2)
    assert np.all((0 < position[:n]) & (position[:n] < 1))
    assert np.all(position[n:] == 0)
    assert 0 <= ex["background_colour"] < len(shapes.BACKGROUND_COLOURS)
    assert 0 <= ex["background_texture"] < len(shapes.TEXTURES)


def test_captions_name_only_what_is_there(examples):
  for ex, _ in examples:
    n = int(ex["num_objects"])
    captions = _captions(ex)
    assert len(captions) == shapes.NUM_CAPTIONS == len(set(captions))
    present = {
        "colour": {shapes.COLOURS[c] for c in ex["colour"][:n]},
        "shape": {shapes.SHAPES[c] for c in ex["shape"][:n]},
        "size": {w for w, z in SIZE_WORDS.items() if z in ex["size"][:n]},
        "count": {shapes.COUNT_WORDS[n - 1]},
        "background": {shapes.BACKGROUND_COLOURS[ex["background_colour"]]},
    }
    vocab = {"colour": shapes.COLOURS, "shape": shapes.SHAPES,
             "size": SIZE_WORDS, "count": shapes.COUNT_WORDS,
             "background": shapes.BACKGROUND_COLOURS}
    for caption in captions:
      words = set(re.findall(r"[a-z]+", caption))
      assert len(words) >= 3, caption
      assert (words & set(shapes.COLOURS + shapes.SHAPES)
              or "background" in words), caption
      for key, names in vocab.items():
        assert words & set(names) <= present[key], (caption, key, present[key])
      assert ("single" in words) <= (n == 1), caption


def _matches(ex: dict, words: list[str]) -> list[int]:
  """Objects fitting a description such as ['small', 'red', 'shape']."""
  n = int(ex["num_objects"])
  out = []
  for i in range(n):
    ok = True
    for word in words:
      if word in SIZE_WORDS:
        ok &= SIZE_WORDS[word] == ex["size"][i]
      elif word in shapes.COLOURS:
        ok &= shapes.COLOURS.index(word) == ex["colour"][i]
      elif word in shapes.SHAPES:
        ok &= shapes.SHAPES.index(word) == ex["shape"][i]
    out += [i] if ok else []
  return out


def test_stated_relations_hold(examples):
  desc = (rf"(?:(?:{'|'.join(SIZE_WORDS)}) )?"
          rf"(?:(?:{'|'.join(shapes.COLOURS)}) )?"
          rf"(?:{'|'.join(shapes.SHAPES + tuple(NOUNS))})")
  relation = "|".join(sorted(RELATIONS, key=len, reverse=True))
  pattern = re.compile(
      rf"^(the|an?) ({desc}) (?:is )?((?:{relation})(?: and (?:{relation}))?) "
      rf"(?:the|an?) ({desc})$")
  checked = 0
  for ex, _ in examples:
    position = np.asarray(ex["position"])
    for caption in _captions(ex):
      match = pattern.match(caption)
      if not match:
        continue
      article, first, relations, second = match.groups()
      firsts = _matches(ex, first.split())
      seconds = _matches(ex, second.split())
      if article == "the":
        assert len(firsts) == 1 and len(seconds) == 1, caption
      parts = [RELATIONS[r] for r in relations.split(" and ")]
      # Relations are stated only 0.15 apart or more (less float32 rounding).
      assert any(
          all(sign * (position[i, axis] - position[j, axis]) >= 0.14
              for axis, sign in parts)
          for i in firsts for j in seconds if i != j), caption
      checked += 1
  assert checked > 100


def test_images_are_unique(built):
  _, splits = built
  hashes = [hashlib.sha256(np.asarray(ex["image"]).tobytes()).hexdigest()
            for ex in itertools.chain(*splits.values())]
  assert len(hashes) == len(set(hashes)) == 56


@pytest.mark.parametrize("image_size", [32, 64])
def test_objects_are_drawn_where_labelled(image_size):
  for i in range(40):
    ex = shapes.generate_example(0, 0, i, image_size=image_size)
    image = ex["image"]
    assert image.shape == (image_size, image_size, 3)
    assert image.dtype == np.uint8
    for colour, (x, y) in zip(ex["colour"][:ex["num_objects"]],
                              ex["position"]):
      pixel = image[int(y * image_size), int(x * image_size)].astype(float)
      nearest = np.argmin(np.linalg.norm(shapes._RGB - pixel, axis=1))
      assert nearest == colour


def test_tensorflow_not_imported():
  assert "tensorflow" not in sys.modules


def test_a_process_makes_one_builder_per_data_config(data_dir, monkeypatch, caplog):
  # TFDS logs "Using custom data configuration" for every builder it makes.
  monkeypatch.setattr(input_pipeline, "_BUILT", {})
  config = tiny_config(data_dir)
  with caplog.at_level("WARNING"):
    for split in ("train", "val", "test"):
      input_pipeline.load_split(config, "unused", split)
  assert caplog.text.count("Using custom data configuration") == 1
  other = tiny_config(data_dir)
  other.data.num_val += 1  # Another dataset: its own builder.
  assert input_pipeline.builder(other, "unused") is not input_pipeline.builder(config, "unused")


def test_making_a_builder_leaves_no_folder_in_the_temp_dir(tmp_path, monkeypatch):
  # TFDS leaves an empty mkdtemp folder behind for each unprepared builder.
  system_tmp = tmp_path / "tmp"
  system_tmp.mkdir()
  monkeypatch.setattr(tempfile, "tempdir", str(system_tmp))
  monkeypatch.setattr(input_pipeline, "_BUILT", {})
  config = tiny_config(str(tmp_path / "unprepared"))
  assert not input_pipeline.builder(config, "unused").is_prepared()
  assert tempfile.gettempdir() == str(system_tmp)
  assert list(system_tmp.iterdir()) == []
