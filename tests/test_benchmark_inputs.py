"""Benchmark any generator: samples and references from any input, LeMat-GenBench metrics, comparison.

Known answers: the same 20 MP-20 test structures as a folder of CIFs, a CSV, an extended-XYZ file and
pymatgen objects give identical metrics; a reference given as a folder equal to the registry subset
gives the registry's coverage numbers; a set benchmarked against itself (reference and training set)
has COV-R = COV-P = 1, uniqueness 1, novelty 0 and distribution distances 0.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tests.conftest import requires_data

N_REF = 60  # reference structures: small enough for seconds of fingerprinting


@pytest.fixture(scope="module")
def mp20_first20():
    from llamat_cif.data import load_split

    return load_split("mp20", "test", limit=20)[["id", "cif"]]


def _write_inputs(root: Path, df: pd.DataFrame) -> dict[str, Path]:
    from ase.io import write
    from pymatgen.core import Structure
    from pymatgen.io.ase import AseAtomsAdaptor

    folder = root / "cifs"
    (folder / "nested").mkdir(parents=True)
    for k, (i, c) in enumerate(zip(df["id"], df["cif"], strict=True)):
        # a sub-folder too: the folder is searched recursively
        (folder / ("nested" if k % 2 else "") / f"{i}.cif").write_text(c)
    csv = root / "samples.csv.gz"
    df.to_csv(csv, index=False)
    frames = []
    for i, c in zip(df["id"], df["cif"], strict=True):
        a = AseAtomsAdaptor.get_atoms(Structure.from_str(c, fmt="cif"))
        a.info["id"] = i
        frames.append(a)
    xyz = root / "samples.extxyz"
    write(xyz, frames)
    return {"folder": folder, "csv": csv, "xyz": xyz}


@requires_data
def test_folder_csv_extxyz_and_objects_give_identical_metrics(tmp_path, monkeypatch, mp20_first20):
    from click.testing import CliRunner
    from pymatgen.core import Structure

    from llamat_cif.cli import main
    from llamat_cif.metrics.run import benchmark_structures

    monkeypatch.setenv("LLAMAT_CIF_CACHE", str(tmp_path / "cache"))
    paths = _write_inputs(tmp_path, mp20_first20)
    out = tmp_path / "cmp"
    args = ["benchmark", "--reference", "mp20-test", "--reference-limit", str(N_REF), "--out", str(out)]
    for label, p in paths.items():
        args += ["--samples", f"{label}={p}"]
    res = CliRunner().invoke(main, args)
    assert res.exit_code == 0, res.output

    long = pd.read_csv(out / "comparison.csv")
    wide = long.pivot(index="metric", columns="set", values="value")
    assert len(wide) >= 30  # CDVAE's metrics and LeMat-GenBench's families
    for metric, row in wide.iterrows():
        vals = row.dropna().to_numpy(float)
        assert len(vals) == 3, metric
        assert np.allclose(vals, vals[0], rtol=1e-9, atol=1e-9), (metric, vals)
    counts = long.pivot(index="metric", columns="set", values="numerator").dropna()
    assert (counts.nunique(axis=1) == 1).all()
    m = json.loads((out / "folder" / "metrics.json").read_text())
    assert m["samples"]["used"] == 20 and m["samples"]["unreadable"] == 0
    from llamat_cif.stability.relax import usable_cores

    assert m["protocol"]["config"]["workers"] == min(usable_cores(), 8)  # --workers 0 (default): one per core
    assert (m["metrics"]["parse_rate"]["numerator"], m["metrics"]["parse_rate"]["denominator"]) == (20, 20)
    # the comparison report: one table, side-by-side maps
    md = (out / "comparison.md").read_text()
    assert "`folder`" in md and "`xyz`" in md and "JS(space group)" in md
    for f in ("compare_recall.png", "compare_frequency.png"):
        assert (out / "figures" / f).stat().st_size > 20_000

    # the Python API with pymatgen objects: the same numbers
    structures = [Structure.from_str(c, fmt="cif") for c in mp20_first20["cif"]]
    api = benchmark_structures(structures, out=tmp_path / "api", reference="mp20-test", reference_limit=N_REF,
                               figures=False)
    for name, v in api["metrics"].items():
        want = wide.loc[name, "folder"]
        if v["value"] is None:
            assert math.isnan(want), name
        else:
            assert v["value"] == pytest.approx(want, rel=1e-9, abs=1e-9), name


@requires_data
def test_reference_folder_equals_registry_and_self_benchmark(tmp_path, monkeypatch):
    """A folder holding the registry's first structures gives the registry's coverage; the valid ones
    benchmarked against themselves give COV-R = COV-P = 1, unique 1, novel 0, distances 0."""
    from llamat_cif.data import load_split
    from llamat_cif.metrics.config import BenchmarkConfig
    from llamat_cif.metrics.run import run_benchmark
    from llamat_cif.validators import compositional_validity, structural_validity

    monkeypatch.setenv("LLAMAT_CIF_CACHE", str(tmp_path / "cache"))
    ref = load_split("mp20", "test", limit=N_REF)
    ref_dir = tmp_path / "ref"
    ref_dir.mkdir()
    for i, c in zip(ref["id"], ref["cif"], strict=True):
        (ref_dir / f"{i}.cif").write_text(c)
    samples = load_split("mp20", "train", limit=40)[["id", "cif"]]
    samples_csv = tmp_path / "train40.csv"
    samples.to_csv(samples_csv, index=False)

    by_name = run_benchmark(BenchmarkConfig(samples=str(samples_csv), out=str(tmp_path / "a"), reference="mp20-test",
                                            reference_limit=N_REF, figures=False, novelty=False),
                            show_progress=False)
    by_folder = run_benchmark(BenchmarkConfig(samples=str(samples_csv), out=str(tmp_path / "b"), reference=str(ref_dir),
                                              figures=False, novelty=False), show_progress=False)
    for k in ("coverage_recall", "coverage_precision", "coverage_joint_recall", "coverage_joint_precision",
              "wdist_density", "js_spacegroup", "js_elements"):
        a, b = by_name["metrics"][k], by_folder["metrics"][k]
        assert (a["numerator"], a["denominator"]) == (b["numerator"], b["denominator"]), k
        assert a["value"] == pytest.approx(b["value"], rel=1e-12), k
    assert by_folder["reference"]["kind"] == "cif-folder" and by_folder["reference"]["n"] == N_REF
    # a reference that is not a registry split: MP-20's cutoffs, and said so
    assert by_folder["protocol"]["coverage"]["struct_cutoff"] == 0.4
    assert "not a registry split" in by_folder["protocol"]["distributions"]["coverage_cutoffs_from"]

    # the valid reference structures against themselves, as reference and as training set
    keep = []
    from pymatgen.core import Structure
    for c in ref["cif"]:
        s = Structure.from_str(c, fmt="cif")
        keep.append(bool(structural_validity(s)) and bool(compositional_validity(s.composition)))
    own = tmp_path / "own"
    own.mkdir()
    for i, c, k in zip(ref["id"], ref["cif"], keep, strict=True):
        if k:
            (own / f"{i}.cif").write_text(c)
    n = sum(keep)
    assert 30 < n < N_REF
    res = run_benchmark(BenchmarkConfig(samples=str(own), out=str(tmp_path / "self"), reference=str(own),
                                        train=str(own), figures=False), show_progress=False)
    m = res["metrics"]
    assert (m["valid_rate"]["numerator"], m["valid_rate"]["denominator"]) == (n, n)
    assert (m["coverage_recall"]["numerator"], m["coverage_recall"]["denominator"]) == (n, n)
    assert (m["coverage_precision"]["numerator"], m["coverage_precision"]["denominator"]) == (n, n)
    assert (m["unique_as_generated"]["numerator"], m["unique_as_generated"]["denominator"]) == (n, n)
    assert (m["novel_as_generated"]["numerator"], m["novel_as_generated"]["denominator"]) == (0, n)
    for k in ("js_spacegroup", "js_crystal_system", "js_elements", "js_element_counts", "wdist_density",
              "wdist_volume_per_atom", "wdist_num_elems"):
        assert m[k]["value"] == pytest.approx(0.0, abs=1e-9), k
    assert res["training"]["n"] == n


@requires_data
def test_bad_inputs_become_rows_or_one_line_errors(tmp_path, monkeypatch, mp20_first20):
    from click.testing import CliRunner

    from llamat_cif.cli import main
    from llamat_cif.metrics.sources import load_structure_set

    monkeypatch.setenv("LLAMAT_CIF_CACHE", str(tmp_path / "cache"))
    d = tmp_path / "hostile"
    d.mkdir()
    for i, c in zip(mp20_first20["id"][:5], mp20_first20["cif"][:5], strict=True):
        (d / f"{i}.cif").write_text(c)
    (d / "binary.cif").write_bytes(b"\x00\x01\x02data_x\x00")
    (d / "empty.cif").write_text("")
    (d / "garbage.cif").write_text("this is not a crystal\n_cell_length_a -5\n")
    (d / "folder.cif").mkdir()  # a folder named like a CIF is not an input structure
    (d / "notes.txt").write_text("ignored: not a .cif")
    sset = load_structure_set(d)
    assert sorted(sset.table["id"]) == sorted([*mp20_first20["id"][:5], "binary", "empty", "garbage"])
    errors = dict(zip(sset.table["id"], sset.table["read_error"], strict=True))
    assert "binary" in errors["binary"] and errors["empty"] == "empty file" and errors["garbage"] == ""
    assert sset.n_read_errors == 2

    out = tmp_path / "bench"
    res = CliRunner().invoke(main, ["benchmark", "--samples", str(d), "--out", str(out), "--reference",
                                    "mp20-test", "--reference-limit", "20", "--no-figures", "--no-novelty"])
    assert res.exit_code == 0, res.output
    m = json.loads((out / "metrics.json").read_text())
    assert (m["metrics"]["parse_rate"]["numerator"], m["metrics"]["parse_rate"]["denominator"]) == (5, 8)
    assert m["samples"]["unreadable"] == 2
    assert {e["id"] for e in m["samples"]["unreadable_examples"]} == {"binary", "empty"}

    # whole inputs that cannot be read: one line, non-zero exit, no traceback
    bad_table = tmp_path / "t.csv"
    pd.DataFrame({"id": ["a"], "structure": ["x"]}).to_csv(bad_table, index=False)
    not_ase = tmp_path / "x.xyz"
    not_ase.write_text("certainly not\nan xyz file\n")
    for args in (["--samples", str(bad_table), "--out", str(tmp_path / "o1")],
                 ["--samples", str(tmp_path / "missing"), "--out", str(tmp_path / "o2")],
                 ["--samples", str(not_ase), "--out", str(tmp_path / "o3")],
                 ["--samples", str(d)],  # not a run folder: --out needed
                 ["--samples", str(d), "--samples", str(d), "--out", str(tmp_path / "o4")]):  # same label twice
        r = CliRunner().invoke(main, ["benchmark", *args, "--reference-limit", "5"])
        assert r.exit_code != 0, args
        # one message (rich may wrap it at the terminal width), no traceback
        assert r.output.startswith("error:") and r.output.count("error:") == 1, r.output
        assert "Traceback" not in r.output and not isinstance(r.exception, AssertionError | TypeError), r.output


def test_lemat_metric_known_answers(nacl, perovskite):
    from pymatgen.analysis.hhi import HHIModel

    from llamat_cif.metrics.distribution import (
        composition_hhi,
        crystal_system,
        distribution_distances,
        diversity,
        js_distance,
        supply_risk,
        vendi_categorical,
    )
    from llamat_cif.metrics.properties import describe_cif

    assert [crystal_system(s) for s in (1, 2, 3, 15, 16, 75, 143, 168, 194, 195, 230)] == [
        "triclinic", "triclinic", "monoclinic", "monoclinic", "orthorhombic", "tetragonal", "trigonal",
        "hexagonal", "hexagonal", "cubic", "cubic"]
    assert crystal_system(0) is None and crystal_system(231) is None
    assert js_distance([1, 2, 3], [2, 4, 6]) == pytest.approx(0.0, abs=1e-12)
    assert js_distance([1, 0], [0, 1]) == pytest.approx(math.sqrt(math.log(2)))
    assert vendi_categorical([3, 3, 3, 3]) == pytest.approx((4.0, math.log(4)))
    assert vendi_categorical([7, 0]) == pytest.approx((1.0, 0.0))

    # HHI: one element = its table value / 1000; a compound weighs elements by atom fraction
    fe_p, fe_r = HHIModel().get_hhi("Fe")
    assert composition_hhi("Fe") == pytest.approx((fe_p / 1000, fe_r / 1000))
    na, cl = composition_hhi("Na"), composition_hhi("Cl")
    assert composition_hhi("NaCl") == pytest.approx(((na[0] + cl[0]) / 2, (na[1] + cl[1]) / 2))
    assert composition_hhi("Tc") == pytest.approx((10.0, 10.0))  # no data: the maximum

    tab = pd.DataFrame([describe_cif(s.to(fmt="cif")) for s in (nacl, perovskite, nacl)])
    assert list(tab["spacegroup"]) == [225, 221, 225]
    assert tab.loc[0, "composition"] == "Na4 Cl4"
    allm = np.ones(3, bool)
    d = distribution_distances(tab, tab, gen_mask=allm, ref_mask=allm)
    assert all(m.value == pytest.approx(0.0, abs=1e-12) for m in d.values())
    only_nacl = np.array([True, False, True])
    d2 = distribution_distances(tab, tab, gen_mask=only_nacl, ref_mask=np.array([False, True, False]))
    assert d2["js_spacegroup"].value == pytest.approx(math.sqrt(math.log(2)))  # disjoint space groups
    assert d2["js_crystal_system"].value == pytest.approx(0.0, abs=1e-12)  # both cubic
    div = diversity(tab, allm)
    assert (div["elements_present"].numerator, div["elements_present"].denominator) == (5, 118)
    assert (div["spacegroups_present"].numerator, div["spacegroups_present"].denominator) == (2, 230)
    # atoms: Na 8, Cl 8, Sr 1, Ti 1, O 3 -> exp(H) of that histogram
    p = np.array([8, 8, 1, 1, 3]) / 21
    assert div["element_diversity_vendi"].value == pytest.approx(math.exp(-(p * np.log(p)).sum()))
    risk = supply_risk(tab, allm)
    want = np.mean([composition_hhi("NaCl")[0], composition_hhi("SrTiO3")[0], composition_hhi("NaCl")[0]])
    assert risk["hhi_production_mean"].value == pytest.approx(want)
    assert risk["hhi_production_low_risk"].denominator == 3


def test_comparison_refuses_different_references(tmp_path):
    from llamat_cif.metrics.compare import ComparisonError, check_same_protocol

    def result(ref_name: str, n: int) -> dict:
        return {"reference": {"name": ref_name, "n": n},
                "protocol": {"config": {"seed": 0}, "coverage": {"struct_cutoff": 0.4, "comp_cutoff": 10}}}

    assert check_same_protocol({"a": result("mp20-test", 10), "b": result("mp20-test", 10)})["seed"] == 0
    with pytest.raises(ComparisonError, match="different references"):
        check_same_protocol({"a": result("mp20-test", 10), "b": result("mp20-test", 12)})
    bad = result("mp20-test", 10)
    bad["protocol"]["config"]["seed"] = 1
    with pytest.raises(ComparisonError, match="seed"):
        check_same_protocol({"a": result("mp20-test", 10), "b": bad})


def test_pyxtal_baseline_is_seeded_and_keeps_composition_and_spacegroup():
    pytest.importorskip("pyxtal")
    from pymatgen.core import Composition
    from pymatgen.symmetry.analyzer import SpacegroupAnalyzer

    from llamat_cif.metrics.baseline import MAX_ATOMS, baseline_set

    formulas, groups = ["NaCl", "SrTiO3", "GaAs", "Li2O"], [225, 221, 216, 225]
    a = baseline_set(formulas, groups, 8, seed=3)
    b = baseline_set(formulas, groups, 8, seed=3)
    c = baseline_set(formulas, groups, 8, seed=4)
    assert all(x.structure is not None and x.error == "" for x in a)
    assert [x.structure for x in a] == [x.structure for x in b]  # same seed, same crystals
    assert [x.structure for x in a] != [x.structure for x in c]
    for d in a:
        s = d.structure
        assert s.composition.reduced_formula == Composition(d.formula).reduced_formula
        assert len(s) <= MAX_ATOMS
        # built in the training structure's (cubic) group: spglib finds it or a supergroup, so cubic too
        assert d.spacegroup == groups[formulas.index(d.formula)]
        assert SpacegroupAnalyzer(s, symprec=0.01).get_space_group_number() >= 195
        # pyxtal's distance tolerances: no two atoms closer than 0.5 Å
        if len(s) > 1:
            assert s.distance_matrix[np.triu_indices(len(s), 1)].min() > 0.5


@requires_data
def test_ase_database_and_zip_inputs(tmp_path, mp20_first20):
    import zipfile

    from ase.db import connect
    from pymatgen.core import Structure
    from pymatgen.io.ase import AseAtomsAdaptor

    from llamat_cif.metrics.sources import load_structure_set

    db = connect(str(tmp_path / "set.db"))
    for i, c in zip(mp20_first20["id"], mp20_first20["cif"], strict=True):
        db.write(AseAtomsAdaptor.get_atoms(Structure.from_str(c, fmt="cif")), material_id=i)
    zpath = tmp_path / "set.zip"
    with zipfile.ZipFile(zpath, "w") as zf:
        for i, c in zip(mp20_first20["id"], mp20_first20["cif"], strict=True):
            zf.writestr(f"cifs/{i}.cif", c)
    for path, ids in ((tmp_path / "set.db", list(mp20_first20["id"])),
                      (zpath, [f"cifs/{i}" for i in sorted(mp20_first20["id"])])):
        sset = load_structure_set(path)
        assert list(sset.table["id"]) == ids and sset.n_read_errors == 0
        for i, c in zip(sset.table["id"], sset.table["cif"], strict=True):
            want = Structure.from_str(mp20_first20.set_index("id").loc[i.removeprefix("cifs/"), "cif"], fmt="cif")
            got = Structure.from_str(c, fmt="cif")
            assert got.composition == want.composition
            assert got.volume == pytest.approx(want.volume, rel=1e-6)


def test_a_run_folder_reads_the_same_from_parquet_and_from_an_older_csv(tmp_path):
    """`benchmark --samples RUN` and `stability RUN` read a run folder through the one samples reader:
    samples.parquet and an older run's samples.csv of the same rows give the same structure set, and
    the stability input keeps only the rows validity.parquet calls valid."""
    from llamat_cif.metrics.sources import load_structure_set
    from llamat_cif.runs import write_parquet
    from llamat_cif.sampling.rows import frame
    from llamat_cif.stability.pipeline import read_structures_input

    cif = "data_x\n_cell_length_a 4.0\n"
    rows = [{"id": f"s{i:06d}", "text": "# x\n" + cif, "fmt": "cif", "cif": cif if i != 2 else "",
             "error": "" if i != 2 else "no end", "target_formula": "", "target_spacegroup": "",
             "seed": 0, "batch": i // 2, "n_tokens": 7, "constrained": True} for i in range(3)]
    new, old = tmp_path / "new", tmp_path / "old"
    write_parquet(frame(rows), new / "samples.parquet")
    old.mkdir()
    frame(rows).to_csv(old / "samples.csv", index=False)
    a, b = load_structure_set(new), load_structure_set(old)
    assert (a.kind, a.run_dir, b.kind, b.run_dir) == ("run", new, "run", old)
    pd.testing.assert_frame_equal(a.table, b.table)
    assert list(a.table["id"]) == ["s000000", "s000001", "s000002"] and list(a.table["cif"])[2] == ""
    for run in (new, old):
        pd.DataFrame({"id": ["s000000", "s000001", "s000002"], "valid": [True, False, False]}).to_parquet(
            run / "validity.parquet")
        assert list(read_structures_input(run)["id"]) == ["s000000"]
