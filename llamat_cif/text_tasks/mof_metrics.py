"""mof1 / mof2 scores (Dunn et al. 2022 scheme, LLaMat ``mof1_eval.py`` / ``mof2_eval.py``).

Per entity type, the set of words over all records of an answer; TP = |gold & pred|,
FN = |gold - pred|, FP = |pred - gold|, micro-summed over abstracts. Links: for every record whose
root (``formula`` for mof1, ``name_of_mof`` for mof2) is a non-empty string, the set of
``root|||word`` pairs for each other entity type (the full definitions, and how unparsable outputs
count, are in :mod:`llamat_cif.text_tasks.metrics`). The tallies (:func:`empty_tallies`,
:func:`add_sets`) and :func:`entity_metrics` serve the ``llamat`` protocol too
(:mod:`llamat_cif.text_tasks.reference`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from llamat_cif.text_tasks.rates import (
    PRF,
    Rate,
    as_text,
    count_scored,
    jaro_winkler,
    ratio,
    triplet_rates,
)
from llamat_cif.text_tasks.tasks import TaskSpec

LINK_DELIMITER = "|||"


def entity_words(text: str) -> list[str]:
    """Words of one entity string: split on spaces, stripped, blanks dropped."""
    return [w for w in (p.strip() for p in text.split(" ")) if w]


def entity_word_sets(records: Sequence[dict[str, Any]], spec: TaskSpec) -> dict[str, set[str]]:
    """Word sets per entity type and ``root|||word`` link sets per ``root|||type``.

    The root (``formula`` / ``name_of_mof``) links as one whole string, only when it is a
    non-empty string; self-links (a word equal to the root) are left out.
    """
    non_root = [k for k in spec.entity_keys if k != spec.root_key]
    out: dict[str, set[str]] = {k: set() for k in list(spec.entity_keys) + link_keys(spec)}
    for rec in records:
        for key in spec.entity_keys:
            for text in _strings(rec.get(key, "")):
                out[key].update(entity_words(text))
        root = rec.get(spec.root_key, "")
        if not (isinstance(root, str) and root):
            continue
        for key in non_root:
            words = [w for text in _strings(rec.get(key, "")) for w in entity_words(text)]
            out[f"{spec.root_key}{LINK_DELIMITER}{key}"].update(
                f"{root}{LINK_DELIMITER}{w}" for w in words if w != root
            )
    return out


def _strings(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value] if value else []
    if isinstance(value, list):
        return [v for v in value if isinstance(v, str) and v]
    return []


def set_counts(gold: set[str], pred: set[str]) -> PRF:
    """TP = |gold & pred|, FP = |pred - gold|, FN = |gold - pred|."""
    tp = len(gold & pred)
    return PRF(tp, len(pred) - tp, len(gold) - tp)


def link_keys(spec: TaskSpec) -> list[str]:
    """The task's link types, ``root|||type`` for every entity type other than the root."""
    return [f"{spec.root_key}{LINK_DELIMITER}{k}" for k in spec.entity_keys if k != spec.root_key]


def empty_tallies(spec: TaskSpec) -> tuple[dict[str, PRF], dict[str, list[int]]]:
    """Zero word counts per entity type and zero ``[correct, predicted, gold]`` per link type."""
    return {k: PRF() for k in spec.entity_keys}, {k: [0, 0, 0] for k in link_keys(spec)}


def add_sets(ent: dict[str, PRF], links: dict[str, list[int]], gold_sets: dict[str, set[str]],
             pred_sets: dict[str, set[str]]) -> None:
    """Add one answer's word and link sets (:func:`entity_word_sets`) to the running tallies, in place."""
    for key in ent:
        ent[key] += set_counts(gold_sets[key], pred_sets[key])
    for key, (c, n_p, n_g) in links.items():
        links[key] = [c + len(gold_sets[key] & pred_sets[key]), n_p + len(pred_sets[key]), n_g + len(gold_sets[key])]


def normalize_records(pred: Any, spec: TaskSpec) -> list[dict[str, Any]]:
    """Predicted records in the task's schema, as LLaMat prepares them before scoring.

    Non-dict items are dropped, absent keys are filled (``""`` for string keys, ``[""]`` for
    list keys), keys outside the schema are removed, non-string scalars become strings.
    """
    if not isinstance(pred, list):
        return []
    out = []
    for rec in pred:
        if not isinstance(rec, dict):
            continue
        clean: dict[str, Any] = {}
        for key in spec.entity_keys:
            val = rec.get(key, "" if key in spec.string_keys else [""])
            if isinstance(val, list):
                val = [v if isinstance(v, str) else as_text(v) for v in val]
            elif not isinstance(val, str):
                val = as_text(val)
            clean[key] = val
        out.append(clean)
    return out


def records_equivalent(gold: Sequence[dict[str, Any]], pred: Sequence[dict[str, Any]]) -> bool:
    """LLaMat exact match: records sorted by ``formula`` (stable), keys sorted, ``str()`` equal."""

    def canon(records: Sequence[dict[str, Any]]) -> str:
        ordered = sorted(records, key=lambda r: str(r.get("formula", "")))
        return str([dict(sorted(r.items())) for r in ordered])

    return canon(gold) == canon(pred)


def entity_metrics(
    ent: dict[str, PRF], links: dict[str, list[int]], *, undefined_without_prediction: bool = False
) -> dict[str, Rate]:
    """Word precision/recall/F1 per entity type and F1 per link type (``link:root->type_f1``).

    Args:
        ent: word counts per entity type.
        links: ``[correct, predicted, gold]`` link counts per ``root|||type``.
        undefined_without_prediction: a link F1 is undefined (``None``) when nothing was predicted
            as well as when there is no gold link (LLaMat's scripts); default: only without gold.
    """
    metrics: dict[str, Rate] = {}
    for key, prf in ent.items():
        for name, rate in prf.rates(f"{key} words").items():
            metrics[f"{key}_{name}"] = rate
    for key, (c, n_p, n_g) in links.items():
        short = key.replace(LINK_DELIMITER, "->")
        if n_g == 0 or (undefined_without_prediction and n_p == 0):
            why = "no predicted or no gold links" if undefined_without_prediction else "no gold links"
            metrics[f"link:{short}_f1"] = Rate(None, 2 * c, n_p + n_g, f"undefined: {why}")
            continue
        rates = triplet_rates(c, n_p, n_g)
        metrics[f"link:{short}_f1"] = Rate(rates["f1"].value, 2 * c, n_p + n_g,
                                           f"links {short}: P={rates['precision'].value:.3f} R={rates['recall'].value:.3f}")
    return metrics


def score_entities(
    golds: Sequence[list[dict[str, Any]]],
    preds: Sequence[Any | None],
    spec: TaskSpec,
    *,
    skip_unparsable: bool = False,
) -> dict[str, Any]:
    """mof1 / mof2 scores over abstracts with at least one gold record.

    Args:
        golds: Gold record lists.
        preds: Parsed predictions (lists of records), ``None`` where unparsable.
        spec: The task (entity keys and root).
        skip_unparsable: Leave unparsable outputs out instead of scoring them as empty
            predictions (a variant, not LLaMat's numbers).

    Returns:
        ``{"metrics": {...}, "counts": {...}}``; ``parsable`` counts outputs that parsed to a
        non-empty record list, as LLaMat's mof scripts do.
    """
    ent, links = empty_tallies(spec)
    counts = {"n_examples": len(golds), "n_annotated": 0, "n_scored": 0, "n_unparsable": 0, "n_empty_pred": 0}
    sims: list[float] = []
    exact = 0
    empty_gold = {"n": 0, "pred_empty": 0, "pred_nonempty": 0, "unparsable": 0}
    for gold, pred in zip(golds, preds, strict=True):
        if gold == []:
            empty_gold["n"] += 1
            key = "unparsable" if pred is None else ("pred_nonempty" if normalize_records(pred, spec) else "pred_empty")
            empty_gold[key] += 1
            continue
        if not count_scored(counts, pred, skip_unparsable=skip_unparsable):
            continue
        norm = normalize_records(pred, spec)
        if pred is not None and not norm:
            counts["n_empty_pred"] += 1
        gold_sets = entity_word_sets(gold, spec)
        pred_sets = entity_word_sets(norm, spec)
        add_sets(ent, links, gold_sets, pred_sets)
        sims.append(0.0 if pred is None else jaro_winkler(str(gold), str(pred), long_tolerance=True))
        exact += int(pred is not None and records_equivalent(normalize_records(gold, spec), norm))
    n = counts["n_scored"]
    metrics = entity_metrics(ent, links)
    metrics["similarity"] = ratio(sum(sims), n, "mean Jaro-Winkler over scored abstracts")
    metrics["exact_match"] = ratio(exact, n, "exact record-list matches / scored abstracts")
    metrics["parsable"] = ratio(
        counts["n_annotated"] - counts["n_unparsable"] - counts["n_empty_pred"],
        counts["n_annotated"],
        "outputs parsed to >=1 record / annotated abstracts",
    )
    counts["empty_gold"] = empty_gold
    return {"metrics": metrics, "counts": counts}


__all__ = ["LINK_DELIMITER", "add_sets", "empty_tallies", "entity_metrics", "entity_word_sets", "entity_words",
           "link_keys", "normalize_records", "records_equivalent", "score_entities", "set_counts"]
