"""The coverage stage of a benchmark: fingerprints, CDVAE coverage protocols, per-element coverage.

:func:`coverage_section` fingerprints (cached by content) the reference and the samples in scope
and computes the coverage protocols :mod:`llamat_cif.metrics.run` writes to ``metrics.json``
(``coverage``, ``coverage_joint``, ``coverage_cdvae``, ``coverage_crystal_text_llm``) and the
per-element recall and precision; :func:`skipped_coverage` is the ``--no-coverage`` variant
(element frequencies only, no fingerprint at all). :func:`reference_validity` gives the
crystal-text-llm protocol its valid reference structures.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from llamat_cif.metrics.config import BenchmarkConfig
from llamat_cif.metrics.coverage import coverage
from llamat_cif.metrics.elements import per_element_coverage
from llamat_cif.metrics.fingerprints import (
    Fingerprints,
    cache_dir,
    compute_fingerprints,
    set_key,
    variant_name,
)
from llamat_cif.metrics.metric import Metric

#: ``metrics.json["protocol"]["coverage"]`` of a run without fingerprints
SKIPPED = {"skipped": True,
           "reason": "coverage=False (--no-coverage): no CrystalNN fingerprints were computed, "
                     "so the coverage metrics and the per-element recall/precision are left out"}


def coverage_section(
    cfg: BenchmarkConfig,
    gen_cifs: list[str],
    ref_cifs: list[str],
    ref: pd.DataFrame,
    gen_tab: pd.DataFrame,
    ref_tab: pd.DataFrame,
    valid: np.ndarray,
    parsed: np.ndarray,
    *,
    struct_cutoff: float,
    comp_cutoff: float,
    say,
    lap,
    t: float,
    show_progress: bool,
    ref_label: str,
) -> tuple[dict[str, Metric], pd.DataFrame, dict, dict[str, Any], tuple[Fingerprints, Fingerprints]]:
    """Fingerprints (cached) of the reference and the samples in scope, coverage, per element.

    ``say`` logs a line; ``lap(name, since)`` records a stage's time in the run's timings and
    returns the time now (``t``: when this stage began).

    Returns:
        ``(metrics, per_element, coverage_protocol, fingerprint_info, (generated, reference
        fingerprints))``; ``fingerprint_info`` holds the fingerprint counts, rate and cache keys
        written to ``metrics.json``.
    """
    n_gen = len(gen_cifs)
    metrics: dict[str, Metric] = {}
    say(f"{ref_label}: {len(ref)} structures; fingerprinting (cached by content)")
    ref_fp = compute_fingerprints(ref_cifs, cache=cfg.cache_dir, show_progress=show_progress,
                                  label=f"fingerprints {ref_label}", workers=cfg.workers,
                                  shortcut=cfg.fingerprint_shortcut)
    t = lap("fingerprints_reference", t)
    scope = valid if cfg.fingerprint_scope == "valid" else parsed
    # only the structures in scope are fingerprinted (CrystalNN can crawl on overlapping atoms);
    # the set is keyed by their CIF text, so a re-run with the same samples reads the cache
    scope_idx = np.flatnonzero(scope)
    fp_part = compute_fingerprints([gen_cifs[i] for i in scope_idx], cache=cfg.cache_dir,
                                   show_progress=show_progress, label="fingerprints generated",
                                   workers=cfg.workers, shortcut=cfg.fingerprint_shortcut)
    gen_fp = fp_part.scatter(scope_idx, n_gen)
    t = lap("fingerprints_generated", t)
    fp_rate = gen_fp.computed / gen_fp.seconds if gen_fp.computed and gen_fp.seconds > 0 else None

    # ---- coverage
    cov_kw = {"struct_cutoff": struct_cutoff, "comp_cutoff": comp_cutoff}
    main = coverage(gen_fp.struct, gen_fp.comp, ref_fp.struct, ref_fp.comp, gen_mask=valid & gen_fp.ok,
                    n_generated=int(valid.sum()), precision_denominator_name="valid generated",
                    name="coverage", **cov_kw)
    joint = coverage(gen_fp.struct, gen_fp.comp, ref_fp.struct, ref_fp.comp, gen_mask=valid & gen_fp.ok,
                     n_generated=int(valid.sum()), precision_denominator_name="valid generated",
                     pairing="joint", name="coverage_joint", **cov_kw)
    for m in main.metrics() + [joint.recall, joint.precision]:
        metrics[m.name] = m
    if cfg.fingerprint_scope == "parsed":
        cd = coverage(gen_fp.struct, gen_fp.comp, ref_fp.struct, ref_fp.comp, gen_mask=parsed & gen_fp.ok,
                      n_generated=n_gen, precision_denominator_name="generated", name="coverage_cdvae",
                      **cov_kw)
        metrics[cd.recall.name], metrics[cd.precision.name] = cd.recall, cd.precision
    ref_valid = reference_validity(ref, cfg)
    if ref_valid is not None:
        ct = coverage(gen_fp.struct, gen_fp.comp, ref_fp.struct, ref_fp.comp, gen_mask=valid & gen_fp.ok,
                      ref_mask=ref_valid, precision_denominator_name="valid generated with fingerprint",
                      name="coverage_crystal_text_llm", **cov_kw)
        metrics[ct.recall.name], metrics[ct.precision.name] = ct.recall, ct.precision
    lap("coverage", t)

    # ---- per element
    per_el = per_element_coverage(ref_tab["elements"].tolist(), main.ref_covered,
                                  gen_tab["elements"].tolist(), main.gen_precise,
                                  ref_mask=main.ref_mask, gen_mask=valid)
    protocol = {**main.protocol, "headline": "generated = valid samples; recall over reference; "
                "precision over valid generated (crystal-text-llm denominator)",
                "structure_fingerprint": variant_name(cfg.fingerprint_shortcut)}
    info = {"n_with_fingerprint": int(ref_fp.ok.sum()), "fingerprinted": int(gen_fp.ok.sum()),
            "fingerprints_per_s_generated": fp_rate,
            "fingerprint_cache": {"reference_key": ref_fp.key, "generated_key": gen_fp.key}}
    return metrics, per_el, protocol, info, (gen_fp, ref_fp)


def skipped_coverage(gen_tab: pd.DataFrame, ref_tab: pd.DataFrame, valid: np.ndarray) -> tuple[pd.DataFrame, dict]:
    """``(per_element, coverage_protocol)`` without fingerprints (``--no-coverage``).

    Element frequencies need no fingerprint: the per-element table keeps its frequency columns and
    leaves recall/precision out.
    """
    per_el = per_element_coverage(
        ref_tab["elements"].tolist(), np.zeros(len(ref_tab), bool), gen_tab["elements"].tolist(),
        np.zeros(len(gen_tab), bool), ref_mask=ref_tab["parsed"].to_numpy(bool), gen_mask=valid,
    )[["element", "Z", "n_reference", "n_generated", "freq_reference", "freq_generated"]]
    return per_el, dict(SKIPPED)


def reference_validity(ref: pd.DataFrame, cfg: BenchmarkConfig) -> np.ndarray | None:
    """CDVAE validity (structural and SMACT) of the reference structures, for the crystal-text-llm
    protocol; cached beside the reference fingerprints.

    Only the two CDVAE checks are run (through the validators' own functions), not the whole suite:
    the self-consistency checks would cost minutes on 7,342 structures and do not enter this number.
    """
    from llamat_cif.validators import compositional_validity, structural_validity

    cifs = ref["cif"].tolist()
    path = cache_dir(cfg.cache_dir) / set_key(cifs) / "cdvae_validity.npy"
    if path.exists():
        v = np.load(path)
        if len(v) == len(ref):
            return v
    from llamat_cif.cif import read_cif

    out = np.zeros(len(cifs), bool)
    for i, cif in enumerate(cifs):
        try:
            s = read_cif(cif)
            out[i] = bool(structural_validity(s)) and bool(compositional_validity(s.composition))
        except Exception:  # noqa: BLE001 - an unreadable reference row is simply not valid
            out[i] = False
    path.parent.mkdir(parents=True, exist_ok=True)
    np.save(path, out)
    return out


__all__ = ["SKIPPED", "coverage_section", "reference_validity", "skipped_coverage"]
