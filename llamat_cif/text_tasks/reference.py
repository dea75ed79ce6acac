"""The ``llamat`` scoring protocol: the numbers LLaMat's own evaluation scripts print.

LLaMat (M3RG-IITD/llamat, ``evaluation_codes/{doping,mof1,mof2,discomat}_eval.py``) scores raw
model outputs with its own parsing and its own rules for outputs it cannot read. Published LLaMat
numbers follow those rules, so a comparison with them needs the same rules; our default scores
(:mod:`llamat_cif.text_tasks.metrics`, protocol ``strict``) parse tolerantly and count every
annotated example. This module reproduces the scripts' behaviour, written from their observable
rules (our code, not theirs):

Parsing (LLaMat-3 chat outputs; ``split_token`` selects another end marker)
    doping, discomat: ``ast.literal_eval`` of the text before ``<|im_e``; mof1: ``json.loads`` of
    the stripped text before ``<|im_e`` with every ``'`` replaced by ``"``; mof2: ``json.loads`` of
    the text before ``<|im_end|>``.

Unreadable outputs
    doping, discomat and mof1 leave them out of every score. mof2 keeps them as an empty list,
    counted unparsable, with Jaro-Winkler similarity taken against the text ``[]``. In mof1/mof2
    a parsed empty list also counts as unparsable.

Outputs the scripts cannot score
    Where a script would stop with an exception (a doping answer whose ``basemats`` is missing or
    a list, a lone mof1 record not wrapped in a list, a non-integer index list that ``sorted``
    cannot order, a label sklearn rejects, nothing left to score...), there is no LLaMat number:
    :class:`ReferenceScriptError` names the example and the reason. A caller records that error
    instead of a score; it never substitutes a number the script cannot produce.

Corner cases where the rules give a different number than ``strict``
    A doping link target written as a string (``{"d0": "b0"}``) is iterated character by
    character, so it links nothing; discomat ``"comp_table": 1`` (not ``[1]``) predicts 0; mof
    link F1 is undefined when either side retrieved no link; doping "parsable" is 1 for every
    scored sentence (the script tests whether ``str()`` of a dict ends with ``}``).

What the scripts do that has no effect on the numbers and is not reproduced: the doping script's
hand-written replacement answer for test sentence 197 (made after parsing, so never scored), the
DiSCoMaT baseline columns, support counts and plots.
"""

from __future__ import annotations

import ast
import json
from collections.abc import Sequence
from typing import Any

from llamat_cif.text_tasks.metrics import word_counts
from llamat_cif.text_tasks.mof_metrics import (
    LINK_DELIMITER,
    add_sets,
    empty_tallies,
    entity_metrics,
    link_keys,
)
from llamat_cif.text_tasks.rates import PRF, Rate, jaro_winkler, ratio, triplet_rates
from llamat_cif.text_tasks.tasks import TaskSpec, is_empty_answer

#: End markers LLaMat splits LLaMat-3 outputs at (the mof2 script uses the full marker).
SPLIT_TOKENS = {"doping": "<|im_e", "mof1": "<|im_e", "mof2": "<|im_end|>", "discomat": "<|im_e"}
#: Keys LLaMat's mof scripts fill with ``""`` (the others get ``[""]``) when a record lacks them.
_STRING_FILL_KEYS = ("formula", "name", "acronym", "mof_formula", "name_of_mof")

PROTOCOL_NOTE = (
    "llamat: LLaMat's evaluation scripts' parsing and rules (doping/discomat: ast.literal_eval of the "
    "text before '<|im_e', unreadable outputs left out; mof1: json.loads with ' -> \", unreadable left "
    "out; mof2: json.loads before '<|im_end|>', unreadable kept as [] and counted unparsable); where a "
    "script would raise, no score is given and 'error' says why."
)


class ReferenceScriptError(ValueError):
    """LLaMat's script would stop on this input, so it has no number to give."""


_MISSING = object()


def _split(text: Any, token: str) -> str:
    return str(text).split(token)[0]


def parse_llamat(task: str, text: Any, split_token: str | None = None) -> Any:
    """Parse one raw output the way LLaMat's script for ``task`` does.

    Returns:
        The parsed value, or ``_MISSING`` when the script's parse step fails.
    """
    token = split_token or SPLIT_TOKENS[task]
    try:
        if task in ("doping", "discomat"):
            return ast.literal_eval(_split(text, token))
        if task == "mof1":
            return json.loads(_split(text, token).strip().replace("'", '"'))
        if task == "mof2":
            return json.loads(_split(text, token))
    except Exception:  # the scripts catch everything at this step
        return _MISSING
    raise ValueError(f"unknown LLaMat task {task!r}")


def _fail(example: int, reason: str) -> ReferenceScriptError:
    return ReferenceScriptError(f"LLaMat's script raises on example {example}: {reason}")


# ----------------------------------------------------------------------------------------- doping


def _doping_words(entities: Any, what: str, example: int) -> list[str]:
    if not isinstance(entities, dict):
        raise _fail(example, f"{what} is a {type(entities).__name__}, not a dict (.values() fails)")
    values = list(entities.values())
    if not all(isinstance(v, str) for v in values):
        raise _fail(example, f"{what} holds a non-string value (' '.join fails)")
    return [w for w in " ".join(values).split(" ") if w]


def _llamat_triplets(entry: dict[str, Any], example: int) -> list[str]:
    links = entry["dopants2basemats"]
    if not isinstance(links, dict):
        raise _fail(example, f"dopants2basemats is a {type(links).__name__} (.items() fails)")
    out: list[str] = []
    for did, bids in links.items():
        try:
            targets = list(bids)  # a string target is iterated character by character
        except TypeError:
            raise _fail(example, f"link target {bids!r} is not iterable") from None
        for bid in targets:
            try:
                base = entry["basemats"][bid]
                dopant = entry["dopants"][did]
                pairs = [f"{b} {d}" for b in base.split(" ") for d in dopant.split(" ") if b and d]
            except Exception:  # the script skips a link it cannot resolve
                continue
            out += pairs
    return out


def score_doping_llamat(
    golds: Sequence[dict[str, Any]], outputs: Sequence[Any], *, split_token: str | None = None
) -> dict[str, Any]:
    """Doping scores as ``doping_eval.py`` computes them (LLaMat-3 path, original case)."""
    counts = {"n_examples": len(golds), "n_annotated": 0, "n_scored": 0, "n_unparsable": 0}
    totals = {k: PRF() for k in ("basemats", "dopants")}
    n_correct = n_pred = n_gold = 0
    sims: list[float] = []
    exact = 0
    for i, (gold, text) in enumerate(zip(golds, outputs, strict=True)):
        if gold == {"basemats": {}, "dopants": {}, "dopants2basemats": {}}:
            continue
        counts["n_annotated"] += 1
        pred = parse_llamat("doping", text, split_token)
        if pred is _MISSING:
            counts["n_unparsable"] += 1
            continue
        if not isinstance(pred, dict):
            raise _fail(i, f"the answer is a {type(pred).__name__}, not a dict (.keys() fails)")
        counts["n_scored"] += 1
        filled = dict(pred)
        for key in ("basemats", "dopants", "dopants2basemats"):
            filled.setdefault(key, [])
        entry = {k: filled[k] for k in ("basemats", "dopants", "dopants2basemats")}
        if entry["dopants2basemats"] == []:
            entry["dopants2basemats"] = {}
        for key in totals:
            gold_words = [w for w in " ".join(gold[key].values()).split(" ") if w]
            totals[key] += word_counts(gold_words, _doping_words(entry[key], key, i))
        gold_trip = _llamat_triplets(gold, i)
        pred_trip = _llamat_triplets(entry, i)
        pred_set = set(pred_trip)
        n_correct += sum(1 for t in gold_trip if t in pred_set)
        n_pred += len(pred_trip)
        n_gold += len(gold_trip)
        sims.append(jaro_winkler(str(gold), str(filled)))
        exact += int(filled == gold)
    n = counts["n_scored"]
    if n == 0:
        raise _fail(-1, "no output left to score (recall divides by zero)")
    metrics: dict[str, Rate] = {}
    for key, prf in totals.items():
        if prf.tp + prf.fn == 0:
            raise _fail(-1, f"no gold {key} words among the scored sentences (recall divides by zero)")
        for name, rate in prf.rates(f"{key} words").items():
            metrics[f"{key}_{name}"] = rate
    if n_gold == 0:
        raise _fail(-1, "no gold link triplets among the scored sentences (recall divides by zero)")
    for name, rate in triplet_rates(n_correct, n_pred, n_gold).items():
        metrics[f"triplets_{name}"] = rate
    metrics["similarity"] = ratio(sum(sims), n, "mean Jaro-Winkler over parsed annotated sentences")
    metrics["exact_match"] = ratio(exact, n, "exact dict matches / parsed annotated sentences")
    metrics["parsable"] = ratio(n, n, "the script's test (str(dict) ends with '}'): always true")
    return {"metrics": metrics, "counts": counts}


# ------------------------------------------------------------------------------------- mof1 / mof2


def _words(text: Any, example: int) -> list[str]:
    if not isinstance(text, str):
        raise _fail(example, f"entity value {text!r} is not a string (.split fails)")
    return [w for w in (p.strip() for p in text.split(" ")) if w]


def _record_sets(records: list[dict[str, Any]], spec: TaskSpec, example: int) -> dict[str, set[str]]:
    non_root = [k for k in spec.entity_keys if k != spec.root_key]
    out: dict[str, set[str]] = {k: set() for k in spec.entity_keys}
    out.update({k: set() for k in link_keys(spec)})
    for rec in records:
        roots: set[str] = set()
        missing = [k for k in spec.entity_keys if k not in rec]
        if missing:
            raise _fail(example, f"a record lacks {missing[0]!r} (KeyError)")
        for key in spec.entity_keys:
            val = rec[key]
            if isinstance(val, str) and val:
                out[key].update(_words(val, example))
                if key == spec.root_key:
                    roots.add(val)
            elif isinstance(val, list):
                for item in val:
                    if item:
                        out[key].update(_words(item, example))
            elif val:
                raise _fail(example, f"{key} is a {type(val).__name__} (the script raises ValueError)")
        if not roots:
            continue
        for key in non_root:
            val = rec[key]
            if isinstance(val, str):
                words = _words(val, example)
            elif isinstance(val, list):
                words = [w for item in val for w in _words(item, example)]
            else:
                raise _fail(example, f"{key} is a {type(val).__name__} beside a {spec.root_key} (ValueError)")
            if words:
                for root in roots:
                    out[f"{spec.root_key}{LINK_DELIMITER}{key}"].update(
                        f"{root}{LINK_DELIMITER}{w}" for w in words if w != root
                    )
    return out


def _fill_records(pred: Any, spec: TaskSpec, example: int) -> Any:
    """Fill/trim the predicted records as the scripts do; raise where they would."""
    if isinstance(pred, str):
        if spec.name == "mof1":
            raise _fail(example, "the answer is a JSON string (the script raises)")
        if pred:
            raise _fail(example, "the answer is a JSON string (item assignment on a character fails)")
        return pred
    if isinstance(pred, dict):
        if pred:
            raise _fail(example, "the answer is a lone record, not a list of records (item assignment fails)")
        return pred
    if not isinstance(pred, list):
        raise _fail(example, f"the answer is a {type(pred).__name__}, not a list (iteration fails)")
    out = []
    for rec in pred:
        if not isinstance(rec, dict):
            raise _fail(example, f"a record is a {type(rec).__name__}, not a dict (item assignment fails)")
        clean = {k: v for k, v in rec.items() if k in spec.entity_keys}
        for key in spec.entity_keys:
            if key not in rec:
                clean[key] = "" if key in _STRING_FILL_KEYS else [""]
        out.append(clean)
    return out


def _canonical(records: Any, example: int) -> str:
    try:
        ordered = sorted(records, key=lambda r: r.get("formula", ""))
    except TypeError as exc:
        raise _fail(example, f"records cannot be ordered by formula ({exc})") from None
    return str([dict(sorted(d.items())) for d in ordered])


def score_entities_llamat(
    golds: Sequence[list[dict[str, Any]]],
    outputs: Sequence[Any],
    spec: TaskSpec,
    *,
    split_token: str | None = None,
) -> dict[str, Any]:
    """mof1 / mof2 scores as ``mof1_eval.py`` / ``mof2_eval.py`` compute them."""
    keep_unreadable = spec.name == "mof2"
    ent, links = empty_tallies(spec)
    counts = {"n_examples": len(golds), "n_annotated": 0, "n_scored": 0, "n_unreadable": 0, "n_unparsable": 0}
    sims: list[float] = []
    exact = 0
    for i, (gold, text) in enumerate(zip(golds, outputs, strict=True)):
        if gold == []:
            continue
        counts["n_annotated"] += 1
        pred = parse_llamat(spec.name, text, split_token)
        if pred is _MISSING:
            counts["n_unreadable"] += 1
            if not keep_unreadable:
                continue
            pred = []
        counts["n_scored"] += 1
        sims.append(jaro_winkler(str(gold), str(pred), long_tolerance=True))
        if pred == []:
            counts["n_unparsable"] += 1
            test = pred
        else:
            test = _fill_records(pred, spec, i)
        exact += int(_canonical(gold, i) == _canonical(test, i))
        gold_sets = _record_sets(gold, spec, i)
        test_sets = _record_sets(test, spec, i) if test else {k: set() for k in gold_sets}
        add_sets(ent, links, gold_sets, test_sets)
    n = counts["n_scored"]
    if n == 0:
        raise _fail(-1, "no output left to score (exact match divides by zero)")
    metrics = entity_metrics(ent, links, undefined_without_prediction=True)
    metrics["similarity"] = ratio(sum(sims), n, "mean Jaro-Winkler (long tolerance) over scored abstracts")
    metrics["exact_match"] = ratio(exact, n, "exact record-list matches / scored abstracts")
    metrics["parsable"] = ratio(
        n - counts["n_unparsable"], counts["n_annotated"],
        "outputs parsed to a non-empty answer / annotated abstracts (the script's count_parsable)",
    )
    return {"metrics": metrics, "counts": counts}


# ----------------------------------------------------------------------------------------- discomat


def _binary_label(value: Any, example: int, key: str) -> int:
    if isinstance(value, bool) or (isinstance(value, int | float) and value in (0, 1)):
        return int(value)
    raise _fail(example, f"{key} label {value!r} is not 0/1 (sklearn's binary f1_score raises)")


def score_discomat_llamat(
    golds: Sequence[dict[str, Any]], outputs: Sequence[Any], *, split_token: str | None = None
) -> dict[str, Any]:
    """DiSCoMaT scores as ``discomat_eval.py`` computes them for the LLaMat model column."""
    counts = {"n_examples": len(golds), "n_scored": 0, "n_unparsable": 0}
    exact = 0
    table = {k: PRF() for k in ("comp_table", "regex_table")}
    groups = {
        "gid": (("gid_row_index", "gid_col_index"), False),
        "composition": (("composition_row_index", "composition_col_index"), True),
        "chemical": (("chemical_row_index", "chemical_col_index"), True),
    }
    hits = {g: PRF() for g in groups}
    for i, (gold, text) in enumerate(zip(golds, outputs, strict=True)):
        pred = parse_llamat("discomat", text, split_token)
        if pred is _MISSING:
            counts["n_unparsable"] += 1
            continue
        counts["n_scored"] += 1
        exact += int(pred == gold)
        for key in table:
            try:
                flag = pred[key][0]
            except Exception:  # the script predicts 0 when the lookup fails
                flag = 0
            got = _binary_label(flag, i, key)
            want = gold[key][0]
            table[key] += PRF(int(want == 1 and got == 1), int(want != 1 and got == 1), int(want == 1 and got != 1))
        if type(pred) is not dict:
            continue  # the script scores index lists of dict answers only
        for group, (keys, sort) in groups.items():
            for key in keys:
                if key not in gold:
                    continue
                value = pred.get(key, [])
                if sort:
                    try:
                        match = sorted(value) == sorted(gold[key])
                    except TypeError as exc:
                        raise _fail(i, f"{key} {value!r} cannot be sorted ({exc})") from None
                else:
                    match = value == gold[key]
                hits[group] += PRF(int(match), 0, int(not match))
    n = counts["n_scored"]
    if n == 0:
        raise _fail(-1, "no output left to score (sklearn's f1_score gets empty inputs)")
    metrics: dict[str, Rate] = {"exact_match": ratio(exact, n, "exact dict matches / parsed tables")}
    for key, prf in table.items():
        metrics[f"{key}_f1"] = prf.rates(key)["f1"]
    for group, prf in hits.items():
        if prf.tp + prf.fn == 0:
            raise _fail(-1, f"no gold {group} indices among the parsed dict answers (f1_score on empty lists)")
        metrics[f"{group}_f1"] = prf.rates(group)["f1"]
    metrics["parsable"] = ratio(n, counts["n_examples"], "parsed / tables")
    return {"metrics": metrics, "counts": counts}


# ------------------------------------------------------------------------------------------ dispatch


def score_llamat(
    spec: TaskSpec, golds: Sequence[Any], outputs: Sequence[Any], *, split_token: str | None = None
) -> dict[str, Any]:
    """LLaMat-protocol scores of raw outputs, or ``{"error": ...}`` where the script would raise.

    Args:
        spec: The task.
        golds: Gold answers, in file order.
        outputs: Raw model outputs (text), aligned with ``golds``.
        split_token: End marker to cut at (default: LLaMat-3's, per task; ``"\\n an"`` for LLaMat-2).

    Returns:
        ``{"metrics": {...Rate...}, "counts": {...}, "protocol": PROTOCOL_NOTE}``, or
        ``{"error": reason, "metrics": {}, "protocol": PROTOCOL_NOTE}``.
    """
    if len(golds) != len(outputs):
        raise ValueError(f"{len(golds)} gold answers but {len(outputs)} outputs")
    try:
        if spec.kind == "doping":
            record = score_doping_llamat(golds, outputs, split_token=split_token)
        elif spec.kind == "entities":
            record = score_entities_llamat(golds, outputs, spec, split_token=split_token)
        elif spec.kind == "discomat":
            record = score_discomat_llamat(golds, outputs, split_token=split_token)
        else:
            raise ValueError(f"unknown task kind {spec.kind!r}")
    except ReferenceScriptError as exc:
        return {"error": str(exc), "metrics": {}, "protocol": PROTOCOL_NOTE}
    record["protocol"] = PROTOCOL_NOTE
    return record


__all__ = [
    "PROTOCOL_NOTE",
    "ReferenceScriptError",
    "SPLIT_TOKENS",
    "is_empty_answer",
    "parse_llamat",
    "score_discomat_llamat",
    "score_doping_llamat",
    "score_entities_llamat",
    "score_llamat",
]
