"""launch/colab_demo.ipynb runs top to bottom on CPU with the quick config."""
import os

import nbformat
from nbclient import NotebookClient

from conftest import ROOT


def test_colab_demo_runs_the_quick_pipeline(tmp_path, monkeypatch):
  monkeypatch.setenv("VLDD_DEMO_WORKDIR", str(tmp_path / "work"))
  monkeypatch.setenv("VLDD_DEMO_CONFIG", "configs/shapes.py:quick")
  monkeypatch.setenv("JAX_PLATFORMS", "cpu")
  # Optimised code: unoptimised distillation steps take 30x longer.
  monkeypatch.delenv("JAX_DISABLE_MOST_OPTIMIZATIONS", raising=False)
  notebook = nbformat.read(os.path.join(ROOT, "launch", "colab_demo.ipynb"), as_version=4)
  # Raises CellExecutionError, with the failing cell, if any cell fails.
  NotebookClient(notebook, timeout=900, kernel_name="python3",
                 resources={"metadata": {"path": ROOT}}).execute()
  outputs = [o for cell in notebook.cells if cell.cell_type == "code"
             for o in cell.get("outputs", [])]
  text = "".join(o.get("text", "") for o in outputs if o.output_type == "stream")
  assert "Found CPU: 1 device(s)" in text
  assert "learned student rates: image" in text
  data = [o["data"] for o in outputs if o.output_type == "display_data"]
  assert any("image/png" in d for d in data)
  tables = [d["text/markdown"] for d in data if "text/markdown" in d]
  assert len(tables) == 1 and "| distilled | 100 |" in tables[0]
  assert "| full train split (experts) | 800 |" in tables[0]
