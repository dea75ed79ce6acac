"""The ``llamat`` protocol: what LLaMat's evaluation scripts print, on hand-computed examples.

Every expected value below was worked out by hand from the scripts' rules (``doping_eval.py``,
``mof1_eval.py``, ``mof2_eval.py``, ``discomat_eval.py`` in M3RG-IITD/llamat); each test sets the
``llamat`` number next to the ``strict`` one where the issue found that they differ.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import jellyfish
import pytest

from llamat_cif.text_tasks.metrics import score_task
from llamat_cif.text_tasks.parsing import parse_prediction
from llamat_cif.text_tasks.reference import score_llamat
from llamat_cif.text_tasks.tasks import TASKS, answer_keys, load_task

_TEXT = Path(os.environ.get("LLAMAT_CIF_DATA", "/nonexistent")) / "text"
requires_text = pytest.mark.skipif(not (_TEXT / "doping_test.jsonl").is_file(), reason="needs $LLAMAT_CIF_DATA/text")

DOPING, MOF1, MOF2, DISCOMAT = (TASKS[k] for k in ("doping", "mof1", "mof2", "discomat"))
END = "<|im_end|>"


def strict(spec, golds, outputs):
    preds = []
    for text in outputs:
        res = parse_prediction(spec.kind, text, answer_keys(spec))
        preds.append(res.value if res.ok else None)
    return score_task(spec, golds, preds)["metrics"]


def values(metrics, *keys):
    return tuple(metrics[k].value for k in keys)


# ----------------------------------------------------------------------------------------- doping

ZNO = {"basemats": {"b0": "ZnO"}, "dopants": {"d0": "Al"}, "dopants2basemats": {"d0": ["b0"]}}
TIO2 = {"basemats": {"b0": "TiO2"}, "dopants": {"d0": "N"}, "dopants2basemats": {"d0": ["b0"]}}
EMPTY = {"basemats": {}, "dopants": {}, "dopants2basemats": {}}


def test_doping_string_link_target_links_nothing_in_llamat():
    out = json.dumps({**ZNO, "dopants2basemats": {"d0": "b0"}}) + END
    ref = score_llamat(DOPING, [ZNO], [out])["metrics"]
    # "b0" is iterated as "b", "0": neither id exists, so no predicted triplet: P = R = F1 = 0
    assert values(ref, "basemats_f1", "dopants_f1", "triplets_f1") == (1.0, 1.0, 0.0)
    assert (ref["triplets_recall"].numerator, ref["triplets_recall"].denominator) == (0, 1)
    assert ref["exact_match"].value == 0.0  # "b0" != ["b0"]
    # strict reads the string as a one-element list and finds the link
    assert strict(DOPING, [ZNO], [out])["triplets_f1"].value == 1.0


def test_doping_literal_eval_parse_and_unreadable_left_out():
    golds = [ZNO, TIO2, EMPTY]
    outputs = [str(ZNO) + END, "Here it is: " + json.dumps(TIO2), "garbage"]
    ref = score_llamat(DOPING, golds, outputs)
    # only sentence 0 is scored (1 is prose around JSON: literal_eval fails; 2 has no annotation)
    assert ref["counts"] == {"n_examples": 3, "n_annotated": 2, "n_scored": 1, "n_unparsable": 1}
    m = ref["metrics"]
    assert (m["basemats_f1"].numerator, m["basemats_f1"].denominator) == (2, 2)
    assert values(m, "triplets_f1", "similarity", "exact_match", "parsable") == (1.0, 1.0, 1.0, 1.0)
    # strict parses the prose answer too and scores both sentences
    s = strict(DOPING, golds, outputs)
    assert (s["basemats_f1"].numerator, s["basemats_f1"].denominator) == (4, 4)


def test_doping_word_scores_and_similarity_hand_computed():
    pred = {"basemats": {"b0": "ZnO films"}, "dopants": {"d0": "Ga"}, "dopants2basemats": {"d0": ["b0"]}}
    ref = score_llamat(DOPING, [ZNO], [str(pred)])["metrics"]
    # basemats: gold [ZnO], pred [ZnO, films] -> TP 1, FP 1, FN 0 -> F1 = 1 / (1 + 0.5) = 2/3
    assert ref["basemats_f1"].value == pytest.approx(2 / 3)
    assert ref["basemats_precision"].value == pytest.approx(0.5)
    # dopants: Al vs Ga -> TP 0 -> F1 0; triplets: gold [ZnO Al], pred [ZnO Ga, films Ga] -> 0 correct
    assert values(ref, "dopants_f1", "triplets_f1") == (0.0, 0.0)
    assert ref["triplets_precision"].denominator == 2
    assert ref["similarity"].value == pytest.approx(jellyfish.jaro_winkler_similarity(str(ZNO), str(pred)))


def test_doping_answers_the_script_cannot_score_give_an_error_not_a_number():
    missing = score_llamat(DOPING, [ZNO], ['{"dopants": {"d0": "Al"}}'])
    assert missing["metrics"] == {} and "basemats is a list" in missing["error"]
    listed = score_llamat(DOPING, [ZNO, TIO2], [str(ZNO), '{"basemats": {"b0": ["TiO2"]}}'])
    assert "example 1" in listed["error"] and "non-string" in listed["error"]
    nothing = score_llamat(DOPING, [ZNO], ["no answer"])
    assert "no output left to score" in nothing["error"]


# ------------------------------------------------------------------------------------- mof1 / mof2

LFP = [{"acronym": "", "applications": ["battery cathode"], "name": "", "formula": "LiFePO4",
        "structure_or_phase": [""], "description": [""]}]
MOF5 = [{"name_of_mof": "MOF-5", "mof_formula": "", "mof_description": [""], "guest_species": ["H2"],
         "applications": ["storage"]}]


def test_mof1_lone_record_is_an_error_in_llamat_and_wrapped_in_strict():
    out = '{"formula": "LiFePO4", "applications": ["battery cathode"]}'
    ref = score_llamat(MOF1, [LFP], [out])
    assert "lone record" in ref["error"] and ref["metrics"] == {}
    assert strict(MOF1, [LFP], [out])["formula_f1"].value == 1.0


def test_mof1_single_quotes_become_json_and_apostrophes_break_it():
    quoted = "[{'formula': 'LiFePO4', 'applications': ['battery cathode']}]"
    broken = "[{'formula': 'LiFePO4', 'applications': ['Li's battery']}]"
    ref = score_llamat(MOF1, [LFP, LFP], [quoted, broken])
    # the second output is unreadable after ' -> " and mof1 leaves it out
    assert ref["counts"]["n_scored"] == 1 and ref["counts"]["n_unreadable"] == 1
    m = ref["metrics"]
    # missing keys filled ("" / [""]) before the exact-match comparison -> equal to the gold
    assert values(m, "formula_f1", "applications_f1", "exact_match") == (1.0, 1.0, 1.0)
    # similarity is on the answer as written, before the filling
    parsed = [{"formula": "LiFePO4", "applications": ["battery cathode"]}]
    assert m["similarity"].value == pytest.approx(
        jellyfish.jaro_winkler_similarity(str(LFP), str(parsed), long_tolerance=True))
    # parsable: 1 non-empty answer of 2 annotated abstracts
    assert (m["parsable"].numerator, m["parsable"].denominator) == (1, 2)


def test_mof2_unparsable_output_is_kept_as_empty_list():
    ref = score_llamat(MOF2, [MOF5], ["not json at all"])
    m = ref["metrics"]
    assert ref["counts"]["n_scored"] == 1 and ref["counts"]["n_unparsable"] == 1
    # similarity against the text "[]", not 0
    expected = jellyfish.jaro_winkler_similarity(str(MOF5), "[]", long_tolerance=True)
    assert expected > 0 and m["similarity"].value == pytest.approx(expected)
    assert values(m, "name_of_mof_f1", "exact_match", "parsable") == (0.0, 0.0, 0.0)
    # nothing retrieved -> the script leaves the link type out (undefined), strict scores 0
    assert m["link:name_of_mof->guest_species_f1"].value is None
    s = strict(MOF2, [MOF5], ["not json at all"])
    assert s["similarity"].value == 0.0 and s["link:name_of_mof->guest_species_f1"].value == 0.0


def test_mof2_links_hand_computed():
    pred = [{"name_of_mof": "MOF-5", "guest_species": ["H2", "CO2"], "applications": ["gas storage"]}]
    m = score_llamat(MOF2, [MOF5], [json.dumps(pred) + END])["metrics"]
    # guest links: gold {MOF-5|||H2}, pred {MOF-5|||H2, MOF-5|||CO2}: P 1/2, R 1 -> F1 2/3
    assert m["link:name_of_mof->guest_species_f1"].value == pytest.approx(2 / 3)
    # applications words: gold {storage}, pred {gas, storage} -> F1 2/3; links likewise
    assert m["applications_f1"].value == pytest.approx(2 / 3)
    assert m["link:name_of_mof->applications_f1"].value == pytest.approx(2 / 3)
    # no gold and no predicted formula links -> undefined
    assert m["link:name_of_mof->mof_formula_f1"].value is None


def test_mof_non_dict_record_and_nothing_to_score_are_errors():
    assert "not a dict" in score_llamat(MOF2, [MOF5], ['["MOF-5"]'])["error"]
    assert "no output left" in score_llamat(MOF1, [LFP], ["{broken"])["error"]


# ----------------------------------------------------------------------------------------- discomat

G1 = {"comp_table": [1], "regex_table": [0], "composition_row_index": [2, 1], "chemical_col_index": [0],
      "gid_row_index": [0]}
G2 = {"comp_table": [0], "regex_table": [0]}
G3 = {"comp_table": [1], "regex_table": [1]}


def test_discomat_scalar_comp_table_predicts_zero_in_llamat():
    p1 = {"comp_table": 1, "regex_table": [0], "composition_row_index": [1, 2], "chemical_col_index": [0],
          "gid_row_index": [0]}
    outputs = [str(p1), "[{'comp_table': [0]}]", "not a table"]
    ref = score_llamat(DISCOMAT, [G1, G2, G3], outputs)
    m = ref["metrics"]
    # table 3 is unreadable and left out; table 1's scalar comp_table is read as 0 (1[0] fails)
    assert (m["parsable"].numerator, m["parsable"].denominator) == (2, 3)
    assert (m["comp_table_f1"].value, m["comp_table_f1"].denominator) == (0.0, 1)
    # indices: composition sorted equal, chemical and gid equal; table 2 (a list) is not scored there
    assert values(m, "composition_f1", "chemical_f1", "gid_f1") == (1.0, 1.0, 1.0)
    assert m["composition_f1"].denominator == 2
    assert m["exact_match"].value == 0.0
    # strict reads comp_table 1 as 1
    assert strict(DISCOMAT, [G1], [str(p1)])["comp_table_f1"].value == 1.0


def test_discomat_unsortable_index_and_bad_label_are_errors():
    bad_index = str({"comp_table": [1], "regex_table": [0], "composition_row_index": 3})
    assert "cannot be sorted" in score_llamat(DISCOMAT, [G1], [bad_index])["error"]
    bad_label = str({"comp_table": ["1"], "regex_table": [0]})
    assert "not 0/1" in score_llamat(DISCOMAT, [G2], [bad_label])["error"]


# ------------------------------------------------------------------------------------------ real sets


@requires_text
def test_echoed_gold_scores_one_under_llamat_protocol():
    for name in TASKS:
        spec = TASKS[name]
        golds = [e.answer for e in load_task(name, "test").examples]
        # a model echoing the gold the way LLaMat models write it: JSON for mof, Python repr otherwise
        outputs = [(json.dumps(g) if spec.kind == "entities" else str(g)) + END for g in golds]
        rec = score_llamat(spec, golds, outputs)
        assert "error" not in rec, (name, rec.get("error"))
        m = rec["metrics"]
        f1s = [k for k in m if k.endswith("_f1") and m[k].value is not None]
        assert f1s and all(m[k].value == 1.0 for k in f1s), name
        assert m["exact_match"].value == 1.0, name
    # mof1 replaces every ' by ": gold answers holding an apostrophe become unreadable and are dropped
    mof1 = [e.answer for e in load_task("mof1", "test").examples]
    rec = score_llamat(MOF1, mof1, [json.dumps(g) for g in mof1])
    with_apostrophe = sum(1 for g in mof1 if g and "'" in json.dumps(g))
    assert rec["counts"]["n_unreadable"] == with_apostrophe
