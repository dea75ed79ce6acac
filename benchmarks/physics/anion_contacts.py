"""Anion-anion contacts: what the covalent-radius rule lets through, and what relaxation says of it.

The grammar's contact rule holds every pair to ``f x (r_i + r_j)`` on covalent radii. For two anions
that is a covalent bond length (O-O: 0.81 x 1.32 Å = 1.07 Å at the steering margin), while in ionic
solids anions keep apart (MP-20's oxides: the smallest O-O distance is above 2.4 Å in 95 % of them).
This script measures, per anion X, the smallest X-X distance of each structure

* in real crystals (MP-20 train, available subset, a seeded sample), and
* in the samples of a run that went through ``benchmark --stability`` (the relaxed input cells),
  split at the reference's 1st percentile, with the metastable share of each side

and writes a table (markdown) and the numbers (JSON).

``--elements all`` does the same for every element that at least 20 reference structures hold
(metals, metalloids, C, H ...: the cation side, where metal-metal distances are short by nature, so
each element gets its own reference). ``--write-calibration`` stores the reference's 5th percentiles
in ``llamat_cif/resources/physics_calibration.json`` (``anion_steer`` for the anions, ``cation_steer``
for every other element), the distances the sampler's same-element steering prefers.

Run: python benchmarks/physics/anion_contacts.py RUN/bench [--reference 2000] [--seed 0] [--out FILE]
     [--elements anions|all] [--write-calibration]
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
    """One row per structure, one column per element of ``symbols`` (``None``: every element
    present), NaN where the structure lacks it."""
    rows = []
    for s in structures:
        present = {el.symbol for el in s.composition.elements}
        wanted = present if symbols is None else symbols
        rows.append({x: (min_same_element_distance(s, x) if x in present else np.nan) for x in wanted})
    return pd.DataFrame(rows)


MIN_REFERENCE = 20  # reference structures an element needs for a percentile


def write_calibration(ref_d: pd.DataFrame, n_ref: int, quantile: float = 5) -> dict:
    """Store the reference's ``quantile`` percentile of the smallest same-element distance per
    element (>= :data:`MIN_REFERENCE` structures) as ``anion_steer`` / ``cation_steer``."""
    from llamat_cif.physics import CALIBRATION_FILE

    cal = json.loads(CALIBRATION_FILE.read_text())
    for key, pick in (("anion_steer", lambda x: x in ANIONS), ("cation_steer", lambda x: x not in ANIONS)):
        order = ANIONS if key == "anion_steer" else sorted(ref_d.columns)
        cols = [x for x in order if x in ref_d.columns and pick(x) and ref_d[x].notna().sum() >= MIN_REFERENCE]
        if not cols:
            continue
        cal[key] = {
            "source": f"benchmarks/physics/anion_contacts.py on MP-20 train, available subset ({n_ref} structures)",
            "rule": "steering preference: a new site of this element keeps at least this distance (Å) to atoms "
                    "of the same element, its own symmetry copies and lattice images included",
            "quantile": quantile,
            # the percentile as the table prints it (3 decimals), then to 0.01 Å
            "distance_A": {x: round(round(float(np.percentile(ref_d[x].dropna(), quantile)), 3), 2) for x in cols},
            "structures": {x: int(ref_d[x].notna().sum()) for x in cols}}
    CALIBRATION_FILE.write_text(json.dumps(cal, indent=1) + "\n")
    return cal


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
    ap.add_argument("--elements", choices=("anions", "all"), default="anions")
    ap.add_argument("--write-calibration", action="store_true",
                    help="store the reference's 5th percentiles as the sampler's steering distances")
    args = ap.parse_args()
    symbols = ANIONS if args.elements == "anions" else None
    group = "anions" if symbols else "elements"  # the JSON key of the per-element rows
    warnings.filterwarnings("ignore")

    ref = load_split("mp20", "train")
    ref = ref.sample(min(args.reference, len(ref)), random_state=args.seed)
    ref_d = _distances((Structure.from_str(c, fmt="cif") for c in ref["cif"]), symbols)
    if args.write_calibration:
        write_calibration(ref_d, len(ref))

    rows = pd.read_parquet(args.bench / "stability.parquet", columns=["id", "e_hull"])
    samples = read_samples(args.run or args.bench.parent).set_index("id")
    gen = [Structure.from_str(samples.loc[i, "cif"], fmt="cif") for i in rows["id"]]
    gen_d = _distances(gen, symbols)
    metastable = (rows["e_hull"] < E_HULL_METASTABLE).to_numpy()  # NaN (failed) counts as not metastable

    out = {"reference": {"source": "MP-20 train, available subset", "n": len(ref), "seed": args.seed},
           "generated": {"bench": str(args.bench), "n": len(rows),
                         "metastable_threshold_eV_atom": E_HULL_METASTABLE}, group: {}}
    elements = ANIONS if symbols else sorted(ref_d.columns, key=lambda x: -ref_d[x].notna().sum())
    lines = ["| element | reference structures | reference min X-X, 0.1 / 1 / 5 / 50 % (Å) | generated with X | "
             "generated min X-X quartiles (Å) | below ref. 1 %: n, metastable | at or above: n, metastable |",
             "|---|---|---|---|---|---|---|"]
    any_below = np.zeros(len(rows), dtype=bool)
    for x in elements:
        r = ref_d[x].dropna().to_numpy()
        g = gen_d[x].to_numpy() if x in gen_d.columns else np.full(len(rows), np.nan)
        has = ~np.isnan(g)
        if len(r) < MIN_REFERENCE or has.sum() == 0:
            continue
        q = dict(zip(QUANTILES, np.percentile(r, QUANTILES).round(3).tolist(), strict=True))
        cut = q[1]
        below = has & (g < cut)
        above = has & (g >= cut)
        any_below |= below
        out[group][x] = {
            "reference_n": int(len(r)), "reference_quantiles_A": q,
            "generated_n": int(has.sum()),
            "generated_quartiles_A": np.percentile(g[has], (25, 50, 75)).round(3).tolist(),
            "below_ref_1pct": {"n": int(below.sum()), "metastable": int(metastable[below].sum())},
            "at_or_above": {"n": int(above.sum()), "metastable": int(metastable[above].sum())},
        }
        a = out[group][x]
        lines.append(f"| {x} | {len(r)} | {q[0.1]:.2f} / {q[1]:.2f} / {q[5]:.2f} / {q[50]:.2f} | {has.sum()} | "
                     + " / ".join(f"{v:.2f}" for v in a["generated_quartiles_A"])
                     + f" | {a['below_ref_1pct']['n']}, {a['below_ref_1pct']['metastable']} | "
                       f"{a['at_or_above']['n']}, {a['at_or_above']['metastable']} |")
    out["any_element_below_ref_1pct"] = {"n": int(any_below.sum()), "metastable": int(metastable[any_below].sum()),
                                         "rest": int((~any_below).sum()),
                                         "rest_metastable": int(metastable[~any_below].sum())}
    lines.append("")
    lines.append(f"Samples with any listed element below its reference 1 %: {any_below.sum()}, "
                 f"{metastable[any_below].sum()} metastable; the rest: {(~any_below).sum()}, "
                 f"{metastable[~any_below].sum()} metastable.")
    table = "\n".join(lines)
    print(table)
    out["table"] = table
    args.out.write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
