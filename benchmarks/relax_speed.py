"""Relaxation throughput: ms per force call (serial vs batched) and relaxations/s (1 vs N workers).

Structures: a seeded sample of MP-20 test (available subset), each atom displaced by ``--rattle`` Å so
the relaxations do real work. Results go to ``benchmarks/stability/relax_speed.json`` with the
protocol (potential, fmax, device, hardware, load average: the machine may be shared).

    nice -n 10 python benchmarks/relax_speed.py --n 12 --workers 1 2
    python benchmarks/relax_speed.py --device cuda --n 64 --batch 32     # on a GPU machine
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

OUT = Path(__file__).resolve().parent / "stability" / "relax_speed.json"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=12)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--rattle", type=float, default=0.05, help="random displacement per atom, Å")
    ap.add_argument("--potential", default="chgnet")
    ap.add_argument("--device", default=None)
    ap.add_argument("--fmax", type=float, default=0.1)
    ap.add_argument("--max-steps", type=int, default=500)
    ap.add_argument("--batch", type=int, default=16, help="structures per batched model call")
    ap.add_argument("--workers", type=int, nargs="+", default=[1])
    ap.add_argument("--threads", type=int, default=1, help="torch threads in the serial runs")
    ap.add_argument("--out", default=str(OUT))
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    import numpy as np
    import torch
    from pymatgen.core import Structure
    from pymatgen.io.ase import AseAtomsAdaptor

    from llamat_cif.data import load_split
    from llamat_cif.protocol import environment_info
    from llamat_cif.stability import RelaxConfig, load_potential, relax_many
    from llamat_cif.stability.pipeline import STABILITY_PACKAGES

    torch.set_num_threads(args.threads)
    df = load_split("mp20", "test").sample(args.n, random_state=args.seed)
    rng = np.random.default_rng(args.seed)
    structs = []
    for cif in df["cif"]:
        s = Structure.from_str(cif, fmt="cif")
        for i, v in enumerate(rng.normal(scale=args.rattle / np.sqrt(3), size=(len(s), 3))):
            s.translate_sites([i], v, frac_coords=False, to_unit_cell=True)
        structs.append(s)
    pot = load_potential(args.potential, device=args.device)
    calc = pot.calculator()

    # warm-up: first calls pay for lazy initialisation
    a = AseAtomsAdaptor.get_atoms(structs[0])
    a.calc = calc
    a.get_forces()

    single = []
    for s in structs:
        a = AseAtomsAdaptor.get_atoms(s)
        a.calc = calc
        t = time.perf_counter()
        a.get_potential_energy()
        a.get_forces()
        a.get_stress()
        single.append(time.perf_counter() - t)
    res: dict = {"n_structures": len(structs), "median_atoms": float(np.median([len(s) for s in structs])),
                 "ms_per_call_serial": {"median": 1e3 * statistics.median(single), "mean": 1e3 * statistics.mean(single)}}
    if pot.backend == "chgnet":
        t = time.perf_counter()
        pot.model.predict_structure(structs, task="efs", batch_size=args.batch)
        res["ms_per_structure_batched"] = {"batch_size": args.batch, "mean": 1e3 * (time.perf_counter() - t) / len(structs)}

    cfg = RelaxConfig(fmax=args.fmax, max_steps=args.max_steps)
    items = [(f"r{i}", s) for i, s in enumerate(structs)]
    res["relax"] = {}
    for w in args.workers:
        t = time.perf_counter()
        rows = list(relax_many(items, pot if w == 1 else args.potential, cfg, n_workers=w, device=args.device))
        wall = time.perf_counter() - t
        ok = [r for r in rows if not r["error"]]
        res["relax"][f"workers={w}"] = {
            "relaxations_per_s": len(rows) / wall, "wall_s": wall,
            "median_s_per_structure": statistics.median(r["wall_s"] for r in ok) if ok else None,
            "median_steps": statistics.median(r["n_steps"] for r in ok) if ok else None,
            "converged": sum(bool(r["converged"]) for r in ok), "errors": len(rows) - len(ok),
        }
    res["protocol"] = {**pot.protocol(), "relax": cfg.protocol(), "rattle_A": args.rattle, "seed": args.seed,
                       "dataset": "MP-20 test, available subset (n=7342), seeded sample",
                       "torch_threads_serial": args.threads, "load_average": os.getloadavg(),
                       "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
                       "environment": environment_info(STABILITY_PACKAGES)}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(res, indent=2, default=str))
    print(json.dumps({k: v for k, v in res.items() if k != "protocol"}, indent=2))


if __name__ == "__main__":
    main()
