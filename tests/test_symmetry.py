"""Space-group maths of :mod:`llamat_cif.symmetry` against independent references: pyxtal's Wyckoff
tables (the International Tables) and moyopy's space-group operations."""

import numpy as np
import pytest

from llamat_cif.symmetry import crystal_system, orbit_sizes, space_group_ops

#: P4_132: its 4-fold positions 4a (3/8, 3/8, 3/8) and 4b (7/8, 7/8, 7/8) lie off the grid of special
#: points the multiplicities are computed on, so 4 is missing from the shipped table (a known bug,
#: kept here so the test flags the fix instead of hiding the difference).
MISSING_MULTIPLICITY = {213: {4}}


def _case(n: int):
    if n in MISSING_MULTIPLICITY:
        return pytest.param(n, marks=pytest.mark.xfail(strict=True, reason=f"orbit_sizes({n}) lacks "
                                                       f"{sorted(MISSING_MULTIPLICITY[n])}"))
    return n


@pytest.mark.parametrize("number", [_case(n) for n in range(1, 231)])
def test_wyckoff_multiplicities_equal_pyxtal(number):
    symmetry = pytest.importorskip("pyxtal.symmetry")
    reference = {w.multiplicity for w in symmetry.Group(number).Wyckoff_positions}
    assert set(orbit_sizes(number)) == reference


def test_the_only_multiplicity_difference_is_the_known_one():
    symmetry = pytest.importorskip("pyxtal.symmetry")
    for number, missing in MISSING_MULTIPLICITY.items():
        reference = {w.multiplicity for w in symmetry.Group(number).Wyckoff_positions}
        assert reference - set(orbit_sizes(number)) == missing
        assert set(orbit_sizes(number)) <= reference


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
