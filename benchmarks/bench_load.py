"""Cold vs warm load of SmolLM2 through helpers.models.load, measured in one run.

    python benchmarks/bench_load.py

Cold: a fresh, empty MICROSCOPE_CACHE, so the first load verifies and dequantises the GGUF file.
Warm: a second process reading the cache the first one wrote. Each load runs in its own
subprocess so neither benefits from the other's imports or page-cached Python modules beyond
what a learner's second session would; the times are for `load()` alone and for the whole
process (interpreter start and imports included).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CHILD = (
    "import json, time\n"
    "from helpers.models import timed_load\n"
    "model, seconds = timed_load('smollm2')\n"
    "print(json.dumps({'load_s': seconds, 'layers': model.cfg.n_layers}))\n"
)
ROOT = Path(__file__).resolve().parent.parent


def timed_child(cache: str) -> tuple[float, float]:
    """(seconds inside load(), seconds for the whole subprocess)."""
    env = {**os.environ, "MICROSCOPE_CACHE": cache}
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", CHILD], cwd=ROOT, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"load failed:\n{done.stderr}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    return result["load_s"], wall


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="microscope-cache-") as cache:
        cold_load, cold_wall = timed_child(cache)
        warm_load, warm_wall = timed_child(cache)
    print(f"{'':6s} {'load() s':>9s} {'process s':>10s}")
    print(f"{'cold':6s} {cold_load:9.2f} {cold_wall:10.2f}")
    print(f"{'warm':6s} {warm_load:9.2f} {warm_wall:10.2f}")
    print(f"warm load is {cold_load / warm_load:.1f}x faster than cold (whole process: {cold_wall / warm_wall:.1f}x)")


if __name__ == "__main__":
    main()
