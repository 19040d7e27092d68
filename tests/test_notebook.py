"""launch/colab_demo.ipynb runs top to bottom on CPU (tiny config, for speed)."""
import os

import nbformat
from nbclient import NotebookClient

from conftest import ROOT


def test_colab_demo_runs_the_pipeline_and_shows_its_outputs(tmp_path, monkeypatch):
  monkeypatch.setenv("VLDD_DEMO_WORKDIR", str(tmp_path / "work"))
  # The demo's own default is `:quick` (about 3 minutes on 2 CPU cores); the
  # cells and outputs are the same with `:tiny`.
  monkeypatch.setenv("VLDD_DEMO_CONFIG", "configs/shapes.py:tiny")
  monkeypatch.setenv("JAX_PLATFORMS", "cpu")
  monkeypatch.setenv("JAX_DISABLE_MOST_OPTIMIZATIONS", "true")
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
  assert len(tables) == 1 and "| distilled | 8 |" in tables[0]
  assert "| full train split (experts) | 64 |" in tables[0]
