"""What each part of physical decoding earns: one table over runs of the same seeds.

Every row is a run folder of the shipped model drawn with the same seeds (``--seed 0 --batch-size 8``,
so sample i has the same random stream in every run) and a ``--stability N`` benchmark of it in
``RUN/stability-N`` (or ``RUN/stability-N-rescaled``): validity of all samples (CDVAE), geometry
of the valid ones on chemical scales (short contacts: a pair closer than 0.7 x its covalent-radius
sum; volume per atom), and the relaxation funnel of the N chosen valid samples (CHGNet, FIRE fmax
0.1, E_hull on the MP-20 hull; failures count as not metastable).

Run: python benchmarks/physics/ablation.py LABEL=RUN[:BENCH] ... [--limit 300] [--out FILE]
(``ablation.sh`` holds the exact commands of the recorded table).
"""

from __future__ import annotations

import argparse
import json
import warnings
from pathlib import Path

import pandas as pd
from pymatgen.core import Structure

from llamat_cif.physics import geometry_table
from llamat_cif.sampling.rows import read_samples


def _structures(cifs) -> list:
    out = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for c in cifs:
            try:
                out.append(Structure.from_str(c, fmt="cif") if c else None)
            except Exception:  # noqa: BLE001 - counted as not measurable
                out.append(None)
    return out


def row(label: str, run: Path, bench: Path | None, limit: int | None) -> dict:
    samples = read_samples(run)
    if limit:
        samples = samples.iloc[:limit]
    ids = set(samples["id"])
    validity = pd.read_parquet(run / "validity.parquet") if (run / "validity.parquet").exists() else None
    out: dict = {"setting": label, "run": str(run), "generated": len(samples)}
    if validity is not None:
        v = validity[validity["id"].astype(str).isin(ids)]
        for col in ("parsed", "structurally_valid", "compositionally_valid", "valid"):
            if col in v.columns:
                out[col] = int(v[col].fillna(False).astype(bool).sum())
        valid_ids = set(v.loc[v["valid"].fillna(False).astype(bool), "id"].astype(str))
        geo = geometry_table(_structures(samples.loc[samples["id"].isin(valid_ids), "cif"]))
        out["geometry_valid"] = geo
    cfg = run / "sample_config.json"
    if cfg.exists():
        c = json.loads(cfg.read_text())
        out["decoding"] = {k: c.get(k) for k in ("temperature", "top_p", "constrained", "min_distance",
                                                  "min_contact_ratio", "volume_window")}
    summ = run / "sample_summary.json"
    if summ.exists():
        s = json.loads(summ.read_text())
        shards = s.get("shards") or {"run": s.get("this_session", {})}
        out["fallbacks"] = int(sum(x.get("constraint_fallbacks", 0) for x in shards.values()))
        out["optimistic"] = int(sum(x.get("lookahead_optimistic", 0) for x in shards.values()))
    if bench is not None and (bench / "metrics.json").exists():
        st = json.loads((bench / "metrics.json").read_text())["stability"]
        out["stability"] = {
            "protocol": {k: st["protocol"].get(k) for k in ("potential", "fmax_eV_A", "max_steps", "rescale_volume",
                                                           "seed", "n_chosen", "chosen_from")},
            "funnel": {r["key"]: [r["count"], st["denominators"]["chosen"]] for r in st["funnel"]},
            "medians": {k: v.get("value") for k, v in st["medians"].items()},
        }
    return out


def _num(x, spec: str) -> str:
    return "–" if x is None else format(x, spec)


def _count(funnel: dict, key: str) -> str:
    return f"{funnel[key][0]}/{funnel[key][1]}" if key in funnel else "–"


def fmt_table(rows: list[dict]) -> str:
    cols = ["setting", "generated", "valid", "short contacts (valid)", "V/atom quartiles Å³", "chosen",
            "relaxed", "converged", "metastable", "stable", "M.S.U.N.", "median E_hull", "median s / relax"]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        g = r.get("geometry_valid") or {}
        sc = g.get("short_contacts") or {}
        vq = g.get("volume_per_atom_quartiles")
        st = r.get("stability") or {}
        f = st.get("funnel", {})
        med = st.get("medians", {})
        cells = [r["setting"], str(r["generated"]), f"{r.get('valid', '–')}/{r['generated']}",
                 f"{sc.get('count', '–')}/{sc.get('of', '–')}",
                 " / ".join(f"{x:.1f}" for x in vq) if vq else "–",
                 str((st.get("protocol") or {}).get("n_chosen", "–")),
                 _count(f, "relaxed"), _count(f, "converged"), _count(f, "metastable"), _count(f, "stable"),
                 _count(f, "msun"), _num(med.get("median_e_hull"), ".3f"), _num(med.get("median_seconds"), ".1f")]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("runs", nargs="+", help="LABEL=RUN[:BENCH] (BENCH: the --stability benchmark folder)")
    ap.add_argument("--limit", type=int, default=None, help="only the first N samples of each run")
    ap.add_argument("--reference", default=None, help="LABEL=CSV of reference CIFs for the geometry row")
    ap.add_argument("--out", default=str(Path(__file__).with_name("ablation.json")))
    args = ap.parse_args()
    rows = []
    for spec in args.runs:
        label, rest = spec.split("=", 1)
        run, _, bench = rest.partition(":")
        rows.append(row(label, Path(run), Path(bench) if bench else None, args.limit))
    table = fmt_table(rows)
    print(table)
    Path(args.out).write_text(json.dumps({"rows": rows, "table": table}, indent=1, default=float))
    Path(args.out).with_suffix(".md").write_text(table + "\n")


if __name__ == "__main__":
    main()
