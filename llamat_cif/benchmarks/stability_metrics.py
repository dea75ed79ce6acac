"""Stability-derived metrics (metastable / stable / S.U.N. rates, screening funnel).

Inputs are the stability step's files (``stability.parquet``, ``stability_summary.json``,
``sun.json``); the energies, hull and potential are that step's, and its protocol is copied into
ours. Rates are over *generated* samples (LLaMat / crystal-text-llm / MatterGen convention), and also
over relaxed structures where that helps reading.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from llamat_cif.benchmarks.metric import Metric, rate


def load_stability(run_dir: Path) -> tuple[pd.DataFrame | None, dict, dict]:
    """``(stability table or None, stability summary, sun.json)`` from a run folder."""
    run_dir = Path(run_dir)
    table = None
    p = run_dir / "stability.parquet"
    if p.exists():
        table = pd.read_parquet(p)
        if "id" in table.columns:
            table["id"] = table["id"].astype(str)
    summary, sun = {}, {}
    for name, target in (("stability_summary.json", summary), ("sun.json", sun)):
        f = run_dir / name
        if f.exists():
            try:
                target.update(json.loads(f.read_text()))
            except (OSError, ValueError):
                pass
    return table, summary, sun


def _ok_energy(table: pd.DataFrame) -> np.ndarray:
    e = pd.to_numeric(table.get("e_hull", pd.Series(np.nan, index=table.index)), errors="coerce")
    ok = np.isfinite(e.to_numpy(float))
    if "error" in table.columns:
        ok &= table["error"].fillna("").astype(str).str.len().eq(0).to_numpy()
    return ok


def stability_rates(
    table: pd.DataFrame,
    n_generated: int,
    *,
    metastable_threshold: float = 0.1,
    stable_threshold: float = 0.0,
    protocol: dict | None = None,
) -> dict[str, Metric]:
    """Metastable (E_hull < 0.1 eV/atom) and stable (E_hull <= 0) rates.

    Args:
        table: stability rows (``e_hull`` in eV/atom, ``error`` empty when ok).
        n_generated: all generated samples (the headline denominator).
        metastable_threshold: E_hull below which a structure is metastable (LLaMat / Gruver: 0.1).
        stable_threshold: E_hull at or below which a structure is stable (0).
        protocol: the stability step's protocol (potential, hull, relaxer) to record.
    """
    p = {"metastable_threshold_eV_atom": metastable_threshold,
         "stable_threshold_eV_atom": stable_threshold, **(protocol or {})}
    ok = _ok_energy(table)
    e = pd.to_numeric(table["e_hull"], errors="coerce").to_numpy(float) if "e_hull" in table else np.full(len(table), np.nan)
    meta = int((ok & (e < metastable_threshold)).sum())
    stab = int((ok & (e <= stable_threshold)).sum())
    n_scored = int(ok.sum())
    counts = {"relaxed_and_scored": n_scored, "stability_rows": int(len(table)), "generated": int(n_generated)}
    return {
        "metastable_rate": rate("metastable_rate", meta, n_generated, "generated", counts=counts, protocol=p),
        "metastable_rate_over_scored": rate("metastable_rate_over_scored", meta, n_scored,
                                            "relaxed with an E_hull", counts=counts, protocol=p),
        "stable_rate": rate("stable_rate", stab, n_generated, "generated", counts=counts, protocol=p),
    }


def sun_rate(table: pd.DataFrame | None, sun: dict, n_generated: int) -> Metric | None:
    """S.U.N. rate (stable, unique, novel over generated) from ``stability.parquet`` or ``sun.json``.

    Boolean columns ``sun`` (or ``stable``, ``unique`` and ``novel`` together) in the table win;
    else ``sun.json``'s count (``n_sun``/``sun``/``numerator``) over ``n_generated`` is used.
    """
    proto = {k: v for k, v in sun.items() if not isinstance(v, (list, dict))} if sun else {}
    if table is not None:
        cols = set(table.columns)
        flags = None
        if "sun" in cols:
            flags = table["sun"].fillna(False).astype(bool)
        elif {"stable", "unique", "novel"} <= cols:
            flags = (table["stable"].fillna(False).astype(bool) & table["unique"].fillna(False).astype(bool)
                     & table["novel"].fillna(False).astype(bool))
        if flags is not None:
            return rate("sun_rate", int(flags.sum()), n_generated, "generated",
                        protocol={"source": "stability.parquet", **proto})
    for key in ("n_sun", "sun", "numerator", "sun_count"):
        v = sun.get(key)
        if isinstance(v, (int, np.integer)) or (isinstance(v, float) and float(v).is_integer() and v >= 1):
            den = sun.get("denominator") or sun.get("n_generated") or n_generated
            return rate("sun_rate", int(v), int(den), "generated", protocol={"source": "sun.json", **proto})
    if "sun_rate" in sun and isinstance(sun["sun_rate"], dict):
        d = sun["sun_rate"]
        if "numerator" in d and "denominator" in d:
            return rate("sun_rate", int(d["numerator"]), int(d["denominator"]),
                        str(d.get("denominator_name", "generated")), protocol={"source": "sun.json", **proto})
    return None


def funnel(
    n_generated: int,
    validity: pd.DataFrame | None,
    table: pd.DataFrame | None,
    *,
    sun: Metric | None = None,
    metastable_threshold: float = 0.1,
    stable_threshold: float = 0.0,
) -> list[tuple[str, int]]:
    """Screening funnel counts: generated -> parsed -> valid -> relaxed -> metastable -> stable -> S.U.N."""
    steps: list[tuple[str, int]] = [("generated", int(n_generated))]
    if validity is not None:
        steps.append(("parsed", int(validity["parsed"].sum())))
        steps.append(("valid", int(validity["valid"].sum())))
    if table is not None:
        ok = _ok_energy(table)
        e = pd.to_numeric(table["e_hull"], errors="coerce").to_numpy(float) if "e_hull" in table else np.full(len(table), np.nan)
        steps.append(("relaxed, E_hull computed", int(ok.sum())))
        steps.append((f"metastable (E_hull < {metastable_threshold:g})", int((ok & (e < metastable_threshold)).sum())))
        steps.append((f"stable (E_hull <= {stable_threshold:g})", int((ok & (e <= stable_threshold)).sum())))
    if sun is not None and sun.numerator is not None:
        steps.append(("S.U.N.", int(sun.numerator)))
    return steps
