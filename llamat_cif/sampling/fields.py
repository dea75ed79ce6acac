"""What a sample must satisfy (:class:`Conditions`) and the conditioning header both grammars share.

The header is ``# formula: ...`` and ``# spacegroup: ...`` in the order the model picks
(:func:`header_fields`). The formula field (:func:`formula_field`) holds the composition to the
requested formula, or, when the model chooses one, to at most ``max_elements`` elements and
``max_atoms`` atoms (and at most ``max_primitive_atoms`` atoms per primitive cell: the written atoms
over the group's lattice points); with a known space group every count must be a sum of the group's
Wyckoff multiplicities that its positions can hold (:mod:`llamat_cif.symmetry`).
"""

from __future__ import annotations

from collections.abc import Generator
from dataclasses import dataclass
from functools import lru_cache

from llamat_cif.cif import formula_items
from llamat_cif.protocol import CDVAE_MIN_DISTANCE
from llamat_cif.sampling.engine import Choice, Lit, Num, Spec, Stats, Vocab
from llamat_cif.symmetry import (
    allocatable_within,
    lattice_points,
    reachable_counts,
    spacegroups_for,
    spacegroups_for_formula,
)


@dataclass
class Conditions:
    """What a sample must satisfy (``None``: the model chooses)."""

    formula: dict[str, float] | None = None  # reduced composition (element -> amount)
    spacegroup: int | None = None
    min_distance: float | None = CDVAE_MIN_DISTANCE  # Å; None switches the distance constraint off
    max_atoms: int = 64  # per written cell (CIF: conventional cell)
    max_elements: int = 6
    # a formula the model chooses: at most this many atoms per primitive cell, i.e. written atoms /
    # the space group's lattice points (MP-20's domain is <= 20); 0: off. A requested formula is
    # never capped.
    max_primitive_atoms: int = 0
    max_count: int = 96  # per element in a cell
    charge_balanced: bool = False  # a self-chosen formula must be SMACT-valid (CDVAE compositional validity)
    max_lines: int = 27  # site lines that fit the token budget: site_lines_for(1000)
    # physics (llamat_cif.physics): every pair at least contact_ratio x its covalent-radius sum (0: off)
    contact_ratio: float = 0.0
    # volume per atom within [lo, hi] x the composition-based prediction (None: off)
    volume_window: tuple[float, float] | None = None
    # steering: a coordinate is drawn among tokens that keep this wider contact ratio for the new
    # site whenever some token does (nucleus first, else the whole tempered distribution; 0: off);
    # contact_ratio stays the hard rule
    steer_ratio: float = 0.0
    # steering, second tier: where no token keeps steer_ratio, a coordinate is drawn among tokens
    # that keep at least this ratio before the hard rule alone decides (0: off)
    steer_floor: float = 0.0
    # steering, first tier per element (anions, and other elements with --steer-cation-distance): a
    # coordinate of an element listed here is drawn among tokens that also keep this distance (Å)
    # to atoms of the same element whenever some token does (as above; None: off); covalent radii let
    # two anions sit at a bond length
    same_element_steer: dict[str, float] | None = None
    # steering: the last cell length prefers a volume per atom within [lo, hi] x the prediction
    # (the typical range of real crystals) when the model's tokens allow it (None: off)
    volume_steer: tuple[float, float] | None = None


def site_lines_for(max_new_tokens: int) -> int:
    """Site lines a CIF document can have within ``max_new_tokens``: header and lattice take up to
    ~140 tokens, one site line at most 31 (two-digit labels)."""
    return max(1, (max_new_tokens - 140) // 31)


def _formula_items(comp: dict[str, float]) -> list[tuple[str, int]]:
    """A reduced composition as (element, integer amount) in the canonical CIF's formula order."""
    from pymatgen.core import Composition

    return [(el.symbol, int(round(amt))) for el, amt in formula_items(Composition(comp))]


def cell_atoms_cap(cond: Conditions, spacegroup: int | None) -> int:
    """Most atoms a self-chosen formula may put in the written (conventional) cell: ``max_atoms``,
    and with ``max_primitive_atoms`` that many per lattice point of the group (of the most
    centred group, 4 lattice points, while the group is still unknown)."""
    if not cond.max_primitive_atoms or cond.formula:
        return cond.max_atoms
    points = lattice_points(spacegroup) if spacegroup else 4
    return min(cond.max_atoms, cond.max_primitive_atoms * points)


def primitive_ok(cond: Conditions, spacegroup: int, n_atoms: int) -> bool:
    """A self-chosen formula of ``n_atoms`` written atoms keeps ``max_primitive_atoms`` in this group."""
    return not cond.max_primitive_atoms or bool(cond.formula) or \
        n_atoms <= cond.max_primitive_atoms * lattice_points(spacegroup)


def formula_field(v: Vocab, cond: Conditions, *, end: str = "\n", spacegroup: int | None = None,
                  stats: Stats | None = None) -> Generator[Spec, object, dict[str, int]]:
    """Write "El<n> El<n> ..." (pymatgen order when conditioned) and return the counts.

    With a known space group, every count must be a sum of its Wyckoff multiplicities; a
    self-chosen formula keeps :func:`cell_atoms_cap` (with the group unknown, some group that can
    hold it must keep ``max_primitive_atoms``).
    """
    counts: dict[str, int] = {}
    if cond.formula:
        reach = reachable_counts(spacegroup, cond.max_atoms) if spacegroup else None
        items = _formula_items(cond.formula)
        max_k = max(1, cond.max_atoms // sum(n for _, n in items))
        ks = [k for k in range(1, max_k + 1) if reach is None or (
            all(n * k in reach for _, n in items)
            and allocatable_within(spacegroup, tuple(n * k for _, n in items), cond.max_lines))]
        if not ks:  # the requested formula cannot fill this space group within max_atoms
            if stats is not None:
                stats.fallbacks += 1
            ks = list(range(1, max_k + 1))
        first_el, first_n = items[0]
        yield Lit(first_el)
        kval, _ = yield Num(1, first_n * max_k, 0, (" " if len(items) > 1 else end,),
                            allowed=frozenset(first_n * k for k in ks))
        k = int(kval) // first_n
        counts[first_el] = first_n * k
        rest = " ".join(f"{el}{n * k}" for el, n in items[1:])
        for el, n in items[1:]:
            counts[el] = n * k
        yield Lit(rest + end if rest else "")
        return counts
    max_atoms = cell_atoms_cap(cond, spacegroup)
    reach = reachable_counts(spacegroup, max_atoms) if spacegroup else None
    total = 0
    while True:
        last = len(counts) + 1 >= cond.max_elements
        hi = min(cond.max_count, max_atoms - total)
        have = tuple(counts.values())
        base = [c for c in (sorted(reach) if reach is not None else range(1, hi + 1)) if 1 <= c <= hi]

        def holds(cs: tuple[int, ...]) -> bool:
            if reach is None:  # no group yet: P1 (one line per atom) or some group must hold it
                n = sum(cs)
                if cond.max_primitive_atoms and n > cond.max_primitive_atoms:  # a centred group must
                    return any(primitive_ok(cond, g, n) for g in spacegroups_for(cs, cond.max_lines) or ())
                return n <= cond.max_lines or spacegroups_for(cs, cond.max_lines) is not None
            return allocatable_within(spacegroup, cs, cond.max_lines)

        def can_end(el: str, c: int, have=have, counts=counts) -> bool:
            """The formula may stop after ``el``<c>: the group holds it (and it is charge-balanced)."""
            return holds(have + (c,)) and (not cond.charge_balanced or _balanced({**counts, el: c}))

        def can_continue(c: int, have=have, last=last, total=total) -> bool:
            """Another element may follow ``c``: room in the cell and in the group's positions."""
            room = max_atoms - total - c
            return (not last and room >= 1
                    and any(holds(have + (c, c2)) for c2 in (reach or range(1, room + 1)) if 1 <= c2 <= room))

        options = {i: e for i, e in v.elements.items() if e not in counts}
        if cond.charge_balanced and last:
            options = {i: e for i, e in options.items() if any(can_end(e, c) for c in base)} or options
        el = yield Choice(options)
        allowed = frozenset(c for c in base if can_end(el, c) or can_continue(c))
        if not allowed:
            if stats is not None:
                stats.fallbacks += 1
            # drop the charge balance before the group's capacity: the crystal can still be finished
            allowed = (frozenset(c for c in base if holds(have + (c,))) if cond.charge_balanced else frozenset()) \
                or frozenset(base) or frozenset({1})

        def ends_for(c: float, el=el, can_continue=can_continue, can_end=can_end) -> tuple[str, ...]:
            c = int(c)
            ends = tuple(e for e, ok in ((" ", can_continue(c)), (end, can_end(el, c))) if ok)
            return ends or (end,)

        n, how = yield Num(1, max(allowed), 0, (" ", end), allowed=allowed, ends_for=ends_for)
        counts[el] = int(n)
        total += int(n)
        if how == end or total >= max_atoms:
            if how != end:
                yield Lit(end)
            return counts


@lru_cache(maxsize=100_000)
def _balanced_cached(items: tuple[tuple[str, int], ...]) -> bool:
    from llamat_cif.validators.composition import compositional_validity

    return bool(compositional_validity(dict(items)).ok)


def _balanced(counts: dict[str, int]) -> bool:
    """CDVAE compositional validity (SMACT charge balance + Pauling test, alloys valid)."""
    return _balanced_cached(tuple(sorted(counts.items())))


def header_fields(v: Vocab, cond: Conditions, *, want_formula: bool, want_sg: bool,
                  symmetric: bool = True, stats: Stats | None = None):
    """Both header lines, in the order the model picks; returns (counts, spacegroup number).

    With ``symmetric`` (the CIF grammar) formula and space group are kept compatible: counts that
    the group's Wyckoff multiplicities can add up to, or a group that can hold the counts.
    """
    counts, sg = None, cond.spacegroup
    keys = [k for k, want in (("formula", want_formula), ("spacegroup", want_sg)) if want and k in v.header]
    sg_written = False
    while keys:
        key = yield Choice({v.header[k]: k for k in keys})
        keys.remove(key)
        if key == "formula":
            known = sg if (symmetric and (sg_written or cond.spacegroup)) else None
            counts = yield from formula_field(v, cond, spacegroup=known, stats=stats)
        else:
            if cond.spacegroup:
                yield Lit(f"{cond.spacegroup}\n")
            else:
                allowed = None
                if symmetric and counts:
                    allowed = spacegroups_for(tuple(counts.values()), cond.max_lines)
                    n_atoms = sum(counts.values())
                    allowed = frozenset(g for g in allowed or () if primitive_ok(cond, g, n_atoms)) or allowed
                elif symmetric and cond.formula:  # the formula comes next: groups that can hold it
                    allowed = spacegroups_for_formula(tuple(n for _, n in _formula_items(cond.formula)),
                                                       cond.max_atoms, cond.max_lines)
                n, _ = yield Num(1, 230, 0, ("\n",), allowed=allowed)
                sg = int(n)
            sg_written = True
    return counts, sg

