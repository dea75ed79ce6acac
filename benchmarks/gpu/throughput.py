"""Sampling and relaxation throughput on whatever device is there (prepared for a lent GPU; CPU runs
the same code with small sizes so both land in one table).

Sampling: the toolkit's ``generate`` (shipped model, defaults: constrained with physical decoding,
T 0.7 / top-p 0.9), one batch of each size, seed 0, constrained and unconstrained; structures/s and
tokens/s.

Relaxation: ``--relax-n`` MP-20 test structures (seed 0), atoms displaced N(0, 0.05 Å):

* the pipeline's ``relax_structure`` one at a time (ASE FIRE + FrechetCellFilter, fmax 0.1) with
  CHGNet and with SevenNet-0, and with chgnet's own CHGNetCalculator (what the toolkit's one-backward
  calculator gains on the device);
* SevenNet-0 through torch-sim's batched ``frechet_cell_fire`` (``ts.optimize``, force convergence
  0.1 eV/Å, in-flight autobatching on CUDA). torch-sim-atomistic 0.3.0 (the newest for Python 3.11)
  needs four names restored in its SevenNet wrapper to run with sevenn 0.13
  (``benchmarks/stability/batched_probe.py``); its step limit is global, not per structure, so the
  toolkit's per-structure guards are not in this path. Energies are compared with the one-at-a-time
  SevenNet rows (|ΔE| per atom).

    python benchmarks/gpu/throughput.py                         # CUDA when present: batch 64..1024
    python benchmarks/gpu/throughput.py --device cpu --batch-sizes 8,32 --relax-n 16
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def sampling_rows(device: str, batch_sizes: list[int], seed: int) -> list[dict]:
    import pandas as pd

    from llamat_cif.model import load_generator, resolve_model_path
    from llamat_cif.sampling import SampleConfig, generate
    from llamat_cif.sampling.rows import read_samples

    model, tok = load_generator(str(resolve_model_path("default")), device=device)
    rows = []
    for constrained in (True, False):
        for bs in batch_sizes:
            with tempfile.TemporaryDirectory() as d:
                cfg = SampleConfig(n=bs, batch_size=bs, seed=seed, out_dir=d, constrained=constrained, device=device)
                t = time.perf_counter()
                generate(cfg, progress=False, model=model, tokenizer=tok)
                wall = time.perf_counter() - t
                df = read_samples(d)
            rows.append({"constrained": constrained, "batch_size": bs, "n": bs, "wall_s": wall,
                         "structures_per_s": bs / wall, "tokens_per_s": float(df["n_tokens"].sum()) / wall,
                         "decoded": int((df["error"] == "").sum())})
            print(f"sample constrained={constrained} batch {bs}: {bs / wall:.2f} structures/s")
    return rows


def relaxation_rows(device: str, n: int, seed: int) -> dict:
    import numpy as np
    import torch
    from pymatgen.core import Structure

    from llamat_cif.data import load_split
    from llamat_cif.stability.potentials import load_potential
    from llamat_cif.stability.relax import RelaxConfig, quiet_warnings, relax_structure

    quiet_warnings()
    test = load_split("mp20", "test").sample(n, random_state=seed)
    rng = np.random.default_rng(seed)
    structures = []
    for cif in test["cif"]:
        s = Structure.from_str(cif, fmt="cif")
        structures.append(Structure(s.lattice, s.species, s.cart_coords + rng.normal(0, 0.05, (len(s), 3)),
                                    coords_are_cartesian=True))
    n_atoms = np.array([len(s) for s in structures])
    out: dict = {"structures": f"{n} MP-20 test (seed {seed}), displaced N(0, 0.05 Å)", "rows": []}
    cfg = RelaxConfig(primitive=False)  # torch-sim relaxes the cells as given; so do these, to compare
    energies = {}
    for name in ("chgnet", "sevennet-0"):
        pot = load_potential(name, device=device)
        t = time.perf_counter()
        rows = [relax_structure(s, pot, cfg) for s in structures]
        wall = time.perf_counter() - t
        energies[name] = np.array([r["energy_per_atom"] for r in rows])
        out["rows"].append({"method": f"{name}, ASE FIRE one at a time", "wall_s": wall, "structures_per_s": n / wall,
                            "converged": int(sum(bool(r["converged"]) for r in rows)), "n": n})
        print(f"relax {name} one at a time: {n / wall:.2f} structures/s")
    # chgnet's own calculator (forces and stress by two double-backward passes), to measure on this
    # device what llamat_cif.stability.chgnet_calc gains (CPU: ~3x per call, same energies)
    from chgnet.model.dynamics import CHGNetCalculator

    pot = load_potential("chgnet", device=device)
    pot.extra["calculator"] = CHGNetCalculator(model=pot.model, use_device=pot.device, on_isolated_atoms="ignore")
    t = time.perf_counter()
    rows = [relax_structure(s, pot, cfg) for s in structures]
    wall = time.perf_counter() - t
    d = np.abs(np.array([r["energy_per_atom"] for r in rows]) - energies["chgnet"])
    out["rows"].append({"method": "chgnet, chgnet's own CHGNetCalculator, one at a time", "wall_s": wall,
                        "structures_per_s": n / wall, "n": n,
                        "vs_toolkit_calculator_abs_de_ev_atom": {"median": float(np.nanmedian(d)),
                                                                 "max": float(np.nanmax(d)),
                                                                 "within_0.01": int((d <= 0.01).sum())}})
    print(f"relax chgnet, chgnet's own calculator: {n / wall:.2f} structures/s; max |dE| {np.nanmax(d):.4f} eV/atom")
    sys.path.insert(0, str(HERE.parent / "stability"))
    from batched_probe import _shim_torch_sim_sevennet

    import torch_sim as ts

    tsm = _shim_torch_sim_sevennet()
    model = tsm.SevenNetModel(model=copy.deepcopy(load_potential("sevennet-0", device=device).calculator().model),
                              device=device)
    state = ts.io.structures_to_state(structures, device=torch.device(device), dtype=torch.float32)
    t = time.perf_counter()
    final = ts.optimize(system=state, model=model, optimizer=ts.frechet_cell_fire,
                        convergence_fn=ts.runners.generate_force_convergence_fn(0.1), max_steps=500,
                        autobatcher=device.startswith("cuda"))
    wall = time.perf_counter() - t
    e = model(final)["energy"].detach().cpu().numpy() / n_atoms
    d = np.abs(e - energies["sevennet-0"])
    out["rows"].append({"method": "sevennet-0, torch-sim batched frechet_cell_fire", "wall_s": wall,
                        "structures_per_s": n / wall, "n": n,
                        "vs_one_at_a_time_abs_de_ev_atom": {"median": float(np.median(d)), "max": float(d.max()),
                                                            "within_0.01": int((d <= 0.01).sum())}})
    print(f"relax sevennet-0 torch-sim batched: {n / wall:.2f} structures/s; max |dE| {d.max():.4f} eV/atom")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default=None)
    ap.add_argument("--batch-sizes", default=None, help="default: 64,128,256,512,1024 on CUDA, 8,32 on CPU")
    ap.add_argument("--relax-n", type=int, default=None, help="default: 256 on CUDA, 16 on CPU")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    import torch

    torch.set_num_threads(args.threads)
    from llamat_cif.protocol import hardware, package_versions
    from llamat_cif.stability.potentials import auto_device

    device = auto_device(args.device)
    cuda = device.startswith("cuda")
    sizes = [int(x) for x in (args.batch_sizes or ("64,128,256,512,1024" if cuda else "8,32")).split(",")]
    n_relax = args.relax_n or (256 if cuda else 16)
    rec = {"device": device, "gpu": torch.cuda.get_device_name(0) if cuda else None, "torch_threads": args.threads,
           "hardware": hardware(), "versions": package_versions(("torch", "transformers", "chgnet", "sevenn",
                                                                 "torch-sim-atomistic")),
           "sampling": sampling_rows(device, sizes, args.seed), "relaxation": relaxation_rows(device, n_relax, args.seed),
           "load_average_1min_at_end": os.getloadavg()[0]}
    out = Path(args.out or HERE / f"throughput_{'cuda' if cuda else 'cpu'}.json")
    out.write_text(json.dumps(rec, indent=2))
    print(f"written {out}")


if __name__ == "__main__":
    main()
