"""A non-learned baseline generator: random symmetric crystals with training compositions (pyxtal).

Every generator should beat this control on the metrics that measure learned chemistry and geometry:
for each draw, a training structure is picked at random and pyxtal (``pyxtal.from_random``) places its
reduced composition, times the smallest workable number of formula units, on random Wyckoff positions
of the training structure's own space group, in a random lattice scaled to pyxtal's volume estimate
(``factor`` 1.1) with pyxtal's minimum interatomic distances. Composition and space-group statistics
are therefore those of the training set by construction; everything else (coordination, packing,
energetics) is random. Structures are not relaxed.

Needs the ``baseline`` extra (``pip install -e ".[baseline]"``, pyxtal). Seeded: draw ``i`` uses
``numpy.random.default_rng((seed, i))`` for its choices and pyxtal's ``random_state``, so a draw does not
depend on the others.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

#: MP-20's bound: at most 20 atoms in the primitive cell
MAX_ATOMS = 20
VOLUME_FACTOR = 1.1  # pyxtal's default: 1.1 x the sum of atomic volumes


@dataclass(frozen=True)
class BaselineDraw:
    """One baseline structure (or the reason there is none).

    Attributes:
        id: ``baseline-<seed>-<i>``.
        formula: reduced formula of the training structure it was drawn from.
        spacegroup: the space group it was built in (the training structure's, or a fallback).
        structure: pymatgen ``Structure`` (primitive cell), None when no attempt succeeded.
        error: why there is no structure, else empty.
        attempts: pyxtal calls made.
    """

    id: str
    formula: str
    spacegroup: int
    structure: object | None
    error: str
    attempts: int


def _counts(formula: str) -> tuple[list[str], list[int]]:
    from pymatgen.core import Composition

    comp = Composition(formula).reduced_composition
    species = [el.symbol for el in comp.elements]
    counts = [int(round(comp[el])) for el in comp.elements]
    return species, counts


def random_symmetric(
    formula: str,
    spacegroup: int,
    *,
    seed: int,
    index: int,
    max_atoms: int = MAX_ATOMS,
    attempts: int = 10,
    spacegroup_pool: Sequence[int] | None = None,
) -> BaselineDraw:
    """A random crystal of ``formula`` in ``spacegroup`` (pyxtal), or a fallback group from the pool.

    Args:
        formula: composition (reduced or not).
        spacegroup: international number to build in first.
        seed, index: the draw's seed pair.
        max_atoms: atoms in the primitive cell at most.
        attempts: pyxtal calls in all, over formula units and fallback groups.
        spacegroup_pool: groups to fall back on when ``spacegroup`` cannot hold the composition within
            ``max_atoms`` (drawn uniformly from the pool; default 1-230).

    Returns:
        The draw; ``structure`` None and ``error`` set when every attempt failed.
    """
    from pyxtal import pyxtal
    from pyxtal.symmetry import Group

    rng = np.random.default_rng((seed, index))
    species, base = _counts(formula)
    pool = list(spacegroup_pool) if spacegroup_pool else list(range(1, 231))
    sg = int(spacegroup)
    tried = 0
    last = "no compatible space group and formula-unit count"
    for _ in range(attempts):
        group = Group(sg)
        # conventional-cell counts: centred cells hold up to 4 primitive cells
        z_options = [z for z in range(1, 4 * max_atoms + 1) if sum(base) * z <= 4 * max_atoms]
        fitted = None
        for z in z_options:
            n = [c * z for c in base]
            if group.check_compatible(n)[0]:
                fitted = n
                break
        if fitted is not None:
            tried += 1
            crystal = pyxtal()
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    crystal.from_random(3, sg, species, fitted, factor=VOLUME_FACTOR,
                                        random_state=int(rng.integers(2**31 - 1)))
                if crystal.valid:
                    s = crystal.to_pymatgen().get_primitive_structure()
                    if len(s) <= max_atoms:
                        return BaselineDraw(f"baseline-{seed}-{index:05d}", _reduced(formula), sg, s, "", tried)
                    last = f"{len(s)} atoms in the primitive cell (> {max_atoms})"
                else:
                    last = "pyxtal found no valid arrangement"
            except Exception as exc:  # noqa: BLE001 - pyxtal raises many kinds for an impossible fit
                last = f"{type(exc).__name__}: {exc}"[:200]
        sg = int(rng.choice(pool))
    return BaselineDraw(f"baseline-{seed}-{index:05d}", _reduced(formula), sg, None, last, tried)


def _reduced(formula: str) -> str:
    from pymatgen.core import Composition

    return Composition(formula).reduced_formula


def baseline_set(
    formulas: Sequence[str],
    spacegroups: Sequence[int],
    n: int,
    *,
    seed: int = 0,
    max_atoms: int = MAX_ATOMS,
    progress: Callable[[int, int], None] | None = None,
) -> list[BaselineDraw]:
    """``n`` baseline draws, each from a training structure chosen uniformly at random (seeded).

    Args:
        formulas, spacegroups: the training structures' formulas and space groups (aligned).
        n: draws.
        seed: seeds the choice of training structures and every draw.
        max_atoms: atoms in the primitive cell at most.
        progress: called ``(done, n)`` after each draw.
    """
    if len(formulas) != len(spacegroups) or not formulas:
        raise ValueError("formulas and spacegroups must be aligned and non-empty")
    pick = np.random.default_rng(seed).integers(len(formulas), size=n)
    pool = [int(s) for s in spacegroups]
    out = []
    for i, j in enumerate(pick):
        out.append(random_symmetric(formulas[j], int(spacegroups[j]), seed=seed, index=i, max_atoms=max_atoms,
                                    spacegroup_pool=pool))
        if progress is not None:
            progress(i + 1, n)
    return out


__all__ = ["BaselineDraw", "baseline_set", "random_symmetric"]
