"""Validity suite for generated crystals: parse, structure, composition, self-consistency, conditions.

Library API::

    validate_one(text, fmt=None, target_formula=None, target_spacegroup=None, **thresholds) -> dict
    validate_table(df, n_jobs=1, timeout_s=30.0, **thresholds) -> (rows DataFrame, summary dict)
    run_validation(input_path, out_dir, **opts) -> summary dict   (writes validity.parquet and
                                                                   validity_summary.json)

The checks are small functions with keyword-only thresholds, each returning a
:class:`CheckResult` with its reason: :func:`structural_validity` and
:func:`compositional_validity` (CDVAE), :func:`self_consistency` (CrystaLLM),
:func:`condition_adherence`.
"""

from llamat_cif.validators.composition import OXIDATION_STATE_SETS, compositional_validity
from llamat_cif.validators.conditions import condition_adherence
from llamat_cif.validators.consistency import bond_length_score, detect_spacegroup, self_consistency
from llamat_cif.validators.core import COLUMNS, Thresholds, validate_one
from llamat_cif.validators.parse import Parsed, parse_text
from llamat_cif.validators.result import CheckResult
from llamat_cif.validators.run import ROWS_FILE, SUMMARY_FILE, run_validation, validate_table
from llamat_cif.validators.structural import min_interatomic_distance, structural_validity

__all__ = [
    "COLUMNS",
    "OXIDATION_STATE_SETS",
    "CheckResult",
    "Parsed",
    "Thresholds",
    "bond_length_score",
    "compositional_validity",
    "condition_adherence",
    "detect_spacegroup",
    "min_interatomic_distance",
    "parse_text",
    "self_consistency",
    "structural_validity",
    "validate_one",
    "validate_table",
    "run_validation",
    "ROWS_FILE",
    "SUMMARY_FILE",
]
