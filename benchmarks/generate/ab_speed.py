"""Constrained sampling speed of this checkout against another source tree, measured in one run.

Usage:
    git worktree add /tmp/old <commit>
    python benchmarks/generate/ab_speed.py --old-src /tmp/old --old-label <commit> [--n 64]
        [--batch-sizes 16,32] [--rounds 2] [--seed 21] [--out benchmarks/generate/ab_speed.json]

Each (version, batch size) is sampled in a fresh process (1 torch thread, the model loaded before the
clock starts) in the order old, new, old, new ... so both see the same machine load; the texts of
the two versions are compared (a speed change that keeps samples must give identical texts). Prints a
table and writes the walls, structures/s, the median new/old speed ratio and the identity counts; also
the CPU time of each process (``time.process_time``) and its ratio, which a busy machine disturbs less
than the wall time (one thread: CPU time is the time the process computed).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

CHILD = r"""
import json, sys, tempfile, time, torch
from llamat_cif.model import load_generator, resolve_model_path
from llamat_cif.sampling import SampleConfig, generate
from llamat_cif.sampling.config import model_format
n, bs, seed, out = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
torch.set_num_threads(1)
d = resolve_model_path("default")
model, tok = load_generator(str(d))
t0, c0 = time.perf_counter(), time.process_time()
df = generate(SampleConfig(n=n, out_dir=tempfile.mkdtemp(), batch_size=bs, seed=seed, constrained=True, temperature=0.7, top_p=0.9,
                           threads=1, fmt=model_format(d)), progress=False, model=model, tokenizer=tok)
wall, cpu = time.perf_counter() - t0, time.process_time() - c0
json.dump({"wall_s": wall, "cpu_s": cpu, "texts": list(df["text"])}, open(out, "w"))
"""


def run_one(src: Path, n: int, bs: int, seed: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "out.json"
        env = {**os.environ, "PYTHONPATH": str(src), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
        subprocess.run([sys.executable, "-c", CHILD, str(n), str(bs), str(seed), str(out)], env=env, check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=tmp)
        return json.loads(out.read_text())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--old-src", required=True, help="source tree of the version to compare with")
    ap.add_argument("--old-label", default="old")
    ap.add_argument("--n", type=int, default=64)
    ap.add_argument("--batch-sizes", default="16,32")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--seed", type=int, default=21)
    ap.add_argument("--out", default="benchmarks/generate/ab_speed.json")
    args = ap.parse_args()
    from rich.console import Console
    from rich.table import Table

    new_src = Path(__file__).resolve().parents[2]
    rows = []
    for bs in (int(b) for b in args.batch_sizes.split(",")):
        walls: dict[str, list[float]] = {"old": [], "new": []}
        cpus: dict[str, list[float]] = {"old": [], "new": []}
        texts: dict[str, list[str]] = {}
        for _ in range(args.rounds):
            for tag, src in (("old", Path(args.old_src)), ("new", new_src)):
                r = run_one(src, args.n, bs, args.seed)
                walls[tag].append(round(r["wall_s"], 2))
                cpus[tag].append(round(r["cpu_s"], 2))
                texts.setdefault(tag, r["texts"])
        same = sum(a == b for a, b in zip(texts["old"], texts["new"], strict=True))
        ratio = statistics.median(walls["old"]) / statistics.median(walls["new"])
        cpu_ratio = statistics.median(cpus["old"]) / statistics.median(cpus["new"])
        rows.append({"batch_size": bs, "n": args.n, "wall_s": walls, "cpu_s": cpus,
                     "cpu_ratio_old_over_new_median": round(cpu_ratio, 3),
                     "structures_per_s": {k: [round(args.n / w, 3) for w in v] for k, v in walls.items()},
                     "speed_ratio_new_over_old_median": round(ratio, 3),
                     "identical_texts": {"numerator": same, "denominator": args.n}})
        Path(args.out).write_text(json.dumps({
            "what": "constrained sampling, default settings (T 0.7, top-p 0.9, physical decoding), shipped model, "
                    "1 torch thread, fresh process per measurement, model load excluded",
            "old": args.old_label, "new": "this checkout", "seed": args.seed,
            "order": "old, new alternating per round", "load_1min_at_end": os.getloadavg()[0], "rows": rows},
            indent=2))
    t = Table(title=f"constrained sampling, {args.old_label} vs this checkout (seed {args.seed}, 1 thread)")
    for c in ("batch", "old structures/s", "new structures/s", "new/old", "CPU old/new", "identical texts"):
        t.add_column(c)
    for r in rows:
        s = r["structures_per_s"]
        t.add_row(str(r["batch_size"]), " / ".join(map(str, s["old"])), " / ".join(map(str, s["new"])),
                  f"{r['speed_ratio_new_over_old_median']:.2f}x", f"{r['cpu_ratio_old_over_new_median']:.2f}x",
                  f"{r['identical_texts']['numerator']}/{r['identical_texts']['denominator']}")
    Console().print(t)


if __name__ == "__main__":
    main()
