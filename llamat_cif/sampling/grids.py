"""The probe points the CIF grammar's look-ahead tries for a site whose first coordinates are typed.

A coordinate digit is accepted when some completion of the site line keeps the composition
placeable (:mod:`llamat_cif.sampling.placement`). The completions tried after a typed ``x`` (and
``y``) are a grid: per value ``y`` can take on the Wyckoff subspaces of the multiplicity (the probe
values where some subspace leaves it free, then the values others pin it to), the values ``z`` can
take. A grid depends on the space group alone, so grids are kept for the process; a digit interval's
probe values are many (11 and more), so the grids it lacks are solved together, one array pass per
kind of question instead of one per value.
"""

from __future__ import annotations

import numpy as np

from llamat_cif.cif import COORD_DECIMALS
from llamat_cif.symmetry import solve_rows, solve_values

#: Probe values for free coordinates in the look-ahead: odd sixteenths (0.0625 from every multiple
#: of 1/8, >= 0.02 from 1/6, 1/3 ...) in a spread-out order, then four 24ths. A probe near a
#: special value collapses the orbit, meets its own symmetry copy, or blocks the special point
#: another element needs.
PROBE = np.array([9, 5, 13, 3, 11, 7, 15, 1], dtype=float) / 16
PROBE = np.concatenate([PROBE, np.array([7, 17, 1, 23]) / 24])

_GRIDS: dict[tuple, np.ndarray] = {}
_MAX_KEPT = 16_384  # grids kept (up to a few KB each: tens of MB); the store starts over when full


def probes(sg: int, m: int, typed: tuple, target: int) -> np.ndarray:
    """Values tried for a coordinate that some Wyckoff subspace of multiplicity ``m`` leaves free:
    the probe grid, then the values the other subspaces pin it to (a line such as y = x / 2)."""
    return np.concatenate([PROBE, solve_values(sg, m, typed, target, pinned=True)])


def completion_grid(sg: int, m: int, xv: float, yv: float | None) -> np.ndarray:
    """The probe points of orbit size ``m`` that start with the typed ``x`` (and ``y``, ``None``: not
    typed yet), read-only: :func:`completion_grids` of one pair."""
    return completion_grids(sg, m, [(xv, yv)])[0]


def completion_grids(sg: int, m: int, pairs: list[tuple[float, float | None]]) -> list[np.ndarray]:
    """:func:`completion_grid` of each typed ``(x, y)`` pair (``y`` ``None`` for all or none of them
    in practice, mixed lists work too); the grids not kept yet are built together."""
    todo = [p for p in dict.fromkeys(pairs) if (sg, m, *p) not in _GRIDS]
    if todo:
        if len(_GRIDS) + len(todo) > _MAX_KEPT:  # full: start over, with every grid this call returns
            _GRIDS.clear()
            todo = list(dict.fromkeys(pairs))
        for p, grid in zip(todo, _build(sg, m, todo), strict=True):
            grid.flags.writeable = False
            _GRIDS[sg, m, *p] = grid
    return [_GRIDS[sg, m, *p] for p in pairs]


def _build(sg: int, m: int, pairs: list[tuple[float, float | None]]) -> list[np.ndarray]:
    """The grids of ``pairs``: the ``y`` values of every untyped ``y`` in one pass (and their pinned
    values where ``y`` is free), then the ``z`` values of every (x, y) row in one pass."""
    ys: list[np.ndarray | None] = [None if yv is None else np.array([yv]) for _, yv in pairs]
    need = [i for i, y in enumerate(ys) if y is None]
    if need:
        xs = np.array([[pairs[i][0]] for i in need])
        for i, y in zip(need, solve_rows(sg, m, (0,), xs, 1), strict=True):
            ys[i] = y
        free = [k for k, i in enumerate(need) if ys[i] is None]
        if free:
            for k, pin in zip(free, solve_rows(sg, m, (0,), xs[free], 1, pinned=True), strict=True):
                ys[need[k]] = np.concatenate([PROBE, pin])
    rows = [(i, float(yy)) for i, y in enumerate(ys) for yy in y]
    tv = np.array([[pairs[i][0], round(yy, COORD_DECIMALS)] for i, yy in rows]).reshape(-1, 2)  # y as typed
    zs = solve_rows(sg, m, (0, 1), tv, 2) if len(tv) else []
    free = [r for r, z in enumerate(zs) if z is None]  # z free somewhere: the probes, then the pinned values
    if free:
        for r, pin in zip(free, solve_rows(sg, m, (0, 1), tv[free], 2, pinned=True), strict=True):
            zs[r] = np.concatenate([PROBE, pin])
    parts: list[list[np.ndarray]] = [[np.zeros((0, 3))] for _ in pairs]
    for (i, yy), zz in zip(rows, zs, strict=True):  # the grid's column keeps y as solved
        parts[i].append(np.column_stack([np.full(len(zz), pairs[i][0]), np.full(len(zz), yy), zz]))
    return [np.vstack(p) for p in parts]
