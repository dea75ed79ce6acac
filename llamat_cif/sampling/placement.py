"""Where the atoms of a symmetric CIF can still go: the look-ahead behind constrained decoding.

The CIF grammar (:mod:`llamat_cif.sampling.grammars`) writes a structure one site line at a time:
element, Wyckoff multiplicity, x, y, z. A choice can be locally fine and still leave no way to finish
the document (counts that need more special points than the group has, a site on the last free
special point another element needed, a coordinate prefix whose every completion sits too close to a
mirror image). This module answers "can the rest still be placed?", so that the grammar only offers
choices that keep a completion in reach. Two levels:

* :func:`llamat_cif.symmetry.allocatable` (no lattice yet): can every count be written as a sum of
  Wyckoff multiplicities, each zero-dimensional position (1a, 8c ...) holding at most one site?
* :class:`Placement` (lattice known): the same with geometry. It keeps the atoms placed so far and
  searches depth-first for concrete positions of all remaining atoms (orbit of the right size, every
  distance kept, symmetry copies included) over multiplicities and candidate points (special points
  and probe points on each Wyckoff subspace with free parameters). A search that runs out of its node
  budget answers "yes" (optimistic, counted), so the grammar never stalls on an expensive question.

Distances follow CDVAE's floor ``min_distance`` (0.5 Å) for every pair and, with ``contact_ratio``
f > 0, ``d_ij >= f * (r_i + r_j)`` on covalent radii (:mod:`llamat_cif.physics`), which also bounds an
atom's distance to its own lattice translations. The remaining work is a multiset of
``(count, radius)`` pairs (radius 0 with the contact rule off).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence

import numpy as np

from llamat_cif.protocol import CDVAE_MIN_DISTANCE
from llamat_cif.sampling.lattice import (
    SAME_TOL,
    Block,
    Images,
    block,
    contact_threshold,
    from_bits,
    snap,
    to_bits,
)
from llamat_cif.symmetry import (
    allocatable,
    allocatable_on,
    min_lines,
    space_group_ops,
    wyckoff_table,
)

Counts = Mapping[str, int] | Sequence[int] | Sequence[tuple[int, float]]


class Placement:
    """Geometric look-ahead for one CIF being written (space group and lattice fixed).

    Args:
        number: space-group number (spglib default setting, as written by the canonical CIF).
        matrix: lattice matrix (rows a, b, c in Å).
        min_distance: smallest admissible distance between any two atoms (Å); ``None`` still keeps
            sites apart by 0.05 Å so that the text parses (no two sites on one point).
        budget: search nodes per question before answering optimistically.
        total_budget: search nodes over all questions about this document; once spent, every
            further question is answered optimistically (counted), so one pathological document
            cannot hold a batch for minutes.
        contact_ratio: f of the covalent contact rule ``d_ij >= f * (r_i + r_j)`` (0: off). With it
            on, counts name their elements (``{"Na": 4, "Cl": 4}``) so that each atom gets its radius.

    Counts are given as ``{element: count}``, as ``[(count, radius), ...]`` or as plain
    ``[count, ...]`` (radius 0: only ``min_distance`` applies).
    """

    def __init__(self, number: int, matrix: np.ndarray, min_distance: float | None = CDVAE_MIN_DISTANCE,
                 budget: int = 2000, *, contact_ratio: float = 0.0, total_budget: int = 60_000) -> None:
        self.number = number
        self.rots, self.trans = space_group_ops(number)
        self.rots_t = np.ascontiguousarray(self.rots.transpose(0, 2, 1))
        self.matrix = np.asarray(matrix, dtype=float)
        self.dmin = float(min_distance) if min_distance else 0.05
        self.f = float(contact_ratio or 0.0)
        self.images = Images(self.matrix)  # the periodic distance tests
        self.shortest_vector = self.images.shortest  # an atom's distance to its own copy
        self.table = wyckoff_table(number)
        self.sizes = sorted(self.table)
        self.placed = np.zeros((0, 3))
        self.placed_r = np.zeros(0)
        self.placed_el: list[str | None] = []  # the element of each placed atom
        self.budget = budget
        self.optimistic = 0  # questions answered "yes" because the budget ran out
        self._memo: dict[tuple, list[np.ndarray] | None] = {}
        self._own_cache: dict[tuple, int] = {}  # (points, m, radius, ratio) -> own-copies bit set
        # answers that depend on the lattice alone, kept for the document (see _bits / orbit_of)
        self._snaps: dict[tuple, tuple[np.ndarray, bytes]] = {}  # raw points -> (snapped, their bytes)
        self._pairs: dict[tuple, int] = {}  # (points, block, radius, ratio) -> bit set
        self._orbits: dict[bytes, np.ndarray] = {}
        self._orbit_blocks: dict[tuple, tuple[np.ndarray, Block, tuple[bytes, bytes]]] = {}
        self._cands: dict[int, np.ndarray] = {}
        self._blocks: list[Block] = []  # the placed atoms, one block per site
        self._certs: dict[tuple, tuple[np.ndarray, np.ndarray, int]] = {}  # counts -> (atoms, radii, lines)
        self._nodes = 0
        self.total_budget = total_budget
        self._spent = 0  # nodes searched over all questions
        # steering questions ("does the rest fit at a wider ratio?") have their own memo,
        # certificates and budget, and a spent budget answers "no": steering is a preference,
        # never a promise, so it must not spend or weaken the hard look-ahead
        self._strict: dict[float, tuple[dict, dict, list[int]]] = {}

    # ------------------------------------------------------------------------------ radii
    def radius_of(self, element: str | None) -> float:
        """Covalent radius of ``element`` when the contact rule is on, else 0."""
        if not self.f or not element:
            return 0.0
        from llamat_cif.physics import covalent_radius

        return round(covalent_radius(element), 3)

    def _key(self, counts: Counts) -> tuple[tuple[int, float], ...]:
        """Counts as a canonical multiset of (count, radius), largest count first."""
        if isinstance(counts, Mapping):
            pairs = [(int(c), self.radius_of(e)) for e, c in counts.items()]
        else:
            pairs = [(int(c[0]), float(c[1]) if self.f else 0.0) if isinstance(c, tuple) else (int(c), 0.0)
                     for c in counts]
        return tuple(sorted(((c, r) for c, r in pairs if c > 0), reverse=True))

    # ------------------------------------------------------------------------------ geometry
    def check(self, pts: np.ndarray, m: int, placed: np.ndarray | None = None, *, radius: float = 0.0,
              placed_r: np.ndarray | None = None, ratio: float | None = None) -> np.ndarray:
        """Boolean mask: the orbit of each point (an atom of covalent ``radius``) has exactly ``m``
        members, keeps its distance rule (contact ratio ``ratio``, default this placement's) to its
        own symmetry copies and lattice translations, and to the ``placed`` atoms (radii ``placed_r``;
        default: the placed sites, whose answers are kept per site, :meth:`_bits`)."""
        blocks = None if placed is None else (block(placed, np.zeros(len(placed)) if placed_r is None else placed_r),)
        return from_bits(*self._bits(pts, m, radius, ratio, blocks))

    def _bits(self, pts: np.ndarray, m: int, radius: float, ratio: float | None,
              blocks: Sequence[Block] | None) -> tuple[int, int]:
        """:meth:`check` against ``blocks`` (default: the placed sites) as a bit set (bit i: point
        i admissible) and the number of points.

        Whether a point keeps its distance to a group of atoms does not depend on the other atoms,
        and the search meets the same pairs of candidate chunk and orbit in many branches and
        questions: the answer per (chunk, block) is kept for the document (lattice fixed) and the
        answers are combined with ``&``, the same test as one distance matrix over all atoms.
        Snapped points are kept too (the look-ahead asks about the same chunks again and again)."""
        raw = np.atleast_2d(np.asarray(pts, dtype=float))
        pts, key = self._snaps.get((raw.shape, raw.tobytes())) or (None, b"")
        if pts is None:
            pts = snap(raw)
            key = pts.tobytes()
            if len(self._snaps) < 50_000:
                self._snaps[raw.shape, raw.tobytes()] = (pts, key)
        if len(pts) == 0:
            return 0, 0
        f = self.f if ratio is None else ratio
        bits = self._own_ok(pts, m, radius, ratio, key)
        pairs = self._pairs
        for blk in self._blocks if blocks is None else blocks:
            if not bits:
                break
            hit = pairs.get((key, blk[0], radius, f))
            if hit is None:
                hit = to_bits(self.images.clear_of(pts, blk, radius, f, self.dmin))
                if len(pairs) < 200_000:
                    pairs[key, blk[0], radius, f] = hit
            bits &= hit
        return bits, len(pts)

    def _own_ok(self, pts: np.ndarray, m: int, radius: float, ratio: float | None,
                pts_key: bytes) -> int:
        """Orbit size ``m`` and distance rule to the point's own symmetry copies and lattice
        translations, for snapped points (bytes ``pts_key``), as a bit set. It does not depend on
        the placed atoms, and the look-ahead asks it again and again for the same candidate
        chunks, so answers are kept."""
        key = (pts_key, m, radius, self.f if ratio is None else ratio)
        hit = self._own_cache.get(key)
        if hit is not None:
            return hit
        own_min = float(contact_threshold(self.dmin, self.f if ratio is None else ratio, radius, radius))  # own copies
        if self.shortest_vector < own_min:
            ok = np.zeros(len(pts), dtype=bool)
        else:
            # integer rotation matrices: the product is exact whichever way it is taken
            imgs = np.matmul(pts, self.rots_t).transpose(1, 0, 2) + self.trans[None]
            d = imgs - pts[:, None, :]
            d -= np.round(d)
            same = (np.abs(d) < SAME_TOL).all(-1)  # (n, k)
            ok = len(self.rots) == m * same.sum(1)  # orbit size = |G| / |stabiliser|
            if ok.any():
                idx = np.nonzero(ok)[0]
                own = self.images.min_d2(d[idx], own_min)  # (n_ok, k), squared
                own[same[idx]] = np.inf
                ok[idx] = own.min(1) >= own_min * own_min
        if len(self._own_cache) < 50_000:
            self._own_cache[key] = to_bits(ok)
        return to_bits(ok)

    def orbit_of(self, p: np.ndarray) -> np.ndarray:
        """The distinct symmetry images of ``p`` as the reader will generate them (kept per point:
        the search places the same candidates in many branches; read-only)."""
        p = np.asarray(p, dtype=float)
        key = p.tobytes()
        hit = self._orbits.get(key)
        if hit is None:
            p = snap(p)
            imgs = np.mod(self.rots @ p + self.trans, 1.0)
            d = imgs[:, None, :] - imgs[None, :, :]
            same = (np.abs(d - np.round(d)) < SAME_TOL).all(-1)
            first = same.argmax(1)  # the first image each one coincides with
            hit = imgs[first == np.arange(len(imgs))]
            hit.flags.writeable = False
            if len(self._orbits) < 50_000:
                self._orbits[key] = hit
        return hit

    def candidates(self, m: int) -> np.ndarray:
        """Candidate points of orbit size ``m`` (read-only)."""
        if m not in self._cands:
            fixed, probes = self.table.get(m, (np.zeros((0, 3)), np.zeros((0, 3))))
            self._cands[m] = np.vstack([probes, fixed])  # free positions first: special points are scarce
            self._cands[m].flags.writeable = False
        return self._cands[m]

    # ------------------------------------------------------------------------------ search
    def fits(self, counts: Counts, extra: np.ndarray | None = None, lines: int | None = None, *,
             extra_radius: float = 0.0, ratio: float | None = None) -> bool:
        """Can atoms in these per-element ``counts`` all still be placed, next to the placed atoms
        and the ``extra`` points (the orbit of a site being considered, atoms of ``extra_radius``),
        in at most ``lines`` site lines (``None``: any number)?

        A completion found once is kept as a certificate for its counts: while the placed atoms
        do not change, a new question with other ``extra`` points is answered by checking the
        certificate's atoms against them before searching again.

        ``ratio``: ask instead whether the completion exists at this (wider) contact ratio, for
        steering. Such questions search with their own memo and a budget of
        ``total_budget / 4`` nodes; when it runs out they answer ``False`` (no margin promised).
        """
        if ratio is not None and self.f and ratio > self.f:
            return self._fits_at(ratio, counts, extra, lines, extra_radius)
        key = self._key(counts)
        if not key:
            return True
        ints = tuple(c for c, _ in key)
        if not allocatable(self.number, ints) or (lines is not None and min_lines(self.number, ints) > lines):
            return False
        extra = np.zeros((0, 3)) if extra is None else np.asarray(extra, dtype=float).reshape(-1, 3)
        extra_r = np.full(len(extra), float(extra_radius) if self.f else 0.0)
        cert = self._certs.get(key)
        if cert is not None and (lines is None or cert[2] <= lines):
            if len(extra) == 0:
                return True
            thr = contact_threshold(self.dmin, self.f, cert[1][:, None], extra_r[None, :])
            if self.images.far(cert[0], extra, thr).all():
                return True
        if self._spent >= self.total_budget:
            self.optimistic += 1
            return True
        self._nodes = 0
        try:
            blocks = (*self._blocks, block(extra, extra_r)) if len(extra) else tuple(self._blocks)
            memo = (np.round(self.placed, 3).tobytes() + np.round(extra, 3).tobytes(),
                    np.round(self.placed_r, 3).tobytes() + np.round(extra_r, 3).tobytes())
            path = self._search(key, lines, blocks, memo)
        except _Budget:
            self._spent += self._nodes
            self.optimistic += 1
            return True
        self._spent += self._nodes
        if path is None:
            return False
        self._certs[key] = (np.vstack([o for o, _ in path]),
                            np.concatenate([np.full(len(o), r) for o, r in path]), len(path))
        return True

    def _fits_at(self, ratio: float, counts: Counts, extra, lines, extra_radius: float) -> bool:
        memo, certs, spent = self._strict.setdefault(round(ratio, 4), ({}, {}, [0]))
        budget = self.total_budget // 4
        if spent[0] >= budget:
            return False
        saved = (self.f, self._memo, self._certs, self._spent, self.total_budget, self.optimistic)
        self.f, self._memo, self._certs = ratio, memo, certs
        self._spent, self.total_budget = spent[0], budget
        try:
            ok = self.fits(counts, extra, lines, extra_radius=extra_radius)
            if self.optimistic != saved[5]:  # the budget ran out during this question: no promise
                ok = False
            return ok
        finally:
            spent[0] = self._spent
            self.f, self._memo, self._certs, self._spent, self.total_budget, self.optimistic = saved

    def _search(self, counts: tuple[tuple[int, float], ...], lines: int | None, blocks: tuple[Block, ...],
                placed_key: tuple[bytes, bytes]) -> list[tuple[np.ndarray, float]] | None:
        """Depth-first search: the orbits (with their radius) of one completion in at most
        ``lines`` orbits, or ``None``, next to the atoms of ``blocks``. ``placed_key``: the bytes
        of those atoms' positions and radii rounded to 3 decimals (the memo key; rounding is per
        number, so a child's key is its parent's followed by the new orbit's)."""
        if not counts:
            return []
        ints = tuple(c for c, _ in counts)
        if lines is not None and min_lines(self.number, ints) > lines:
            return None
        memo_key = (counts, lines, *placed_key)
        if memo_key in self._memo:
            return self._memo[memo_key]
        self._nodes += 1
        if self._nodes > self.budget:
            raise _Budget
        result = None
        if self._still_allocatable(counts, blocks):
            (r, rad), rest = counts[0], counts[1:]
            for m in reversed(self.sizes):
                if m > r:
                    continue
                nxt = tuple(sorted(rest + ((r - m, rad),) if r > m else rest, reverse=True))
                if not allocatable(self.number, tuple(c for c, _ in nxt)):
                    continue
                for p in self._first_ok(self.candidates(m), m, 3, radius=rad, blocks=blocks):
                    orb, blk, (kp, kr) = self._orbit_block(p, rad)
                    sub = self._search(nxt, None if lines is None else lines - 1, (*blocks, blk),
                                       (placed_key[0] + kp, placed_key[1] + kr))
                    if sub is not None:
                        result = [(orb, rad), *sub]
                        break
                if result is not None:
                    break
        self._memo[memo_key] = result
        return result

    def _orbit_block(self, p: np.ndarray, rad: float) -> tuple[np.ndarray, Block, tuple[bytes, bytes]]:
        """The orbit of ``p`` as a block of atoms of radius ``rad`` and its part of a memo key
        (kept: the search places the same candidates in many branches)."""
        key = (p.tobytes(), rad)
        hit = self._orbit_blocks.get(key)
        if hit is None:
            orb = self.orbit_of(p)
            orb_r = np.full(len(orb), rad)
            hit = (orb, block(orb, orb_r), (np.round(orb, 3).tobytes(), np.round(orb_r, 3).tobytes()))
            if len(self._orbit_blocks) < 50_000:
                self._orbit_blocks[key] = hit
        return hit

    def _first_ok(self, cands: np.ndarray | Sequence[np.ndarray], m: int, k: int, chunk: int = 24, *, radius: float = 0.0,
                  ratio: float | None = None, blocks: Sequence[Block] | None = None) -> list[np.ndarray]:
        """Up to ``k`` admissible candidates (against ``blocks``, default the placed sites): the first
        ``chunk`` points (most questions need no more), then the rest at once. ``cands``: an array of
        points, or a sequence of them tried in order, each chunked from its own start (a fixed array
        then gives the same chunks on every question, whose answers :meth:`_bits` keeps). Admissibility
        is per point, so no chunking (nor :meth:`site_fitting_each`'s stacking) changes an answer."""
        found: list[np.ndarray] = []
        for seg in cands if isinstance(cands, list | tuple) else (cands,):
            for start, stop in ((0, chunk), (chunk, len(seg))):
                part = seg[start:stop]
                if not len(part):
                    break
                bits = self._bits(part, m, radius, ratio, blocks)[0]
                while bits and len(found) < k:  # the lowest set bits: the first admissible points
                    low = bits & -bits
                    found.append(part[low.bit_length() - 1].copy())
                    bits ^= low
                if len(found) >= k:
                    return found
        return found

    def _still_allocatable(self, counts: tuple[tuple[int, float], ...], blocks: Sequence[Block]) -> bool:
        """:func:`allocatable` with what is still free: special points not yet blocked, and a
        multiplicity with free parameters only while one of its probe points is still admissible
        (a line of 2-fold sites can fill up). Judged for the smallest remaining atom, so it
        never refuses what some element could still use."""
        radius = min(r for _, r in counts)
        top = max(c for c, _ in counts)
        unlimited, sizes, free = set(), [], []
        for m in self.sizes:
            if m > top:
                break  # no remaining count can use a larger orbit
            fixed, probes = self.table[m]
            if len(probes) and self._first_ok(probes, m, 1, radius=radius, blocks=blocks):
                unlimited.add(m)
            elif len(fixed):
                n_free = self._bits(fixed, m, radius, None, blocks)[0].bit_count()
                if n_free:
                    sizes.append(m)
                    free.append(n_free)
        return allocatable_on(tuple(c for c, _ in counts), frozenset(unlimited), tuple(free), tuple(sizes))

    def same_element_ok(self, pts: np.ndarray, m: int, element: str | None, distance: float) -> np.ndarray:
        """Boolean mask: a site of ``element`` at each point keeps at least ``distance`` (Å) to the
        placed atoms of the same element, to its own symmetry copies and to its lattice images
        (and has orbit size ``m``). The anion-anion steering question: the contact check with
        every atom of radius ``distance / 2`` at ratio 1."""
        same = np.array([e == element for e in self.placed_el], dtype=bool)
        half = distance / 2.0
        placed = self.placed[same] if len(same) else np.zeros((0, 3))
        return self.check(pts, m, placed, radius=half, placed_r=np.full(len(placed), half), ratio=1.0)

    def site_fits(self, p: np.ndarray, m: int, rest_counts: Counts, lines: int | None = None, *,
                  element: str | None = None, site_ratio: float | None = None, rest_ratio: float | None = None,
                  same_min: float | None = None) -> bool:
        """Is ``p`` an admissible site of multiplicity ``m`` (for an atom of ``element``) after which
        ``rest_counts`` still fit (in at most ``lines`` further site lines)? ``site_ratio``: a
        stricter contact ratio for this site; ``rest_ratio``: one the completion must keep too
        (a steering question, see :meth:`fits`); ``same_min``: a distance the site must also keep
        to atoms of its own element (:meth:`same_element_ok`). A completion that keeps a wider
        ratio keeps this placement's too: one question, which never spends the hard budget."""
        return self.site_fitting_any([p], m, rest_counts, 1, lines, element=element, site_ratio=site_ratio,
                                     rest_ratio=rest_ratio, same_min=same_min) is not None

    def site_fitting(self, pts: np.ndarray | Sequence[np.ndarray], m: int, rest_counts: Counts, tries: int = 6,
                     lines: int | None = None, **kw) -> np.ndarray | None:
        """The first candidate point that makes an admissible site with a completion, or ``None``
        (keywords as in :meth:`site_fits`). ``pts``: an array of points or a sequence of arrays,
        tried in order as if stacked (see :meth:`_first_ok`)."""
        return self.site_fitting_any([pts], m, rest_counts, tries, lines, **kw)

    def site_fitting_any(self, groups: Sequence, m: int, rest_counts: Counts, tries: int = 6,
                         lines: int | None = None, **kw) -> np.ndarray | None:
        """The first hit of :meth:`site_fitting_each`, or ``None`` (the later groups not asked)."""
        return next(filter(lambda p: p is not None, self.site_fitting_each(groups, m, rest_counts, tries, lines, **kw)), None)

    def site_fitting_each(self, groups: Sequence, m: int, rest_counts: Counts, tries: int = 6,
                          lines: int | None = None, *, element: str | None = None, site_ratio: float | None = None,
                          rest_ratio: float | None = None, same_min: float | None = None) -> Iterator[np.ndarray | None]:
        """:meth:`site_fitting` of each group in turn, lazily (the same completions asked in the same
        order: same answers, same budget spent), the site checks of several groups made at once (one
        group: chunk by chunk). Groups of one point with ``tries=1``: :meth:`site_fits`."""
        segss = [[np.asarray(s, dtype=float).reshape(-1, 3) for s in (g if isinstance(g, list | tuple) else (g,))]
                 for g in groups]
        radius = self.radius_of(element)
        if len(segss) == 1:
            segs = segss[0]
            if same_min:
                segs = [s[self.same_element_ok(s, m, element, same_min)] for s in segs if len(s)]
            segs = [s for s in segs if len(s)]
            picks = [self._first_ok(segs, m, tries, radius=radius, ratio=site_ratio) if segs else []]
        else:
            allp = np.vstack([s for segs in segss for s in segs])
            ok = from_bits(*self._bits(allp, m, radius, site_ratio, None)) if len(allp) else np.zeros(0, bool)
            if same_min and ok.any():
                ok &= self.same_element_ok(allp, m, element, same_min)
            bounds = np.cumsum([0] + [sum(len(s) for s in segs) for segs in segss])
            picks = (allp[a + np.flatnonzero(ok[a:b])[:tries]] for a, b in zip(bounds[:-1], bounds[1:], strict=True))
        for pick in picks:
            yield next((p.copy() for p in pick
                        if self.fits(rest_counts, self.orbit_of(p), lines, extra_radius=radius, ratio=rest_ratio)), None)

    def multiplicity_ok(self, m: int, rest_counts: Counts, lines: int | None = None, *,
                        element: str | None = None) -> bool:
        """Can a site of multiplicity ``m`` go somewhere now and leave ``rest_counts`` placeable
        (in at most ``lines`` further site lines)?"""
        return self.site_fitting(self.candidates(m), m, rest_counts, lines=lines, element=element) is not None

    def place(self, p: np.ndarray, element: str | None = None) -> None:
        orb = self.orbit_of(p)
        orb_r = np.full(len(orb), self.radius_of(element))
        self.placed = np.vstack([self.placed, orb])
        self.placed_r = np.concatenate([self.placed_r, orb_r])
        self._blocks.append(block(orb, orb_r))
        self.placed_el.extend([element] * len(orb))
        self._memo.clear()
        self._certs.clear()
        for memo, certs, _ in self._strict.values():
            memo.clear()
            certs.clear()


class _Budget(Exception):
    pass
