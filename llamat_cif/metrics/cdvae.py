"""The ``cdvae`` protocol: the numbers CDVAE's ``scripts/compute_metrics.py`` (``GenEval``) prints.

Our default benchmark protocol (``llamat-cif``) keeps CDVAE's definitions but names its own
denominators (coverage over valid samples, property distances over every valid sample...). The
``cdvae`` protocol follows ``GenEval`` step by step, so that a number can be set next to a
published CDVAE-style table:

* **validity** over *all* generated crystals: ``comp_valid`` (SMACT, on the listed atoms even when
  no cell can be built), ``struct_valid`` (built, every pair of sites >= 0.5 Å apart, volume >=
  0.1 Å^3) and ``valid`` = both *and* a CrystalNN fingerprint that can be computed (CDVAE's
  ``Crystal.get_fingerprints`` marks a crystal invalid when it cannot);
* **1,000 valid samples** drawn without replacement (``n_samples``); with fewer valid crystals
  ``GenEval`` raises, so the sample-based metrics are not computed and ``not_computed`` says why;
* ``comp_div`` / ``struct_div``: mean pairwise Euclidean distance of the sampled crystals' scaled
  Magpie / mean CrystalNN fingerprints;
* ``wdist_density``, ``wdist_num_elems``: Wasserstein distance between the sampled crystals and
  *all* reference crystals;
* ``cov_recall`` / ``cov_precision`` and ``amsd``/``amcd``: every generated crystal with a
  fingerprint (valid or not) against every reference crystal, independent nearest neighbours,
  precision divided by the number generated (``compute_cov``).

One named difference: CDVAE draws the 1,000 from numpy's unseeded global state; here they are
drawn with the benchmark's ``seed`` so that the numbers can be reproduced. ``wdist_prop`` needs
CDVAE's property model and is not computed.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy.spatial.distance import pdist

from llamat_cif.metrics.coverage import coverage, scale_composition
from llamat_cif.metrics.fingerprints import Fingerprints
from llamat_cif.metrics.metric import Metric, rate
from llamat_cif.metrics.properties import wasserstein
from llamat_cif.protocol import CDVAE_MIN_DISTANCE, CDVAE_MIN_VOLUME

#: CDVAE ``GenEval(n_samples=1000)``: valid crystals drawn for diversity and property distances
N_SAMPLES = 1000
#: the validators' settings that CDVAE's numbers assume (:class:`llamat_cif.validators.core.Thresholds`)
CDVAE_THRESHOLDS = {"min_distance": CDVAE_MIN_DISTANCE, "min_volume": CDVAE_MIN_VOLUME, "include_self_images": False,
                    "oxidation_states": "cdvae", "use_pauling_test": True, "include_alloys": True}
#: metric names, in CDVAE's order
NAMES = ("comp_valid", "struct_valid", "valid", "comp_div", "struct_div", "wdist_density",
         "wdist_num_elems", "cov_recall", "cov_precision", "amsd_recall", "amsd_precision",
         "amcd_recall", "amcd_precision")


def thresholds_mismatch(validity_protocol: dict[str, Any] | None) -> dict[str, tuple[Any, Any]]:
    """Validator settings that differ from CDVAE's: ``{name: (given, cdvae)}`` (empty when none).

    Args:
        validity_protocol: the validity protocol the benchmark read (the validators' summary:
            ``{"protocol": {"thresholds": ...}}``, or the thresholds at its top level).
    """
    p = validity_protocol or {}
    given = p.get("thresholds") or (p.get("protocol") or {}).get("thresholds") or {}
    return {k: (given.get(k), v) for k, v in CDVAE_THRESHOLDS.items() if given.get(k) != v}


def mean_pairwise_distance(fps: np.ndarray) -> float:
    """CDVAE ``get_fp_pdist``: the mean Euclidean distance over all pairs of rows."""
    return float(pdist(np.asarray(fps, dtype=float)).mean())


def validity_triple(validity: pd.DataFrame, fp_ok: np.ndarray) -> tuple[dict[str, Metric], np.ndarray]:
    """CDVAE's ``comp_valid``, ``struct_valid`` and ``valid`` over all generated, and the valid mask.

    Args:
        validity: normalised validity table, one row per generated crystal.
        fp_ok: per row, whether a CrystalNN fingerprint exists (CDVAE's ``valid`` requires one).
    """
    n = len(validity)
    comp_ok = validity["compositionally_valid"].to_numpy(bool)
    struct_ok = validity["structurally_valid"].to_numpy(bool) & validity["parsed"].to_numpy(bool)
    valid = comp_ok & struct_ok & fp_ok
    counts = {"generated": n}
    metrics = {
        "comp_valid": rate("comp_valid", int(comp_ok.sum()), n, "generated", counts=counts),
        "struct_valid": rate("struct_valid", int(struct_ok.sum()), n, "generated", counts=counts),
        "valid": rate("valid", int(valid.sum()), n, "generated",
                      counts={**counts, "valid_but_no_fingerprint": int((comp_ok & struct_ok & ~fp_ok).sum())},
                      protocol={"definition": "comp_valid and struct_valid and a CrystalNN fingerprint"}),
    }
    return metrics, valid


def cdvae_metrics(
    validity: pd.DataFrame,
    gen_tab: pd.DataFrame,
    ref_tab: pd.DataFrame,
    gen_fp: Fingerprints,
    ref_fp: Fingerprints,
    *,
    struct_cutoff: float,
    comp_cutoff: float,
    n_samples: int = N_SAMPLES,
    seed: int = 0,
) -> dict[str, Any]:
    """CDVAE ``GenEval`` metrics of one generated set.

    Args:
        validity: normalised validity table (``parsed``, ``structurally_valid``,
            ``compositionally_valid``, ``valid``), one row per generated crystal, computed with
            CDVAE's thresholds (:data:`CDVAE_THRESHOLDS`).
        gen_tab, ref_tab: structure tables (density, n_elements) of the generated and reference sets.
        gen_fp: fingerprints of every *parsed* generated crystal (row-aligned; missing rows not ok).
        ref_fp: fingerprints of the reference set.
        struct_cutoff, comp_cutoff: CDVAE ``COV_Cutoffs`` of the reference dataset.
        n_samples: valid crystals drawn for the sample-based metrics (CDVAE: 1,000).
        seed: seeds that draw.

    Returns:
        ``{"metrics": {name: Metric}, "not_computed": {name: reason}, "protocol": {...}}``.
    """
    n = len(validity)
    parsed = validity["parsed"].to_numpy(bool)
    fp_ok = np.asarray(gen_fp.ok, bool)
    metrics, valid = validity_triple(validity, fp_ok)
    not_computed: dict[str, str] = {}
    valid_idx = np.flatnonzero(valid)
    if len(valid_idx) >= n_samples:
        rng = np.random.default_rng(seed)
        pick = np.sort(rng.choice(valid_idx, n_samples, replace=False))
        sample_protocol = {"samples": f"{n_samples} valid crystals drawn without replacement (seed {seed})"}
        metrics["comp_div"] = Metric("comp_div", mean_pairwise_distance(scale_composition(gen_fp.comp[pick])),
                                     unit="scaled Magpie distance", counts={"samples": n_samples},
                                     protocol=sample_protocol)
        metrics["struct_div"] = Metric("struct_div", mean_pairwise_distance(gen_fp.struct[pick]),
                                       unit="CrystalNN fingerprint distance", counts={"samples": n_samples},
                                       protocol=sample_protocol)
        ref_all = {"reference": "every reference crystal", **sample_protocol}
        metrics["wdist_density"] = wasserstein("wdist_density", gen_tab["density"].to_numpy(float)[pick],
                                               ref_tab.loc[ref_tab["parsed"], "density"], unit="g/cm^3",
                                               protocol=ref_all)
        metrics["wdist_num_elems"] = wasserstein("wdist_num_elems", gen_tab["n_elements"].to_numpy(float)[pick],
                                                 ref_tab.loc[ref_tab["parsed"], "n_elements"], unit="elements",
                                                 protocol=ref_all)
    else:
        why = (f"GenEval raises: not enough valid crystals in the predicted set: "
               f"{len(valid_idx)}/{n_samples}")
        for name in ("comp_div", "struct_div", "wdist_density", "wdist_num_elems"):
            not_computed[name] = why
    cov = coverage(gen_fp.struct, gen_fp.comp, ref_fp.struct, ref_fp.comp,
                   gen_mask=parsed & fp_ok, n_generated=n, precision_denominator_name="generated",
                   struct_cutoff=struct_cutoff, comp_cutoff=comp_cutoff, name="cov")
    for m in cov.metrics():
        # CDVAE's names: cov_recall, cov_precision, amsd_recall, ..., amcd_precision
        name = m.name if m.name in ("cov_recall", "cov_precision") else m.name.removeprefix("cov_")
        metrics[name] = replace(m, name=name)
    not_computed["wdist_prop"] = "needs CDVAE's property model (not part of this toolkit)"
    protocol = {
        "name": "cdvae",
        "reference_code": "CDVAE scripts/compute_metrics.py (GenEval, compute_cov)",
        "n_samples": n_samples,
        "seed": seed,
        "difference": "the valid samples are drawn with this seed; CDVAE uses numpy's unseeded global state",
        "thresholds": CDVAE_THRESHOLDS,
        "struct_cutoff": struct_cutoff,
        "comp_cutoff": comp_cutoff,
    }
    return {"metrics": metrics, "not_computed": not_computed, "protocol": protocol}


def add_cdvae_validity(out_dir: str | Path, *, workers: int = 1, show_progress: bool = False,
                       cache: str | Path | None = None) -> dict[str, Any]:
    """CDVAE's validity triple for a ``llamat-cif validate`` output folder (``validate --protocol cdvae``).

    Reads ``validity.parquet`` (validated with CDVAE's thresholds), fingerprints the valid rows
    (CrystalNN, cached), and writes ``{"cdvae": {comp_valid, struct_valid, valid}}`` with
    ``protocol.name = "cdvae"`` into ``validity_summary.json``.

    Raises:
        ValueError: the folder's validation used other settings, or kept no CIF text.
    """
    import json

    from llamat_cif.metrics.fingerprints import compute_fingerprints
    from llamat_cif.metrics.validity import normalise_validity

    out = Path(out_dir)
    summary_path = out / "validity_summary.json"
    summary = json.loads(summary_path.read_text())
    off = thresholds_mismatch(summary.get("protocol"))
    if off:
        raise ValueError("protocol cdvae needs CDVAE's settings; this validation used "
                         + ", ".join(f"{k}={a!r} (CDVAE: {b!r})" for k, (a, b) in off.items()))
    rows = pd.read_parquet(out / "validity.parquet")
    v = normalise_validity(rows)
    valid_idx = np.flatnonzero(v["valid"].to_numpy(bool))
    if len(valid_idx) and "cif" not in rows.columns:
        raise ValueError("protocol cdvae fingerprints the valid structures: validate with --keep-cif")
    fp = compute_fingerprints([rows["cif"].iloc[i] for i in valid_idx], cache=cache, workers=workers,
                              show_progress=show_progress, label="CrystalNN fingerprints (valid)")
    # rows that are not valid need no fingerprint: CDVAE's "valid" only ever loses rows to it
    fp_ok = np.ones(len(v), bool)
    fp_ok[valid_idx] = fp.ok
    triple, _ = validity_triple(v, fp_ok)
    summary["cdvae"] = {k: m.to_dict() for k, m in triple.items()}
    summary["protocol"] = {**summary["protocol"], "name": "cdvae",
                           "reference_code": "CDVAE scripts/compute_metrics.py (Crystal, GenEval.get_validity)"}
    tmp = summary_path.with_name(summary_path.name + ".tmp")
    tmp.write_text(json.dumps(summary, indent=2, default=str))
    tmp.replace(summary_path)
    return summary


__all__ = ["CDVAE_THRESHOLDS", "NAMES", "N_SAMPLES", "add_cdvae_validity", "cdvae_metrics",
           "mean_pairwise_distance", "thresholds_mismatch", "validity_triple"]
