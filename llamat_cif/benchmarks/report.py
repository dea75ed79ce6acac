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
    import pymatviz as pmv

    plt = _mpl()
    layout = pmv.df_ptable[["row", "column"]]
    finite = [v for v in values.values() if v is not None and np.isfinite(v)]
    lo = vmin if vmin is not None else (min(finite) if finite else 0.0)
    hi = vmax if vmax is not None else (max(finite) if finite else 1.0)
    if hi <= lo:
        hi = lo + 1.0
    norm = mpl.colors.Normalize(lo, hi)
    cm = mpl.colormaps[cmap]
    fig, ax = plt.subplots(figsize=(16, 8.6))
    for sym, (row, col) in layout.iterrows():
        if row > 10:
            continue
        y = row - 0.7 if row >= 9 else row  # f-block rows 9-10 drawn just under row 7
        v = values.get(sym)
        has = v is not None and np.isfinite(v)
        face = cm(norm(v)) if has else (0.93, 0.93, 0.93)
        ax.add_patch(mpl.patches.Rectangle((col - 0.47, y - 0.47), 0.94, 0.94, facecolor=face,
                                           edgecolor="white", linewidth=1.0))
        light = has and (0.299 * face[0] + 0.587 * face[1] + 0.114 * face[2]) < 0.5
        color = "white" if light else "black"
        ax.text(col, y - 0.2, sym, ha="center", va="center", fontsize=11, fontweight="bold",
                color=color if has else "#aaaaaa")
        if has:
            ax.text(col, y + 0.1, fmt.format(v), ha="center", va="center", fontsize=8, color=color)
            if counts and sym in counts:
                ax.text(col, y + 0.32, counts[sym], ha="center", va="center", fontsize=6, color=color)
    ax.set_xlim(0.4, 18.6)
    ax.set_ylim(9.9, 0.4)
    ax.set_aspect("equal")
    ax.axis("off")
    ax.set_title(title, fontsize=14)
    sm = mpl.cm.ScalarMappable(norm=norm, cmap=cm)
    cax = fig.add_axes([0.3, 0.74, 0.32, 0.025])
    cb = fig.colorbar(sm, cax=cax, orientation="horizontal")
    cb.set_label(cbar_label)
    fig.savefig(path, dpi=110, bbox_inches="tight")
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
    min_reference: int = 1,
) -> Path:
    """Draw the figures and write ``report.md``.

    Args:
        out: output folder (figures go to ``out/figures``).
        result: the ``metrics.json`` content.
        per_element: table from :func:`llamat_cif.benchmarks.elements.per_element_coverage`.
        gen_valid: structure table rows of the valid generated structures.
        ref_parsed: structure table rows of the reference structures.
        e_form_gen, e_form_ref: formation energies (eV/atom) for the histogram, when known.
        min_reference: elements with fewer reference structures are left grey in the recall map.
    """
    out = Path(out)
    figs = out / "figures"
    figs.mkdir(parents=True, exist_ok=True)
    pe = per_element.set_index("element")
    rec = {s: r.recall for s, r in pe.iterrows() if r.n_reference >= min_reference}
    rec_counts = {s: f"{int(r.n_reference_covered)}/{int(r.n_reference)}" for s, r in pe.iterrows()
                  if r.n_reference >= min_reference}
    prec = {s: r.precision for s, r in pe.iterrows() if r.n_generated >= 1}
    prec_counts = {s: f"{int(r.n_generated_precise)}/{int(r.n_generated)}" for s, r in pe.iterrows()
                   if r.n_generated >= 1}
    ratio = {}
    for s, r in pe.iterrows():
        if r.n_reference > 0 and r.n_generated > 0:
            ratio[s] = float(np.log2(r.freq_generated / r.freq_reference))
        elif r.n_reference > 0:
            ratio[s] = -np.inf
    ref_name = result["reference"]["description"]
    written = []
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
    if e_form_gen is not None and e_form_ref is not None and pd.Series(e_form_gen).notna().any():
        written.append(histogram_png(e_form_gen, e_form_ref, figs / "hist_e_form.png",
                                     xlabel="formation energy (eV/atom)", title="Formation energy per atom"))
    if result.get("funnel"):
        written.append(funnel_png(result["funnel"], figs / "funnel.png"))

    m = result["metrics"]
    s = result["samples"]
    p = result["protocol"]
    lines = [
        "# Benchmark report",
        "",
        f"Run: `{result['run']}`  ",
        f"Reference: **{ref_name}** ({result['reference']['n_with_fingerprint']} with fingerprints)  ",
        f"Samples: {s['used']} used of {s['in_file']} in samples.csv; parsed {s['parsed']}, valid {s['valid']}, "
        f"fingerprinted {s['fingerprinted']}  ",
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
    lines += ["Full table: `per_element.csv`.", "", "## Property distributions", "",
              "![density](figures/hist_density.png) ![elements](figures/hist_n_elements.png) "
              "![sites](figures/hist_n_sites.png)", ""]
    if (figs / "hist_e_form.png").exists():
        lines += ["![formation energy](figures/hist_e_form.png)", ""]
    if result.get("funnel"):
        lines += ["## Screening funnel", "", "| step | count |", "|---|---|"]
        lines += [f"| {a} | {b} |" for a, b in result["funnel"]]
        lines += ["", "![funnel](figures/funnel.png)", ""]
    lines += ["## Protocol", "", "```json", _json_dump({k: p.get(k) for k in ("generation", "coverage", "validity",
                                                                            "stability", "versions", "timings_s")}),
              "```", ""]
    path = out / "report.md"
    path.write_text("\n".join(lines))
    return path


def _json_dump(obj: Any) -> str:
    import json

    return json.dumps(obj, indent=2, default=str)
