"""Judge a generator by what relaxation says: the funnel of a finished ``llamat-cif screen`` run,
next to the geometry of its valid samples and its CDVAE validity, optionally against an earlier record.

    llamat-cif screen -n 200 --out RUN --seed 0 --workers 2 --no-progress
    python benchmarks/generate/screen_check.py RUN --label after --before benchmarks/generate/screen200_ab.json \
        --out benchmarks/generate/sg_token_ab.json

Prints a table and writes a JSON record: metastable / stable / S.U.N. / M.S.U.N. over all generated
and over the relaxed rows, short contacts (a pair < 0.7 x covalent-radius sum) and volume per atom
of the valid samples, and CDVAE validity (``validate --protocol cdvae``). With ``--before`` (a record
holding ``generator_check_after``), a one-sided Fisher exact test says whether the relaxed
metastable share rose.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import warnings
from pathlib import Path

import pandas as pd


def _geometry(run: Path) -> dict:
    from pymatgen.core import Structure

    from llamat_cif.physics import geometry_table

    v = pd.read_parquet(run / "validity.parquet")
    valid = v[v["valid"].fillna(False).astype(bool)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        structures = [Structure.from_str(c, fmt="cif") for c in valid["cif"]]
    return geometry_table(structures)


def _cdvae(run: Path) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        exe = Path(sys.executable).with_name("llamat-cif")
        subprocess.run([str(exe), "validate", str(run), "--out", tmp, "--protocol", "cdvae",
                        "--jobs", "2"], check=True, capture_output=True)
        s = json.loads((Path(tmp) / "validity_summary.json").read_text())
    return {"command": "llamat-cif validate RUN --out OUT --protocol cdvae --jobs 2",
            "comp_valid": f"{s['compositionally_valid']}/{s['n']}",
            "struct_valid": f"{s['structurally_valid']}/{s['n']}", "valid": f"{s['valid']}/{s['n']}"}


def check(run: Path) -> dict:
    funnel = json.loads((run / "funnel.json").read_text())
    stages = {s["stage"].split(" (")[0]: s["numerator"] for s in funnel["stages"]}
    sun = pd.read_parquet(run / "sun.parquet")
    relaxed = stages["relaxed without error"]
    return {
        "funnel": {s["stage"]: f"{s['numerator']}/{s['denominator']}" for s in funnel["stages"]},
        "msun": f"{funnel['msun']['numerator']}/{funnel['msun']['denominator']}",
        "of_relaxed": {"relaxed": relaxed, "metastable": int(sun["metastable"].sum()),
                       "stable": int(sun["stable"].sum()), "sun": int(sun["sun"].sum()),
                       "msun": int(sun["msun"].sum())},
        "wall_s": {k: round(v, 1) for k, v in funnel["wall_s_this_run"].items()},
        "geometry_of_valid": _geometry(run),
        "cdvae_validity": _cdvae(run),
        "protocol": "every valid unique sample relaxed (CHGNet FIRE fmax 0.1, <= 500 steps, primitive cell), "
                    "E_hull on the MP-20 hull; metastable E_hull < 0.1, stable <= 0; novelty vs MP-20 train "
                    "(available subset)",
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run", type=Path)
    ap.add_argument("--label", default="after")
    ap.add_argument("--before", type=Path, help="a record with generator_check_after (the earlier run)")
    ap.add_argument("--what", default="", help="what changed between the runs")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    rec = {"what": args.what, args.label: check(args.run)}
    if args.before:
        from scipy.stats import fisher_exact

        old = json.loads(args.before.read_text())["generator_check_after"]
        rec["before"] = {"record": str(args.before), **old}
        b_n = int(old["cdvae_validity"]["valid"].split("/")[0])  # every valid sample was relaxed
        b_m = old["of_180_relaxed"]["metastable"]
        a = rec[args.label]["of_relaxed"]
        table = [[a["metastable"], a["relaxed"] - a["metastable"]], [b_m, b_n - b_m]]
        rec["metastable_share_of_relaxed"] = {
            "before": f"{b_m}/{b_n}", args.label: f"{a['metastable']}/{a['relaxed']}",
            "fisher_one_sided_p": float(fisher_exact(table, alternative="greater")[1])}
    args.out.write_text(json.dumps(rec, indent=1))
    a = rec[args.label]
    print(f"{'':28s}{args.label:>12s}" + (f"{'before':>12s}" if args.before else ""))
    rows = [("metastable / relaxed", f"{a['of_relaxed']['metastable']}/{a['of_relaxed']['relaxed']}"),
            ("stable / relaxed", f"{a['of_relaxed']['stable']}/{a['of_relaxed']['relaxed']}"),
            ("M.S.U.N. / generated", a["msun"]),
            ("short contacts / valid", f"{a['geometry_of_valid']['short_contacts']['count']}/"
                                       f"{a['geometry_of_valid']['n']}"),
            ("CDVAE valid", a["cdvae_validity"]["valid"])]
    old = rec.get("before", {})
    before = [f"{old['of_180_relaxed']['metastable']}/{old['cdvae_validity']['valid'].split('/')[0]}",
              f"{old['of_180_relaxed']['stable']}/{old['cdvae_validity']['valid'].split('/')[0]}",
              f"{old['of_180_relaxed']['msun']}/{old['cdvae_validity']['valid'].split('/')[1]}",
              f"{old['short_contacts_of_valid']['numerator']}/{old['short_contacts_of_valid']['denominator']}",
              old["cdvae_validity"]["valid"]] if old else [""] * len(rows)
    for (name, val), was in zip(rows, before, strict=True):
        print(f"{name:28s}{val:>12s}{was:>12s}")
    if args.before:
        print(json.dumps(rec["metastable_share_of_relaxed"]))


if __name__ == "__main__":
    main()
