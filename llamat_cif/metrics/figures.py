"""The benchmark's figures as PNG files (matplotlib, no browser needed).

Periodic-table heatmaps are drawn with matplotlib on pymatviz's periodic-table layout
(``pymatviz.df_ptable`` rows/columns). pymatviz 0.18's own ``ptable_heatmap`` is plotly-only: its PNG
export needs kaleido and a browser, and with plotly 7.1 it fails outright
(``plotly.figure_factory.create_annotated_heatmap`` no longer exists). Beside them: overlaid
histograms (generated vs reference), the E_hull histogram with its threshold lines, and the
screening funnel. :mod:`llamat_cif.metrics.report` puts them into ``report.md``.
"""

from __future__ import annotations

from pathlib import Path

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


def ptable_grid_png(panels: dict[str, dict[str, float]], path: Path, *, title: str, vmin: float | None = 0.0,
                    vmax: float | None = 1.0, cmap: str = "viridis", fmt: str = "{:.0%}",
                    cbar_label: str = "") -> Path:
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


__all__ = ["draw_ptable", "e_hull_histogram_png", "funnel_png", "histogram_png", "ptable_grid_png", "ptable_png"]
