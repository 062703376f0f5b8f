"""Post-install steps: ``python -m helpers.setup [--check]``.

Installs the packages pyproject.toml lists under [tool.ai-microscope] no-deps (the SmolLM2 GGUF),
verifies and dequantises the model into the cache, and registers the Jupyter kernel. Each step is
skipped when already done, so running it twice costs about a second.
"""
from __future__ import annotations

import argparse
import importlib.metadata
import subprocess
import sys
import tomllib
from pathlib import Path

from helpers import models

ROOT = Path(__file__).resolve().parent.parent
KERNEL_NAME = "ai-microscope"


def no_deps_requirements() -> list[str]:
    """The pinned packages to install without their dependencies, from pyproject.toml."""
    with open(ROOT / "pyproject.toml", "rb") as handle:
        return tomllib.load(handle)["tool"]["ai-microscope"]["no-deps"]


def _installed(requirement: str) -> bool:
    name, _, version = requirement.partition("==")
    try:
        return importlib.metadata.version(name) == version
    except importlib.metadata.PackageNotFoundError:
        return False


def install_no_deps() -> None:
    missing = [r for r in no_deps_requirements() if not _installed(r)]
    if missing:
        print(f"installing {', '.join(missing)} (--no-deps)")
        subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", *missing], check=True)


def register_kernel() -> None:
    prefix = Path(sys.prefix)
    if (prefix / "share" / "jupyter" / "kernels" / KERNEL_NAME / "kernel.json").exists():
        return
    subprocess.run([sys.executable, "-m", "ipykernel", "install", "--sys-prefix", "--name", KERNEL_NAME,
                    "--display-name", "AI microscope (Python 3.11)"], check=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.parse_args()
    install_no_deps()
    models.build_smollm2_cache()
    register_kernel()
    print(f"ready: SmolLM2 cached in {models.smollm2_cache_dir()}, kernel '{KERNEL_NAME}' registered")


if __name__ == "__main__":
    main()
