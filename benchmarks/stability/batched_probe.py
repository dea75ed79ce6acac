"""Does batching the potential pay on this CPU? Energy+forces+stress per structure, one call per
structure vs one batched call, for CHGNet (its own ``predict_graph`` batching) and SevenNet-0
(torch-sim's batched ``SevenNetModel``), on the same MP-20 test structures in one run.

torch-sim-atomistic 0.3.0 is the newest release this package index offers for Python 3.11; its
SevenNet wrapper imports ``sevenn.calculator.torch_script_type``, which sevenn 0.13 no longer has, so
the import fails inside a ``try`` and every forward raises ``NameError: Collater``. This probe puts
the four names the wrapper needs back into its module (``_shim_torch_sim_sevennet``) to measure it;
the toolkit itself does not do this. torch-sim has no CHGNet model.

    python benchmarks/stability/batched_probe.py --n 32 --repeats 3
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def _shim_torch_sim_sevennet():
    import warnings

    import sevenn._keys as key
    import torch

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch-sim warns with the whole ImportError traceback
        import torch_sim.models.sevennet as tsm
    from sevenn.atom_graph_data import AtomGraphData
    from torch_geometric.loader.dataloader import Collater

    tsm.key, tsm.AtomGraphData, tsm.Collater, tsm.torch_script_type = key, AtomGraphData, Collater, torch.jit.ScriptModule
    return tsm


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--seed", type=int, default=5)
    ap.add_argument("--out", default=str(HERE / "batched_probe.json"))
    args = ap.parse_args()

    import warnings

    import numpy as np
    import torch
    from pymatgen.core import Structure
    from pymatgen.io.ase import AseAtomsAdaptor

    warnings.filterwarnings("ignore")
    torch.set_num_threads(1)
    import torch_sim as ts

    from llamat_cif.data import load_split
    from llamat_cif.protocol import hardware, package_versions
    from llamat_cif.stability.potentials import load_potential

    test = load_split("mp20", "test").sample(args.n, random_state=args.seed)
    structures = [Structure.from_str(c, fmt="cif") for c in test["cif"]]
    atoms = [AseAtomsAdaptor.get_atoms(s) for s in structures]
    chg = load_potential("chgnet", device="cpu").model
    graphs = [chg.graph_converter(s) for s in structures]
    calc = load_potential("sevennet-0", device="cpu").calculator()
    tsm = _shim_torch_sim_sevennet()
    batched = tsm.SevenNetModel(model=copy.deepcopy(calc.model), device="cpu", dtype=torch.float32)
    state = ts.io.atoms_to_state(atoms, device=torch.device("cpu"), dtype=torch.float32)

    def chg_single():
        for g in graphs:
            chg.predict_graph(g, task="efs")

    def chg_batch(bs):
        return lambda: chg.predict_graph(graphs, task="efs", batch_size=bs)

    def seven_single():
        out = []
        for a in atoms:
            a.calc = calc
            out.append(a.get_potential_energy())
            a.get_forces()
            a.get_stress()
            a.calc = None
        return out

    def seven_batch():
        return batched(state)

    cases = {"chgnet, one structure per call": chg_single, "chgnet, predict_graph batch 8": chg_batch(8),
             "chgnet, predict_graph batch 32": chg_batch(32), "sevennet-0, ASE calculator per structure": seven_single,
             f"sevennet-0, torch-sim batch {args.n}": seven_batch}
    times: dict[str, list[float]] = {k: [] for k in cases}
    for _ in range(args.repeats):  # interleaved, so load changes hit every case alike
        for k, fn in cases.items():
            t = time.perf_counter()
            fn()
            times[k].append(1000 * (time.perf_counter() - t) / len(structures))
    e_ase = np.array(seven_single())
    e_ts = batched(state)["energy"].detach().numpy()
    n_at = np.array([len(a) for a in atoms])
    rec = {"structures": f"{args.n} MP-20 test structures (seed {args.seed}), median {int(np.median(n_at))} sites",
           "ms_per_structure_median_of_repeats": {k: float(np.median(v)) for k, v in times.items()},
           "ms_per_structure_all_repeats": times, "repeats": args.repeats, "torch_threads": 1,
           "sevennet_batched_vs_ase_max_abs_diff_ev_atom": float(np.max(np.abs(e_ase - e_ts) / n_at)),
           "torch_sim_note": "torch-sim-atomistic 0.3.0's SevenNet wrapper needs four names restored (see docstring)",
           "load_average_1min_at_end": os.getloadavg()[0], "versions": package_versions(
               ("torch", "chgnet", "sevenn", "torch-sim-atomistic", "torch_geometric")), "hardware": hardware()}
    Path(args.out).write_text(json.dumps(rec, indent=2))
    for k, v in rec["ms_per_structure_median_of_repeats"].items():
        print(f"{k:45s} {v:8.1f} ms/structure")
    print("load average", rec["load_average_1min_at_end"])


if __name__ == "__main__":
    main()
