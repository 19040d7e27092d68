"""docs/configs.md's defaults column says what `configs/shapes.py` gives."""
import os
import re

import pytest

from vldd_jax import config_lib

from conftest import ROOT

# Rows whose default is a description rather than values.
DESCRIBED = ("model.vit.*",)


def _rows():
  """(fields, default cell) of every row of the table of docs/configs.md."""
  text = open(os.path.join(ROOT, "docs", "configs.md"), encoding="utf-8").read()
  for line in text.splitlines():
    cells = [c.strip() for c in line.strip().strip("|").split("|")]
    if len(cells) != 3 or not cells[0].startswith("`"):
      continue
    names = re.findall(r"`([^`]+)`", cells[0])
    section = names[0].rpartition(".")[0]
    fields = [n if "." in n or not section else f"{section}.{n}" for n in names]
    yield fields, cells[1]


def _values(cell: str, count: int) -> list[str]:
  """The cell's `count` values: before any parenthesis, link or arrow."""
  cell = re.split(r" \(|\s→", cell)[0]
  values = [v.strip().strip("`") for v in re.split(r" / |, ", cell)]
  return values if len(values) == count else [cell.strip()]


def _same(documented: str, value) -> bool:
  if isinstance(value, bool) or value is None:
    return documented == str(value)
  if isinstance(value, (int, float)):
    try:
      return float(documented) == float(value)
    except ValueError:
      return False
  if isinstance(value, tuple):
    return [v.strip().strip("`") for v in documented.split(",")] == [str(v) for v in value]
  return documented == value or (documented == '""' and value == "")


def test_every_documented_default_is_the_codes():
  config = config_lib.load_config(os.path.join(ROOT, "configs/shapes.py"))
  checked = 0
  for fields, cell in _rows():
    if fields[0] in DESCRIBED:
      continue
    if len(fields) > 1 and fields[0] in ("evaluate.methods", "compare.budgets"):
      fields = fields[:1]
    values = _values(cell, len(fields))
    if len(fields) > 1 and len(values) == 1:
      pytest.fail(f"docs/configs.md: {fields} has {cell!r}: one value per field expected")
    for field, documented in zip(fields, values):
      if len(fields) == 1 and isinstance(config_lib.get_field(config, field), tuple):
        documented = cell.split(" (")[0]
      value = config_lib.get_field(config, field)
      assert _same(documented, value), (
          f"docs/configs.md says {field} defaults to {documented!r}; the code: {value!r}")
      checked += 1
  assert checked > 50
