"""Do two decoders draw the same crystals? Text-level distributions, the relaxation funnel and paired E_hull.

Two decode loops that hand the grammar the same logits at every choice (``jump`` and ``lean``) must
draw documents from the same distribution; their runs differ only by chance. This script weighs the
evidence over several protocol runs per decoder (``bash benchmarks/physics/protocol_1000.sh``, one
run per seed):

* what the documents declare, read from the text (no parsing by pymatgen): element count, atoms per
  cell, site lines, space group, crystal system, written volume per atom, length; Mann-Whitney U for
  the numbers and chi-square for the categories (bins with >= 10 documents), pooled over the runs;
* the relaxation funnel (metastable, stable, M.S.U.N. over the relaxed samples; compositional validity
  over the generated), pooled, with a two-proportion z (runs treated as independent samples);
* paired documents: runs of the same seed often agree on the conditioning header (formula and space
  group are drawn before the decoders' random streams part), so samples relaxed in both runs with the
  same header compare E_hull directly (sign test; Wilcoxon signed-rank). The shared headers also make
  the two groups' documents correlated, so the text-level p-values above are conservative (too high).

    python benchmarks/physics/decoder_check.py --a lean=RUN0,RUN1 --b jump=RUN0,RUN1 \
        [--out benchmarks/physics/decoder_check.json]

Each ``--a`` / ``--b`` run list is in seed order, so that the i-th runs of the two groups are paired.
"""

from __future__ import annotations

import argparse
import json
import math
import re
from pathlib import Path

import numpy as np
import pandas as pd


def features(text: str) -> dict:
    """What a canonical CIF document declares, read from its text."""
    m = re.search(r"# formula: (.*)", text)
    items = re.findall(r"([A-Z][a-z]?)(\d+)", m.group(1)) if m else []
    atoms = sum(int(c) for _, c in items)
    sg = re.search(r"_symmetry_Int_Tables_number (\d+)", text)
    vol = re.search(r"_cell_volume ([\d.]+)", text)
    return {"elements": len(items), "atoms": atoms,
            "site_lines": len(re.findall(r"^[A-Z][a-z]?\s+[A-Z][a-z]?\d+\s+\d+\s", text, re.M)),
            "spacegroup": int(sg.group(1)) if sg else -1,
            "volume_per_atom": float(vol.group(1)) / atoms if vol and atoms else np.nan, "characters": len(text)}


def header(text: str) -> str:
    return "\n".join(text.split("\n")[:2])


def load(run: str) -> tuple[pd.DataFrame, pd.DataFrame, dict]:
    run_dir = Path(run)
    samples = pd.read_parquet(run_dir / "samples.parquet")
    stab = pd.read_parquet(run_dir / "bench" / "stability.parquet")
    metrics = json.loads((run_dir / "bench" / "metrics.json").read_text())["metrics"]
    return samples, stab, metrics


def two_prop(k1: int, n1: int, k2: int, n2: int) -> float:
    p = (k1 + k2) / (n1 + n2)
    se = math.sqrt(p * (1 - p) * (1 / n1 + 1 / n2)) or 1.0
    return round((k2 / n2 - k1 / n1) / se, 2)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--a", required=True, help="label=RUN,RUN,... (seed order)")
    ap.add_argument("--b", required=True, help="label=RUN,RUN,... (seed order)")
    ap.add_argument("--out", default="benchmarks/physics/decoder_check.json")
    args = ap.parse_args()
    from rich.console import Console
    from rich.table import Table
    from scipy.stats import binomtest, chi2_contingency, mannwhitneyu, wilcoxon

    from llamat_cif.symmetry import crystal_system

    groups = {}
    for spec in (args.a, args.b):
        label, runs = spec.split("=", 1)
        groups[label] = [load(r) for r in runs.split(",")]
    (la, ga), (lb, gb) = groups.items()
    feats = {lab: pd.DataFrame([features(t) for s, _, _ in g for t in s["text"]]) for lab, g in groups.items()}
    for f in feats.values():
        f["crystal_system"] = [crystal_system(s) if s > 0 else "none" for s in f["spacegroup"]]
    text_rows = []
    for col in ("elements", "atoms", "site_lines", "volume_per_atom", "characters"):
        a, b = feats[la][col].dropna(), feats[lb][col].dropna()
        text_rows.append({"feature": col, la: round(float(a.mean()), 3), lb: round(float(b.mean()), 3),
                          "test": "Mann-Whitney U", "p": round(float(mannwhitneyu(a, b).pvalue), 3)})
    for col in ("spacegroup", "crystal_system", "elements"):
        a, b = feats[la][col], feats[lb][col]
        ct = pd.crosstab(pd.concat([a, b]), np.r_[np.zeros(len(a)), np.ones(len(b))])
        ct = ct[ct.sum(1) >= 10]
        text_rows.append({"feature": col, la: f"{len(a)} docs", lb: f"{len(b)} docs",
                          "test": f"chi-square, {len(ct) - 1} dof", "p": round(float(chi2_contingency(ct)[1]), 3)})
    funnel = []
    for key, denom in (("valid_rate", "generated"), ("stability_metastable_rate", "relaxed"),
                       ("stability_stable_rate", "relaxed"), ("stability_msun_rate", "relaxed")):
        ka = sum(m[key]["numerator"] for _, _, m in ga)
        na = sum(m[key]["denominator"] for _, _, m in ga)
        kb = sum(m[key]["numerator"] for _, _, m in gb)
        nb = sum(m[key]["denominator"] for _, _, m in gb)
        per_run = {la: [m[key]["numerator"] for _, _, m in ga], lb: [m[key]["numerator"] for _, _, m in gb]}
        funnel.append({"metric": key, "denominator": denom, la: f"{ka}/{na}", lb: f"{kb}/{nb}",
                       "per_run": per_run, "z": two_prop(ka, na, kb, nb)})
    diffs, shared = [], []
    for (sa, ta, _), (sb, tb, _) in zip(ga, gb, strict=False):
        ha, hb = dict(zip(sa["id"], sa["text"].map(header), strict=True)), dict(zip(sb["id"], sb["text"].map(header), strict=True))
        shared.append(f"{sum(ha[i] == hb.get(i) for i in ha)}/{len(ha)}")
        eb = tb.set_index("id")["e_hull"]
        for i, e in zip(ta["id"], ta["e_hull"], strict=True):
            if i in eb.index and ha.get(i) == hb.get(i) and np.isfinite(e) and np.isfinite(eb[i]):
                diffs.append(float(eb[i]) - float(e))
    d = np.array(diffs)
    nz = d[d != 0]
    paired = {"same_header_documents_per_seed": shared, "pairs": len(d), f"{lb}_higher": int((d > 0).sum()), f"{lb}_lower": int((d < 0).sum()),
              "median_difference_ev_per_atom": round(float(np.median(d)), 4) if len(d) else None,
              "sign_test_p": round(float(binomtest(int((nz > 0).sum()), len(nz)).pvalue), 3) if len(nz) else None,
              "wilcoxon_p": round(float(wilcoxon(nz).pvalue), 3) if len(nz) > 10 else None}
    out = {"groups": {lab: spec.split("=", 1)[1].split(",") for lab, spec in zip(groups, (args.a, args.b), strict=True)},
           "text": text_rows, "funnel": funnel, "paired_same_header_e_hull": paired}
    Path(args.out).write_text(json.dumps(out, indent=2))
    con = Console()
    t = Table(title=f"what the documents declare: {la} vs {lb}")
    for c in ("feature", la, lb, "test", "p"):
        t.add_column(c)
    for r in text_rows:
        t.add_row(*(str(r[c]) for c in ("feature", la, lb, "test", "p")))
    con.print(t)
    t = Table(title="relaxation funnel, pooled over runs")
    for c in ("metric", la, lb, "per run", "z"):
        t.add_column(c)
    for r in funnel:
        t.add_row(r["metric"], r[la], r[lb], f"{r['per_run'][la]} vs {r['per_run'][lb]}", str(r["z"]))
    con.print(t)
    con.print(f"paired (relaxed in both runs of a seed, same header): {paired}")


if __name__ == "__main__":
    main()
