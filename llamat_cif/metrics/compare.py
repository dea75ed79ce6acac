"""A comparison report: several generators benchmarked against one reference under one protocol.

``llamat-cif benchmark --samples A --samples B ... --out DIR`` benchmarks each set into ``DIR/<label>/``
(its own ``metrics.json``, ``report.md``, figures) and then writes, from those files alone:

* ``DIR/comparison.md``: one table, a row per metric and a column per set, every rate with its
  count and denominator, plus the protocol they share and the side-by-side figures;
* ``DIR/comparison.csv``: the same values as numbers (metric, set, value, numerator, denominator);
* ``DIR/figures/compare_recall.png`` (per-element coverage recall), ``compare_frequency.png``
  (log2 element-frequency ratio to the reference) and ``compare_precision.png``: periodic-table maps,
  one panel per set on one colour scale.

The sets must share the reference and the protocol settings (cutoffs, seed, thresholds); the
comparison refuses sets benchmarked against different references.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

#: rows of the comparison table, in order (others go to comparison.csv only); missing ones are skipped
HEADLINE = (
    ("parse_rate", "parsed"),
    ("structurally_valid_rate", "structurally valid (CDVAE)"),
    ("compositionally_valid_rate", "compositionally valid (CDVAE, SMACT)"),
    ("valid_rate", "valid"),
    ("coverage_recall", "COV-R"),
    ("coverage_precision", "COV-P"),
    ("unique_as_generated", "unique (valid, as generated)"),
    ("novel_as_generated", "unique and novel (valid, as generated)"),
    ("stability_relaxed_rate", "relaxed without error (chosen)"),
    ("stability_metastable_rate", "metastable (chosen)"),
    ("stability_stable_rate", "stable (chosen)"),
    ("stability_sun_rate", "S.U.N. (chosen)"),
    ("stability_msun_rate", "M.S.U.N. (chosen)"),
    ("stability_median_e_hull", "median E_hull (chosen, relaxed)"),
    ("metastable_rate", "metastable (run's stability step)"),
    ("sun_rate", "S.U.N. (run's stability step)"),
    ("wdist_density", "W(density)"),
    ("wdist_num_elems", "W(N elements)"),
    ("wdist_volume_per_atom", "W(volume per atom)"),
    ("js_spacegroup", "JS(space group)"),
    ("js_crystal_system", "JS(crystal system)"),
    ("js_elements", "JS(elements)"),
    ("element_diversity_vendi", "element diversity (Vendi)"),
    ("elements_present", "elements present (of 118)"),
    ("spacegroup_diversity_vendi", "space-group diversity (Vendi)"),
    ("spacegroups_present", "space groups present (of 230)"),
    ("hhi_production_mean", "HHI production (0-10, lower = safer)"),
    ("hhi_reserve_mean", "HHI reserve (0-10)"),
    ("hhi_production_low_risk", "HHI production <= 3"),
)
#: settings that must agree between the compared sets
SHARED = ("struct_cutoff", "comp_cutoff", "fingerprint_scope", "fingerprint_shortcut", "coverage", "novelty", "stability",
          "metastable_threshold", "stable_threshold", "seed", "max_samples", "reference_limit")


class ComparisonError(ValueError):
    """The sets were not benchmarked under one protocol."""


def format_cell(m: dict[str, Any] | None) -> str:
    if m is None or m.get("value") is None:
        return "—"
    v = m["value"]
    if m.get("numerator") is not None and m.get("denominator") is not None:
        return f"{v:.3f} ({m['numerator']}/{m['denominator']})"
    if m.get("unit") in ("fraction",):
        return f"{v:.3f}"
    return f"{v:.4g}"


def _load(folder: Path) -> dict[str, Any]:
    path = folder / "metrics.json"
    if not path.exists():
        raise ComparisonError(f"{path} missing: benchmark the set first")
    return json.loads(path.read_text())


def check_same_protocol(results: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The settings all sets share; raises :class:`ComparisonError` when reference or settings differ."""
    refs = {label: (r["reference"]["name"], r["reference"]["n"]) for label, r in results.items()}
    if len(set(refs.values())) > 1:
        raise ComparisonError(f"different references: {refs}")
    shared = {}
    for k in SHARED:
        vals = {label: r["protocol"]["config"].get(k) for label, r in results.items()}
        if len({json.dumps(v) for v in vals.values()}) > 1:
            raise ComparisonError(f"setting {k!r} differs between the sets: {vals}")
        shared[k] = next(iter(vals.values()))
    cov = {json.dumps({k: v for k, v in r["protocol"]["coverage"].items() if k in ("struct_cutoff", "comp_cutoff")})
           for r in results.values()}
    if len(cov) > 1:
        raise ComparisonError(f"coverage cutoffs differ between the sets: {cov}")
    return shared


def write_comparison(out: Path, labels: list[str], *, figures: bool = True) -> dict[str, Any]:
    """Write ``comparison.md`` / ``.csv`` / ``.json`` (+ figures) from ``out/<label>/metrics.json``.

    Args:
        out: the comparison folder holding one benchmarked sub-folder per label.
        labels: the sets, in the order of the table's columns.
        figures: draw the side-by-side periodic-table maps.

    Returns:
        The ``comparison.json`` content.
    """
    out = Path(out)
    results = {label: _load(out / label) for label in labels}
    shared = check_same_protocol(results)
    first = next(iter(results.values()))

    rows = []
    for label, r in results.items():
        for name, m in r["metrics"].items():
            rows.append({"metric": name, "set": label, "value": m.get("value"), "numerator": m.get("numerator"),
                         "denominator": m.get("denominator"), "denominator_name": m.get("denominator_name"),
                         "unit": m.get("unit")})
    long = pd.DataFrame(rows)
    long.to_csv(out / "comparison.csv", index=False)

    header = "| metric | " + " | ".join(f"`{label}`" for label in labels) + " |"
    lines = [
        "# Generator comparison",
        "",
        f"Reference: **{first['reference']['description']}**; one protocol for every set "
        f"(seed {shared['seed']}; coverage cutoffs structure {first['protocol']['coverage'].get('struct_cutoff', '—')}, "
        f"composition {first['protocol']['coverage'].get('comp_cutoff', '—')}; distributions and diversity over "
        "valid samples, spglib symprec "
        f"{first['protocol'].get('distributions', {}).get('spglib_symprec_A', '—')} Å).",
        "",
        "| set | source | structures used | parsed | valid | SMACT data (validity) | novelty reference |",
        "|---|---|---|---|---|---|---|",
    ]
    for label, r in results.items():
        s = r["samples"]
        v = r["protocol"].get("validity") or {}
        th = v.get("thresholds") or (v.get("protocol") or {}).get("thresholds") or {}
        ox = th.get("oxidation_states", "—")
        lines.append(f"| `{label}` | {s.get('source', r['run'])} | {s['used']} | {s['parsed']} | {s['valid']} | "
                     f"{ox} | {(r.get('training') or {}).get('name') or '—'} |")
    lines += ["", "Rates: value (count/denominator); denominators are named in each set's `metrics.json`: "
              "validity over all structures, coverage recall over reference structures, precision, "
              "uniqueness, novelty and the distribution metrics over valid structures, `(chosen)` over the "
              "valid structures relaxed by `--stability N`. JS: Jensen-Shannon distance (0 = same "
              "distribution, max 0.833); W: Wasserstein distance to the reference.", "", header,
              "|---|" + "---|" * len(labels)]
    for name, title in HEADLINE:
        if not any(name in r["metrics"] for r in results.values()):
            continue
        lines.append(f"| {title} | " + " | ".join(format_cell(r["metrics"].get(name)) for r in results.values()) + " |")
    lines += ["", "All metrics of every set: `comparison.csv`; per-set reports: "
              + ", ".join(f"[`{label}`]({label}/report.md)" for label in labels) + ".", ""]

    figs_written = []
    if figures:
        figs_written = _figures(out, results)
        for f, caption in figs_written:
            lines += [f"![{caption}](figures/{f.name})", ""]
    lines += ["## Protocol (shared settings)", "", "```json", json.dumps(shared, indent=2), "```", ""]
    (out / "comparison.md").write_text("\n".join(lines))
    summary = {"reference": first["reference"], "sets": {label: {"source": r["samples"].get("source"),
                                                                  "folder": label} for label, r in results.items()},
               "shared_settings": shared,
               "table": {name: {label: r["metrics"].get(name) for label, r in results.items()}
                         for name, _ in HEADLINE if any(name in r["metrics"] for r in results.values())},
               "figures": [str(f.relative_to(out)) for f, _ in figs_written]}
    (out / "comparison.json").write_text(json.dumps(summary, indent=2, default=str))
    return summary


def _figures(out: Path, results: dict[str, dict[str, Any]]) -> list[tuple[Path, str]]:
    from llamat_cif.metrics.figures import ptable_grid_png

    figs = out / "figures"
    figs.mkdir(parents=True, exist_ok=True)
    per_el = {label: pd.read_csv(out / label / "per_element.csv") for label in results}
    written: list[tuple[Path, str]] = []
    if all("recall" in pe.columns for pe in per_el.values()):
        rec = {label: {r.element: r.recall for r in pe.itertuples() if r.n_reference > 0}
               for label, pe in per_el.items()}
        written.append((ptable_grid_png(rec, figs / "compare_recall.png",
                                        title="Coverage recall per element (share of reference structures "
                                              "holding the element that are covered)",
                                        cbar_label="recall"), "coverage recall per element"))
        prec = {label: {r.element: r.precision for r in pe.itertuples() if r.n_generated > 0}
                for label, pe in per_el.items()}
        written.append((ptable_grid_png(prec, figs / "compare_precision.png",
                                        title="Coverage precision per element (valid structures holding the element)",
                                        cbar_label="precision"), "coverage precision per element"))
    freq = {}
    for label, pe in per_el.items():
        d = {}
        for r in pe.itertuples():
            if r.n_reference > 0:
                d[r.element] = float(np.clip(np.log2(r.freq_generated / r.freq_reference), -4, 4)) \
                    if r.n_generated > 0 else -4.0
        freq[label] = d
    written.append((ptable_grid_png(freq, figs / "compare_frequency.png", vmin=-4, vmax=4, cmap="RdBu_r",
                                    fmt="{:+.1f}", title="Element frequency vs reference: log2(set / reference) "
                                    "(-4: absent or >16x rarer)", cbar_label="log2 frequency ratio"),
                    "element frequency ratio"))
    return written


__all__ = ["ComparisonError", "HEADLINE", "check_same_protocol", "format_cell", "write_comparison"]
