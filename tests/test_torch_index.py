"""Which torch build ./course installs: the CPU build on Linux without an NVIDIA GPU, with an opt-out."""
from __future__ import annotations

import pytest

from helpers.torch_index import CPU_INDEX, choose


def _never():
    raise AssertionError("the index must not be probed here")


def test_linux_without_gpu_gets_the_cpu_index():
    assert choose("auto", "Linux", False, lambda: True)[0] == CPU_INDEX


def test_linux_with_an_nvidia_gpu_keeps_pypi_unless_told_cpu():
    assert choose("auto", "Linux", True, _never)[0] is None
    assert choose("cpu", "Linux", True, lambda: True)[0] == CPU_INDEX


def test_macos_and_windows_need_nothing():
    assert choose("auto", "Darwin", False, _never)[0] is None
    assert choose("cpu", "Windows", False, _never)[0] is None


def test_opt_out_and_unreachable_index_fall_back_to_pip_defaults():
    assert choose("pypi", "Linux", False, _never)[0] is None
    index, why = choose("auto", "Linux", False, lambda: False)
    assert index is None and "cannot be reached" in why


def test_unknown_setting_is_refused():
    with pytest.raises(ValueError, match="MICROSCOPE_TORCH"):
        choose("gpu", "Linux", False, _never)
