"""Control run folders: real MP-20 train structures as "samples" (good) and the same structures with
random fractional coordinates (bad; lattice and species kept). Validity from the validators.

Usage: python benchmarks/mp20/make_controls.py [N] [OUT_ROOT]   (defaults: 200, /tmp/bench_dev)
"""
import sys
from pathlib import Path

import numpy as np
import pandas as pd
from pymatgen.core import Structure

from llamat_cif.data import load_split
from llamat_cif.validators.core import validate_one

n = int(sys.argv[1]) if len(sys.argv) > 1 else 200
root = Path(sys.argv[2]) if len(sys.argv) > 2 else Path("/tmp/bench_dev")
df = load_split("mp20", "train", limit=n)
rng = np.random.default_rng(0)
for name in ("good", "bad"):
    rows, vrows = [], []
    for i, cif in enumerate(df["cif"]):
        if name == "bad":
            s = Structure.from_str(cif, fmt="cif")
            s = Structure(s.lattice, s.species, rng.random((len(s), 3)))
            cif = s.to(fmt="cif")
        rid = f"s{i:06d}"
        rows.append(dict(id=rid, text=cif, fmt="cif", cif=cif, error="", target_formula="", target_spacegroup="", seed=0, n_tokens=0))
        v = validate_one(cif, fmt="cif", id=rid)
        vrows.append({k: v[k] for k in ("id", "parsed", "structurally_valid", "compositionally_valid", "valid", "error")})
    d = root / name
    d.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows).to_parquet(d / "samples.parquet", index=False)
    pd.DataFrame(vrows).to_parquet(d / "validity.parquet", index=False)
    print(name, pd.DataFrame(vrows)[["parsed", "structurally_valid", "compositionally_valid", "valid"]].sum().to_dict())
