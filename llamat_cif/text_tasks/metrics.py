"""SIE metrics as LLaMat defines them (M3RG-IITD/llamat, ``evaluation_codes/*_eval.py``).

Our own implementation of the published definitions, one small function per idea. The doping and
discomat scores and :func:`score_task` (the dispatch) live here, the mof1 / mof2 scores in
:mod:`llamat_cif.text_tasks.mof_metrics`, and the score types they return (:class:`Rate`, ``PRF``)
in :mod:`llamat_cif.text_tasks.rates`:

doping (Cruse et al. 2022 scheme, LLaMat ``doping_eval.py``)
    Word-level scores for ``basemats`` and ``dopants``: each entity dict's values are joined with
    spaces and split into words (duplicates kept). A gold word is a true positive when it appears
    among the predicted words (else a false negative); a predicted word absent from the gold words
    is a false positive. F1 = TP / (TP + (FP + FN) / 2), summed over sentences (micro).
    Link triplets: for every dopant -> base-material link, every (base word, dopant word) pair.
    Jaro-Winkler similarity between ``str()`` of the gold and predicted dicts (the prediction with
    missing keys added as ``[]``) and exact match of the predicted dict with the gold one.
    Only sentences with at least one annotation are scored; the others are reported apart.

mof1 / mof2 (Dunn et al. 2022 scheme, LLaMat ``mof1_eval.py`` / ``mof2_eval.py``)
    Per entity type, the set of words over all records of an answer; TP = |gold & pred|,
    FN = |gold - pred|, FP = |pred - gold|, micro-summed over abstracts. Links: for every record
    whose root (``formula`` for mof1, ``name_of_mof`` for mof2) is a non-empty string, the set of
    ``root|||word`` pairs for each other entity type; precision/recall over the pooled sets, F1 0
    when nothing is correct. LLaMat leaves a link type out when either side retrieved nothing; here
    it is undefined only without gold links (no predicted links against gold links scores 0, so
    an empty output cannot dodge the score). Exact match compares
    the records sorted by ``formula`` with keys sorted; predictions get missing keys filled (``""``
    or ``[""]``) and extra keys removed first. Jaro-Winkler uses ``long_tolerance``.

discomat (Gupta et al. 2022, LLaMat ``discomat_eval.py``)
    Exact match of the predicted dict; binary F1 of ``comp_table`` and ``regex_table`` (a missing
    key predicts 0); for ``gid`` (material-id row/column, compared as lists), ``composition`` and
    ``chemical`` (row and column index lists, compared sorted) one positive per gold key present,
    predicted positive when the prediction matches; F1 over those.

Unparsable outputs. LLaMat's scripts treat them unevenly (the doping and discomat scripts drop
them, mof2 keeps them as empty predictions, mof1 drops JSON failures). Here (protocol ``strict``)
every score has one strict denominator: an unparsable output is scored as an empty prediction with
similarity 0, and the unparsable count is reported beside it. ``skip_unparsable=True`` is a
variant that leaves unparsable outputs out; it still parses tolerantly, so it is *not* LLaMat's
numbers: those come from :mod:`llamat_cif.text_tasks.reference` (protocol ``llamat``), which
reproduces the scripts' own parsing and rules.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from llamat_cif.text_tasks.mof_metrics import score_entities
from llamat_cif.text_tasks.rates import (
    PRF,
    Rate,
    as_text,
    count_scored,
    jaro_winkler,
    ratio,
    triplet_rates,
)
from llamat_cif.text_tasks.tasks import DOPING_KEYS, TaskSpec

# ----------------------------------------------------------------------------------------- doping


def doping_words(entities: dict[str, str]) -> list[str]:
    """Words of an entity dict: values joined by spaces, split on spaces, blanks dropped."""
    return [w for w in " ".join(entities.values()).split(" ") if w]


def word_counts(gold_words: Sequence[str], pred_words: Sequence[str]) -> PRF:
    """LLaMat doping word matching (lists, duplicates counted).

    >>> word_counts(["Eu", "YVO4"], ["Eu", "Eu", "Y"])
    PRF(tp=1, fp=1, fn=1)
    """
    pred_set, gold_set = set(pred_words), set(gold_words)
    tp = sum(1 for w in gold_words if w in pred_set)
    fn = len(gold_words) - tp
    fp = sum(1 for w in pred_words if w not in gold_set)
    return PRF(tp, fp, fn)


def doping_triplets(entry: dict[str, Any]) -> list[str]:
    """``"<base word> <dopant word>"`` for every word pair of every dopant -> base link.

    Links naming an id absent from ``basemats``/``dopants`` are skipped, as in LLaMat.
    """
    out: list[str] = []
    for did, bids in entry.get("dopants2basemats", {}).items():
        for bid in bids:
            base = entry.get("basemats", {}).get(bid)
            dopant = entry.get("dopants", {}).get(did)
            if base is None or dopant is None:
                continue
            out += [f"{b} {d}" for b in base.split(" ") for d in dopant.split(" ") if b and d]
    return out


def triplet_counts(gold: Sequence[str], pred: Sequence[str]) -> tuple[int, int, int]:
    """``(n_correct, n_pred, n_gold)``: gold triplets (with repeats) found among the predicted."""
    pred_set = set(pred)
    return sum(1 for t in gold if t in pred_set), len(pred), len(gold)


def normalize_doping(pred: Any) -> dict[str, Any]:
    """A predicted doping dict reduced to the typed shape the metrics read.

    Entity values become strings (lists joined), an entity list becomes a dict keyed by position,
    link targets become lists of string ids, anything else becomes empty.
    """
    pred = pred if isinstance(pred, dict) else {}
    out: dict[str, Any] = {}
    for key in ("basemats", "dopants"):
        ents = pred.get(key, {})
        if isinstance(ents, list):
            ents = {str(i): v for i, v in enumerate(ents)}
        out[key] = {str(k): as_text(v) for k, v in ents.items()} if isinstance(ents, dict) else {}
    links = pred.get("dopants2basemats", {})
    norm_links: dict[str, list[str]] = {}
    if isinstance(links, dict):
        for did, bids in links.items():
            bids = bids if isinstance(bids, list) else [bids]
            norm_links[str(did)] = [str(b) for b in bids if b is not None]
    out["dopants2basemats"] = norm_links
    return out


def score_doping(golds: Sequence[dict[str, Any]], preds: Sequence[Any | None], *,
                 skip_unparsable: bool = False) -> dict[str, Any]:
    """Doping scores over annotated sentences, plus a separate count for unannotated ones.

    Args:
        golds: Gold answers (dicts with ``basemats``, ``dopants``, ``dopants2basemats``).
        preds: Parsed predictions, ``None`` where the output was unparsable.
        skip_unparsable: Leave unparsable outputs out of every score instead of scoring them as
            empty predictions with similarity 0 (a variant; LLaMat's own numbers come from
            :func:`llamat_cif.text_tasks.reference.score_llamat`).

    Returns:
        ``{"metrics": {...Rate...}, "counts": {...}}``.
    """
    counts = {"n_examples": len(golds), "n_annotated": 0, "n_scored": 0, "n_unparsable": 0}
    totals = {k: PRF() for k in ("basemats", "dopants")}
    trip = [0, 0, 0]
    sims: list[float] = []
    exact = 0
    empty_gold = {"n": 0, "pred_empty": 0, "pred_nonempty": 0, "unparsable": 0}
    for gold, pred in zip(golds, preds, strict=True):
        if all(not gold.get(k) for k in DOPING_KEYS):
            empty_gold["n"] += 1
            if pred is None:
                empty_gold["unparsable"] += 1
            elif any(normalize_doping(pred)[k] for k in DOPING_KEYS):
                empty_gold["pred_nonempty"] += 1
            else:
                empty_gold["pred_empty"] += 1
            continue
        if not count_scored(counts, pred, skip_unparsable=skip_unparsable):
            continue
        norm = normalize_doping(pred)
        for key in totals:
            totals[key] += word_counts(doping_words(gold[key]), doping_words(norm[key]))
        c, n_p, n_g = triplet_counts(doping_triplets(gold), doping_triplets(norm))
        trip = [trip[0] + c, trip[1] + n_p, trip[2] + n_g]
        if pred is None:
            sims.append(0.0)
            continue
        # LLaMat compares str() of the prediction after adding absent keys as empty lists.
        filled = dict(pred)
        for key in DOPING_KEYS:
            filled.setdefault(key, [])
        sims.append(jaro_winkler(str(gold), str(filled)))
        exact += int(pred == gold)
    n = counts["n_scored"]
    metrics: dict[str, Rate] = {}
    for key, prf in totals.items():
        for name, rate in prf.rates(f"{key} words").items():
            metrics[f"{key}_{name}"] = rate
    for name, rate in triplet_rates(*trip).items():
        metrics[f"triplets_{name}"] = rate
    metrics["similarity"] = ratio(sum(sims), n, "mean Jaro-Winkler over scored sentences")
    metrics["exact_match"] = ratio(exact, n, "exact dict matches / scored sentences")
    metrics["parsable"] = ratio(
        counts["n_annotated"] - counts["n_unparsable"], counts["n_annotated"], "parsed / annotated sentences"
    )
    counts["empty_gold"] = empty_gold
    return {"metrics": metrics, "counts": counts}


# ----------------------------------------------------------------------------------------- discomat

DISCOMAT_GROUPS: dict[str, tuple[tuple[str, ...], bool]] = {
    # group -> (answer keys, compare sorted?) ; LLaMat compares material-id indices as given
    "gid": (("gid_row_index", "gid_col_index"), False),
    "composition": (("composition_row_index", "composition_col_index"), True),
    "chemical": (("chemical_row_index", "chemical_col_index"), True),
}


def binary_counts(y_true: Sequence[int], y_pred: Sequence[int]) -> PRF:
    """Counts for the positive class 1 (sklearn ``f1_score`` semantics)."""
    tp = sum(1 for t, p in zip(y_true, y_pred, strict=True) if t == 1 and p == 1)
    fp = sum(1 for t, p in zip(y_true, y_pred, strict=True) if t != 1 and p == 1)
    fn = sum(1 for t, p in zip(y_true, y_pred, strict=True) if t == 1 and p != 1)
    return PRF(tp, fp, fn)


def table_flag(pred: dict[str, Any] | None, key: str) -> int:
    """The 0/1 flag a prediction gives for ``comp_table``/``regex_table`` (absent -> 0)."""
    if not isinstance(pred, dict):
        return 0
    val = pred.get(key)
    if isinstance(val, list):
        val = val[0] if val else 0
    return 1 if val == 1 else 0


def index_match(gold: list[int], pred: Any, *, sort: bool) -> bool:
    """Whether a predicted index list equals the gold one (absent/invalid -> no match)."""
    if not isinstance(pred, list):
        return False
    if not sort:
        return pred == gold
    try:
        return sorted(pred) == sorted(gold)
    except TypeError:  # mixed types in the prediction
        return False


def score_discomat(golds: Sequence[dict[str, Any]], preds: Sequence[Any | None], *,
                   skip_unparsable: bool = False) -> dict[str, Any]:
    """DiSCoMaT scores: exact match, table-type F1s and row/column F1s.

    Args:
        golds: Gold answer dicts.
        preds: Parsed prediction dicts, ``None`` where unparsable.
        skip_unparsable: Leave unparsable outputs out instead of scoring them as empty
            predictions (a variant, not LLaMat's numbers).
    """
    counts = {"n_examples": len(golds), "n_scored": 0, "n_unparsable": 0}
    exact = 0
    y: dict[str, tuple[list[int], list[int]]] = {k: ([], []) for k in ("comp_table", "regex_table", *DISCOMAT_GROUPS)}
    for gold, pred in zip(golds, preds, strict=True):
        if pred is None:
            counts["n_unparsable"] += 1
            if skip_unparsable:
                continue
        counts["n_scored"] += 1
        exact += int(pred == gold)
        for key in ("comp_table", "regex_table"):
            y[key][0].append(gold[key][0])
            y[key][1].append(table_flag(pred, key))
        p = pred if isinstance(pred, dict) else {}
        for group, (keys, sort) in DISCOMAT_GROUPS.items():
            for key in keys:
                if key in gold:
                    y[group][0].append(1)
                    y[group][1].append(int(index_match(gold[key], p.get(key, []), sort=sort)))
    metrics: dict[str, Rate] = {}
    metrics["exact_match"] = ratio(exact, counts["n_scored"], "exact dict matches / scored tables")
    for key, (t, p) in y.items():
        metrics[f"{key}_f1"] = binary_counts(t, p).rates(key)["f1"]
    metrics["parsable"] = ratio(counts["n_examples"] - counts["n_unparsable"], counts["n_examples"], "parsed / tables")
    return {"metrics": metrics, "counts": counts}


# ------------------------------------------------------------------------------------------ dispatch


def score_task(
    spec: TaskSpec,
    golds: Sequence[Any],
    preds: Sequence[Any | None],
    *,
    skip_unparsable: bool = False,
) -> dict[str, Any]:
    """Score parsed predictions against gold answers with the task's LLaMat metrics."""
    if len(golds) != len(preds):
        raise ValueError(f"{len(golds)} gold answers but {len(preds)} predictions")
    if spec.kind == "doping":
        return score_doping(golds, preds, skip_unparsable=skip_unparsable)
    if spec.kind == "entities":
        return score_entities(golds, preds, spec, skip_unparsable=skip_unparsable)
    if spec.kind == "discomat":
        return score_discomat(golds, preds, skip_unparsable=skip_unparsable)
    raise ValueError(f"unknown task kind {spec.kind!r}")


HEADLINE: dict[str, tuple[str, ...]] = {
    # The columns LLaMat's papers report for each task.
    "doping": ("basemats_f1", "dopants_f1", "triplets_f1", "similarity", "exact_match", "parsable"),
    "mof1": ("name_f1", "formula_f1", "acronym_f1", "description_f1", "structure_or_phase_f1", "applications_f1", "exact_match", "parsable"),
    "mof2": ("name_of_mof_f1", "mof_formula_f1", "mof_description_f1", "guest_species_f1", "applications_f1", "exact_match", "parsable"),
    "discomat": ("comp_table_f1", "regex_table_f1", "composition_f1", "chemical_f1", "gid_f1", "exact_match", "parsable"),
}

__all__ = [
    "DISCOMAT_GROUPS",
    "HEADLINE",
    "binary_counts",
    "doping_triplets",
    "doping_words",
    "index_match",
    "normalize_doping",
    "score_discomat",
    "score_doping",
    "score_task",
    "table_flag",
    "triplet_counts",
    "word_counts",
]
