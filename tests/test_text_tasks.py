"""SIE text tasks: loaders, tolerant parsing and LLaMat metrics on hand-computed examples."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from llamat_cif.text_tasks.metrics import (
    doping_triplets,
    score_discomat,
    score_doping,
    score_task,
    word_counts,
)
from llamat_cif.text_tasks.mof_metrics import entity_word_sets, records_equivalent, score_entities
from llamat_cif.text_tasks.parsing import parse_output, parse_prediction
from llamat_cif.text_tasks.rates import PRF, jaro_winkler
from llamat_cif.text_tasks.tasks import TASKS, TaskError, answer_keys, load_task

_TEXT = Path(os.environ.get("LLAMAT_CIF_DATA", "/nonexistent")) / "text"
requires_text = pytest.mark.skipif(not (_TEXT / "doping_test.jsonl").is_file(), reason="needs $LLAMAT_CIF_DATA/text")

MOF1 = TASKS["mof1"]
MOF2 = TASKS["mof2"]


def V(rate):  # noqa: N802 - short accessor for Rate values in asserts
    return rate.value


# ---------------------------------------------------------------------------------------- doping


def test_word_counts_keep_duplicates_like_llamat():
    # gold: Eu (found), YVO4 (missed); pred: Eu twice (both in gold), Y (not in gold)
    assert word_counts(["Eu", "YVO4"], ["Eu", "Eu", "Y"]) == PRF(tp=1, fp=1, fn=1)
    # a gold word repeated counts twice
    assert word_counts(["Al", "Al"], ["Al"]) == PRF(tp=2, fp=0, fn=0)


def test_prf_formulas():
    prf = PRF(tp=2, fp=1, fn=3)
    assert prf.precision == pytest.approx(2 / 3)
    assert prf.recall == pytest.approx(2 / 5)
    assert prf.f1 == pytest.approx(2 / (2 + 0.5 * 4))  # LLaMat: tp / (tp + (fp + fn) / 2)
    assert PRF().f1 == 0.0 and PRF().precision == 0.0


def test_doping_triplets_word_pairs_and_missing_ids():
    entry = {"basemats": {"b0": "ZnO thin films"}, "dopants": {"d0": "Al"},
             "dopants2basemats": {"d0": ["b0", "b9"]}}  # b9 does not exist: skipped
    assert doping_triplets(entry) == ["ZnO Al", "thin Al", "films Al"]


GOLD_DOP = {"basemats": {"b0": "ZnO thin films"}, "dopants": {"d0": "Al"}, "dopants2basemats": {"d0": ["b0"]}}
PRED_DOP = {"basemats": {"b0": "ZnO films"}, "dopants": {"d0": "Al"}, "dopants2basemats": {"d0": ["b0"]}}
EMPTY_DOP = {"basemats": {}, "dopants": {}, "dopants2basemats": {}}


def test_score_doping_hand_computed():
    out = score_doping([GOLD_DOP, EMPTY_DOP, EMPTY_DOP], [PRED_DOP, EMPTY_DOP, {"dopants": {"d0": "Si"}}])
    m, c = out["metrics"], out["counts"]
    # basemats: gold ZnO thin films, pred ZnO films -> TP 2, FN 1, FP 0
    assert V(m["basemats_precision"]) == 1.0
    assert V(m["basemats_recall"]) == pytest.approx(2 / 3)
    assert V(m["basemats_f1"]) == pytest.approx(0.8)
    assert (m["basemats_f1"].numerator, m["basemats_f1"].denominator) == (4, 5)
    assert V(m["dopants_f1"]) == 1.0
    # triplets: gold {ZnO Al, thin Al, films Al}, pred {ZnO Al, films Al} -> P 1, R 2/3, F1 0.8
    assert V(m["triplets_precision"]) == 1.0
    assert V(m["triplets_recall"]) == pytest.approx(2 / 3)
    assert V(m["triplets_f1"]) == pytest.approx(0.8)
    assert V(m["exact_match"]) == 0.0
    assert V(m["similarity"]) == pytest.approx(jaro_winkler(str(GOLD_DOP), str(PRED_DOP)))
    assert 0.9 < V(m["similarity"]) < 1.0
    # sentences without annotation are reported apart, not scored
    assert c["n_annotated"] == 1 and c["n_scored"] == 1
    assert c["empty_gold"] == {"n": 2, "pred_empty": 1, "pred_nonempty": 1, "unparsable": 0}


def test_doping_echo_scores_one_and_unparsable_scores_zero():
    golds = [GOLD_DOP, EMPTY_DOP]
    echo = score_doping(golds, [json.loads(json.dumps(g)) for g in golds])["metrics"]
    for key in ("basemats_f1", "dopants_f1", "triplets_f1", "similarity", "exact_match", "parsable"):
        assert V(echo[key]) == 1.0, key
    none = score_doping(golds, [None, None])
    for key in ("basemats_f1", "dopants_f1", "triplets_f1", "similarity", "exact_match", "parsable"):
        assert V(none["metrics"][key]) == 0.0, key
    assert none["counts"]["n_unparsable"] == 1 and none["counts"]["empty_gold"]["unparsable"] == 1
    # LLaMat's doping script drops unparsable outputs from every score instead
    dropped = score_doping(golds, [None, None], skip_unparsable=True)
    assert dropped["counts"]["n_scored"] == 0 and dropped["counts"]["n_unparsable"] == 1


def test_doping_tolerates_odd_prediction_shapes():
    pred = {"basemats": ["ZnO thin films"], "dopants": {"d0": ["Al"]}, "dopants2basemats": {"d0": "0"}}
    m = score_doping([GOLD_DOP], [pred])["metrics"]
    assert V(m["basemats_f1"]) == 1.0 and V(m["dopants_f1"]) == 1.0
    assert V(m["triplets_f1"]) == 1.0  # list basemats keyed by position: "0"


def test_jaro_winkler_textbook_value():
    assert jaro_winkler("MARTHA", "MARHTA") == pytest.approx(0.9611, abs=1e-4)
    assert jaro_winkler("abc", "") == 0.0


# ------------------------------------------------------------------------------------ mof1 / mof2

GOLD_MOF1 = [{"name": "gold", "formula": "Au", "acronym": "", "description": ["ceria supported"],
              "structure_or_phase": [""], "applications": ["catalyst", "benzene oxidation"]}]
PRED_MOF1 = [{"name": "gold", "formula": "Au", "description": ["supported"], "applications": ["catalyst"],
              "colour": "yellow"}]


def test_entity_word_sets_and_links():
    sets = entity_word_sets(GOLD_MOF1, MOF1)
    assert sets["applications"] == {"catalyst", "benzene", "oxidation"}
    assert sets["formula|||description"] == {"Au|||ceria", "Au|||supported"}
    assert sets["formula|||name"] == {"Au|||gold"}
    assert sets["formula|||acronym"] == set()


def test_score_mof1_hand_computed():
    out = score_entities([GOLD_MOF1, []], [PRED_MOF1, []], MOF1)
    m = out["metrics"]
    assert V(m["name_f1"]) == 1.0 and V(m["formula_f1"]) == 1.0
    # description: gold {ceria, supported}, pred {supported}: TP 1 FN 1 -> F1 2/3
    assert V(m["description_f1"]) == pytest.approx(2 / 3)
    # applications: gold {catalyst, benzene, oxidation}, pred {catalyst}: TP 1 FN 2 -> 2/(2+2)
    assert V(m["applications_f1"]) == pytest.approx(0.5)
    assert V(m["acronym_f1"]) == 0.0 and m["acronym_f1"].denominator == 0  # no support
    # links formula->description: P 1, R 1/2 -> F1 2/3; formula->name exact
    assert V(m["link:formula->description_f1"]) == pytest.approx(2 / 3)
    assert V(m["link:formula->name_f1"]) == 1.0
    assert V(m["link:formula->acronym_f1"]) is None  # no gold links: undefined
    assert V(m["exact_match"]) == 0.0 and V(m["parsable"]) == 1.0
    assert out["counts"]["empty_gold"]["n"] == 1


def test_mof_exact_match_ignores_record_order_and_fills_keys():
    a = {"name": "x", "formula": "A", "acronym": "", "description": [""], "structure_or_phase": [""], "applications": [""]}
    b = dict(a, formula="B")
    assert records_equivalent([a, b], [b, a])
    partial_b = {"formula": "B", "name": "x"}  # missing keys filled with "" / [""] before comparing
    m = score_entities([[a, b]], [[partial_b, a]], MOF1)["metrics"]
    assert V(m["exact_match"]) == 1.0


def test_mof2_echo_empty_and_empty_list():
    gold = [{"name_of_mof": "MIL-100", "mof_formula": "", "mof_description": ["Fe3O4@MIL-100"],
             "guest_species": [""], "applications": ["extraction"]}]
    echo = score_entities([gold], [json.loads(json.dumps(gold))], MOF2)["metrics"]
    assert all(V(echo[k]) == 1.0 for k in ("name_of_mof_f1", "mof_description_f1", "applications_f1",
                                           "exact_match", "similarity", "parsable"))
    empty = score_entities([gold], [[]], MOF2)
    assert V(empty["metrics"]["applications_f1"]) == 0.0
    assert V(empty["metrics"]["link:name_of_mof->applications_f1"]) == 0.0  # gold links, none predicted
    assert empty["counts"]["n_empty_pred"] == 1 and V(empty["metrics"]["parsable"]) == 0.0


# ------------------------------------------------------------------------------------- discomat


def test_score_discomat_hand_computed():
    g1 = {"comp_table": [1], "regex_table": [0], "composition_row_index": [2, 3], "chemical_col_index": [1, 2],
          "gid_col_index": [0]}
    g2 = {"comp_table": [0], "regex_table": [0]}
    g3 = {"comp_table": [1], "regex_table": [1]}
    p1 = {"comp_table": [1], "regex_table": [0], "composition_row_index": [3, 2], "chemical_col_index": [1],
          "gid_col_index": [0]}
    p2 = {"comp_table": [1], "regex_table": [0]}
    out = score_discomat([g1, g2, g3], [p1, p2, None])
    m = out["metrics"]
    # comp_table: true [1,0,1], pred [1,1,0] -> TP 1 FP 1 FN 1 -> F1 0.5
    assert V(m["comp_table_f1"]) == pytest.approx(0.5)
    assert V(m["regex_table_f1"]) == 0.0  # true [0,0,1], pred [0,0,0]
    assert V(m["composition_f1"]) == 1.0  # rows compared sorted
    assert V(m["chemical_f1"]) == 0.0
    assert V(m["gid_f1"]) == 1.0
    assert V(m["exact_match"]) == 0.0 and V(m["parsable"]) == pytest.approx(2 / 3)
    assert out["counts"]["n_unparsable"] == 1
    # LLaMat's protocol drops the unparsable table: comp_table true [1,0], pred [1,1] -> 2/3
    dropped = score_discomat([g1, g2, g3], [p1, p2, None], skip_unparsable=True)["metrics"]
    assert V(dropped["comp_table_f1"]) == pytest.approx(2 / 3)
    # exact match on an exact copy
    assert V(score_discomat([g1], [dict(g1)])["metrics"]["exact_match"]) == 1.0


# --------------------------------------------------------------------------------------- parsing


@pytest.mark.parametrize(
    "text, expected",
    [
        ('{"a": [1, 2]}', {"a": [1, 2]}),
        ("{'basemats': {'b0': 'ZnO'}, 'ok': True}", {"basemats": {"b0": "ZnO"}, "ok": True}),
        ('Sure! Here it is: {"a": "x"} Hope this helps.', {"a": "x"}),
        ('```json\n{"a": 1}\n```', {"a": 1}),
        ('{"a": 1}<|im_end|>garbage {"b": 2}', {"a": 1}),
        ("{'a': true, 'b': null}", {"a": True, "b": None}),
        ('The MOF\'s data: [{"name": "x"}] end', [{"name": "x"}]),
        ('{"text": "braces } inside [ strings"}', {"text": "braces } inside [ strings"}),
    ],
)
def test_parse_output_tolerant(text, expected):
    res = parse_output(text)
    assert res.ok and res.value == expected


@pytest.mark.parametrize("text", [
    "", "   ", None, "no structure here", '{"a": 1', "<|im_end|>{}",
    # fragments inside a broken answer are not the answer
    '{"basemats": {"b0": "dopants": "dopants2basemats": {}}',
    '[{"name": "x", "description": [], "formula": "A"',
])
def test_parse_output_failures_do_not_raise(text):
    res = parse_output(text)
    assert not res.ok and res.value is None and res.error


def test_parse_prediction_shapes():
    assert parse_prediction("entities", '{"name": "x"}').value == [{"name": "x"}]
    assert parse_prediction("doping", '[{"basemats": {}}]').value == {"basemats": {}}
    assert not parse_prediction("doping", "[1, 2]").ok
    keys = answer_keys(TASKS["doping"])
    assert parse_prediction("doping", 'I think {"dopants": {}} fits', keys).ok
    assert not parse_prediction("doping", "{}", keys).ok  # none of the task's keys
    assert not parse_prediction("doping", '{"answer": "Al"}', keys).ok
    assert parse_prediction("entities", "[]", MOF1.entity_keys).value == []  # "nothing to extract"
    assert not parse_prediction("entities", '[{"colour": "red"}]', MOF1.entity_keys).ok


# ---------------------------------------------------------------------------------------- loaders


def _write(tmp_path: Path, name: str, lines: list[str]) -> Path:
    (tmp_path / "text").mkdir(exist_ok=True)
    path = tmp_path / "text" / name
    path.write_text("\n".join(lines) + "\n")
    return path


def test_loader_reports_malformed_records(tmp_path):
    good = {"system": "s", "question": "q", "answer": json.dumps(GOLD_DOP)}
    lines = [
        json.dumps(good),
        "{not json",
        json.dumps({"system": "s", "question": "q"}),  # no answer
        json.dumps({"system": "s", "question": "q", "answer": {"basemats": {}}}),  # wrong shape
        json.dumps({"system": 3, "question": "q", "answer": GOLD_DOP}),
        "",
        json.dumps(dict(good, answer=GOLD_DOP)),  # answer as an object is fine too
    ]
    _write(tmp_path, "doping_test.jsonl", lines)
    ts = load_task("doping", "test", data_dir=tmp_path)
    assert [e.index for e in ts.examples] == [0, 6]
    assert ts.examples[0].answer == GOLD_DOP and ts.examples[0].id == "doping-test-0000"
    assert [m.line for m in ts.malformed] == [2, 3, 4, 5]
    assert "not JSON" in ts.malformed[0].reason and "answer" in ts.malformed[1].reason


def test_loader_errors(tmp_path):
    with pytest.raises(TaskError, match="unknown text task"):
        load_task("nope")
    with pytest.raises(TaskError, match="no 'train' split"):
        load_task("discomat", "train", data_dir=tmp_path)
    with pytest.raises(TaskError, match="LLAMAT_CIF_DATA"):
        load_task("doping", "test", data_dir=tmp_path)


@requires_text
def test_shared_sets_load_clean_and_echo_scores_one():
    expected = {("doping", "test"): 232, ("doping", "train"): 413, ("mof1", "test"): 62,
                ("mof2", "test"): 51, ("discomat", "test"): 737}
    for (name, split), n in expected.items():
        ts = load_task(name, split)
        assert len(ts.examples) == n and ts.malformed == []
    for name in TASKS:
        ts = load_task(name, "test")
        golds = [e.answer for e in ts.examples]
        # round-trip through the answer text a model would write
        echo = [parse_prediction(ts.task.kind, json.dumps(g), answer_keys(ts.task)).value for g in golds]
        m = score_task(ts.task, golds, echo)["metrics"]
        heads = [k for k in m if k.endswith("_f1") and V(m[k]) is not None and m[k].denominator > 0]
        assert heads and all(V(m[k]) == 1.0 for k in heads), name
        assert V(m["exact_match"]) == 1.0 and V(m["parsable"]) == 1.0
    # LLaMat scores doping on the 63 annotated test sentences
    assert score_task(TASKS["doping"], [e.answer for e in load_task("doping").examples],
                      [None] * 232)["counts"]["n_annotated"] == 63
