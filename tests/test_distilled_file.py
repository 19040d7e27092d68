"""A saved distilled set is checked in full before anything uses it: its declared
sizes before decompressing, every field, its provenance and its objective's
arrays; each refusal names the file and the field. Exports never mix two sets."""
import json
import os
import signal
import subprocess
import sys
import tracemalloc
import zipfile

import jax
import ml_collections
import numpy as np
import pytest

import vldd_jax
from vldd_jax import checksums
from vldd_jax import distilled_set
from vldd_jax import evaluate
from vldd_jax import objectives
from vldd_jax import text
from vldd_jax import workdir_lib

from conftest import ROOT, subprocess_env, tiny_config

N, SIZE, DIM = 8, 4, 6
DISTILL = {"objective": "plain", "lowrank_loss": "wbce", "lowrank_rank": 2,
           "lowrank_alpha": 1.0}


def _arrays(objective: str = "plain", lowrank_loss: str = "wbce", n: int = N,
            size: int = SIZE, seed: int = 0) -> dict:
  """The fields of a valid set of `n` pairs, as stage distill writes them."""
  rng = np.random.default_rng(seed)
  images = rng.uniform(-1, 1, (n, size, size, 3)).astype(np.float32)
  provenance = {"objective": objective,
                "distill": {**DISTILL, "objective": objective,
                            "lowrank_loss": lowrank_loss},
                "text": {"fingerprint": "0123456789abcdef", "folder": "encoder",
                         "pooling": "mean", "max_length": 32},
                "image": {"size": size}}
  arrays = dict(images=images,
                images_uint8=np.round((images + 1) * 127.5).astype(np.uint8),
                text_emb=rng.normal(size=(n, DIM)).astype(np.float32),
                lr_image=np.float32(0.01), lr_text=np.float32(0.02),
                init_rows=np.arange(n), nearest_caption=np.asarray([f"c{i}" for i in range(n)]),
                nearest_cosine=np.full(n, 0.5, np.float32), image_change_rms=np.float32(0.1),
                format_version=distilled_set.FORMAT_VERSION,
                provenance_json=json.dumps(provenance))
  if objective == "lowrank":
    arrays["similarity"] = np.eye(n, dtype=np.float32)
    if lowrank_loss == "sigmoid":
      arrays["loss_bias"] = np.float32(-10.0)
  return arrays


def _write(path, arrays: dict, compressed: bool = False) -> str:
  """Writes `arrays` as a set file at `path` (its name ends in .npz)."""
  (np.savez_compressed if compressed else np.savez)(path, **arrays)
  return str(path)


def _provenance(arrays: dict, **changes) -> dict:
  """`arrays` with its provenance record updated by `changes`."""
  made = json.loads(str(arrays["provenance_json"]))
  return {**arrays, "provenance_json": json.dumps({**made, **changes})}


def _add_member(path: str, name: str, shape: tuple, dtype, data_bytes: int) -> None:
  """Appends a deflated .npy member whose header says `shape` and `dtype` but
  holds `data_bytes` zero bytes, streamed (never in memory at once)."""
  with zipfile.ZipFile(path, "a", compression=zipfile.ZIP_DEFLATED) as zf:
    with zf.open(name, "w", force_zip64=True) as f:
      np.lib.format.write_array_header_1_0(f, {
          "descr": np.lib.format.dtype_to_descr(np.dtype(dtype)),
          "fortran_order": False, "shape": shape})
      chunk = bytes(1 << 20)
      for start in range(0, data_bytes, len(chunk)):
        f.write(chunk[:data_bytes - start])


@pytest.mark.parametrize("objective,lowrank_loss", [
    ("plain", "wbce"), ("blend", "wbce"), ("lowrank", "wbce"), ("lowrank", "sigmoid")])
@pytest.mark.parametrize("compressed", [False, True])
def test_a_valid_set_loads_every_field(tmp_path, objective, lowrank_loss, compressed):
  arrays = _arrays(objective, lowrank_loss)
  path = _write(tmp_path / "set.npz", arrays, compressed)
  loaded = distilled_set.load_distilled(path)
  assert len(loaded) == N and loaded.objective == objective and loaded.lr_text == np.float32(0.02)
  assert sorted(loaded.arrays) == sorted(arrays)
  for key, value in arrays.items():
    np.testing.assert_array_equal(loaded.arrays[key], value, err_msg=key)
  # A file without a format version or provenance is not a set vldd_jax wrote.
  for field in ("format_version", "provenance_json"):
    other = {k: v for k, v in arrays.items() if k != field}
    with pytest.raises(distilled_set.DistilledFileError, match=f"old.npz: no {field}"):
      distilled_set.load_distilled(_write(tmp_path / "old.npz", other))


@pytest.mark.parametrize("lowrank_loss", ["wbce", "sigmoid"])
def test_exported_names_the_arrays_export_writes(lowrank_loss):
  cfg = ml_collections.ConfigDict({**DISTILL, "objective": "lowrank",
                                   "lowrank_loss": lowrank_loss})
  objective = objectives.build(cfg)
  arrays = objective.export(objective.init(5, jax.random.key(0)))
  assert {k: np.shape(v) for k, v in arrays.items()} == objective.exported(5)
  assert objectives.build(ml_collections.ConfigDict(DISTILL)).exported(5) == {}


def _replace(**fields):
  return lambda a: {**a, **fields}


def _drop(*fields):
  return lambda a: {k: v for k, v in a.items() if k not in fields}


def _rows(n):
  """Every per-pair field cut (or tiled) to `n` rows."""
  per_pair = ("images", "images_uint8", "text_emb", "init_rows", "nearest_caption",
              "nearest_cosine")
  return lambda a: {k: np.resize(v, (n,) + v.shape[1:]) if k in per_pair else v
                    for k, v in a.items()}


_IMAGES = _arrays()["images"]
# (case, arrays -> broken arrays, the refusal after "<path>: ").
MALFORMED = [
    ("5_texts_for_8_images", lambda a: {**a, "text_emb": a["text_emb"][:5]},
     r"text_emb has shape \(5, 6\) and dtype float32, expected \[8, 6\] floating"),
    ("no_pairs", _rows(0), r"images has shape \(0, 4, 4, 3\), expected \[N, H, H, 3\]"),
    ("3d_images", _replace(images=_IMAGES[..., 0]),
     r"images has shape \(8, 4, 4\), expected \[N, H, H, 3\]"),
    ("not_square", _replace(images=np.zeros((N, 4, 5, 3), np.float32)),
     r"images has shape \(8, 4, 5, 3\), expected \[N, H, H, 3\]"),
    ("float16_images", _replace(images=_IMAGES.astype(np.float16)),
     r"images has shape \(8, 4, 4, 3\) and dtype float16, expected \[8, 4, 4, 3\] float32"),
    ("string_images", _replace(images=_IMAGES.astype(str)),
     r"images has shape \(8, 4, 4, 3\) and dtype <U\d+, expected \[8, 4, 4, 3\] float32"),
    ("pickled_images", _replace(images=_IMAGES.astype(object)),
     r"images has dtype object, expected numbers or strings \(Python objects are never "
     r"unpickled\)"),
    ("float_uint8_images", _replace(images_uint8=_IMAGES),
     r"images_uint8 has shape \(8, 4, 4, 3\) and dtype float32, expected \[8, 4, 4, 3\] uint8"),
    ("1d_text", lambda a: {**a, "text_emb": a["text_emb"][:, 0]},
     r"text_emb has shape \(8,\), expected \[N, D\]"),
    ("short_captions", lambda a: {**a, "nearest_caption": a["nearest_caption"][:7]},
     r"nearest_caption has shape \(7,\) and dtype <U2, expected \[8\] string"),
    ("no_images", _drop("images"), r"not a distilled set, missing field\(s\) \['images'\]"),
    ("negative_rate", _replace(lr_image=np.float32(-0.1)),
     r"lr_image=-0.1\d*, expected a learned rate > 0"),
    ("zero_rate", _replace(lr_text=np.float32(0)), r"lr_text=0.0, expected a learned rate > 0"),
    ("infinite_rate", _replace(lr_image=np.float32(np.inf)),
     r"lr_image holds non-finite values"),
    ("nan_rate", _replace(lr_text=np.float32(np.nan)), r"lr_text holds non-finite values"),
    ("array_rate", _replace(lr_image=np.float32([0.1])),
     r"lr_image has shape \(1,\) and dtype float32, expected \[\] floating"),
    ("nan_pixel", lambda a: {**a, "images": np.where(np.arange(3) == 1, np.nan, a["images"])
                                                 .astype(np.float32)},
     r"images holds non-finite values"),
    ("inf_cosine", _replace(nearest_cosine=np.full(N, np.inf, np.float32)),
     r"nearest_cosine holds non-finite values"),
    ("float_version", _replace(format_version=1.0),
     r"format_version has shape \(\) and dtype float64, expected \[\] integer"),
    ("string_version", _replace(format_version="1"),
     r"format_version has shape \(\) and dtype <U1, expected \[\] integer"),
    ("old_version", _replace(format_version=0), r"format_version=0, expected 1"),
    ("no_provenance", _drop("provenance_json"), r"no provenance_json \(not a distilled set written by vldd_jax\)"),
    ("provenance_not_json", _replace(provenance_json="{objective: plain"),
     r"provenance_json is not valid JSON \(Expecting property name"),
    ("provenance_a_list", _replace(provenance_json="[1, 2]"),
     r"provenance_json is a JSON list, expected an object"),
    ("unknown_objective", lambda a: _provenance(a, objective="magic"),
     r"provenance_json.objective='magic', expected one of \['blend', 'ema', 'lowrank', 'plain'\]"),
    ("no_objective", lambda a: _provenance(a, objective=None),
     r"provenance_json.objective=None, expected one of"),
    ("no_distill", lambda a: _provenance(a, distill=None),
     r"provenance_json.distill is not the distill config of objective 'plain'"),
    ("lowrank_without_s", lambda a: _provenance(a, objective="lowrank",
                                                distill={**DISTILL, "objective": "lowrank"}),
     r"provenance_json.objective='lowrank' stores similarity \[8, 8\], but the file has "
     r"no similarity"),
    ("sigmoid_without_bias", lambda a: _drop("loss_bias")(_arrays("lowrank", "sigmoid")),
     r"provenance_json.objective='lowrank' stores loss_bias \[\], but the file has no "
     r"loss_bias"),
    ("s_of_other_size", lambda a: {**_arrays("lowrank"), "similarity": np.eye(5)},
     r"similarity has shape \(5, 5\) and dtype float64, expected \[8, 8\] floating"),
    ("stray_s_of_other_size", _replace(similarity=np.eye(3, dtype=np.float32)),
     r"similarity has shape \(3, 3\) and dtype float32, expected \[8, 8\] floating"),
    ("unknown_similarity_loss", lambda a: _provenance(
        _arrays("lowrank"), distill={**DISTILL, "objective": "lowrank",
                                     "lowrank_loss": "hinge"}),
     r"provenance_json.distill does not describe objective 'lowrank' \(ValueError: "
     r"distill.lowrank_loss='hinge'"),
]


@pytest.mark.parametrize("case,breaks,message", MALFORMED, ids=[m[0] for m in MALFORMED])
def test_a_malformed_set_is_refused_naming_the_file_and_field(tmp_path, case, breaks,
                                                              message):
  path = _write(tmp_path / f"{case}.npz", breaks(_arrays()))
  for reader in (distilled_set.read, distilled_set.load_distilled):
    with pytest.raises(ValueError) as error:
      reader(path)
    assert str(error.value).startswith(f"{path}: "), str(error.value)
    assert error.match(message)
    assert isinstance(error.value, distilled_set.DistilledFileError)
    # Not a workdir's own set: nothing to rerun, nothing to delete.
    assert "rerun" not in str(error.value).lower()
    assert "delete" not in str(error.value) and "remove" not in str(error.value)


def test_a_malformed_set_in_a_workdir_says_to_rerun_distill(tmp_path):
  folder = tmp_path / "work" / "distill" / "n8_lowrank"
  os.makedirs(folder)
  path = _write(folder / workdir_lib.DISTILLED, _arrays(objective="lowrank") | {"lr_text": -1.0})
  with pytest.raises(ValueError,
                     match=r"lr_text=-1.0, expected a learned rate > 0. Rerun stage distill"):
    distilled_set.load(str(tmp_path / "work"), 8, "lowrank")
  with open(path, "r+b") as f:
    f.truncate(200)  # As by a full disk.
  with pytest.raises(ValueError,
                     match=r"n8_lowrank/distilled.npz is damaged \(BadZipFile.*Rerun stage "
                           r"distill with the same settings"):
    distilled_set.read(path)


def test_a_missing_path_a_folder_and_a_damaged_copy_each_say_what_they_are(tmp_path):
  with pytest.raises(FileNotFoundError, match=r"nothing.npz not found: no distilled set"):
    distilled_set.load_distilled(str(tmp_path / "nothing.npz"))
  with pytest.raises(IsADirectoryError, match=r"is a directory, not a distilled set file"):
    distilled_set.load_distilled(str(tmp_path))
  path = _write(tmp_path / "copy.npz", _arrays())
  with open(path, "r+b") as f:
    f.truncate(300)
  with pytest.raises(ValueError) as error:
    distilled_set.load_distilled(path)
  assert error.match(r"copy.npz is damaged \(BadZipFile.*\). Copy it again from the "
                     r"workdir that made it")
  assert "rerun" not in str(error.value).lower()


def test_a_member_is_refused_by_its_declared_size_before_it_is_decompressed(tmp_path):
  # A deflated unknown field of 128 MiB of zeros: a file of a few hundred kB.
  bomb = _write(tmp_path / "bomb.npz", _arrays())
  _add_member(bomb, "padding.npy", (1 << 27,), np.uint8, 1 << 27)
  assert os.path.getsize(bomb) < 1 << 20
  # nearest_cosine of 4M rows in a set of 8 pairs (16 MiB of zeros).
  long = _write(tmp_path / "long.npz", _drop("nearest_cosine")(_arrays()))
  _add_member(long, "nearest_cosine.npy", (1 << 22,), np.float32, 1 << 24)
  for path, message in ((bomb, r"padding declares 134217728 bytes uncompressed, over the "
                                r"limit of 67108864 for a field of that kind"),
                        (long, r"nearest_cosine has shape \(4194304,\) and dtype float32, "
                                r"expected \[8\] floating")):
    tracemalloc.start()
    try:
      with pytest.raises(ValueError, match=message):
        distilled_set.load_distilled(path)
      peak = tracemalloc.get_traced_memory()[1]
    finally:
      tracemalloc.stop()
    assert peak < 4 << 20, (path, peak)  # Nothing decompressed past the headers.


@pytest.mark.parametrize("data_bytes", [32 + 1000, 16])
def test_a_member_larger_or_smaller_than_its_header_says_is_refused(tmp_path, data_bytes):
  path = _write(tmp_path / "set.npz", _drop("nearest_cosine")(_arrays()))
  _add_member(path, "nearest_cosine.npy", (N,), np.float32, data_bytes)
  with pytest.raises(ValueError,
                     match=rf"{path}: nearest_cosine declares {128 + data_bytes} bytes "
                           r"uncompressed, but its header's shape \(8,\) and dtype float32 "
                           r"make 160"):
    distilled_set.load_distilled(path)


def test_a_member_over_the_size_limit_is_refused(tmp_path, monkeypatch):
  path = _write(tmp_path / "set.npz", _arrays())
  monkeypatch.setattr(distilled_set, "MAX_MEMBER_BYTES", 1000)
  with pytest.raises(ValueError,
                     match=r"images declares 1536 bytes uncompressed \(shape \(8, 4, 4, 3\), "
                           r"dtype float32\), over the limit of 1000"):
    distilled_set.load_distilled(path)


def test_evaluation_names_missing_provenance_and_a_foreign_text_width(tmp_path):
  config = tiny_config(str(tmp_path))
  no_text = _write(tmp_path / "no_text.npz", _provenance(_arrays(), text={}))
  distilled = distilled_set.load_distilled(no_text)
  ours = text.fingerprint(None, config.text.pooling, config.text.max_length)
  with pytest.raises(ValueError,
                     match=r"no_text.npz: provenance_json has no text.fingerprint"):
    distilled.check_compatible(config, no_text, ours)
  size = config.data.image_size
  made = _provenance(_arrays(size=size), image={"size": size}, text={
      "fingerprint": ours,
      "folder": "encoder", "pooling": config.text.pooling,
      "max_length": config.text.max_length})
  path = _write(tmp_path / "narrow.npz", made)
  distilled_set.load_distilled(path).check_compatible(config, path, ours)
  with pytest.raises(ValueError, match=r"narrow.npz: text_emb of width 6, but this data's "
                                       r"text embeddings have width 384"):
    evaluate.file_pairs(config, path, 384)


# --- Export ---------------------------------------------------------------------------


def _files(folder: str) -> dict[str, bytes]:
  """Every file under `folder`, by relative path."""
  return {os.path.relpath(os.path.join(root, name), folder):
          open(os.path.join(root, name), "rb").read()
          for root, _, names in os.walk(folder) for name in names}


def test_export_refuses_a_malformed_set(tmp_path):
  from vldd_jax import export  # Imports TFDS.
  path = _write(tmp_path / "set.npz", MALFORMED[0][1](_arrays()))
  with pytest.raises(ValueError, match=r"text_emb has shape \(5, 6\)"):
    export.export(path, str(tmp_path / "out"))
  assert not (tmp_path / "out").exists()


def test_export_never_mixes_two_sets_and_repeats_as_a_no_op(tmp_path):
  from vldd_jax import export
  first = _write(tmp_path / "first.npz", _arrays("lowrank", "sigmoid"))
  out = str(tmp_path / "out")
  folder = export.export(first, out)
  written = _files(folder)
  # Another set of the same size: refused, the first set's arrays and rates kept.
  second = _write(tmp_path / "second.npz", _arrays(seed=1) | {"lr_image": np.float32(0.5)})
  with pytest.raises(ValueError, match=rf"{folder} is not empty and is not an export of "
                                       rf"{second} .*export into another out_dir"):
    export.export(second, out)
  assert _files(folder) == written
  # The same file again: the same folder, untouched.
  assert export.export(first, out) == folder and _files(folder) == written
  assert sorted(os.listdir(os.path.dirname(folder))) == ["1.0.0"]
  sidecar = json.load(open(os.path.join(folder, export.SIDECAR)))
  assert sidecar["source_sha256"] == checksums.file_sha256(first)
  assert sidecar["learned"] == {"loss_bias": -10.0}  # What the objective exported.


def test_a_learned_similarity_exports_one_row_of_s_per_pair(tmp_path):
  from vldd_jax import export
  import tensorflow_datasets as tfds
  arrays = _arrays("lowrank", "sigmoid")
  arrays["similarity"] = np.random.default_rng(3).normal(size=(N, N)).astype(np.float32)
  folder = export.export(_write(tmp_path / "set.npz", arrays), str(tmp_path / "out"))
  source = tfds.builder_from_directory(folder).as_data_source()["train"]
  rows = np.stack([example["similarity"] for example in source.__getitems__(range(N))])
  np.testing.assert_array_equal(rows, arrays["similarity"])  # Row i of S: [image i, texts].


def test_a_killed_export_leaves_nothing_that_blocks_a_rerun(tmp_path):
  from vldd_jax import export
  import tensorflow_datasets as tfds
  path = _write(tmp_path / "set.npz", _arrays())
  out = str(tmp_path / "out")
  dying = (  # Killed (SIGKILL) while writing the 4th example.
      "import os, signal\nfrom vldd_jax import export\n"
      "examples = export.DistilledPairs._generate_examples\n"
      "def dying(self):\n"
      "  for i, example in enumerate(examples(self)):\n"
      "    if i == 3:\n      os.kill(os.getpid(), signal.SIGKILL)\n"
      "    yield example\n"
      "export.DistilledPairs._generate_examples = dying\n"
      f"export.export({path!r}, {out!r})\n")
  result = subprocess.run([sys.executable, "-c", dying], cwd=ROOT, env=subprocess_env(),
                          capture_output=True, text=True, timeout=300)
  assert result.returncode == -signal.SIGKILL, result.stderr[-2000:]
  assert os.path.isdir(out)
  assert not os.path.exists(os.path.join(out, "distilled_pairs", "n8", "1.0.0"))
  folder = export.export(path, out)
  leftovers = [p for p in _files(out) if "incomplete" in p or "tmp" in p]
  assert not leftovers, leftovers
  assert sorted(os.listdir(os.path.dirname(folder))) == ["1.0.0"]
  pairs = tfds.builder_from_directory(folder).as_data_source()["train"]
  np.testing.assert_array_equal(np.stack([p["text_emb"] for p in pairs.__getitems__(
      range(N))]), _arrays()["text_emb"])


def test_a_distilled_file_round_trips_with_its_provenance(distilled, tmp_path):
  config, workdir = distilled
  path = os.path.join(distilled_set.set_dir(workdir, 8), workdir_lib.DISTILLED)
  loaded = vldd_jax.load_distilled(path)
  raw = np.load(path)
  for key in raw.files:  # Every field, bitwise.
    np.testing.assert_array_equal(loaded.arrays[key], raw[key], err_msg=key)
  np.testing.assert_array_equal(loaded.images, raw["images"])
  assert loaded.format_version == distilled_set.FORMAT_VERSION and len(loaded) == 8
  assert loaded.lr_image == float(raw["lr_image"]) and loaded.objective == "plain"
  made = loaded.provenance
  assert made["text"]["fingerprint"] == text.fingerprint(None, config.text.pooling,
                                                         config.text.max_length)
  assert made["text"]["folder"] and made["image"] == {"size": 32, "pixel_mean": 0.5,
                                                      "pixel_std": 0.5}
  assert made["iterations"] == config.distill.iterations
  assert made["model"]["vit"]["width"] == config.model.vit.width
  assert made["dataset"]["num_train"] == config.data.num_train
  assert np.isfinite(made["metrics"]["final_matching_loss"])
  newer = tmp_path / "newer.npz"
  np.savez(newer, **{**raw, "format_version": distilled_set.FORMAT_VERSION + 1})
  with pytest.raises(ValueError, match=r"format_version=2.*upgrade vldd_jax"):
    vldd_jax.load_distilled(str(newer))
