"""Screen throughput: the local executor next to Ray with 1 and 2 CPUs, on this machine, in one run.

    python benchmarks/ray/bench_ray.py --n 40 --out runs/bench_ray

Runs the same ``llamat-cif screen`` (``--n`` candidates, batch 8, seed 0, ``--max-steps``) four
times, one after the other: local ``--workers 1``, Ray with 1 CPU, local ``--workers 2``, Ray with 2
CPUs. Records each run's wall time (whole command, so Ray's start-up is included), its per-stage
times from ``funnel.json`` and candidates/hour; checks that every run wrote the same samples and the
same stability verdicts; and extrapolates the wall time of a 10^6-candidate screen on K workers
from the measured per-candidate stage costs. Prints a table and writes ``results.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd

RUNS = (("local, --workers 1", ["--workers", "1"]), ("ray, 1 CPU", ["--executor", "ray", "--ray-cpus", "1"]),
        ("local, --workers 2", ["--workers", "2"]), ("ray, 2 CPUs", ["--executor", "ray", "--ray-cpus", "2"]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=40)
    ap.add_argument("--max-steps", type=int, default=100)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="runs/bench_ray")
    ap.add_argument("--record", default=str(Path(__file__).with_name("results.json")))
    args = ap.parse_args()
    root = Path(args.out)
    exe = str(Path(sys.executable).with_name("llamat-cif"))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    results = []
    for k, (label, extra) in enumerate(RUNS):
        out = root / f"run{k}"
        subprocess.run(["rm", "-rf", str(out)], check=True)
        cmd = [exe, "screen", "-n", str(args.n), "--batch-size", "8", "--seed", str(args.seed),
               "--max-steps", str(args.max_steps), "--out", str(out), "--no-progress", *extra]
        t0 = time.perf_counter()
        done = subprocess.run(cmd, env=env, capture_output=True, text=True)
        wall = time.perf_counter() - t0
        if done.returncode != 0:
            raise SystemExit(f"{label} failed:\n{done.stderr[-3000:]}")
        funnel = json.loads((out / "funnel.json").read_text())
        stab = pd.read_parquet(out / "stability.parquet")
        results.append({"run": label, "command": " ".join(cmd[1:]), "wall_s": round(wall, 1),
                         "candidates_per_hour": round(args.n / wall * 3600, 1),
                         "stages_s": {s: round(v, 1) for s, v in funnel["wall_s_this_run"].items()},
                         "relaxed": len(stab), "executor": funnel.get("executor")})
        print(f"{label}: {wall:.1f} s", flush=True)
    # same candidates and verdicts everywhere
    from llamat_cif.sampling.rows import read_samples

    ref = root / "run0"
    same = []
    for k in range(1, len(RUNS)):
        got = root / f"run{k}"
        a = pd.read_parquet(ref / "stability.parquet").sort_values("id").reset_index(drop=True)
        b = pd.read_parquet(got / "stability.parquet").sort_values("id").reset_index(drop=True)
        same.append({"run": RUNS[k][0],
                     "samples_identical": read_samples(got).equals(read_samples(ref)),
                     "same_stability_ids": list(a["id"]) == list(b["id"]),
                     "max_abs_e_hull_diff": float((a["e_hull"] - b["e_hull"]).abs().max()) if len(a) == len(b) else None})
    w = {r["run"]: r["wall_s"] for r in results}
    overhead_1 = w["ray, 1 CPU"] / w["local, --workers 1"] - 1
    speedup_2 = w["ray, 1 CPU"] / w["ray, 2 CPUs"]
    # per-candidate cost of one worker (local, 1 worker), split by stage
    st = results[0]["stages_s"]
    per_cand = {s: v / args.n for s, v in st.items()}
    per_cand_total = sum(per_cand.values())
    eff = speedup_2 / 2
    estimate = {f"K={k}": round(1e6 * per_cand_total / (k * eff) / 3600, 1) for k in (8, 64, 512)}
    record = {
        "n": args.n, "max_steps": args.max_steps, "seed": args.seed, "batch_size": 8, "runs": results,
        "identical_to_local_workers_1": same,
        "ray_overhead_vs_local_1_cpu": round(overhead_1, 3),
        "ray_speedup_2_vs_1_cpu": round(speedup_2, 3),
        "per_candidate_s_one_cpu": {s: round(v, 3) for s, v in per_cand.items()},
        "estimate_hours_1e6_candidates_on_K_cpu_workers": estimate,
        "estimate_basis": ("10^6 x (measured per-candidate stage seconds of one CPU worker) / (K x parallel "
                           f"efficiency {eff:.2f} measured from 1 to 2 Ray CPUs); CPU workers of this machine, "
                           "no GPU was available to measure"),
        "machine": {"platform": platform.platform(), "cpu_count": os.cpu_count(), "load_avg_before": os.getloadavg()},
        "date": time.strftime("%Y-%m-%d"),
    }
    Path(args.record).write_text(json.dumps(record, indent=2))
    print("| run | wall s | candidates/h | generate s | validate s | relax+E_hull s |")
    print("|---|---|---|---|---|---|")
    for r in results:
        s = r["stages_s"]
        print(f"| {r['run']} | {r['wall_s']} | {r['candidates_per_hour']} | {s.get('generate')} | "
              f"{s.get('validate')} | {s.get('relax_ehull')} |")
    print(f"Ray overhead at 1 CPU: {100 * overhead_1:+.1f} %; Ray 2 CPUs vs 1: {speedup_2:.2f}x")
    print(json.dumps(same))


if __name__ == "__main__":
    main()
