"""Wall time and peak kernel memory of each lesson notebook, for the instructor guide and class sizing.

    python benchmarks/bench_lessons.py [notebooks/00_ai_microscope.ipynb ...] [--json FILE]

Each notebook runs top to bottom in a fresh kernel on one thread (as the test suite runs it), with
outputs discarded. A thread polls the kernel's resident memory (RSS, children included) every 0.2 s.
Machines differ, so each time is also printed as a ratio to a warm SmolLM2 load measured in the same
run: a teacher can scale the table by timing one `load()` on the lab's machines.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
from pathlib import Path

import nbformat
import psutil
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parent.parent


def _tree_rss(pid: int) -> int:
    try:
        process = psutil.Process(pid)
        return sum(p.memory_info().rss for p in [process, *process.children(recursive=True)])
    except psutil.Error:
        return 0


def run(path: Path) -> dict:
    """Execute one notebook; return wall seconds and peak kernel RSS in MiB."""
    os.environ["OMP_NUM_THREADS"] = "1"
    nb = nbformat.read(path, as_version=4)
    client = NotebookClient(nb, timeout=1800, kernel_name="python3", resources={"metadata": {"path": str(path.parent)}})
    peak, stop = [0], threading.Event()

    def poll():
        while not stop.is_set():
            manager = client.km  # set while execute() runs
            pid = getattr(getattr(manager, "provisioner", None), "process", None) if manager else None
            if pid is not None:
                peak[0] = max(peak[0], _tree_rss(pid.pid))
            stop.wait(0.2)

    watcher = threading.Thread(target=poll, daemon=True)
    start = time.perf_counter()
    watcher.start()
    client.execute()
    seconds = time.perf_counter() - start
    stop.set()
    watcher.join()
    return {"notebook": str(path.relative_to(ROOT)), "seconds": round(seconds, 1), "peak_mib": round(peak[0] / 2**20)}


def warm_load_seconds() -> float:
    sys.path.insert(0, str(ROOT))
    from helpers.models import timed_load

    timed_load("smollm2")  # make sure the cache exists
    return timed_load("smollm2")[1]


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("paths", nargs="*", type=Path)
    parser.add_argument("--json", type=Path, help="also write the table as JSON")
    args = parser.parse_args()
    paths = [p.resolve() for p in args.paths] or sorted((ROOT / "notebooks").glob("*.ipynb")) + sorted(
        (ROOT / "exercises").glob("*.ipynb"))
    baseline = warm_load_seconds()
    print(f"baseline: a warm SmolLM2 load takes {baseline:.2f} s here")
    print(f"{'notebook':48s} {'seconds':>8s} {'x load':>7s} {'peak MiB':>9s}")
    rows = []
    for path in paths:
        row = run(path)
        row["x_load"] = round(row["seconds"] / baseline, 1)
        rows.append(row)
        print(f"{row['notebook']:48s} {row['seconds']:8.1f} {row['x_load']:7.1f} {row['peak_mib']:9d}", flush=True)
    if args.json:
        args.json.write_text(json.dumps({"baseline_load_s": round(baseline, 2), "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
