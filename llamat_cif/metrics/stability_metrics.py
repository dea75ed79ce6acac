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

from llamat_cif.metrics.metric import Metric, rate
from llamat_cif.protocol import E_HULL_METASTABLE, matcher_label


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
    metastable_threshold: float = E_HULL_METASTABLE,
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
    metastable_threshold: float = E_HULL_METASTABLE,
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


# ------------------------------------------------------------------ stability benchmark (--stability N)

#: What the chosen-sample rates are taken over, as written next to each of them.
CHOSEN = "chosen valid samples"


def choose_valid(valid: np.ndarray, n: int, *, seed: int) -> np.ndarray:
    """Positions of ``min(n, number valid)`` valid samples, drawn without replacement.

    Args:
        valid: validity flag per generated sample.
        n: how many to choose.
        seed: seeds ``numpy.random.default_rng``; the same seed and flags give the same choice.

    Returns:
        Sorted positions into ``valid``.
    """
    idx = np.flatnonzero(np.asarray(valid, dtype=bool))
    if n >= len(idx):
        return idx
    return np.sort(np.random.default_rng(seed).choice(idx, n, replace=False))


def chosen_stability(
    table: pd.DataFrame,
    chosen_ids: list[str],
    *,
    n_valid: int,
    n_generated: int,
    training=None,
    metastable_threshold: float = E_HULL_METASTABLE,
    stable_threshold: float = 0.0,
    protocol: dict | None = None,
) -> tuple[dict[str, Metric], list[dict]]:
    """Relaxation funnel of N chosen valid samples, over the chosen and scaled to all generated.

    Every rate is over the chosen samples: a relaxation that failed (error, time limit, no
    E_hull) counts as not converged, not metastable and not stable. The estimate over all
    generated samples is ``n_valid / n_generated`` times that rate; it assumes the chosen are a
    fair draw of the valid samples (they are a seeded uniform one).

    Args:
        table: stability rows (``id``, ``error``, ``converged``, ``e_hull``, ``n_steps``,
            ``wall_s``, ``relaxed_cif``); rows of other ids are ignored, chosen ids without a row
            count as failed.
        chosen_ids: ids of the chosen valid samples (the denominator).
        n_valid: valid samples among the generated ones.
        n_generated: all generated samples (benchmarked).
        training: a :class:`llamat_cif.metrics.sun.TrainingSet` for novelty; None: S.U.N. and
            M.S.U.N. are not assessed (left out).
        metastable_threshold: E_hull below which a structure is metastable, eV/atom
            (LLaMat / Gruver et al.: 0.1).
        stable_threshold: E_hull at or below which a structure is stable, eV/atom (MatterGen: 0).
        protocol: potential, relaxer and hull settings to record in every metric.

    Returns:
        ``(metrics, funnel)``: ``stability_<stage>_rate`` (over chosen) and
        ``stability_<stage>_est_generated`` metrics plus the three medians, and the funnel as a
        list of ``{"stage", "key", "count", "of_chosen", "estimate_over_generated"}``.
    """
    from llamat_cif.metrics.matching import structure_matcher
    from llamat_cif.metrics.sun import sun_table

    ids = [str(i) for i in chosen_ids]
    n = len(ids)
    rows = table.copy()
    rows["id"] = rows["id"].astype(str)
    rows = rows[rows["id"].isin(set(ids))].drop_duplicates("id", keep="last")
    ok = _ok_relaxed(rows)
    e = _numbers(rows, "e_hull")
    scored = ok & np.isfinite(e)
    conv = rows["converged"].fillna(False).astype(bool).to_numpy() if "converged" in rows else np.zeros(len(rows), bool)
    p = {"metastable_threshold_eV_atom": metastable_threshold, "stable_threshold_eV_atom": stable_threshold,
         "failures": "errors and time-outs count as failed at every stage", **(protocol or {})}
    stages: list[tuple[str, str, int]] = [
        ("relaxed", "relaxed without error", int(ok.sum())),
        ("converged", "converged (FIRE, fmax)", int((ok & conv).sum())),
        ("metastable", f"metastable (E_hull < {metastable_threshold:g} eV/atom)",
         int((scored & (e < metastable_threshold)).sum())),
        ("stable", f"stable (E_hull <= {stable_threshold:g} eV/atom)", int((scored & (e <= stable_threshold)).sum())),
    ]
    sun_proto: dict = {}
    if training is not None:
        good = rows[scored]
        flags = sun_table(good, training=training, e_hull_stable=stable_threshold,
                          e_hull_metastable=metastable_threshold) if len(good) else pd.DataFrame(
            {"sun": [], "msun": []})
        stages.append(("sun", "S.U.N. (stable, unique among the chosen, novel)", int(flags["sun"].sum())))
        stages.append(("msun", "M.S.U.N. (metastable, unique, novel)", int(flags["msun"].sum())))
        sun_proto = {"novelty_reference": training.name, "uniqueness": "among the chosen, relaxed structures",
                     "matcher": f"pymatgen {matcher_label(structure_matcher())}, by reduced formula"}
    valid_fraction = n_valid / n_generated if n_generated else None
    counts = {"chosen": n, "valid": int(n_valid), "generated": int(n_generated)}
    metrics: dict[str, Metric] = {}
    funnel_rows: list[dict] = []
    for key, label, k in stages:
        extra = sun_proto if key in ("sun", "msun") else {}
        r = rate(f"stability_{key}_rate", k, n, CHOSEN, counts=counts, protocol={**p, **extra, "stage": label})
        est = valid_fraction * r.value if (valid_fraction is not None and r.value is not None) else None
        est_m = Metric(f"stability_{key}_est_generated", est, None, int(n_generated),
                       "generated (estimated: valid/generated x count/chosen)",
                       counts={key: k, **counts},
                       protocol={"estimate": "valid fraction of generated x rate over chosen valid samples",
                                 "stage": label})
        metrics[r.name], metrics[est_m.name] = r, est_m
        funnel_rows.append({"stage": label, "key": key, "count": k,
                            "of_chosen": {"numerator": k, "denominator": n, "rate": r.value},
                            "estimate_over_generated": est})

    def median(name: str, values: np.ndarray, unit: str, over: str) -> Metric:
        v = values[np.isfinite(values)]
        return Metric(name, float(np.median(v)) if len(v) else None, unit=unit,
                      counts={over: int(len(v)), "chosen": n}, protocol={"statistic": "median", "over": over})

    steps, secs = _numbers(rows, "n_steps"), _numbers(rows, "wall_s")
    metrics["stability_median_e_hull"] = median("stability_median_e_hull", e[scored], "eV/atom",
                                                "relaxed with an E_hull")
    metrics["stability_median_steps"] = median("stability_median_steps", steps[ok], "FIRE steps",
                                               "relaxed without error")
    metrics["stability_median_seconds"] = median("stability_median_seconds", secs[ok], "s",
                                                 "relaxed without error")
    return metrics, funnel_rows


def _numbers(table: pd.DataFrame, column: str) -> np.ndarray:
    """A column as floats (NaN where missing or not a number)."""
    if column not in table.columns:
        return np.full(len(table), np.nan)
    return pd.to_numeric(table[column], errors="coerce").to_numpy(float)


def _ok_relaxed(table: pd.DataFrame) -> np.ndarray:
    """Rows relaxed without error (an empty ``error`` and a relaxed structure)."""
    if not len(table):
        return np.zeros(0, bool)
    ok = table["error"].fillna("").astype(str).str.len().eq(0).to_numpy() if "error" in table else np.ones(len(table), bool)
    if "relaxed_cif" in table:
        ok &= table["relaxed_cif"].map(lambda c: isinstance(c, str) and bool(c.strip())).to_numpy(bool)
    return ok


def geometry_section(sets: dict[str, list], *, reference_name: str) -> dict:
    """:func:`llamat_cif.physics.geometry_table` of each named list of Structures (None skipped).

    Args:
        sets: name -> structures, e.g. ``{"chosen, as generated": [...], "reference": [...]}``.
        reference_name: description of the reference sample, recorded with the table.

    Returns:
        ``{"short_contact_threshold", "reference", "tables": {name: geometry_table(...)}}``; each
        table's ``n`` counts the structures measured (those that parsed and whose elements all
        have a covalent radius) and ``of`` the structures in the set.
    """
    from llamat_cif.physics import SHORT_CONTACT_RATIO, covalent_radius, geometry_table

    def measurable(s) -> bool:
        if s is None or len(s) == 0:
            return False
        try:
            for el in s.composition.element_composition:
                covalent_radius(el.symbol)
        except ValueError:  # e.g. a dummy species: no chemical scale to measure against
            return False
        return True

    return {"short_contact_threshold": f"d < {SHORT_CONTACT_RATIO} x (r_cov,i + r_cov,j), Cordero radii",
            "reference": reference_name,
            "tables": {name: {**geometry_table([s for s in structs if measurable(s)]), "of": len(structs)}
                       for name, structs in sets.items()}}
