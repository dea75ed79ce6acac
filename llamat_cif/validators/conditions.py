"""Condition adherence: did a conditional generation produce what was asked for?"""

from __future__ import annotations

import math
from typing import Any

from llamat_cif.validators.result import CheckResult


def normalize_target_formula(value: Any) -> str | None:
    """A target formula as a reduced formula, ``None`` when absent (empty, NaN)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    s = str(value).strip()
    if not s or s.lower() in ("nan", "none"):
        return None
    from pymatgen.core import Composition

    return Composition(s).reduced_formula


def normalize_target_spacegroup(value: Any) -> int | None:
    """A target space group as its number (1-230), ``None`` when absent.

    Accepts a number, a numeric string or a Hermann-Mauguin symbol.
    """
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    s = str(value).strip()
    if not s or s.lower() in ("nan", "none"):
        return None
    try:
        n = int(float(s))
    except ValueError:
        from pymatgen.symmetry.groups import SpaceGroup

        n = SpaceGroup(s).int_number
    if not 1 <= n <= 230:
        raise ValueError(f"space group number {n} outside 1-230")
    return n


def condition_adherence(
    structure,
    *,
    target_formula: str | None = None,
    target_spacegroup: int | str | None = None,
    symprec: float = 0.1,
    detected_spacegroup: int | None = None,
) -> CheckResult:
    """Whether a structure meets the requested composition and/or space group.

    Args:
        structure: the generated structure (``None`` when it did not parse: fails any request).
        target_formula: requested formula; met when the reduced formulas are equal (so Na2Cl2 meets
            NaCl, and a supercell of the request counts).
        target_spacegroup: requested space-group number (or symbol); met when spglib at ``symprec``
            finds that number.
        symprec: spglib tolerance (Å).
        detected_spacegroup: reuse a space group already computed with the same ``symprec``.

    Returns:
        ``ok`` is ``None`` when nothing was requested; ``details`` holds ``formula_match`` and
        ``spacegroup_match`` (each ``None`` when not requested).
    """
    d: dict[str, Any] = {"formula_match": None, "spacegroup_match": None}
    problems: list[str] = []
    try:
        tf = normalize_target_formula(target_formula)
    except Exception as exc:  # noqa: BLE001 - a bad target is reported, not raised
        return CheckResult(False, f"unreadable target formula {target_formula!r}: {exc}", d)
    try:
        tsg = normalize_target_spacegroup(target_spacegroup)
    except Exception as exc:  # noqa: BLE001
        return CheckResult(False, f"unreadable target space group {target_spacegroup!r}: {exc}", d)
    d["target_formula"], d["target_spacegroup"] = tf, tsg
    if tf is None and tsg is None:
        return CheckResult(None, "no condition requested", d)
    if structure is None:
        d["formula_match"] = False if tf is not None else None
        d["spacegroup_match"] = False if tsg is not None else None
        return CheckResult(False, "structure did not parse", d)
    if tf is not None:
        got = structure.composition.reduced_formula
        d["formula_match"] = got == tf
        if got != tf:
            problems.append(f"formula {got} != target {tf}")
    if tsg is not None:
        if detected_spacegroup is None:
            from llamat_cif.validators.consistency import detect_spacegroup

            detected_spacegroup = detect_spacegroup(structure, symprec=symprec)
        d["spacegroup_match"] = detected_spacegroup == tsg
        if detected_spacegroup != tsg:
            problems.append(f"space group {detected_spacegroup} != target {tsg}")
    if problems:
        return CheckResult(False, "; ".join(problems), d)
    return CheckResult(True, "meets every requested condition", d)
