"""The benchmark run: read a structure set, compute every metric, write metrics.json + report.

Samples and reference come from anywhere :func:`llamat_cif.metrics.sources.load_structure_set`
reads: a run folder, a registry split, a folder/zip of CIFs, a CSV/parquet with a ``cif`` column, an
ASE database or trajectory, or pymatgen/ASE objects in Python (:func:`benchmark_structures`). A run
folder (``samples.parquet``, or a legacy ``samples.csv``: id, text, fmt, cif, error, ...) also lends its
``validity.parquet`` and ``stability.parquet`` / ``sun.json``; any other input is validated here and
its validity table is kept in ``out`` (``validity.parquet``, reused while the input is unchanged).
Outputs in ``out``: ``metrics.json``, ``per_element.csv``, ``report.md`` and ``figures/*.png``.

This module runs the stages in order and writes the results; each stage lives beside its metrics:
the settings in :mod:`~llamat_cif.metrics.config`, the inputs in :mod:`~llamat_cif.metrics.sources`
and :mod:`~llamat_cif.metrics.validity`, fingerprints and coverage in
:mod:`~llamat_cif.metrics.benchmark_coverage`, uniqueness and novelty in
:mod:`~llamat_cif.metrics.diversity`, stability in :mod:`~llamat_cif.metrics.benchmark_stability`,
the report in :mod:`~llamat_cif.metrics.report`.

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
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from llamat_cif.metrics.benchmark_coverage import coverage_section, skipped_coverage
from llamat_cif.metrics.benchmark_stability import run_folder_stability, stability_benchmark
from llamat_cif.metrics.config import BenchmarkConfig
from llamat_cif.metrics.coverage import cutoffs_for
from llamat_cif.metrics.csp import csp_match
from llamat_cif.metrics.distribution import distribution_distances, diversity, supply_risk
from llamat_cif.metrics.diversity import benchmark_training_set, uniqueness_novelty
from llamat_cif.metrics.metric import Metric, json_default
from llamat_cif.metrics.properties import SYMPREC, structure_table, wasserstein
from llamat_cif.metrics.sources import SourceError, StructureSet, describe_set, load_structure_set
from llamat_cif.metrics.validity import input_validity, load_or_compute_validity, validity_rates
from llamat_cif.protocol import hardware, package_versions

PACKAGES = ("llamat-cif", "numpy", "scipy", "pandas", "pymatgen", "matminer", "pymatviz", "smact",
            "matplotlib", "chgnet")

#: per-structure warnings that change no number and would flood the progress output: pymatgen's
#: CIF parser rounding coordinates, and pymatgen's NaN electronegativity of noble gases
QUIET_WARNINGS = ("Issues encountered while parsing CIF", "No Pauling electronegativity")


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
        validity, validity_protocol = input_validity(samples, out, say)
    cdvae_validity, cdvae_validity_protocol = validity, validity_protocol
    if cfg.protocol == "cdvae":
        from llamat_cif.metrics.cdvae import thresholds_mismatch

        off = thresholds_mismatch(validity_protocol)
        if off:
            say("protocol cdvae: the samples' validity was computed with other settings "
                f"({', '.join(f'{k}={a}' for k, (a, _) in off.items())}); validating again with CDVAE's")
            cdvae_validity, cdvae_validity_protocol = input_validity(samples, out, say, stem="validity_cdvae")
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
        cov_metrics, per_el, cov_protocol, fp_info, (gen_fp, ref_fp) = coverage_section(
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
        per_el, cov_protocol = skipped_coverage(gen_tab, ref_tab, valid)
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
        training, why_not = benchmark_training_set(cfg.train, rset, data_dir=cfg.data_dir,
                                                    cache_dir=cfg.cache_dir)
    if cfg.novelty:
        say("uniqueness and novelty of valid samples (StructureMatcher within each formula)")
        metrics.update(uniqueness_novelty(gen_cifs, valid, training))
        if why_not:
            say(f"novelty not assessed: {why_not}")
        t = lap("uniqueness_novelty", t)

    # ---- stability (a run folder's own stability step, when it has one)
    stab_metrics, stab_protocol, steps, e_form_gen = run_folder_stability(cfg, run_dir, samples, validity, ref,
                                                                          say=say)
    metrics.update(stab_metrics)
    t = lap("stability", t)

    # ---- stability benchmark: relax N chosen valid samples
    stability_section: dict | None = None
    e_hull_chosen = None
    if cfg.stability > 0:
        chosen_metrics, stability_section, e_hull_chosen = stability_benchmark(
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
            "description": describe_set(rset, len(ref)),
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
            "versions": {**package_versions(PACKAGES), "python": platform.python_version()},
            "hardware": hardware(),
            "wall_time_s": round(wall, 2),
            "timings_s": timings,
            **({k: fp_info[k] for k in ("fingerprints_per_s_generated", "fingerprint_cache")}
               if cfg.coverage else {}),
        },
    }
    (out / "metrics.json").write_text(json.dumps(result, indent=2, default=json_default))
    if cfg.figures:
        from llamat_cif.metrics.report import write_report

        write_report(out, result, per_el, gen_tab[valid], ref_tab[ref_tab["parsed"]],
                     e_form_gen=e_form_gen,
                     e_form_ref=ref["formation_energy_per_atom"] if "formation_energy_per_atom" in ref else None,
                     e_hull_chosen=e_hull_chosen)
        result["protocol"]["wall_time_s"] = round(time.perf_counter() - t0, 2)
        (out / "metrics.json").write_text(json.dumps(result, indent=2, default=json_default))
    return result


def _csp_with_progress(samples: pd.DataFrame, ref: pd.DataFrame, ks: tuple[int, ...],
                       show: bool) -> dict[str, Metric]:
    if not show:
        return csp_match(samples, ref, ks=ks)
    from llamat_cif.progress import progress_bar

    with progress_bar("CSP targets", remaining=False, transient=True) as bar:
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


__all__ = ["PACKAGES", "QUIET_WARNINGS", "benchmark_structures", "run_benchmark"]
