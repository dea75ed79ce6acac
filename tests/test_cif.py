"""Canonical crystal text: determinism, invariance, round trip, clear errors."""

import re

import numpy as np
import pytest
from pymatgen.analysis.structure_matcher import StructureMatcher
from pymatgen.core import Lattice, Structure

from llamat_cif.cif import (
    CrystalTextError,
    detect_format,
    from_text,
    strip_header,
    to_text,
    written_volume,
)

SM = StructureMatcher(stol=0.5, angle_tol=10, ltol=0.3)


def _shuffled_translated(s, seed):
    rng = np.random.default_rng(seed)
    t = Structure.from_sites([s[i] for i in rng.permutation(len(s))])
    t.translate_sites(list(range(len(t))), rng.random(3), frac_coords=True, to_unit_cell=True)
    return t


@pytest.mark.parametrize("name", ["nacl", "perovskite", "diamond"])
def test_cif_round_trip_and_invariance(name, request):
    s = request.getfixturevalue(name)
    text = to_text(s)
    assert SM.fit(s, from_text(text))
    # the same crystal from another site order, origin and cell gives the same text
    assert to_text(_shuffled_translated(s, 1)) == text
    assert to_text(s.get_primitive_structure()) == text


def test_nacl_canonical_cif_content(nacl):
    text = to_text(nacl)
    assert "_symmetry_space_group_name_H-M Fm-3m" in text
    assert "_symmetry_Int_Tables_number 225" in text
    assert "_chemical_formula_sum 'Na4 Cl4'" in text
    assert "_cell_length_a 5.640" in text
    # asymmetric unit only: two rows with multiplicity 4
    rows = [ln for ln in text.splitlines() if ln.startswith(("Na ", "Cl "))]
    assert len(rows) == 2 and all(r.split()[2] == "4" for r in rows)


def test_special_position_written_so_that_it_survives_rounding():
    # a 3d site of P3m1 at (x, 2x, z) loses its orbit relation if x and 2x are rounded apart
    s = Structure.from_spacegroup("P3m1", Lattice.hexagonal(4.73, 7.84), ["Fe", "Ta"],
                                  [[0.16293, 0.32586, 0.25], [0, 0, 0.1]])
    back = from_text(to_text(s))
    assert len(back) == len(s) and SM.fit(s, back)


def test_thirds_written_with_four_decimals_and_the_volume_of_the_written_cell():
    """What the CIF grammar writes too: 1/3 and 2/3 as 0.3333 and 0.6667 (pymatgen's reader takes
    them as exact thirds), and the volume of the cell with its rounded parameters."""
    s = Structure.from_spacegroup("P6_3mc", Lattice.hexagonal(3.2499, 5.2066), ["Zn", "O"],
                                  [[1 / 3, 2 / 3, 0.0], [1 / 3, 2 / 3, 0.3821]])
    text = to_text(s)
    assert "O O0 2 0.3333 0.6667 0.1179 1\nZn Zn1 2 0.3333 0.6667 0.5000 1\n" in text
    assert "0.333333" not in text and "0.666667" not in text
    cell = [float(re.search(rf"_cell_{k} ([0-9.]+)\n", text).group(1)) for k in
            ("length_a", "length_b", "length_c", "angle_alpha", "angle_beta", "angle_gamma")]
    assert cell == [3.25, 3.25, 5.207, 90.0, 90.0, 120.0]
    assert f"_cell_volume {written_volume(*cell):.2f}\n" in text
    assert abs(written_volume(*cell) - Lattice.hexagonal(3.25, 5.207).volume) < 1e-9
    back = from_text(text)
    assert len(back) == 4 and SM.fit(s, back)


def test_llamat_format(nacl):
    # the LLaMat text writes the (Niggli-reduced) cell it is given: here the primitive one
    text = to_text(nacl.get_primitive_structure(), "llamat")
    lines = text.splitlines()
    assert lines[0] == "4.0 4.0 4.0" and lines[1] == "60 60 60"
    assert lines[2:] == ["Na", "0.00 0.00 0.00", "Cl", "0.50 0.50 0.50"]
    assert detect_format(text) == "llamat" and SM.fit(nacl, from_text(text))


def test_header_is_skipped(nacl):
    text = "# formula: Na4 Cl4\n# spacegroup: 225\n" + to_text(nacl)
    header, body = strip_header(text)
    assert header == {"formula": "Na4 Cl4", "spacegroup": "225"}
    assert SM.fit(nacl, from_text(text))


@pytest.mark.parametrize("bad, msg", [
    ("", "empty"),
    ("data_x\n_cell_length_a 5\n", "CIF could not be parsed"),
    ("5.0 5.0 5.0\n90 90 90\nXx\n0 0 0\n", "unknown element"),
    ("5.0 5.0\n90 90 90\nNa\n0 0 0\n", "lattice lengths"),
    ("5.0 5.0 5.0\n90 90 90\nNa\n", "at least|>= 4|pairs"),
    ("-5.0 5.0 5.0\n90 90 90\nNa\n0 0 0\n", "positive"),
    ("nan 5.0 5.0\n90 90 90\nNa\n0 0 0\n", "lattice lengths"),
])
def test_bad_text_gives_clear_error(bad, msg):
    with pytest.raises(CrystalTextError, match=msg):
        from_text(bad)


def test_disordered_structure_is_refused():
    s = Structure(Lattice.cubic(3), [{"Fe": 0.5, "Ni": 0.5}], [[0, 0, 0]])
    with pytest.raises(CrystalTextError, match="disordered"):
        to_text(s)


def test_p1_cif_has_unique_labels_and_reads_back():
    """Symmetry copies read from a symmetric CIF share a label; the P1 file renumbers them."""
    import warnings

    from llamat_cif.cif import structure_to_cif

    s = Structure(Lattice.cubic(5.64), ["Na", "Na", "Cl", "Cl"],
                  [[0, 0, 0], [0.5, 0.5, 0], [0.5, 0, 0], [0, 0.5, 0]], labels=["Na1", "Na1", "Cl1", "Cl1"])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # pymatgen warns on duplicate labels
        text = structure_to_cif(s)
    back = Structure.from_str(text, fmt="cif")
    assert len(set(back.labels)) == 4
    assert StructureMatcher().fit(s, back)
    assert s.labels == ["Na1", "Na1", "Cl1", "Cl1"]  # the input is untouched


# ------------------------------------------------------------------------- the one CIF reader

#: Rock salt as a symmetric CIF: two asymmetric-unit rows, no symmetry-operation loop (the reader
#: rebuilds Fm-3m's operations from the Hermann-Mauguin symbol and expands them to 8 sites).
ROCK_SALT_CIF = """data_NaCl
_symmetry_space_group_name_H-M 'F m -3 m'
_symmetry_Int_Tables_number 225
_cell_length_a 5.640
_cell_length_b 5.640
_cell_length_c 5.640
_cell_angle_alpha 90.00
_cell_angle_beta 90.00
_cell_angle_gamma 90.00
loop_
_atom_site_type_symbol
_atom_site_label
_atom_site_fract_x
_atom_site_fract_y
_atom_site_fract_z
_atom_site_occupancy
Na Na1 0.0 0.0 0.0 1
Cl Cl1 0.5 0.5 0.5 1
"""


def test_read_cif_rock_salt_known_answer():
    import warnings

    from llamat_cif.cif import read_cif

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        s = read_cif(ROCK_SALT_CIF)
    assert caught == []  # pymatgen's notes (no symmetry-operation loop) stay inside the reader
    assert len(s) == 8 and s.composition.formula == "Na4 Cl4"
    assert np.allclose(s.lattice.abc, (5.64, 5.64, 5.64)) and np.allclose(s.lattice.angles, (90, 90, 90))
    # Na-Cl nearest neighbours at a/2
    assert min(s.get_distance(0, j) for j in range(len(s)) if s[j].specie.symbol == "Cl") == pytest.approx(2.82)
    # tolerant reading is pymatgen's own reading, site for site
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert s.as_dict() == Structure.from_str(ROCK_SALT_CIF, fmt="cif").as_dict()


@pytest.mark.parametrize("bad, msg", [
    ("", "empty text"),
    (" \n\t\n", "empty text"),
    ("hello world, not a crystal", "CIF could not be parsed"),
    ("data_x\n_cell_length_a 5\n", "CIF could not be parsed: .*_atom_site_label"),
])
def test_read_cif_bad_text_one_line_error(bad, msg):
    from llamat_cif.cif import read_cif, read_cif_or_none

    with pytest.raises(CrystalTextError, match=msg) as info:
        read_cif(bad)
    assert "\n" not in str(info.value)
    assert read_cif_or_none(bad) is None


def test_read_cif_strict_refuses_a_broken_block():
    from llamat_cif.cif import read_cif, read_cif_or_none

    two_blocks = "data_broken\n_cell_length_a 5\n\n" + ROCK_SALT_CIF
    assert len(read_cif(two_blocks)) == 8  # tolerant: the block that parses, as pymatgen's reader does
    with pytest.raises(CrystalTextError, match="section 1") as info:
        read_cif(two_blocks, strict=True)
    assert "\n" not in str(info.value)
    with pytest.raises(CrystalTextError, match="no _cell_length_a"):
        read_cif("data_x\nloop_\n_atom_site_label\nNa1\n", strict=True)
    assert read_cif_or_none(None) is None


def test_the_space_group_of_a_symbol_only_cif_is_built_once_and_reads_the_same(nacl, perovskite):
    """pymatgen keeps SpaceGroups in a weak cache; read_cif holds the one CifParser builds for a
    canonical CIF (symbol, no operations loop), so a second read reuses it, and the structure is
    exactly the one pymatgen's own reader gives."""
    from pymatgen.symmetry.groups import SpaceGroup

    from llamat_cif.cif import read_cif, space_group

    for s, key in ((nacl, "Fm-3m"), (perovskite, "Pm-3m")):
        body = strip_header(to_text(s))[1]
        got = read_cif(body)
        assert space_group(key) is SpaceGroup(key)  # the cached object CifParser will get
        assert space_group(f"'{key[0]} {key[1:]}'") is space_group(key)  # as CIFs may write it
        assert got == Structure.from_str(body, fmt="cif")
    assert space_group("Q 42") is None
    p1 = Structure(Lattice.cubic(4.0), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]]).to(fmt="cif")
    before = space_group.cache_info().currsize
    assert len(read_cif(p1)) == 2 and space_group.cache_info().currsize == before  # operations loop: left alone
