"""Build a run folder whose "samples" are real structures of a dataset split (a baseline row).

CDVAE and crystal-text-llm report a "Train" row: training structures scored as if they were samples,
the ceiling a generator of the training distribution could reach. This script writes such a folder
(``samples.parquet`` by the run-folder contract, ``validity.parquet`` + ``validity_summary.json`` from the
validators) so that ``llamat-cif benchmark`` scores it like any model run.

Usage:
    python benchmarks/mp20/make_reference_run.py --split train --n 1000 --seed 0 --out runs/mp20-train-1000
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pandas as pd

from llamat_cif.data import load_split
from llamat_cif.validators import validate_table


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", default="mp20")
    ap.add_argument("--split", default="train")
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()

    df = load_split(args.dataset, args.split)
    rng = np.random.default_rng(args.seed)
    take = np.sort(rng.choice(len(df), min(args.n, len(df)), replace=False))
    df = df.iloc[take].reset_index(drop=True)
    samples = pd.DataFrame({
        "id": [f"s{i:06d}" for i in range(len(df))],
        "text": df["cif"], "fmt": "cif", "cif": df["cif"], "error": "",
        "target_formula": "", "target_spacegroup": "", "seed": args.seed, "n_tokens": 0,
        "source_id": df["id"],
    })
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    samples.to_parquet(out / "samples.parquet", index=False)
    rows, summary = validate_table(samples[["id", "cif"]], column="cif")
    rows.to_parquet(out / "validity.parquet", index=False)
    summary["note"] = f"{args.dataset}/{args.split} structures (n={len(df)}, seed {args.seed}) standing in for samples"
    (out / "validity_summary.json").write_text(json.dumps(summary, indent=2, default=str))
    print(f"wrote {out}: {len(samples)} samples, valid {int(rows['valid'].sum())}")


if __name__ == "__main__":
    main()
