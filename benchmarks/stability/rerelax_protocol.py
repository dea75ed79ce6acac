"""Re-relax the chosen samples of a recorded protocol run with today's code and compare the rows.

A change to the relaxer that keeps every energy call's numbers up to float32 rounding (as
``FastCHGNetCalculator``) still moves some long relaxations of generated crystals: FIRE on a cell far
from equilibrium is chaotic, so a 1e-5 eV/Å difference in a force can send it to another minimum.
This script measures how many rows move and, as a control, whether chgnet's own calculator moves the
same rows when only its float rounding changes (``--control-threads`` torch threads instead of the
recorded run's one): the diverged rows plus as many others (seeded), relaxed in this process.

    python benchmarks/stability/rerelax_protocol.py \\
        --run benchmarks/physics/runs/t0.7-p0.9-seed0-floor-1000 --out /tmp/rerelax --workers 2 --control-threads 2

``--out`` resumes (the relaxations through ``run_stability``, the control rows from ``control.csv``).
The summary goes to ``--record`` (default ``benchmarks/stability/rerelax_default_300.json``).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def compare(rec, new, ids) -> dict:
    """Counts of the recorded vs new rows over ``ids`` (both without error)."""
    a, b = rec.loc[ids], new.loc[ids]
    de = (a["energy_per_atom"] - b["energy_per_atom"]).abs()
    meta_a, meta_b = a["e_hull"] < 0.1, b["e_hull"] < 0.1
    return {
        "rows": len(ids), "max_abs_dE": float(de.max()), "median_abs_dE": float(de.median()),
        "rows_dE_above_0.01": int((de > 0.01).sum()), "same_steps": int((a["n_steps"] == b["n_steps"]).sum()),
        "metastable": [int(meta_a.sum()), int(meta_b.sum())], "metastable_verdict_flips": int((meta_a != meta_b).sum()),
        "stable": [int((a["e_hull"] <= 0).sum()), int((b["e_hull"] <= 0).sum())],
        "converged": [int(a["converged"].sum()), int(b["converged"].sum())],
        "relaxing_cpu_s": [float(a["cpu_s"].sum()), float(b["cpu_s"].sum())],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", required=True, help="recorded run folder (samples.parquet, bench/stability.parquet)")
    ap.add_argument("--out", required=True, help="work folder (resumable)")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--control-threads", type=int, default=2, help="torch threads of the control (0: no control)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--record", default=str(HERE / "rerelax_default_300.json"))
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import numpy as np
    import pandas as pd

    from llamat_cif.protocol import hardware, package_versions
    from llamat_cif.stability.pipeline import StabilityConfig, run_stability

    run, out = Path(args.run), Path(args.out)
    rec = pd.read_parquet(run / "bench" / "stability.parquet").set_index("id")
    samples = pd.read_parquet(run / "samples.parquet").set_index("id")
    ids = [i for i in rec.index if not rec.loc[i, "error"]]
    t0 = time.perf_counter()
    new = run_stability(samples.loc[rec.index, ["cif"]].reset_index(), out,
                        StabilityConfig(n_workers=args.workers), progress=True).set_index("id")
    ids = [i for i in ids if not new.loc[i, "error"]]
    summary = {"run": str(run), "setting": "StabilityConfig() defaults (CHGNet, FIRE + FrechetCellFilter, fmax 0.1, "
                                            f"<= 500 steps, primitive cell, MP-20 hull), {args.workers} workers",
               "relax_wall_s_this_call": time.perf_counter() - t0, "recorded_vs_today": compare(rec, new, ids)}
    de = (rec.loc[ids, "energy_per_atom"] - new.loc[ids, "energy_per_atom"]).abs()
    diverged = de[de > 0.01].index.tolist()
    if args.control_threads and diverged:
        import torch
        from chgnet.model.dynamics import CHGNetCalculator

        from llamat_cif.stability import RelaxConfig, load_potential
        from llamat_cif.stability.relax import relax_structure

        rest = sorted(set(ids) - set(diverged))
        others = list(np.random.default_rng(args.seed).choice(rest, size=min(len(diverged), len(rest)), replace=False))
        path = out / "control.csv"
        done = pd.read_csv(path) if path.exists() else pd.DataFrame(columns=["id", "energy_per_atom", "n_steps"])
        torch.set_num_threads(args.control_threads)
        pot = load_potential("chgnet")
        pot.extra["calculator"] = CHGNetCalculator(model=pot.model, use_device="cpu", on_isolated_atoms="ignore")
        for i in diverged + others:
            if i in set(done["id"]):
                continue
            r = relax_structure(samples.loc[i, "cif"], pot, RelaxConfig(), sid=i)
            row = pd.DataFrame([{"id": i, "energy_per_atom": r["energy_per_atom"], "n_steps": r["n_steps"]}])
            row.to_csv(path, mode="a", header=not path.exists(), index=False)
            done = pd.concat([done, row])
        ctl = done.set_index("id")
        moved = (ctl["energy_per_atom"] - rec.loc[ctl.index, "energy_per_atom"]).abs() > 0.01
        summary["control"] = {
            "calculator": f"chgnet's own CHGNetCalculator, {args.control_threads} torch threads (recorded run: 1)",
            "diverged_rows": len(diverged), "diverged_rows_moved_by_control": int(moved.loc[diverged].sum()),
            "other_rows": len(others), "other_rows_moved_by_control": int(moved.loc[others].sum()),
        }
    summary |= {"hardware": hardware(), "versions": package_versions(("torch", "chgnet", "ase"))}
    Path(args.record).write_text(json.dumps(summary, indent=2))
    print(json.dumps({k: v for k, v in summary.items() if k not in ("hardware", "versions")}, indent=2))


if __name__ == "__main__":
    main()
