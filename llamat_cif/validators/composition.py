"""Compositional validity as CDVAE defines it (charge neutrality with SMACT data).

CDVAE (Xie et al. 2022, ``cdvae/common/eval_utils.py: smact_validity``) calls a composition valid
when any of these holds:

1. it has a single element;
2. every element is in ``smact.metals`` (``include_alloys=True``: alloys count as valid);
3. some assignment of one oxidation state per element, drawn from SMACT's oxidation-state list,
   is charge neutral for the cell's element counts divided by their gcd, and passes the Pauling
   electronegativity test (``use_pauling_test=True``): every cation is less electronegative than
   every anion.

CDVAE pinned ``smact==2.2.1``, whose ``Element.oxidation_states`` is the 2014 SMACT list. SMACT >= 3
changed that default to an ICSD-derived list (``oxidation_states_icsd24``), which lowers the rate on
real data. Today's SMACT still carries the 2014 list (``oxidation_states_smact14``) but not exactly
as 2.2.1 had it: Ir's lowest state is -3 there (-2 in 2.2.1), and Zr's Pauling electronegativity
is 1.33 (2.2.1's table says 0.33). The default set ``"cdvae"`` therefore reads SMACT 2.2.1's own
oxidation states, electronegativities and metals list, shipped as data in
``llamat_cif/resources/smact_2.2.1.json`` (MIT licence, source and checksum inside), so the number
is CDVAE's; ``"smact14"`` (today's SMACT copy) and the other SMACT lists are named variants, and
the set used is recorded in every output.

CDVAE enumerates every oxidation-state combination (``itertools.product``), exponential in the number
of elements. Here the same answer comes from a subset-sum over cut points in electronegativity
order (cations below the cut, anions above), linear in the number of elements. Two corner cases of
smact 2.2.1 are reproduced by a capped enumeration instead: an element without a Pauling
electronegativity (Pm, Rn, Lr) made ``pauling_test`` raise ``TypeError`` on a cation-anion pair,
which CDVAE caught and counted as passing.
"""

from __future__ import annotations

import itertools
import math
import re
from functools import cache, lru_cache
from math import gcd

import numpy as np

from llamat_cif.validators.result import CheckResult

#: Name -> attribute of ``smact.Element`` holding that oxidation-state list.
OXIDATION_STATE_SETS: dict[str, str] = {
    "cdvae": "smact 2.2.1 data (llamat_cif/resources/smact_2.2.1.json)",  # exactly what CDVAE ran
    "smact14": "oxidation_states_smact14",  # today's SMACT copy of the 2014 list (Ir -3, Zr 1.33)
    "icsd16": "oxidation_states_icsd16",
    "icsd24": "oxidation_states_icsd24",  # the default of smact >= 3
    "pymatgen_sp": "oxidation_states_sp",
    "wiki": "oxidation_states_wiki",
}
#: "smact-default" means the default of the SMACT that CDVAE pinned (2.2.1), not of today's SMACT
#: (which would be icsd24): the point of the check is to reproduce CDVAE's numbers.
_ALIASES = {"smact-default": "cdvae", "default": "cdvae", "smact2": "cdvae", "smact221": "cdvae",
            "smact-2.2.1": "cdvae", "smact-2014": "smact14", "icsd": "icsd16", "sp": "pymatgen_sp",
            "smact3-default": "icsd24"}
#: the oxidation-state set of the CDVAE protocol (the validators' default)
CDVAE_SET = "cdvae"

#: Combinations beyond which the enumeration path (only used with elements that lack an
#: electronegativity) gives up and reports the composition invalid, as CDVAE's descendants do.
MAX_ENUMERATED_COMBINATIONS = 2_000_000


def resolve_oxidation_states(name: str) -> str:
    """Canonical name of an oxidation-state set (``smact14``, ``icsd16``, ``icsd24``, ...).

    Raises:
        ValueError: for an unknown name (the message lists the known ones).
    """
    key = _ALIASES.get(str(name).lower(), str(name).lower())
    if key not in OXIDATION_STATE_SETS:
        known = ", ".join(list(OXIDATION_STATE_SETS) + list(_ALIASES))
        raise ValueError(f"unknown oxidation-state set {name!r}; known: {known}")
    return key


@cache
def _smact221() -> dict:
    """SMACT 2.2.1's oxidation states, Pauling electronegativities and metals (shipped data)."""
    import json
    from importlib import resources

    return json.loads(resources.files("llamat_cif").joinpath("resources/smact_2.2.1.json").read_text())


@cache
def _metals() -> frozenset[str]:
    # the same list in SMACT 2.2.1 and today's SMACT (checked when the data file was made)
    return frozenset(_smact221()["metals"])


@lru_cache(maxsize=256)
def element_data(symbol: str, ox_set: str) -> tuple[tuple[int, ...], float | None]:
    """``(oxidation states, Pauling electronegativity)`` of an element from SMACT's tables.

    Raises:
        KeyError: SMACT has no data for the element (e.g. Z > 103).
    """
    if ox_set == CDVAE_SET:
        data = _smact221()
        if symbol not in data["oxidation_states"]:
            raise KeyError(symbol)
        return tuple(int(s) for s in data["oxidation_states"][symbol]), data["pauling_eneg"].get(symbol)
    import smact

    el = smact.Element(symbol)
    states = getattr(el, OXIDATION_STATE_SETS[ox_set]) or ()
    return tuple(int(s) for s in states), el.pauling_eneg


_SYMBOL = re.compile(r"[A-Z][a-z]?")


def _as_counts(composition) -> dict[str, float]:
    """Element -> amount from a pymatgen Composition/Structure, a formula string or a mapping."""
    from pymatgen.core import Composition, Structure

    if isinstance(composition, Structure):
        composition = composition.composition
    if isinstance(composition, str):
        composition = Composition(composition)
    if isinstance(composition, Composition):
        out: dict[str, float] = {}
        for sp, amt in composition.items():
            sym = getattr(sp, "symbol", None) or str(sp)
            m = _SYMBOL.match(sym)
            sym = m.group(0) if m else sym
            out[sym] = out.get(sym, 0.0) + float(amt)
        return out
    return {str(k): float(v) for k, v in dict(composition).items()}


def _reachable(allowed: list[list[int]], counts: list[int], cap: int) -> np.ndarray:
    """Boolean array r with r[s] = some choice of one value per element sums to s (0 <= s <= cap).

    ``allowed[i]`` holds non-negative charge magnitudes for element i (0 for a neutral state).
    """
    r = np.zeros(cap + 1, dtype=bool)
    r[0] = True
    for states, c in zip(allowed, counts, strict=True):
        new = np.zeros_like(r)
        for q in states:
            step = q * c
            if step <= cap:
                new[step:] |= r[: cap + 1 - step]
        r = new
        if not r.any():
            break
    return r


def _neutral_with_cut(states: list[tuple[int, ...]], enegs: list[float], counts: list[int]) -> bool:
    """Exact: does a neutral assignment exist where every cation is less electronegative than every anion?

    Sort elements by electronegativity. Any passing assignment has a largest cation
    electronegativity v; then every element with eneg <= v holds a cation or neutral state and every
    element above v an anion or neutral state. So try every cut v (and "no cation"): the cation
    charge reachable by the lower group must equal the anion charge reachable by the upper group.
    """
    order = sorted(range(len(states)), key=lambda i: enegs[i])
    cuts = sorted(set(enegs))
    cap = sum(max((abs(q) for q in s), default=0) * c for s, c in zip(states, counts, strict=True))
    for v in [-math.inf, *cuts]:
        lower = [i for i in order if enegs[i] <= v]
        upper = [i for i in order if enegs[i] > v]
        pos = _reachable([[q for q in states[i] if q >= 0] for i in lower], [counts[i] for i in lower], cap)
        neg = _reachable([[-q for q in states[i] if q <= 0] for i in upper], [counts[i] for i in upper], cap)
        if (pos & neg).any():
            return True
    return False


def _neutral_any(states: list[tuple[int, ...]], counts: list[int]) -> bool:
    """Does any assignment sum to zero (no electronegativity test)?"""
    cap = sum(max((abs(q) for q in s), default=0) * c for s, c in zip(states, counts, strict=True))
    r = np.zeros(2 * cap + 1, dtype=bool)
    r[cap] = True
    for s, c in zip(states, counts, strict=True):
        new = np.zeros_like(r)
        for q in s:
            step = q * c
            if step >= 0:
                new[step:] |= r[: len(r) - step]
            else:
                new[:step] |= r[-step:]
        r = new
    return bool(r[cap])


def _pauling_smact2(ox: tuple[int, ...], enegs: list[float | None]) -> bool:
    """smact 2.2.1 ``eneg_states_test`` as CDVAE ran it, including its ``TypeError`` -> pass."""
    for (o1, e1), (o2, e2) in itertools.combinations(zip(ox, enegs, strict=True), 2):
        if (o1 > 0 and o2 < 0) or (o1 < 0 and o2 > 0):
            if e1 is None or e2 is None:
                return True  # Python 3 raises TypeError comparing None; CDVAE catches it as "ok"
            if (o1 > 0 and e1 >= e2) or (o1 < 0 and e1 <= e2):
                return False
        elif e1 is None or e2 is None:
            return False
    return True


def _neutral_enumerated(states, enegs, counts, use_pauling_test: bool) -> bool | None:
    n = math.prod(len(s) for s in states)
    if n > MAX_ENUMERATED_COMBINATIONS:
        return None
    for ox in itertools.product(*states):
        if sum(o * c for o, c in zip(ox, counts, strict=True)) != 0:
            continue
        if not use_pauling_test or _pauling_smact2(ox, enegs):
            return True
    return False


def compositional_validity(
    composition,
    *,
    oxidation_states: str = CDVAE_SET,
    use_pauling_test: bool = True,
    include_alloys: bool = True,
) -> CheckResult:
    """CDVAE compositional validity (SMACT charge neutrality + Pauling electronegativity test).

    Args:
        composition: a pymatgen ``Composition`` or ``Structure``, a formula string, or a mapping
            element -> count. Counts must be whole numbers (atoms in a cell).
        oxidation_states: which SMACT data to draw from: ``"cdvae"`` (SMACT 2.2.1's own tables,
            what CDVAE ran), ``"smact14"`` (today's SMACT copy of that 2014 list), ``"icsd16"``,
            ``"icsd24"`` (default of smact >= 3), ``"pymatgen_sp"``, ``"wiki"``.
        use_pauling_test: require cations less electronegative than anions (CDVAE: True).
        include_alloys: compositions made only of ``smact.metals`` are valid (CDVAE: True).

    Returns:
        A :class:`CheckResult`; ``details`` holds ``elements``, ``counts`` (divided by their gcd)
        and the oxidation-state set.
    """
    ox_set = resolve_oxidation_states(oxidation_states)
    try:
        amounts = _as_counts(composition)
    except Exception as exc:  # noqa: BLE001 - a malformed formula is an invalid row, not a crash
        return CheckResult(False, f"unreadable composition: {type(exc).__name__}: {exc}", {"oxidation_states": ox_set})
    amounts = {k: v for k, v in amounts.items() if v > 0}
    details: dict = {"oxidation_states": ox_set}
    if not amounts:
        return CheckResult(False, "empty composition", details)
    if any(not math.isfinite(v) or abs(v - round(v)) > 1e-6 or round(v) < 1 for v in amounts.values()):
        return CheckResult(False, "non-integer element counts (partial occupancy?)", details)
    from pymatgen.core import Element

    try:
        # CDVAE orders elements by atomic number (sorted Counter keys of Z); the Pauling test's
        # pair order, and so its smact 2.2.1 quirks, depend on it.
        elems = sorted(amounts, key=lambda s: Element(s).Z)
    except ValueError as exc:
        return CheckResult(False, f"unknown element: {exc}", details)
    raw = [int(round(amounts[e])) for e in elems]
    g = 0
    for c in raw:
        g = gcd(g, c)
    counts = [c // g for c in raw]
    details.update(elements=elems, counts=counts)
    if len(elems) == 1:
        return CheckResult(True, "single element", details)
    if include_alloys and all(e in _metals() for e in elems):
        return CheckResult(True, "all elements are metals (alloy)", details)
    try:
        data = [element_data(e, ox_set) for e in elems]
    except KeyError as exc:
        return CheckResult(False, f"no SMACT data: {exc}", details)
    states = [d[0] for d in data]
    enegs = [d[1] for d in data]
    missing = [e for e, s in zip(elems, states, strict=True) if not s]
    if missing:
        return CheckResult(False, f"no oxidation states in {ox_set} for {', '.join(missing)}", details)
    if use_pauling_test and any(x is None for x in enegs):
        found = _neutral_enumerated(states, enegs, counts, use_pauling_test)
        if found is None:
            return CheckResult(False, f"more than {MAX_ENUMERATED_COMBINATIONS} oxidation-state combinations", details)
    elif use_pauling_test:
        found = _neutral_with_cut(states, enegs, counts)
    else:
        found = _neutral_any(states, counts)
    if found:
        return CheckResult(True, "charge-neutral, electronegativity-ordered assignment exists"
                           if use_pauling_test else "charge-neutral assignment exists", details)
    if use_pauling_test and _neutral_any(states, counts):
        return CheckResult(False, "charge-neutral assignments exist but none passes the Pauling test", details)
    return CheckResult(False, "no charge-neutral oxidation-state assignment", details)
