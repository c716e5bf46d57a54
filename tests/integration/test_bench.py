"""The benchmark suite runs end to end in quick mode and writes a complete JSON report.

No timing is asserted: only that every benchmark ran and produced numbers.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


BENCHMARKS = ["latency", "throughput", "snapshot", "registrations", "failure", "fanout",
              "memory", "recovery", "calling", "scale", "burst"]


@pytest.mark.timeout(150)
def test_quick_benchmark_writes_every_result(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    completed = subprocess.run(
        [sys.executable, "-m", "bench", "--quick", "--out", str(out)], cwd=ROOT, env=env,
        capture_output=True, text=True, timeout=120)
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]
    report = json.loads(out.read_text())

    assert report["mode"] == "quick"
    machine = report["machine"]
    for field in ("cpu_model", "cores", "python", "etcd"):
        assert machine[field], field
    assert set(report["benchmarks"]) == set(BENCHMARKS)
    for name, bench in report["benchmarks"].items():
        assert bench["error"] is None, (name, bench["error"])
        assert isinstance(bench["ours"], (int, float)), name
        assert bench["metrics"], name
        for metric in bench["metrics"]:
            assert {"name", "unit", "ours", "raw", "ratio", "target", "pass"} <= set(metric)
            assert metric["ours"] is None or math.isfinite(metric["ours"]), (name, metric)
        assert any(isinstance(m["ours"], (int, float)) for m in bench["metrics"]), name
        assert any(m["raw"] is not None for m in bench["metrics"]), name  # side by side
