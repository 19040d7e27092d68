"""Stage `compare`: every method at every budget, the paper's Table 1 on our data.

For each budget in `compare.budgets` and each method in `evaluate.methods`
(distilled sets, with or without a learned similarity matrix, and the
coresets of `coreset.py`), one row from the same `evaluate.method_row` as the
results table. A missing distilled set is distilled first (stage `distill`,
from the same experts): `distill_sets` is how the orchestrators (this stage and
`pipeline`) make sets; evaluation only evaluates them.

Outputs in the workdir: `compare.json` (rows as in `results.json`, written
after every cell, so a rerun computes only the missing cells; the cells stage
`evaluate` scored with the same settings are taken from `results.json`), `compare.md`
(tr@1 and ir@1 by method and budget, then every recall) and `compare.png`.
Changing a field of an objective (e.g. `distill.lowrank_*`,
`distill.meta_lr_lowrank` of LoRS's) recomputes only the cells of its sets; any
other change of settings is refused.
"""
import os
import time

import jax
import ml_collections
import tqdm
from absl import logging

from vldd_jax import coreset
from vldd_jax import distill
from vldd_jax import distilled_set
from vldd_jax import evaluate
from vldd_jax import jsonfile
from vldd_jax import objectives
from vldd_jax import preemption
from vldd_jax import provenance
from vldd_jax import viz
from vldd_jax import workdir_lib
from vldd_jax.data import input_pipeline



def settings(config: ml_collections.ConfigDict) -> dict:
  """What every cell's numbers depend on besides its method and budget."""
  # The objectives' fields: each distilled cell records its own
  # (`objective_settings`) instead of the table.
  ignore = ("distill.num_pairs", "distill.objective", "evaluate.methods",
            *(f"distill.{name}" for name in objectives.all_fields()))
  return provenance.settings(config, "compare", ignore)


def objective_settings(config: ml_collections.ConfigDict, method: str) -> dict:
  """What a distilled cell depends on beyond `settings`: its objective's fields."""
  fields = objectives.OBJECTIVES[objectives.methods()[method]].fields
  return {name: config.distill[name] for name in fields}


def load_rows(path: str, config: ml_collections.ConfigDict) -> list[dict]:
  """Finished cells of an earlier run with the same settings; [] if none.

  Distilled cells made with other settings of their objective are left out
  (recomputed), with a warning.
  """
  if not os.path.exists(path):
    return []
  saved = jsonfile.read(path)
  provenance.check(saved.get("settings", {}), settings(config), path,
                   "move it away to start a new comparison, or rerun with the "
                   "settings it records.")
  return _current(saved["rows"], config, path)


def _current(rows: list[dict], config: ml_collections.ConfigDict, path: str) -> list[dict]:
  """`rows` of `path` less the distilled cells made with other settings of
  their objective, each left out with a warning (recomputed)."""
  distilled = objectives.methods()
  stale = [r for r in rows if r["method"] in distilled
           and r.get("objective_settings") != objective_settings(config, r["method"])]
  for row in stale:
    logging.warning("%s: recomputing the %s cell at budget %d, made with other "
                    "settings of its objective (now %s).", path, row["method"],
                    row["budget"], objective_settings(config, row["method"]))
  return [r for r in rows if r not in stale]


def evaluated_rows(workdir: str, config: ml_collections.ConfigDict) -> list[dict]:
  """Cells stage `evaluate` scored already: the rows of `results.json` (at
  `distill.num_pairs`) made with compare's settings, distilled ones with their
  objective's too; [] if none. They are `evaluate.method_row`'s rows, which
  compare would compute again with the same seeds."""
  path = os.path.join(workdir, workdir_lib.RESULTS)
  if not os.path.exists(path):
    return []
  saved = jsonfile.read(path)
  try:
    made_with = ml_collections.ConfigDict(saved["config"])
    if settings(made_with) != settings(config):
      return []
    rows = [r for r in saved["rows"] if r["method"] in config.evaluate.methods
            and r["budget"] in config.compare.budgets]
    # Tagged as compare's own cells are, for the same check of their objective.
    rows = [{**r, "objective_settings": objective_settings(made_with, r["method"])}
            if r["method"] in objectives.methods() else r for r in rows]
  except (KeyError, TypeError, AttributeError) as e:  # Edited or of an older version.
    logging.warning("%s: not read for compare's cells (%r); computing them.", path, e)
    return []
  return _current(rows, config, path)


def pivot_table(rows: list[dict], key: str) -> str:
  """Markdown: one row per method, one column per budget, `key` mean ± std."""
  budgets = sorted({r["budget"] for r in rows})
  methods = list(dict.fromkeys(r["method"] for r in rows))
  cell = {(r["method"], r["budget"]): evaluate.format_cell(r, key) for r in rows}
  lines = [f"| {key} | " + " | ".join(f"{b} pairs" for b in budgets) + " |",
           "|---|" + "---:|" * len(budgets)]
  lines += [f"| {m} | " + " | ".join(cell.get((m, b), "–") for b in budgets) + " |"
            for m in methods]
  return "\n".join(lines)


def _write(workdir: str, rows: list[dict], config: ml_collections.ConfigDict) -> None:
  jsonfile.write(os.path.join(workdir, workdir_lib.COMPARE_RESULT),
                 {"rows": rows, "settings": settings(config)})


def distill_sets(config: ml_collections.ConfigDict, workdir: str, budgets, methods,
                 split: input_pipeline.Split,
                 selector: coreset.Selector | None = None) -> None:
  """Distills the sets that the distilled ones of `methods` evaluate at `budgets`
  (stage `distill` keeps finished ones), their coreset starts from `selector`
  if given."""
  for budget in budgets:
    for method in methods:
      spec = distilled_set.SetSpec.of_row(config, method, budget, split)
      if spec is not None:
        distill.run(spec.config(config), workdir, selector)


def run(config: ml_collections.ConfigDict, workdir: str) -> None:
  """Fills `compare.json` cell by cell, then writes the tables and the plot."""
  methods, budgets = config.evaluate.methods, config.compare.budgets
  evaluate.check_methods(methods)
  rows = load_rows(os.path.join(workdir, workdir_lib.COMPARE_RESULT), config)
  done = {(r["method"], r["budget"]) for r in rows}
  taken = [r for r in evaluated_rows(workdir, config) if (r["method"], r["budget"]) not in done]
  if taken:
    logging.info("compare: %d cells from %s (stage evaluate, the same settings).",
                 len(taken), os.path.join(workdir, workdir_lib.RESULTS))
    rows += taken
    done |= {(r["method"], r["budget"]) for r in taken}
    _write(workdir, rows, config)
  train, test, val = evaluate.load_splits(config, workdir)
  selector = coreset.Selector(config, workdir, train)
  cells = [(b, m) for b in budgets for m in methods if (m, b) not in done]
  with preemption.StopOnSigterm() as stop:  # SIGTERM: stop after the cell saved.
    for budget, method in tqdm.tqdm(cells, desc="compare"):
      started = time.perf_counter()
      distill_sets(config, workdir, (budget,), (method,), train, selector)
      distilled = time.perf_counter()
      row = evaluate.method_row(config, workdir, method, budget, selector, test, val)
      # Where a table's time goes: distilling its sets or training its students.
      logging.info("compare: the (%s, %d pairs) cell in %.1f s, %.1f s of it distilling.",
                   method, budget, time.perf_counter() - started, distilled - started)
      if method in objectives.methods():
        row["objective_settings"] = objective_settings(config, method)
      rows.append(row)
      _write(workdir, rows, config)
      stop.stop_if_requested(f"the cell ({method}, {budget} pairs); saved "
                             f"{os.path.join(workdir, workdir_lib.COMPARE_RESULT)}")
  wanted = [r for r in rows if r["budget"] in budgets and r["method"] in methods]
  wanted.sort(key=lambda r: (methods.index(r["method"]), r["budget"]))
  table = "\n\n".join([pivot_table(wanted, "tr@1"), pivot_table(wanted, "ir@1"),
                       evaluate.format_table(wanted)])
  print(table)
  jsonfile.write_text(os.path.join(workdir, workdir_lib.COMPARE_TABLE), table + "\n")
  if jax.process_index() == 0:
    viz.budget_plot(wanted, ("tr@1", "ir@1"),
                    os.path.join(workdir, workdir_lib.COMPARE_FIGURE))
  logging.info("Comparison of %d cells written to %s.", len(wanted), workdir)
