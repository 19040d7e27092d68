"""Loads Hugging Face `ViTModel` safetensors into our ViT's parameters (pool="cls")."""
import os
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
import safetensors.numpy
from flax import traverse_util

from vldd_jax import hf_checkpoint

# Our sub-module path -> HF module name inside `encoder.layer.{i}`.
_LAYER_MODULES = {
    "ln_before": "layernorm_before",
    "attention/q": "attention.attention.query",
    "attention/k": "attention.attention.key",
    "attention/v": "attention.attention.value",
    "attention/out": "attention.output.dense",
    "ln_after": "layernorm_after",
    "mlp/fc1": "intermediate.dense",
    "mlp/fc2": "output.dense",
}


def _expected(raw: dict) -> dict[str, tuple[str, tuple[int, ...]]]:
  """Our leaf path -> (HF key without prefix, HF shape), from config.json."""
  d, p, m = raw["hidden_size"], raw["patch_size"], raw["intermediate_size"]
  c = raw.get("num_channels", 3)
  tokens = (raw["image_size"] // p) ** 2 + 1
  expected = {
      "embedding/kernel": ("embeddings.patch_embeddings.projection.weight", (d, c, p, p)),
      "embedding/bias": ("embeddings.patch_embeddings.projection.bias", (d,)),
      "cls": ("embeddings.cls_token", (1, 1, d)),
      "pos_embedding": ("embeddings.position_embeddings", (1, tokens, d)),
      "encoder_norm/scale": ("layernorm.weight", (d,)),
      "encoder_norm/bias": ("layernorm.bias", (d,)),
  }
  linear_shapes = {"mlp/fc1": (m, d), "mlp/fc2": (d, m)}  # PyTorch [out, in].
  for i in range(raw["num_hidden_layers"]):
    for ours, hf in _LAYER_MODULES.items():
      key, path = f"encoder.layer.{i}.{hf}", f"encoderblock_{i}/{ours}"
      if ours.startswith("ln_"):
        expected[f"{path}/scale"] = (f"{key}.weight", (d,))
        expected[f"{path}/bias"] = (f"{key}.bias", (d,))
      else:
        out_in = linear_shapes.get(ours, (d, d))
        expected[f"{path}/kernel"] = (f"{key}.weight", out_in)
        expected[f"{path}/bias"] = (f"{key}.bias", out_in[:1])
  return expected


def _to_ours(path: str, value: np.ndarray) -> np.ndarray:
  if path == "embedding/kernel":  # Conv [out, in, kh, kw] -> [kh, kw, in, out].
    value = value.transpose(2, 3, 1, 0)
  elif path.endswith("/kernel"):  # Linear [out, in] -> Dense [in, out].
    value = value.T
  return np.ascontiguousarray(value, np.float32)


def _prefix(tensors: dict[str, np.ndarray], file: str) -> str:
  for prefix in ("", "vit."):
    if f"{prefix}embeddings.cls_token" in tensors:
      return prefix
  raise ValueError(f"{file}: no 'embeddings.cls_token' or 'vit.embeddings.cls_token'; "
                   "not a Hugging Face ViT checkpoint?")


def load_hf_vit(path: str, target: dict | None = None) -> dict:
  """Maps a HF `ViTModel` checkpoint onto our ViT parameters.

  Args:
    path: a folder with `model.safetensors` and `config.json`, or a .safetensors
      file with `config.json` beside it. Keys may carry a `vit.` prefix; pooler
      and classifier weights are ignored.
    target: optional ViT params (e.g. `params["img"]` of a model built from
      `hf_checkpoint.vit_config(path)`); the loaded weights replace its base leaves, and
      its LoRA factors are kept.

  Returns:
    The ViT parameter tree (float32 arrays).

  Raises:
    ValueError: naming every missing key, or every tensor whose shape differs
      from config.json or from `target`.
  """
  if target is None:
    return traverse_util.unflatten_dict(_read(path)[0], sep="/")
  return hf_vit_grafter(path)(target)


def hf_vit_grafter(path: str) -> Callable[[dict], dict]:
  """`lambda target: load_hf_vit(path, target)` with the file read and checked
  once: every target it grafts shares the same loaded arrays (one copy of the
  tower for all of a run's students)."""
  loaded, image_size = _read(path)
  return lambda target: _graft(loaded, target, image_size)


def _read(path: str) -> tuple[dict[str, jax.Array], int]:
  """({our leaf path: float32 array}, the checkpoint's image size), checked."""
  weights_file, _ = hf_checkpoint.paths(path)
  raw = hf_checkpoint.read_config(path)
  if not os.path.isfile(weights_file):
    raise FileNotFoundError(f"{weights_file} not found (a Hugging Face ViT folder needs "
                            f"{hf_checkpoint.WEIGHTS_FILE} beside {hf_checkpoint.CONFIG_FILE}).")
  try:
    tensors = safetensors.numpy.load_file(weights_file)
  except Exception as e:  # SafetensorError names neither the file nor the cause.
    raise ValueError(f"{weights_file} is not a readable safetensors file "
                     f"({type(e).__name__}: {e}).") from e
  prefix = _prefix(tensors, weights_file)
  if not raw.get("qkv_bias", True):  # HF then has no q/k/v biases; ours stay zero.
    for i in range(raw["num_hidden_layers"]):
      for name in ("query", "key", "value"):
        tensors.setdefault(f"{prefix}encoder.layer.{i}.attention.attention.{name}.bias",
                           np.zeros(raw["hidden_size"], np.float32))
  expected = {ours: (prefix + key, shape) for ours, (key, shape) in _expected(raw).items()}
  missing = [key for key, _ in expected.values() if key not in tensors]
  if missing:
    raise ValueError(f"{weights_file}: missing {len(missing)} keys: {missing}")
  bad = [f"{key} is {tuple(tensors[key].shape)}, expected {shape}"
         for key, shape in expected.values() if tensors[key].shape != shape]
  if bad:
    raise ValueError(f"{weights_file}: shapes differ from {hf_checkpoint.CONFIG_FILE}: "
                     + "; ".join(bad))
  not_finite = [key for key, _ in expected.values()
                if not np.isfinite(np.asarray(tensors[key], np.float32)).all()]
  if not_finite:
    raise ValueError(f"{weights_file}: non-finite values (NaN or inf) in "
                     f"{len(not_finite)} tensors, e.g. {not_finite[:3]}.")
  return ({ours: jnp.asarray(_to_ours(ours, tensors[key]))
           for ours, (key, _) in expected.items()}, raw["image_size"])


def _graft(loaded: dict[str, jax.Array], target: dict, image_size: int) -> dict:
  """Replaces the base leaves of `target` by `loaded`, checking names and shapes."""
  flat = traverse_util.flatten_dict(target, sep="/")
  absent = sorted(loaded.keys() - flat.keys())
  if absent:
    raise ValueError(f"target ViT has no leaves {absent} (a HF ViT needs pool='cls' and "
                     "the depth in its config.json; see hf_checkpoint.vit_config).")
  unmatched = sorted(k for k in flat.keys() - loaded.keys()
                     if not k.endswith(("/lora_a", "/lora_b")))
  if unmatched:
    raise ValueError(f"target ViT leaves with no HF weight: {unmatched}")
  bad = [f"{k}: checkpoint {v.shape}, target {flat[k].shape}"
         for k, v in loaded.items() if v.shape != flat[k].shape]
  if bad:
    raise ValueError("Shape mismatch between checkpoint and target ViT (the checkpoint "
                     f"is for {image_size}x{image_size} images): " + "; ".join(bad))
  flat.update({k: jnp.asarray(v, flat[k].dtype) for k, v in loaded.items()})
  return traverse_util.unflatten_dict(flat, sep="/")
