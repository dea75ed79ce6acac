"""The benchmark run: read a structure set, compute every metric, write metrics.json + report.

Samples and reference come from anywhere :func:`llamat_cif.metrics.sources.load_structure_set`
reads: a run folder, a registry split, a folder/zip of CIFs, a CSV/parquet with a ``cif`` column, an
ASE database or trajectory, or pymatgen/ASE objects in Python (:func:`benchmark_structures`). A run
folder (``samples.csv``: id, text, fmt, cif, error, target_formula, ...) also lends its
``validity.parquet`` and ``stability.parquet`` / ``sun.json``; any other input is validated here and
its validity table is kept in ``out`` (``validity.parquet``, reused while the input is unchanged).
Outputs in ``out``: ``metrics.json``, ``per_element.csv``, ``report.md`` and ``figures/*.png``.

Beside CDVAE's validity, coverage and property distances, every benchmark reports the distribution,
diversity and supply-risk metrics of :mod:`llamat_cif.metrics.distribution` (LeMat-GenBench's
definitions: Jensen-Shannon distances of space-group, crystal-system and element frequencies,
W(volume per atom), element/space-group Vendi scores and coverage, HHI), and uniqueness and novelty
against a training set: the reference's own train split for a registry reference, or ``train``.

With ``stability=N`` the benchmark relaxes N seeded-random valid samples itself (CHGNet, default
:class:`~llamat_cif.stability.relax.RelaxConfig`, E_hull on the MP-20 reference hull) into
``out/stability.parquet`` (resumable: a rerun relaxes only what is missing) and records which
samples it chose in ``out/stability_chosen.json``. Its funnel is reported over the chosen samples
and scaled to all generated, with a geometry table (:func:`llamat_cif.physics.geometry_table`)
of the chosen and of a seeded reference sample. A run folder holding ``stability_chosen.json``
is not read as a full stability run: its ``stability.parquet`` covers the chosen samples only.

Coverage protocols written to ``metrics.json``:

* ``coverage`` (headline): generated = *valid* samples (their fingerprints), reference = every
  reference structure with a fingerprint; recall over reference, precision over valid generated;
  CDVAE's independent nearest neighbours. ``coverage_joint``: the same with one partner within both
  cutoffs.
* ``coverage_cdvae`` (``fingerprint_scope="parsed"`` only): every parsed sample takes part and the
  precision denominator is all generated samples, as in CDVAE's ``compute_cov``.
* ``coverage_crystal_text_llm``: invalid reference structures are dropped too (SMACT-invalid MP-20
  entries), as crystal-text-llm's ``basic_eval.py`` does; needs the validators.

With ``coverage=False`` (``--no-coverage``) no CrystalNN fingerprints are computed, neither of the
samples nor of the reference set (about 15 min uncached for the 7,342 MP-20 test structures on two
cores): the ``coverage*`` metrics and the per-element recall/precision are left out,
``per_element.csv`` holds element frequencies only, and ``metrics.json["protocol"]["coverage"]``
says ``{"skipped": true, ...}``. Validity, uniqueness/novelty, property distances, CSP and the
stability metrics do not use fingerprints and are computed as usual.
"""

from __future__ import annotations

import json
import os
import platform
import time
import warnings
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from llamat_cif.metrics.coverage import coverage, cutoffs_for
from llamat_cif.metrics.csp import csp_match
from llamat_cif.metrics.distribution import distribution_distances, diversity, supply_risk
from llamat_cif.metrics.elements import per_element_coverage
from llamat_cif.metrics.fingerprints import compute_fingerprints
from llamat_cif.metrics.metric import Metric
from llamat_cif.metrics.properties import SYMPREC, structure_table, wasserstein
from llamat_cif.metrics.sources import SourceError, StructureSet, load_structure_set
from llamat_cif.metrics.stability_metrics import (
    choose_valid,
    chosen_stability,
    funnel,
    geometry_section,
    load_stability,
    stability_rates,
    sun_rates,
)
from llamat_cif.metrics.validity import load_or_compute_validity, validity_rates
from llamat_cif.protocol import E_HULL_METASTABLE, E_HULL_STABLE, hardware, package_versions

PACKAGES = ("llamat-cif", "numpy", "scipy", "pandas", "pymatgen", "matminer", "pymatviz", "smact",
            "matplotlib", "chgnet")

#: per-structure warnings that change no number and would flood the progress output: pymatgen's
#: CIF parser rounding coordinates, and pymatgen's NaN electronegativity of noble gases
QUIET_WARNINGS = ("Issues encountered while parsing CIF", "No Pauling electronegativity")

#: written by ``--stability N`` beside its ``stability.parquet``: which samples were chosen
CHOSEN_FILE = "stability_chosen.json"
#: benchmark protocols: ours (documented denominators) and CDVAE's compute_metrics.py on top
PROTOCOLS = ("llamat-cif", "cdvae")


@dataclass(frozen=True)
class BenchmarkConfig:
    """Everything that defines a benchmark run (written into ``metrics.json``).

    Attributes:
        samples: the structures to benchmark: a run folder, a registry split, a folder/zip of CIFs,
            a CSV/parquet with a ``cif`` column, an ASE database or trajectory
            (:func:`~llamat_cif.metrics.sources.load_structure_set`).
        out: output folder (default: the run folder; required for any other input).
        reference: the reference set, a registry split ``<dataset>-<split>`` (``mp20-test``: MP-20
            test, available subset) or any input ``samples`` accepts.
        train: the training set for novelty and S.U.N. (registry split or any input); None: the
            reference dataset's train split for a registry reference, else novelty is not assessed.
        seed: seeds the subsampling when ``max_samples`` cuts the set.
        max_samples: use at most this many samples (random subset, seeded); None: all.
        struct_cutoff, comp_cutoff: coverage cutoffs; None: CDVAE's for the reference dataset
            (MP-20's, 0.4 and 10, for a reference that is not a registry split).
        fingerprint_scope: ``"valid"`` fingerprints valid samples only (fast, the headline needs
            nothing else); ``"parsed"`` also the parsed-but-invalid ones (adds ``coverage_cdvae``).
        fingerprint_shortcut: average one CrystalNN site per group of symmetry-equivalent sites
            (2-5x faster; a named variant, up to 0.024 off CDVAE's every-site mean on generated
            samples); False: every site, as CDVAE.
        coverage: compute CrystalNN fingerprints and the CDVAE coverage metrics (overall and per
            element); False skips every fingerprint, of the samples and of the reference set.
        csp_ks: best-of-k budgets for formula-conditioned samples.
        metastable_threshold, stable_threshold: E_hull thresholds (eV/atom).
        workers: processes for fingerprinting.
        data_dir, cache_dir: overrides of the data folder and fingerprint cache.
        reference_limit: use only the first N reference structures (tests, quick looks).
        figures: draw the PNG figures.
        novelty: uniqueness and novelty (vs the reference dataset's train split) of the valid
            samples as generated.
        stability: relax this many seeded-random valid samples (0: off) and report their funnel
            (relaxed, converged, metastable, stable, S.U.N., M.S.U.N.) over the chosen and
            scaled to all generated; ``workers`` processes relax them.
        rescale_volume: with ``stability``, scale each chosen structure to its
            composition-predicted volume before relaxing.
        geometry_reference_n: reference structures (seeded sample) in the geometry table.
        protocol: ``"llamat-cif"`` (our documented denominators, the default) or ``"cdvae"``:
            also CDVAE's ``compute_metrics.py`` numbers exactly (:mod:`llamat_cif.metrics.cdvae`:
            every generated crystal, invalid included; ``cdvae_n_samples`` valid crystals for the
            diversity and property distances), in ``metrics.json["cdvae"]``. Needs coverage and
            every-site fingerprints; fingerprints every parsed sample.
        cdvae_n_samples: valid crystals CDVAE draws for diversity and property distances (1,000;
            another number is a named deviation, recorded in the protocol).
    """

    samples: str
    out: str | None = None
    reference: str = "mp20-test"
    train: str | None = None
    seed: int = 0
    max_samples: int | None = None
    struct_cutoff: float | None = None
    comp_cutoff: float | None = None
    fingerprint_scope: str = "valid"
    fingerprint_shortcut: bool = False
    coverage: bool = True
    csp_ks: tuple[int, ...] = (1, 20)
    metastable_threshold: float = E_HULL_METASTABLE
    stable_threshold: float = E_HULL_STABLE
    workers: int = 1
    data_dir: str | None = None
    cache_dir: str | None = None
    reference_limit: int | None = None
    figures: bool = True
    novelty: bool = True
    stability: int = 0
    rescale_volume: bool = False
    geometry_reference_n: int = 500  # quartiles of 500 structures are stable to a few per cent
    protocol: str = "llamat-cif"
    cdvae_n_samples: int = 1000

    def __post_init__(self) -> None:
        if self.protocol not in PROTOCOLS:
            raise ValueError(f"protocol must be one of {', '.join(PROTOCOLS)}, not {self.protocol!r}")
        if self.protocol == "cdvae":
            if not self.coverage:
                raise ValueError("protocol cdvae needs the fingerprints: drop --no-coverage")
            if self.fingerprint_shortcut:
                raise ValueError("protocol cdvae fingerprints every site: drop --fingerprint-shortcut")
            if self.cdvae_n_samples < 2:
                raise ValueError("cdvae_n_samples must be at least 2 (diversity needs a pair)")


def _versions() -> dict[str, str | None]:
    return {**package_versions(PACKAGES), "python": platform.python_version()}


def _hardware() -> dict[str, Any]:
    return hardware()


def read_samples(run_dir: Path) -> pd.DataFrame:
    """``samples.csv`` with string columns (empty strings for missing text)."""
    path = Path(run_dir) / "samples.csv"
    if not path.exists():
        raise FileNotFoundError(f"{path} not found: a run folder holds samples.csv (llamat-cif generate)")
    df = pd.read_csv(path, dtype={"id": str}, keep_default_na=False)
    if "cif" not in df.columns:
        raise ValueError(f"{path} has no 'cif' column (columns: {list(df.columns)})")
    if "id" not in df.columns:
        df.insert(0, "id", [f"s{i:06d}" for i in range(len(df))])
    return df


class _Progress:
    """Rich progress for the slow steps; silent when ``show`` is False."""

    def __init__(self, show: bool):
        self.show = show

    def log(self, msg: str) -> None:
        if self.show:
            from rich.console import Console

            Console(stderr=True).print(f"[dim]{time.strftime('%H:%M:%S')}[/] {msg}", highlight=False)


def run_benchmark(
    cfg: BenchmarkConfig,
    *,
    show_progress: bool = True,
    samples_set: StructureSet | None = None,
    reference_set: StructureSet | None = None,
) -> dict[str, Any]:
    """Compute every metric for a structure set and write ``metrics.json`` (+ report when ``figures``).

    Args:
        cfg: the benchmark's settings.
        show_progress: rich progress on stderr.
        samples_set, reference_set: structure sets already read (Python objects, see
            :func:`benchmark_structures`); they replace ``cfg.samples`` / ``cfg.reference``, which
            then only name them in ``metrics.json``.

    Returns:
        The ``metrics.json`` content.

    Raises:
        SourceError: an input cannot be read as a structure set, or ``out`` is missing for an
            input that is not a run folder.
    """
    with warnings.catch_warnings():
        for msg in QUIET_WARNINGS:
            warnings.filterwarnings("ignore", message=msg)
        return _run_benchmark(cfg, show_progress=show_progress, samples_set=samples_set,
                              reference_set=reference_set)


def _run_benchmark(cfg: BenchmarkConfig, *, show_progress: bool, samples_set: StructureSet | None,
                   reference_set: StructureSet | None) -> dict[str, Any]:
    t0 = time.perf_counter()
    if cfg.protocol == "cdvae" and cfg.fingerprint_scope != "parsed":
        # CDVAE fingerprints every crystal it can build, valid or not
        cfg = replace(cfg, fingerprint_scope="parsed")
    say = _Progress(show_progress).log
    sset = samples_set or load_structure_set(cfg.samples, data_dir=cfg.data_dir)
    run_dir = sset.run_dir  # None unless the samples are a run folder
    if cfg.out:
        out = Path(cfg.out)
    elif run_dir is not None:
        out = run_dir
    else:
        raise SourceError(f"{sset.name} is not a run folder: give an output folder (--out)")
    out.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}

    def lap(name: str, since: float) -> float:
        now = time.perf_counter()
        timings[name] = round(now - since, 3)
        return now

    # ---- samples and validity
    t = time.perf_counter()
    samples = sset.table
    n_total = len(samples)
    if n_total == 0:
        raise SourceError(f"{sset.name}: no structures to benchmark")
    if cfg.max_samples is not None and n_total > cfg.max_samples:
        rng = np.random.default_rng(cfg.seed)
        keep = np.sort(rng.choice(n_total, cfg.max_samples, replace=False))
        samples = samples.iloc[keep].reset_index(drop=True)
    n_gen = len(samples)
    if run_dir is not None:
        validity, validity_protocol = load_or_compute_validity(run_dir, samples)
    else:
        validity, validity_protocol = _input_validity(samples, out, say)
    cdvae_validity, cdvae_validity_protocol = validity, validity_protocol
    if cfg.protocol == "cdvae":
        from llamat_cif.metrics.cdvae import thresholds_mismatch

        off = thresholds_mismatch(validity_protocol)
        if off:
            say("protocol cdvae: the samples' validity was computed with other settings "
                f"({', '.join(f'{k}={a}' for k, (a, _) in off.items())}); validating again with CDVAE's")
            cdvae_validity, cdvae_validity_protocol = _input_validity(samples, out, say, stem="validity_cdvae")
    valid = validity["valid"].to_numpy(bool)
    parsed = validity["parsed"].to_numpy(bool)  # the validators' parse step has no settings
    metrics: dict[str, Metric] = dict(validity_rates(validity))
    t = lap("validity", t)
    read_errors = samples.loc[samples["read_error"].astype(str).str.len().gt(0), ["id", "read_error"]] \
        if "read_error" in samples.columns else samples.iloc[:0][["id"]].assign(read_error="")
    say(f"{sset.description}: {n_gen} used, parsed {parsed.sum()}, valid {valid.sum()}"
        + (f", {len(read_errors)} unreadable" if len(read_errors) else ""))

    # ---- reference set
    rset = reference_set or load_structure_set(cfg.reference, data_dir=cfg.data_dir)
    ref = rset.table
    ref_unreadable = int(ref["read_error"].astype(str).str.len().gt(0).sum())
    ref = ref[ref["read_error"].astype(str).eq("")].reset_index(drop=True)
    if cfg.reference_limit is not None:
        ref = ref.iloc[:cfg.reference_limit].reset_index(drop=True)
    if ref.empty:
        raise SourceError(f"reference {rset.name}: no readable structures")
    ref_cifs = ref["cif"].tolist()
    cutoff_key = rset.registry[0] if rset.registry else "mp20"
    sc_default, cc_default = cutoffs_for(cutoff_key)
    struct_cutoff = cfg.struct_cutoff if cfg.struct_cutoff is not None else sc_default
    comp_cutoff = cfg.comp_cutoff if cfg.comp_cutoff is not None else cc_default
    ref_label = rset.name if rset.registry else "reference"

    # ---- descriptors (cached) and fingerprints (cached)
    gen_cifs = samples["cif"].tolist()
    gen_tab = structure_table(gen_cifs, cache=cfg.cache_dir, show_progress=show_progress,
                              label="parsing samples")
    ref_tab = structure_table(ref_cifs, cache=cfg.cache_dir, show_progress=show_progress,
                              label=f"parsing {ref_label}")
    t = lap("structure_tables", t)
    if cfg.fingerprint_scope not in ("valid", "parsed"):
        raise ValueError("fingerprint_scope must be 'valid' or 'parsed'")
    fp_info: dict[str, Any] = {}
    cdvae_block: dict[str, Any] | None = None
    if cfg.coverage:
        cov_metrics, per_el, cov_protocol, fp_info, (gen_fp, ref_fp) = _coverage_section(
            cfg, gen_cifs, ref_cifs, ref, gen_tab, ref_tab, valid, parsed,
            struct_cutoff=struct_cutoff, comp_cutoff=comp_cutoff, say=say, lap=lap, t=t,
            show_progress=show_progress, ref_label=ref_label)
        metrics.update(cov_metrics)
        t = time.perf_counter()
        if cfg.protocol == "cdvae":
            from llamat_cif.metrics.cdvae import cdvae_metrics

            cdvae_block = cdvae_metrics(cdvae_validity, gen_tab, ref_tab, gen_fp, ref_fp,
                                        struct_cutoff=struct_cutoff, comp_cutoff=comp_cutoff,
                                        n_samples=cfg.cdvae_n_samples, seed=cfg.seed)
            cdvae_block["protocol"]["validity"] = cdvae_validity_protocol
            t = lap("cdvae", t)
    else:
        say("coverage skipped (--no-coverage): no fingerprints of the samples or the reference")
        # element frequencies need no fingerprint: recall/precision columns are left out
        per_el = per_element_coverage(
            ref_tab["elements"].tolist(), np.zeros(len(ref_tab), bool), gen_tab["elements"].tolist(),
            np.zeros(n_gen, bool), ref_mask=ref_tab["parsed"].to_numpy(bool), gen_mask=valid,
        )[["element", "Z", "n_reference", "n_generated", "freq_reference", "freq_generated"]]
        cov_protocol = {"skipped": True,
                        "reason": "coverage=False (--no-coverage): no CrystalNN fingerprints were computed, "
                                  "so the coverage metrics and the per-element recall/precision are left out"}
    per_el.to_csv(out / "per_element.csv", index=False)

    # ---- property distributions (valid generated vs reference)
    metrics["wdist_density"] = wasserstein("wdist_density", gen_tab.loc[valid, "density"],
                                           ref_tab.loc[ref_tab["parsed"], "density"], unit="g/cm^3",
                                           protocol={"generated": "valid", "reference": "all parsed"})
    metrics["wdist_num_elems"] = wasserstein("wdist_num_elems", gen_tab.loc[valid, "n_elements"],
                                             ref_tab.loc[ref_tab["parsed"], "n_elements"], unit="elements",
                                             protocol={"generated": "valid", "reference": "all parsed"})
    # LeMat-GenBench's families: JS distances, W(volume/atom), diversity, supply risk
    ref_parsed = ref_tab["parsed"].to_numpy(bool)
    metrics.update(distribution_distances(gen_tab, ref_tab, gen_mask=valid, ref_mask=ref_parsed))
    metrics.update(diversity(gen_tab, valid))
    metrics.update(supply_risk(gen_tab, valid))
    t = lap("distributions", t)

    # ---- uniqueness and novelty of the valid samples as generated
    training, why_not = None, None
    if cfg.novelty or cfg.stability > 0:
        training, why_not = _training_set(cfg, rset)
    if cfg.novelty:
        from llamat_cif.metrics.diversity import uniqueness_novelty

        say("uniqueness and novelty of valid samples (StructureMatcher within each formula)")
        metrics.update(uniqueness_novelty(gen_cifs, valid, training))
        if why_not:
            say(f"novelty not assessed: {why_not}")
        t = lap("uniqueness_novelty", t)

    # ---- stability (a run folder's own stability step, when it has one)
    stab, stab_summary, sun = load_stability(run_dir) if run_dir is not None else (None, {}, {})
    if stab is not None and (run_dir / CHOSEN_FILE).exists():
        # rows of a --stability N benchmark: N chosen samples, not a stability step over the run
        say(f"{run_dir / 'stability.parquet'} holds --stability N rows ({CHOSEN_FILE}): "
            "reported in the stability section only")
        stab, stab_summary = None, {}
    stab_protocol = {k: stab_summary[k] for k in ("protocol", "potential", "hull", "relaxer", "thresholds")
                     if k in stab_summary}
    sun_metric = None
    e_form_gen = None
    if stab is not None:
        ids = set(samples["id"].astype(str))
        stab = stab[stab["id"].isin(ids)] if "id" in stab.columns else stab
        metrics.update(stability_rates(stab, n_gen, metastable_threshold=cfg.metastable_threshold,
                                       stable_threshold=cfg.stable_threshold, protocol=stab_protocol))
        if "e_form_per_atom" in stab.columns and "formation_energy_per_atom" in ref.columns:
            e_form_gen = pd.to_numeric(stab["e_form_per_atom"], errors="coerce")
            metrics["wdist_e_form"] = wasserstein(
                "wdist_e_form", e_form_gen, ref["formation_energy_per_atom"], unit="eV/atom",
                protocol={"generated": "stability step e_form_per_atom (ML potential, relaxed)",
                          "reference": f"{cfg.reference} formation_energy_per_atom (DFT, Materials Project)",
                          **stab_protocol})
    sun_metrics = sun_rates(stab, sun, n_gen)
    metrics.update(sun_metrics)
    sun_metric = sun_metrics.get("sun_rate")
    steps = _screen_funnel(run_dir, n_gen) if run_dir is not None else None
    if steps is None and stab is not None:
        steps = funnel(n_gen, validity, stab, sun=sun_metric, metastable_threshold=cfg.metastable_threshold,
                       stable_threshold=cfg.stable_threshold)
    t = lap("stability", t)

    # ---- stability benchmark: relax N chosen valid samples
    stability_section: dict | None = None
    e_hull_chosen = None
    if cfg.stability > 0:
        chosen_metrics, stability_section, e_hull_chosen = _stability_benchmark(
            cfg, samples, valid, ref, out, training=training, why_not=why_not, say=say,
            show_progress=show_progress)
        metrics.update(chosen_metrics)
        t = lap("stability_benchmark", t)

    # ---- CSP for formula-conditioned samples
    if "target_formula" in samples.columns and samples["target_formula"].astype(str).str.len().gt(0).any():
        say("formula-conditioned samples: CSP match rate (StructureMatcher)")
        csp_in = samples.assign(valid=valid)
        ref_csp = ref.assign(formula=ref_tab["formula"].values)
        metrics.update(_csp_with_progress(csp_in, ref_csp, cfg.csp_ks, show_progress))
        t = lap("csp", t)

    wall = time.perf_counter() - t0
    result: dict[str, Any] = {
        "run": sset.name,
        "reference": {
            "name": rset.name,
            "kind": rset.kind,
            "description": _reference_description(rset, len(ref)),
            "n": len(ref),
            "unreadable": ref_unreadable,
            **({"n_with_fingerprint": fp_info["n_with_fingerprint"]} if cfg.coverage else {}),
        },
        "samples": {"source": sset.description, "kind": sset.kind, "in_file": n_total, "used": n_gen,
                    "parsed": int(parsed.sum()), "valid": int(valid.sum()),
                    "unreadable": len(read_errors),
                    "unreadable_examples": read_errors.head(10).to_dict("records"),
                    **({"fingerprinted": fp_info["fingerprinted"]} if cfg.coverage else {})},
        "training": {"name": training.name if training is not None else None, "n": training.n if training else None,
                     **({"not_assessed": why_not} if why_not else {})},
        "metrics": {k: m.to_dict() for k, m in metrics.items()},
        "funnel": steps,
        **({"stability": stability_section} if stability_section is not None else {}),
        **({"cdvae": {"metrics": {k: m.to_dict() for k, m in cdvae_block["metrics"].items()},
                      "not_computed": cdvae_block["not_computed"], "protocol": cdvae_block["protocol"]}}
           if cdvae_block is not None else {}),
        "protocol": {
            "name": cfg.protocol,
            "config": asdict(cfg),
            "coverage": cov_protocol,
            "generation": _generation_config(run_dir) if run_dir is not None else {},
            "distributions": {"spglib_symprec_A": SYMPREC,
                              "generated": "valid samples", "reference": "all parsed reference structures",
                              "coverage_cutoffs_from": cutoff_key if rset.registry else
                              "MP-20 (CDVAE) defaults: the reference is not a registry split"},
            "validity": validity_protocol,
            "stability": stab_protocol,
            "seed": cfg.seed,
            "versions": _versions(),
            "hardware": _hardware(),
            "wall_time_s": round(wall, 2),
            "timings_s": timings,
            **({k: fp_info[k] for k in ("fingerprints_per_s_generated", "fingerprint_cache")}
               if cfg.coverage else {}),
        },
    }
    (out / "metrics.json").write_text(json.dumps(result, indent=2, default=_json_default))
    if cfg.figures:
        from llamat_cif.metrics.report import write_report

        write_report(out, result, per_el, gen_tab[valid], ref_tab[ref_tab["parsed"]],
                     e_form_gen=e_form_gen,
                     e_form_ref=ref["formation_energy_per_atom"] if "formation_energy_per_atom" in ref else None,
                     e_hull_chosen=e_hull_chosen)
        result["protocol"]["wall_time_s"] = round(time.perf_counter() - t0, 2)
        (out / "metrics.json").write_text(json.dumps(result, indent=2, default=_json_default))
    return result


def _coverage_section(
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
) -> tuple[dict[str, Metric], pd.DataFrame, dict, dict[str, Any]]:
    """Fingerprints (cached) of the reference and the samples in scope, coverage, per element.

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
    ref_valid = _reference_validity(ref, cfg)
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
    from llamat_cif.metrics.fingerprints import variant_name

    protocol = {**main.protocol, "headline": "generated = valid samples; recall over reference; "
                "precision over valid generated (crystal-text-llm denominator)",
                "structure_fingerprint": variant_name(cfg.fingerprint_shortcut)}
    info = {"n_with_fingerprint": int(ref_fp.ok.sum()), "fingerprinted": int(gen_fp.ok.sum()),
            "fingerprints_per_s_generated": fp_rate,
            "fingerprint_cache": {"reference_key": ref_fp.key, "generated_key": gen_fp.key}}
    return metrics, per_el, protocol, info, (gen_fp, ref_fp)


def _stability_benchmark(
    cfg: BenchmarkConfig,
    samples: pd.DataFrame,
    valid: np.ndarray,
    ref: pd.DataFrame,
    out: Path,
    *,
    training,
    why_not: str | None,
    say,
    show_progress: bool,
) -> tuple[dict[str, Metric], dict, pd.Series]:
    """Relax ``cfg.stability`` seeded-random valid samples and measure them.

    Returns:
        ``(metrics, section, e_hull)``: the ``stability_*`` metrics, the ``stability`` section of
        ``metrics.json`` (protocol, funnel, geometry table) and the E_hull of the chosen samples
        relaxed without error (for the histogram).
    """
    from llamat_cif.metrics.sun import parse_structure
    from llamat_cif.stability.pipeline import (
        StabilityConfig,
        check_resume_compatible,
        run_stability,
    )
    from llamat_cif.stability.relax import RelaxConfig

    n_gen, n_valid = len(samples), int(valid.sum())
    pos = choose_valid(valid, cfg.stability, seed=cfg.seed)
    chosen = samples.iloc[pos][["id", "cif"]].astype({"id": str}).reset_index(drop=True)
    ids = chosen["id"].tolist()
    # the toolkit's default stability pipeline: CHGNet, RelaxConfig defaults, MP-20 reference hull
    scfg = StabilityConfig(relax=RelaxConfig(rescale_volume=cfg.rescale_volume), n_workers=cfg.workers,
                           batch_size=1 if len(chosen) < 64 else 8)
    say(f"stability: relaxing {len(ids)} of {n_valid} valid samples (seed {cfg.seed}) -> "
        f"{out / 'stability.parquet'}" + (" after rescaling to the predicted volume" if cfg.rescale_volume else ""))
    if (out / "stability.parquet").exists():  # refuse before marking the folder as ours
        check_resume_compatible(out / "stability_summary.json", scfg)
    (out / CHOSEN_FILE).write_text(json.dumps(
        {"n_requested": cfg.stability, "seed": cfg.seed, "n_valid": n_valid, "n_generated": n_gen,
         "chosen_ids": ids}, indent=2))
    table = run_stability(chosen, out, scfg, data_dir=cfg.data_dir, progress=show_progress)
    summary = json.loads((out / "stability_summary.json").read_text())
    relax_proto = summary.get("protocol", {})
    protocol = {
        "potential": relax_proto.get("potential", scfg.potential),
        "energy_scale": relax_proto.get("energy_scale"),
        "hull": relax_proto.get("hull"),
        "relaxer": relax_proto.get("relax", scfg.relax.protocol()),
        "fmax_eV_A": scfg.relax.fmax,
        "max_steps": scfg.relax.max_steps,
        "time_limit_s": scfg.relax.time_limit_s,
        "rescale_volume": cfg.rescale_volume,
        "metastable_threshold_eV_atom": cfg.metastable_threshold,
        "stable_threshold_eV_atom": cfg.stable_threshold,
        "seed": cfg.seed,
        "n_requested": cfg.stability,
        "n_chosen": len(ids),
        "chosen_from": f"valid samples ({n_valid} of {n_gen} generated), uniform without replacement",
        "rows": "stability.parquet",
        "novelty_reference": training.name if training is not None else None,
    }
    metrics, funnel_rows = chosen_stability(
        table, ids, n_valid=n_valid, n_generated=n_gen, training=training,
        metastable_threshold=cfg.metastable_threshold, stable_threshold=cfg.stable_threshold,
        protocol={k: protocol[k] for k in ("potential", "hull", "fmax_eV_A", "rescale_volume", "seed")})
    if training is None:
        say(f"S.U.N. of the chosen not assessed: {why_not or 'novelty off'}")

    rows = table.assign(id=table["id"].astype(str)).drop_duplicates("id", keep="last").set_index("id")
    rows = rows.reindex(ids)
    ok = rows["error"].fillna("").astype(str).eq("") & rows["relaxed_cif"].notna()
    e_hull = pd.to_numeric(rows.loc[ok, "e_hull"], errors="coerce").dropna()

    # geometry on chemical scales: the chosen as generated (and relaxed), a seeded reference sample
    as_generated = [parse_structure(c) for c in chosen["cif"]]
    sets = {"chosen, as generated": as_generated}
    if cfg.rescale_volume:
        from llamat_cif.physics import rescale_to_predicted

        sets["chosen, rescaled to predicted volume"] = [rescale_to_predicted(s) if s is not None else None
                                                        for s in as_generated]
    sets["chosen, relaxed"] = [parse_structure(c) for c in rows.loc[ok, "relaxed_cif"]]
    n_ref = min(cfg.geometry_reference_n, len(ref))
    ref_pos = np.sort(np.random.default_rng(cfg.seed).choice(len(ref), n_ref, replace=False))
    ref_name = f"{cfg.reference}: {n_ref} of {len(ref)} (seed {cfg.seed})"
    sets[f"reference ({cfg.reference})"] = [parse_structure(c) for c in ref["cif"].iloc[ref_pos]]
    geometry = geometry_section(sets, reference_name=ref_name)

    section = {
        "protocol": protocol,
        "denominators": {"chosen": len(ids), "valid": n_valid, "generated": n_gen,
                         "estimate_over_generated": "valid/generated x count/chosen"},
        "funnel": funnel_rows,
        "medians": {k.removeprefix("stability_"): metrics[k].to_dict() for k in
                    ("stability_median_e_hull", "stability_median_steps", "stability_median_seconds")},
        "total_relaxation_s": float(pd.to_numeric(rows["wall_s"], errors="coerce").sum()),
        "geometry": geometry,
        "chosen_ids": ids,
    }
    return metrics, section, e_hull


def _csp_with_progress(samples: pd.DataFrame, ref: pd.DataFrame, ks: tuple[int, ...],
                       show: bool) -> dict[str, Metric]:
    if not show:
        return csp_match(samples, ref, ks=ks)
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    with Progress(TextColumn("CSP targets"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  transient=True) as bar:
        task = bar.add_task("csp", total=None)
        return csp_match(samples, ref, ks=ks,
                         progress=lambda done, total: bar.update(task, completed=done, total=total))


def _generation_config(run_dir: Path) -> dict:
    """How the samples were made (``sample_config.json`` / ``screen_config.json``), when recorded."""
    out = {}
    for name in ("sample_config.json", "screen_config.json"):
        path = Path(run_dir) / name
        if path.exists():
            try:
                out[name.removesuffix(".json")] = json.loads(path.read_text())
            except (OSError, ValueError):
                out[name.removesuffix(".json")] = "unreadable"
    return out


def _screen_funnel(run_dir: Path, n_gen: int) -> list[tuple[str, int]] | None:
    """The screen's own funnel (``funnel.json``) when it covers exactly the samples benchmarked."""
    path = Path(run_dir) / "funnel.json"
    if not path.exists():
        return None
    try:
        stages = json.loads(path.read_text()).get("stages", [])
        steps = [(str(st["stage"]), int(st["numerator"])) for st in stages]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    # a subsampled benchmark (--max-samples) no longer matches the screen's counts
    return steps if steps and steps[0][1] == n_gen else None


def _json_default(o: Any) -> Any:
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    if isinstance(o, (np.bool_,)):
        return bool(o)
    if isinstance(o, Path):
        return str(o)
    return str(o)


def _reference_description(rset: StructureSet, n: int) -> str:
    if rset.registry == ("mp20", "test"):
        return f"MP-20 test, available subset (n={n})"
    if rset.registry:
        return f"{rset.name} (n={n})"
    return f"{rset.kind} {rset.name} (n={n})"


def _training_set(cfg: BenchmarkConfig, rset: StructureSet):
    """``(TrainingSet, None)`` for novelty and S.U.N., or ``(None, reason)``.

    ``cfg.train`` (registry split or any input) when given, else the train split of a registry
    reference's dataset.
    """
    from llamat_cif.data import DataError
    from llamat_cif.metrics.diversity import training_set_for
    from llamat_cif.metrics.sources import registry_split
    from llamat_cif.metrics.sun import TrainingSet

    if cfg.train:
        reg = registry_split(cfg.train)
        if reg is not None and not Path(cfg.train).exists():
            try:
                return TrainingSet.from_split(*reg, cfg.data_dir), None
            except DataError as exc:
                return None, str(exc)
        tset = load_structure_set(cfg.train, data_dir=cfg.data_dir)
        cifs = [c for c, e in zip(tset.table["cif"], tset.table["read_error"], strict=True) if not e]
        tab = structure_table(cifs, cache=cfg.cache_dir)
        ok = tab["parsed"].to_numpy(bool)
        return TrainingSet(tab.loc[ok, "formula"].tolist(), [c for c, k in zip(cifs, ok, strict=True) if k],
                           name=f"{tset.kind} {tset.name} (n={int(ok.sum())})"), None
    if rset.registry:
        return training_set_for(f"{rset.registry[0]}-train", cfg.data_dir)
    return None, "the reference is not a registry split and no training set (--train) was given"


def _input_validity(samples: pd.DataFrame, out: Path, say, *, stem: str = "validity") -> tuple[pd.DataFrame, dict]:
    """Validity of samples that are not a run folder, kept in ``out`` while the input is unchanged.

    The validators run on the ``cif`` column (a row without text is a parse failure); their table
    and summary go to ``out/validity.parquet`` / ``out/validity_summary.json`` with a key of the
    samples' content and the validators' default settings, so a second benchmark of the same input
    reads them instead of validating again.
    """
    from llamat_cif.metrics.sources import content_key
    from llamat_cif.metrics.validity import normalise_validity, run_validators
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
                protocol = {k: summary[k] for k in ("thresholds", "protocol", "versions") if k in summary}
                protocol["source"] = f"{rows_path.name} (kept from an earlier benchmark of the same input)"
        except (OSError, ValueError):
            table = None
    if table is None:
        say(f"validating {len(samples)} structures (CDVAE checks and more; kept in {rows_path})")
        frame = samples[["id", "cif"]].assign(id=samples["id"].astype(str))
        table, summary = run_validators(frame, column="cif")
        protocol = {k: summary[k] for k in ("thresholds", "protocol", "versions") if k in summary}
        protocol["source"] = "computed by llamat_cif.validators.validate_table"
        tmp = rows_path.with_name(rows_path.name + ".tmp")
        table.drop(columns=["cif"], errors="ignore").to_parquet(tmp, index=False)
        os.replace(tmp, rows_path)
        summary_path.write_text(json.dumps({**summary, "samples_key": key}, indent=2, default=_json_default))
    v = normalise_validity(table)
    v = samples[["id"]].astype(str).merge(v.drop_duplicates("id"), on="id", how="left")
    for c in v.columns:
        if c != "id":
            v[c] = v[c].fillna(False).astype(bool)
    return v, protocol


def _reference_validity(ref: pd.DataFrame, cfg: BenchmarkConfig) -> np.ndarray | None:
    """CDVAE validity (structural and SMACT) of the reference structures, for the crystal-text-llm
    protocol; cached beside the reference fingerprints.

    Only the two CDVAE checks are run (through the validators' own functions), not the whole suite:
    the self-consistency checks would cost minutes on 7,342 structures and do not enter this number.
    """
    from llamat_cif.metrics.fingerprints import cache_dir, set_key
    from llamat_cif.validators import compositional_validity, structural_validity

    cifs = ref["cif"].tolist()
    path = cache_dir(cfg.cache_dir) / set_key(cifs) / "cdvae_validity.npy"
    if path.exists():
        v = np.load(path)
        if len(v) == len(ref):
            return v
    import warnings

    from pymatgen.core import Structure

    out = np.zeros(len(cifs), bool)
    for i, cif in enumerate(cifs):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                s = Structure.from_str(cif, fmt="cif")
            out[i] = bool(structural_validity(s)) and bool(compositional_validity(s.composition))
        except Exception:  # noqa: BLE001 - an unreadable reference row is simply not valid
            out[i] = False
    path.parent.mkdir(parents=True, exist_ok=True)
    np.save(path, out)
    return out


def benchmark_structures(
    structures,
    *,
    out: str | os.PathLike,
    reference="mp20-test",
    name: str = "structures",
    show_progress: bool = False,
    **settings: Any,
) -> dict[str, Any]:
    """Benchmark pymatgen ``Structure`` / ASE ``Atoms`` objects (or a DataFrame with ``cif``) in Python.

    Args:
        structures: a sequence of pymatgen ``Structure`` or ASE ``Atoms``, a DataFrame with a
            ``cif`` column, or any input :func:`load_structure_set` reads.
        out: output folder (``metrics.json``, ``report.md``, ``figures/``, ``validity.parquet``).
        reference: a registry split name, any input, or a sequence of structures.
        name: label of the samples in the results.
        show_progress: rich progress on stderr.
        **settings: further :class:`BenchmarkConfig` fields (``train``, ``seed``, ``coverage``...).

    Returns:
        The ``metrics.json`` content.
    """
    sset = load_structure_set(structures, name=name, data_dir=settings.get("data_dir"))
    rset = load_structure_set(reference, name="reference", data_dir=settings.get("data_dir"))
    cfg = BenchmarkConfig(samples=sset.name, out=str(out), reference=rset.name, **settings)
    return run_benchmark(cfg, show_progress=show_progress, samples_set=sset, reference_set=rset)


__all__ = ["BenchmarkConfig", "benchmark_structures", "read_samples", "run_benchmark"]
