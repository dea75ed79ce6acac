"""Scores with the counts they come from: :class:`Rate`, :class:`PRF` and the helpers every task shares.

The definitions of the task metrics are in :mod:`llamat_cif.text_tasks.metrics`; this module holds
what all of them (and the ``llamat`` protocol of :mod:`llamat_cif.text_tasks.reference`) are built
from: a rate with its numerator and denominator, true/false positive counts with P/R/F1, link
precision/recall/F1 from counts, Jaro-Winkler similarity, and the text of an answer value.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import jellyfish


@dataclass(frozen=True)
class Rate:
    """A score with the counts it comes from.

    Attributes:
        value: The score (``None`` when undefined, e.g. nothing retrieved).
        numerator: Count above the line (for F1: 2 TP).
        denominator: Count below the line (for F1: 2 TP + FP + FN).
        note: What the denominator counts.
    """

    value: float | None
    numerator: float
    denominator: float
    note: str = ""

    def as_dict(self) -> dict[str, Any]:
        """Plain dict for JSON."""
        return asdict(self)


def ratio(numerator: float, denominator: float, note: str = "") -> Rate:
    """``numerator / denominator``; 0 when the denominator is 0 (a strict, defined default)."""
    value = numerator / denominator if denominator else 0.0
    return Rate(value, numerator, denominator, note)


@dataclass(frozen=True)
class PRF:
    """True/false positive and false negative counts with derived precision, recall and F1."""

    tp: int = 0
    fp: int = 0
    fn: int = 0

    def __add__(self, other: PRF) -> PRF:
        return PRF(self.tp + other.tp, self.fp + other.fp, self.fn + other.fn)

    @property
    def precision(self) -> float:
        """TP / (TP + FP), 0 when nothing was predicted."""
        return self.tp / (self.tp + self.fp) if self.tp + self.fp else 0.0

    @property
    def recall(self) -> float:
        """TP / (TP + FN), 0 when there is no gold."""
        return self.tp / (self.tp + self.fn) if self.tp + self.fn else 0.0

    @property
    def f1(self) -> float:
        """TP / (TP + (FP + FN) / 2) (= harmonic mean of P and R); 0 when TP is 0."""
        return 2 * self.tp / (2 * self.tp + self.fp + self.fn) if self.tp else 0.0

    def rates(self, what: str) -> dict[str, Rate]:
        """Precision, recall and F1 as :class:`Rate` objects with their counts."""
        return {
            "precision": Rate(self.precision, self.tp, self.tp + self.fp, f"{what}: TP/(TP+FP)"),
            "recall": Rate(self.recall, self.tp, self.tp + self.fn, f"{what}: TP/(TP+FN)"),
            "f1": Rate(self.f1, 2 * self.tp, 2 * self.tp + self.fp + self.fn, f"{what}: 2TP/(2TP+FP+FN)"),
        }


def triplet_rates(n_correct: int, n_pred: int, n_gold: int) -> dict[str, Rate]:
    """Link precision n_correct/n_pred, recall n_correct/n_gold, F1 (0 when either is 0)."""
    p = n_correct / n_pred if n_pred else 0.0
    r = n_correct / n_gold if n_gold else 0.0
    f1 = 2 * p * r / (p + r) if p and r else 0.0
    return {
        "precision": Rate(p, n_correct, n_pred, "links: correct / predicted triplets"),
        "recall": Rate(r, n_correct, n_gold, "links: correct / gold triplets"),
        "f1": Rate(f1, 2 * n_correct, n_pred + n_gold, "links: 2 correct / (predicted + gold)"),
    }


def jaro_winkler(gold: str, pred: str, *, long_tolerance: bool = False) -> float:
    """Jaro-Winkler similarity (jellyfish), as LLaMat computes it on ``str()`` of the structures."""
    return float(jellyfish.jaro_winkler_similarity(gold, pred, long_tolerance=long_tolerance))


def count_scored(counts: dict[str, Any], pred: Any, *, skip_unparsable: bool) -> bool:
    """Count one annotated example (``n_annotated``, ``n_unparsable``, ``n_scored``); False: leave it out.

    An unparsable output (``pred`` None) is scored as an empty prediction unless ``skip_unparsable``.
    """
    counts["n_annotated"] += 1
    if pred is None:
        counts["n_unparsable"] += 1
        if skip_unparsable:
            return False
    counts["n_scored"] += 1
    return True


def as_text(value: Any) -> str:
    """An answer value as text: strings as they are, lists joined by spaces, None as ``""``."""
    if isinstance(value, str):
        return value
    if isinstance(value, list | tuple):
        return " ".join(as_text(v) for v in value)
    return "" if value is None else str(value)


__all__ = ["PRF", "Rate", "as_text", "count_scored", "jaro_winkler", "ratio", "triplet_rates"]
