"""The benchmark report: ``report.md`` with PNG figures (matplotlib, no browser needed).

Periodic-table heatmaps are drawn with matplotlib on pymatviz's periodic-table layout
(``pymatviz.df_ptable`` rows/columns). pymatviz 0.18's own ``ptable_heatmap`` is plotly-only: its PNG
export needs kaleido and a browser, and with plotly 7.1 it fails outright
(``plotly.figure_factory.create_annotated_heatmap`` no longer exists).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from llamat_cif.protocol import E_HULL_METASTABLE


def _mpl():
    import matplotlib

    matplotlib.use("Agg")  # files only: no display, no browser
    import matplotlib.pyplot as plt

    return plt


def ptable_png(
    values: dict[str, float],
    path: Path,
    *,
    title: str,
    counts: dict[str, str] | None = None,
    vmin: float | None = 0.0,
    vmax: float | None = 1.0,
    cmap: str = "viridis",
    fmt: str = "{:.0%}",
    cbar_label: str = "",
) -> Path:
    """Draw a periodic-table heatmap to a PNG.

    Args:
        values: element symbol -> value; elements without a value are drawn grey.
        path: output PNG path.
        title: figure title.
        counts: optional element -> small annotation (e.g. ``"31/40"``) under the value.
        vmin, vmax: colour range (None: data range).
        cmap: matplotlib colour map.
        fmt: format of the value printed in each tile.
        cbar_label: colour-bar label.
    """
    import matplotlib as mpl

    plt = _mpl()
    norm, cm = _norm(values, vmin, vmax), mpl.colormaps[cmap]
    fig, ax = plt.subplots(figsize=(16, 8.6))
    draw_ptable(ax, values, norm=norm, cmap=cm, fmt=fmt, counts=counts)
    ax.set_title(title, fontsize=14)
    sm = mpl.cm.ScalarMappable(norm=norm, cmap=cm)
    cax = fig.add_axes([0.3, 0.74, 0.32, 0.025])
    cb = fig.colorbar(sm, cax=cax, orientation="horizontal")
    cb.set_label(cbar_label)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path


def _norm(values: dict[str, float], vmin: float | None, vmax: float | None):
    import matplotlib as mpl

    finite = [v for v in values.values() if v is not None and np.isfinite(v)]
    lo = vmin if vmin is not None else (min(finite) if finite else 0.0)
    hi = vmax if vmax is not None else (max(finite) if finite else 1.0)
    if hi <= lo:
        hi = lo + 1.0
    return mpl.colors.Normalize(lo, hi)


def draw_ptable(ax, values: dict[str, float], *, norm, cmap, fmt: str = "{:.0%}",
                counts: dict[str, str] | None = None, small: bool = False) -> None:
    """Draw periodic-table tiles coloured by ``values`` onto a matplotlib axis (grey: no value)."""
    import matplotlib as mpl
    import pymatviz as pmv

    layout = pmv.df_ptable[["row", "column"]]
    fs = (7, 5, 4) if small else (11, 8, 6)
    for sym, (row, col) in layout.iterrows():
        if row > 10:
            continue
        y = row - 0.7 if row >= 9 else row  # f-block rows 9-10 drawn just under row 7
        v = values.get(sym)
        has = v is not None and np.isfinite(v)
        face = cmap(norm(v)) if has else (0.93, 0.93, 0.93)
        ax.add_patch(mpl.patches.Rectangle((col - 0.47, y - 0.47), 0.94, 0.94, facecolor=face,
                                           edgecolor="white", linewidth=1.0))
        light = has and (0.299 * face[0] + 0.587 * face[1] + 0.114 * face[2]) < 0.5
        color = "white" if light else "black"
        ax.text(col, y - 0.2, sym, ha="center", va="center", fontsize=fs[0], fontweight="bold",
                color=color if has else "#aaaaaa")
        if has:
            ax.text(col, y + 0.1, fmt.format(v), ha="center", va="center", fontsize=fs[1], color=color)
            if counts and sym in counts:
                ax.text(col, y + 0.32, counts[sym], ha="center", va="center", fontsize=fs[2], color=color)
    ax.set_xlim(0.4, 18.6)
    ax.set_ylim(9.9, 0.4)
    ax.set_aspect("equal")
    ax.axis("off")


def ptable_grid_png(
    panels: dict[str, dict[str, float]],
    path: Path,
    *,
    title: str,
    vmin: float | None = 0.0,
    vmax: float | None = 1.0,
    cmap: str = "viridis",
    fmt: str = "{:.0%}",
    cbar_label: str = "",
) -> Path:
    """Side-by-side periodic-table heatmaps on one colour scale, one panel per set (two per row)."""
    import matplotlib as mpl

    plt = _mpl()
    n = len(panels)
    ncol = 1 if n == 1 else 2
    nrow = (n + ncol - 1) // ncol
    fig, axes = plt.subplots(nrow, ncol, figsize=(9.5 * ncol, 5.4 * nrow + 0.8), squeeze=False)
    allv = {f"{i}{k}": v for i, p in enumerate(panels.values()) for k, v in p.items()}
    norm, cm = _norm(allv, vmin, vmax), mpl.colormaps[cmap]
    for ax, (name, values) in zip(axes.flat, panels.items(), strict=False):
        draw_ptable(ax, values, norm=norm, cmap=cm, fmt=fmt, small=True)
        ax.set_title(name, fontsize=12)
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    fig.suptitle(title, fontsize=14)
    sm = mpl.cm.ScalarMappable(norm=norm, cmap=cm)
    cb = fig.colorbar(sm, ax=axes.ravel().tolist(), orientation="horizontal", fraction=0.03, pad=0.02)
    cb.set_label(cbar_label)
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)
    return path


def histogram_png(gen: pd.Series, ref: pd.Series, path: Path, *, xlabel: str, title: str,
                  discrete: bool = False) -> Path:
    """Overlaid normalised histograms, generated vs reference."""
    plt = _mpl()
    g = pd.to_numeric(pd.Series(gen), errors="coerce").dropna().to_numpy(float)
    r = pd.to_numeric(pd.Series(ref), errors="coerce").dropna().to_numpy(float)
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    both = np.concatenate([g, r]) if len(g) or len(r) else np.array([0.0, 1.0])
    if discrete:
        bins = np.arange(np.floor(both.min()) - 0.5, np.ceil(both.max()) + 1.5, 1.0)
    else:
        lo, hi = np.percentile(both, [0.5, 99.5]) if len(both) > 10 else (both.min(), both.max())
        bins = np.linspace(lo, hi if hi > lo else lo + 1, 50)
    ax.hist(r, bins=bins, density=True, alpha=0.55, label=f"reference (n={len(r)})", color="tab:blue")
    ax.hist(g, bins=bins, density=True, alpha=0.55, label=f"generated, valid (n={len(g)})", color="tab:orange")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("density")
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def e_hull_histogram_png(
    e_hull: pd.Series,
    path: Path,
    *,
    n_chosen: int,
    metastable_threshold: float = E_HULL_METASTABLE,
    stable_threshold: float = 0.0,
) -> Path:
    """Histogram of E_hull (eV/atom) of the relaxed chosen samples, with the two threshold lines.

    Values beyond the drawn range (at least -0.2 to 0.5 eV/atom, widened to the 1st-99th
    percentiles) are counted in the edge bins.

    Args:
        e_hull: E_hull of the chosen samples relaxed without error.
        path: output PNG.
        n_chosen: chosen samples (the legend states how many of them have an E_hull).
        metastable_threshold: metastability line, eV/atom (0.1).
        stable_threshold: stability line, eV/atom (0).
    """
    plt = _mpl()
    e = pd.to_numeric(pd.Series(e_hull), errors="coerce").dropna().to_numpy(float)
    lo, hi = -0.2, 0.5
    if len(e):
        lo = min(lo, float(np.percentile(e, 1)))
        hi = max(hi, float(np.percentile(e, 99)))
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    ax.hist(np.clip(e, lo, hi), bins=np.linspace(lo, hi, 50), color="tab:orange",
            label=f"relaxed chosen samples ({len(e)} of {n_chosen} chosen)")
    ax.axvline(stable_threshold, color="black", lw=1.2, label=f"stable: E_hull <= {stable_threshold:g}")
    ax.axvline(metastable_threshold, color="tab:red", ls="--", lw=1.2,
               label=f"metastable: E_hull < {metastable_threshold:g}")
    ax.set_xlabel("E_hull (eV/atom)")
    ax.set_ylabel("structures")
    ax.set_title("Energy above the hull after relaxation")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def funnel_png(steps: list[tuple[str, int]], path: Path) -> Path:
    """Horizontal bar chart of the screening funnel."""
    plt = _mpl()
    fig, ax = plt.subplots(figsize=(7, 0.55 * len(steps) + 1.2))
    labels = [s for s, _ in steps]
    vals = [v for _, v in steps]
    ax.barh(range(len(steps)), vals, color="tab:green")
    top = max(vals) if vals else 1
    for i, v in enumerate(vals):
        share = f" ({v / top:.1%})" if top else ""
        ax.text(v + top * 0.01, i, f"{v}{share}", va="center", fontsize=9)
    ax.set_yticks(range(len(steps)), labels)
    ax.invert_yaxis()
    ax.set_xlim(0, top * 1.25 if top else 1)
    ax.set_xlabel("structures")
    ax.set_title("Screening funnel")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


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
    import json

    return json.dumps(obj, indent=2, default=str)
