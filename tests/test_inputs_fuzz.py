"""Fuzzing the input readers shared by `benchmark` and `stability` (issue 17's fuzz acceptance).

Folders of hostile files, CSV and parquet tables with hostile cells, and hostile CIF texts given to
the stability input check: every input structure becomes a row (or the whole input is refused with
one ``SourceError`` line), nothing raises anything else, and nothing takes long.
"""

from __future__ import annotations

import time

import pandas as pd
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from llamat_cif.metrics.sources import SourceError, load_structure_set
from llamat_cif.stability.pipeline import input_problem

FUZZ = settings(deadline=None, derandomize=True, database=None, max_examples=60,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                       HealthCheck.function_scoped_fixture])
NACL = """data_NaCl
_symmetry_space_group_name_H-M 'P 1'
_cell_length_a 5.64
_cell_length_b 5.64
_cell_length_c 5.64
_cell_angle_alpha 90
_cell_angle_beta 90
_cell_angle_gamma 90
loop_
 _symmetry_equiv_pos_as_xyz
  'x, y, z'
loop_
 _atom_site_type_symbol
 _atom_site_label
 _atom_site_fract_x
 _atom_site_fract_y
 _atom_site_fract_z
 _atom_site_occupancy
  Na Na1 0 0 0 1
  Cl Cl1 0.5 0.5 0.5 1
"""
NAMES = st.text(alphabet=st.characters(blacklist_characters="/\x00", blacklist_categories=("Cs",)),
                min_size=1, max_size=12).filter(lambda n: n not in (".", ".."))
CONTENT = st.one_of(
    st.binary(max_size=300),
    st.text(max_size=300).map(str.encode),
    st.builds(lambda cut: NACL[:cut].encode(), st.integers(0, len(NACL))),
    st.builds(lambda a, b: NACL.replace(a, b).encode(),
              st.sampled_from(["5.64", "90", "Na", "0.5", " 1\n"]),
              st.sampled_from(["nan", "-1", "1e308", "", "Xx", " 0\n", "?", "\x00"])),
)


@FUZZ
@given(files=st.lists(st.tuples(NAMES, CONTENT), min_size=1, max_size=6, unique_by=lambda t: t[0]))
def test_a_folder_of_hostile_files_is_one_row_per_cif_file(tmp_path_factory, files):
    d = tmp_path_factory.mktemp("fuzz")
    written = 0
    for name, data in files:
        fname = f"{name}.cif"
        try:
            (d / fname).write_bytes(data)
            written += 1
        except OSError:  # a name the file system refuses is not an input
            continue
    t0 = time.perf_counter()
    try:
        sset = load_structure_set(d)
    except SourceError as exc:
        assert written == 0 and str(exc)
        return
    assert len(sset.table) == written and sset.table["id"].is_unique
    for cif, err in zip(sset.table["cif"], sset.table["read_error"], strict=True):
        assert (cif == "") == bool(err) or (cif != "" and err == "")
        structure, why = input_problem(cif) if not err else (None, err)
        assert (structure is None) == bool(why)
    assert time.perf_counter() - t0 < 30


@FUZZ
@given(cells=st.lists(st.one_of(st.none(), st.text(max_size=200),
                                st.builds(lambda cut: NACL[:cut], st.integers(0, len(NACL)))),
                      min_size=1, max_size=8),
       ids=st.lists(st.sampled_from(["a", "b", "", "a~2"]), min_size=8, max_size=8))
def test_tables_with_hostile_cells_are_one_row_per_line(tmp_path_factory, cells, ids):
    d = tmp_path_factory.mktemp("tab")
    df = pd.DataFrame({"id": ids[:len(cells)], "cif": cells})
    for path, write in ((d / "t.csv", lambda p: df.to_csv(p, index=False)),
                        (d / "t.parquet", lambda p: df.to_parquet(p, index=False))):
        write(path)
        sset = load_structure_set(path)
        assert len(sset.table) == len(cells) and sset.table["id"].is_unique
        for cif, err in zip(sset.table["cif"], sset.table["read_error"], strict=True):
            assert bool(err) == (not cif.strip())
            if cif.strip():
                structure, why = input_problem(cif)
                assert (structure is None) == bool(why)
