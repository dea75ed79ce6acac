"""``benchmark --protocol cdvae``: CDVAE's compute_metrics.py numbers, with their denominators.

Known answers: 20 real MP-20 test structures plus three hostile samples (text that is no CIF, a
rock-salt cell with atoms 0.3 Å apart, a charge-imbalanced NaCl2) against the same 20 as the
reference. CDVAE divides validity and coverage precision by all 23 generated; every reference
structure is among the samples, so COV-R is 20/20; the diversity and density distances are
recomputed here by explicit loops from the fingerprints and pymatgen densities.
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from tests.conftest import requires_data

N = 20

SHORT = """data_short
_cell_length_a 4.0
_cell_length_b 4.0
_cell_length_c 4.0
_cell_angle_alpha 90
_cell_angle_beta 90
_cell_angle_gamma 90
_symmetry_space_group_name_H-M 'P 1'
loop_
_atom_site_label
_atom_site_type_symbol
_atom_site_fract_x
_atom_site_fract_y
_atom_site_fract_z
_atom_site_occupancy
Na1 Na 0.0 0.0 0.0 1
Cl1 Cl 0.075 0.0 0.0 1
"""

NACL2 = SHORT.replace("data_short", "data_nacl2").replace(
    "Cl1 Cl 0.075 0.0 0.0 1", "Cl1 Cl 0.5 0.5 0.5 1\nCl2 Cl 0.5 0.0 0.0 1")


@pytest.fixture(scope="module")
def samples():
    from llamat_cif.data import load_split

    real = load_split("mp20", "test", limit=N)[["id", "cif"]]
    hostile = pd.DataFrame({"id": ["not-a-cif", "short", "nacl2"], "cif": ["no crystal here", SHORT, NACL2]})
    return pd.concat([real, hostile], ignore_index=True)


def _pairwise_mean(x: np.ndarray) -> float:
    d = [np.sqrt(np.sum((x[i] - x[j]) ** 2)) for i in range(len(x)) for j in range(i + 1, len(x))]
    return float(np.mean(d))


@requires_data
def test_cdvae_protocol_known_answers(tmp_path, monkeypatch, samples):
    from pymatgen.core import Structure
    from scipy.stats import wasserstein_distance

    from llamat_cif.metrics.config import BenchmarkConfig
    from llamat_cif.metrics.coverage import coverage_bruteforce, scale_composition
    from llamat_cif.metrics.fingerprints import compute_fingerprints
    from llamat_cif.metrics.run import run_benchmark
    from llamat_cif.validators import compositional_validity, structural_validity

    monkeypatch.setenv("LLAMAT_CIF_CACHE", str(tmp_path / "cache"))
    csv = tmp_path / "samples.csv"
    samples.to_csv(csv, index=False)
    real = [Structure.from_str(c, fmt="cif") for c in samples["cif"][:N]]
    comp_real = np.array([bool(compositional_validity(s.composition)) for s in real])
    struct_real = np.array([bool(structural_validity(s)) for s in real])
    assert struct_real.all()

    # too few valid crystals for CDVAE's 1,000: validity and coverage only, and the reason
    full = run_benchmark(BenchmarkConfig(samples=str(csv), out=str(tmp_path / "a"), reference="mp20-test",
                                         reference_limit=N, figures=False, novelty=False, protocol="cdvae"),
                         show_progress=False)
    assert full["protocol"]["name"] == "cdvae"
    assert not (tmp_path / "a" / "validity_cdvae.parquet").exists()  # validated with CDVAE's settings once
    block = full["cdvae"]
    m = block["metrics"]
    # comp: the real ones' SMACT verdicts + the short NaCl cell (charge-balanced); the text and NaCl2 fail
    comp_num = int(comp_real.sum()) + 1
    assert (m["comp_valid"]["numerator"], m["comp_valid"]["denominator"]) == (comp_num, N + 3)
    # struct: the 20 real ones + NaCl2; the text is not built, the short cell has a 0.3 Å pair
    assert (m["struct_valid"]["numerator"], m["struct_valid"]["denominator"]) == (N + 1, N + 3)
    n_valid = int((comp_real & struct_real).sum())
    assert (m["valid"]["numerator"], m["valid"]["denominator"]) == (n_valid, N + 3)
    assert "not enough valid crystals in the predicted set: " + f"{n_valid}/1000" in block["not_computed"]["comp_div"]
    # coverage over every built crystal with a fingerprint, precision over all 23 generated
    assert (m["cov_recall"]["numerator"], m["cov_recall"]["denominator"]) == (N, N)
    fp = compute_fingerprints(samples["cif"].tolist())
    assert not fp.ok[N] and fp.ok[N + 1] and fp.ok[N + 2]
    _, precise = coverage_bruteforce(fp.struct[fp.ok], fp.comp[fp.ok], fp.struct[:N], fp.comp[:N],
                                     struct_cutoff=0.4, comp_cutoff=10.0)
    assert (m["cov_precision"]["numerator"], m["cov_precision"]["denominator"]) == (int(precise.sum()), N + 3)
    assert {"amsd_recall", "amsd_precision", "amcd_recall", "amcd_precision"} <= set(m)
    # our headline coverage beside it counts valid samples only
    assert full["metrics"]["coverage_precision"]["denominator"] == n_valid

    # every valid crystal drawn (n_samples = n_valid): diversity and distances by explicit loops
    small = run_benchmark(BenchmarkConfig(samples=str(csv), out=str(tmp_path / "b"), reference="mp20-test",
                                          reference_limit=N, figures=False, novelty=False, protocol="cdvae",
                                          cdvae_n_samples=n_valid), show_progress=False)["cdvae"]
    assert small["not_computed"] == {"wdist_prop": small["not_computed"]["wdist_prop"]}
    valid_idx = np.flatnonzero(comp_real & struct_real)
    assert small["metrics"]["comp_div"]["value"] == pytest.approx(
        _pairwise_mean(scale_composition(fp.comp[valid_idx])), rel=1e-9)
    assert small["metrics"]["struct_div"]["value"] == pytest.approx(_pairwise_mean(fp.struct[valid_idx]), rel=1e-9)
    dens = np.array([s.density for s in real])
    assert small["metrics"]["wdist_density"]["value"] == pytest.approx(
        wasserstein_distance(dens[valid_idx], dens), rel=1e-9)
    nel = np.array([len(s.composition.elements) for s in real])
    assert small["metrics"]["wdist_num_elems"]["value"] == pytest.approx(
        wasserstein_distance(nel[valid_idx], nel), rel=1e-9)


@requires_data
def test_default_protocol_is_named_and_cdvae_revalidates_other_settings(tmp_path, monkeypatch, samples):
    from click.testing import CliRunner

    from llamat_cif.cli import main
    from llamat_cif.metrics.config import BenchmarkConfig
    from llamat_cif.metrics.run import run_benchmark
    from llamat_cif.validators import run_validation

    monkeypatch.setenv("LLAMAT_CIF_CACHE", str(tmp_path / "cache"))
    run = tmp_path / "run"
    run.mkdir()
    samples.assign(text=samples["cif"], fmt="cif", error="").to_csv(run / "samples.csv", index=False)
    # the run folder's validity was computed with a SMACT variant, not CDVAE's data
    run_validation(str(run / "samples.csv"), str(run), n_jobs=1, oxidation_states="smact14")
    ours = run_benchmark(BenchmarkConfig(samples=str(run), out=str(tmp_path / "ours"), reference="mp20-test",
                                         reference_limit=N, figures=False, novelty=False, coverage=False),
                         show_progress=False)
    assert ours["protocol"]["name"] == "llamat-cif" and "cdvae" not in ours
    cd = run_benchmark(BenchmarkConfig(samples=str(run), out=str(tmp_path / "cd"), reference="mp20-test",
                                       reference_limit=N, figures=False, novelty=False, protocol="cdvae"),
                       show_progress=False)
    assert cd["cdvae"]["protocol"]["validity"]["protocol"]["thresholds"]["oxidation_states"] == "cdvae"
    assert (tmp_path / "cd" / "validity_cdvae.parquet").is_file()
    summary = json.loads((run / "validity_summary.json").read_text())
    assert summary["protocol"]["thresholds"]["oxidation_states"] == "smact14"  # the run's own file untouched

    res = CliRunner().invoke(main, ["benchmark", "--samples", str(run), "--out", str(tmp_path / "x"),
                                    "--protocol", "cdvae", "--no-coverage"])
    assert res.exit_code != 0 and "--protocol cdvae needs every-site fingerprints" in res.output
    assert not (tmp_path / "x" / "metrics.json").exists()


@requires_data
def test_validate_protocol_cdvae(tmp_path, monkeypatch, samples):
    from click.testing import CliRunner

    from llamat_cif.cli import main

    monkeypatch.setenv("LLAMAT_CIF_CACHE", str(tmp_path / "cache"))
    # 5 real structures (all CDVAE-valid) and the three hostile samples
    part = pd.concat([samples.iloc[:5], samples.iloc[N:]], ignore_index=True)
    csv = tmp_path / "part.csv"
    part.to_csv(csv, index=False)
    res = CliRunner().invoke(main, ["validate", str(csv), "--out", str(tmp_path / "v"), "--jobs", "1",
                                    "--protocol", "cdvae"])
    assert res.exit_code == 0, res.output
    summary = json.loads((tmp_path / "v" / "validity_summary.json").read_text())
    assert summary["protocol"]["name"] == "cdvae"
    c = summary["cdvae"]
    # the first 5 MP-20 test structures pass SMACT; the short NaCl cell is charge-balanced, NaCl2 is not
    assert (c["comp_valid"]["numerator"], c["comp_valid"]["denominator"]) == (6, 8)
    assert (c["struct_valid"]["numerator"], c["struct_valid"]["denominator"]) == (6, 8)  # 5 real + NaCl2
    assert (c["valid"]["numerator"], c["valid"]["denominator"]) == (5, 8)
    assert c["valid"]["counts"]["valid_but_no_fingerprint"] == 0
    assert "CDVAE protocol" in res.output

    plain = CliRunner().invoke(main, ["validate", str(csv), "--out", str(tmp_path / "p"), "--jobs", "1"])
    assert plain.exit_code == 0
    assert json.loads((tmp_path / "p" / "validity_summary.json").read_text())["protocol"]["name"] == "llamat-cif"

    bad = CliRunner().invoke(main, ["validate", str(csv), "--out", str(tmp_path / "b"), "--protocol", "cdvae",
                                    "--min-distance", "0.4"])
    assert bad.exit_code != 0 and "drop --min-distance 0.4" in bad.output
    assert not (tmp_path / "b" / "validity.parquet").exists()
