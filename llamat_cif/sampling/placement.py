"""Where the atoms of a symmetric CIF can still go: the look-ahead behind constrained decoding.

The CIF grammar (:mod:`llamat_cif.sampling.grammars`) lets the model write a structure one site
line at a time: element, Wyckoff multiplicity, then x, y, z. A choice can be locally fine and still
leave no way to finish the document: a formula whose counts need more special points than the group
has, a site placed on the last free special point another element needed, a coordinate prefix from
which every completion sits too close to a mirror image. This module answers "can the rest still
be placed?" so that the grammar only offers choices that keep a completion in reach.

Two levels:

* :func:`llamat_cif.symmetry.allocatable` (no lattice yet): can every element count be written as a sum of Wyckoff
  multiplicities, when each zero-dimensional Wyckoff position (a fixed point orbit such as 1a or
  8c) holds at most one site and positions with free parameters may be used repeatedly?
* :class:`Placement` (lattice known): the same question with geometry. It keeps the atoms placed so
  far and searches for concrete positions of all remaining atoms (orbit of the right size, every
  distance at least ``min_distance`` including symmetry copies), by depth-first search over
  multiplicities and candidate points (the special points plus a fixed set of probe points on
  each Wyckoff subspace with free parameters). A search that runs out of its node budget answers
  "yes" (optimistic) and is counted, so the grammar never stalls on an expensive question.

Distances follow two rules at once: CDVAE's floor ``min_distance`` (0.5 Å) for every pair, and,
with ``contact_ratio`` f > 0, the physical rule ``d_ij >= f * (r_i + r_j)`` on covalent radii
(:mod:`llamat_cif.physics`), which also bounds the distance of an atom to its own lattice
translations. The remaining work is a multiset of ``(count, radius)`` pairs (radius 0 when the
contact rule is off, so the memo stays as small as before).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from llamat_cif.protocol import CDVAE_MIN_DISTANCE
from llamat_cif.sampling.lattice import SHIFTS, min_image_sq, pair_distances
from llamat_cif.symmetry import (
    allocatable,
    allocatable_on,
    min_lines,
    space_group_ops,
    wyckoff_table,
)

#: Fractional distance below which a symmetry image is the point itself. Coordinates are written
#: with 4 decimals and read back by pymatgen, which snaps 0.3333 / 0.6667 to 1/3 / 2/3 and merges
#: images closer than 1e-4; so an image either coincides exactly (after that snap) or must be a
#: separate atom at least ``min_distance`` away: nothing in between is admissible.
SAME_TOL = 2e-5


def snap(p: np.ndarray) -> np.ndarray:
    """Fractional coordinates as pymatgen's CIF reader takes them (1/3 and 2/3 made exact)."""
    p = np.array(p, dtype=float)
    for c in (1 / 3, 2 / 3):
        p[np.abs(p / c - 1) <= 1e-4] = c
    return p

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
        self.ops = (self.rots, self.trans)
        self.matrix = np.asarray(matrix, dtype=float)
        self.dmin = float(min_distance) if min_distance else 0.05
        self.f = float(contact_ratio or 0.0)
        lat = self.shift_cart = SHIFTS @ self.matrix  # the 27 lattice translations, Å
        norms = np.sqrt((lat * lat).sum(1))
        self.shortest_vector = float(norms[norms > 1e-9].min())  # an atom's distance to its own copy
        self.table = wyckoff_table(number)
        self.sizes = sorted(self.table)
        self.placed = np.zeros((0, 3))
        self.placed_r = np.zeros(0)
        self.placed_el: list[str | None] = []  # the element of each placed atom
        self.budget = budget
        self.optimistic = 0  # questions answered "yes" because the budget ran out
        self._memo: dict[tuple, list[np.ndarray] | None] = {}
        self._own_cache: dict[tuple, np.ndarray] = {}  # (points, m, radius, ratio) -> own-copies mask
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

    def _threshold(self, radius: float, radii: np.ndarray, ratio: float | None = None) -> np.ndarray:
        """Smallest admissible distance from an atom of ``radius`` to atoms of ``radii`` (contact
        ratio ``ratio``, default this placement's)."""
        return np.maximum(self.dmin, (self.f if ratio is None else ratio) * (radius + radii))

    # ------------------------------------------------------------------------------ geometry
    def check(self, pts: np.ndarray, m: int, placed: np.ndarray | None = None, *, radius: float = 0.0,
              placed_r: np.ndarray | None = None, ratio: float | None = None) -> np.ndarray:
        """Boolean mask: the orbit of each point (an atom of covalent ``radius``) has exactly ``m``
        members, keeps its distance rule (contact ratio ``ratio``, default this placement's) to its
        own symmetry copies and lattice translations, and to the placed atoms (radii ``placed_r``)."""
        pts = snap(np.atleast_2d(np.asarray(pts, dtype=float)))
        if len(pts) == 0:
            return np.zeros(0, dtype=bool)
        if placed is None:
            placed, placed_r = self.placed, self.placed_r
        elif placed_r is None:
            placed_r = np.zeros(len(placed))
        ok = self._own_ok(pts, m, radius, ratio)
        if len(placed) and ok.any():
            idx = np.nonzero(ok)[0]
            dist = pair_distances(pts[idx], placed, self.matrix)  # (n_ok, placed)
            ok[idx] = (dist >= self._threshold(radius, placed_r, ratio)[None, :]).all(1)
        return ok

    def _own_ok(self, pts: np.ndarray, m: int, radius: float, ratio: float | None) -> np.ndarray:
        """Orbit size ``m`` and distance rule to the point's own symmetry copies and lattice
        translations, for snapped points. It does not depend on the placed atoms, and the
        look-ahead asks it again and again for the same candidate chunks, so answers are kept
        (a copy is returned: callers update the mask in place)."""
        key = (pts.tobytes(), m, radius, self.f if ratio is None else ratio)
        hit = self._own_cache.get(key)
        if hit is not None:
            return hit.copy()
        own_min = float(self._threshold(radius, np.array([radius]), ratio)[0])  # copies of the same atom
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
                own = np.sqrt(min_image_sq(d[idx] @ self.matrix, self.shift_cart))  # (n_ok, k)
                own[same[idx]] = np.inf
                ok[idx] = own.min(1) >= own_min
        if len(self._own_cache) < 50_000:
            self._own_cache[key] = ok
        return ok.copy()

    def orbit_of(self, p: np.ndarray) -> np.ndarray:
        """The distinct symmetry images of ``p`` as the reader will generate them."""
        p = snap(np.asarray(p, dtype=float))
        imgs = np.mod(self.rots @ p + self.trans, 1.0)
        d = imgs[:, None, :] - imgs[None, :, :]
        same = (np.abs(d - np.round(d)) < SAME_TOL).all(-1)
        first = same.argmax(1)  # the first image each one coincides with
        return imgs[first == np.arange(len(imgs))]

    def candidates(self, m: int) -> np.ndarray:
        fixed, probes = self.table.get(m, (np.zeros((0, 3)), np.zeros((0, 3))))
        return np.vstack([probes, fixed])  # free positions first: special points are scarce

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
            dist = pair_distances(cert[0], extra, self.matrix)
            if (dist >= np.maximum(self.dmin, self.f * (cert[1][:, None] + extra_r[None, :]))).all():
                return True
        if self._spent >= self.total_budget:
            self.optimistic += 1
            return True
        self._nodes = 0
        try:
            path = self._search(key, np.vstack([self.placed, extra]), np.concatenate([self.placed_r, extra_r]),
                                lines)
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

    def _search(self, counts: tuple[tuple[int, float], ...], placed: np.ndarray, placed_r: np.ndarray,
                lines: int | None = None) -> list[tuple[np.ndarray, float]] | None:
        """Depth-first search: the orbits (with their radius) of one completion in at most
        ``lines`` orbits, or ``None``."""
        if not counts:
            return []
        ints = tuple(c for c, _ in counts)
        if lines is not None and min_lines(self.number, ints) > lines:
            return None
        memo_key = (counts, lines, np.round(placed, 3).tobytes(), np.round(placed_r, 3).tobytes())
        if memo_key in self._memo:
            return self._memo[memo_key]
        self._nodes += 1
        if self._nodes > self.budget:
            raise _Budget
        result = None
        if self._still_allocatable(counts, placed, placed_r):
            (r, rad), rest = counts[0], counts[1:]
            for m in reversed(self.sizes):
                if m > r:
                    continue
                nxt = tuple(sorted(rest + ((r - m, rad),) if r > m else rest, reverse=True))
                if not allocatable(self.number, tuple(c for c, _ in nxt)):
                    continue
                for p in self._first_ok(self.candidates(m), m, placed, 3, radius=rad, placed_r=placed_r):
                    orb = self.orbit_of(p)
                    sub = self._search(nxt, np.vstack([placed, orb]), np.concatenate([placed_r, np.full(len(orb), rad)]),
                                       None if lines is None else lines - 1)
                    if sub is not None:
                        result = [(orb, rad), *sub]
                        break
                if result is not None:
                    break
        self._memo[memo_key] = result
        return result

    def _first_ok(self, cands: np.ndarray, m: int, placed: np.ndarray, k: int, chunk: int = 24, *,
                  radius: float = 0.0, placed_r: np.ndarray | None = None,
                  ratio: float | None = None) -> list[np.ndarray]:
        """Up to ``k`` admissible candidates, checked in chunks (most questions need one)."""
        found: list[np.ndarray] = []
        for start in range(0, len(cands), chunk):
            part = cands[start:start + chunk]
            found.extend(part[self.check(part, m, placed, radius=radius, placed_r=placed_r, ratio=ratio)])
            if len(found) >= k:
                break
        return found[:k]

    def _still_allocatable(self, counts: tuple[tuple[int, float], ...], placed: np.ndarray,
                           placed_r: np.ndarray) -> bool:
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
            if len(probes) and self._first_ok(probes, m, placed, 1, radius=radius, placed_r=placed_r):
                unlimited.add(m)
            elif len(fixed):
                n_free = int(self.check(fixed, m, placed, radius=radius, placed_r=placed_r).sum())
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
        to atoms of its own element (:meth:`same_element_ok`)."""
        radius = self.radius_of(element)
        if not self.check(p[None, :], m, radius=radius, ratio=site_ratio)[0]:
            return False
        if same_min and not self.same_element_ok(p[None, :], m, element, same_min)[0]:
            return False
        # a completion that keeps a wider ratio keeps this placement's too: one question, and a
        # steering question never spends the hard look-ahead's budget
        return self.fits(rest_counts, self.orbit_of(p), lines, extra_radius=radius, ratio=rest_ratio)

    def site_fitting(self, pts: np.ndarray, m: int, rest_counts: Counts, tries: int = 6,
                     lines: int | None = None, *, element: str | None = None,
                     site_ratio: float | None = None, rest_ratio: float | None = None,
                     same_min: float | None = None) -> np.ndarray | None:
        """The first candidate point that makes an admissible site with a completion, or ``None``
        (``site_ratio``/``rest_ratio``/``same_min`` as in :meth:`site_fits`)."""
        if same_min and len(pts):
            pts = np.atleast_2d(np.asarray(pts, dtype=float))
            pts = pts[self.same_element_ok(pts, m, element, same_min)]
        if len(pts) == 0:
            return None
        radius = self.radius_of(element)
        for p in self._first_ok(pts, m, self.placed, tries, radius=radius, placed_r=self.placed_r,
                                ratio=site_ratio):
            if self.fits(rest_counts, self.orbit_of(p), lines, extra_radius=radius, ratio=rest_ratio):
                return p
        return None

    def any_site_fits(self, pts: np.ndarray, m: int, rest_counts: Counts, tries: int = 6,
                      lines: int | None = None, *, element: str | None = None) -> bool:
        """Does one of the candidate points make an admissible site with a completion?"""
        return self.site_fitting(pts, m, rest_counts, tries, lines, element=element) is not None

    def multiplicity_ok(self, m: int, rest_counts: Counts, lines: int | None = None, *,
                        element: str | None = None) -> bool:
        """Can a site of multiplicity ``m`` go somewhere now and leave ``rest_counts`` placeable
        (in at most ``lines`` further site lines)?"""
        return self.any_site_fits(self.candidates(m), m, rest_counts, lines=lines, element=element)

    def place(self, p: np.ndarray, element: str | None = None) -> None:
        orb = self.orbit_of(p)
        self.placed = np.vstack([self.placed, orb])
        self.placed_r = np.concatenate([self.placed_r, np.full(len(orb), self.radius_of(element))])
        self.placed_el.extend([element] * len(orb))
        self._memo.clear()
        self._certs.clear()
        for memo, certs, _ in self._strict.values():
            memo.clear()
            certs.clear()


class _Budget(Exception):
    pass
