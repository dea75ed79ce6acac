"""Which energy scale does a potential predict? Measured on DFT-relaxed MP-20 test structures.

For a seeded random sample of "MP-20 test, available subset" (every structure within 0.08 eV/atom of
MP's hull), each potential's single-point energy is put on the MP-20 reference hull twice: as is
(``mp2020``: the energies already carry MP2020's anion / GGA+U corrections, like CHGNet's) and after
pymatgen's ``MaterialsProject2020Compatibility`` (``mp-uncorrected``). The right scale is the one whose
E_hull agrees with MP's own ``e_above_hull``; structures whose MP2020 correction is non-zero (oxides,
fluorides, U elements...) decide it, so they are reported on their own.

    python benchmarks/stability/sevennet_scale.py --n 200 --seed 0
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=200)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--potentials", default="chgnet,sevennet-0,sevennet-mf-0,sevennet-l3i5")
    ap.add_argument("--out", default=str(HERE / "sevennet_scale.json"))
    args = ap.parse_args()

    import numpy as np
    import torch
    from pymatgen.core import Structure
    from rich.progress import track

    torch.set_num_threads(1)
    from llamat_cif.data import load_split
    from llamat_cif.protocol import package_versions
    from llamat_cif.stability.hull import Hull, mp2020_corrected_energy
    from llamat_cif.stability.potentials import load_potential
    from llamat_cif.stability.relax import quiet_warnings

    quiet_warnings()
    test = load_split("mp20", "test")
    sample = test.sample(n=min(args.n, len(test)), random_state=args.seed).reset_index(drop=True)
    structures = [Structure.from_str(c, fmt="cif") for c in sample["cif"]]
    mp = sample["e_above_hull"].to_numpy(float)
    hull = Hull.from_data_dir()
    result = {"dataset": "MP-20 test, available subset (n=7342)", "sample": {"n": len(sample), "seed": args.seed,
              "sampler": "DataFrame.sample(random_state=seed)"}, "hull": hull.protocol(),
              "method": "single point on the DFT-relaxed structure; E_hull as is vs after MaterialsProject2020Compatibility",
              "versions": package_versions(("chgnet", "sevenn", "pymatgen", "torch")), "potentials": {}}
    for name in args.potentials.split(","):
        pot = load_potential(name, device="cpu")
        t0 = time.perf_counter()
        e = [pot.predict_energies([s])[0] / len(s) for s in track(structures, description=name)]
        dt = time.perf_counter() - t0
        as_is, corr, shift = [], [], []
        for s, ea in zip(structures, e, strict=True):
            ec = mp2020_corrected_energy(s, ea * len(s)) / len(s)
            as_is.append(hull.e_above_hull(s.composition, ea))
            corr.append(hull.e_above_hull(s.composition, ec))
            shift.append(ec - ea)
        as_is, corr, shift = np.array(as_is), np.array(corr), np.array(shift)
        touched = np.abs(shift) > 1e-6

        def stats(eh, mask):
            d = np.abs(eh[mask] - mp[mask])
            return {"n": int(mask.sum()), "median_abs_diff_vs_mp": float(np.median(d)),
                    "metastable": {"numerator": int((eh[mask] < 0.1).sum()), "denominator": int(mask.sum())}}

        all_ = np.ones(len(mp), bool)
        rec = {"as_is (mp2020 scale)": {"all": stats(as_is, all_), "mp2020_correction_nonzero": stats(as_is, touched)},
               "after MP2020 (mp-uncorrected scale)": {"all": stats(corr, all_),
                                                       "mp2020_correction_nonzero": stats(corr, touched)},
               "median_mp2020_shift_where_nonzero_ev_atom": float(np.median(shift[touched])) if touched.any() else 0.0,
               "ms_per_structure": 1000 * dt / len(structures), "declared_scale": pot.energy_scale}
        a = rec["as_is (mp2020 scale)"]["mp2020_correction_nonzero"]["median_abs_diff_vs_mp"]
        b = rec["after MP2020 (mp-uncorrected scale)"]["mp2020_correction_nonzero"]["median_abs_diff_vs_mp"]
        rec["measured_scale"] = "mp2020" if a < b else "mp-uncorrected"
        result["potentials"][name] = rec
        print(name, json.dumps({k: rec[k] for k in ("measured_scale", "declared_scale", "ms_per_structure")}),
              f"median |dE_hull| on corrected structures: as is {a:.3f}, after MP2020 {b:.3f}")
    Path(args.out).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
