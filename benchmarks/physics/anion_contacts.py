"""Anion-anion contacts: what the covalent-radius rule lets through, and what relaxation says of it.

The grammar's contact rule holds every pair to ``f x (r_i + r_j)`` on covalent radii. For two anions
that is a covalent bond length (O-O: 0.81 x 1.32 Å = 1.07 Å at the steering margin), while in ionic
solids anions keep apart (MP-20's oxides: the smallest O-O distance is above 2.4 Å in 95 % of them).
This script measures, per anion X, the smallest X-X distance of each structure

* in real crystals (MP-20 train, available subset, a seeded sample), and
* in the samples of a run that went through ``benchmark --stability`` (the relaxed input cells),
  split at the reference's 1st percentile, with the metastable share of each side

and writes a table (markdown) and the numbers (JSON).

Run: python benchmarks/physics/anion_contacts.py RUN/bench [--reference 2000] [--seed 0] [--out FILE]
(``RUN/bench`` holds ``stability.parquet``; the samples are read from the run folder above it.)
"""

from __future__ import annotations

import argparse
import json
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

ANIONS = ("O", "F", "S", "N", "Cl", "Se", "Br", "I")
QUANTILES = (0.1, 0.5, 1, 5, 50)


CAP = 6.0  # Å: a structure whose X atoms are all farther apart counts as CAP


def min_same_element_distance(structure, symbol: str) -> float:
    """Smallest distance between two atoms of ``symbol``, periodic images (an atom's own
    included) counted, capped at :data:`CAP`; NaN when the structure holds no ``symbol``."""
    idx = [i for i, site in enumerate(structure) if site.specie.symbol == symbol]
    if not idx:
        return float("nan")
    best = CAP
    for i in idx:
        for nb in structure.get_neighbors(structure[i], CAP):
            if nb.specie.symbol == symbol and nb.nn_distance > 1e-6:
                best = min(best, nb.nn_distance)
    return float(best)


def _distances(structures, symbols=ANIONS) -> pd.DataFrame:
    rows = []
    for s in structures:
        present = {el.symbol for el in s.composition.elements}
        rows.append({x: (min_same_element_distance(s, x) if x in present else np.nan) for x in symbols})
    return pd.DataFrame(rows)


def main() -> None:
    from pymatgen.core import Structure

    from llamat_cif.data import load_split
    from llamat_cif.protocol import E_HULL_METASTABLE
    from llamat_cif.sampling.rows import read_samples

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("bench", type=Path, help="a benchmark folder with stability.parquet (RUN/bench)")
    ap.add_argument("--run", type=Path, default=None, help="the run folder (default: the bench folder's parent)")
    ap.add_argument("--reference", type=int, default=2000, help="MP-20 train structures sampled as the reference")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=Path(__file__).with_name("anion_contacts.json"))
    args = ap.parse_args()
    warnings.filterwarnings("ignore")

    ref = load_split("mp20", "train")
    ref = ref.sample(min(args.reference, len(ref)), random_state=args.seed)
    ref_d = _distances(Structure.from_str(c, fmt="cif") for c in ref["cif"])

    rows = pd.read_parquet(args.bench / "stability.parquet", columns=["id", "e_hull"])
    samples = read_samples(args.run or args.bench.parent).set_index("id")
    gen = [Structure.from_str(samples.loc[i, "cif"], fmt="cif") for i in rows["id"]]
    gen_d = _distances(gen)
    metastable = (rows["e_hull"] < E_HULL_METASTABLE).to_numpy()  # NaN (failed) counts as not metastable

    out = {"reference": {"source": "MP-20 train, available subset", "n": len(ref), "seed": args.seed},
           "generated": {"bench": str(args.bench), "n": len(rows),
                         "metastable_threshold_eV_atom": E_HULL_METASTABLE}, "anions": {}}
    lines = ["| anion | reference structures | reference min X-X, 0.1 / 1 / 5 / 50 % (Å) | generated with X | "
             "generated min X-X quartiles (Å) | below ref. 1 %: n, metastable | at or above: n, metastable |",
             "|---|---|---|---|---|---|---|"]
    for x in ANIONS:
        r = ref_d[x].dropna().to_numpy()
        g = gen_d[x].to_numpy()
        has = ~np.isnan(g)
        if len(r) < 20 or has.sum() == 0:
            continue
        q = dict(zip(QUANTILES, np.percentile(r, QUANTILES).round(3).tolist(), strict=True))
        cut = q[1]
        below = has & (g < cut)
        above = has & (g >= cut)
        out["anions"][x] = {
            "reference_n": int(len(r)), "reference_quantiles_A": q,
            "generated_n": int(has.sum()),
            "generated_quartiles_A": np.percentile(g[has], (25, 50, 75)).round(3).tolist(),
            "below_ref_1pct": {"n": int(below.sum()), "metastable": int(metastable[below].sum())},
            "at_or_above": {"n": int(above.sum()), "metastable": int(metastable[above].sum())},
        }
        a = out["anions"][x]
        lines.append(f"| {x} | {len(r)} | {q[0.1]:.2f} / {q[1]:.2f} / {q[5]:.2f} / {q[50]:.2f} | {has.sum()} | "
                     + " / ".join(f"{v:.2f}" for v in a["generated_quartiles_A"])
                     + f" | {a['below_ref_1pct']['n']}, {a['below_ref_1pct']['metastable']} | "
                       f"{a['at_or_above']['n']}, {a['at_or_above']['metastable']} |")
    table = "\n".join(lines)
    print(table)
    out["table"] = table
    args.out.write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
