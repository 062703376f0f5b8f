"""Which PyTorch build `./course` installs: the CPU build on Linux machines without an NVIDIA GPU.

On Linux, PyPI's torch wheel is the CUDA build (the wheel plus NVIDIA libraries: several GB per
machine); PyTorch's own CPU index serves the same version as a ~190 MB wheel that the course runs on
just as well. ``python -m helpers.torch_index`` prints the extra pip index to use, or nothing.
Standard library only: it runs before anything is installed.

    MICROSCOPE_TORCH=auto  (default) CPU build on Linux when no NVIDIA GPU is found
    MICROSCOPE_TORCH=cpu   always the CPU build (Linux)
    MICROSCOPE_TORCH=pypi  whatever pip's configured indexes serve (opt out)
"""
from __future__ import annotations

import os
import platform
import shutil
import socket
import sys
from urllib.parse import urlparse

CPU_INDEX = "https://download.pytorch.org/whl/cpu"
CHOICES = ("auto", "cpu", "pypi")


def has_nvidia_gpu() -> bool:
    """An NVIDIA driver is present (nvidia-smi on PATH, or the kernel module's /proc entry)."""
    return shutil.which("nvidia-smi") is not None or os.path.exists("/proc/driver/nvidia/version")


def reachable(url: str, timeout: float = 3.0) -> bool:
    """One quick TCP connection to the index's host: an unreachable index must not stall the install."""
    host = urlparse(url).hostname or ""
    try:
        socket.create_connection((host, 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def choose(setting: str, system: str, nvidia: bool, index_reachable) -> tuple[str | None, str]:
    """(extra index URL or None, a sentence saying why). `index_reachable` is called only if needed."""
    setting = (setting or "auto").lower()
    if setting not in CHOICES:
        raise ValueError(f"MICROSCOPE_TORCH={setting!r}: use one of {', '.join(CHOICES)}")
    if setting == "pypi":
        return None, "MICROSCOPE_TORCH=pypi: torch from pip's configured indexes"
    if system != "Linux":
        return None, f"{system}: PyPI's torch wheel is already the CPU build"
    if setting == "auto" and nvidia:
        return None, "an NVIDIA GPU is present: torch from PyPI (CUDA build); MICROSCOPE_TORCH=cpu to override"
    if not index_reachable():
        return None, "PyTorch's CPU index cannot be reached: torch from pip's configured indexes"
    return CPU_INDEX, "Linux without an NVIDIA GPU: PyTorch's CPU build (MICROSCOPE_TORCH=pypi to opt out)"


def main() -> int:
    try:
        index, why = choose(os.environ.get("MICROSCOPE_TORCH", "auto"), platform.system(), has_nvidia_gpu(),
                            lambda: reachable(CPU_INDEX))
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"torch: {why}", file=sys.stderr)
    if index:
        print(index)
    return 0


if __name__ == "__main__":
    sys.exit(main())
