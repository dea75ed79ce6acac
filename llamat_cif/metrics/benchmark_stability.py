"""The stability stage of a benchmark: a run folder's own stability step, or ``--stability N``.

:func:`run_folder_stability` reads the stability step a run folder carries (``stability.parquet``,
``stability_summary.json``, ``sun.json``, a screen's ``funnel.json``) into metrics over all generated
samples. :func:`stability_benchmark` relaxes N seeded-random valid samples itself (CHGNet, default
:class:`~llamat_cif.stability.relax.RelaxConfig`, MP-20 reference hull) into ``out/stability.parquet``
(resumable), records which it chose in ``out/stability_chosen.json`` and reports their funnel over
the chosen and scaled to all generated, with a geometry table of the chosen and of a seeded reference
sample. The metric functions themselves are in :mod:`llamat_cif.metrics.stability_metrics`.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from llamat_cif.metrics.config import BenchmarkConfig
from llamat_cif.metrics.metric import Metric
from llamat_cif.metrics.properties import wasserstein
from llamat_cif.metrics.stability_metrics import (
    choose_valid,
    chosen_stability,
    funnel,
    geometry_section,
    load_stability,
    stability_rates,
    sun_rates,
)

#: written by ``--stability N`` beside its ``stability.parquet``: which samples were chosen
CHOSEN_FILE = "stability_chosen.json"


def run_folder_stability(
    cfg: BenchmarkConfig,
    run_dir: Path | None,
    samples: pd.DataFrame,
    validity: pd.DataFrame,
    ref: pd.DataFrame,
    *,
    say,
) -> tuple[dict[str, Metric], dict, list | None, pd.Series | None]:
    """Metrics of the stability step a run folder carries (none for another input).

    A folder whose ``stability.parquet`` holds ``--stability N`` rows (``stability_chosen.json``)
    is not read as a full stability step: those rows go to the stability section only.

    Returns:
        ``(metrics, stability_protocol, funnel, e_form)``: the stability, ``wdist_e_form`` and S.U.N.
        metrics over all generated samples, the step's protocol, the funnel (the screen's own
        ``funnel.json`` when it covers exactly the samples benchmarked) and the formation energies
        of the relaxed samples (for the histogram; None without them).
    """
    n_gen = len(samples)
    metrics: dict[str, Metric] = {}
    stab, stab_summary, sun = load_stability(run_dir) if run_dir is not None else (None, {}, {})
    if stab is not None and (run_dir / CHOSEN_FILE).exists():
        # rows of a --stability N benchmark: N chosen samples, not a stability step over the run
        say(f"{run_dir / 'stability.parquet'} holds --stability N rows ({CHOSEN_FILE}): "
            "reported in the stability section only")
        stab, stab_summary = None, {}
    stab_protocol = {k: stab_summary[k] for k in ("protocol", "potential", "hull", "relaxer", "thresholds")
                     if k in stab_summary}
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
    steps = screen_funnel(run_dir, n_gen) if run_dir is not None else None
    if steps is None and stab is not None:
        steps = funnel(n_gen, validity, stab, sun=sun_metrics.get("sun_rate"),
                       metastable_threshold=cfg.metastable_threshold, stable_threshold=cfg.stable_threshold)
    return metrics, stab_protocol, steps, e_form_gen


def stability_benchmark(
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
    # imported here: the potentials and relaxer load only when a benchmark relaxes
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
    from llamat_cif.cif import read_cif_or_none

    as_generated = [read_cif_or_none(c) for c in chosen["cif"]]
    sets = {"chosen, as generated": as_generated}
    if cfg.rescale_volume:
        from llamat_cif.physics import rescale_to_predicted

        sets["chosen, rescaled to predicted volume"] = [rescale_to_predicted(s) if s is not None else None
                                                        for s in as_generated]
    sets["chosen, relaxed"] = [read_cif_or_none(c) for c in rows.loc[ok, "relaxed_cif"]]
    n_ref = min(cfg.geometry_reference_n, len(ref))
    ref_pos = np.sort(np.random.default_rng(cfg.seed).choice(len(ref), n_ref, replace=False))
    ref_name = f"{cfg.reference}: {n_ref} of {len(ref)} (seed {cfg.seed})"
    sets[f"reference ({cfg.reference})"] = [read_cif_or_none(c) for c in ref["cif"].iloc[ref_pos]]
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


def screen_funnel(run_dir: Path, n_gen: int) -> list[tuple[str, int]] | None:
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


__all__ = ["CHOSEN_FILE", "run_folder_stability", "screen_funnel", "stability_benchmark"]
