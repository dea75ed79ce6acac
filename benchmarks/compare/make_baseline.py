"""Write the pyxtal baseline as a folder of CIFs: random symmetric crystals with MP-20 train compositions.

    python benchmarks/compare/make_baseline.py --n 1000 --seed 0 --out runs/compare/pyxtal-random-1000

Each draw takes a random MP-20 train structure (available subset) and places its composition on random
Wyckoff positions of its own space group (:mod:`llamat_cif.metrics.baseline`; needs the ``baseline``
extra). Draws pyxtal cannot build are listed in ``failed.json`` beside the CIFs.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from llamat_cif.cif import structure_to_cif
from llamat_cif.data import load_split
from llamat_cif.metrics.baseline import baseline_set


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", required=True)
    ap.add_argument("--data-dir", default=None)
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    train = load_split("mp20", "train", data_dir=args.data_dir)
    t0 = time.perf_counter()
    with Progress(TextColumn("pyxtal baseline"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn()) as bar:
        task = bar.add_task("draws", total=args.n)
        draws = baseline_set(train["pretty_formula"].tolist(), train["spacegroup.number"].tolist(), args.n,
                             seed=args.seed, progress=lambda done, _n: bar.update(task, completed=done))
    failed = []
    for d in draws:
        if d.structure is None:
            failed.append({"id": d.id, "formula": d.formula, "spacegroup": d.spacegroup, "error": d.error})
        else:
            (out / f"{d.id}.cif").write_text(structure_to_cif(d.structure))
    record = {"n": args.n, "seed": args.seed, "written": args.n - len(failed), "failed": failed,
              "source": "MP-20 train, available subset (formula and space group of a random structure per draw)",
              "seconds": round(time.perf_counter() - t0, 1)}
    (out / "failed.json").write_text(json.dumps(record, indent=2))
    print(f"wrote {record['written']} CIFs to {out} ({len(failed)} failed) in {record['seconds']} s")


if __name__ == "__main__":
    main()
