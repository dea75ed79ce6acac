"""Generation metrics: validity, CDVAE coverage (also per element), property distances, CSP, S.U.N.

Each metric is a small function with keyword-only thresholds returning a
:class:`~llamat_cif.metrics.metric.Metric` (value, numerator, denominator and its name, protocol).
:func:`~llamat_cif.metrics.run.run_benchmark` runs them all on a generation run folder and writes
``metrics.json`` and ``report.md`` (``llamat-cif benchmark``).
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
