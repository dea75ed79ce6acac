"""Known-answer tests of the stability subpackage: hull, relaxation guards, potentials, S.U.N."""

from __future__ import annotations

import json
import os

import numpy as np
import pandas as pd
import pytest
from conftest import requires_data
from monty.json import MontyEncoder
from pymatgen.analysis.phase_diagram import PDEntry, PhaseDiagram
from pymatgen.core import Composition, Lattice, Structure

from llamat_cif.metrics.matching import unique_representatives
from llamat_cif.metrics.sun import TrainingSet, load_chemical_systems, sun_table
from llamat_cif.stability.hull import Hull, HullError, mp2020_corrected_energy
from llamat_cif.stability.pipeline import (
    StabilityConfig,
    StabilityResumeError,
    check_hull_compatible,
    run_stability,
)
from llamat_cif.stability.potentials import (
    Potential,
    PotentialError,
    check_matgl_version,
    checkpoint_saved_with,
    infer_energy_scale,
    load_potential,
)
from llamat_cif.stability.relax import LOGM_WARNING, RelaxConfig, relax_many, relax_structure
from llamat_cif.stability.summary import summarize


@pytest.fixture(scope="module")
def chgnet():
    return load_potential("chgnet", device="cpu")


# ------------------------------------------------------------------------------------ hull


def _toy_hull() -> Hull:
    # Na: -1 eV/atom, Cl: -2 eV/atom, NaCl: formation -1 eV/atom -> total per atom -2.5
    return Hull([PDEntry(Composition("Na"), -1.0), PDEntry(Composition("Cl"), -2.0),
                 PDEntry(Composition("NaCl"), 2 * -2.5)])


def test_two_phase_toy_hull_hand_computed():
    hull = _toy_hull()
    # NaCl2 (x_Cl = 2/3): the hull there is the NaCl--Cl tie line, E_form = -1 * (1/3)/(1/2) = -2/3.
    ref = (1 / 3) * -1.0 + (2 / 3) * -2.0
    assert hull.e_above_hull("NaCl2", ref - 0.5) == pytest.approx(-0.5 + 2 / 3, abs=1e-9)
    assert hull.formation_energy_per_atom("NaCl2", ref - 0.5) == pytest.approx(-0.5, abs=1e-12)
    # a NaCl polymorph 0.1 eV/atom above, and one 0.2 below (a new ground state: negative)
    assert hull.e_above_hull("NaCl", -2.4) == pytest.approx(0.1, abs=1e-9)
    assert hull.e_above_hull("NaCl", -2.7) == pytest.approx(-0.2, abs=1e-9)
    # Na3Cl (x_Cl = 1/4): tie line Na--NaCl, E_form_hull = -1 * 0.25/0.5 = -0.5
    ref = 0.75 * -1.0 + 0.25 * -2.0
    assert hull.e_above_hull("Na3Cl", ref) == pytest.approx(0.5, abs=1e-9)
    with pytest.raises(HullError, match="K"):
        hull.e_above_hull("KCl", -3.0)


def test_user_hull_from_phase_diagram_file(tmp_path):
    pd_ = PhaseDiagram(_toy_hull().phase_diagram(["Na", "Cl"]).all_entries)
    path = tmp_path / "pd.json"
    path.write_text(json.dumps(pd_.as_dict(), cls=MontyEncoder))
    hull = Hull.from_file(path)
    assert hull.e_above_hull("NaCl", -2.4) == pytest.approx(0.1, abs=1e-9)
    entries = tmp_path / "entries.json"
    entries.write_text(json.dumps([e.as_dict() for e in pd_.all_entries], cls=MontyEncoder))
    # NaCl2 0.05 eV/atom above the NaCl--Cl tie line (hull E_form there: -2/3)
    e = (1 / 3) * -1.0 + (2 / 3) * -2.0 - 2 / 3 + 0.05
    assert Hull.from_file(entries).e_above_hull("NaCl2", e) == pytest.approx(0.05, abs=1e-9)


@pytest.fixture(scope="module")
def mp_hull():
    return Hull.from_data_dir()


@requires_data
def test_reference_hull_reproduces_mp_e_hull(mp_hull):
    """MP's own formation energies put back on the hull give MP's E_hull (the scale is right)."""
    from llamat_cif.paths import data_dir

    df = pd.read_csv(data_dir() / "hull/mp20_formation_energy_reference.DERIVED.csv.gz")
    df = df[df["mp_e_above_hull"].notna()]
    # binaries and ternaries keep the phase diagrams small (test time), the scale check is the same
    df = df[df["composition"].str.split().str.len() <= 3].sample(12, random_state=1)
    diffs = []
    for comp, ef, mp in df[["composition", "formation_energy_per_atom", "mp_e_above_hull"]].itertuples(index=False):
        c = Composition(comp)
        e = ef + sum(c.get_atomic_fraction(el) * mp_hull.element_refs[el.symbol] for el in c.elements)
        assert mp_hull.formation_energy_per_atom(c, e) == pytest.approx(ef, abs=1e-9)
        diffs.append(abs(mp_hull.e_above_hull(c, e) - mp))
    assert np.median(diffs) < 0.005
    # elemental references: an element at its reference energy sits on the hull
    assert mp_hull.e_above_hull("Si", mp_hull.element_refs["Si"]) == pytest.approx(0.0, abs=1e-9)


def test_mp2020_correction_of_an_oxide():
    """Fe2O3 under MP2020: Fe(U) -2.256 eV/Fe and oxide -0.687 eV/O (pymatgen's MP2020 table)."""
    s = Structure(Lattice.hexagonal(5.03, 13.75), ["Fe", "Fe", "O", "O", "O"],
                  [[0, 0, 0.355], [0, 0, 0.645], [0.306, 0, 0.25], [0, 0.306, 0.25], [0.694, 0.694, 0.25]])
    corrected = mp2020_corrected_energy(s, -10.0)
    assert corrected - (-10.0) == pytest.approx(2 * -2.256 + 3 * -0.687, abs=0.01)
    # no anion, no U: nothing to correct
    assert mp2020_corrected_energy(Structure(Lattice.cubic(2.87), ["Fe", "Fe"], [[0, 0, 0], [0.5, 0.5, 0.5]]), -16.0) \
        == pytest.approx(-16.0)


# ------------------------------------------------------------------------------------ potentials


def test_chgnet_declares_mp2020_scale(chgnet):
    assert chgnet.backend == "chgnet" and chgnet.energy_scale == "mp2020"
    assert not chgnet.needs_mp2020_correction and chgnet.mp_hull_compatible
    assert chgnet.protocol()["mp2020_correction_applied"] is False


def test_unknown_potential_is_a_clear_error():
    with pytest.raises(PotentialError, match="never downloaded"):
        load_potential("no-such-potential-xyz")


@requires_data
def test_matgl_checkpoints_version_guard():
    from llamat_cif.paths import models_dir

    m3g = models_dir() / "matgl" / "M3GNet-MP-2021.2.8-PES"
    tn = models_dir() / "matgl" / "TensorNet-MatPES-PBE-v2025.1-PES"
    if not m3g.is_dir():
        pytest.skip("matgl checkpoints not present")
    assert checkpoint_saved_with(m3g) == "2.0"
    with pytest.raises(PotentialError, match=r"saved with matgl 2\.0.*4\.1\.2"):
        check_matgl_version(m3g, "4.1.2")
    assert check_matgl_version(tn, "2.0.4") == "2.0"
    with pytest.raises(PotentialError, match=r"llamat-cif\[matgl\]"):
        check_matgl_version(tn, None)
    assert infer_energy_scale(m3g.name) == "mp-uncorrected"
    assert infer_energy_scale(tn.name) == "pbe"
    # the installed environment has no matgl: loading says which extra to install
    import importlib.util

    if importlib.util.find_spec("matgl") is None:
        with pytest.raises(PotentialError, match="optional extra"):
            load_potential(f"matgl:{tn.name}")


def test_pbe_potential_refused_on_mp_hull():
    pot = Potential("TensorNet-MatPES-PBE", "matgl", None, "cpu", "pbe", "2.0.4")
    with pytest.raises(HullError, match="not on the Materials Project scale"):
        check_hull_compatible(pot, _toy_hull(), is_mp_reference=True)
    check_hull_compatible(pot, _toy_hull(), is_mp_reference=False)  # own-scale hull: fine


# ------------------------------------------------------------------------------------ relaxation


def test_displaced_atoms_relax_back(chgnet, nacl):
    cfg = RelaxConfig(fmax=0.05, max_steps=400)
    prim = nacl.get_primitive_structure()  # 2 atoms: fast, and a relative shift still costs energy
    ref = relax_structure(prim, chgnet, cfg, sid="ref")
    assert ref["error"] is None and ref["converged"]
    relaxed_ref = Structure.from_str(ref["relaxed_cif"], fmt="cif")
    pushed = relaxed_ref.copy()
    rng = np.random.default_rng(0)
    for i in range(len(pushed)):
        v = rng.normal(size=3)
        pushed.translate_sites([i], 0.2 * v / np.linalg.norm(v), frac_coords=False)
    row = relax_structure(pushed, chgnet, cfg, sid="pushed")
    assert row["error"] is None
    assert row["converged"] is True and row["n_steps"] > 0
    assert row["energy_initial_per_atom"] > row["energy_per_atom"] + 0.003  # pushing cost ~5 meV/atom...
    assert row["energy_per_atom"] == pytest.approx(ref["energy_per_atom"], abs=1e-3)  # ...relaxing gave it back
    back = Structure.from_str(row["relaxed_cif"], fmt="cif")
    d_ref = relaxed_ref.distance_matrix[relaxed_ref.distance_matrix > 0].min()
    assert back.distance_matrix[back.distance_matrix > 0].min() == pytest.approx(d_ref, abs=0.02)


class _BadCalculator:
    """Minimal ASE-style calculator returning a fixed energy per atom (NaN or absurd)."""

    def __init__(self, e_per_atom: float):
        from ase.calculators.calculator import Calculator

        class C(Calculator):
            implemented_properties = ["energy", "forces", "stress", "free_energy"]

            def calculate(self, atoms=None, properties=None, system_changes=None):
                super().calculate(atoms, properties, system_changes)
                n = len(self.atoms)
                self.results = {"energy": e_per_atom * n, "free_energy": e_per_atom * n,
                                "forces": np.zeros((n, 3)), "stress": np.zeros(6)}

        self.calc = C()


@pytest.mark.parametrize("e, message", [(float("nan"), "non-finite energy"), (-1e4, "exploding energy")])
def test_nan_or_exploding_energy_gives_error_row(nacl, e, message):
    pot = Potential("bad", "test", None, "cpu", "mp2020", "0", extra={"calculator": _BadCalculator(e).calc})
    row = relax_structure(nacl, pot, RelaxConfig(), sid="bad")
    assert row["error"] is not None and message in row["error"]
    assert row["relaxed_cif"] is None and row["converged"] is False


def test_batch_survives_bad_rows(chgnet, nacl):
    rows = list(relax_many([("bad", "not a cif"), ("empty", ""), ("ok", nacl)], chgnet, RelaxConfig(max_steps=50)))
    by = {r["id"]: r for r in rows}
    assert set(by) == {"bad", "empty", "ok"}
    assert by["bad"]["error"] and by["empty"]["error"] and by["ok"]["error"] is None
    assert np.isfinite(by["ok"]["energy_per_atom"])


def test_time_limit_gives_error_row(chgnet, nacl):
    row = relax_structure(nacl, chgnet, RelaxConfig(time_limit_s=0.0), sid="slow")
    assert "time limit" in row["error"]


# ------------------------------------------------------------------------------------ pipeline


@requires_data
def test_run_stability_streams_and_resumes(tmp_path, chgnet, mp_hull, nacl):
    items = pd.DataFrame({"id": ["nacl", "junk"], "cif": [nacl.to(fmt="cif"), "garbage"]})
    cfg = StabilityConfig(relax=RelaxConfig(max_steps=100), batch_size=1)
    df = run_stability(items, tmp_path, cfg, potential=chgnet, hull=mp_hull, progress=False)
    assert len(df) == 2
    row = df.set_index("id").loc["nacl"]
    assert row["e_hull"] < 0.05  # rock-salt NaCl is MP's ground state
    assert row["e_form_per_atom"] == pytest.approx(-2.0, abs=0.15)  # MP: -2.05 eV/atom
    assert df.set_index("id").loc["junk", "error"]
    assert (tmp_path / "stability_summary.json").exists()
    items2 = pd.concat([items, pd.DataFrame({"id": ["junk2"], "cif": ["garbage"]})])
    df2 = run_stability(items2, tmp_path, cfg, potential=chgnet, hull=mp_hull, progress=False)
    assert sorted(df2["id"]) == ["junk", "junk2", "nacl"]  # only the new id was added
    summary = json.loads((tmp_path / "stability_summary.json").read_text())
    assert summary["metastable"]["denominator"] == 3 and summary["metastable"]["numerator"] == 1
    assert summary["protocol"]["energy_scale"] == "mp2020"


# ------------------------------------------------------------------------------------ S.U.N.


def test_unique_and_novel(nacl, diamond):
    sup = nacl.copy()
    sup.make_supercell([1, 1, 2])  # the same crystal, another cell
    ids = ["a", "b", "c", "d"]
    rep = unique_representatives(ids, [nacl, diamond, sup, None])
    assert rep == {"a": "a", "b": "b", "c": "a", "d": "d"}
    train = TrainingSet.from_structures([nacl])
    assert not train.is_novel(sup) and train.is_novel(diamond)
    df = pd.DataFrame({"id": ids, "relaxed_cif": [nacl.to(fmt="cif"), diamond.to(fmt="cif"), sup.to(fmt="cif"), None],
                       "e_hull": [-0.01, 0.05, -0.01, np.nan]})
    flags = sun_table(df, training=train).set_index("id")
    assert flags["unique"].tolist() == [True, True, False, False]
    assert flags["novel"].tolist() == [False, True, False, False]
    assert flags["sun"].sum() == 0  # diamond is novel here but 0.05 above the hull
    assert flags.loc["b", "msun"]


@requires_data
def test_compositional_novelty_vs_mp20():
    systems = load_chemical_systems()
    assert frozenset({"Na", "Cl"}) in systems
    assert frozenset({"He", "Ne"}) not in systems
    assert 1000 < len(systems) < 45229


@requires_data
def test_stability_cli_on_cif_folder(tmp_path, nacl):
    from click.testing import CliRunner

    from llamat_cif.cli import main

    src = tmp_path / "cifs"
    src.mkdir()
    (src / "nacl.cif").write_text(nacl.to(fmt="cif"))
    (src / "broken.cif").write_text("data_broken\n_cell_length_a 1\n")
    res = CliRunner().invoke(main, ["stability", str(src), "--out", str(tmp_path / "out"), "--no-progress",
                                    "--max-steps", "50", "--seed", "7"])
    assert res.exit_code == 0, res.output
    assert json.loads((tmp_path / "out" / "stability_summary.json").read_text())["seed"] == 7
    df = pd.read_parquet(tmp_path / "out" / "stability.parquet").set_index("id")
    assert set(df.index) == {"nacl", "broken"}
    assert df.loc["broken", "error"] and df.loc["nacl", "e_hull"] < 0.05
    assert "E_hull < 0.1" in res.output


def test_overlapping_atoms_refused_before_relaxation(chgnet):
    s = Structure(Lattice.cubic(4.0), ["Na", "Cl"], [[0, 0, 0], [0.005, 0, 0]])  # 0.02 Å apart
    row = relax_structure(s, chgnet, RelaxConfig(), sid="overlap")
    assert "closer than 0.5" in row["error"] and row["wall_s"] < 5


# ------------------------------------------------------------------------------------ warnings, rescale


def _logm_warnings(caught) -> list[str]:
    return [str(w.message) for w in caught if LOGM_WARNING in str(w.message)]


def test_logm_warning_does_not_escape_an_in_process_relaxation(chgnet, nacl):
    """ASE's FrechetCellFilter takes scipy ``logm(n_atoms * F)`` at every step; from ~35 atoms on,
    scipy flags that as inaccurate. A 64-atom rock salt strained by 10 % in volume floods
    without the filter and stays silent through ``relax_structure`` (in-process, no pool)."""
    import warnings

    from ase.filters import FrechetCellFilter
    from ase.optimize import FIRE
    from pymatgen.io.ase import AseAtomsAdaptor

    big = nacl.copy()
    big.make_supercell([2, 2, 2])  # 64 atoms: tiny cells never trip scipy's tolerance
    big.scale_lattice(big.volume * 1.1)
    # the unfiltered ASE path warns (known answer on scipy 1.17 / ase 3.29)
    atoms = AseAtomsAdaptor.get_atoms(big)
    atoms.calc = chgnet.calculator()
    with warnings.catch_warnings(record=True) as raw:
        warnings.simplefilter("always")
        FIRE(FrechetCellFilter(atoms), logfile=None).run(fmax=0.1, steps=3)
    assert _logm_warnings(raw), "premise: FrechetCellFilter on 64 atoms makes scipy's logm warn"
    # the relaxer's own path: no logm warning escapes, even under simplefilter("always")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        row = next(relax_many([("big", big)], chgnet, RelaxConfig(max_steps=60)))
    assert row["error"] is None and row["converged"]
    assert _logm_warnings(caught) == []
    assert row["volume_change"] < -0.02  # the 10 % expansion relaxes back (CHGNet's rock salt is ~3 % larger)


def test_rescale_to_predicted_volume_before_relaxation(chgnet, nacl):
    """A rock salt blown up to twice its volume is put back at the composition-predicted volume
    (within 25 % of the real 22.4 Å^3/atom) before FIRE starts, and relaxes to NaCl's volume."""
    from llamat_cif.physics import rescale_to_predicted, volume_model

    v_pred = volume_model().per_atom({"Na": 1, "Cl": 1})
    blown = nacl.copy()
    blown.scale_lattice(2 * nacl.volume)
    rescaled = rescale_to_predicted(blown)
    assert rescaled.volume / len(rescaled) == pytest.approx(v_pred, rel=1e-9)
    assert rescaled.volume / len(rescaled) == pytest.approx(nacl.volume / len(nacl), rel=0.25)
    assert rescaled.lattice.angles == pytest.approx(blown.lattice.angles)  # isotropic: shape kept
    cfg = RelaxConfig(rescale_volume=True)
    assert cfg.protocol()["rescale_volume"] is True and "rescale_to_predicted" in cfg.protocol()["rescale"]
    row = relax_structure(blown, chgnet, cfg, sid="blown")
    assert row["error"] is None
    assert row["volume_rescale"] == pytest.approx(v_pred * len(nacl) / blown.volume, rel=1e-6)
    # volume_change is against the structure as given: about -50 % back to rock salt
    relaxed_per_atom = blown.volume * (1 + row["volume_change"]) / len(nacl)
    assert relaxed_per_atom == pytest.approx(nacl.volume / len(nacl), rel=0.08)
    assert np.isnan(relax_structure(nacl, chgnet, RelaxConfig(max_steps=5))["volume_rescale"])


def test_resume_refuses_rows_relaxed_with_other_settings(tmp_path, chgnet):
    """Rows already in stability.parquet are never relaxed again, so resuming under another
    relaxer setting (here --rescale-volume) is refused instead of mixing protocols."""
    items = pd.DataFrame({"id": ["junk"], "cif": ["garbage"]})
    run_stability(items, tmp_path, StabilityConfig(), potential=chgnet, hull=_toy_hull(), progress=False)
    again = run_stability(items, tmp_path, StabilityConfig(), potential=chgnet, hull=_toy_hull(), progress=False)
    assert list(again["id"]) == ["junk"]
    with pytest.raises(StabilityResumeError, match="rescale_volume: False -> True"):
        run_stability(items, tmp_path, StabilityConfig(relax=RelaxConfig(rescale_volume=True)), potential=chgnet,
                      hull=_toy_hull(), progress=False)


@requires_data
def test_stability_hostile_inputs_become_rows(tmp_path, nacl):
    """Issue 17 items 9-12: every input file is a row; cells `validate` rejects are refused before
    relaxation with the validators' reason; a 2,000-site cell is refused before any O(n^2) work; a
    repeated id is kept as id~2 (the rule `validate` follows too)."""
    import time

    from click.testing import CliRunner

    from llamat_cif.cli import main
    from llamat_cif.validators import validate_table

    good = nacl.to(fmt="cif")
    src = tmp_path / "in"
    (src / "sub").mkdir(parents=True)
    (src / "nacl.cif").write_text(good)
    (src / "binary.cif").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR")
    (src / "x.cif").mkdir()  # a folder named like a CIF: not an input
    (src / "sub" / "loop").symlink_to(src, target_is_directory=True)  # not followed
    (src / "dangling.cif").symlink_to(tmp_path / "nowhere.cif")
    (src / "negative.cif").write_text(good.replace("_cell_length_a   5.64000000", "_cell_length_a   -5"))
    (src / "huge.cif").write_text(good.replace("_cell_length_b   5.64000000", "_cell_length_b   1e308"))
    big = nacl.copy()
    big.make_supercell([5, 5, 10])  # 2,000 sites > the validators' 1,000
    (src / "sub" / "big.cif").write_text(big.to(fmt="cif"))
    assert "_cell_length_a   5.64000000" in good and "_cell_length_b   5.64000000" in good
    t0 = time.perf_counter()
    res = CliRunner().invoke(main, ["stability", str(src), "--out", str(tmp_path / "out"), "--no-progress",
                                    "--max-steps", "30"])
    assert res.exit_code == 0, res.output
    df = pd.read_parquet(tmp_path / "out" / "stability.parquet").set_index("id")
    assert sorted(df.index) == ["binary", "dangling", "huge", "nacl", "negative", "sub/big"]
    err = df["error"].fillna("")
    assert err["nacl"] == "" and df.loc["nacl", "e_hull"] < 0.05
    assert "binary" in err["binary"] and "unreadable" in err["dangling"]
    assert "_cell_length_a" in err["negative"] and "_cell_length_b" in err["huge"]
    assert "max_sites" in err["sub/big"] or "1000" in err["sub/big"]
    assert (df.drop(index="nacl")["n_steps"] == 0).all()  # refused, not relaxed
    assert time.perf_counter() - t0 < 120

    # the same inputs through `validate`: the same verdicts (one input check)
    vt = validate_table(pd.DataFrame({"id": ["negative", "huge"], "cif": [(src / "negative.cif").read_text(),
                                                                         (src / "huge.cif").read_text()]}),
                        column="cif")
    vt = vt[0] if isinstance(vt, tuple) else vt
    assert not vt["parsed"].any()

    # repeated ids: kept, the later one renamed, in `stability` and in `validate`
    table = tmp_path / "dups.csv"
    pd.DataFrame({"id": ["a", "a"], "cif": [good, "garbage"]}).to_csv(table, index=False)
    res = CliRunner().invoke(main, ["stability", str(table), "--out", str(tmp_path / "dup"), "--no-progress",
                                    "--max-steps", "30"])
    assert res.exit_code == 0, res.output
    d = pd.read_parquet(tmp_path / "dup" / "stability.parquet").set_index("id")
    assert sorted(d.index) == ["a", "a~2"] and not d.loc["a", "error"] and d.loc["a~2", "error"]
    res = CliRunner().invoke(main, ["validate", str(table), "--out", str(tmp_path / "dupv")])
    assert res.exit_code == 0, res.output
    v = pd.read_parquet(tmp_path / "dupv" / "validity.parquet")
    assert sorted(v["id"]) == ["a", "a~2"]


def _lj_potential() -> Potential:
    from ase.calculators.lj import LennardJones

    # Lennard-Jones with argon's sigma (fcc minimum near a = 5.26 Å, 36 Å^3/atom; cutoff 3 sigma) and a
    # deep well (1 eV), so that an over-expanded cell feels a clear pull back
    return Potential("lj", "test", None, "cpu", "mp2020", "0",
                     extra={"calculator": LennardJones(sigma=3.4, epsilon=1.0, rc=10.2, smooth=True)})


def test_over_expanded_cell_may_collapse_but_not_below_a_physical_density():
    """Issue 17 item 16: an over-expanded cell collapsing x0.17 back to its equilibrium density is a
    relaxation, not an explosion (the old x1/5 volume guard made it an error row); a steps count
    is recorded when a guard trips."""
    ar = Structure(Lattice.cubic(5.26 * 1.8), ["Ar"] * 4, [[0, 0, 0], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5]])
    row = relax_structure(ar, _lj_potential(), RelaxConfig(max_steps=2000, fmax=0.01), sid="ar")
    assert row["error"] is None, row["error"]
    assert row["volume_change"] < 1 / 5 - 1  # shrank by more than the old guard allowed
    assert 30 < ar.volume * (1 + row["volume_change"]) / 4 < 45  # back near 36 Å^3/atom
    # a guard that trips mid-run: the row keeps the steps taken
    boom = RelaxConfig(max_steps=2000, fmax=0.01, min_volume_per_atom=100.0)
    row = relax_structure(ar, _lj_potential(), boom, sid="ar")
    assert "collapsed cell" in row["error"] and row["n_steps"] > 0


def test_time_limit_counts_cpu_not_wall_time(nacl):
    """Issue 17 item 15: waiting (a loaded machine) does not use up the limit; CPU and wall recorded."""
    import time as _t

    slow_wall = RelaxConfig(max_steps=6, fmax=1e-6, time_limit_s=5.0)
    row = relax_structure(nacl, _lj_potential(), slow_wall, sid="w", on_step=lambda step, atoms: _t.sleep(1.0))
    assert row["error"] is None and row["wall_s"] > 5.0 and row["cpu_s"] < 5.0
    assert row["n_steps"] == 6 and row["converged"] is False


def test_summary_reports_rates_over_converged_rows():
    df = pd.DataFrame({"id": list("abcde"), "error": [None, None, None, None, "boom"],
                       "converged": [True, True, False, False, False],
                       "e_hull": [0.0, 0.3, 0.05, 0.02, np.nan], "wall_s": [1.0] * 5, "cpu_s": [1.0] * 5,
                       "n_steps": [10] * 5})
    s = summarize(df)
    assert (s["metastable"]["numerator"], s["metastable"]["denominator"]) == (3, 5)
    assert (s["metastable_converged"]["numerator"], s["metastable_converged"]["denominator"]) == (1, 2)
    assert (s["stable_converged"]["numerator"], s["stable_converged"]["denominator"]) == (1, 2)
    assert s["n_unconverged_scored"] == 2 and s["median_e_hull_converged"] == pytest.approx(0.15)


def test_primitive_cell_is_relaxed_and_both_site_counts_recorded():
    """A conventional fcc Cu cell (4 sites) is relaxed as its 1-site primitive cell; the energy per
    atom of the two agrees (same crystal); as-given keeps 4 sites; P1 with no reduction stays."""
    from pymatgen.core import Lattice, Structure

    from llamat_cif.stability import RelaxConfig, load_potential
    from llamat_cif.stability.relax import primitive_cell, relax_structure

    conv = Structure.from_spacegroup("Fm-3m", Lattice.cubic(3.61), ["Cu"], [[0, 0, 0]])
    assert len(conv) == 4 and len(primitive_cell(conv)) == 1
    odd = Structure(Lattice.orthorhombic(3.0, 4.0, 5.0), ["Na", "Cl"], [[0, 0, 0], [0.31, 0.17, 0.43]])
    assert primitive_cell(odd) is odd
    pot = load_potential("chgnet", device="cpu")
    prim = relax_structure(conv, pot, RelaxConfig(max_steps=20), sid="cu")
    given = relax_structure(conv, pot, RelaxConfig(max_steps=20, primitive=False), sid="cu")
    assert (prim["n_sites_input"], prim["n_sites"]) == (4, 1)
    assert (given["n_sites_input"], given["n_sites"]) == (4, 4)
    assert not prim["error"] and not given["error"]
    assert abs(prim["energy_per_atom"] - given["energy_per_atom"]) < 0.01
    assert abs(prim["volume_change"] - given["volume_change"]) < 0.02  # per atom, comparable


def test_fast_chgnet_calculator_matches_chgnets_own(chgnet, nacl, diamond):
    """One backward pass with subnormals flushed (llamat_cif.stability.chgnet_calc) gives chgnet's
    energy, forces, stress and magnetic moments, on cells pushed off equilibrium (non-zero forces and
    stress), and leaves torch's subnormal handling as it was."""
    import torch
    from chgnet.model.dynamics import CHGNetCalculator
    from pymatgen.io.ase import AseAtomsAdaptor

    from llamat_cif.stability.chgnet_calc import FastCHGNetCalculator

    assert isinstance(chgnet.calculator(), FastCHGNetCalculator)  # what every relaxation uses
    perovskite = Structure(Lattice.cubic(3.9), ["Sr", "Ti", "O", "O", "O"],
                           [[0, 0, 0], [0.5, 0.5, 0.5], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5]])
    rng = np.random.default_rng(0)
    stock = CHGNetCalculator(model=chgnet.model, use_device="cpu", on_isolated_atoms="ignore")
    for s in (nacl, diamond, perovskite):
        s = s.copy()
        s.apply_strain([0.03, -0.02, 0.01])
        s.perturb(0.1, min_distance=0.05, seed=int(rng.integers(100)))
        res = {}
        for name, calc in (("stock", stock), ("fast", chgnet.calculator())):
            atoms = AseAtomsAdaptor.get_atoms(s)
            atoms.calc = calc
            res[name] = (atoms.get_potential_energy(), atoms.get_forces(), atoms.get_stress(),
                         atoms.get_magnetic_moments())
        (e0, f0, s0, m0), (e1, f1, s1, m1) = res["stock"], res["fast"]
        assert e1 == pytest.approx(e0, abs=1e-5)  # the same forward (equal to the bit where measured)
        assert np.abs(f0).max() > 0.05 and np.abs(s0).max() > 1e-3  # off equilibrium: a real comparison
        np.testing.assert_allclose(f1, f0, atol=2e-4)  # eV/Å: float32 summation order only
        np.testing.assert_allclose(s1, s0, atol=2e-5)  # eV/Å^3
        np.testing.assert_array_equal(m1, m0)
    assert (torch.tensor([1e-40]) * 1.0).item() > 0  # subnormals kept again outside the call


def test_cell_filter_keeps_forces_only_while_nothing_moves(chgnet, nacl):
    """The relaxer's FrechetCellFilter returns ASE's own generalized forces and stress, computed once
    per configuration: the same arrays while atoms and cell stay, new ones after a move."""
    from ase.filters import FrechetCellFilter
    from pymatgen.io.ase import AseAtomsAdaptor

    from llamat_cif.stability.relax import _cell_filter

    atoms = AseAtomsAdaptor.get_atoms(nacl)
    atoms.rattle(0.05, seed=0)
    atoms.calc = chgnet.calculator()
    kept, plain = _cell_filter(atoms), FrechetCellFilter(atoms)
    first = kept.get_forces()
    np.testing.assert_array_equal(first, plain.get_forces())
    np.testing.assert_array_equal(kept.stress, plain.stress)
    before = first.copy()
    first[:] = 0.0  # a caller writing into the returned array does not change what is kept
    np.testing.assert_array_equal(kept.get_forces(), plain.get_forces())
    x = kept.get_positions()
    x[0] += 0.05
    kept.set_positions(x)
    moved = kept.get_forces()
    np.testing.assert_array_equal(moved, plain.get_forces())  # recomputed for the new configuration
    assert np.abs(moved - before).max() > 1e-3  # and they differ from the first configuration's


def test_in_process_relaxation_runs_one_torch_thread_on_cpu(chgnet, nacl):
    """Graphs of a few atoms are too small to share between threads (a second thread made 20
    relaxations 2.4-4x slower here): on the CPU an in-process run uses one unless told otherwise,
    as every pool worker does, and records it."""
    import torch

    from llamat_cif.stability.pipeline import _torch_threads

    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        rows = relax_many([("a", nacl), ("b", nacl)], chgnet)
        row = next(rows)
        assert row["error"] is None and torch.get_num_threads() == 1
        rows.close()
        assert torch.get_num_threads() == 2  # the caller's setting is back
        assert [r["id"] for r in relax_many([("a", nacl)], chgnet)] == ["a"] and torch.get_num_threads() == 2
        rows = relax_many([("a", nacl)], chgnet, threads=3)
        next(rows)
        assert torch.get_num_threads() == 3
        rows.close()
    finally:
        torch.set_num_threads(before)
    assert _torch_threads(StabilityConfig(device="cpu")) == 1
    assert _torch_threads(StabilityConfig(device="cpu", threads=3)) == 3
    assert _torch_threads(StabilityConfig(device="cpu", threads=3, n_workers=2)) == 1


def test_a_chgnet_with_other_internals_relaxes_with_its_own_calculator(chgnet, monkeypatch):
    """FastCHGNetCalculator calls chgnet internals; where they are missing, chgnet's own calculator
    is used, with a warning, instead of every relaxation failing."""
    import dataclasses

    from chgnet.model.dynamics import CHGNetCalculator

    import llamat_cif.stability.chgnet_calc as calc_mod

    assert calc_mod.fast_path_supported()  # the installed chgnet
    monkeypatch.setattr(calc_mod, "fast_path_supported", lambda: False)
    with pytest.warns(UserWarning, match="chgnet's own"):
        calc = dataclasses.replace(chgnet, extra={}).calculator()
    assert type(calc) is CHGNetCalculator


def test_auto_workers_follow_the_work_and_the_cores():
    from llamat_cif.stability.relax import AUTO_WORKERS_MAX, auto_workers

    cores = len(os.sched_getaffinity(0))
    assert auto_workers(5, "cpu") == 1  # fewer than 8 structures: not worth a second process
    assert auto_workers(16, "cpu") == min(cores, 2)
    assert auto_workers(10_000, "cpu") == min(cores, AUTO_WORKERS_MAX)
    assert auto_workers(10_000, "cuda") == 1


def test_pooled_and_in_process_relaxations_give_the_same_rows(chgnet, nacl, diamond):
    """Every CPU relaxation runs one torch thread, pooled or not, so ``--workers`` (and its auto
    default) cannot change a row."""
    items = []
    for i, s in enumerate((nacl, diamond)):
        s = s.copy()
        s.perturb(0.1, seed=i)
        items.append((f"s{i}", s))
    here = {r["id"]: r for r in relax_many(items, chgnet)}
    pooled = {r["id"]: r for r in relax_many(items, "chgnet", n_workers=2)}
    for sid in here:
        assert here[sid]["error"] is None and here[sid]["n_steps"] > 0
        assert (pooled[sid]["energy_per_atom"], pooled[sid]["n_steps"]) == (here[sid]["energy_per_atom"],
                                                                            here[sid]["n_steps"])
