"""``python -m bench [--quick] [--only NAME[,NAME]] [--out PATH]``: run the benchmarks."""

from __future__ import annotations

import argparse
import datetime
import importlib
import json
import logging
import os
import platform
import subprocess
import sys
import threading
import time
import traceback
from importlib import metadata
from typing import Any

from rich.console import Console
from rich.table import Table

from bench.common import BenchResult, Context
from rx_discovery.embedded import EmbeddedEtcd, etcd_binary

BENCHMARKS = ["latency", "throughput", "snapshot", "registrations", "failure", "fanout",
              "memory", "recovery", "calling", "scale", "burst"]
DEFAULT_OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results",
                           "latest.json")


def machine_info() -> dict[str, Any]:
    cpu = platform.processor() or "unknown"
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    try:
        etcd_version = subprocess.run([etcd_binary(), "--version"], capture_output=True,
                                      text=True, timeout=10).stdout.splitlines()[0]
        etcd_version = etcd_version.split(":", 1)[1].strip()
    except Exception:
        etcd_version = "unknown"

    def version(dist: str) -> str:
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            return "not installed"

    return {
        "cpu_model": cpu, "cores": os.cpu_count(), "python": platform.python_version(),
        "platform": platform.platform(), "etcd": etcd_version,
        "reactivex": version("reactivex"), "python3-etcd3": version("python3-etcd3"),
        "grpcio": version("grpcio"), "protobuf": version("protobuf"),
    }


def _quiet_dead_raw_watchers() -> None:
    """python3-etcd3's watcher thread dies with NameError ('six') when its stream ends (server
    restart, client close): that is the raw client's known bug, reported in the recovery
    notes, not an error of this run."""
    default = threading.excepthook

    def hook(args: threading.ExceptHookArgs) -> None:
        if args.exc_type is NameError and "six" in str(args.exc_value):
            return
        default(args)

    threading.excepthook = hook


def _fmt(value: float | None, unit: str = "") -> str:
    if value is None or value != value:  # None or NaN
        return "-"
    if unit == "bool":
        return "yes" if value else "no"
    if abs(value) >= 1000:
        return f"{value:,.0f}"
    if abs(value) >= 100:
        return f"{value:.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    return f"{value:.3g}" if value else "0"


def render(console: Console, machine: dict[str, Any], results: list[BenchResult],
           mode: str, seconds: float) -> None:
    console.print(f"[bold]machine[/]: {machine['cpu_model']}, {machine['cores']} cores, "
                  f"Python {machine['python']}, etcd {machine['etcd']}, "
                  f"grpcio {machine['grpcio']}, reactivex {machine['reactivex']}, "
                  f"python3-etcd3 {machine['python3-etcd3']} ({mode}, {seconds:.0f} s)")
    table = Table(title="rx-discovery vs raw etcd3 (ratio = ours / raw)", show_lines=False)
    for column, justify in (("benchmark", "left"), ("metric", "left"), ("unit", "left"),
                            ("ours", "right"), ("raw", "right"), ("ratio", "right"),
                            ("target", "left"), ("", "center")):
        table.add_column(column, justify=justify)  # type: ignore[arg-type]
    for result in results:
        if result.error:
            table.add_row(result.title, f"[red]error: {result.error}[/]", "", "", "", "", "",
                          "[red]FAIL[/]")
            continue
        for index, metric in enumerate(result.metrics):
            verdict = {True: "[green]pass[/]", False: "[red]FAIL[/]", None: ""}[metric.passed]
            ratio = metric.ratio
            table.add_row(result.title if index == 0 else "", metric.name, metric.unit,
                          _fmt(metric.ours, metric.unit), _fmt(metric.raw, metric.unit),
                          f"{ratio:.2f}" if ratio is not None else "-", metric.target_text,
                          verdict, end_section=index == len(result.metrics) - 1)
    console.print(table)
    for result in results:
        for note in result.notes:
            console.print(f"[dim]{result.title}:[/] {note}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--quick", action="store_true",
                        help="small sizes (CI): proves it works, < 60 s")
    parser.add_argument("--only", default="",
                        help=f"comma-separated benchmarks to run: {', '.join(BENCHMARKS)}")
    parser.add_argument("--out", default=DEFAULT_OUT, help="JSON output path")
    args = parser.parse_args(argv)
    selected = [name.strip() for name in args.only.split(",") if name.strip()] or BENCHMARKS
    unknown = sorted(set(selected) - set(BENCHMARKS))
    if unknown:
        parser.error(f"unknown benchmark(s) {', '.join(unknown)}; known: {', '.join(BENCHMARKS)}")

    logging.basicConfig(level=logging.ERROR, format="%(levelname)s %(name)s: %(message)s")
    _quiet_dead_raw_watchers()
    console = Console(width=max(140, Console().width))
    mode = "quick" if args.quick else "full"
    machine = machine_info()
    started = time.perf_counter()
    results: list[BenchResult] = []
    with EmbeddedEtcd(name="bench") as etcd:
        for name in selected:
            module = importlib.import_module(f"bench.{name}")
            ctx = Context(etcd, args.quick)
            console.print(f"[dim]running {module.TITLE} ...[/]")
            begin = time.perf_counter()
            try:
                result = module.run(ctx)
            except Exception as error:
                traceback.print_exc()
                result = BenchResult(name, module.TITLE, error=f"{type(error).__name__}: {error}")
            finally:
                ctx.cleanup()
            result.seconds = time.perf_counter() - begin
            results.append(result)
            if not etcd.healthy():
                etcd.restart()
    seconds = time.perf_counter() - started
    render(console, machine, results, mode, seconds)
    report = {
        "generated": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "mode": mode, "seconds": round(seconds, 1), "machine": machine,
        "ratio": "ours / raw", "benchmarks": {r.name: r.to_json() for r in results},
    }
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as out:
        json.dump(_finite(report), out, indent=2, allow_nan=False)
        out.write("\n")
    console.print(f"wrote {args.out}")
    return 0 if all(r.error is None for r in results) else 1


def _finite(value: Any) -> Any:
    """NaN/inf (a measurement with no samples) become null in the JSON."""
    if isinstance(value, float) and (value != value or value in (float("inf"), float("-inf"))):
        return None
    if isinstance(value, dict):
        return {key: _finite(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(item) for item in value]
    return value


if __name__ == "__main__":
    sys.exit(main())
