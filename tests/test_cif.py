"""Canonical crystal text: determinism, invariance, round trip, clear errors."""

import numpy as np
import pytest
from pymatgen.analysis.structure_matcher import StructureMatcher
from pymatgen.core import Lattice, Structure

from llamat_cif.cif import CrystalTextError, detect_format, from_text, strip_header, to_text

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
