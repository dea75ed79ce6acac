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
    """``(stability table or None, stability summary, sun.json)`` from a run folder.

    The S.U.N. flags (``sun.parquet``: unique, novel, stable, sun...) are merged into the table by id.
    """
    run_dir = Path(run_dir)
    table = None
    p = run_dir / "stability.parquet"
    if p.exists():
        table = pd.read_parquet(p)
        if "id" in table.columns:
            table["id"] = table["id"].astype(str)
            flags_path = run_dir / "sun.parquet"
            if flags_path.exists():
                flags = pd.read_parquet(flags_path)
                keep = [c for c in ("id", "unique", "novel", "sun", "msun") if c in flags.columns]
                if "id" in keep and len(keep) > 1:
                    flags["id"] = flags["id"].astype(str)
                    table = table.merge(flags[keep].drop_duplicates("id"), on="id", how="left")
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


def sun_rates(table: pd.DataFrame | None, sun: dict, n_generated: int) -> dict[str, Metric]:
    """S.U.N. and related rates over all generated samples.

    ``sun.json`` from the stability step (``{"sun": {"numerator", "denominator"}, "msun": ...}``) is
    read first; otherwise boolean columns ``sun`` (or ``stable`` & ``unique`` & ``novel``) of the
    stability / S.U.N. table are counted over ``n_generated``.

    Returns:
        ``{"sun_rate": ..., "msun_rate": ..., "unique_rate": ..., "novel_rate": ...}`` (those available).
    """
    proto = dict(sun.get("protocol", {})) if isinstance(sun.get("protocol"), dict) else {}
    out: dict[str, Metric] = {}
    for key in ("sun", "msun", "unique", "novel", "chemsys_novel"):
        d = sun.get(key)
        if isinstance(d, dict) and d.get("numerator") is not None and d.get("denominator"):
            out[f"{key}_rate"] = rate(f"{key}_rate", int(d["numerator"]), int(d["denominator"]),
                                      "generated", protocol={"source": "sun.json", **proto,
                                                             **{k: v for k, v in d.items() if k not in
                                                                ("numerator", "denominator", "rate")}})
    if "sun_rate" in out or table is None:
        return out
    cols = set(table.columns)
    flags = None
    if "sun" in cols:
        flags = table["sun"].fillna(False).astype(bool)
    elif {"stable", "unique", "novel"} <= cols:
        flags = (table["stable"].fillna(False).astype(bool) & table["unique"].fillna(False).astype(bool)
                 & table["novel"].fillna(False).astype(bool))
    if flags is not None:
        out["sun_rate"] = rate("sun_rate", int(flags.sum()), n_generated, "generated",
                               protocol={"source": "S.U.N. flags table"})
    return out


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
