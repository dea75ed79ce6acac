"""Cost of a second potential relative to CHGNet, measured in one run (interleaved, so machine load
hits both alike): a single point (energy+forces+stress) and a full relaxation per structure.

Structures: a seeded sample of MP-20 test (available subset), every atom displaced by ``--rattle`` Å
(seeded) so that relaxations do real work; the same displaced structure goes to every potential.
Relaxations use the stability pipeline's own ``relax_structure`` and defaults (FIRE +
FrechetCellFilter, fmax 0.1 eV/Å, primitive cell).

    python benchmarks/stability/potential_cost.py --potentials chgnet,sevennet-0 --n 40
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--potentials", default="chgnet,sevennet-0")
    ap.add_argument("--n", type=int, default=40)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--rattle", type=float, default=0.05)
    ap.add_argument("--out", default=str(HERE / "potential_cost.json"))
    args = ap.parse_args()

    import numpy as np
    import torch
    from pymatgen.core import Structure
    from rich.progress import track

    torch.set_num_threads(1)
    from llamat_cif.data import load_split
    from llamat_cif.protocol import hardware, package_versions
    from llamat_cif.stability.potentials import load_potential
    from llamat_cif.stability.relax import RelaxConfig, quiet_warnings, relax_structure

    quiet_warnings()
    test = load_split("mp20", "test").sample(args.n, random_state=args.seed)
    rng = np.random.default_rng(args.seed)
    structures = []
    for cif in test["cif"]:
        s = Structure.from_str(cif, fmt="cif")
        structures.append(Structure(s.lattice, s.species, s.cart_coords + rng.normal(0, args.rattle, (len(s), 3)),
                                    coords_are_cartesian=True))
    names = args.potentials.split(",")
    pots = {n: load_potential(n, device="cpu") for n in names}
    sp: dict[str, list[float]] = {n: [] for n in names}
    rows: dict[str, list[dict]] = {n: [] for n in names}
    for s in track(structures, description="single points + relaxations"):
        for n, pot in pots.items():
            calc = pot.calculator()
            atoms = s.to_ase_atoms()
            atoms.calc = calc
            t = time.perf_counter()
            atoms.get_potential_energy()
            atoms.get_forces()
            atoms.get_stress()
            sp[n].append(1000 * (time.perf_counter() - t))
            rows[n].append(relax_structure(s, pot, RelaxConfig()))
    ref = names[0]
    out = {"structures": f"{args.n} MP-20 test structures (seed {args.seed}), atoms displaced N(0, {args.rattle} Å)",
           "relax": RelaxConfig().protocol(), "torch_threads": 1, "potentials": {},
           "load_average_1min_at_end": os.getloadavg()[0], "hardware": hardware(),
           "versions": package_versions(("torch", "chgnet", "sevenn", "ase"))}
    for n in names:
        wall = np.array([r["wall_s"] for r in rows[n]])
        steps = np.array([r["n_steps"] for r in rows[n]])
        out["potentials"][n] = {
            "single_point_ms_median": float(np.median(sp[n])),
            "relaxation_s_median": float(np.median(wall)), "relaxation_s_total": float(wall.sum()),
            "fire_steps_median": float(np.median(steps)),
            "converged": {"numerator": int(sum(bool(r["converged"]) for r in rows[n])), "denominator": len(rows[n])},
            "errors": int(sum(bool(r["error"]) for r in rows[n])),
            f"single_point_cost_vs_{ref}": float(np.median(sp[n]) / np.median(sp[ref])),
            f"relaxation_cost_vs_{ref}_total": float(wall.sum() / sum(r["wall_s"] for r in rows[ref])),
        }
        print(n, json.dumps(out["potentials"][n]))
    Path(args.out).write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
