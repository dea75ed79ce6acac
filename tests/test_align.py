"""Stability alignment (``llamat-cif align``): pairs, duplicates, the stability reward on known
structures, and the sample-score-update loop on the shipped small model with a cheap reward."""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict

import numpy as np
import pandas as pd
import pytest
import torch
from click.testing import CliRunner
from conftest import requires_data

from llamat_cif.metrics.sun import TrainingSet
from llamat_cif.model import load_generator, resolve_model_path
from llamat_cif.runs import RunStore
from llamat_cif.train.align import round_prompts, run_align
from llamat_cif.train.align_policy import sequence_logps
from llamat_cif.train.align_scores import (
    StabilityReward,
    build_pairs,
    cap_families,
    earlier_winners,
    mark_duplicates,
)
from llamat_cif.train.config import AlignConfig

torch.set_num_threads(1)


def _frame(rows):
    return pd.DataFrame(rows, columns=["id", "prompt", "reward", "eligible"])


def test_pairs_best_eligible_against_ineligible_and_clearly_worse():
    rows = [("a", "p0", -0.10, True), ("b", "p0", -0.50, True), ("c", "p0", -0.12, True),
            ("d", "p0", -2.00, False), ("e", "p0", -0.01, False),  # e: best reward but not novel
            ("f", "p1", -0.30, False), ("g", "p1", -2.00, False)]  # p1: nothing may win
    df = _frame(rows)
    pairs = build_pairs(df[["id", "prompt"]], df, margin=0.05, per_prompt=3)
    assert pairs["prompt"].tolist() == ["p0"] * 3
    assert set(pairs["chosen"]) == {"a"}  # e scores higher but never wins
    # ineligible first (worst first), then eligible rivals at least 0.05 worse; c is within margin
    assert pairs["rejected"].tolist() == ["d", "e", "b"]
    assert build_pairs(df[["id", "prompt"]], df, margin=0.05, per_prompt=1)["rejected"].tolist() == ["d"]


def test_duplicates_within_a_round_are_not_eligible(nacl, diamond):
    cif = nacl.to(fmt="cif")
    shifted = nacl.copy()
    shifted.translate_sites(list(range(len(shifted))), [0.1, 0.0, 0.0])  # same crystal, other origin
    scores = pd.DataFrame({"id": ["r0-p1-00", "r0-p0-01", "r0-p0-00"], "valid": [True, True, True],
                           "relaxed_cif": [diamond.to(fmt="cif"), shifted.to(fmt="cif"), cif],
                           "eligible": [True, True, True]})
    out = mark_duplicates(scores).set_index("id")
    assert out.loc["r0-p0-00", "unique"] and out.loc["r0-p0-00", "eligible"]
    assert out.loc["r0-p0-01", "duplicate_of"] == "r0-p0-00" and not out.loc["r0-p0-01", "eligible"]
    assert out.loc["r0-p1-00", "unique"]


def test_earlier_winners_cannot_win_again(tmp_path, nacl, diamond, perovskite):
    # round 0 of a run folder: NaCl won a pair, the perovskite only lost one
    r0 = tmp_path / "round_00"
    r0.mkdir()
    pd.DataFrame({"id": ["r00-p0-00", "r00-p0-01"], "valid": [True, True],
                  "relaxed_cif": [nacl.to(fmt="cif"), perovskite.to(fmt="cif")]}).to_parquet(r0 / "scores.parquet")
    pd.DataFrame({"prompt": ["p0"], "chosen": ["r00-p0-00"], "rejected": ["r00-p0-01"]}).to_parquet(
        r0 / "pairs.parquet")
    earlier = earlier_winners(tmp_path, 1)
    assert earlier["id"].tolist() == ["r00-p0-00"] and earlier_winners(tmp_path, 0).empty
    shifted = nacl.copy()
    shifted.translate_sites(list(range(len(shifted))), [0.1, 0.0, 0.0])  # the same crystal again
    scores = pd.DataFrame({"id": ["r01-p0-00", "r01-p0-01", "r01-p1-00"], "valid": [True, True, True],
                           "relaxed_cif": [shifted.to(fmt="cif"), diamond.to(fmt="cif"),
                                           perovskite.to(fmt="cif")],
                           "eligible": [True, True, True]})
    out = mark_duplicates(scores, earlier).set_index("id")
    assert out.loc["r01-p0-00", "repeat_of"] == "r00-p0-00" and not out.loc["r01-p0-00", "eligible"]
    assert out.loc["r01-p0-00", "unique"]  # unique within its round: the repeat is a separate verdict
    assert out.loc["r01-p0-01", "eligible"] and out.loc["r01-p0-01", "repeat_of"] is None
    assert out.loc["r01-p1-00", "eligible"]  # the perovskite lost in round 0: it may win now
    alone = mark_duplicates(scores).set_index("id")  # without the history every sample may win
    assert alone["eligible"].all() and alone["repeat_of"].isna().all()


def test_a_full_structure_family_cannot_win(nacl, diamond):
    from pymatgen.core import Lattice, Structure

    def rock_salt(a, b, x):
        return Structure.from_spacegroup("Fm-3m", Lattice.cubic(x), [a, b], [[0, 0, 0], [0.5, 0.5, 0.5]])

    # two rock salts already won in earlier rounds: family "AB 225" holds 2 winners (the floor)
    earlier = pd.DataFrame({"id": ["r00-p0-00", "r00-p1-00"],
                            "relaxed_cif": [nacl.to(fmt="cif"), rock_salt("Mg", "O", 4.21).to(fmt="cif")]})
    samples = pd.DataFrame({"id": ["r01-p0-00", "r01-p0-01", "r01-p1-00"], "prompt": ["p0", "p0", "p1"]})
    scores = pd.DataFrame({"id": samples["id"], "valid": True, "reward": [-0.01, -0.20, -0.30],
                           "relaxed_cif": [rock_salt("Li", "F", 4.03).to(fmt="cif"), diamond.to(fmt="cif"),
                                           rock_salt("K", "Cl", 6.29).to(fmt="cif")],
                           "eligible": True})
    out = cap_families(samples, scores, earlier, share=0.05).set_index("id")
    assert out["prototype"].tolist() == ["AB 225", "A 227", "AB 225"]
    # LiF would win p0 but its family is full: diamond wins p0; KCl (p1) is capped too
    assert out["family_capped"].tolist() == [True, False, True]
    assert out["eligible"].tolist() == [False, True, False]
    pairs = build_pairs(samples, out.reset_index(), margin=0.05, per_prompt=3)
    assert pairs[["chosen", "rejected"]].values.tolist() == [["r01-p0-01", "r01-p0-00"]]
    # share 0.9: LiF would make 3 rock salts of 3 winners (> 2.7) and is capped; after diamond won p0,
    # KCl makes 3 of 4 (<= 3.6) and may win p1
    wide = cap_families(samples, scores, earlier, share=0.9).set_index("id")
    assert wide["family_capped"].tolist() == [True, False, False]
    # off: nothing capped, prototypes still recorded; without history the floor lets both win
    assert not cap_families(samples, scores, earlier, share=0.0)["family_capped"].any()
    assert not cap_families(samples, scores, None, share=0.05)["family_capped"].any()


def test_prompts_are_seeded_and_mixed():
    cfg = AlignConfig(out_dir="x", prompts=10, conditional=0.4, seed=3)
    a = round_prompts(cfg, 0, ["NaCl", "SrTiO3", "C"])
    assert a == round_prompts(cfg, 0, ["NaCl", "SrTiO3", "C"])
    assert a != round_prompts(cfg, 1, ["NaCl", "SrTiO3", "C"])
    assert sum(bool(p["target_formula"]) for p in a) == 4
    assert {p["target_formula"] for p in a} - {""} <= {"NaCl", "SrTiO3", "C"}


def test_bad_settings_are_refused():
    with pytest.raises(ValueError, match="samples_per_prompt"):
        AlignConfig(out_dir="x", samples_per_prompt=1)
    with pytest.raises(ValueError, match="conditional"):
        AlignConfig(out_dir="x", conditional=1.5)
    with pytest.raises(ValueError, match="score_workers"):
        AlignConfig(out_dir="x", score_workers=-1)
    res = CliRunner().invoke(__import__("llamat_cif.cli", fromlist=["main"]).main,
                             ["align", "--out", "x", "--samples-per-prompt", "1"])
    assert res.exit_code == 1 and "samples_per_prompt must be >= 2" in res.output


@requires_data
def test_stability_reward_on_known_structures(nacl):
    from pymatgen.core import Lattice, Structure

    from llamat_cif.data import load_split

    train = load_split("mp20", "train", limit=50)
    known = Structure.from_str(train["cif"].iloc[0], fmt="cif")
    training = TrainingSet.from_structures([known], name="first MP-20 train structure")
    cfg = AlignConfig(out_dir="x", relax_steps=5)
    reward = StabilityReward(cfg, training)
    prim = nacl.get_primitive_structure()
    squeezed = Structure(prim.lattice, ["Na", "Cl"], [[0, 0, 0], [0, 0, 0]], coords_are_cartesian=True)
    squeezed.translate_sites([1], [1.0 / np.sqrt(3)] * 3, frac_coords=False)  # Na-Cl 1.0 Å apart
    assert squeezed.get_distance(0, 1) == pytest.approx(1.0, abs=1e-6)
    good = reward.score_one("nacl", prim.to(fmt="cif"))
    bad = reward.score_one("squeezed", squeezed.to(fmt="cif"))
    assert good["valid"] and bad["valid"] and good["relaxed"] and bad["relaxed"]
    # rock salt near the hull; the squeezed cell, after the same 5 FIRE steps, well above: it loses a pair
    assert good["reward"] > bad["reward"] + cfg.pair_margin and bad["e_hull"] > 0.1
    assert good["e_hull"] < 0.1 and good["novel"] and good["eligible"]
    seen = reward.score_one("known", known.to(fmt="cif"))
    assert seen["relaxed"] and not seen["novel"] and not seen["eligible"]
    garbage = reward.score_one("garbage", "data_x\n_cell_length_a 3\n")
    assert garbage["reward"] == cfg.invalid_reward and not garbage["eligible"]
    lattice_only = Structure(Lattice.cubic(3.0), ["Na"], [[0, 0, 0]])
    assert reward.score_one("na", lattice_only.to(fmt="cif"))["reward"] > cfg.invalid_reward


def _short_tokens_win(samples: pd.DataFrame) -> pd.DataFrame:
    """A cheap deterministic reward: shorter documents are better, every sample may win."""
    from pymatgen.core import Structure

    n = samples["token_ids"].map(len).to_numpy(dtype=float)
    els = [sorted(e.symbol for e in Structure.from_str(c, fmt="cif").composition.elements) if c else []
           for c in samples["cif"]]
    return pd.DataFrame({"id": samples["id"], "reward": -n / 100.0, "eligible": True, "valid": True,
                         "elements": [" ".join(e) for e in els], "n_elements": [len(e) for e in els]})


@pytest.fixture(scope="module")
def training(nacl, perovskite):
    return TrainingSet.from_structures([nacl, perovskite], name="two structures")


def test_two_rounds_raise_the_preferred_continuation_and_resume(tmp_path, training):
    cfg = AlignConfig(out_dir=str(tmp_path / "run"), rounds=2, prompts=2, samples_per_prompt=2,
                      conditional=0.5, pair_margin=0.0, pairs_per_prompt=1, lr=1e-4, epochs=3, batch_size=2)
    records = run_align(cfg, scorer=_short_tokens_win, training=training, progress=False)
    assert [r["round"] for r in records] == [0, 1] and all(r["pairs"] >= 1 for r in records)
    # rounds sample with generate's defaults: the model's T/top-p, physics, anion steering, redraws
    sampling = records[0]["sampling"]
    assert (sampling["temperature"], sampling["top_p"]) == (0.7, 0.9)
    assert sampling["steer_anion_distance"] == "auto" and sampling["dead_end_redraws"] == 2
    assert sampling["min_contact_ratio"] > 0.5 and sampling["volume_window"] not in ("off", "auto")
    run = tmp_path / "run"
    samples = RunStore(run / "round_00" / "samples.parquet", append=False).read()
    assert len(samples) == 4 and samples["id"].is_unique
    assert samples["target_formula"].isin(["", "NaCl", "SrTiO3"]).all()
    pairs = pd.read_parquet(run / "round_00" / "pairs.parquet")
    ids = dict(zip(samples["id"], samples["token_ids"], strict=True))
    before, tok = load_generator(resolve_model_path("default"), dtype="fp32")
    after, _ = load_generator(run / "round_00" / "model")

    def margin(model):
        ch = sequence_logps(model, [ids[c] for c in pairs["chosen"]], tok.bos_token_id)
        rj = sequence_logps(model, [ids[r] for r in pairs["rejected"]], tok.bos_token_id)
        return float(np.mean(ch - rj))

    assert margin(after) > margin(before) + 1.0  # the preferred continuation gained probability
    assert (run / "curves.png").stat().st_size > 10_000 and (run / "elements.png").is_file()
    assert len((run / "rounds.jsonl").read_text().splitlines()) == 2
    assert records[0]["w_n_el"] >= 0 and records[0]["distinct_elements"] >= 1
    assert (run / "final" / "model.safetensors").is_file()
    # an interrupted update resumes from the parts on disk: nothing is sampled or scored again
    stamp = {p: p.stat().st_mtime_ns for p in (run / "round_01").rglob("*.parquet")
             if p.parent.name in ("samples.parts", "scores.parts")}
    assert len(stamp) >= 2
    (run / "round_01" / "record.json").unlink()
    again = run_align(cfg, scorer=_short_tokens_win, training=training, progress=False)
    assert [r["round"] for r in again] == [0, 1]
    assert {p: p.stat().st_mtime_ns for p in stamp} == stamp
    assert again[1]["reward_mean"] == records[1]["reward_mean"]
    # scored again by a worker process while the samples (kept) are read back: the same scores
    kept = pd.read_parquet(run / "round_01" / "scores.parquet")
    shutil.rmtree(run / "round_01" / "scores.parts")
    (run / "round_01" / "record.json").unlink()
    pooled = run_align(AlignConfig(**{**asdict(cfg), "score_workers": 1}), scorer=_short_tokens_win,
                       training=training, progress=False)
    assert pooled[1]["reward_mean"] == records[1]["reward_mean"]
    pd.testing.assert_frame_equal(pd.read_parquet(run / "round_01" / "scores.parquet"), kept)
    # rounds read back from record.json plot like fresh ones (quantile keys are strings in both)
    assert set(again[0]["reward_quantiles"]) == set(records[1]["reward_quantiles"]) == {"10", "25", "50", "75", "90"}
    with pytest.raises(ValueError, match="other settings"):
        run_align(AlignConfig(**{**json.loads((run / "align_config.json").read_text()), "beta": 0.5}),
                  scorer=_short_tokens_win, training=training, progress=False)
    # a run folder written before the cross-round and family rules existed resumes with them off
    legacy = json.loads((run / "align_config.json").read_text())
    for key in ("cross_round_unique", "family_share"):
        legacy.pop(key)
    (run / "align_config.json").write_text(json.dumps(legacy))
    with pytest.raises(ValueError, match="family_share"):
        run_align(cfg, scorer=_short_tokens_win, training=training, progress=False)
    old = AlignConfig(**{**asdict(cfg), "cross_round_unique": False, "family_share": 0.0})
    assert [r["round"] for r in run_align(old, scorer=_short_tokens_win, training=training, progress=False)] == [0, 1]
    # a run extended with larger rounds: each round's record keeps its own prompt count
    grown = run_align(AlignConfig(**{**asdict(old), "rounds": 3, "prompts": 3}), scorer=_short_tokens_win,
                      training=training, progress=False)
    assert [r["prompts"] for r in grown] == [2, 2, 3] and [r["samples"] for r in grown] == [4, 4, 6]
    # a branch keeps round 0, reuses round 1's samples and scores, and redoes its pairs and update
    # under another beta: the same samples, its own model
    from llamat_cif.train.align import branch_run

    branch = AlignConfig(**{**asdict(old), "out_dir": str(tmp_path / "branch"), "beta": 0.5})
    with pytest.raises(ValueError, match="cannot be reused"):  # round 1 had 2 prompts, not 3
        branch_run(run, AlignConfig(**{**asdict(branch), "prompts": 3}), 1, reuse_samples=True)
    branch_run(run, branch, 1, reuse_samples=True)
    branched = run_align(branch, scorer=_short_tokens_win, training=training, progress=False)
    assert [r["round"] for r in branched] == [0, 1] and branched[0] == grown[0]
    pd.testing.assert_frame_equal(RunStore(tmp_path / "branch" / "round_01" / "samples.parquet", append=False).read(),
                                  RunStore(run / "round_01" / "samples.parquet", append=False).read())
    assert json.loads((tmp_path / "branch" / "branched_from.json").read_text())["rounds_kept"] == 1
    assert json.loads((tmp_path / "branch" / "align_config.json").read_text())["beta"] == 0.5
    branch_run(run, branch, 1, reuse_samples=True)  # the same branch again: left as it is (resume)
    # the source extended after the branch (more rounds, larger ones): still the same branch
    src_cfg = json.loads((run / "align_config.json").read_text())
    (run / "align_config.json").write_text(json.dumps({**src_cfg, "rounds": 5, "prompts": 4}))
    branch_run(run, branch, 1, reuse_samples=True)
    (run / "align_config.json").write_text(json.dumps({**src_cfg, "beta": 0.3}))  # other settings: another run
    with pytest.raises(ValueError, match="another run or round"):
        branch_run(run, branch, 1, reuse_samples=True)
    (run / "align_config.json").write_text(json.dumps(src_cfg))
    with pytest.raises(ValueError, match="another run or round"):
        branch_run(run, branch, 2)


def test_lora_adapter_alignment_saves_and_reloads(tmp_path, training):
    cfg = AlignConfig(out_dir=str(tmp_path / "lora"), rounds=1, prompts=1, samples_per_prompt=2,
                      conditional=0.0, pair_margin=0.0, lr=1e-3, epochs=2, lora=True)
    run_align(cfg, scorer=_short_tokens_win, training=training, progress=False)
    adapter = tmp_path / "lora" / "round_00" / "model"
    assert (adapter / "adapter_config.json").is_file() and not (adapter / "model.safetensors").exists()
    model, tok = load_generator(adapter)
    assert hasattr(model, "peft_config")
    base, _ = load_generator("default", dtype="fp32")
    x = torch.tensor([[tok.bos_token_id, *tok("data_", add_special_tokens=False)["input_ids"]]])
    with torch.no_grad():
        assert not torch.allclose(model(input_ids=x).logits, base(input_ids=x).logits)
    # a second round continues from the saved adapter (reloaded trainable) and saves an adapter again
    records = run_align(AlignConfig(**{**cfg.__dict__, "rounds": 2}), scorer=_short_tokens_win,
                        training=training, progress=False)
    assert [r["round"] for r in records] == [0, 1]
    assert (tmp_path / "lora" / "final" / "adapter_config.json").is_file()
    reloaded, _ = load_generator(tmp_path / "lora" / "final")
    with torch.no_grad():
        assert not torch.allclose(reloaded(input_ids=x).logits, model(input_ids=x).logits)
