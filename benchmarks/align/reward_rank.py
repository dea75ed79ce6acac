"""Does a short relaxation rank generated samples like the full one? (the reward of ``llamat-cif align``)

For K seeded-random CDVAE-valid samples of a generate run, one CHGNet relaxation (FIRE +
FrechetCellFilter, fmax 0.1, <= 500 steps: the stability pipeline's defaults) is followed step by
step; the E_hull (MP2020-corrected, MP-20 hull) of the structure at step 0 (a single point), 25, 50,
100 and at the end is computed, and each is compared with the final E_hull: Spearman rank
correlation, and agreement on "metastable" (E_hull < 0.1 eV/atom).

Usage (from the project root, LLAMAT_CIF_DATA set, OMP_NUM_THREADS=1):
    python benchmarks/align/reward_rank.py benchmarks/physics/runs/t0.7-p0.9-seed0-physics -k 40 --seed 0
Writes benchmarks/align/reward_rank.json and prints the table.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import pandas as pd
from rich.console import Console
from rich.progress import Progress
from rich.table import Table
from scipy.stats import spearmanr

from llamat_cif.sampling.rows import read_samples
from llamat_cif.stability.hull import Hull
from llamat_cif.stability.pipeline import score_row
from llamat_cif.stability.potentials import load_potential
from llamat_cif.stability.relax import RelaxConfig, quiet_warnings, relax_structure

STEPS = (0, 25, 50, 100)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run", type=Path, help="generate run folder with samples (parquet or an older run's CSV) and validity.parquet")
    ap.add_argument("-k", type=int, default=40)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=Path(__file__).with_name("reward_rank.json"))
    a = ap.parse_args()
    quiet_warnings()
    samples = read_samples(a.run)
    valid = pd.read_parquet(a.run / "validity.parquet")
    ids = sorted(valid.loc[valid["valid"].astype(bool), "id"].astype(str))
    chosen = sorted(np.random.default_rng(a.seed).choice(ids, size=min(a.k, len(ids)), replace=False))
    cif = dict(zip(samples["id"], samples["cif"], strict=True))
    pot, hull = load_potential("chgnet"), Hull.from_data_dir()
    rows = []
    t0 = time.time()
    with Progress() as bar:
        task = bar.add_task("relax", total=len(chosen))
        for sid in chosen:
            snaps: dict[int, dict] = {}

            def record(step, atoms, snaps=snaps):
                if step in STEPS:
                    from pymatgen.io.ase import AseAtomsAdaptor

                    snaps[step] = {"relaxed_cif": AseAtomsAdaptor.get_structure(atoms).to(fmt="cif"),
                                   "energy_per_atom": float(atoms.get_potential_energy()) / len(atoms)}

            final = score_row(relax_structure(cif[sid], pot, RelaxConfig(), sid=sid, on_step=record), hull, pot)
            row = {"id": sid, "n_steps": final["n_steps"], "final": final["e_hull"], "error": final["error"]}
            for step in STEPS:  # a relaxation that converged earlier keeps its final structure
                snap = snaps.get(step) or (final if final["n_steps"] < step else None)
                row[f"step{step}"] = score_row(dict(snap, error=None), hull, pot)["e_hull"] if snap else np.nan
            rows.append(row)
            bar.advance(task)
    df = pd.DataFrame(rows)
    ok = df.dropna(subset=["final", *[f"step{s}" for s in STEPS]])
    table = Table(title=f"E_hull after s FIRE steps vs the full relaxation ({len(ok)}/{len(df)} relaxed without error)")
    for c in ("steps", "Spearman ρ", "metastable agree", "median |ΔE_hull| eV/atom"):
        table.add_column(c)
    result = {"run": str(a.run), "k": len(df), "seed": a.seed, "scored": len(ok),
              "relax": RelaxConfig().protocol(), "potential": pot.protocol(), "hull": hull.protocol(),
              "wall_s": round(time.time() - t0, 1), "by_steps": {}}
    for s in STEPS:
        x, y = ok[f"step{s}"].to_numpy(float), ok["final"].to_numpy(float)
        rho = float(spearmanr(x, y).statistic)
        agree = int(((x < 0.1) == (y < 0.1)).sum())
        dev = float(np.median(np.abs(x - y)))
        result["by_steps"][s] = {"spearman": rho, "metastable_agree": agree, "of": len(ok), "median_abs_diff": dev}
        table.add_row(str(s), f"{rho:.3f}", f"{agree}/{len(ok)}", f"{dev:.3f}")
    Console().print(table)
    a.out.write_text(json.dumps({**result, "rows": df.to_dict("records")}, indent=2, default=str))


if __name__ == "__main__":
    main()
