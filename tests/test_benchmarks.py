"""Benchmarks: coverage self-consistency, brute-force agreement, per-element counts, CSP, CLI."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from conftest import requires_data

from llamat_cif.metrics.coverage import (
    coverage,
    coverage_bruteforce,
    cutoffs_for,
    scale_composition,
)
from llamat_cif.metrics.csp import csp_match
from llamat_cif.metrics.elements import per_element_coverage
from llamat_cif.metrics.fingerprints import compute_fingerprints
from llamat_cif.metrics.metric import rate
from llamat_cif.metrics.properties import describe_cif, wasserstein

N_SMALL = 30  # real MP-20 structures with few sites: CrystalNN costs ~0.05 s per site


@pytest.fixture(scope="module")
def small_set():
    """30 real MP-20 test structures with 3-6 sites, as (ids, cifs, structures)."""
    from pymatgen.core import Structure

    from llamat_cif.data import load_split

    df = load_split("mp20", "test", limit=400)
    ids, cifs, structs = [], [], []
    for sid, cif in zip(df["id"], df["cif"], strict=True):
        s = Structure.from_str(cif, fmt="cif")
        if 3 <= len(s) <= 6:
            ids.append(sid)
            cifs.append(cif)
            structs.append(s)
        if len(ids) == N_SMALL:
            break
    assert len(ids) == N_SMALL
    return ids, cifs, structs


@pytest.fixture(scope="module")
def fingerprint_cache(tmp_path_factory):
    return tmp_path_factory.mktemp("fp-cache")


@pytest.fixture(scope="module")
def real_fp(small_set, fingerprint_cache):
    return compute_fingerprints(small_set[1], cache=fingerprint_cache)


@pytest.fixture(scope="module")
def scrambled_fp(small_set, fingerprint_cache):
    """Same lattices and species, fractional coordinates drawn at random."""
    from pymatgen.core import Structure

    rng = np.random.default_rng(7)
    cifs = []
    for s in small_set[2]:
        cifs.append(Structure(s.lattice, s.species, rng.random((len(s), 3))).to(fmt="cif"))
    return compute_fingerprints(cifs, cache=fingerprint_cache)


# --------------------------------------------------------------------------- self-consistency


@requires_data
def test_reference_against_itself_gives_full_coverage(real_fp, small_set):
    assert real_fp.ok.all()
    for pairing in ("independent", "joint"):
        res = coverage(real_fp.struct, real_fp.comp, real_fp.struct, real_fp.comp, pairing=pairing)
        assert (res.recall.numerator, res.recall.denominator) == (N_SMALL, N_SMALL)
        assert (res.precision.numerator, res.precision.denominator) == (N_SMALL, N_SMALL)
        assert res.recall.value == res.precision.value == 1.0
        assert res.amsd_recall.value == pytest.approx(0.0, abs=1e-6)
    # and element by element
    els = [describe_cif(c)["elements"] for c in small_set[1]]
    pe = per_element_coverage(els, res.ref_covered, els, res.gen_precise)
    assert (pe["recall"] == 1.0).all() and (pe["precision"] == 1.0).all()
    assert np.allclose(pe["freq_generated"], pe["freq_reference"])


@requires_data
def test_scrambled_coordinates_score_low(real_fp, scrambled_fp):
    """Random positions keep the composition but destroy the local environments."""
    res = coverage(scrambled_fp.struct, scrambled_fp.comp, real_fp.struct, real_fp.comp,
                   gen_mask=scrambled_fp.ok, n_generated=len(scrambled_fp))
    # compositions are identical, so every failure comes from the structural fingerprint
    assert res.amcd_recall.value == pytest.approx(0.0, abs=1e-6)
    assert res.recall.value <= 0.5
    assert res.precision.value <= 0.5
    assert res.amsd_precision.value > 0.4


@requires_data
def test_vectorised_coverage_equals_bruteforce_loop(real_fp, scrambled_fp):
    gs = np.vstack([real_fp.struct[:12], scrambled_fp.struct])
    gc = np.vstack([real_fp.comp[:12], scrambled_fp.comp])
    # reference: the other real structures plus a jittered copy of the first ones
    rng = np.random.default_rng(1)
    rs = np.vstack([real_fp.struct[12:], real_fp.struct[:6] + rng.normal(0, 0.15, (6, real_fp.struct.shape[1]))])
    rc = np.vstack([real_fp.comp[12:], real_fp.comp[:6] * rng.uniform(0.9, 1.1, (6, real_fp.comp.shape[1]))])
    for sc, cc in ((0.4, 10.0), (0.2, 4.0), (0.8, 2.0)):
        for pairing in ("independent", "joint"):
            res = coverage(gs, gc, rs, rc, struct_cutoff=sc, comp_cutoff=cc, pairing=pairing,
                           chunk_size=7)  # small chunks exercise the blocking
            ref_cov, gen_pre = coverage_bruteforce(gs, gc, rs, rc, struct_cutoff=sc, comp_cutoff=cc,
                                                   pairing=pairing)
            assert np.array_equal(res.ref_covered, ref_cov), (sc, cc, pairing)
            assert np.array_equal(res.gen_precise, gen_pre), (sc, cc, pairing)
    # the sample must not be trivial: some but not all covered at the MP-20 cutoffs
    ref_cov, gen_pre = coverage_bruteforce(gs, gc, rs, rc, struct_cutoff=0.4, comp_cutoff=10.0)
    assert 0 < ref_cov.sum() < len(ref_cov) and 0 < gen_pre.sum() < len(gen_pre)


# --------------------------------------------------------------------------- definitions


def test_joint_pairing_is_stricter_than_cdvae_independent_minima():
    # reference r is 0.1 away structurally from g1 (far in composition) and compositionally from g2
    gen_s = np.array([[0.0, 0.1], [5.0, 5.0]])
    gen_c = np.zeros((2, 132))
    gen_c[0, 0] = 1000.0  # scaled distance ~61: far
    ref_s = np.array([[0.0, 0.0]])
    ref_c = np.zeros((1, 132))
    kw = {"struct_cutoff": 0.4, "comp_cutoff": 10.0, "comp_scaled": True}
    ind = coverage(gen_s, gen_c, ref_s, ref_c, pairing="independent", **kw)
    joint = coverage(gen_s, gen_c, ref_s, ref_c, pairing="joint", **kw)
    assert ind.recall.value == 1.0  # nearest structure g1, nearest composition g2
    assert joint.recall.value == 0.0  # no single generated crystal is within both cutoffs


def test_precision_denominators_are_explicit():
    s = np.zeros((4, 3))
    s[3] = 9.0  # far away
    c = np.zeros((4, 132))
    ref_s, ref_c = np.zeros((1, 3)), np.zeros((1, 132))
    # rows 0-2 valid; row 2 has no fingerprint (NaN) -> counted as a miss over valid
    s[2] = np.nan
    valid = np.array([True, True, True, False])
    res = coverage(s, c, ref_s, ref_c, gen_mask=valid, n_generated=int(valid.sum()), comp_scaled=True)
    assert (res.precision.numerator, res.precision.denominator) == (2, 3)
    assert res.precision.denominator_name == "valid generated"
    cd = coverage(s, c, ref_s, ref_c, n_generated=4, precision_denominator_name="generated", comp_scaled=True)
    assert (cd.precision.numerator, cd.precision.denominator) == (2, 4)


def test_cdvae_cutoffs_and_scaler():
    assert cutoffs_for("mp20-test") == (0.4, 10.0)
    assert cutoffs_for("perov5-test") == (0.2, 4.0)
    assert cutoffs_for("carbon24-test") == (0.2, 4.0)
    from llamat_cif.metrics._cdvae_scaler import COMP_SCALER_MEANS, COMP_SCALER_STDS

    x = np.array([COMP_SCALER_MEANS]) + np.array([COMP_SCALER_STDS])
    x[0, 5] = np.nan
    z = scale_composition(x)
    assert np.allclose(np.delete(z[0], 5), 1.0) and z[0, 5] == 0.0


def test_per_element_known_counts():
    ref_el = ["Na Cl", "Na O", "Fe O", "Fe"]
    ref_cov = np.array([True, False, True, True])
    gen_el = ["Na Cl", "Fe O", "Fe O", "Cu"]
    gen_pre = np.array([True, True, False, False])
    pe = per_element_coverage(ref_el, ref_cov, gen_el, gen_pre).set_index("element")
    assert list(pe.index) == ["O", "Na", "Cl", "Fe", "Cu"]  # by atomic number
    assert pe.loc["Na", "recall"] == 0.5 and pe.loc["Na", "n_reference"] == 2
    assert pe.loc["Fe", "recall"] == 1.0 and pe.loc["Fe", "n_generated"] == 2
    assert pe.loc["Fe", "precision"] == 0.5
    assert pe.loc["Cu", "n_reference"] == 0 and np.isnan(pe.loc["Cu", "recall"])
    assert pe.loc["Cu", "precision"] == 0.0
    assert pe.loc["O", "freq_reference"] == 0.5 and pe.loc["O", "freq_generated"] == 0.5


def test_wasserstein_and_rate_known_answers():
    assert wasserstein("w", [0.0, 1.0], [0.0, 1.0], unit="x").value == 0.0
    m = wasserstein("w", [1.0, 2.0, np.nan], [0.0, 1.0], unit="g/cm^3")
    assert m.value == pytest.approx(1.0) and m.counts == {"generated": 2, "reference": 2}
    r = rate("valid_rate", 3, 4, "generated")
    assert r.value == 0.75 and r.to_dict()["denominator_name"] == "generated"
    assert rate("x", 0, 0, "parsed").value is None


def test_validity_rates_from_a_validators_table():
    from llamat_cif.metrics.validity import normalise_validity, validity_rates

    t = pd.DataFrame({"id": ["a", "b", "c", "d"], "parsed": [True, True, True, False],
                      "structurally_valid": pd.array([True, True, None, False], dtype="boolean"),
                      "compositionally_valid": [True, False, True, None],
                      "valid": pd.array([True, False, pd.NA, False], dtype="boolean")})
    r = validity_rates(normalise_validity(t))
    assert (r["valid_rate"].numerator, r["valid_rate"].denominator) == (1, 4)
    assert (r["valid_rate_over_parsed"].numerator, r["valid_rate_over_parsed"].denominator) == (1, 3)
    assert r["structurally_valid_rate"].numerator == 2 and r["parse_rate"].value == 0.75


def test_describe_cif_never_raises(nacl):
    assert describe_cif(nacl.to(fmt="cif"))["elements"] == "Cl Na"
    bad = describe_cif("data_x\n_cell_length_a oops\n")
    assert bad["parsed"] is False and bad["error"]
    assert describe_cif(None)["error"] == "no structure"


def test_csp_best_of_k(nacl, perovskite):
    from pymatgen.core import Lattice, Structure

    near = nacl.copy()
    near.perturb(0.05, min_distance=0.01)
    wrong = Structure(Lattice.cubic(5.64), ["Na", "Cl"], [[0, 0, 0], [0.25, 0.1, 0.0]])  # not rock salt
    reference = pd.DataFrame({"id": ["r1", "r2"], "cif": [nacl.to(fmt="cif"), perovskite.to(fmt="cif")],
                              "formula": ["NaCl", "SrTiO3"]})
    samples = pd.DataFrame({
        "id": ["s0", "s1", "s2", "s3"],
        "cif": [wrong.to(fmt="cif"), near.to(fmt="cif"), perovskite.to(fmt="cif"), ""],
        "target_formula": ["NaCl", "NaCl", "SrTiO3", "KBr"],  # KBr: no reference structure
        "valid": [True, True, True, False],
    })
    out = csp_match(samples, reference, ks=(1, 2))
    assert (out["csp_match_rate@1"].numerator, out["csp_match_rate@1"].denominator) == (1, 2)
    assert (out["csp_match_rate@2"].numerator, out["csp_match_rate@2"].denominator) == (2, 2)
    assert out["csp_rmse@1"].value == pytest.approx(0.0, abs=1e-6)  # the perovskite itself
    assert 0 < out["csp_rmse@2"].value < 0.1
    assert out["csp_match_rate@1"].counts["targets_in_samples"] == 3


@requires_data
def test_symmetry_shortcut_matches_every_site(perovskite, small_set):
    from llamat_cif.metrics.fingerprints import equivalent_site_groups, fingerprint_structure

    assert sorted(len(g) for g in equivalent_site_groups(perovskite)) == [1, 1, 3]  # Sr, Ti, 3 O
    for s in [perovskite, *small_set[2][:4]]:
        fast, comp = fingerprint_structure(s, symprec=0.01)
        full, comp_full = fingerprint_structure(s)  # every site, CDVAE's definition (the default)
        assert np.allclose(fast, full, atol=1e-3)
        assert np.array_equal(np.nan_to_num(comp), np.nan_to_num(comp_full))


def test_default_fingerprints_are_every_site_and_the_shortcut_is_cached_apart(tmp_path, perovskite, nacl):
    """Issue 17 item 4: the default is CDVAE's every-site mean; the grouped shortcut is a variant
    with its own cache entries (never served for the exact one)."""
    from pymatgen.core import Structure

    from llamat_cif.metrics.fingerprints import fingerprint_structure

    cifs = [perovskite.to(fmt="cif"), nacl.to(fmt="cif")]
    exact = compute_fingerprints(cifs, cache=tmp_path, chunk_size=1)
    for k, c in enumerate(cifs):
        s = Structure.from_str(c, fmt="cif")
        assert np.allclose(exact.struct[k], fingerprint_structure(s, symprec=None)[0], atol=1e-12)
    grouped = compute_fingerprints(cifs, cache=tmp_path, chunk_size=1, shortcut=True)
    assert grouped.computed == 2 and grouped.key != exact.key  # not read from the exact chunks
    assert compute_fingerprints(cifs, cache=tmp_path, chunk_size=1).computed == 0
    assert len(list((tmp_path / "chunks").glob("*.npz"))) == 4


# --------------------------------------------------------------------------- cache and CLI


def test_fingerprint_cache_resumes(tmp_path, nacl, perovskite, diamond):
    cifs = [nacl.to(fmt="cif"), "not a cif", perovskite.to(fmt="cif"), diamond.to(fmt="cif")]
    first = compute_fingerprints(cifs, cache=tmp_path, chunk_size=1)
    assert first.computed == 4 and first.ok.tolist() == [True, False, True, True]
    assert first.error[1]
    chunks = sorted((tmp_path / "chunks").glob("*.npz"))
    assert len(chunks) == 4
    chunks[0].unlink()  # as if the job had been killed before writing it
    again = compute_fingerprints(cifs, cache=tmp_path, chunk_size=1)
    assert again.computed == 1
    assert np.allclose(again.struct[first.ok], first.struct[first.ok])
    # diamond: every carbon is tetrahedral, so the CN=4 weight of the mean fingerprint is 1
    assert first.struct[3].max() == pytest.approx(1.0)


def _reference_run(tmp_path, **extra_columns):
    """A run folder whose 'samples' are the first 12 MP-20 test structures plus an empty and a
    garbage sample (valid: 12 of 14), with its validity table."""
    from llamat_cif.data import load_split

    ref = load_split("mp20", "test", limit=12)
    run = tmp_path / "run"
    run.mkdir()
    ids = [f"s{i:06d}" for i in range(14)]
    cifs = list(ref["cif"]) + ["", "garbage"]
    pd.DataFrame({"id": ids, "text": cifs, "fmt": "cif", "cif": cifs, "error": [""] * 12 + ["no decode"] * 2,
                  "target_formula": "", **extra_columns}).to_csv(run / "samples.csv", index=False)
    ok = [True] * 12 + [False, False]
    pd.DataFrame({"id": ids, "parsed": ok, "structurally_valid": ok, "compositionally_valid": ok,
                  "valid": ok}).to_parquet(run / "validity.parquet")
    return run


@requires_data
def test_cli_benchmark_end_to_end(tmp_path, monkeypatch):
    """The first 12 reference structures as 'samples': recall over them and precision are exactly 1."""
    from click.testing import CliRunner

    from llamat_cif.cli import main

    monkeypatch.setenv("LLAMAT_CIF_CACHE", str(tmp_path / "cache"))
    run = _reference_run(tmp_path, target_spacegroup="", seed=0, n_tokens=0)
    out = tmp_path / "bench"
    res = CliRunner().invoke(main, ["benchmark", "--samples", str(run), "--reference", "mp20-test",
                                    "--reference-limit", "12", "--out", str(out), "--seed", "3",
                                    "--fingerprint-scope", "parsed"])
    assert res.exit_code == 0, res.output
    metrics = json.loads((out / "metrics.json").read_text())
    m = metrics["metrics"]
    assert (m["valid_rate"]["numerator"], m["valid_rate"]["denominator"]) == (12, 14)
    assert (m["coverage_recall"]["numerator"], m["coverage_recall"]["denominator"]) == (12, 12)
    assert (m["coverage_precision"]["numerator"], m["coverage_precision"]["denominator"]) == (12, 12)
    # CDVAE's denominator: all generated samples, the two undecodable ones included
    assert (m["coverage_cdvae_precision"]["numerator"], m["coverage_cdvae_precision"]["denominator"]) == (12, 14)
    assert m["coverage_crystal_text_llm_recall"]["value"] == 1.0
    assert m["coverage_crystal_text_llm_recall"]["denominator"] <= 12
    assert m["wdist_density"]["value"] == pytest.approx(0.0, abs=1e-9)
    assert metrics["protocol"]["seed"] == 3
    # 12 distinct reference structures: all unique; novelty judged against MP-20 train over the same 12
    assert (m["unique_as_generated"]["numerator"], m["unique_as_generated"]["denominator"]) == (12, 12)
    assert m["novel_as_generated"]["denominator"] == 12
    assert "MP-20 train" in m["novel_as_generated"]["protocol"]["novelty_reference"]
    assert metrics["protocol"]["coverage"]["struct_cutoff"] == 0.4
    assert "numpy" in metrics["protocol"]["versions"] and metrics["protocol"]["hardware"]["cpu_count"]
    for f in ("ptable_recall.png", "ptable_precision.png", "hist_density.png"):
        assert (out / "figures" / f).stat().st_size > 10_000
    report = (out / "report.md").read_text()
    assert "figures/ptable_recall.png" in report and "MP-20 test, available subset (n=12)" in report
    per_el = pd.read_csv(out / "per_element.csv")
    assert (per_el.loc[per_el["n_reference"] > 0, "recall"] == 1.0).all()



@requires_data
def test_cli_benchmark_no_coverage(tmp_path, monkeypatch):
    """--no-coverage: no fingerprint of the samples or the reference is computed, no coverage metric or
    per-element recall is written, and validity, novelty and property distances are as with coverage."""
    from click.testing import CliRunner

    import llamat_cif.metrics.benchmark_coverage as bench_coverage
    from llamat_cif.cli import main

    def no_fingerprints(*args, **kwargs):
        raise AssertionError("--no-coverage must not fingerprint anything")

    monkeypatch.setattr(bench_coverage, "compute_fingerprints", no_fingerprints)
    monkeypatch.setattr(bench_coverage, "reference_validity", no_fingerprints)
    monkeypatch.setenv("LLAMAT_CIF_CACHE", str(tmp_path / "cache"))
    run = _reference_run(tmp_path)
    out = tmp_path / "bench"
    args = ["benchmark", "--samples", str(run), "--reference", "mp20-test", "--reference-limit", "12",
            "--out", str(out), "--no-coverage"]
    res = CliRunner().invoke(main, args + ["--struct-cutoff", "0.3"])
    assert res.exit_code != 0 and "--no-coverage" in res.output  # a coverage cutoff without coverage
    res = CliRunner().invoke(main, args)
    assert res.exit_code == 0, res.output
    metrics = json.loads((out / "metrics.json").read_text())
    m = metrics["metrics"]
    assert not [k for k in m if "coverage" in k or k.startswith("cov")]
    assert (m["valid_rate"]["numerator"], m["valid_rate"]["denominator"]) == (12, 14)
    assert (m["parse_rate"]["numerator"], m["parse_rate"]["denominator"]) == (12, 14)
    assert (m["valid_rate_over_parsed"]["numerator"], m["valid_rate_over_parsed"]["denominator"]) == (12, 12)
    assert (m["unique_as_generated"]["numerator"], m["unique_as_generated"]["denominator"]) == (12, 12)
    assert m["novel_as_generated"]["denominator"] == 12
    assert m["wdist_density"]["value"] == pytest.approx(0.0, abs=1e-9)
    assert metrics["protocol"]["coverage"]["skipped"] is True
    assert metrics["protocol"]["config"]["coverage"] is False
    assert "fingerprint_cache" not in metrics["protocol"] and "n_with_fingerprint" not in metrics["reference"]
    assert "fingerprinted" not in metrics["samples"] and metrics["samples"]["valid"] == 12
    assert not [f for f in (tmp_path / "cache").rglob("*") if f.suffix in (".npz", ".npy")]  # structure tables only
    per_el = pd.read_csv(out / "per_element.csv")
    assert "recall" not in per_el.columns and np.allclose(per_el["freq_generated"], per_el["freq_reference"])
    assert not (out / "figures" / "ptable_recall.png").exists()
    assert (out / "figures" / "ptable_frequency_ratio.png").exists()
    report = (out / "report.md").read_text()
    assert "Coverage skipped" in report and "ptable_recall" not in report
    assert "coverage_recall" not in res.output and "valid_rate" in res.output

def test_uniqueness_and_novelty_as_generated():
    """Known answers: a translated copy is a repeat, another structure type of the same formula is not,
    and only structures absent from the training set are novel."""
    from pymatgen.core import Lattice, Structure

    from llamat_cif.metrics.diversity import uniqueness_novelty
    from llamat_cif.metrics.sun import TrainingSet

    rocksalt = Structure.from_spacegroup("Fm-3m", Lattice.cubic(5.64), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    shifted = rocksalt.copy()
    shifted.translate_sites(list(range(len(shifted))), [0.13, 0.07, 0.21])
    b2 = Structure(Lattice.cubic(2.9), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    kcl = Structure.from_spacegroup("Fm-3m", Lattice.cubic(6.29), ["K", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    cifs = [s.to(fmt="cif") for s in (rocksalt, shifted, b2, kcl)] + ["garbage"]
    mask = np.array([True, True, True, True, False])
    m = uniqueness_novelty(cifs, mask, TrainingSet.from_structures([rocksalt], name="rocksalt only"))
    assert (m["unique_as_generated"].numerator, m["unique_as_generated"].denominator) == (3, 4)
    assert (m["novel_as_generated"].numerator, m["novel_as_generated"].denominator) == (2, 4)
    assert "novel_as_generated" not in uniqueness_novelty(cifs, mask, None)


@requires_data
def test_training_set_for_reference():
    """MP-20 test is judged against MP-20 train; a dataset without a train split on disk says why."""
    from llamat_cif.metrics.diversity import training_set_for

    training, why = training_set_for("mp20-test")
    assert why is None and training.name == "MP-20 train, available subset (n=8344)"
    training, why = training_set_for("carbon24-test")
    assert training is None and "carbon24/train" in why


# ------------------------------------------------------------------------------------ --stability N


def test_choose_valid_is_seeded_and_capped():
    from llamat_cif.metrics.stability_metrics import choose_valid

    valid = np.array([True, False, True, True, False, True, True])
    a, b = choose_valid(valid, 3, seed=5), choose_valid(valid, 3, seed=5)
    assert list(a) == list(b) and len(a) == 3 and valid[a].all() and list(a) == sorted(a)
    assert list(choose_valid(valid, 10, seed=0)) == [0, 2, 3, 5, 6]  # fewer valid than asked: all of them


def test_chosen_stability_counts_failures_in_the_chosen_denominator(nacl, diamond):
    """Four chosen: NaCl on the hull, diamond 0.05 above, one time-out, one without a row. Every
    rate is over the 4 chosen; the estimate over generated scales by valid/generated = 8/10."""
    from llamat_cif.metrics.stability_metrics import chosen_stability
    from llamat_cif.metrics.sun import TrainingSet

    table = pd.DataFrame({
        "id": ["a", "b", "c", "other"],
        "relaxed_cif": [nacl.to(fmt="cif"), diamond.to(fmt="cif"), None, nacl.to(fmt="cif")],
        "e_hull": [-0.01, 0.05, np.nan, -1.0],
        "converged": [True, False, False, True],
        "n_steps": [10, 500, 3, 1],
        "wall_s": [1.0, 3.0, 300.0, 0.1],
        "error": [None, "", "RelaxationError: time limit 300 s exceeded", None],
    })
    m, funnel_rows = chosen_stability(table, ["a", "b", "c", "d"], n_valid=8, n_generated=10,
                                      training=TrainingSet.from_structures([nacl], name="NaCl only"))
    got = {k: (m[f"stability_{k}_rate"].numerator, m[f"stability_{k}_rate"].denominator)
           for k in ("relaxed", "converged", "metastable", "stable", "sun", "msun")}
    assert got == {"relaxed": (2, 4), "converged": (1, 4), "metastable": (2, 4), "stable": (1, 4),
                   "sun": (0, 4), "msun": (1, 4)}  # diamond: novel vs a NaCl-only set, metastable, not stable
    assert m["stability_metastable_rate"].denominator_name == "chosen valid samples"
    assert m["stability_metastable_est_generated"].value == pytest.approx(0.8 * 0.5)
    assert m["stability_metastable_est_generated"].denominator == 10
    assert m["stability_median_e_hull"].value == pytest.approx(0.02)
    assert m["stability_median_steps"].value == pytest.approx(255.0)
    assert m["stability_median_seconds"].counts["relaxed without error"] == 2
    assert [r["key"] for r in funnel_rows] == ["relaxed", "converged", "metastable", "stable", "sun", "msun"]
    assert "stability_sun_rate" not in chosen_stability(table, ["a"], n_valid=1, n_generated=1)[0]


@requires_data
def test_cli_benchmark_stability_end_to_end(tmp_path, monkeypatch):
    """Rock-salt NaCl and KCl (valid), Na-Cl 0.4 Å apart (invalid) and garbage: --stability 2 relaxes
    the two valid ones, both metastable (MP ground states), 2/2 of chosen and 0.5 of generated;
    a rerun reads stability.parquet instead of relaxing again."""
    from click.testing import CliRunner
    from pymatgen.core import Lattice, Structure

    from llamat_cif.cli import main

    monkeypatch.setenv("LLAMAT_CIF_CACHE", str(tmp_path / "cache"))
    nacl = Structure.from_spacegroup("Fm-3m", Lattice.cubic(5.64), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    kcl = Structure.from_spacegroup("Fm-3m", Lattice.cubic(6.29), ["K", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    close = Structure(Lattice.cubic(4.0), ["Na", "Cl"], [[0, 0, 0], [0.1, 0, 0]])  # 0.4 Å apart
    cifs = [s.to(fmt="cif") for s in (nacl, close, kcl)] + ["garbage"]
    run = tmp_path / "run"
    run.mkdir()
    pd.DataFrame({"id": [f"s{i:06d}" for i in range(4)], "text": cifs, "fmt": "cif", "cif": cifs, "error": "",
                  "target_formula": ""}).to_csv(run / "samples.csv", index=False)  # no validity.parquet
    out = tmp_path / "bench"
    args = ["benchmark", "--samples", str(run), "--reference", "mp20-test", "--reference-limit", "12",
            "--out", str(out), "--seed", "1", "--stability", "2"]
    res = CliRunner().invoke(main, args)
    assert res.exit_code == 0, res.output
    metrics = json.loads((out / "metrics.json").read_text())
    m = metrics["metrics"]
    assert (m["valid_rate"]["numerator"], m["valid_rate"]["denominator"]) == (2, 4)
    for stage in ("relaxed", "converged", "metastable"):
        r = m[f"stability_{stage}_rate"]
        assert (r["numerator"], r["denominator"], r["denominator_name"]) == (2, 2, "chosen valid samples")
        assert m[f"stability_{stage}_est_generated"]["value"] == pytest.approx(0.5)
        assert m[f"stability_{stage}_est_generated"]["denominator"] == 4
    assert m["stability_sun_rate"]["numerator"] == 0  # both are MP-20 train structures: not novel
    assert m["stability_median_e_hull"]["value"] < 0.1
    section = metrics["stability"]
    assert sorted(section["chosen_ids"]) == ["s000000", "s000002"]
    p = section["protocol"]
    assert (p["potential"], p["fmax_eV_A"], p["seed"], p["n_chosen"], p["rescale_volume"]) == ("chgnet", 0.1, 1, 2, False)
    assert "MP-20" in p["hull"]
    geo = section["geometry"]["tables"]
    assert geo["chosen, as generated"]["short_contacts"]["count"] == 0
    assert geo["chosen, as generated"]["n"] == 2 and geo["reference (mp20-test)"]["n"] == 12
    assert (out / "figures" / "hist_e_hull.png").stat().st_size > 5_000
    report = (out / "report.md").read_text()
    assert "## Stability of 2 chosen valid samples" in report and "figures/hist_e_hull.png" in report
    assert "stability_metastable_rate" in res.output and "short contacts" in res.output
    # rerun: nothing left to relax, the rows file is not rewritten
    before = (out / "stability.parquet").stat().st_mtime_ns
    res = CliRunner().invoke(main, args + ["--no-figures", "--no-novelty"])
    assert res.exit_code == 0, res.output
    assert (out / "stability.parquet").stat().st_mtime_ns == before
    again = json.loads((out / "metrics.json").read_text())["metrics"]
    assert again["stability_metastable_rate"]["numerator"] == 2
