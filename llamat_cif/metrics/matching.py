"""Structure matching: the matcher presets as pymatgen objects and first-match duplicates.

The tolerances live in :mod:`llamat_cif.protocol` (``SUN_MATCHER``: ``ltol=0.2, stol=0.3,
angle_tol=5``, pymatgen's defaults, for S.U.N. uniqueness and novelty; ``CSP_MATCHER``: ``stol=0.5,
angle_tol=10, ltol=0.3`` for CSP match rates). Results name the matcher by reading its tolerances back
from the matcher object (:func:`llamat_cif.protocol.matcher_label`), so a record cannot drift from the
matcher that produced the numbers.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from typing import Any

from llamat_cif.protocol import SUN_MATCHER


def structure_matcher(**kw: Any):
    """pymatgen ``StructureMatcher`` with ``kw``; with none, the S.U.N. preset (``SUN_MATCHER``)."""
    from pymatgen.analysis.structure_matcher import StructureMatcher

    return StructureMatcher(**(kw or SUN_MATCHER))


def unique_representatives(ids: Sequence[str], structures: Sequence, *, matcher: Any = None) -> dict[str, str]:
    """Map every id to the id of the first structure (input order) it matches.

    Structures are compared only within one reduced formula, which is what makes it scale. A
    structure is unique when it maps to itself. ``None`` structures map to themselves.

    Args:
        ids: one id per structure.
        structures: pymatgen ``Structure`` objects (None: absent).
        matcher: a ``StructureMatcher``; None: the S.U.N. preset (:func:`structure_matcher`).
    """
    sm = matcher or structure_matcher()
    by_formula: dict[str, list[int]] = defaultdict(list)
    rep = {str(i): str(i) for i in ids}
    for k, s in enumerate(structures):
        if s is not None:
            by_formula[s.composition.reduced_formula].append(k)
    for members in by_formula.values():
        kept: list[int] = []
        for k in members:
            for j in kept:
                if sm.fit(structures[j], structures[k]):
                    rep[str(ids[k])] = str(ids[j])
                    break
            else:
                kept.append(k)
    return rep


__all__ = ["structure_matcher", "unique_representatives"]
