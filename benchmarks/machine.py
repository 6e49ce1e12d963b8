"""The machine a benchmark ran on, as the result files name it."""

from __future__ import annotations

import platform
from pathlib import Path


def processor() -> str:
    """The CPU's model name (Linux: ``/proc/cpuinfo``'s first "model name"), else what :mod:`platform` knows:
    results measured on different CPUs of one architecture must not read alike."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name" and value.strip():
                return value.strip()
    except OSError:  # not Linux
        pass
    return platform.processor() or platform.machine()
