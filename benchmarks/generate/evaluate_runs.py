"""Score sampling runs of the shipped generator with the validators and record the results.

Usage:
    python benchmarks/generate/evaluate_runs.py RUN_DIR [RUN_DIR ...] [--out benchmarks/generate]
        [--combine NAME=RUN,RUN] [--novelty]

Each RUN_DIR is a `llamat-cif generate` output folder. Every row of its samples (samples.parquet, or an
older run's samples.csv) is validated
(CDVAE structural + compositional validity, condition adherence; CrystaLLM's bond check is off for
speed), and the table is printed and written to RESULTS.md and results.json with counts and
denominators. Rows still being written by a running `generate` are simply not there yet: the
denominator is the number of samples present. ``--novelty`` adds how many valid samples are unique
(among the run's valid samples) and unique + novel (vs MP-20 train, available subset), as generated
(``llamat_cif.metrics.diversity``); pooled runs are judged as one set.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("runs", nargs="+")
    ap.add_argument("--out", default="benchmarks/generate")
    ap.add_argument("--combine", action="append", default=[], metavar="NAME=RUN,RUN",
                    help="also report the pooled counts of these runs (by folder name) as NAME")
    ap.add_argument("--novelty", action="store_true",
                    help="count unique and novel (vs MP-20 train) valid samples, as generated")
    args = ap.parse_args()

    from rich.console import Console
    from rich.table import Table

    from llamat_cif.sampling.rows import read_samples
    from llamat_cif.validators import validate_table

    training = None
    if args.novelty:
        from llamat_cif.metrics.diversity import uniqueness_novelty
        from llamat_cif.metrics.sun import TrainingSet

        training = TrainingSet.mp20_train()

    def diversity(cifs: list, valid) -> dict:
        m = uniqueness_novelty(cifs, valid, training)
        return {"unique": m["unique_as_generated"].numerator, "novel": m["novel_as_generated"].numerator,
                "novelty_reference": training.name}

    results = {}
    valid_cifs: dict[str, tuple[list, list]] = {}
    for run in args.runs:
        run = Path(run)
        df = read_samples(run)
        cfg = json.loads((run / "sample_config.json").read_text())
        summ = json.loads((run / "sample_summary.json").read_text()) if (run / "sample_summary.json").exists() else {}
        rows, s = validate_table(df, n_jobs=1, check_bonds=False)
        n = len(df)
        res = {
            "run": run.name, "n": n, "constrained": cfg["constrained"], "seed": cfg["seed"],
            "temperature": cfg["temperature"], "top_p": cfg["top_p"],
            "parsed": int(rows["parsed"].sum()),
            "structurally_valid": int(rows["structurally_valid"].fillna(False).astype(bool).sum()),
            "compositionally_valid": int(rows["compositionally_valid"].fillna(False).astype(bool).sum()),
            "valid": int(rows["valid"].fillna(False).astype(bool).sum()),
            "mean_tokens": round(float(df["n_tokens"].mean()), 1),
            "charge_balanced_constraint": bool(cfg.get("charge_balanced", False)),
        }
        # sessions that drew rows: the last one, or the shards a merged run was drawn by
        sessions = [x for x in [summ.get("this_session") or {}, *(summ.get("shards") or {}).values()]
                    if x.get("new_rows")]
        for key in ("constraint_fallbacks", "lookahead_optimistic"):
            res[f"{key}_drawing_sessions"] = sum(x.get(key) or 0 for x in sessions) if sessions else None
        res["structures_per_s_per_process"] = [x.get("structures_per_s") for x in sessions]
        if (df["target_formula"] != "").any():
            res["formula_requested"] = int((df["target_formula"] != "").sum())
            res["formula_met"] = int(rows["formula_match"].fillna(False).astype(bool).sum())
        if training is not None:
            vmask = rows["valid"].fillna(False).astype(bool).tolist()
            valid_cifs[run.name] = (df["cif"].tolist(), vmask)
            res.update(diversity(*valid_cifs[run.name]))
        results[run.name] = res
    for spec in args.combine:
        name, members = spec.split("=", 1)
        parts = [results[m] for m in members.split(",")]
        pooled = {"run": name, "pooled_from": members.split(",")}
        for k in ("n", "parsed", "structurally_valid", "compositionally_valid", "valid", "formula_requested",
                  "formula_met"):
            if all(k in r for r in parts):
                pooled[k] = sum(r[k] for r in parts)
        if training is not None:
            cifs = [c for m in members.split(",") for c in valid_cifs[m][0]]
            mask = [v for m in members.split(",") for v in valid_cifs[m][1]]
            pooled.update(diversity(cifs, mask))
        results[name] = pooled
    t = Table(title="shipped model llamat-cif-small, CPU sampling; denominators = samples present")
    cols = ["run", "n", "parsed", "structurally_valid", "compositionally_valid", "valid", "formula_met"]
    if training is not None:
        cols += ["unique (of valid)", "unique+novel (of valid)"]
    for c in cols:
        t.add_column(c)
    md = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in results.values():
        cells = [r["run"], str(r["n"])] + [
            f"{r[k]}/{r['n']} = {r[k] / r['n']:.3f}" if r["n"] else "-" for k in cols[2:6]]
        cells.append(f"{r['formula_met']}/{r['formula_requested']}" if "formula_met" in r else "-")
        if training is not None:
            cells += [f"{r[k]}/{r['valid']} = {r[k] / r['valid']:.3f}" if r.get("valid") and k in r else "-"
                      for k in ("unique", "novel")]
        t.add_row(*cells)
        md.append("| " + " | ".join(cells) + " |")
    Console().print(t)
    out = Path(args.out)
    (out / "results.json").write_text(json.dumps(results, indent=2))
    (out / "RESULTS_TABLE.md").write_text("\n".join(md) + "\n")
    print(f"wrote {out}/results.json and {out}/RESULTS_TABLE.md")


if __name__ == "__main__":
    main()
