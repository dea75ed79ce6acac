"""Relaxation pool, before and after a change, in one run: structures/s and per-row agreement.

The same seeded MP-20 test structures (available subset; each atom displaced N(0, ``--rattle``/sqrt(3))
per axis so the relaxations do work) are relaxed by ``relax_many`` with ``--workers`` processes, once
with the package as of ``--before`` (a git revision, checked out in a temporary worktree) and once with
this working tree; the arms alternate ``--repeats`` times. Each arm is a fresh process, so its wall
time is what a user waits: spawning workers, loading the potential, relaxing. Rows are compared per
structure (|ΔE| of the relaxed energy per atom, steps, convergence, errors).

    python benchmarks/stability/relax_ab.py --before 5e836fc --n 100 --workers 2
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]


def child(tree: str, items_file: str, out_file: str, workers: int, potential: str) -> None:
    """Relax the structures of ``items_file`` with the package imported from ``tree``."""
    import llamat_cif
    from llamat_cif.stability import RelaxConfig, relax_many

    assert Path(llamat_cif.__file__).resolve().is_relative_to(Path(tree).resolve()), llamat_cif.__file__
    items = json.loads(Path(items_file).read_text())
    t0 = time.perf_counter()
    rows = list(relax_many([(sid, cif) for sid, cif in items], potential, RelaxConfig(), n_workers=workers))
    wall = time.perf_counter() - t0
    keep = ("id", "energy_per_atom", "n_steps", "converged", "error", "n_sites", "cpu_s")
    Path(out_file).write_text(json.dumps({"wall_s": wall, "rows": [{k: r[k] for k in keep} for r in rows]}))


def structures(n: int, seed: int, rattle: float) -> list[tuple[str, str]]:
    import numpy as np
    from pymatgen.core import Structure

    from llamat_cif.data import load_split

    df = load_split("mp20", "test").sample(n, random_state=seed)
    rng = np.random.default_rng(seed)
    out = []
    for mid, cif in zip(df["material_id"], df["cif"], strict=True):
        s = Structure.from_str(cif, fmt="cif")
        for i, v in enumerate(rng.normal(scale=rattle / np.sqrt(3), size=(len(s), 3))):
            s.translate_sites([i], v, frac_coords=False, to_unit_cell=True)
        out.append((str(mid), s.to(fmt="cif")))
    return out


def run_arm(tree: Path, items_file: str, workers: int, potential: str) -> dict:
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as f:
        out = f.name
    env = {**os.environ, "PYTHONPATH": str(tree), "OMP_NUM_THREADS": "1"}
    # cwd outside the repository: the interpreter's first path entry must not shadow PYTHONPATH
    subprocess.run([sys.executable, str(Path(__file__).resolve()), "--child", str(tree), items_file, out,
                    "--workers", str(workers), "--potential", potential], check=True, env=env, cwd=tempfile.gettempdir())
    rec = json.loads(Path(out).read_text())
    Path(out).unlink()
    rec["rows"] = {r["id"]: r for r in rec["rows"]}
    return rec


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--before", help="git revision of the 'before' arm")
    ap.add_argument("--n", type=int, default=100)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--rattle", type=float, default=0.05, help="Å")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--potential", default="chgnet")
    ap.add_argument("--out", default=str(HERE / "relax_ab.json"))
    ap.add_argument("--child", nargs=3, metavar=("TREE", "ITEMS", "OUT"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(*args.child, workers=args.workers, potential=args.potential)
        return
    if not args.before:
        ap.error("--before REV is required")
    import numpy as np

    from llamat_cif.protocol import hardware, package_versions

    rev = subprocess.run(["git", "rev-parse", "--short", args.before], cwd=ROOT, check=True,
                         capture_output=True, text=True).stdout.strip()
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, check=True,
                          capture_output=True, text=True).stdout.strip()
    dirty = bool(subprocess.run(["git", "status", "--porcelain", "llamat_cif"], cwd=ROOT, check=True,
                                capture_output=True, text=True).stdout.strip())
    with tempfile.TemporaryDirectory() as tmp:
        wt = Path(tmp) / "before"
        subprocess.run(["git", "worktree", "add", "--detach", "-q", str(wt), rev], cwd=ROOT, check=True)
        try:
            items_file = str(Path(tmp) / "items.json")
            Path(items_file).write_text(json.dumps(structures(args.n, args.seed, args.rattle)))
            arms: dict[str, list[dict]] = {"before": [], "after": []}
            for rep in range(args.repeats):
                for name, tree in (("before", wt), ("after", ROOT)):
                    rec = run_arm(tree, items_file, args.workers, args.potential)
                    rec["load_average_1min"] = os.getloadavg()[0]
                    arms[name].append(rec)
                    print(f"repeat {rep}: {name:6s} {rec['wall_s']:7.1f} s  {args.n / rec['wall_s']:.3f} structures/s  "
                          f"(load {rec['load_average_1min']:.1f})", flush=True)
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(wt)], cwd=ROOT, check=False)
    b, a = arms["before"][0]["rows"], arms["after"][0]["rows"]
    de = np.array([abs(a[k]["energy_per_atom"] - b[k]["energy_per_atom"]) for k in b
                   if not a[k]["error"] and not b[k]["error"]])
    wall = {k: float(np.median([r["wall_s"] for r in v])) for k, v in arms.items()}
    cpu = {k: float(sum(r["cpu_s"] for r in v[0]["rows"].values())) for k, v in arms.items()}
    rec = {
        "setting": {"n": args.n, "seed": args.seed, "rattle_A": args.rattle, "workers": args.workers,
                    "potential": args.potential, "repeats": args.repeats, "structures": "MP-20 test (available subset)",
                    "relax": "RelaxConfig() defaults: FIRE + FrechetCellFilter, fmax 0.1, <= 500 steps"},
        "before": rev, "after": head + ("+working tree" if dirty else ""),
        "wall_s": {k: [r["wall_s"] for r in v] for k, v in arms.items()},
        "structures_per_s": {k: args.n / w for k, w in wall.items()},
        "speedup": wall["before"] / wall["after"],
        "relaxing_cpu_s": cpu, "relaxing_cpu_ratio": cpu["before"] / cpu["after"],
        "rows_compared": int(len(de)), "max_abs_dE_eV_per_atom": float(de.max()) if len(de) else None,
        "rows_dE_above_0.01": int((de > 0.01).sum()),
        "same_steps": int(sum(a[k]["n_steps"] == b[k]["n_steps"] for k in b)),
        "converged": {k: int(sum(r["converged"] for r in v[0]["rows"].values())) for k, v in arms.items()},
        "errors": {k: int(sum(bool(r["error"]) for r in v[0]["rows"].values())) for k, v in arms.items()},
        "load_average_1min": {k: [r["load_average_1min"] for r in v] for k, v in arms.items()},
        "hardware": hardware(), "versions": package_versions(("torch", "chgnet", "ase", "pymatgen")),
    }
    Path(args.out).write_text(json.dumps(rec, indent=2))
    print(f"\n{'arm':8s} {'wall s (median)':>16s} {'structures/s':>13s} {'relaxing CPU s':>15s}")
    for k in ("before", "after"):
        print(f"{k:8s} {wall[k]:16.1f} {rec['structures_per_s'][k]:13.3f} {cpu[k]:15.1f}")
    print(f"speed-up {rec['speedup']:.2f}x wall, {rec['relaxing_cpu_ratio']:.2f}x relaxing CPU; rows: "
          f"{rec['rows_compared']} compared, max |dE| {rec['max_abs_dE_eV_per_atom']:.2g} eV/atom, "
          f"{rec['rows_dE_above_0.01']} above 0.01; same steps {rec['same_steps']}/{args.n}; written {args.out}")


if __name__ == "__main__":
    main()
