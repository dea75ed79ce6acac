"""One home for the records written beside every result: package versions and the machine.

Every stage writes which packages and which hardware produced its numbers (``metrics.json``,
``validity_summary.json``, ``stability_summary.json``, ``train_config.json``, text ``config.json``);
they all read them here, each naming the packages that matter to it.
"""

from __future__ import annotations

import os
import platform
from collections.abc import Iterable
from importlib import metadata
from pathlib import Path
from typing import Any


def package_versions(packages: Iterable[str], *, missing: Any = None, python: bool = False) -> dict[str, Any]:
    """``{package: version}`` for the installed distributions among ``packages``.

    Args:
        packages: distribution names (``"llamat-cif"``, ``"torch"``...), in the order to record.
        missing: the value recorded for one that is not installed (``None``, or e.g. a text).
        python: also record the Python version (key ``"python"``, first).
    """
    out: dict[str, Any] = {"python": platform.python_version()} if python else {}
    for pkg in packages:
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            out[pkg] = missing
    return out


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``), else what ``platform`` knows, else ``""``."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or ""


def hardware(**extra: Any) -> dict[str, Any]:
    """Platform, machine, CPU model and count (plus ``extra`` entries such as the torch device)."""
    return {"platform": platform.platform(), "machine": platform.machine(), "cpu": cpu_model(),
            "cpu_count": os.cpu_count(), **extra}


__all__ = ["cpu_model", "hardware", "package_versions"]
