"""notebooks/quickstart.ipynb runs top to bottom on CPU (small settings)."""

from __future__ import annotations

from pathlib import Path

import pytest

NOTEBOOK = Path(__file__).parents[1] / "notebooks" / "quickstart.ipynb"


@pytest.mark.slow
def test_quickstart_notebook_executes(tmp_path, monkeypatch):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    monkeypatch.setenv("SEGKIT_QUICKSTART_FAST", "1")
    monkeypatch.setenv("MPLBACKEND", "Agg")
    # the kernel imports this checkout's segkit, whichever checkout the venv was installed from
    monkeypatch.setenv("PYTHONPATH", str(NOTEBOOK.parents[1]))
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbclient.NotebookClient(
        nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    ).execute()
    outputs = "\n".join(
        str(out.get("text", "")) + str(out.get("data", {}).get("text/plain", ""))
        for cell in nb.cells
        if cell.cell_type == "code"
        for out in cell.outputs
    )
    assert "images predicted" in outputs  # the folder was predicted
    assert "agree on" in outputs  # ONNX ran and matched the checkpoint
    assert (tmp_path / "quickstart-out" / "model.onnx").is_file()
    assert any((tmp_path / "quickstart-out" / "predictions").glob("*_overlay.png"))
