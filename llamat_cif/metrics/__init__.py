"""Generation metrics: validity, CDVAE coverage (also per element), property distances, CSP, S.U.N.

Each metric is a small function with keyword-only thresholds returning a
:class:`~llamat_cif.metrics.metric.Metric` (value, numerator, denominator and its name, protocol).
:func:`~llamat_cif.metrics.run.run_benchmark` runs them all on a generation run folder and writes
``metrics.json`` and ``report.md`` (``llamat-cif benchmark``).

Where things live:

* the metrics: ``validity``, ``fingerprints`` + ``coverage`` + ``elements`` (CDVAE coverage, per
  element), ``properties`` + ``distribution`` (property distances, LeMat-GenBench families),
  ``diversity`` (uniqueness and novelty as generated), ``matching`` (StructureMatcher presets,
  duplicates), ``sun`` (stable, unique, novel), ``stability_metrics``, ``csp``, ``cdvae`` (CDVAE's
  own protocol);
* the benchmark command: ``config`` (its settings), ``sources`` (inputs), ``run`` (the stages in
  order), ``benchmark_coverage`` and ``benchmark_stability`` (its two long stages), ``report`` +
  ``figures``, ``compare`` (several generators), ``baseline`` (a non-learned generator).
"""

from llamat_cif.metrics.coverage import (
    COVERAGE_CUTOFFS,
    coverage,
    cutoffs_for,
    scale_composition,
)
from llamat_cif.metrics.csp import csp_match
from llamat_cif.metrics.elements import per_element_coverage
from llamat_cif.metrics.fingerprints import Fingerprints, compute_fingerprints
from llamat_cif.metrics.metric import Metric, rate
from llamat_cif.metrics.properties import structure_table, wasserstein

__all__ = [
    "COVERAGE_CUTOFFS",
    "Fingerprints",
    "Metric",
    "compute_fingerprints",
    "coverage",
    "csp_match",
    "cutoffs_for",
    "per_element_coverage",
    "rate",
    "scale_composition",
    "structure_table",
    "wasserstein",
]
