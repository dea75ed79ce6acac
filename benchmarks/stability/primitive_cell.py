"""Relax the primitive cell instead of the conventional one: the saving, measured in one run.

    python benchmarks/stability/primitive_cell.py --n 30 --seed 0

Samples: the 100 valid samples of the shipped model's recorded physics run that were chosen for its
stability benchmark (``benchmarks/physics/runs/t0.7-p0.9-seed0-physics``). Counts how many are
reducible (spglib primitive cell with fewer sites, symprec 0.1 Å), then relaxes ``--n`` seeded
reducible ones twice in this process, interleaved (as given / primitive; CHGNet, FIRE, fmax 0.1,
at most 500 steps, one torch thread) and compares CPU time, steps, convergence and E_hull.
Writes ``primitive_cell.json`` beside this script and prints a table.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

RUN = Path(__file__).resolve().parents[1] / "physics" / "runs" / "t0.7-p0.9-seed0-physics"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=30)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=str(Path(__file__).with_name("primitive_cell.json")))
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    import numpy as np
    import pandas as pd
    import torch
    from pymatgen.core import Structure
    from rich.progress import Progress

    from llamat_cif.sampling.rows import read_samples
    from llamat_cif.stability import Hull, RelaxConfig, load_potential
    from llamat_cif.stability.pipeline import score_row
    from llamat_cif.stability.relax import primitive_cell, quiet_warnings, relax_structure

    torch.set_num_threads(1)
    quiet_warnings()
    chosen = json.loads((RUN / "stability-100" / "stability_chosen.json").read_text())
    ids = chosen["chosen_ids"]
    samples = read_samples(RUN).set_index("id")
    structures = {i: Structure.from_str(samples.loc[i, "cif"], fmt="cif") for i in ids}
    sites = {i: (len(s), len(primitive_cell(s))) for i, s in structures.items()}
    reducible = sorted(i for i, (a, b) in sites.items() if b < a)
    rng = np.random.default_rng(args.seed)
    pick = sorted(rng.choice(reducible, min(args.n, len(reducible)), replace=False).tolist())
    pot = load_potential("chgnet", device="cpu")
    hull = Hull.from_data_dir(None)
    rows = []
    with Progress() as bar:
        task = bar.add_task("relax (as given, primitive)", total=2 * len(pick))
        for i in pick:
            for mode, primitive in (("as_given", False), ("primitive", True)):
                r = score_row(relax_structure(structures[i], pot, RelaxConfig(primitive=primitive), sid=i), hull, pot)
                rows.append({"id": i, "mode": mode, "n_sites": r["n_sites"], "n_sites_input": r["n_sites_input"],
                             "cpu_s": r["cpu_s"], "wall_s": r["wall_s"], "n_steps": r["n_steps"],
                             "converged": bool(r["converged"]), "e_hull": r["e_hull"], "error": r["error"] or ""})
                bar.advance(task)
    df = pd.DataFrame(rows)
    a = df[df["mode"] == "as_given"].set_index("id")
    p = df[df["mode"] == "primitive"].set_index("id").loc[a.index]
    both_ok = (a["error"] == "") & (p["error"] == "")
    de = (a["e_hull"] - p["e_hull"]).abs()[both_ok]

    def summary(x):
        ok = x["error"] == ""
        return {"median_sites": float(x["n_sites"].median()), "median_cpu_s": round(float(x["cpu_s"].median()), 2),
                "total_cpu_s": round(float(x["cpu_s"].sum()), 1), "median_steps": float(x["n_steps"].median()),
                "errors": int((~ok).sum()), "converged": int(x["converged"].sum()),
                "metastable": int((x["e_hull"] < 0.1).sum()), "stable": int((x["e_hull"] <= 0).sum()),
                "of": len(x)}

    record = {
        "samples": str(RUN.relative_to(Path(__file__).resolve().parents[2])) + " (stability-100 chosen ids)",
        "valid_samples": len(ids),
        "reducible": len(reducible),
        "sites_as_given_median": float(statistics.median(a for a, _ in sites.values())),
        "sites_primitive_median": float(statistics.median(b for _, b in sites.values())),
        "more_than_20_sites": {"as_given": sum(a > 20 for a, _ in sites.values()),
                               "primitive": sum(b > 20 for _, b in sites.values())},
        "relaxed_pairs": len(pick), "seed": args.seed,
        "as_given": summary(a.reset_index()), "primitive": summary(p.reset_index()),
        "cpu_ratio_total": round(float(a["cpu_s"].sum() / p["cpu_s"].sum()), 2),
        "e_hull_abs_diff_eV_atom": {"median": round(float(de.median()), 4), "max": round(float(de.max()), 4),
                                    "n_within_0.01": int((de <= 0.01).sum()), "of": int(len(de))},
        "protocol": {**RelaxConfig().protocol(), "potential": pot.protocol(), "torch_threads": 1},
        "load_avg_before": os.getloadavg(), "date": time.strftime("%Y-%m-%d"),
        "rows": rows,
    }
    Path(args.out).write_text(json.dumps(record, indent=2, default=str))
    print(f"valid samples {len(ids)}, reducible {len(reducible)}; >20 sites: "
          f"{record['more_than_20_sites']['as_given']} as given, {record['more_than_20_sites']['primitive']} primitive")
    print("| cell | median sites | median CPU s | total CPU s | median steps | converged | metastable | stable | errors |")
    print("|---|---|---|---|---|---|---|---|---|")
    for k in ("as_given", "primitive"):
        s = record[k]
        print(f"| {k} | {s['median_sites']} | {s['median_cpu_s']} | {s['total_cpu_s']} | {s['median_steps']} | "
              f"{s['converged']}/{s['of']} | {s['metastable']}/{s['of']} | {s['stable']}/{s['of']} | {s['errors']} |")
    print(f"CPU ratio (as given / primitive): {record['cpu_ratio_total']}x; |dE_hull| median "
          f"{record['e_hull_abs_diff_eV_atom']['median']}, max {record['e_hull_abs_diff_eV_atom']['max']} eV/atom")


if __name__ == "__main__":
    main()
