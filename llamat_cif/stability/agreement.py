"""Agreement mode: relax with one potential, score the relaxed cell with several, flag disagreement.

``--potential chgnet,sevennet-0`` relaxes with the first potential (:func:`potential_names`); each
further potential takes a single point on the relaxed cell and its E_hull goes to an
``e_hull:<name>`` column (:func:`cross_score`); :func:`agreement_summary` counts, per potential,
what it calls metastable and stable, how far it is from the relaxing potential, and on how many
rows the potentials disagree by more than the threshold.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from llamat_cif.protocol import E_HULL_METASTABLE, E_HULL_STABLE
from llamat_cif.stability.hull import Hull, mp2020_corrected_energy
from llamat_cif.stability.potentials import Potential
from llamat_cif.stability.summary import rate

#: row columns a cross-checking potential adds: ``e_hull:<name>`` (single point on the relaxed cell)
CHECK_PREFIX = "e_hull:"


def potential_names(spec: str) -> list[str]:
    """The potentials of a ``--potential`` value: ``"chgnet,sevennet-0"`` relaxes with the first and
    scores the relaxed cell with every one (agreement mode); one name is a plain run.

    Raises:
        ValueError: an empty list or a name given twice.
    """
    names = [n.strip() for n in str(spec).split(",") if n.strip()]
    if not names:
        raise ValueError(f"no potential in {spec!r}")
    if len(set(names)) != len(names):
        raise ValueError(f"a potential is named twice in {spec!r}")
    return names


def cross_score(row: dict, checks: list[Potential], hull: Hull | None, *,
                threshold: float) -> dict:
    """Score a relaxed row with more potentials (agreement mode).

    Each check potential takes a single point on the cell the first potential relaxed; its E_hull
    goes to ``e_hull:<name>``. ``e_hull_spread`` is the largest minus the smallest E_hull over all
    potentials, ``disagree`` is True when it exceeds ``threshold`` (eV/atom). A check that fails
    leaves NaN and its reason in ``check_error``; the row itself stays valid.
    """
    row = dict(row)
    for cp in checks:
        row[CHECK_PREFIX + cp.name] = np.nan
    row["e_hull_spread"] = np.nan
    row["disagree"] = None
    if not checks or row.get("error") or hull is None or not row.get("relaxed_cif") or \
            not np.isfinite(row.get("e_hull", np.nan)):
        return row
    from llamat_cif.cif import read_cif

    s = read_cif(row["relaxed_cif"])
    values = [float(row["e_hull"])]
    problems = []
    for cp in checks:
        try:
            e = cp.predict_energies([s])[0]
            if cp.needs_mp2020_correction:
                e = mp2020_corrected_energy(s, e)
            eh = hull.e_above_hull(s.composition, e / len(s))
        except Exception as exc:  # noqa: BLE001 - a failed cross-check must not lose the row
            problems.append(f"{cp.name}: {type(exc).__name__}: {exc}")
            continue
        row[CHECK_PREFIX + cp.name] = eh
        values.append(eh)
    if len(values) > 1:
        row["e_hull_spread"] = float(max(values) - min(values))
        row["disagree"] = bool(row["e_hull_spread"] > threshold)
    row["check_error"] = "; ".join(problems) or None
    return row


def agreement_summary(df: pd.DataFrame, *, primary: str, threshold: float,
                      e_hull_metastable: float = E_HULL_METASTABLE) -> dict | None:
    """Agreement-mode counts: per check potential, metastable by it and how far it is from the
    relaxing potential; over all, how many rows the potentials disagree on. None without checks."""
    cols = [c for c in df.columns if str(c).startswith(CHECK_PREFIX)]
    if not cols:
        return None
    n = len(df)
    eh = pd.to_numeric(df["e_hull"], errors="coerce")
    out: dict[str, Any] = {"relaxed_with": primary, "threshold_ev_atom": threshold, "potentials": {}}
    both = eh.notna()
    for c in cols:
        other = pd.to_numeric(df[c], errors="coerce")
        ok = eh.notna() & other.notna()
        both &= other.notna()
        d = (other[ok] - eh[ok])
        out["potentials"][c[len(CHECK_PREFIX):]] = {
            "metastable": rate(int((other < e_hull_metastable).sum()), n),
            "stable": rate(int((other <= E_HULL_STABLE).sum()), n),
            "median_abs_diff_ev_atom": float(d.abs().median()) if len(d) else None,
            "median_signed_diff_ev_atom": float(d.median()) if len(d) else None,
            "n_scored_by_both": int(ok.sum()),
        }
    spread = pd.to_numeric(df["e_hull_spread"], errors="coerce") if "e_hull_spread" in df.columns else None
    if spread is not None:
        out["disagree"] = {**rate(int((spread > threshold).sum()), int(both.sum())),
                           "denominator_is": "rows scored by every potential"}
    every = eh < e_hull_metastable
    for c in cols:
        every &= pd.to_numeric(df[c], errors="coerce") < e_hull_metastable
    out["metastable_by_every_potential"] = {**rate(int(every.sum()), n), "denominator_is": "all input structures"}
    return out


__all__ = ["CHECK_PREFIX", "agreement_summary", "cross_score", "potential_names"]
