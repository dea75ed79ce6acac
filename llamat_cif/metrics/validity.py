"""Validity rates from the validators' table, over generated and over parsed structures.

The benchmark reads ``DIR/validity.parquet`` written by ``llamat-cif validate`` (or computes it with
:func:`llamat_cif.validators.validate_table` when absent); samples that are not a run folder are
validated once and kept in the benchmark's output folder (:func:`input_validity`). This module only
*counts*: the checks and their thresholds (CDVAE: interatomic distance >= 0.5 A, volume >= 0.1 A^3,
SMACT charge neutrality) live in :mod:`llamat_cif.validators` and are copied into the protocol from
their summary.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from llamat_cif.metrics.metric import Metric, json_default, rate
from llamat_cif.metrics.sources import content_key
from llamat_cif.runs import write_parquet

#: what a validators summary lends the benchmark's protocol
SUMMARY_KEYS = ("thresholds", "protocol", "versions")

# accepted spellings of the validators' columns -> our canonical name
_ALIASES = {
    "parsed": ("parsed", "parse_ok", "is_parsed"),
    "structurally_valid": ("structurally_valid", "struct_valid", "structural_valid", "structural"),
    "compositionally_valid": ("compositionally_valid", "comp_valid", "compositional_valid", "compositional"),
    "valid": ("valid", "is_valid"),
}


def _as_bool(col: pd.Series) -> np.ndarray:
    # None / NaN / pd.NA (check not applicable or not run) counts as not passed
    try:
        return col.astype("boolean").fillna(False).to_numpy(bool)
    except (TypeError, ValueError):
        return col.map(lambda v: False if pd.isna(v) else bool(v)).to_numpy(bool)


def normalise_validity(table: pd.DataFrame) -> pd.DataFrame:
    """Map a validators table onto columns ``id, parsed, structurally_valid, compositionally_valid, valid``.

    ``valid`` defaults to structural and compositional validity together when the table lacks it.

    Raises:
        ValueError: when neither a ``valid`` column nor both component columns are present.
    """
    out = pd.DataFrame({"id": table["id"].astype(str)}) if "id" in table.columns else pd.DataFrame(index=table.index)
    for canon, names in _ALIASES.items():
        for n in names:
            if n in table.columns:
                out[canon] = _as_bool(table[n])
                break
    if "valid" not in out.columns:
        if {"structurally_valid", "compositionally_valid"} <= set(out.columns):
            out["valid"] = out["structurally_valid"] & out["compositionally_valid"]
        else:
            raise ValueError(f"validity table has no 'valid' column (columns: {list(table.columns)})")
    if "parsed" not in out.columns:
        out["parsed"] = out["valid"] | out.get("structurally_valid", out["valid"])
    return out


def run_validators(table: pd.DataFrame, column: str | None = None) -> tuple[pd.DataFrame, dict]:
    """Run :func:`llamat_cif.validators.validate_table` (one process) and return ``(rows, summary)``."""
    from llamat_cif.validators import validate_table  # imported late: a sibling package

    out = validate_table(table, column=column)
    if isinstance(out, tuple):
        return out[0], dict(out[1])
    return out, {}


def _summary_protocol(summary: dict) -> dict:
    return {k: summary[k] for k in SUMMARY_KEYS if k in summary}


def _aligned(samples: pd.DataFrame, v: pd.DataFrame) -> pd.DataFrame:
    """``v`` in the order of ``samples`` (by ``id``); samples without a row count as not passed."""
    v = samples[["id"]].astype(str).merge(v.drop_duplicates("id"), on="id", how="left")
    for c in v.columns:
        if c != "id":
            v[c] = v[c].fillna(False).astype(bool)
    return v


def load_or_compute_validity(run_dir: Path, samples: pd.DataFrame) -> tuple[pd.DataFrame, dict]:
    """Validity per sample, aligned with ``samples`` (by ``id``), plus its protocol.

    Reads ``validity.parquet`` (and ``validity_summary.json`` for the protocol) when present,
    else runs :func:`llamat_cif.validators.validate_table` on the samples.
    """
    path = Path(run_dir) / "validity.parquet"
    protocol: dict = {}
    if path.exists():
        table = pd.read_parquet(path)
        summary = Path(run_dir) / "validity_summary.json"
        if summary.exists():
            try:
                protocol = _summary_protocol(json.loads(summary.read_text()))
            except (OSError, ValueError):
                pass
        protocol["source"] = str(path.name)
    else:
        table, summary = run_validators(samples)
        protocol.update(_summary_protocol(summary))
        protocol["source"] = "computed by llamat_cif.validators.validate_table"
    v = normalise_validity(table)
    if "id" in v.columns and "id" in samples.columns:
        v = _aligned(samples, v)
    return v, protocol


def input_validity(samples: pd.DataFrame, out: Path, say, *, stem: str = "validity") -> tuple[pd.DataFrame, dict]:
    """Validity of samples that are not a run folder, kept in ``out`` while the input is unchanged.

    The validators run on the ``cif`` column (a row without text is a parse failure); their table
    and summary go to ``out/validity.parquet`` / ``out/validity_summary.json`` with a key of the
    samples' content and the validators' default settings, so a second benchmark of the same input
    reads them instead of validating again.

    Args:
        samples: rows with ``id`` and ``cif``.
        out: the benchmark's output folder.
        say: progress logger (one line of text).
        stem: file names' stem (``validity_cdvae`` for the CDVAE protocol's own settings).
    """
    from llamat_cif.validators.core import Thresholds

    # the validators' settings are part of the key: a new default (e.g. SMACT data) recomputes
    key = content_key(samples["id"], samples["cif"],
                      salt=json.dumps(Thresholds().as_dict(), sort_keys=True, default=str))
    rows_path, summary_path = out / f"{stem}.parquet", out / f"{stem}_summary.json"
    protocol: dict = {}
    table = None
    if rows_path.exists() and summary_path.exists():
        try:
            summary = json.loads(summary_path.read_text())
            if summary.get("samples_key") == key:
                table = pd.read_parquet(rows_path)
                protocol = _summary_protocol(summary)
                protocol["source"] = f"{rows_path.name} (kept from an earlier benchmark of the same input)"
        except (OSError, ValueError):
            table = None
    if table is None:
        say(f"validating {len(samples)} structures (CDVAE checks and more; kept in {rows_path})")
        frame = samples[["id", "cif"]].assign(id=samples["id"].astype(str))
        table, summary = run_validators(frame, column="cif")
        protocol = _summary_protocol(summary)
        protocol["source"] = "computed by llamat_cif.validators.validate_table"
        write_parquet(table.drop(columns=["cif"], errors="ignore"), rows_path)
        summary_path.write_text(json.dumps({**summary, "samples_key": key}, indent=2, default=json_default))
    return _aligned(samples, normalise_validity(table)), protocol


def validity_rates(validity: pd.DataFrame) -> dict[str, Metric]:
    """Parse and validity rates over generated, and valid over parsed.

    Args:
        validity: normalised table (see :func:`normalise_validity`), one row per generated sample.
    """
    n = len(validity)
    parsed = int(validity["parsed"].sum())
    out = {"parse_rate": rate("parse_rate", parsed, n, "generated")}
    for col in ("structurally_valid", "compositionally_valid", "valid"):
        if col in validity.columns:
            k = int(validity[col].sum())
            out[f"{col}_rate"] = rate(f"{col}_rate", k, n, "generated")
            # over parsed: only parsed rows count (a text can be compositionally valid unparsed)
            kp = int((validity[col] & validity["parsed"]).sum())
            out[f"{col}_rate_over_parsed"] = rate(f"{col}_rate_over_parsed", kp, parsed, "parsed")
    return out

