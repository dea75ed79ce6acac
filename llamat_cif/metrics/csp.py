"""Crystal-structure prediction (CSP) metrics for formula-conditioned generation.

Protocol of CDVAE's reconstruction / DiffCSP's CSP task: for each target, up to ``k`` samples are
compared with the target structure by ``StructureMatcher(stol=0.5, angle_tol=10, ltol=0.3)``
(``CSP_MATCHER`` in :mod:`llamat_cif.protocol`); the
target counts as matched when any sample matches, and its RMSE is the smallest normalised RMS
displacement (pymatgen ``get_rms_dist``: divided by ``(V / n_sites)^(1/3)``) among the matching
samples. Match rate = matched targets / targets; RMSE = mean over matched targets.

Targets are identified by ``target_id`` (a reference structure id) when the samples carry one, else
by ``target_formula``: a formula target is compared with every reference structure of the same
reduced formula (polymorphs) and the best match counts. Samples that did not parse or are not valid
count as non-matching, as in CDVAE.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence

import numpy as np
import pandas as pd

from llamat_cif.metrics.matching import structure_matcher
from llamat_cif.metrics.metric import Metric, rate
from llamat_cif.protocol import CSP_MATCHER, matcher_tolerances


def _reduced(formula: str) -> str | None:
    from pymatgen.core import Composition

    try:
        return Composition(str(formula)).reduced_formula
    except Exception:  # noqa: BLE001 - an unreadable target is reported, not raised
        return None


def csp_match(
    samples: pd.DataFrame,
    reference: pd.DataFrame,
    *,
    ks: Sequence[int] = (1, 20),
    stol: float = CSP_MATCHER["stol"],
    angle_tol: float = CSP_MATCHER["angle_tol"],
    ltol: float = CSP_MATCHER["ltol"],
    valid_column: str | None = "valid",
    progress: Callable[[int, int], None] | None = None,
) -> dict[str, Metric]:
    """Match rate and RMSE, best of ``k`` samples per target, for each ``k`` in ``ks``.

    Args:
        samples: rows with ``cif``, ``target_formula`` (or ``target_id``), an ``id`` that orders
            samples (the first ``k`` per target are used) and optionally a validity column.
        reference: rows with ``id``, ``cif`` and ``formula`` (reduced formula; computed if absent).
        ks: sample budgets per target.
        stol, angle_tol, ltol: ``StructureMatcher`` tolerances (CDVAE/DiffCSP: 0.5, 10, 0.3).
        valid_column: samples where this column is False count as non-matching (None: ignore).
        progress: callback ``(done_targets, total_targets)``.

    Returns:
        ``{"csp_match_rate@k": Metric, "csp_rmse@k": Metric}`` for every k.
    """
    from llamat_cif.cif import read_cif_or_none

    matcher = structure_matcher(stol=stol, angle_tol=angle_tol, ltol=ltol)
    protocol = {**matcher_tolerances(matcher, CSP_MATCHER),
                "matcher": "pymatgen StructureMatcher.get_rms_dist", "rmse": "normalised by (V/n)^(1/3)"}
    s = samples.copy()
    by_id = "target_id" in s.columns and s["target_id"].astype(str).str.len().gt(0).any()
    ref = reference.copy()
    if "formula" not in ref.columns:
        ref["formula"] = [_reduced(f) if f else None for f in ref.get("pretty_formula", [None] * len(ref))]
    if by_id:
        s["_target"] = s["target_id"].astype(str)
        groups = {str(i): [c] for i, c in zip(ref["id"], ref["cif"], strict=True)}
    else:
        s = s[s["target_formula"].fillna("").astype(str).str.len() > 0].copy()
        s["_target"] = [_reduced(f) for f in s["target_formula"]]
        groups: dict[str, list[str]] = {}
        for f, c in zip(ref["formula"], ref["cif"], strict=True):
            groups.setdefault(f, []).append(c)
    s = s.sort_values("id", kind="stable") if "id" in s.columns else s
    kmax = max(ks)
    targets = [t for t in pd.unique(s["_target"]) if t is not None]
    known = [t for t in targets if t in groups]
    best: dict[int, list[float]] = {k: [] for k in ks}  # per target: best rms within first k
    ref_cache: dict[str, list] = {}
    for ti, t in enumerate(known):
        rows = s[s["_target"] == t].head(kmax)
        if t not in ref_cache:
            ref_cache[t] = [x for x in (read_cif_or_none(c) for c in groups[t]) if x is not None]
        refs = ref_cache[t]
        rms_per_sample = []
        for _, row in rows.iterrows():
            ok = True if valid_column is None or valid_column not in rows.columns else bool(row[valid_column])
            st = read_cif_or_none(row.get("cif")) if ok else None
            r_best = np.inf
            if st is not None:
                for r in refs:
                    try:
                        with warnings.catch_warnings():
                            warnings.simplefilter("ignore")
                            rms = matcher.get_rms_dist(st, r)
                    except Exception:  # noqa: BLE001 - matcher failures count as no match
                        rms = None
                    if rms is not None:
                        r_best = min(r_best, float(rms[0]))
            rms_per_sample.append(r_best)
        for k in ks:
            best[k].append(min(rms_per_sample[:k], default=np.inf))
        if progress is not None:
            progress(ti + 1, len(known))
    out: dict[str, Metric] = {}
    counts = {"targets_in_samples": len(targets), "targets_with_reference": len(known),
              "samples": int(len(s))}
    for k in ks:
        b = np.asarray(best[k], float)
        matched = np.isfinite(b)
        p = {**protocol, "k": k, "target_key": "target_id" if by_id else "reduced target_formula"}
        out[f"csp_match_rate@{k}"] = rate(f"csp_match_rate@{k}", int(matched.sum()), len(known),
                                          "targets with a reference structure", counts=counts, protocol=p)
        out[f"csp_rmse@{k}"] = Metric(f"csp_rmse@{k}", float(b[matched].mean()) if matched.any() else None,
                                      None, None, None, "normalised RMS displacement",
                                      {"matched_targets": int(matched.sum())}, p)
    return out
