"""Where the atoms of a symmetric CIF can still go: the look-ahead behind constrained decoding.

The CIF grammar (:mod:`llamat_cif.grammar`) lets the model write a structure one site line at a
time: element, Wyckoff multiplicity, then x, y, z. A choice can be locally fine and still leave no
way to finish the document: a formula whose counts need more special points than the group has,
a site placed on the last free special point another element needed, a coordinate prefix from
which every completion sits too close to a mirror image. This module answers "can the rest still
be placed?" so that the grammar only offers choices that keep a completion in reach.

Two levels:

* :func:`allocatable` (no lattice yet): can every element count be written as a sum of Wyckoff
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

import json
from collections.abc import Mapping, Sequence
from functools import lru_cache
from pathlib import Path

import numpy as np

from llamat_cif.grammar import (
    _SHIFTS,
    min_image_sq,
    orbit,
    orbit_sizes,
    pair_distances,
    space_group_ops,
    wyckoff_subspaces,
)
from llamat_cif.protocol import CDVAE_MIN_DISTANCE

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

def _radical_inverse(i: int, base: int) -> float:
    f, r = 1.0, 0.0
    while i > 0:
        f /= base
        r += f * (i % base)
        i //= base
    return r


#: Probe points per dimension of a Wyckoff subspace with free parameters: enough that a cell full
#: of one general position (64 atoms of P1) finds room for every atom in the look-ahead search.
_N_PROBES = {1: 16, 2: 48, 3: 96}


@lru_cache(maxsize=3)
def _probe_params(dim: int) -> np.ndarray:
    """Halton points in [0, 1)^dim, shifted off the special values 0, 1/4, 1/3, 1/2 ..."""
    bases = (2, 3, 5)[:dim]
    pts = np.array([[_radical_inverse(i, b) for b in bases] for i in range(1, _N_PROBES[dim] + 1)])
    return (pts + 0.0703) % 1.0


@lru_cache(maxsize=512)
def wyckoff_table(number: int) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    """Per multiplicity m: (distinct zero-dimensional orbit representatives, probe points on the
    subspaces with free parameters). Either array may be empty (shape (0, 3))."""
    ops = space_group_ops(number)
    table: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    for m in sorted(orbit_sizes(number)):
        fixed, probes, seen = [], [], set()
        for p0, basis in wyckoff_subspaces(number, m):
            if basis.shape[1] == 0:
                pts = orbit(np.asarray(p0, dtype=float), ops)
                if len(pts) != m:
                    continue
                key = frozenset(map(tuple, np.round(pts, 3) % 1.0))
                if key not in seen:
                    seen.add(key)
                    fixed.append(np.asarray(p0, dtype=float) % 1.0)
            else:
                t = _probe_params(basis.shape[1])
                probes.extend(list((p0[None, :] + t @ basis.T) % 1.0))
        table[m] = (np.array(fixed).reshape(-1, 3), np.array(probes).reshape(-1, 3))
    return table


ALLOCATION_TABLE = Path(__file__).resolve().parent / "resources" / "wyckoff_allocation.json"


def allocation_entry(number: int) -> tuple[frozenset[int], tuple[int, ...], tuple[int, ...]]:
    """(multiplicities with free parameters, sizes of the other Wyckoff positions, how many
    distinct zero-dimensional positions of each of those sizes) computed from the operations."""
    table = wyckoff_table(number)
    unlimited = frozenset(m for m, (_, probes) in table.items() if len(probes))
    points = sorted((m, len(fixed)) for m, (fixed, _) in table.items() if m not in unlimited and len(fixed))
    return unlimited, tuple(m for m, _ in points), tuple(n for _, n in points)


def write_allocation_table(path: Path = ALLOCATION_TABLE) -> None:
    """Precompute :func:`allocation_entry` for all 230 groups (building it takes ~1 min)."""
    rows = {}
    for n in range(1, 231):
        unlimited, sizes, counts = allocation_entry(n)
        rows[str(n)] = {"free": sorted(unlimited), "point_sizes": list(sizes), "points": list(counts)}
    path.write_text(json.dumps({"note": "llamat_cif.placement.write_allocation_table()", "groups": rows}))


@lru_cache(maxsize=1)
def _allocation_table() -> dict[int, tuple[frozenset[int], tuple[int, ...], tuple[int, ...]]]:
    if not ALLOCATION_TABLE.is_file():
        return {}
    rows = json.loads(ALLOCATION_TABLE.read_text())["groups"]
    return {int(k): (frozenset(r["free"]), tuple(r["point_sizes"]), tuple(r["points"])) for k, r in rows.items()}


@lru_cache(maxsize=200_000)
def allocatable(number: int, counts: tuple[int, ...]) -> bool:
    """Can the element ``counts`` be distributed over the Wyckoff positions of the space group?

    Each zero-dimensional Wyckoff position takes at most one site; positions with free parameters
    take any number. Distances are ignored (the lattice is not known yet).
    """
    entry = _allocation_table().get(number) or allocation_entry(number)
    unlimited, point_sizes, points = entry
    return _allocate(tuple(sorted((c for c in counts if c > 0), reverse=True)), unlimited, points, point_sizes)


@lru_cache(maxsize=200_000)
def min_lines(number: int, counts: tuple[int, ...]) -> int:
    """Fewest site lines that can write these element counts (each count a sum of the group's
    Wyckoff multiplicities; special-point limits ignored, so a lower bound)."""
    best = _fewest_lines(number, max(counts, default=0))
    return sum(best[c] for c in counts if c > 0)


_LINES: dict[int, list[int]] = {}


def _fewest_lines(number: int, top: int) -> list[int]:
    """``best[t]``: fewest multiplicities of the group summing to ``t``, for every ``t <= top``
    (10**6 where none does); one table per group, extended on demand."""
    from llamat_cif.grammar import orbit_sizes

    best = _LINES.setdefault(number, [0])
    if len(best) <= top:
        sizes = sorted(orbit_sizes(number))
        for t in range(len(best), top + 1):
            best.append(min((best[t - m] + 1 for m in sizes if m <= t), default=10**6))
    return best


@lru_cache(maxsize=200_000)
def _allocate(counts: tuple[int, ...], unlimited: frozenset[int], free_points: tuple[int, ...],
              point_sizes: tuple[int, ...]) -> bool:
    if not counts:
        return True
    r, rest = counts[0], counts[1:]
    # unlimited sizes first (they use up nothing), largest first
    for m in sorted(unlimited, reverse=True):
        if m <= r and _allocate(tuple(sorted(rest + ((r - m),) if r > m else rest, reverse=True)),
                                unlimited, free_points, point_sizes):
            return True
    for j, m in enumerate(point_sizes):
        if m <= r and free_points[j] > 0:
            left = free_points[:j] + (free_points[j] - 1,) + free_points[j + 1:]
            nxt = tuple(sorted(rest + ((r - m),) if r > m else rest, reverse=True))
            if _allocate(nxt, unlimited, left, point_sizes):
                return True
    return False


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
        lat = self.shift_cart = _SHIFTS @ self.matrix  # the 27 lattice translations, Å
        norms = np.sqrt((lat * lat).sum(1))
        self.shortest_vector = float(norms[norms > 1e-9].min())  # an atom's distance to its own copy
        self.table = wyckoff_table(number)
        self.sizes = sorted(self.table)
        self.placed = np.zeros((0, 3))
        self.placed_r = np.zeros(0)
        self.budget = budget
        self.optimistic = 0  # questions answered "yes" because the budget ran out
        self._memo: dict[tuple, list[np.ndarray] | None] = {}
        self._own_cache: dict[tuple, np.ndarray] = {}  # (points, m, radius, ratio) -> own-copies mask
        self._certs: dict[tuple, tuple[np.ndarray, np.ndarray, int]] = {}  # counts -> (atoms, radii, lines)
        self._nodes = 0
        self.total_budget = total_budget
        self._spent = 0  # nodes searched over all questions

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
        key = (pts.tobytes(), m, radius, ratio)
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
             extra_radius: float = 0.0) -> bool:
        """Can atoms in these per-element ``counts`` all still be placed, next to the placed atoms
        and the ``extra`` points (the orbit of a site being considered, atoms of ``extra_radius``),
        in at most ``lines`` site lines (``None``: any number)?

        A completion found once is kept as a certificate for its counts: while the placed atoms
        do not change, a new question with other ``extra`` points is answered by checking the
        certificate's atoms against them before searching again.
        """
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
        return _allocate(tuple(c for c, _ in counts), frozenset(unlimited), tuple(free), tuple(sizes))

    def site_fits(self, p: np.ndarray, m: int, rest_counts: Counts, lines: int | None = None, *,
                  element: str | None = None, site_ratio: float | None = None) -> bool:
        """Is ``p`` an admissible site of multiplicity ``m`` (for an atom of ``element``) after which
        ``rest_counts`` still fit (in at most ``lines`` further site lines)? ``site_ratio``: a
        stricter contact ratio for this site alone (the rest keeps the placement's)."""
        radius = self.radius_of(element)
        if not self.check(p[None, :], m, radius=radius, ratio=site_ratio)[0]:
            return False
        return self.fits(rest_counts, self.orbit_of(p), lines, extra_radius=radius)

    def site_fitting(self, pts: np.ndarray, m: int, rest_counts: Counts, tries: int = 6,
                     lines: int | None = None, *, element: str | None = None,
                     site_ratio: float | None = None) -> np.ndarray | None:
        """The first candidate point that makes an admissible site with a completion, or ``None``."""
        if len(pts) == 0:
            return None
        radius = self.radius_of(element)
        for p in self._first_ok(pts, m, self.placed, tries, radius=radius, placed_r=self.placed_r,
                                ratio=site_ratio):
            if self.fits(rest_counts, self.orbit_of(p), lines, extra_radius=radius):
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
        self._memo.clear()
        self._certs.clear()


class _Budget(Exception):
    pass
