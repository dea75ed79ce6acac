"""One home for the numbers that define a protocol, and for the records written beside results.

Thresholds used by several stages live here once: CDVAE's validity floors (a *convention*, not
physics: :mod:`llamat_cif.physics` holds the physical contact scale), the E_hull lines of
"metastable" and "stable", and the tolerances of the two ``StructureMatcher`` presets, S.U.N. and
CSP (:func:`matcher_label` records what a matcher object holds, so a record cannot drift from it).
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
from types import MappingProxyType
from typing import Any

#: CDVAE structural validity: every pair of sites at least this far apart (Å)
CDVAE_MIN_DISTANCE = 0.5
#: CDVAE structural validity: cell volume at least this (Å^3)
CDVAE_MIN_VOLUME = 0.1
#: metastable: E_hull below this (eV/atom; LLaMat, Gruver et al.)
E_HULL_METASTABLE = 0.1
#: stable: E_hull at or below this (eV/atom)
E_HULL_STABLE = 0.0
#: pymatgen ``StructureMatcher`` tolerances of S.U.N. uniqueness and novelty (MatterGen; pymatgen's
#: own defaults), compared within one reduced formula
SUN_MATCHER = MappingProxyType({"ltol": 0.2, "stol": 0.3, "angle_tol": 5.0})
#: pymatgen ``StructureMatcher`` tolerances of CSP match rates and CIF round trips (CDVAE, DiffCSP)
CSP_MATCHER = MappingProxyType({"stol": 0.5, "angle_tol": 10.0, "ltol": 0.3})
#: the tolerances a matcher record names, in the order written by default
MATCHER_TOLERANCES = ("ltol", "stol", "angle_tol")


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


def matcher_tolerances(matcher: Any, keys: Iterable[str] = MATCHER_TOLERANCES) -> dict[str, float]:
    """``{tolerance: value}`` read from a pymatgen ``StructureMatcher`` object (``ltol``, ``stol``, ``angle_tol``)."""
    return {k: getattr(matcher, k) for k in keys}


def matcher_label(matcher: Any, keys: Iterable[str] = MATCHER_TOLERANCES) -> str:
    """``"StructureMatcher(ltol=0.2, stol=0.3, angle_tol=5)"``, read from the matcher object."""
    tol = ", ".join(f"{k}={v:g}" for k, v in matcher_tolerances(matcher, keys).items())
    return f"StructureMatcher({tol})"


def environment_info(packages: Iterable[str]) -> dict[str, Any]:
    """The stability record: ``packages``' versions, the Python version, machine, processor, CPU count."""
    return {"versions": package_versions(packages), "python": platform.python_version(),
            "machine": platform.machine(), "processor": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count()}


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


__all__ = ["CDVAE_MIN_DISTANCE", "CDVAE_MIN_VOLUME", "CSP_MATCHER", "E_HULL_METASTABLE", "E_HULL_STABLE",
           "MATCHER_TOLERANCES", "SUN_MATCHER", "cpu_model", "environment_info", "hardware", "matcher_label",
           "matcher_tolerances", "package_versions"]
