"""Tests for the Karpathy-split TFDS builder, on a small fixture written here."""
import json
import os
import shutil
import sys
import tempfile

import ml_collections
import numpy as np
import pytest
from PIL import Image

from vldd_jax.data import karpathy

SIZE = 8
ANN_NAME = "dataset_toy.json"
# filename, filepath, split, mode, (width, height), centre colour, border colour.
IMAGES = (
    ("wide.png", "", "train", "RGB", (48, 16), (255, 0, 0), (0, 0, 255)),
    ("rgba.png", "val2014", "restval", "RGBA", (30, 18), (10, 200, 30, 128),
     (250, 250, 250, 255)),
    ("gray.png", "", "train", "L", (16, 40), 180, 20),
    ("photo.jpg", "val2014", "val", "RGB", (33, 33), (90, 120, 150),
     (90, 120, 150)),
    ("tall.png", "train2014", "test", "RGB", (18, 50), (0, 255, 0), (255, 0, 255)),
    ("square.png", "", "test", "RGB", (12, 12), (60, 60, 60), (60, 60, 60)),
    ("val2.png", "", "val", "RGB", (20, 26), (1, 2, 3), (200, 100, 0)),
)
EXPECTED_RGB = {
    "wide.png": (255, 0, 0), "rgba.png": (10, 200, 30), "gray.png": (180,) * 3,
    "photo.jpg": (90, 120, 150), "tall.png": (0, 255, 0),
    "square.png": (60, 60, 60), "val2.png": (1, 2, 3),
}


def _picture(mode, size, centre, border) -> Image.Image:
  """A `border`-coloured image whose centred square has colour `centre`."""
  width, height = size
  side = min(width, height)
  image = Image.new(mode, size, border)
  image.paste(Image.new(mode, (side, side), centre),
              ((width - side) // 2, (height - side) // 2))
  return image


def _caption(index: int, j: int) -> str:
  return f"image {index} caption {j}."


def _write_fixture(root) -> tuple[str, str, dict]:
  """Writes images/ and dataset_toy.json under `root`.

  Returns:
    The annotation file, the image folder and the annotations as written.
  """
  image_root = os.path.join(root, "images")
  entries = []
  for index, image in enumerate(IMAGES):
    name, filepath, split, mode, size, centre, border = image
    os.makedirs(os.path.join(image_root, filepath), exist_ok=True)
    _picture(mode, size, centre, border).save(
        os.path.join(image_root, filepath, name))
    entry = {"filename": name, "imgid": index, "split": split,
             "sentences": [{"raw": f"  {_caption(index, j)} ", "tokens": []}
                           for j in range(6)]}
    if filepath:
      entry["filepath"] = filepath
    entries.append(entry)
  data = {"images": entries, "dataset": "toy"}
  ann_file = os.path.join(root, ANN_NAME)
  _write_json(ann_file, data)
  return ann_file, image_root, data


def _write_json(path: str, data: dict) -> None:
  with open(path, "w", encoding="utf-8") as f:
    json.dump(data, f)


def _data_config(ann_file: str, image_root: str,
                 **overrides) -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict(dict(
      ann_file=ann_file, image_root=image_root, image_size=SIZE,
      restval_to_train=True, skip_bad_images=False, captions_per_image=5) | overrides)


def _prepare(ann_file, image_root, data_dir, **overrides) -> karpathy.Karpathy:
  builder = karpathy.make_builder(
      _data_config(ann_file, image_root, **overrides), os.fspath(data_dir))
  builder.download_and_prepare(file_format="array_record")
  return builder


def _read(builder) -> dict[str, list[dict]]:
  source = builder.as_data_source()
  return {split: [source[split][i] for i in range(len(source[split]))]
          for split in source}


@pytest.fixture
def fixture(tmp_path):
  return _write_fixture(tmp_path / "raw")


def test_builds_splits_with_restval_in_train(fixture, tmp_path):
  ann_file, image_root, _ = fixture
  data = _read(_prepare(ann_file, image_root, tmp_path / "tfds"))

  names = {split: [ex["filename"].decode() for ex in examples]
           for split, examples in data.items()}
  assert names == {"train": ["wide.png", "val2014/rgba.png", "gray.png"],
                   "val": ["val2014/photo.jpg", "val2.png"],
                   "test": ["train2014/tall.png", "square.png"]}
  index = {name: i for i, (name, *_) in enumerate(IMAGES)}
  for examples in data.values():
    for ex in examples:
      assert ex["image"].shape == (SIZE, SIZE, 3)
      assert ex["image"].dtype == np.uint8
      i = index[os.path.basename(ex["filename"].decode())]
      assert [c.decode() for c in ex["captions"]] == [_caption(i, j)
                                                      for j in range(5)]
  assert "tensorflow" not in sys.modules


def test_centre_crop_keeps_only_the_centre_square(fixture, tmp_path):
  ann_file, image_root, _ = fixture
  data = _read(_prepare(ann_file, image_root, tmp_path / "tfds"))
  for examples in data.values():
    for ex in examples:
      name = os.path.basename(ex["filename"].decode())
      expected = np.broadcast_to(np.array(EXPECTED_RGB[name], np.uint8),
                                 (SIZE, SIZE, 3))
      tolerance = 3 if name.endswith(".jpg") else 0
      np.testing.assert_allclose(ex["image"], expected, atol=tolerance,
                                 err_msg=name)


def test_restval_dropped_when_asked(fixture, tmp_path):
  ann_file, image_root, _ = fixture
  builder = _prepare(ann_file, image_root, tmp_path / "tfds",
                     restval_to_train=False)
  source = builder.as_data_source()
  assert {split: len(source[split]) for split in source} == {
      "train": 2, "val": 2, "test": 2}


def test_config_name_tracks_inputs(fixture, tmp_path):
  ann_file, image_root, data = fixture
  name = karpathy.make_builder(_data_config(ann_file, image_root),
                               tmp_path).builder_config.name
  assert name.startswith("toy-8px-restval-")
  assert name == karpathy.make_builder(_data_config(ann_file, image_root),
                                       tmp_path).builder_config.name
  other_names = {
      karpathy.make_builder(_data_config(ann_file, image_root, **overrides),
                            tmp_path).builder_config.name
      for overrides in ({"image_size": 16}, {"restval_to_train": False},
                        {"skip_bad_images": True})}
  other_dir = tmp_path / "other"
  other_dir.mkdir()
  other_ann = os.fspath(other_dir / ANN_NAME)
  _write_json(other_ann, data)
  other_names.add(karpathy.make_builder(_data_config(other_ann, image_root),
                                        tmp_path).builder_config.name)
  assert len(other_names) == 4 and name not in other_names


def test_making_a_builder_leaves_no_folder_in_the_temp_dir(fixture, tmp_path,
                                                           monkeypatch):
  # TFDS leaves an empty mkdtemp folder behind for each unprepared builder.
  ann_file, image_root, _ = fixture
  system_tmp = tmp_path / "tmp"
  system_tmp.mkdir()
  monkeypatch.setattr(tempfile, "tempdir", os.fspath(system_tmp))
  builder = karpathy.make_builder(_data_config(ann_file, image_root),
                                  os.fspath(tmp_path / "unprepared"))
  assert not builder.is_prepared()
  assert tempfile.gettempdir() == os.fspath(system_tmp)
  assert list(system_tmp.iterdir()) == []


def test_reads_from_manual_dir(tmp_path):
  data_dir = tmp_path / "tfds"
  _write_fixture(data_dir / "downloads" / "manual")
  builder = _prepare("", "", data_dir)
  assert builder.builder_config.name.startswith("toy-8px-restval-")
  assert len(builder.as_data_source()["train"]) == 3


def test_a_replaced_image_in_the_manual_dir_is_read_again(tmp_path):
  data_dir = tmp_path / "tfds"
  _, image_root, _ = _write_fixture(data_dir / "downloads" / "manual")
  before = _prepare("", "", data_dir)
  path = os.path.join(image_root, "gray.png")
  Image.new("RGB", (12, 12), (250, 10, 10)).save(path)
  stat = os.stat(path)
  os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
  after = _prepare("", "", data_dir)
  assert after.builder_config.name != before.builder_config.name
  new = {ex["filename"].decode(): ex["image"] for ex in _read(after)["train"]}
  np.testing.assert_array_equal(new["gray.png"][0, 0], [250, 10, 10])


def test_missing_annotation_file(tmp_path):
  with pytest.raises(karpathy.KarpathyFormatError, match="dataset_nope.json"):
    karpathy.make_builder(
        _data_config(os.fspath(tmp_path / "dataset_nope.json"),
                     os.fspath(tmp_path)), tmp_path)


def test_malformed_json_names_line_and_column(fixture, tmp_path):
  ann_file, image_root, _ = fixture
  with open(ann_file, "w", encoding="utf-8") as f:
    f.write('{"images": [\n  {"filename": "a.jpg",,}\n]}')
  with pytest.raises(karpathy.KarpathyFormatError,
                     match=rf"{ANN_NAME}: not valid JSON: .* line 2, column"):
    _prepare(ann_file, image_root, tmp_path / "tfds")


def _del(key):
  def mutate(data, image_root):
    del data["images"][2][key]
  return mutate


def _set_sentences(sentences):
  def mutate(data, image_root):
    data["images"][2]["sentences"] = sentences
  return mutate


def _drop_raw(data, image_root):
  del data["images"][2]["sentences"][1]["raw"]


def _no_images(data, image_root):
  data["annotations"] = data.pop("images")


def _unknown_split(data, image_root):
  data["images"][2]["split"] = "training"


def _remove_image(data, image_root):
  os.remove(os.path.join(image_root, "gray.png"))


def _outside_root(data, image_root):
  data["images"][2]["filename"] = "../../outside/x.png"


def _absolute(data, image_root):
  data["images"][2]["filename"] = os.path.join(image_root, "gray.png")


def _lone_surrogate(data, image_root):
  data["images"][2]["sentences"][1]["raw"] = "a grey \ud800 square"


def _copied_into_test(data, image_root):
  first = data["images"][0]
  source = os.path.join(image_root, first.get("filepath", ""), first["filename"])
  shutil.copyfile(source, os.path.join(image_root, "copy.png"))
  data["images"].append(dict(first, filename="copy.png", filepath="", split="test"))


def _repeated_in_test(data, image_root):
  leaked = dict(data["images"][0], split="test")
  data["images"].append(leaked)


@pytest.mark.parametrize("mutate,message", [
    (_outside_root, r"images\[2\] \('../../outside/x.png'\): the image path leaves "
                    "image_root"),
    (_absolute, r"images\[2\] \('/.*gray.png'\): the image path leaves image_root"),
    (_repeated_in_test, r"images\[\d+\] \('.*'\): the same image as images\[0\] "
                        r".* in split '(train|restval|val|test)'"),
    (_copied_into_test, r"images\[\d+\] \('copy.png'\): the same bytes as images\[0\] "
                        r".* in split '(train|val|test)'"),
    (_no_images, "no top-level 'images' list"),
    (_del("filename"), r"images\[2\]: missing key\(s\) 'filename'"),
    (_del("split"), r"images\[2\] \('gray.png'\): missing key\(s\) 'split'"),
    (_del("sentences"), r"'gray.png'\): missing key\(s\) 'sentences'"),
    (_drop_raw, r"images\[2\] \('gray.png'\): sentences\[1\] has no 'raw'"),
    (_lone_surrogate, r"'gray.png'\): sentences\[1\] 'raw' is not valid text"),
    (_unknown_split, r"'gray.png'\): unknown split 'training'; valid splits: "
                     "train, restval, val, test"),
    (_remove_image, r"'gray.png'\): image file not found: .*images/gray.png"),
    (_set_sentences([]), r"'gray.png'\): has no captions"),
    (_set_sentences([{"raw": "a"}] * 3), r"'gray.png'\): has 3 captions, need 5"),
    (_set_sentences([{"raw": "a"}] * 2 + [{"raw": " \n"}] * 3),
     r"'gray.png'\): sentences\[2\] is empty \(nothing but whitespace\)"),
])
def test_bad_input_fails_before_writing(fixture, tmp_path, mutate, message):
  ann_file, image_root, data = fixture
  mutate(data, image_root)
  _write_json(ann_file, data)
  data_dir = tmp_path / "tfds"
  with pytest.raises(karpathy.KarpathyFormatError, match=message) as error:
    _prepare(ann_file, image_root, data_dir)
  assert ANN_NAME in str(error.value)
  builder = karpathy.make_builder(_data_config(ann_file, image_root), data_dir)
  assert not builder.is_prepared()
  assert not list(builder.data_path.parent.glob("*"))


def test_corrupt_image_leaves_nothing_prepared_and_rerun_succeeds(fixture,
                                                                  tmp_path):
  ann_file, image_root, _ = fixture
  # A test-split image, so that train and val are written before the failure.
  path = os.path.join(image_root, "train2014", "tall.png")
  with open(path, "rb") as f:
    good = f.read()
  with open(path, "wb") as f:
    f.write(good[:len(good) // 2])
  data_dir = tmp_path / "tfds"
  with pytest.raises(karpathy.KarpathyFormatError,
                     match=r"images\[4\] \('train2014/tall.png'\): cannot decode"):
    _prepare(ann_file, image_root, data_dir)
  builder = karpathy.make_builder(_data_config(ann_file, image_root), data_dir)
  assert not builder.is_prepared()
  assert not list(builder.data_path.parent.glob("*"))

  with open(path, "wb") as f:
    f.write(good)
  builder = _prepare(ann_file, image_root, data_dir)
  assert builder.is_prepared()
  assert len(builder.as_data_source()["test"]) == 2


def test_skip_mode_skips_exactly_the_bad_images(fixture, tmp_path, caplog):
  ann_file, image_root, data = fixture
  os.remove(os.path.join(image_root, "gray.png"))  # images[2], train.
  with open(os.path.join(image_root, "train2014", "tall.png"), "wb") as f:
    f.write(b"not an image")  # images[4], test.
  data["images"][6]["sentences"] = data["images"][6]["sentences"][:2]  # val.
  _write_json(ann_file, data)

  builder = _prepare(ann_file, image_root, tmp_path / "tfds",
                     skip_bad_images=True)
  names = {split: [ex["filename"].decode() for ex in examples]
           for split, examples in _read(builder).items()}
  assert names == {"train": ["wide.png", "val2014/rgba.png"],
                   "val": ["val2014/photo.jpg"], "test": ["square.png"]}
  with open(os.path.join(builder.data_dir, karpathy.SKIPPED_FILE)) as f:
    skipped = json.load(f)
  assert [(r["index"], r["filename"], r["split"]) for r in skipped] == [
      (2, "gray.png", "train"), (4, "train2014/tall.png", "test"),
      (6, "val2.png", "val")]
  assert "not found" in skipped[0]["reason"]
  assert "cannot decode" in skipped[1]["reason"]
  assert "2 captions" in skipped[2]["reason"]
  assert "skipped 3 bad images" in caplog.text
  assert "train2014/tall.png" in caplog.text


def test_skip_mode_still_rejects_structural_errors(fixture, tmp_path):
  ann_file, image_root, data = fixture
  _unknown_split(data, image_root)
  _write_json(ann_file, data)
  with pytest.raises(karpathy.KarpathyFormatError, match="unknown split"):
    _prepare(ann_file, image_root, tmp_path / "tfds", skip_bad_images=True)


def test_empty_split_is_an_error(fixture, tmp_path):
  ann_file, image_root, data = fixture
  for entry in data["images"]:
    if entry["split"] == "val":
      entry["split"] = "train"
  _write_json(ann_file, data)
  with pytest.raises(karpathy.KarpathyFormatError,
                     match="no usable images in split 'val'"):
    _prepare(ann_file, image_root, tmp_path / "tfds")


def test_a_split_emptied_by_undecodable_images_is_named(fixture, tmp_path):
  ann_file, image_root, data = fixture
  for entry in data["images"]:
    if entry["split"] == "test":
      path = os.path.join(image_root, entry.get("filepath", ""), entry["filename"])
      with open(path, "wb") as f:
        f.write(b"not an image: " + path.encode())  # Two different files.
  with pytest.raises(karpathy.KarpathyFormatError,
                     match=r"no usable images in split 'test': all 2 could not be "
                           r"decoded \(skip_bad_images=True"):
    _prepare(ann_file, image_root, tmp_path / "tfds", skip_bad_images=True)


def test_sixteen_bit_greyscale_is_scaled_not_clipped(tmp_path):
  ramp = np.tile(np.linspace(0, 65535, 64).round().astype(np.uint16), (64, 1))
  Image.fromarray(ramp).save(tmp_path / "ramp16.png")
  assert Image.open(tmp_path / "ramp16.png").mode.startswith("I")
  pixels = karpathy.load_image(str(tmp_path / "ramp16.png"), 64)
  row = pixels[32, :, 0].astype(int)
  np.testing.assert_array_equal(pixels[..., 0], pixels[..., 2])  # Grey.
  assert row[0] <= 1 and row[-1] >= 254  # The whole range, not clipped to white.
  np.testing.assert_allclose(row, np.linspace(0, 255, 64), atol=2)
  eight = np.tile(np.arange(0, 256, 4, dtype=np.uint8), (64, 1))
  Image.fromarray(eight).save(tmp_path / "ramp8.png")
  np.testing.assert_array_equal(
      karpathy.load_image(str(tmp_path / "ramp8.png"), 64)[..., 0], eight)


def test_a_replaced_image_is_read_again(fixture, tmp_path):
  ann_file, image_root, _ = fixture
  before = _prepare(ann_file, image_root, tmp_path / "tfds")
  old = {ex["filename"].decode(): ex["image"] for ex in _read(before)["train"]}
  path = os.path.join(image_root, "gray.png")
  Image.new("RGB", (12, 12), (250, 10, 10)).save(path)  # Another picture, same name.
  stat = os.stat(path)
  os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
  after = _prepare(ann_file, image_root, tmp_path / "tfds")
  assert after.builder_config.name != before.builder_config.name
  new = {ex["filename"].decode(): ex["image"] for ex in _read(after)["train"]}
  np.testing.assert_array_equal(new["gray.png"][0, 0], [250, 10, 10])
  assert not np.array_equal(old["gray.png"], new["gray.png"])
  np.testing.assert_array_equal(old["wide.png"], new["wide.png"])


def test_a_fixed_image_joins_a_skip_mode_rerun(fixture, tmp_path):
  ann_file, image_root, _ = fixture
  tall = os.path.join(image_root, "train2014", "tall.png")
  with open(tall, "rb") as f:
    good = f.read()
  with open(tall, "wb") as f:
    f.write(b"not an image")
  first = _prepare(ann_file, image_root, tmp_path / "tfds", skip_bad_images=True)
  assert [ex["filename"].decode() for ex in _read(first)["test"]] == ["square.png"]
  with open(tall, "wb") as f:  # Fixed.
    f.write(good)
  again = _prepare(ann_file, image_root, tmp_path / "tfds", skip_bad_images=True)
  assert [ex["filename"].decode() for ex in _read(again)["test"]] == [
      "train2014/tall.png", "square.png"]
