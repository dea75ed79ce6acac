"""The value every metric function returns: a number with its counts, denominator and protocol.

Also :func:`json_default`, how the benchmark's JSON files write numpy scalars and paths.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np


@dataclass(frozen=True)
class Metric:
    """One metric value with the counts behind it.

    Rates carry ``numerator`` / ``denominator`` and name the denominator (``generated``, ``parsed``,
    ``valid``, ``reference``...): papers in this field silently disagree about it. Distances
    (Wasserstein, RMSE) have no numerator; their sample sizes go in ``counts``.

    Attributes:
        name: metric name as written to ``metrics.json``.
        value: the number (None when undefined, e.g. an empty denominator).
        numerator: count of successes for a rate, else None.
        denominator: size of the set the rate is taken over, else None.
        denominator_name: what the denominator counts.
        unit: unit of ``value`` ("fraction", "g/cm^3", "eV/atom", "A"...).
        counts: other sample sizes (e.g. ``{"generated": 9000, "reference": 7342}``).
        protocol: thresholds and choices that define the number.
    """

    name: str
    value: float | None
    numerator: int | None = None
    denominator: int | None = None
    denominator_name: str | None = None
    unit: str = "fraction"
    counts: dict[str, int] = field(default_factory=dict)
    protocol: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (NaN/inf become None so the file stays valid JSON)."""
        d = asdict(self)
        v = d["value"]
        if v is not None and not math.isfinite(float(v)):
            d["value"] = None
        elif v is not None:
            d["value"] = float(v)
        return d

    def __str__(self) -> str:
        v = "n/a" if self.value is None else f"{self.value:.4g}"
        if self.numerator is not None and self.denominator is not None:
            return f"{self.name} = {v} ({self.numerator}/{self.denominator} {self.denominator_name})"
        return f"{self.name} = {v} {self.unit}"


def rate(name: str, numerator: int, denominator: int, denominator_name: str, **kwargs: Any) -> Metric:
    """A rate ``numerator / denominator`` (None when the denominator is 0)."""
    value = numerator / denominator if denominator else None
    return Metric(name, value, int(numerator), int(denominator), denominator_name, **kwargs)


def json_default(o: Any) -> Any:
    """``json.dumps`` fallback of the benchmark's files: numpy scalars as numbers, anything else as text."""
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    if isinstance(o, (np.bool_,)):
        return bool(o)
    if isinstance(o, Path):
        return str(o)
    return str(o)
