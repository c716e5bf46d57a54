"""notebooks/explore.ipynb runs headlessly (nbclient, kernel ``python3``) against the session's
etcd, every cell without error, and its outputs show what it promises (and no password)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from rx_discovery.embedded import EmbeddedEtcd

nbclient = pytest.importorskip("nbclient")
nbformat = pytest.importorskip("nbformat")
pytest.importorskip("ipykernel")


ROOT = Path(__file__).resolve().parents[2]
NOTEBOOK = ROOT / "notebooks" / "explore.ipynb"


def _outputs_text(notebook: Any) -> str:
    return json.dumps([cell.get("outputs", []) for cell in notebook.cells])


def test_explore_notebook_runs(etcd: EmbeddedEtcd, unique_prefix: str,
                               monkeypatch: pytest.MonkeyPatch) -> None:
    # The kernel is a child process: it inherits this environment.
    for name in [n for n in os.environ if n.startswith("ETCD_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("ETCD_HOSTS", etcd.endpoint)
    monkeypatch.setenv("ETCD_PREFIX", unique_prefix)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(
        filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    client = nbclient.NotebookClient(
        notebook, timeout=60, kernel_name="python3", allow_errors=False,
        resources={"metadata": {"path": str(NOTEBOOK.parent)}})

    client.execute()  # raises CellExecutionError if any cell fails

    text = _outputs_text(notebook)
    assert "<table>" in text                      # HostSet._repr_html_
    assert "Registration" in text                 # a Registration repr
    assert "api-4.example" in text                # the live view was updated
    assert "debounced update" in text
    assert "closed" in text
    assert "not-shown" not in text                # the db password never appears
