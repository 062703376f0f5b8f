"""The README's test command runs this: unit tests and every notebook (nbval), in parallel.

    python -m tests.run [extra pytest args]

pytest's closing line ("N passed ... in T s") is the whole suite's wall time; nothing is printed
after it, so CI reads it as the last line. Exits non-zero if any test fails or none ran.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def main(extra: list[str]) -> int:
    workers = os.environ.get("MICROSCOPE_TEST_WORKERS", str(min(2, os.cpu_count() or 1)))
    notebooks = [d for d in ("notebooks", "solutions", "exercises") if any((ROOT / d).glob("*.ipynb"))]
    command = [
        sys.executable, "-m", "pytest", "tests", *notebooks,
        "--nbval", "--nbval-current-env", "--nbval-cell-timeout=900",
        "--nbval-sanitize-with", "tests/nbval_sanitize.cfg",
        "-n", workers, "--dist", "loadfile", "--no-loadscope-reorder", "-q", "-rfEs", *extra,
    ]
    print("+", " ".join(command[1:]), flush=True)
    # Torch threads: one per worker, so parallel notebooks do not fight over the cores.
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    code = subprocess.call(command, cwd=ROOT, env=env)
    return 1 if code == 5 else code  # 5 = no tests collected: a broken suite, not a pass


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
