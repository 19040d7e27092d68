"""A Hugging Face ViT checkpoint's files and what its config.json says: read
by config files (no flax) and by `models.hf_vit`, which loads the weights."""
import json
import os

import ml_collections

WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
_REQUIRED_CONFIG = ("hidden_size", "num_hidden_layers", "num_attention_heads",
                    "intermediate_size", "patch_size", "image_size")


def paths(path: str) -> tuple[str, str]:
  """(weights file, config file) for a folder or a .safetensors file."""
  if not os.path.exists(path):
    raise FileNotFoundError(f"Hugging Face ViT not found: {path} (a folder with "
                            f"{WEIGHTS_FILE} and {CONFIG_FILE}, or a .safetensors file "
                            f"with {CONFIG_FILE} beside it).")
  if os.path.isdir(path):
    return os.path.join(path, WEIGHTS_FILE), os.path.join(path, CONFIG_FILE)
  return path, os.path.join(os.path.dirname(path), CONFIG_FILE)


def read_config(path: str) -> dict:
  """The config.json of the HF ViT at `path`, checked for what loading it needs."""
  _, config_file = paths(path)
  if not os.path.isfile(config_file):
    raise FileNotFoundError(f"HF ViT config not found: {config_file} (it must sit next "
                            "to the safetensors file).")
  try:
    with open(config_file, encoding="utf-8") as f:
      raw = json.load(f)
  except (json.JSONDecodeError, UnicodeDecodeError) as e:
    raise ValueError(f"{config_file} is not valid JSON ({e}): not a Hugging Face "
                     "ViT config.") from e
  if not isinstance(raw, dict):
    raise ValueError(f"{config_file} holds a {type(raw).__name__}, expected a JSON object.")
  absent = [k for k in _REQUIRED_CONFIG if k not in raw]
  if absent:
    raise ValueError(f"{config_file}: missing keys {absent}")
  act = raw.get("hidden_act", "gelu")
  if act != "gelu":
    raise ValueError(f"{config_file}: hidden_act {act!r} is not supported (only 'gelu').")
  return raw


def vit_config(path: str) -> ml_collections.ConfigDict:
  """The `model.vit` fields that match a HF ViT checkpoint (folder or .safetensors).

  The checkpoint's `image_size` (in `config.json`) fixes the position
  embeddings: build the model for images of that size.
  """
  raw = read_config(path)
  return ml_collections.ConfigDict(dict(
      patch=raw["patch_size"], width=raw["hidden_size"], depth=raw["num_hidden_layers"],
      heads=raw["num_attention_heads"], mlp_dim=raw["intermediate_size"], pool="cls",
      ln_eps=raw.get("layer_norm_eps", 1e-12)))
