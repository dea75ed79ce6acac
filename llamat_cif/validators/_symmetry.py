"""Space-group objects kept alive between parses.

pymatgen builds a ``SpaceGroup``'s operations by closing the generators under multiplication with
``allclose`` comparisons: ~1 s for Fd-3m (4 s on a loaded machine), and its instance cache is a
``WeakValueDictionary``, so the work is repeated for every CIF that gives only a Hermann-Mauguin
symbol (the project's canonical CIFs do). Holding a strong reference per symbol here makes every
later ``CifParser`` call on that symbol hit pymatgen's cache.
"""

from __future__ import annotations

import re
from functools import cache, lru_cache
from typing import Any

_HM_TAG = re.compile(
    r"^\s*_(?:symmetry_space_group_name_H[-_]M|space_group_name_H-M_alt)_?\s+(.+?)\s*$",
    re.MULTILINE | re.IGNORECASE,
)


@cache
def _encodings() -> dict[str, str]:
    from pymatgen.symmetry.groups import SYMM_DATA

    return {re.sub(r"[\s_]", "", k): k for k in SYMM_DATA["space_group_encoding"]}


@lru_cache(maxsize=2048)  # bounded: hostile texts can name any number of non-groups
def spacegroup(symbol: str) -> Any:
    """The pymatgen ``SpaceGroup`` for a symbol as CIFs write it (``None`` when unknown)."""
    from pymatgen.symmetry.groups import SpaceGroup

    key = _encodings().get(re.sub(r"[\s_]", "", symbol.strip().strip("'\"")))
    if key is None:
        return None
    try:
        return SpaceGroup(key)
    except Exception:  # noqa: BLE001
        return None


def keep_alive_for(text: str) -> None:
    """Build (once per process) the space groups a CIF text names, before pymatgen parses it."""
    for m in _HM_TAG.finditer(text[:20000]):
        spacegroup(m.group(1)[:40])
