"""Device-machine driver: probe concurrent throughput, then train small + base on the CIF corpus."""
import json, os, subprocess, sys, time
from pathlib import Path

OUT = Path(os.environ["OUT"]); W = Path("/tmp/train"); W.mkdir(exist_ok=True)
BUDGET = float(sys.argv[1]) if len(sys.argv) > 1 else 330.0
JOBS = {  # name: (config, batch, lr, warmup)
    "small_cif": ("small", 64, "1e-3", "200"),
    "base_cif": ("base", 64, "6e-4", "200"),
}
def cmd(name, steps, out, extra=()):
    cfg, bs, lr, wu = JOBS[name]
    return [sys.executable, "-m", "llamat_cif", "train", "--corpus", ".gpu/corpus_cif", "--config", cfg,
            "--batch-size", str(bs), "--lr", lr, "--warmup-steps", wu, "--max-steps", str(steps),
            "--out", str(out), "--seed", "0", "--no-progress", "--log-every", "20", *extra]
def log_rows(d):
    p = Path(d) / "train_log.jsonl"
    return [json.loads(l) for l in p.read_text().splitlines() if l.strip()] if p.exists() else []

# 1. probe, all jobs at once (they will share the GPU the same way later)
t = time.time()
procs = {n: subprocess.Popen(cmd(n, 60, W / f"probe_{n}", ("--eval-every", "10000", "--save-every", "10000")),
                             stdout=open(OUT / f"probe_{n}.log", "w"), stderr=subprocess.STDOUT) for n in JOBS}
for p in procs.values(): p.wait()
rate = {}
for n in JOBS:
    rows = [r for r in log_rows(W / f"probe_{n}") if "loss" in r]
    (a, b) = rows[0], rows[-1]  # skip warm-up / compile of the first logged window
    rate[n] = (b["wall_s"] - a["wall_s"]) / (b["step"] - a["step"])
    print(f"probe {n}: {rate[n]*1000:.1f} ms/step, tokens/s {b['tokens_per_s']}", flush=True)
print(f"probe wall {time.time()-t:.0f}s", flush=True)
# 2. real runs: eval every 500 steps costs ~ 20 batches; leave 8% for it
steps = {n: int(BUDGET * 0.92 / rate[n]) // 50 * 50 for n in JOBS}
print("steps", steps, flush=True)
t = time.time()
procs = {n: subprocess.Popen(cmd(n, steps[n], W / n, ("--eval-every", "500", "--save-every", "1000000")),
                             stdout=open(OUT / f"{n}.log", "w"), stderr=subprocess.STDOUT) for n in JOBS}
for n, p in procs.items():
    try:
        p.wait(timeout=BUDGET * 1.6 - (time.time() - t))
    except subprocess.TimeoutExpired:
        p.kill(); print(f"{n} killed at timeout", flush=True)
print(f"train wall {time.time()-t:.0f}s", flush=True)
for n in JOBS:
    rows = log_rows(W / n)
    val = [r for r in rows if "val_loss" in r]
    print(n, "final" if (W / n / "final").exists() else "NO FINAL", "last", rows[-1] if rows else None, "val", val[-1] if val else None, flush=True)
    subprocess.run(f"cd {W}/{n} && tar czf {OUT}/{n}.tgz final train_log.jsonl train_config.json", shell=True)
subprocess.run(f"cd {OUT} && split -b 15m base_cif.tgz base_cif.tgz.part- && rm base_cif.tgz && ls -la", shell=True)
