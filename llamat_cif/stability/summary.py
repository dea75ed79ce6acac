"""What a stability table says: counts and rates over all inputs and over converged relaxations.

:func:`summarize` is the summary ``llamat-cif stability`` and ``screen`` write to
``stability_summary.json``; every rate is a :func:`rate` dict that carries its numerator and
denominator, and each says what its denominator counts. Agreement between potentials is summarised
in :mod:`llamat_cif.stability.agreement`.
"""

from __future__ import annotations

import pandas as pd

from llamat_cif.protocol import E_HULL_METASTABLE, E_HULL_STABLE


def rate(num: int, den: int) -> dict:
    """A rate with its numerator and denominator."""
    return {"rate": (num / den) if den else None, "numerator": int(num), "denominator": int(den)}


def summarize(df: pd.DataFrame, *, e_hull_metastable: float = E_HULL_METASTABLE,
              e_hull_stable: float = E_HULL_STABLE) -> dict:
    """Counts and rates of a stability table; each rate states its denominator.

    Args:
        df: rows from :func:`run_stability`.
        e_hull_metastable: metastability threshold, eV/atom (LLaMat / Gruver: 0.1).
        e_hull_stable: stability threshold, eV/atom (0: on or below the hull).
    """
    n = len(df)
    ok = df[df["error"].isna() | (df["error"] == "")] if n else df
    eh = pd.to_numeric(ok["e_hull"], errors="coerce") if n else pd.Series(dtype=float)
    scored = eh.notna()
    conv = ok["converged"].fillna(False).astype(bool) if n else pd.Series(dtype=bool)
    eh_conv = eh[conv & scored] if n else eh
    n_conv = int(conv.sum()) if n else 0
    return {
        "n_structures": n,
        "n_errors": int(n - len(ok)),
        "n_scored": int(scored.sum()),
        "n_unconverged_scored": int((scored & ~conv).sum()) if n else 0,
        "converged": rate(n_conv, len(ok)),
        "metastable": {**rate(int((eh < e_hull_metastable).sum()), n), "threshold_ev_atom": e_hull_metastable,
                       "denominator_is": "all input structures (unconverged relaxations scored as they ended)"},
        "stable": {**rate(int((eh <= e_hull_stable).sum()), n), "threshold_ev_atom": e_hull_stable,
                   "denominator_is": "all input structures (unconverged relaxations scored as they ended)"},
        # the same over converged relaxations only: an unconverged E_hull is an upper estimate at best
        "metastable_converged": {**rate(int((eh_conv < e_hull_metastable).sum()), n_conv),
                                 "threshold_ev_atom": e_hull_metastable,
                                 "denominator_is": "converged relaxations"},
        "stable_converged": {**rate(int((eh_conv <= e_hull_stable).sum()), n_conv),
                             "threshold_ev_atom": e_hull_stable, "denominator_is": "converged relaxations"},
        "median_e_hull": float(eh.median()) if scored.any() else None,
        "median_e_hull_converged": float(eh_conv.median()) if len(eh_conv) else None,
        "median_wall_s": float(pd.to_numeric(ok["wall_s"]).median()) if len(ok) else None,
        "median_cpu_s": (float(pd.to_numeric(ok["cpu_s"], errors="coerce").median())
                         if len(ok) and "cpu_s" in ok.columns and ok["cpu_s"].notna().any() else None),
        "median_n_steps": float(pd.to_numeric(ok["n_steps"]).median()) if len(ok) else None,
    }


__all__ = ["rate", "summarize"]
