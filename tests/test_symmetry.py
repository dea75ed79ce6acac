"""Space-group maths of :mod:`llamat_cif.symmetry` against independent references: pyxtal's Wyckoff
tables (the International Tables) and moyopy's space-group operations."""

import numpy as np
import pytest

from llamat_cif.symmetry import (
    _orbit_sizes,
    allocation_entry,
    crystal_system,
    orbit_sizes,
    space_group_ops,
)


@pytest.mark.parametrize("number", range(1, 231))
def test_wyckoff_multiplicities_equal_pyxtal(number):
    symmetry = pytest.importorskip("pyxtal.symmetry")
    reference = {w.multiplicity for w in symmetry.Group(number).Wyckoff_positions}
    assert set(orbit_sizes(number)) == reference


def test_shipped_table_is_what_the_operations_give():
    """The precomputed multiplicities equal a fresh computation (P4_132's 4a/4b at odd eighths
    included: the grid once missed them)."""
    assert all(orbit_sizes(n) == _orbit_sizes(n) for n in range(1, 231))
    assert 4 in orbit_sizes(213) and allocation_entry(213)[1] == (4,)


def _op_set(rots, trans) -> set:
    return {(np.asarray(r, dtype=int).tobytes(), tuple(np.round(np.mod(t, 1.0), 6) % 1.0))
            for r, t in zip(rots, trans, strict=True)}


@pytest.mark.parametrize("number", [1, 2, 14, 15, 62, 141, 166, 167, 191, 194, 225, 227, 229, 230])
def test_operations_equal_moyopy(number):
    moyopy = pytest.importorskip("moyopy")
    rots, trans = space_group_ops(number)
    ref = moyopy.operations_from_number(number, setting=moyopy.Setting.spglib())
    assert len(rots) == ref.num_operations
    # the same operations (spglib keeps its own order, see the module docstring)
    assert _op_set(rots, trans) == _op_set(ref.rotations, ref.translations)


def test_operation_counts_of_well_known_groups():
    # |G| of the conventional cell: point-group order x centring translations
    for number, order in ((1, 1), (2, 2), (14, 4), (62, 8), (166, 36), (194, 24), (225, 192), (229, 96)):
        assert len(space_group_ops(number)[0]) == order, number


def test_crystal_systems_at_their_boundaries():
    assert [crystal_system(n) for n in (1, 2, 3, 15, 16, 74, 75, 142, 143, 167, 168, 194, 195, 230)] == [
        "triclinic", "triclinic", "monoclinic", "monoclinic", "orthorhombic", "orthorhombic", "tetragonal",
        "tetragonal", "trigonal", "trigonal", "hexagonal", "hexagonal", "cubic", "cubic"]
