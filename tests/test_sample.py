"""Sampler with the shipped model: constrained decoding, conditions, interrupt + resume, shards."""

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pytest
from pymatgen.core import Composition, Structure

from llamat_cif.cif import strip_header
from llamat_cif.runs import RunStore
from llamat_cif.sampling import SampleConfig, generate, generate_structures
from llamat_cif.sampling.config import parse_formula, parse_shard
from llamat_cif.sampling.rows import read_samples, samples_file

MGO = dict(n=4, batch_size=2, seed=5, formula="MgO")


@pytest.fixture(scope="module")
def mgo_reference(tmp_path_factory):
    """An uninterrupted single-process run: 4 MgO samples in two batches."""
    out = tmp_path_factory.mktemp("ref")
    generate(SampleConfig(out_dir=str(out), **MGO), progress=False)
    return _rows(out)


def _rows(out):
    """The run's rows as they stand (committed table and parts), by the one reader."""
    if samples_file(out) is None:
        return pd.DataFrame(columns=["id", "text"])
    return read_samples(out)


def _parts(out):
    return RunStore(out / "samples.parquet").part_paths()


def test_formula_and_spacegroup_conditions_are_met(tmp_path):
    df = generate(SampleConfig(n=2, out_dir=str(tmp_path), formula="NaCl", spacegroup=225, batch_size=2, seed=3),
                  progress=False)
    assert len(df) == 2
    parsed = 0
    for r in df.itertuples():
        header, _ = strip_header(r.text)
        # forced by the grammar: the requested conditions, the matching symbol and formula sum
        assert header["spacegroup"] == "225"
        assert Composition(header["formula"]).reduced_formula == "NaCl"
        assert "_symmetry_space_group_name_H-M Fm-3m" in r.text
        assert f"_chemical_formula_sum '{header['formula']}'" in r.text
        assert r.cif, r.error  # constrained decoding: every sample decodes, with the requested composition
        parsed += 1
        assert Structure.from_str(r.cif, fmt="cif").composition.reduced_formula == "NaCl"
        assert (tmp_path / "cifs" / f"{r.id}.cif").is_file()
    assert parsed == 2


def test_constrained_text_follows_the_grammar(tmp_path):
    df = generate(SampleConfig(n=2, out_dir=str(tmp_path), batch_size=2, seed=0), progress=False)
    for r in df.itertuples():
        lines = r.text.splitlines()
        assert lines[0].startswith("# ") and lines[1].startswith("# ") and lines[2].startswith("data_")
        assert r.n_tokens > 50
        assert r.cif and not r.error, r.error
        s = Structure.from_str(r.cif, fmt="cif")
        if len(s) > 1:
            assert (s.distance_matrix + 9 * np.eye(len(s))).min() >= 0.5 - 1e-3


def test_interrupted_run_resumes_to_exactly_n(tmp_path, mgo_reference):
    out = tmp_path / "run"
    code = ("from llamat_cif.sampling import SampleConfig, generate;"
            f"generate(SampleConfig(n=4, out_dir={str(out)!r}, batch_size=2, seed=5, formula='MgO'), progress=False)")
    p = subprocess.Popen([sys.executable, "-c", code], env={**os.environ, "HF_HUB_OFFLINE": "1"})
    deadline = time.time() + 240
    while time.time() < deadline and p.poll() is None:
        if _parts(out):  # the first batch is written
            break
        time.sleep(0.5)
    if p.poll() is None:
        p.send_signal(signal.SIGKILL)  # hard interrupt after the first batch
    p.wait()
    assert len(_rows(out)) in (2, 4)
    generate(SampleConfig(n=4, out_dir=str(out), batch_size=2, seed=5, formula="MgO"), progress=False)
    assert (out / "samples.parquet").is_file() and not _parts(out)  # committed: the parts are gone
    pd.testing.assert_frame_equal(read_samples(out), mgo_reference)  # the rows of the uninterrupted run


def test_a_lost_last_part_is_drawn_again_and_nothing_else(tmp_path, mgo_reference):
    """A kill loses at most the batch in flight: with the last part gone, the rerun draws that
    batch alone and ends with exactly the rows of an uninterrupted run, no id twice."""
    import json

    generate(SampleConfig(out_dir=str(tmp_path), shard=(0, 1), **MGO), progress=False)  # parts, no commit
    parts = _parts(tmp_path)
    assert [p.name for p in parts] == ["part-000000.parquet", "part-000001.parquet"]
    assert not (tmp_path / "samples.parquet").exists()
    parts[-1].unlink()
    df = generate(SampleConfig(out_dir=str(tmp_path), **MGO), progress=False)
    summary = json.loads((tmp_path / "sample_summary.json").read_text())
    assert summary["this_session"]["new_rows"] == 2 and summary["attempted"] == 4
    pd.testing.assert_frame_equal(df, mgo_reference)
    assert df["id"].is_unique and pd.read_parquet(tmp_path / "samples.parquet")["id"].is_unique


def test_a_longer_rerun_extends_a_finished_run(tmp_path, mgo_reference):
    """n=2 then n=4 on one folder: the committed batch is kept, only batch 1 is drawn, and the table
    equals the uninterrupted n=4 run; a shorter rerun (n=3) keeps no row of the longer one
    (batch 1 is drawn again at its new size), and n=4 again restores the reference rows."""
    import json

    small = {**MGO, "n": 2}
    generate(SampleConfig(out_dir=str(tmp_path), **small), progress=False)
    df = generate(SampleConfig(out_dir=str(tmp_path), **MGO), progress=False)
    assert json.loads((tmp_path / "sample_summary.json").read_text())["this_session"]["new_rows"] == 2
    pd.testing.assert_frame_equal(df, mgo_reference)
    three = generate(SampleConfig(out_dir=str(tmp_path), **{**MGO, "n": 3}), progress=False)
    assert list(three["id"]) == ["s000000", "s000001", "s000002"]
    assert list(three["text"][:2]) == list(mgo_reference["text"][:2])
    assert list(read_samples(tmp_path)["id"]) == ["s000000", "s000001", "s000002"]
    pd.testing.assert_frame_equal(generate(SampleConfig(out_dir=str(tmp_path), **MGO), progress=False),
                                  mgo_reference)


def test_an_older_csv_run_cut_off_mid_batch_is_continued(tmp_path, mgo_reference):
    """A run from before the run store (samples.csv), killed while batch 1 was being written, keeps
    its whole batch 0 and continues into samples.parquet: no duplicate, no loss."""
    import json

    mgo_reference.iloc[:3].to_csv(tmp_path / "samples.csv", index=False)
    df = generate(SampleConfig(out_dir=str(tmp_path), **MGO), progress=False)
    assert json.loads((tmp_path / "sample_summary.json").read_text())["this_session"]["new_rows"] == 2
    pd.testing.assert_frame_equal(df, mgo_reference)
    pd.testing.assert_frame_equal(read_samples(tmp_path), mgo_reference)  # the parquet wins over the CSV


@pytest.mark.parametrize("cut", ["in_text", "in_last_field", "field_boundary", "header"])
def test_torn_file_resumes_to_the_uninterrupted_rows(tmp_path, mgo_reference, cut):
    """A crash or a full disk could cut an older run's samples.csv anywhere; continuing it ignores
    the torn tail, draws what is missing and ends with exactly the rows of an uninterrupted run."""
    (tmp_path / "ref").mkdir()
    mgo_reference.to_csv(tmp_path / "ref" / "full.csv", index=False)
    raw = (tmp_path / "ref" / "full.csv").read_bytes()
    last = raw.rstrip(b"\n").rfind(b"\ns000003,")  # start of the last row
    offset = {"in_text": last + 40, "in_last_field": len(raw.rstrip(b"\n")) - 2,
              "field_boundary": len(raw.rstrip(b"\n")) - len(b"True"), "header": 7}[cut]
    (tmp_path / "samples.csv").write_bytes(raw[:offset])
    df = generate(SampleConfig(out_dir=str(tmp_path), **MGO), progress=False)
    assert list(df["id"]) == ["s000000", "s000001", "s000002", "s000003"]
    assert list(df["text"]) == list(mgo_reference["text"])
    assert list(df["constrained"]) == [True] * 4


def test_shards_merge_into_the_single_process_run(tmp_path, mgo_reference):
    import json

    for i in (1, 0):  # any order
        part = generate(SampleConfig(out_dir=str(tmp_path), shard=(i, 2), **MGO), progress=False)
        assert set(part["batch"]) == {i}
        pd.testing.assert_frame_equal(part, mgo_reference[mgo_reference["batch"] == i].reset_index(drop=True))
    assert [p.name for p in _parts(tmp_path)] == ["part-000000.parquet", "part-000001.parquet"]
    assert not (tmp_path / "samples.parquet").exists()  # shards commit nothing
    pd.testing.assert_frame_equal(read_samples(tmp_path), mgo_reference)  # the parts side by side: the whole table
    df = generate(SampleConfig(out_dir=str(tmp_path), **MGO), progress=False)
    summary = json.loads((tmp_path / "sample_summary.json").read_text())
    assert summary["this_session"]["new_rows"] == 0  # everything came from the shards
    assert set(summary["shards"]) == {"shard0of2", "shard1of2"}
    pd.testing.assert_frame_equal(df, mgo_reference)
    pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "samples.parquet"), mgo_reference)
    assert not _parts(tmp_path)


def test_an_older_runs_shard_files_are_merged(tmp_path, mgo_reference):
    """Shards written before the run store (samples.shardIofK.csv) are merged by the run without a
    shard, as before, into samples.parquet."""
    import json

    for i in (0, 1):
        mgo_reference[mgo_reference["batch"] == i].to_csv(tmp_path / f"samples.shard{i}of2.csv", index=False)
    df = generate(SampleConfig(out_dir=str(tmp_path), **MGO), progress=False)
    assert json.loads((tmp_path / "sample_summary.json").read_text())["this_session"]["new_rows"] == 0
    pd.testing.assert_frame_equal(df, mgo_reference)


def test_one_reader_for_csv_and_parquet_runs(tmp_path):
    """read_samples gives the same table from an older run's samples.csv (as generate wrote it, CIF
    text with newlines, commas and quotes inside CSV), from samples.parquet (committed or still in
    parts), from a recorded parquet with string columns, and from either run folder."""
    import csv

    from llamat_cif.sampling.rows import SAMPLE_COLUMNS, frame, sample_store

    cif = 'data_NaCl\n_chemical_formula_sum \'Na4 Cl4\'\n_cell_length_a 5.6, "x"\n'
    rows = [{"id": f"s{i:06d}", "text": "# formula: Na4 Cl4\n" + cif, "fmt": "cif", "cif": cif if i != 1 else "",
             "error": "" if i != 1 else "no end of structure within 1000 tokens", "target_formula": "NaCl" if i else "",
             "target_spacegroup": 225 if i == 2 else "", "seed": 0, "batch": i // 2, "n_tokens": 120 + i,
             "constrained": True} for i in range(3)]
    old, new, parts = tmp_path / "old", tmp_path / "new", tmp_path / "parts"
    old.mkdir()
    with open(old / "samples.csv", "w", newline="") as fh:  # what generate wrote before the run store
        writer = csv.DictWriter(fh, fieldnames=SAMPLE_COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    cfg = SampleConfig(n=3, out_dir=str(new), batch_size=2)
    for folder, commit in ((new, True), (parts, False)):
        store = sample_store(folder, cfg)
        store.write_part(frame(rows[2:]), k=1)  # any order: the table is ordered by batch
        store.write_part(frame(rows[:2]), k=0)
        if commit:
            store.commit()
    expected = frame(rows)
    assert list(expected["target_spacegroup"]) == ["", "", "225"] and expected["n_tokens"].dtype == "int64"
    recorded = tmp_path / "recorded.parquet"
    expected.astype(str).to_parquet(recorded)  # a recorded run kept as string columns
    for source in (old, old / "samples.csv", new, new / "samples.parquet", parts, parts / "samples.parquet",
                   recorded):
        pd.testing.assert_frame_equal(read_samples(source), expected, obj=str(source))
    assert samples_file(old) == old / "samples.csv" and samples_file(parts) == parts / "samples.parquet"
    with pytest.raises(FileNotFoundError, match="no samples.parquet or samples.csv"):
        read_samples(tmp_path / "parts" / "..")  # tmp_path itself: not a run folder


def test_bad_shard_is_a_clear_error():
    assert parse_shard("1/3") == (1, 3) and parse_shard(None) is None
    for bad in ("3/3", "a/2", "2", "-1/2"):
        with pytest.raises(ValueError, match="shard"):
            parse_shard(bad)


def test_resume_with_other_settings_is_refused(tmp_path):
    generate(SampleConfig(n=1, out_dir=str(tmp_path), batch_size=1, seed=0, formula="Si"), progress=False)
    with pytest.raises(ValueError, match="other settings"):
        generate(SampleConfig(n=2, out_dir=str(tmp_path), batch_size=1, seed=1, formula="Si"), progress=False)


def test_bad_formula_is_a_clear_error():
    with pytest.raises(ValueError, match="formula"):
        parse_formula("Xq2")


def test_sampling_settings_default_to_the_models_recommendation(tmp_path):
    """Unset temperature / top-p take the shipped model's generation_config.json (0.7 / 0.9, the
    setting its validity is measured at); explicit values win; both are recorded for resume."""
    import json

    from llamat_cif.model import resolve_model_path

    rec = json.loads((resolve_model_path("default") / "generation_config.json").read_text())
    assert (rec["temperature"], rec["top_p"]) == (0.7, 0.9)
    generate(SampleConfig(n=1, out_dir=str(tmp_path / "a"), batch_size=1, seed=0, formula="Si"), progress=False)
    saved = json.loads((tmp_path / "a" / "sample_config.json").read_text())
    assert (saved["temperature"], saved["top_p"]) == (0.7, 0.9)
    generate(SampleConfig(n=1, out_dir=str(tmp_path / "b"), batch_size=1, seed=0, formula="Si", temperature=1.0),
             progress=False)
    saved = json.loads((tmp_path / "b" / "sample_config.json").read_text())
    assert (saved["temperature"], saved["top_p"]) == (1.0, 0.9)
    # a run recorded at 0.7 is not resumed under another explicit temperature
    with pytest.raises(ValueError, match="other settings"):
        generate(SampleConfig(n=2, out_dir=str(tmp_path / "a"), batch_size=1, seed=0, formula="Si", temperature=0.9),
                 progress=False)


def test_recommended_sampling_falls_back_to_one():
    from types import SimpleNamespace

    from llamat_cif.sampling.config import recommended_sampling

    assert recommended_sampling(SimpleNamespace()) == (1.0, 1.0)
    gc = SimpleNamespace(temperature=None, top_p=0.9)
    assert recommended_sampling(SimpleNamespace(generation_config=gc)) == (1.0, 0.9)


def test_model_format_is_read_from_the_training_run(tmp_path):
    """A model trained on the LLaMat text is sampled as LLaMat text: the representation comes from
    train_config.json in the model folder, or in the run folder above final/ (older runs)."""
    import json

    from llamat_cif.model import resolve_model_path
    from llamat_cif.sampling.config import model_format

    assert model_format(resolve_model_path("default")) == "cif"
    run = tmp_path / "run"
    (run / "final").mkdir(parents=True)
    (run / "train_config.json").write_text(json.dumps({"data": {"corpus_stats": {"format": "llamat"}}}))
    assert model_format(run / "final") == "llamat"
    (tmp_path / "elsewhere").mkdir()
    assert model_format(tmp_path / "elsewhere") == "cif"


def test_physical_decoding_is_on_by_default_and_recorded(tmp_path):
    """The shipped defaults hold every pair to the calibrated covalent contact ratio and the cell
    to the volume window; both (and the steering margin) are resolved into sample_config.json,
    and a run drawn with them is not resumed with the rules off."""
    import json

    from llamat_cif.physics import (
        SHORT_CONTACT_RATIO,
        contact_ratio_default,
        min_contact_ratio,
        steer_ratio_default,
        volume_ratio,
        volume_window_default,
    )

    df = generate(SampleConfig(n=4, out_dir=str(tmp_path / "p"), batch_size=4, seed=0), progress=False)
    saved = json.loads((tmp_path / "p" / "sample_config.json").read_text())
    lo, hi = volume_window_default()
    assert saved["min_contact_ratio"] == contact_ratio_default()
    assert saved["steer_contact_ratio"] == steer_ratio_default()
    assert saved["steer_contact_floor"] == SHORT_CONTACT_RATIO  # the second tier: the benchmark's threshold
    assert saved["volume_window"] == f"{lo:g},{hi:g}"
    for r in df.itertuples():
        assert r.cif and not r.error, r.error
        s = Structure.from_str(r.cif, fmt="cif")
        assert min_contact_ratio(s) >= contact_ratio_default() - 2e-3, r.text
        assert lo - 1e-3 <= volume_ratio(s) <= hi + 1e-3, r.text
    summary = json.loads((tmp_path / "p" / "sample_summary.json").read_text())["this_session"]
    assert summary["constraint_fallbacks"] == 0
    with pytest.raises(ValueError, match="other settings"):
        generate(SampleConfig(n=8, out_dir=str(tmp_path / "p"), batch_size=4, seed=0, min_contact_ratio=0,
                              volume_window="off"), progress=False)
    with pytest.raises(ValueError, match="volume window"):
        generate(SampleConfig(n=1, out_dir=str(tmp_path / "q"), volume_window="2,1"), progress=False)


@pytest.mark.parametrize("cmd, message", [
    (["generate", "-n", "2", "--batch-size", "0"], "batch size must be >= 1"),
    (["generate", "-n", "2", "--batch-size", "-1"], "batch size must be >= 1"),
    (["generate", "-n", "2", "--threads", "-1"], "threads must be >= 1"),
    (["generate", "-n", "2", "--device", "tpu9"], "device must be cpu, cuda"),
    (["generate", "-n", "2", "--temperature", "-1"], "temperature must be >= 0"),
    (["generate", "-n", "2", "--top-p", "2"], "top-p must be in (0, 1]"),
    (["generate", "-n", "2", "--top-p", "0"], "top-p must be in (0, 1]"),
    (["generate", "-n", "2", "--min-distance", "-1"], "min distance must be >= 0"),
    (["generate", "-n", "2", "--formula", ""], "formula is empty"),
    (["screen", "-n", "0"], "n must be >= 1"),
    (["screen", "-n", "2", "--model", "/nonexistent/model"], "/nonexistent/model"),
    (["screen", "-n", "2", "--potential", "nonsense"], "unknown potential 'nonsense'"),
])
def test_bad_arguments_fail_fast_without_claiming_the_folder(tmp_path, cmd, message):
    """Issue 17 item 13: a one-line error and a non-zero exit before any work, and no run folder
    left behind that would refuse the corrected rerun."""
    from click.testing import CliRunner

    from llamat_cif.cli import main

    out = tmp_path / "run"
    t0 = time.time()
    res = CliRunner().invoke(main, [*cmd, "--out", str(out)])
    assert res.exit_code == 1, res.output
    assert "error:" in res.output and message in " ".join(res.output.split())
    assert "Traceback" not in res.output
    assert not (out / "sample_config.json").exists() and not (out / "screen_config.json").exists()
    assert time.time() - t0 < 20  # refused before loading a model or drawing a sample


def test_generate_structures_returns_the_runs_crystals(tmp_path):
    """The library entry point gives Structures, one per row, equal to the run's written CIFs."""
    cfg = SampleConfig(n=3, out_dir=str(tmp_path), batch_size=3, seed=0)
    structures = generate_structures(cfg, progress=False)
    rows = read_samples(tmp_path)
    assert len(structures) == len(rows) == 3
    for s, cif in zip(structures, rows["cif"], strict=True):
        assert isinstance(s, Structure) and cif
        assert s.composition == Structure.from_str(cif, fmt="cif").composition
    assert generate_structures(cfg, progress=False)[0].matches(structures[0])  # resumed: same rows


def test_a_dead_end_document_is_drawn_again_and_the_others_are_kept(tmp_path):
    """A document whose grammar reports a fallback is redrawn with a derived seed; the rest of the
    batch keeps its first draw token for token, and the counts say what happened."""
    from llamat_cif.sampling.engine import Stats
    from llamat_cif.sampling.fields import Conditions
    from llamat_cif.sampling.grammars import cif_grammar
    from llamat_cif.sampling.sample import BatchSampler, draw_batch

    bs = BatchSampler(SampleConfig(n=3, out_dir=str(tmp_path), batch_size=3, seed=0, temperature=0.7, top_p=0.9))
    conds = [Conditions(**{**bs.cond.__dict__}) for _ in range(3)]
    dead_end = {"left": 0}

    def grammar(v, c, stats):
        if c is conds[1] and dead_end["left"] > 0:  # this row's draws meet a dead end, as many as asked
            dead_end["left"] -= 1
            stats.fallbacks += 1
        yield from cif_grammar(v, c, stats)

    def draw(redraws, n_dead):
        dead_end["left"] = n_dead
        stats = Stats()
        ids = draw_batch(bs.model, bs.tokenizer, size=3, seed=(0, 0), conditions=conds, grammar=grammar,
                         vocab=bs.vocab, stats=stats, temperature=0.7, top_p=0.9, redraws=redraws)
        pad = bs.tokenizer.pad_token_id
        return [[t for t in row.tolist() if t != pad] for row in ids], stats

    first, s0 = draw(0, 1)
    assert (s0.fallbacks, s0.redrawn, s0.dead_ends_kept) == (1, 0, 1)
    again, s1 = draw(2, 1)  # row 1: dead end on its first draw only
    assert (s1.fallbacks, s1.redrawn, s1.dead_ends_kept) == (1, 1, 0)
    assert again[0] == first[0] and again[2] == first[2]
    assert again[1] != first[1] and again[1][-1] == bs.tokenizer.eos_token_id
    stubborn, s2 = draw(2, 5)  # a dead end on every draw: two redraws, then the last draw is kept
    assert (s2.fallbacks, s2.redrawn, s2.dead_ends_kept) == (3, 2, 1)
    assert stubborn[0] == first[0] and stubborn[2] == first[2]


def test_a_document_below_the_contact_floor_is_drawn_again(tmp_path):
    """A finished crystal with a pair below the floor is redrawn with the dead-end seed rule: at a
    floor no crystal keeps (1.3 x the covalent sum) every row is replaced by the derived seed's draw
    and counted; at a floor every crystal keeps, nothing changes."""
    from llamat_cif.physics import min_contact_ratio
    from llamat_cif.sampling.engine import Stats
    from llamat_cif.sampling.sample import BatchSampler, decode_sample, draw_batch

    bs = BatchSampler(SampleConfig(n=3, out_dir=str(tmp_path), batch_size=3, seed=0, temperature=0.7, top_p=0.9))
    pad = bs.tokenizer.pad_token_id

    def draw(seed, redraws, floor):
        stats = Stats()
        ids = draw_batch(bs.model, bs.tokenizer, size=3, seed=seed, conditions=[bs.cond] * 3,
                         grammar=bs.grammar, vocab=bs.vocab, stats=stats, temperature=0.7, top_p=0.9,
                         redraws=redraws, floor=floor)
        return [[t for t in row.tolist() if t != pad] for row in ids], stats

    first, s0 = draw((0, 0), 0, 0.0)
    assert s0.fallbacks == 0 and (s0.below_floor_redrawn, s0.below_floor_kept) == (0, 0)
    ratios = [min_contact_ratio(Structure.from_str(decode_sample(ids, bs.tokenizer)["cif"], fmt="cif"))
              for ids in first]
    assert all(0.68 <= r < 1.3 for r in ratios)  # the hard rule holds, no real crystal keeps 1.3
    same, s1 = draw((0, 0), 2, 0.01)
    assert same == first and s1.below_floor_redrawn == 0
    redrawn, s2 = draw((0, 0), 1, 1.3)
    assert (s2.below_floor_redrawn, s2.below_floor_kept) == (3, 3)
    assert redrawn == draw((0, 0, 1), 0, 0.0)[0] != first  # the derived seed's documents


def test_a_run_from_before_a_setting_existed_resumes_only_under_its_old_value(tmp_path):
    """A sample_config.json written before --max-primitive-atoms (and the physics settings) existed
    was drawn without them: it resumes with them off and refuses a cap."""
    import json
    from dataclasses import asdict

    from llamat_cif.sampling import SampleConfig
    from llamat_cif.sampling.rows import check_resume

    old = SampleConfig(n=8, out_dir=str(tmp_path), min_contact_ratio=0.0, volume_window="off",
                       steer_contact_ratio=0.0, steer_contact_floor=0.0, dead_end_redraws=0,
                       redraw_below_floor=False)
    saved = {k: v for k, v in asdict(old).items() if k not in (
        "max_primitive_atoms", "min_contact_ratio", "volume_window", "steer_contact_ratio",
        "steer_volume_window", "steer_contact_floor", "dead_end_redraws", "redraw_below_floor")}
    (tmp_path / "sample_config.json").write_text(json.dumps(saved))
    check_resume(tmp_path, old)  # the same settings: resumes
    with pytest.raises(ValueError, match="max_primitive_atoms"):
        check_resume(tmp_path, SampleConfig(**{**asdict(old), "max_primitive_atoms": 20}))
    with pytest.raises(ValueError, match="max primitive atoms"):
        SampleConfig(n=1, out_dir=str(tmp_path), max_primitive_atoms=-1)


def test_a_document_is_read_once_for_the_floor_check_and_its_row(monkeypatch, nacl):
    """The below-floor check and ``decode_sample`` read a drawn document once between them, and the
    row's CIF is the one a fresh read gives (the kept structure is copied, never changed)."""
    import torch
    from transformers import AutoTokenizer

    import llamat_cif.cif as cif
    from llamat_cif.model import resolve_model_path
    from llamat_cif.sampling import sample

    tok = AutoTokenizer.from_pretrained(resolve_model_path("default"))
    text = cif.to_text(nacl)
    expected = cif.structure_to_cif(cif.from_text(text, "cif"))
    ids = tok(text, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    reads = []
    real = cif.from_text
    monkeypatch.setattr(cif, "from_text", lambda t, fmt=None: reads.append(t) or real(t, fmt))
    sample._read.cache_clear()
    assert sample._below_floor(torch.tensor(ids), tok, 0.7, "cif") is False  # rock salt keeps 0.7
    rows = [sample.decode_sample(ids, tok) for _ in range(2)]
    assert len(reads) == 1
    assert rows[0]["cif"] == rows[1]["cif"] == expected and rows[0]["error"] == ""
