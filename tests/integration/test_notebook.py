"""notebooks/explore.ipynb runs headlessly (nbclient, kernel ``python3``) against the session's
etcd, every cell without error, and its outputs show what it promises (and no password); the
executed notebook, exported to HTML by nbconvert, is rendered by a real headless browser
(Debian's chromium), whose DOM holds the live view's table and chart and whose screenshot is
not blank."""

from __future__ import annotations

import json
import os
import re
import shutil
import struct
import subprocess
import zlib
from pathlib import Path
from typing import Any

# dev dependencies (the notebook extra): imported, never skipped, so a broken install fails
# here instead of leaving the notebook untested
import ipykernel  # noqa: F401  (the kernel nbclient starts)
import nbclient
import nbconvert
import nbformat
import pytest

from rx_discovery.embedded import EmbeddedEtcd

ROOT = Path(__file__).resolve().parents[2]
NOTEBOOK = ROOT / "notebooks" / "explore.ipynb"


def _outputs_text(notebook: Any) -> str:
    return json.dumps([cell.get("outputs", []) for cell in notebook.cells])


def _execute(etcd: EmbeddedEtcd, unique_prefix: str, monkeypatch: pytest.MonkeyPatch) -> Any:
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
    return notebook


def test_explore_notebook_runs(etcd: EmbeddedEtcd, unique_prefix: str,
                               monkeypatch: pytest.MonkeyPatch) -> None:
    notebook = _execute(etcd, unique_prefix, monkeypatch)

    text = _outputs_text(notebook)
    assert "<table>" in text                      # HostSet._repr_html_
    assert "Registration" in text                 # a Registration repr
    assert "debounced update" in text
    assert "closed" in text
    assert "not-shown" not in text                # the db password never appears
    [view] = [output for cell in notebook.cells
              if cell.cell_type == "code" and "live(d," in cell.source
              for output in cell.outputs]
    shown = view["data"]["text/html"]             # the live view, as last updated
    assert 'class="rx-hosts"' in shown and "white-space:nowrap" in shown
    assert "api-4.example" in shown and "http=8084" in shown
    assert "<i>no hosts</i>" in shown             # the cache service
    assert 'data-state="connected"' in shown
    assert shown.count('class="rx-series"') == 3  # api, db and cache in the chart


CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                  "--no-first-run", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync"]


def _chromium(page: Path, profile: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["chromium", *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *args,
                           page.as_uri()], capture_output=True, text=True, timeout=120,
                          check=False)


def _png_pixels(path: Path) -> bytes:
    """The decompressed scanlines of a PNG (enough to tell a blank page from a drawn one)."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    chunks, offset = [], 8
    while offset < len(data):
        (length,) = struct.unpack(">I", data[offset:offset + 4])
        kind = data[offset + 4:offset + 8]
        if kind == b"IDAT":
            chunks.append(data[offset + 8:offset + 8 + length])
        offset += 12 + length
    return zlib.decompress(b"".join(chunks))


def test_executed_notebook_renders_in_a_headless_browser(
        etcd: EmbeddedEtcd, unique_prefix: str, monkeypatch: pytest.MonkeyPatch,
        tmp_path: Path) -> None:
    if shutil.which("chromium") is None:
        pytest.skip("chromium is not installed (.ci/run installs it: apt-get install chromium)")
    notebook = _execute(etcd, unique_prefix, monkeypatch)
    page = tmp_path / "explore.html"
    body, _ = nbconvert.HTMLExporter().from_notebook_node(notebook)
    page.write_text(body)

    dom = _chromium(page, tmp_path / "profile-dom", "--dump-dom")
    assert dom.returncode == 0, dom.stderr
    assert re.search(r'<table[^>]*class="rx-hosts"', dom.stdout)
    assert "api-4.example" in dom.stdout and "no hosts" in dom.stdout
    assert re.search(r'<svg[^>]*class="rx-chart"', dom.stdout)
    assert len(re.findall(r'<polyline[^>]*class="rx-series"', dom.stdout)) == 3

    screenshot = tmp_path / "explore.png"
    shot = _chromium(page, tmp_path / "profile-shot", f"--screenshot={screenshot}",
                     "--window-size=1000,4000", "--hide-scrollbars")
    assert shot.returncode == 0 and screenshot.exists(), shot.stderr
    pixels = _png_pixels(screenshot)
    assert len(set(pixels)) > 50                  # text, table and chart: not a blank page
    shutil.copy(screenshot, os.environ.get("RX_DISCOVERY_SCREENSHOT", os.devnull))
