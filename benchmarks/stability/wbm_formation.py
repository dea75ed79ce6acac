"""Formation-energy check on WBM: each potential's single-point E_form against DFT.

WBM (Wang et al. 2021; ``$LLAMAT_CIF_DATA/wbm/val.csv.gz``, 10,000 structures, as used by Matbench
Discovery) holds DFT-relaxed hypothetical crystals with their MP2020-compatible formation energies.
For each potential: a single point on the given structure, put on the MP scale exactly as the
stability pipeline does (MP2020 corrections for potentials declaring ``mp-uncorrected``), minus the
MP elemental reference energies (:class:`llamat_cif.stability.hull.Hull`), against the DFT value.

Rows stream to ``wbm_rows_<potential>.parquet`` every 200 structures and a rerun skips done rows;
the table (MAE, share within 0.1 eV/atom, median, by site count) goes to ``wbm_formation.json``.

    python benchmarks/stability/wbm_formation.py --potentials chgnet,sevennet-0 [--n 10000]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def summarize(df, n_requested: int) -> dict:
    import numpy as np

    ok = df[df["error"].isna()]
    err = (ok["e_form_pred"] - ok["e_form_dft"]).to_numpy(float)
    a = np.abs(err)
    out = {
        "n_structures": int(len(df)), "n_requested": n_requested, "n_errors": int(len(df) - len(ok)),
        "mae_ev_atom": float(a.mean()) if len(a) else None,
        "median_abs_error_ev_atom": float(np.median(a)) if len(a) else None,
        "mean_signed_error_ev_atom": float(err.mean()) if len(a) else None,
        "within_0.1": {"numerator": int((a <= 0.1).sum()), "denominator": int(len(df)),
                       "rate": float((a <= 0.1).sum() / len(df)) if len(df) else None,
                       "denominator_is": "all structures (errors count as outside)"},
        "ms_per_structure_median": float(ok["ms"].median()) if len(ok) else None,
        "by_sites": {},
    }
    for lo, hi in ((1, 8), (9, 16), (17, 1000)):
        m = (ok["n_sites"] >= lo) & (ok["n_sites"] <= hi)
        if m.any():
            out["by_sites"][f"{lo}-{hi}"] = {"n": int(m.sum()), "mae_ev_atom": float(a[m.to_numpy()].mean()),
                                             "ms_per_structure_median": float(ok.loc[m, "ms"].median())}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--potentials", default="chgnet,sevennet-0")
    ap.add_argument("--n", type=int, default=10000, help="first N WBM rows (all 10,000 by default)")
    ap.add_argument("--out", default=str(HERE))
    args = ap.parse_args()

    import pandas as pd
    import torch
    from pymatgen.core import Structure
    from rich.progress import Progress

    torch.set_num_threads(1)
    from llamat_cif.data import load_split
    from llamat_cif.protocol import hardware, package_versions
    from llamat_cif.stability.hull import Hull, mp2020_corrected_energy
    from llamat_cif.stability.potentials import load_potential
    from llamat_cif.stability.relax import quiet_warnings

    quiet_warnings()
    wbm = load_split("wbm", "val").iloc[: args.n].reset_index(drop=True)
    hull = Hull.from_data_dir()
    out = Path(args.out)
    record = {"dataset": f"WBM val (n={len(wbm)}, first {args.n} rows of $LLAMAT_CIF_DATA/wbm/val.csv.gz)",
              "target": "DFT formation_energy_per_atom (MP2020-compatible, eV/atom)",
              "method": "single point on the given (DFT-relaxed) structure; energies on the MP scale as in the "
                        "stability pipeline (MP2020 for 'mp-uncorrected' potentials); minus MP elemental references",
              "elemental_references": hull.protocol(), "versions": package_versions(("chgnet", "sevenn", "pymatgen",
                                                                                      "torch")),
              "hardware": hardware(), "torch_threads": 1, "potentials": {}}
    for name in args.potentials.split(","):
        pot = load_potential(name, device="cpu")
        path = out / f"wbm_rows_{name}.parquet"
        done = pd.read_parquet(path) if path.exists() else pd.DataFrame()
        have = set(done["row"]) if len(done) else set()
        rows: list[dict] = []
        t0 = time.time()
        with Progress() as bar:
            task = bar.add_task(f"WBM {name}", total=len(wbm), completed=len(have))
            for i, cif, ef in wbm[["cif", "formation_energy_per_atom"]].itertuples():
                if i in have:
                    continue
                row = {"row": i, "e_form_dft": float(ef), "e_form_pred": float("nan"), "n_sites": 0, "ms": float("nan"),
                       "error": None}
                try:
                    s = Structure.from_str(cif, fmt="cif")
                    row["n_sites"] = len(s)
                    t = time.perf_counter()
                    e = pot.predict_energies([s])[0]
                    row["ms"] = 1000 * (time.perf_counter() - t)
                    if pot.needs_mp2020_correction:
                        e = mp2020_corrected_energy(s, e)
                    row["e_form_pred"] = hull.formation_energy_per_atom(s.composition, e / len(s))
                except Exception as exc:  # noqa: BLE001 - one bad structure is a row, not a crash
                    row["error"] = f"{type(exc).__name__}: {exc}"
                rows.append(row)
                bar.advance(task)
                if len(rows) >= 200:
                    done = pd.concat([done, pd.DataFrame(rows)], ignore_index=True)
                    done.to_parquet(path.with_suffix(".tmp"), index=False)
                    path.with_suffix(".tmp").replace(path)
                    rows = []
        if rows:
            done = pd.concat([done, pd.DataFrame(rows)], ignore_index=True)
            done.to_parquet(path, index=False)
        rec = summarize(done, args.n)
        rec.update(protocol=pot.protocol(), wall_s_this_run=time.time() - t0)
        record["potentials"][name] = rec
        print(name, json.dumps({k: rec[k] for k in ("mae_ev_atom", "within_0.1", "ms_per_structure_median",
                                                   "n_errors")}))
    (out / "wbm_formation.json").write_text(json.dumps(record, indent=2))


if __name__ == "__main__":
    main()
