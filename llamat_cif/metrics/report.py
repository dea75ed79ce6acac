"""The benchmark report: ``report.md`` over ``metrics.json``, with the figures of :mod:`llamat_cif.metrics.figures`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from llamat_cif.metrics.figures import e_hull_histogram_png, funnel_png, histogram_png, ptable_png


def _fmt_metric(m: dict[str, Any]) -> str:
    v = m.get("value")
    if v is None:
        return "n/a"
    if m.get("numerator") is not None and m.get("denominator") is not None:
        return f"{v:.4f} ({m['numerator']}/{m['denominator']} {m.get('denominator_name') or ''})".rstrip()
    if m.get("denominator") is not None:  # an estimate over a denominator, no counted numerator
        return f"{v:.4f} (of {m['denominator']} {m.get('denominator_name') or ''})".rstrip()
    return f"{v:.4g} {m.get('unit', '')}".rstrip()


def write_report(
    out: Path,
    result: dict[str, Any],
    per_element: pd.DataFrame,
    gen_valid: pd.DataFrame,
    ref_parsed: pd.DataFrame,
    *,
    e_form_gen: pd.Series | None = None,
    e_form_ref: pd.Series | None = None,
    e_hull_chosen: pd.Series | None = None,
    min_reference: int = 1,
) -> Path:
    """Draw the figures and write ``report.md``.

    Args:
        out: output folder (figures go to ``out/figures``).
        result: the ``metrics.json`` content.
        per_element: table from :func:`llamat_cif.metrics.elements.per_element_coverage`
            (frequency columns only when coverage was skipped: no recall/precision maps then).
        gen_valid: structure table rows of the valid generated structures.
        ref_parsed: structure table rows of the reference structures.
        e_form_gen, e_form_ref: formation energies (eV/atom) for the histogram, when known.
        e_hull_chosen: E_hull (eV/atom) of the ``--stability N`` samples relaxed without error.
        min_reference: elements with fewer reference structures are left grey in the recall map.
    """
    out = Path(out)
    figs = out / "figures"
    figs.mkdir(parents=True, exist_ok=True)
    has_coverage = not result["protocol"]["coverage"].get("skipped")
    pe = per_element.set_index("element")
    ratio = {}
    for s, r in pe.iterrows():
        if r.n_reference > 0 and r.n_generated > 0:
            ratio[s] = float(np.log2(r.freq_generated / r.freq_reference))
        elif r.n_reference > 0:
            ratio[s] = -np.inf
    ref_name = result["reference"]["description"]
    written = []
    if has_coverage:
        rec = {s: r.recall for s, r in pe.iterrows() if r.n_reference >= min_reference}
        rec_counts = {s: f"{int(r.n_reference_covered)}/{int(r.n_reference)}" for s, r in pe.iterrows()
                      if r.n_reference >= min_reference}
        prec = {s: r.precision for s, r in pe.iterrows() if r.n_generated >= 1}
        prec_counts = {s: f"{int(r.n_generated_precise)}/{int(r.n_generated)}" for s, r in pe.iterrows()
                       if r.n_generated >= 1}
        written.append(ptable_png(rec, figs / "ptable_recall.png", counts=rec_counts,
                                  title=f"Coverage recall per element (reference: {ref_name})",
                                  cbar_label="covered / reference structures containing the element"))
        written.append(ptable_png(prec, figs / "ptable_precision.png", counts=prec_counts,
                                  title="Coverage precision per element (valid generated structures)",
                                  cbar_label="precise / valid generated structures containing the element"))
    lr = {k: float(np.clip(v, -4.0, 4.0)) for k, v in ratio.items()}
    written.append(ptable_png(lr, figs / "ptable_frequency_ratio.png", vmin=-4, vmax=4, cmap="RdBu_r",
                              fmt="{:+.1f}", title="Element frequency: log2(generated / reference) "
                              "(-4 = absent or >16x rarer)",
                              cbar_label="log2 frequency ratio"))
    written.append(histogram_png(gen_valid["density"], ref_parsed["density"], figs / "hist_density.png",
                                 xlabel="density (g/cm$^3$)", title="Density"))
    written.append(histogram_png(gen_valid["n_elements"], ref_parsed["n_elements"],
                                 figs / "hist_n_elements.png", xlabel="number of elements",
                                 title="Number of elements", discrete=True))
    written.append(histogram_png(gen_valid["n_sites"], ref_parsed["n_sites"], figs / "hist_n_sites.png",
                                 xlabel="atoms per cell", title="Atoms per cell", discrete=True))
    written.append(histogram_png(gen_valid["volume"] / gen_valid["n_sites"], ref_parsed["volume"] / ref_parsed["n_sites"],
                                 figs / "hist_volume_per_atom.png", xlabel="volume per atom (Å$^3$)",
                                 title="Volume per atom"))
    if e_form_gen is not None and e_form_ref is not None and pd.Series(e_form_gen).notna().any():
        written.append(histogram_png(e_form_gen, e_form_ref, figs / "hist_e_form.png",
                                     xlabel="formation energy (eV/atom)", title="Formation energy per atom"))
    if result.get("funnel"):
        written.append(funnel_png(result["funnel"], figs / "funnel.png"))
    stab = result.get("stability")
    if stab is not None and e_hull_chosen is not None:
        sp = stab["protocol"]
        written.append(e_hull_histogram_png(e_hull_chosen, figs / "hist_e_hull.png", n_chosen=sp["n_chosen"],
                                            metastable_threshold=sp["metastable_threshold_eV_atom"],
                                            stable_threshold=sp["stable_threshold_eV_atom"]))

    m = result["metrics"]
    s = result["samples"]
    p = result["protocol"]
    if has_coverage:
        ref_line = f"Reference: **{ref_name}** ({result['reference']['n_with_fingerprint']} with fingerprints)  "
        fp_part = f", fingerprinted {s['fingerprinted']}"
    else:
        ref_line = f"Reference: **{ref_name}** (coverage skipped: no fingerprints computed)  "
        fp_part = ""
    lines = [
        "# Benchmark report",
        "",
        f"Run: `{result['run']}`  ",
        ref_line,
        f"Samples: {s.get('source', result['run'])}: {s['used']} used of {s['in_file']}; parsed {s['parsed']}, valid {s['valid']}"
        f"{fp_part}  ",
        f"Seed {p['seed']}; metrics computed in {p['wall_time_s']} s (figures not included) on "
        f"{p['hardware']['cpu']} ({p['hardware']['cpu_count']} CPUs)",
        "",
        "## Metrics",
        "",
        "| metric | value (numerator/denominator) |",
        "|---|---|",
    ]
    for k, v in m.items():
        lines.append(f"| {k} | {_fmt_metric(v)} |")
    cov = p["coverage"]
    if has_coverage:
        lines += [
            "",
            f"Coverage: structure cutoff {cov['struct_cutoff']}, composition cutoff {cov['comp_cutoff']} "
            f"(CDVAE), pairing `{cov['pairing']}` (CDVAE code: nearest structure and nearest composition taken "
            "independently; `coverage_joint_*` requires one partner within both). Headline precision is over "
            "valid generated structures (crystal-text-llm); CDVAE divides by all generated "
            "(`coverage_cdvae_*` when run with fingerprint_scope=parsed).",
            "",
            "## Per element",
            "",
            "![recall per element](figures/ptable_recall.png)",
            "",
            "![precision per element](figures/ptable_precision.png)",
            "",
            "![element frequency ratio](figures/ptable_frequency_ratio.png)",
            "",
        ]
        worst = per_element[per_element["n_reference"] >= 20].sort_values("recall").head(10)
        if len(worst):
            lines += ["Least covered elements (>= 20 reference structures):", "",
                      "| element | recall | reference structures | generated (valid) containing it |",
                      "|---|---|---|---|"]
            for r in worst.itertuples():
                lines.append(f"| {r.element} | {r.recall:.3f} | {r.n_reference} | {r.n_generated} |")
            lines.append("")
    else:
        lines += [
            "",
            "Coverage skipped (`--no-coverage`): no CrystalNN fingerprints were computed, neither of the "
            "samples nor of the reference, so there are no `coverage_*` metrics and no per-element "
            "recall/precision maps.",
            "",
            "## Per element",
            "",
            "![element frequency ratio](figures/ptable_frequency_ratio.png)",
            "",
        ]
    lines += ["Full table: `per_element.csv`.", "", "## Property distributions", "",
              "![density](figures/hist_density.png) ![elements](figures/hist_n_elements.png) "
              "![sites](figures/hist_n_sites.png) ![volume per atom](figures/hist_volume_per_atom.png)", ""]
    if (figs / "hist_e_form.png").exists():
        lines += ["![formation energy](figures/hist_e_form.png)", ""]
    if result.get("funnel"):
        lines += ["## Screening funnel", "", "| step | count |", "|---|---|"]
        lines += [f"| {a} | {b} |" for a, b in result["funnel"]]
        lines += ["", "![funnel](figures/funnel.png)", ""]
    if stab is not None:
        lines += _stability_lines(stab, figs)
    lines += ["## Protocol", "", "```json", _json_dump({k: p.get(k) for k in ("generation", "coverage", "validity",
                                                                            "stability", "versions", "timings_s")}),
              "```", ""]
    if stab is not None:
        lines += ["Stability benchmark protocol:", "", "```json", _json_dump(stab["protocol"]), "```", ""]
    path = out / "report.md"
    path.write_text("\n".join(lines))
    return path


def _stability_lines(stab: dict[str, Any], figs: Path) -> list[str]:
    """The ``--stability N`` section of ``report.md``: funnel, medians, geometry, histogram."""
    p, d = stab["protocol"], stab["denominators"]
    lines = [
        f"## Stability of {d['chosen']} chosen valid samples", "",
        f"{p['n_chosen']} of {d['valid']} valid samples ({d['generated']} generated) chosen at random "
        f"(seed {p['seed']}; {p['n_requested']} requested) and relaxed with {p['potential']} (FIRE, "
        f"fmax {p['fmax_eV_A']} eV/Å, at most {p['max_steps']} steps, {p['time_limit_s']:g} s each"
        + (", rescaled to the composition-predicted volume first" if p["rescale_volume"] else "")
        + f"); E_hull on {p['hull']}. Failed relaxations (errors, time-outs) count as failed at every "
        "stage. Estimate over generated = valid/generated × count/chosen.", "",
        "| stage | of chosen | estimate over generated |", "|---|---|---|",
    ]
    for r in stab["funnel"]:
        oc = r["of_chosen"]
        share = "n/a" if oc["rate"] is None else f"{oc['rate']:.3f}"
        est = "n/a" if r["estimate_over_generated"] is None else f"{r['estimate_over_generated']:.4f}"
        lines.append(f"| {r['stage']} | {oc['numerator']}/{oc['denominator']} ({share}) | {est} |")
    lines.append("")
    if p.get("novelty_reference"):
        lines += [f"S.U.N.: unique among the chosen relaxed structures, novel vs {p['novelty_reference']}.", ""]
    else:
        lines += ["S.U.N. not assessed (no training split for novelty).", ""]
    lines += ["| median | value | over |", "|---|---|---|"]
    for k, m in stab["medians"].items():
        v = "n/a" if m["value"] is None else f"{m['value']:.3f} {m['unit']}"
        over = ", ".join(f"{name} {n}" for name, n in m["counts"].items())
        lines.append(f"| {k} | {v} | {over} |")
    lines += ["", f"Total relaxation time: {stab['total_relaxation_s']:.1f} s.", ""]
    g = stab["geometry"]
    lines += [f"Geometry ({g['short_contact_threshold']}; volume per atom in Å³; reference: {g['reference']}):",
              "", "| set | measured | short contacts | min contact ratio Q1/Q2/Q3 | volume/atom Q1/Q2/Q3 "
              "| volume / predicted Q1/Q2/Q3 |", "|---|---|---|---|---|---|"]

    def q(x: list | None) -> str:
        return "n/a" if not x else " / ".join(f"{v:.3g}" for v in x)

    for name, t in g["tables"].items():
        sc = t["short_contacts"]
        share = "n/a" if sc["rate"] is None else f"{sc['rate']:.3f}"
        lines.append(f"| {name} | {t['n']}/{t['of']} | {sc['count']}/{sc['of']} ({share}) "
                     f"| {q(t['min_contact_ratio_quartiles'])} | {q(t['volume_per_atom_quartiles'])} "
                     f"| {q(t['volume_ratio_to_predicted_quartiles'])} |")
    lines.append("")
    if (figs / "hist_e_hull.png").exists():
        lines += ["![E_hull of the relaxed chosen samples](figures/hist_e_hull.png)", ""]
    return lines


def _json_dump(obj: Any) -> str:
    return json.dumps(obj, indent=2, default=str)


__all__ = ["write_report"]
