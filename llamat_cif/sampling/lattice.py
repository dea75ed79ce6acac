"""Lattice geometry for the decoder: periodic distances and the window the lattice fields obey.

* :func:`lattice_matrix`, :func:`pair_distances`, :func:`min_distance`: periodic distances (27
  images, one matrix product); :class:`Images`, the distance tests the look-ahead asks ~10^5 times
  per batch (squared, by the direct image alone where that decides); :func:`snap`, the coordinates
  as the CIF reader takes them; :data:`Block` and bit sets, the look-ahead's groups of atoms and
  its kept answers;
* :class:`LatticeWindow`: bounds on the cell lengths from the physical rules of
  :class:`~llamat_cif.sampling.fields.Conditions` (contacts, volume window of
  :mod:`llamat_cif.physics`), spread over the lattice fields in the order they are written;
* angle spans that keep a triclinic or monoclinic cell from being too flat
  (:func:`sin_at_least`, :func:`gamma_span`, :func:`cell_shape_ok`).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import numpy as np

from llamat_cif.cif import ANGLE_DECIMALS, LENGTH_DECIMALS

if TYPE_CHECKING:
    from llamat_cif.sampling.engine import Stats
    from llamat_cif.sampling.fields import Conditions

#: The grids lengths and angles are written on (the canonical CIF's decimals).
_LEN_GRID = 10**LENGTH_DECIMALS
_ANGLE_GRID = 10**ANGLE_DECIMALS


def cell_shape_ok(al: float, be: float, ga: float, min_factor: float = 0.2) -> bool:
    """Triclinic angles that make a real, not too flat cell: V / (abc) >= ``min_factor``."""
    ca, cb, cg = (math.cos(math.radians(t)) for t in (al, be, ga))
    g = 1 - ca * ca - cb * cb - cg * cg + 2 * ca * cb * cg
    return g > 0 and math.sqrt(g) >= min_factor


def lattice_matrix(a, b, c, al, be, ga) -> np.ndarray:
    """Lattice matrix (rows a, b, c in Å) of cell parameters (Å, degrees), as pymatgen builds it."""
    from pymatgen.core import Lattice

    return Lattice.from_parameters(a, b, c, al, be, ga).matrix


#: The 27 lattice translations (-1, 0, 1)^3 in fractional units.
SHIFTS = np.array([[i, j, k] for i in (-1, 0, 1) for j in (-1, 0, 1) for k in (-1, 0, 1)], dtype=float)


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


def min_image_sq(cart: np.ndarray, shift_cart: np.ndarray) -> np.ndarray:
    """Smallest ``|v + s|^2`` over the lattice translations ``shift_cart`` (rows, Å) for every
    vector ``v`` in ``cart`` (last axis 3); shape ``cart.shape[:-1]``.

    Expanded as ``|v|^2 + 2 v.s + |s|^2`` so the work is one matrix product instead of a
    (..., 27, 3) array of differences: the look-ahead asks this ~10^5 times per batch. Rounding
    differs from the direct sum by ~1e-12 Å^2, far below any threshold it is compared with.
    """
    v2 = np.einsum("...k,...k->...", cart, cart)
    d2 = (cart @ (2.0 * shift_cart.T)) + (shift_cart * shift_cart).sum(1)
    return np.maximum(d2.min(-1) + v2, 0.0)


def pair_distances(frac_new: np.ndarray, frac_old: np.ndarray, matrix: np.ndarray,
                   shift_cart: np.ndarray | None = None) -> np.ndarray:
    """Periodic distance (Å) from each new point to each old point, shape (new, old) (27 images).
    ``shift_cart``: ``SHIFTS @ matrix`` when the caller keeps it (the same numbers, not recomputed)."""
    if len(frac_old) == 0 or len(frac_new) == 0:
        return np.zeros((len(frac_new), len(frac_old)))
    d = frac_new[:, None, :] - frac_old[None, :, :]
    d -= np.round(d)
    return np.sqrt(min_image_sq(d @ matrix, SHIFTS @ matrix if shift_cart is None else shift_cart))


#: A group of atoms the look-ahead checks candidates against as one: (key, fractional points,
#: radii), the key being the bytes of both (see :meth:`~llamat_cif.sampling.placement.Placement.check`).
Block = tuple[bytes, np.ndarray, np.ndarray]


class Images:
    """The periodic distance tests of one lattice (rows of ``matrix`` in Å), as the look-ahead asks
    them (~10^5 times per batch): squared lengths against squared thresholds, in few array operations.

    Half the smallest spacing ``h`` between lattice planes (:attr:`direct`) decides how: with a
    fractional difference reduced to [-0.5, 0.5], every image but the direct one has a component of
    magnitude >= 0.5, hence length >= 0.5 h, so a threshold below it is decided by the direct image
    alone; otherwise :func:`min_image_sq` takes the 27 translations."""

    def __init__(self, matrix: np.ndarray) -> None:
        self.matrix = m = np.asarray(matrix, dtype=float)
        self._shift = SHIFTS @ m
        s2 = (self._shift * self._shift).sum(1)
        self.shortest = float(np.sqrt(s2[s2 > 1e-18].min()))  # a point's distance to its copy
        vol = abs(float(np.linalg.det(m)))
        self.direct = 0.5 * min(vol / float(np.linalg.norm(np.cross(m[(i + 1) % 3], m[(i + 2) % 3])))
                                for i in range(3))
        self._thresholds: dict[tuple, tuple[np.ndarray, float]] = {}  # see clear_of

    def min_d2(self, d: np.ndarray, reach: float) -> np.ndarray:
        """Squared length (Å²) of the shortest of the 27 images of each fractional difference in ``d``
        (last axis 3, components in [-0.5, 0.5]), exact wherever it is below ``reach`` (the largest
        threshold it is compared with)."""
        c = d @ self.matrix
        if reach < self.direct * (1 - 1e-9):
            return (c * c).sum(-1)
        return min_image_sq(c, self._shift)

    def clear_of(self, pts: np.ndarray, blk: Block, radius: float, ratio: float, dmin: float) -> np.ndarray:
        """Boolean per point of ``pts``: an atom of ``radius`` there keeps ``max(dmin, ratio * (radius +
        r_j))`` from every atom ``j`` of ``blk`` (the thresholds are kept per block: the look-ahead asks
        about the same blocks again and again)."""
        key = (blk[0], radius, ratio, dmin)
        thr = self._thresholds.get(key)
        if thr is None:
            t = contact_threshold(dmin, ratio, radius, blk[2])
            thr = ((t * t)[None, :], float(t.max(initial=0.0)))
            if len(self._thresholds) < 50_000:
                self._thresholds[key] = thr
        d = pts[:, None, :] - blk[1][None, :, :]
        d -= np.rint(d)
        return (self.min_d2(d, thr[1]) >= thr[0]).all(1)

    def far(self, new: np.ndarray, old: np.ndarray, thr: np.ndarray) -> np.ndarray:
        """Boolean ``(new, old)``: each periodic distance from a ``new`` point to an ``old`` point
        (fractional) is at least ``thr`` (Å, broadcastable to that shape); the same answers as
        :func:`pair_distances` ``>= thr``."""
        d = new[:, None, :] - old[None, :, :]
        d -= np.rint(d)
        return self.min_d2(d, float(np.max(thr, initial=0.0))) >= thr * thr


def contact_threshold(dmin: float, ratio: float, radius, radii):
    """The look-ahead's distance rule: the smallest admissible distance (Å) between an atom of
    covalent ``radius`` and atoms of ``radii`` (broadcast): ``max(dmin, ratio * (radius + radii))``."""
    return np.maximum(dmin, ratio * (radius + radii))


def to_bits(mask: np.ndarray) -> int:
    """A boolean mask as a bit set (bit i: ``mask[i]``)."""
    return int.from_bytes(np.packbits(mask, bitorder="little").tobytes(), "little")


def from_bits(bits: int, n: int) -> np.ndarray:
    """The boolean mask of ``n`` points of a bit set."""
    raw = np.frombuffer(bits.to_bytes((n + 7) // 8, "little"), dtype=np.uint8)
    return np.unpackbits(raw, count=n, bitorder="little").astype(bool)


def block(pts: np.ndarray, radii: np.ndarray) -> Block:
    """A :data:`Block` of atoms at ``pts`` (n, 3) with ``radii`` (n,)."""
    pts, radii = np.asarray(pts, dtype=float), np.asarray(radii, dtype=float)
    return pts.tobytes() + radii.tobytes(), pts, radii


def min_distance(frac_new: np.ndarray, frac_old: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    """Minimum periodic distance (Å) from each new point to any old point (27 images)."""
    if len(frac_old) == 0:
        return np.full(len(frac_new), np.inf)
    return pair_distances(frac_new, frac_old, matrix).min(axis=1)


def monotone_memo(check: Callable[[float], bool]) -> Callable[[float], bool]:
    """Memoise a check that is monotone in its value (a longer last cell length leaves more room):
    once ``x`` passes, every larger value passes; once it fails, every smaller one fails."""
    lowest_pass, highest_fail = [math.inf], [-math.inf]

    def memo(x: float) -> bool:
        if x >= lowest_pass[0]:
            return True
        if x <= highest_fail[0]:
            return False
        ok = bool(check(x))
        if ok:
            lowest_pass[0] = x
        else:
            highest_fail[0] = x
        return ok

    return memo


def sin_at_least(s: float) -> tuple[float, float]:
    """Angles (degrees, within 30..150) whose sine is at least ``s``."""
    s = min(1.0, max(0.0, s))
    t = math.degrees(math.asin(s))
    return max(30.0, t), min(150.0, 180.0 - t)


def gamma_span(al: float, be: float, s_min: float) -> tuple[float, float]:
    """Triclinic gamma (degrees) for which V / (abc) = sqrt(1 - ca² - cb² - cg² + 2 ca cb cg) >= s_min.

    The expression is a downward parabola in cg = cos(gamma) with its top sin(al) sin(be) at
    cg = ca cb, so the admissible gammas form one interval.
    """
    ca, cb = math.cos(math.radians(al)), math.cos(math.radians(be))
    disc = (1 - ca * ca) * (1 - cb * cb) - s_min * s_min
    if disc < 0:
        return 90.0, 90.0  # no gamma reaches s_min (cannot happen after sin_at_least spans)
    r = math.sqrt(disc)
    return math.degrees(math.acos(min(1.0, ca * cb + r))), math.degrees(math.acos(max(-1.0, ca * cb - r)))


@dataclass(frozen=True)
class LatticeWindow:
    """Bounds on the lattice numbers from the physical rules of :class:`Conditions`.

    * every cell length at least ``2 f max(r_cov)``: each atom keeps its own translation copy at
      the contact distance (``f`` the contact ratio, 0 when off);
    * cell volume within ``[vlo, vhi]``: the volume window on the composition-based prediction
      (:func:`llamat_cif.physics.volume_bounds`), spread over the lattice fields in the order they
      are written so that every prefix keeps an admissible completion (lengths <= 60 Å).
    """

    len_lo: float = 1.0
    vlo: float = 0.0
    vhi: float = math.inf
    hexf: float = 1.0  # area factor of the ab face (sin 120° on hexagonal axes)
    vhi0: float = math.inf  # the top before any widening

    LEN_HI = 60.0

    @classmethod
    def for_counts(cls, counts: dict[str, int], cond: Conditions, *, hexagonal_axes: bool) -> LatticeWindow:
        len_lo, vlo, vhi = 1.0, 0.0, math.inf
        if cond.contact_ratio:
            from llamat_cif.physics import covalent_radius

            len_lo = max(1.0, 2 * cond.contact_ratio * max(covalent_radius(e) for e in counts))
        if cond.volume_window:
            from llamat_cif.physics import volume_bounds

            vlo, vhi = volume_bounds(counts, cond.volume_window)
        return cls(len_lo, vlo, vhi, math.sqrt(3) / 2 if hexagonal_axes else 1.0)

    def cubic(self) -> tuple[float, float]:
        return self.vlo ** (1 / 3), self.vhi ** (1 / 3)

    def first(self, n_free: int) -> tuple[float, float]:
        """The first length when ``n_free`` lengths (2: a = b, c; 3: a, b, c) remain."""
        if n_free == 2:  # V = a² c hexf
            return math.sqrt(self.vlo / (self.LEN_HI * self.hexf)), math.sqrt(self.vhi / (self.len_lo * self.hexf))
        return self.vlo / self.LEN_HI**2, self.vhi / self.len_lo**2

    def second(self, a: float) -> tuple[float, float]:
        return self.vlo / (a * self.LEN_HI), self.vhi / (a * self.len_lo)

    def last(self, area: float) -> tuple[float, float]:
        """The last length over a face of ``area`` = a b (angle factor 1: the angles that follow
        then only need sin >= vlo / (abc), one interval each)."""
        return self.vlo / (area * self.hexf), self.vhi / (area * self.hexf)

    def _len(self, x: float) -> float:
        return min(self.LEN_HI, max(self.len_lo, x))

    def roomiest(self, area: float) -> float:
        """The largest admissible last length over a face of ``area``."""
        return self._len(self.vhi / (area * self.hexf))

    def roomiest_pair(self, a: float) -> tuple[float, float]:
        """b = c for the largest admissible volume after ``a`` (the most even shape)."""
        bc = self._len(math.sqrt(self.vhi / a)) if math.isfinite(self.vhi) else self.LEN_HI
        return bc, self._len(self.vhi / (a * bc)) if math.isfinite(self.vhi) else self.LEN_HI

    def widened(self, factor: float = 1.25, limit: float = 5.0) -> LatticeWindow:
        """The same window with its top raised by ``factor``; open once the top passes ``limit``
        times the window's original top."""
        vhi = self.vhi * factor
        top0 = self.vhi0 if math.isfinite(self.vhi0) else self.vhi
        return replace(self, vhi=vhi if vhi < limit * top0 else math.inf, vhi0=top0)

    def fits_somewhere(self, system: str, rhombo_hex: bool, room: Callable[..., bool]) -> bool:
        """Does the composition fit one of a few roomiest cells of the window (the lattice fields'
        own checks then find the rest)?"""
        if system == "cubic":
            a = self.clip(self.cubic())[1]
            return room(a, a, a)
        if system in ("tetragonal", "trigonal", "hexagonal") or rhombo_hex:
            lo, hi = self.clip(self.first(2))
            ang = 120.0 if self.hexf != 1.0 else 90.0
            return any(room(a, a, self.roomiest(a * a), 90.0, 90.0, ang) for a in np.linspace(lo, hi, 7))
        lo, hi = self.clip(self.first(3))
        return any(room(a, *self.roomiest_pair(a)) for a in np.geomspace(lo, hi, 7))

    def clip(self, span: tuple[float, float], stats: Stats | None = None) -> tuple[float, float]:
        """A length span within [len_lo, 60] on the 3-decimal grid (the full range, counted as a
        fallback, if nothing is left)."""
        lo = math.ceil(max(self.len_lo, span[0]) * _LEN_GRID - 1e-6) / _LEN_GRID
        hi = math.floor(min(self.LEN_HI, span[1]) * _LEN_GRID + 1e-6) / _LEN_GRID
        if lo > hi:
            if stats is not None:
                stats.fallbacks += 1
            return math.ceil(self.len_lo * _LEN_GRID) / _LEN_GRID, self.LEN_HI
        return lo, hi

    @staticmethod
    def angle_clip(span: tuple[float, float], stats: Stats | None = None) -> tuple[float, float]:
        """An angle span within 30..150 on the 2-decimal grid, kept 0.01° inside its ends."""
        lo = 30.0 if span[0] <= 30.0 else math.ceil(span[0] * _ANGLE_GRID + 1) / _ANGLE_GRID
        hi = 150.0 if span[1] >= 150.0 else math.floor(span[1] * _ANGLE_GRID - 1) / _ANGLE_GRID
        if lo > hi:
            if stats is not None:
                stats.fallbacks += 1
            return 30.0, 150.0
        return lo, hi

