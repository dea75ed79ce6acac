"""The screen pipeline from an existing (older run's) samples.csv: stages, funnel counts, interrupt + resume."""

from __future__ import annotations

import json

import pandas as pd
import pytest
from conftest import requires_data

import llamat_cif.stability.relax as relax_mod
from llamat_cif.screen import ScreenConfig, run_screen
from llamat_cif.stability.relax import RelaxConfig


def _small(df: pd.DataFrame, k: int) -> pd.DataFrame:
    from pymatgen.core import Structure

    n = df["cif"].map(lambda c: len(Structure.from_str(c, fmt="cif")))
    return df[n <= 4].head(k)


@pytest.fixture(scope="module")
def samples() -> pd.DataFrame:
    """A samples.csv from real structures: 3 MP-20 test, 1 MP-20 train, 1 duplicate, 1 garbage."""
    from pymatgen.core import Structure

    from llamat_cif.data import load_split

    test = _small(load_split("mp20", "test", limit=200), 3)
    train = _small(load_split("mp20", "train", limit=200), 1)
    dup = Structure.from_str(test["cif"].iloc[0], fmt="cif")
    dup.make_supercell([2, 1, 1])
    cifs = list(test["cif"]) + list(train["cif"]) + [dup.to(fmt="cif"), ""]
    texts = cifs[:-1] + ["data_x\n_cell_length_a garbage"]
    ids = [f"s{i:06d}" for i in range(len(cifs))]
    return pd.DataFrame({"id": ids, "text": texts, "fmt": "cif", "cif": cifs,
                         "error": [""] * (len(cifs) - 1) + ["did not decode"], "target_formula": "",
                         "target_spacegroup": "", "seed": 0, "n_tokens": 0}), list(test["id"]) + list(train["id"])


@requires_data
def test_screen_interrupted_and_resumed(tmp_path, samples, monkeypatch):
    df, _ = samples
    df.to_csv(tmp_path / "samples.csv", index=False)
    cfg = ScreenConfig.of(n=len(df), out_dir=str(tmp_path), relax=RelaxConfig(fmax=0.1, max_steps=100))

    real = relax_mod.relax_structure
    calls: list[str] = []

    def interrupted(structure, potential, config, sid=""):
        if len(calls) == 2:
            raise KeyboardInterrupt  # the user presses Ctrl-C during the third relaxation
        calls.append(sid)
        return real(structure, potential, config, sid=sid)

    monkeypatch.setattr(relax_mod, "relax_structure", interrupted)
    with pytest.raises(KeyboardInterrupt):
        run_screen(cfg, progress=False)
    first = pd.read_parquet(tmp_path / "stability.parquet")
    assert sorted(first["id"]) == sorted(calls)  # every finished row was kept

    resumed: list[str] = []

    def counting(structure, potential, config, sid=""):
        resumed.append(sid)
        return real(structure, potential, config, sid=sid)

    monkeypatch.setattr(relax_mod, "relax_structure", counting)
    funnel = run_screen(cfg, progress=False)
    stab = pd.read_parquet(tmp_path / "stability.parquet")
    dedup = pd.read_csv(tmp_path / "dedup.csv", dtype={"id": str})
    unique_valid = set(dedup.loc[dedup["unique"], "id"])
    assert not stab["id"].duplicated().any()
    assert set(stab["id"]) == unique_valid  # nothing lost
    assert not set(resumed) & set(calls)  # nothing relaxed twice
    assert len(resumed) + len(calls) == len(unique_valid)

    stages = {s["stage"]: s["numerator"] for s in funnel["stages"]}
    assert stages["generated"] == 6 and funnel["stages"][0]["denominator"] == 6
    assert stages["decoded (parsed to a structure)"] == 5
    # the supercell of sample 0 is the same crystal: not relaxed a second time
    assert dedup.set_index("id").loc["s000004", "duplicate_of"] == "s000000"
    assert stages["passing 'valid' and unique before relaxation"] == stages["valid (structural + compositional)"] - 1
    assert stages["relaxed without error"] == len(unique_valid)
    sun = pd.read_parquet(tmp_path / "sun.parquet").set_index("id")
    # the MP-20 *train* structure (LiMnIr2) is not novel, the MP-20 test ones are
    assert not sun.loc["s000003", "novel"]
    assert sun.loc[["s000000", "s000001"], "novel"].all()
    # MP-20 structures sit within 0.08 eV/atom of MP's hull: metastable under the pipeline
    assert sun["metastable"].all()
    sj = json.loads((tmp_path / "sun.json").read_text())
    assert sj["denominator_is"] == "all generated samples" and sj["sun"]["denominator"] == 6
    assert json.loads((tmp_path / "screen_config.json").read_text())["relax"]["optimizer"] == "FIRE"


@requires_data
@pytest.mark.slow
def test_screen_end_to_end_with_generator(tmp_path):
    """generate -> ... -> funnel with the shipped default model (needs llamat_cif.sampling)."""
    pytest.importorskip("llamat_cif.sampling")
    cfg = ScreenConfig.of(n=4, out_dir=str(tmp_path), batch_size=4, seed=0, relax=RelaxConfig(max_steps=100))
    funnel = run_screen(cfg, progress=False)
    samples = pd.read_parquet(tmp_path / "samples.parquet")
    assert len(samples) == 4 and not samples["id"].duplicated().any()
    counts = [s["numerator"] for s in funnel["stages"]]
    assert counts[0] == 4 and all(a >= b for a, b in zip(counts[:5], counts[1:6], strict=True))
    again = run_screen(cfg, progress=False)  # a finished run resumes to the same funnel
    assert [s["numerator"] for s in again["stages"]] == counts


def test_screen_passes_targets_and_grammar_settings_to_generation(tmp_path):
    """`screen --targets` draws one sample per CSV row with that formula (the constrained grammar
    enforces it); --unconstrained with --targets is refused before any work."""
    from click.testing import CliRunner
    from pymatgen.core import Structure

    from llamat_cif.cli import main
    from llamat_cif.screen import stage_generate

    targets = tmp_path / "targets.csv"
    pd.DataFrame({"target_formula": ["NaCl", "MgO"]}).to_csv(targets, index=False)
    cfg = ScreenConfig.of(n=1, out_dir=str(tmp_path / "run"), batch_size=2, seed=0, targets=str(targets),
                       charge_balanced=True, min_distance=0.6)
    df = stage_generate(cfg, progress=False)
    assert list(df["target_formula"]) == ["NaCl", "MgO"]
    made = {t: Structure.from_str(c, fmt="cif").composition.reduced_formula
            for t, c in zip(df["target_formula"], df["cif"], strict=True) if c}
    assert made and all(t == f for t, f in made.items())
    saved = json.loads((tmp_path / "run" / "sample_config.json").read_text())
    assert (saved["charge_balanced"], saved["min_distance"], saved["n"]) == (True, 0.6, 2)

    res = CliRunner().invoke(main, ["screen", "--out", str(tmp_path / "bad"), "--targets", str(targets),
                                    "--unconstrained"])
    assert res.exit_code != 0 and "--targets needs constrained decoding" in res.output
    assert not (tmp_path / "bad").exists()
