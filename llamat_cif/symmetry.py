"""Space groups and their Wyckoff positions, from the symmetry operations alone.

Everything here is a function of a space-group number (1-230) in spglib's default setting, the
setting the canonical CIF of :mod:`llamat_cif.cif` is written in (conventional cell):

* operations and orbits: :func:`space_group_ops`, :func:`orbit`, :func:`crystal_system`,
  :func:`lattice_points` (centring);
* multiplicities: :func:`orbit_sizes` (the Wyckoff multiplicities, precomputed in
  ``resources/orbit_sizes.json``), :func:`reachable_counts` (atom counts that are sums of them) and
  the groups compatible with a set of element counts (:func:`compatible_spacegroups`);
* Wyckoff subspaces: :func:`wyckoff_subspaces` (the affine subspaces of each multiplicity),
  :func:`solve_values` / :func:`solve_rows` (which values a coordinate
  can take once others are typed), :func:`wyckoff_table` (representatives and probe points);
* allocation: :func:`allocatable` (can element counts be distributed over the Wyckoff positions,
  each zero-dimensional position used at most once; precomputed in
  ``resources/wyckoff_allocation.json``), :func:`min_lines` (fewest site lines for the counts),
  :func:`spacegroups_for` / :func:`spacegroups_for_formula` (groups that can hold a composition).

The constrained decoder (:mod:`llamat_cif.sampling`) builds on these; nothing here knows about tokens.

The operations come from spglib's database (one Hall number per group, its default setting).
moyopy's ``operations_from_number(n, setting=Setting.spglib())`` gives the same set of operations but
in another order for 159 of the 230 groups, and the Wyckoff subspace bases derived from that order
differ for 16 (group, multiplicity) pairs (a flipped direction in 221, 225 and 229, last-bit
differences elsewhere): the probe points of the look-ahead would move and seeded samples would
change, so spglib's order is kept.
"""

from __future__ import annotations

import itertools
import json
from functools import lru_cache
from pathlib import Path

import numpy as np

RESOURCES = Path(__file__).resolve().parent / "resources"
ORBIT_SIZES_TABLE = RESOURCES / "orbit_sizes.json"
ALLOCATION_TABLE = RESOURCES / "wyckoff_allocation.json"

# ------------------------------------------------------------------------ operations and orbits


@lru_cache(maxsize=256)
def space_group_ops(number: int) -> tuple[np.ndarray, np.ndarray]:
    """Symmetry operations of a space group in spglib's default setting (conventional cell)."""
    import spglib

    for hall in range(1, 531):
        if spglib.get_spacegroup_type(hall).number == number:
            sym = spglib.get_symmetry_from_database(hall)
            return np.asarray(sym["rotations"], dtype=float), np.asarray(sym["translations"], dtype=float)
    raise ValueError(f"no space group {number}")


def orbit(p: np.ndarray, ops: tuple[np.ndarray, np.ndarray], decimals: int = 3) -> np.ndarray:
    """Distinct images of a fractional point under the operations (mod 1, merged at 1e-3)."""
    rots, trans = ops
    imgs = np.mod(np.round(np.einsum("kij,j->ki", rots, p) + trans, decimals), 1.0)
    return np.unique(np.round(imgs, decimals) % 1.0, axis=0)


@lru_cache(maxsize=256)
def lattice_points(number: int) -> int:
    """Lattice points per conventional cell of a space group (pure translations among its
    operations): 1 for P, 2 for A/B/C/I, 3 for R (hexagonal axes), 4 for F. A crystal written in
    this group's conventional cell with N atoms has a primitive cell of at most N / this many atoms."""
    rots, _ = space_group_ops(number)
    return int(sum(np.allclose(r, np.eye(3)) for r in rots))


def crystal_system(number: int) -> str:
    """Crystal system (``"triclinic"`` ... ``"cubic"``) of a space-group number."""
    for hi, name in ((2, "triclinic"), (15, "monoclinic"), (74, "orthorhombic"), (142, "tetragonal"),
                     (167, "trigonal"), (194, "hexagonal"), (230, "cubic")):
        if number <= hi:
            return name
    raise ValueError(number)


# ---------------------------------------------------------------------------- multiplicities


@lru_cache(maxsize=1)
def _orbit_table() -> dict[int, frozenset[int]]:
    if ORBIT_SIZES_TABLE.is_file():
        return {int(k): frozenset(v) for k, v in json.loads(ORBIT_SIZES_TABLE.read_text())["sizes"].items()}
    return {}


@lru_cache(maxsize=256)
def orbit_sizes(number: int) -> frozenset[int]:
    """Wyckoff multiplicities of a space group (precomputed table, else :func:`_orbit_sizes`)."""
    table = _orbit_table()
    return table[number] if number in table else _orbit_sizes(number)


@lru_cache(maxsize=256)
def _orbit_sizes(number: int) -> frozenset[int]:
    """Multiplicities a Wyckoff orbit can have: |G| / |site stabiliser| (divisors of |G| that occur
    on a grid of special points; a superset is harmless, the orbit check at the last digit is exact).

    The grid is every multiple of 1/24 (which holds a point of every Wyckoff position of every space
    group in its standard setting, odd eighths such as P4_132's 4a at (3/8, 3/8, 3/8) included) plus
    a general point."""
    rots, trans = space_group_ops(number)
    n = len(rots)
    g = np.array([*(np.arange(24) / 24), 0.1234])
    pts = np.stack(np.meshgrid(g, g, g, indexing="ij"), -1).reshape(-1, 3)
    # orbit size = |G| / |stabiliser|; the stabiliser of p: operations that map p onto itself mod 1
    d = np.einsum("kij,pj->kpi", rots, pts) + trans[:, None, :] - pts[None]
    stabiliser = (np.abs(d - np.round(d)) < 1e-6).all(-1).sum(0)
    return frozenset(int(n // s) for s in np.unique(stabiliser) if n % s == 0) | {n}


def reachable_counts(number: int, limit: int = 200) -> frozenset[int]:
    """Atom counts of one element a cell of this space group can hold (sums of orbit sizes)."""
    return _reachable(_sorted_sizes(number), limit)


def compatible_spacegroups(counts: dict[str, int]) -> frozenset[int]:
    """Space groups in which every element count is a sum of Wyckoff multiplicities."""
    top = max(counts.values())
    out = []
    for n in range(1, 231):
        ok = _reach_table(_sorted_sizes(n), top)  # c in reachable_counts(n, top), without the set
        if all(c >= 0 and ok[c] for c in counts.values()):
            out.append(n)
    return frozenset(out)


@lru_cache(maxsize=256)
def _sorted_sizes(number: int) -> tuple[int, ...]:
    return tuple(sorted(orbit_sizes(number)))


@lru_cache(maxsize=4096)
def _reachable(sizes: tuple[int, ...], limit: int) -> frozenset[int]:
    ok = _reach_table(sizes, limit)
    return frozenset(t for t in range(limit + 1) if ok[t])


_REACH: dict[tuple[int, ...], list[bool]] = {}


def _reach_table(sizes: tuple[int, ...], top: int) -> list[bool]:
    """``ok[t]``: ``t`` is a sum of ``sizes``, for every ``t <= top`` (at least); one table per
    size set, extended on demand. Each entry depends only on smaller ones, so a table built to any
    limit answers every question below it: the groups' questions with many limits (one per
    formula's largest count) share it instead of rebuilding it per limit."""
    ok = _REACH.setdefault(sizes, [True])
    for t in range(len(ok), top + 1):
        ok.append(any(t >= s and ok[t - s] for s in sizes))
    return ok


# --------------------------------------------------------------------------- Wyckoff subspaces


@lru_cache(maxsize=8)
def _grid_stabilisers(number: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The 1/24 grid of :func:`wyckoff_subspaces`, which operations fix each of its points (points,
    ops: a contiguous row per point) and each point's orbit size. It does not depend on the
    multiplicity, and the (ops x 13824 points) arrays are most of the cost of a group's subspaces:
    computed once per group, not once per multiplicity (read-only).

    The images are one matrix product (an einsum is ~10x slower here), the rest is done in place
    (the same numbers, without four more arrays of that size). The product's sums may round in
    another order, but every image and translation is a multiple of 1/24 (integer rotations, the
    groups' translations are multiples of 1/12 and 1/8): an image is either the point itself to
    ~1e-15 or at least 1/24 away, so the 1e-6 test cannot change."""
    rots, trans = space_group_ops(number)
    g = np.arange(24) / 24
    pts = np.stack(np.meshgrid(g, g, g, indexing="ij"), -1).reshape(-1, 3)
    d = np.matmul(pts, rots.transpose(0, 2, 1))  # (ops, points, 3), then in place:
    d += trans[:, None, :]
    d -= pts[None]
    d -= np.round(d)
    fixed = np.ascontiguousarray((np.abs(d, out=d) < 1e-6).all(-1).T)  # (points, ops)
    sizes = len(rots) // fixed.sum(1)
    for a in (pts, fixed, sizes):
        a.flags.writeable = False
    return pts, fixed, sizes


@lru_cache(maxsize=2048)
def wyckoff_subspaces(number: int, m: int) -> tuple[tuple[np.ndarray, np.ndarray], ...]:
    """Affine subspaces ``p0 + B t`` (mod 1) whose points have orbit size ``m`` (special positions).

    Derived from the operations alone: points of a 1/24 grid (which holds a point of every Wyckoff
    position of every space group in its standard setting) are grouped by stabiliser; the subspace of
    a stabiliser H through p0 is p0 + null(W - I for W in H). For the general position (m = |G|) the
    subspace is the whole cell.
    """
    from scipy.linalg import null_space

    rots, _ = space_group_ops(number)
    n = len(rots)
    if m == n:
        return ((np.zeros(3), np.eye(3)),)
    pts, fixed, sizes = _grid_stabilisers(number)
    out: list[tuple[np.ndarray, np.ndarray]] = []
    seen: dict[bytes, list[int]] = {}
    for j in np.nonzero(sizes == m)[0]:
        key = fixed[j].tobytes()
        p0 = pts[j]
        members = seen.setdefault(key, [])
        if members:
            # the same stabiliser can fix parallel subspaces: keep p0 unless it lies on a kept one
            on = False
            for idx in members:
                q0, b = out[idx]
                diff = p0 - q0
                diff -= diff.round()
                if b.shape[1] == 0:
                    on = np.abs(diff).max() < 1e-6
                else:
                    r = diff - b @ (b.T @ diff)  # b is orthonormal: the least-squares residual
                    on = np.abs(r - r.round()).max() < 1e-6
                if on:
                    break
            if on:
                continue
        w = rots[fixed[j]]
        a = (w - np.eye(3)).reshape(-1, 3)
        basis = null_space(a) if np.abs(a).max() > 0 else np.eye(3)
        members.append(len(out))
        out.append((p0, basis))
    return tuple(out)


@lru_cache(maxsize=200_000)
def solve_values(number: int, m: int, typed: tuple[tuple[int, float], ...], target: int, *, pinned: bool = False):
    """Memoised :func:`_solve_values` on the Wyckoff subspaces of (space group, multiplicity);
    ``pinned``: only the values the subspaces that fix the target give (those leaving it free skipped)."""
    return _solve_values(wyckoff_subspaces(number, m), dict(typed), target, skip_free=pinned,
                         solvers=_solvers(number, m, tuple(i for i, _ in typed), target))


@lru_cache(maxsize=4096)
def _solvers(number: int, m: int, idx: tuple[int, ...], target: int) -> tuple:
    """:func:`_subspace_solver` of each Wyckoff subspace for typed axes ``idx`` and a ``target`` axis:
    kept, as the typed values change with every probe and these do not."""
    return tuple(_subspace_solver(b, list(idx), target) for _, b in wyckoff_subspaces(number, m))


#: Integer shifts tried for each typed coordinate (a subspace point may wrap around the cell).
_WRAPS = {n: np.array(list(itertools.product(range(-2, 3), repeat=n)), dtype=float) for n in (1, 2, 3)}


def _subspace_solver(b: np.ndarray, idx: list[int], target: int) -> tuple[np.ndarray, np.ndarray, bool] | None:
    """For a subspace with basis ``b`` and typed axes ``idx``: the typed rows of the basis, their
    pseudo-inverse (transposed) and whether ``target`` stays free once they are fixed (``None``:
    no free parameter or nothing typed)."""
    from scipy.linalg import null_space

    if b.shape[1] == 0 or not idx:
        return None
    bt = b[idx]
    pinv_t = np.linalg.pinv(bt).T
    ns = null_space(bt)
    return bt, pinv_t, bool(ns.size and np.abs(b[target] @ ns).max() > 1e-6)


def _solve_values(subspaces, typed: dict[int, float], target: int, tol: float = 2.5e-4, *,
                  solvers: tuple | None = None, skip_free: bool = False):
    """Values the ``target`` coordinate can take on the subspaces, given typed coordinates (4-decimal
    roundings, hence ``tol``): ``None`` when some subspace leaves it free (``skip_free``: such subspaces
    are passed over), else a sorted array (mod 1). ``solvers``: :func:`_solvers`' answer, if kept."""
    idx = list(typed)
    if not idx:  # nothing typed: a subspace with a free target leaves it free, else p0 gives it
        free = [b.shape[1] > 0 and np.abs(b[target]).max() > 1e-6 for _, b in subspaces]
        if any(free) and not skip_free:
            return None
        vals = [p0[target] % 1.0 for (p0, _), f in zip(subspaces, free, strict=True) if not f]
        return np.unique(np.round(np.array(vals), 4) % 1.0) if vals else np.zeros(0)
    tv = np.array([[typed[i] for i in idx]], dtype=float)
    solvers = solvers or tuple(_subspace_solver(b, idx, target) for _, b in subspaces)
    return _solve_many(subspaces, idx, tv, target, tol, solvers, skip_free)[0]


def _solve_many(subspaces, idx: list[int], tv: np.ndarray, target: int, tol: float, solvers: tuple,
                skip_free: bool) -> list:
    """:func:`_solve_values` for each row of ``tv`` (typed values on axes ``idx``), ``t`` solved for every
    row and integer wrap at once (a stack of the same small products a call on one row makes)."""
    vals: list[list[float]] = [[] for _ in tv]
    free_hit = np.zeros(len(tv), dtype=bool)
    for (p0, b), solver in zip(subspaces, solvers, strict=True):
        if b.shape[1] == 0:
            diff = tv - p0[idx]
            for i in np.nonzero(np.all(np.abs(diff - np.round(diff)) < tol, axis=1))[0]:
                vals[i].append(p0[target] % 1.0)
            continue
        bt, pinv_t, free = solver
        rhs = tv[:, None, :] + _WRAPS[len(idx)][None] - p0[idx][None, None, :]  # (rows, wraps, typed)
        t = rhs @ pinv_t  # least-squares parameters per row and wrap
        hit = np.abs(t @ bt.T - rhs).max(2) < tol
        if free:
            free_hit |= hit.any(1) & (not skip_free)  # typed coordinates reachable, the target free
            continue
        for i, w in zip(*np.nonzero(hit), strict=True):
            vals[i].append(float((p0[target] + b[target] @ t[i, w]) % 1.0))
    return [None if f else np.unique(np.round(np.array(v), 4) % 1.0) if v else np.zeros(0)
            for v, f in zip(vals, free_hit, strict=True)]


def solve_rows(number: int, m: int, idx: tuple[int, ...], tv: np.ndarray, target: int, *, pinned: bool = False) -> list:
    """:func:`solve_values` for each row of ``tv`` (typed values on the axes ``idx``), in one pass."""
    return _solve_many(wyckoff_subspaces(number, m), list(idx), tv, target, 2.5e-4, _solvers(number, m, idx, target),
                       pinned)


#: Probe points per dimension of a Wyckoff subspace with free parameters: enough that a cell full
#: of one general position (64 atoms of P1) finds room for every atom in the look-ahead search.
_N_PROBES = {1: 16, 2: 48, 3: 96}


@lru_cache(maxsize=3)
def _probe_params(dim: int) -> np.ndarray:
    """Halton points in [0, 1)^dim (bases 2, 3, 5, unscrambled, without the first point 0), shifted
    off the special values 0, 1/4, 1/3, 1/2 ..."""
    from scipy.stats import qmc

    pts = qmc.Halton(d=dim, scramble=False).random(_N_PROBES[dim] + 1)[1:]
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


# -------------------------------------------------------------------------------- allocation


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
    path.write_text(json.dumps({"note": "llamat_cif.symmetry.write_allocation_table()", "groups": rows}))


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
    return allocatable_on(tuple(sorted((c for c in counts if c > 0), reverse=True)), unlimited, points, point_sizes)


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
    best = _LINES.setdefault(number, [0])
    if len(best) <= top:
        sizes = sorted(orbit_sizes(number))
        for t in range(len(best), top + 1):
            best.append(min((best[t - m] + 1 for m in sizes if m <= t), default=10**6))
    return best


@lru_cache(maxsize=200_000)
def allocatable_on(counts: tuple[int, ...], unlimited: frozenset[int], free_points: tuple[int, ...],
                   point_sizes: tuple[int, ...]) -> bool:
    """Can ``counts`` (largest first) be written as sums of the ``unlimited`` multiplicities (free
    parameters: any number of sites) and of the point positions, ``free_points[j]`` positions of
    size ``point_sizes[j]`` left, each taking one site?"""
    if not counts:
        return True
    r, rest = counts[0], counts[1:]
    # unlimited sizes first (they use up nothing), largest first
    for m in sorted(unlimited, reverse=True):
        if m <= r and allocatable_on(tuple(sorted(rest + ((r - m),) if r > m else rest, reverse=True)),
                                      unlimited, free_points, point_sizes):
            return True
    for j, m in enumerate(point_sizes):
        if m <= r and free_points[j] > 0:
            left = free_points[:j] + (free_points[j] - 1,) + free_points[j + 1:]
            nxt = tuple(sorted(rest + ((r - m),) if r > m else rest, reverse=True))
            if allocatable_on(nxt, unlimited, left, point_sizes):
                return True
    return False


def allocatable_within(number: int, counts: tuple[int, ...], max_lines: int | None = None) -> bool:
    """The group's Wyckoff positions can hold the counts (special points used once), in at most
    ``max_lines`` site lines (the document must end within the token budget)."""
    key = tuple(sorted(counts, reverse=True))
    return allocatable(number, key) and (max_lines is None or min_lines(number, key) <= max_lines)


@lru_cache(maxsize=4096)
def spacegroups_for(counts: tuple[int, ...], max_lines: int | None = None) -> frozenset[int] | None:
    """Groups whose Wyckoff positions can hold these element counts (special points used once)."""
    ok = frozenset(n for n in compatible_spacegroups(dict(enumerate(counts))) if allocatable_within(n, counts, max_lines))
    return ok or None


@lru_cache(maxsize=4096)
def spacegroups_for_formula(amounts: tuple[int, ...], max_atoms: int,
                            max_lines: int | None = None) -> frozenset[int] | None:
    """Groups that can hold some multiple k of a reduced formula within ``max_atoms``."""
    top = max(1, max_atoms // sum(amounts))
    ok = frozenset(n for n in range(1, 231) if any(
        all(a * k in reachable_counts(n, a * k) for a in amounts)
        and allocatable_within(n, tuple(a * k for a in amounts), max_lines)
        for k in range(1, top + 1)))
    return ok or None

