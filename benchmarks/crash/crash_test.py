"""Crash test: runs killed with SIGKILL at random moments still end with exactly the uninterrupted rows.

    python benchmarks/crash/crash_test.py --kills 20 --seed 0 --out runs/crash

For ``stability`` (48 MP-20 test structures, 30 FIRE steps each, batch size 1), ``generate``
(48 samples, batch 2, the shipped model) and ``screen`` (24 samples, 60 FIRE steps): one
uninterrupted run, then a run that is killed with SIGKILL ``--kills`` times at random moments (seeded; each restart dies somewhere in its start-up or
in a random share of the work, see ``_crash_loop``) and restarted each time with the same ``--out``,
then finished. The finished folder must hold exactly
the uninterrupted run's ids, each once, with the same values (E_hull to 1e-6 eV/atom, CIF text
identical; screen: the same samples and funnel too). Then each command writes
into a tiny tmpfs until the disk is full, the tmpfs is grown
(space freed) and the run is repeated: again exactly the uninterrupted rows (needs root for
``mount``; skipped otherwise). Writes ``crash_test.json`` with the counts; exits non-zero on any
mismatch.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd


def _signature(path: Path) -> tuple[int, int] | None:
    try:
        st = path.stat()
        return st.st_size, st.st_mtime_ns
    except OSError:
        return None


def _run(cmd: list[str], env: dict, kill_after: float | None = None, *, after_write: Path | None = None,
         extra_s: float = 0.0, settle_s: float = 0.0) -> tuple[bool, float]:
    """Run ``cmd`` and kill it with SIGKILL: after ``kill_after`` s, or (with ``after_write``) once
    that file has been written again after the first ``settle_s`` s (start-up), plus ``extra_s`` s.
    ``(finished_by_itself, seconds)``."""
    t0 = time.perf_counter()
    p = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                         start_new_session=True)
    if kill_after is None and after_write is None:
        p.wait()
        return p.returncode == 0, time.perf_counter() - t0
    before = _signature(after_write) if after_write is not None else None
    deadline = None if after_write is not None else t0 + kill_after
    while p.poll() is None:
        now = time.perf_counter()
        if deadline is None and now - t0 >= settle_s and _signature(after_write) != before:
            deadline = now + extra_s  # a write just landed: die a random moment later
        elif deadline is None and now - t0 < settle_s:
            before = _signature(after_write)  # start-up writes (header, clean rewrite) do not count
        if deadline is not None and now >= deadline:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()
            return False, time.perf_counter() - t0
        time.sleep(0.02)
    return p.returncode == 0, time.perf_counter() - t0


def _first_output_s(cmd: list[str], env: dict, rows_file: Path) -> tuple[float, float]:
    """Run ``cmd`` to the end; ``(seconds until rows_file first appears, total seconds)``."""
    t0 = time.perf_counter()
    p = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    first = None
    while p.poll() is None:
        if first is None and rows_file.exists():
            first = time.perf_counter() - t0
        time.sleep(0.05)
    total = time.perf_counter() - t0
    if p.returncode != 0:
        raise SystemExit(f"the uninterrupted run failed: {' '.join(cmd)}")
    return (first if first is not None else total), total


def _crash_loop(name: str, cmd_for, read_rows, compare, rows_name: str, *, kills: int, rng, root: Path,
                env: dict, by_time_share: float = 0.0) -> dict:
    """Kill at ``kills`` random moments: a quarter of the restarts die during start-up (imports,
    model load, reading what is done), the rest a random 0-1 row-times after the output file was
    written again (inside the next relaxation or batch, or inside the next write). The first
    ``by_time_share`` of the restarts (screen: the stages before the first stability row) die at a
    random 4-10 % of the uninterrupted run's wall time instead; the rest after a write of
    ``rows_name`` (screen: inside relaxations, S.U.N. and the funnel)."""
    ref_dir, crash_dir = root / f"{name}-uninterrupted", root / f"{name}-killed"
    startup, wall = _first_output_s(cmd_for(ref_dir), env, ref_dir / rows_name)
    ref = read_rows(ref_dir)
    work = max(wall - startup, 0.5)
    killed = finished_early = 0
    delays = []
    per_row = work / max(len(ref), 1)
    for k in range(kills):
        if k < by_time_share * kills:  # stages without frequent writes: a random moment of a full run's span
            delay = float(rng.uniform(0.04, 0.10) * wall)
            done, _ = _run(cmd_for(crash_dir), env, kill_after=delay)
            delays.append(f"+{delay:.1f} s")
        elif not by_time_share and rng.uniform() < 0.25:  # a quarter die during start-up (imports, model, reading what is done)
            delay = float(rng.uniform(0.3, 1.0) * startup)
            done, _ = _run(cmd_for(crash_dir), env, kill_after=delay)
            delays.append(f"start-up +{delay:.2f} s")
        else:  # the rest a random moment after a write: inside the next relaxation, batch or write
            extra = float(rng.uniform(0.0, 1.0) * per_row)
            # writes in the tool's own start-up (a header, a clean rewrite) do not count
            done, _ = _run(cmd_for(crash_dir), env, after_write=crash_dir / rows_name, extra_s=extra,
                           settle_s=min(startup, 6.0))
            delays.append(f"write +{extra:.2f} s")
        if done:
            finished_early += 1
            delays.pop()
            break
        killed += 1
    rows_before_final = len(read_rows(crash_dir))
    ok, _ = _run(cmd_for(crash_dir), env)  # finish
    got = read_rows(crash_dir)
    problems = compare(ref, got, ref_dir, crash_dir) if ok else ["the final run failed"]
    return {"uninterrupted_rows": len(ref), "rows_after_the_kills": rows_before_final, "final_rows": len(got),
            "kills": killed, "finished_before_all_kills": finished_early, "kill_points": delays,
            "uninterrupted_startup_s": round(startup, 1), "uninterrupted_wall_s": round(wall, 1),
            "duplicated_ids": int(got["id"].duplicated().sum()), "problems": problems, "ok": not problems}


def _full_disk(name: str, cmd_for, read_rows, compare, *, root: Path, env: dict, size_kb: int | None) -> dict:
    """Run into a ``size_kb`` tmpfs until the disk is full, then grow it (``mount -o remount``) and
    rerun: the finished folder must equal the uninterrupted run. ``size_kb=None``: half of what
    the uninterrupted run wrote, so the disk fills part-way. Needs root (``mount``)."""
    ref = read_rows(root / f"{name}-uninterrupted")
    if size_kb is None:
        written = sum(f.stat().st_size for f in (root / f"{name}-uninterrupted").rglob("*") if f.is_file())
        size_kb = max(16, written // 2048)
    mnt = root / f"{name}-disk"
    mnt.mkdir(exist_ok=True)
    if subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_kb}k", "tmpfs", str(mnt)],
                      capture_output=True).returncode != 0:
        return {"skipped": "mount -t tmpfs needs root", "ok": True}
    try:
        out = mnt / "run"
        first_ok, _ = _run(cmd_for(out), env)
        try:  # what a crash on a full disk left behind (a torn table is what the rerun must repair)
            rows_when_full = len(read_rows(out)) if out.exists() else 0
        except Exception:  # noqa: BLE001 - pandas cannot read a file cut inside a quoted CIF
            rows_when_full = "torn file (unreadable as a table)"
        subprocess.run(["mount", "-o", "remount,size=50m", str(mnt)], check=True)
        ok, _ = _run(cmd_for(out), env)
        got = read_rows(out)
        problems = compare(ref, got, root / f"{name}-uninterrupted", out) if ok else \
            ["the rerun after freeing space failed"]
        return {"disk_kb": size_kb, "first_run_failed": not first_ok, "rows_when_full": rows_when_full,
                "final_rows": len(got), "duplicated_ids": int(got["id"].duplicated().sum()),
                "problems": problems, "ok": not problems and not first_ok}
    finally:
        subprocess.run(["umount", str(mnt)], capture_output=True)


def stab_rows(out: Path) -> pd.DataFrame:
    """The rows on disk: the committed file and the parts of a killed run, as the next run reads them."""
    from llamat_cif.runs import RunStore

    df = RunStore(out / "stability.parquet").read()
    return df if "id" in df.columns else pd.DataFrame({"id": []})


def stab_compare(ref: pd.DataFrame, got: pd.DataFrame, *_dirs: Path) -> list[str]:
    """Same ids, once each, E_hull within 1e-6 eV/atom, same errors."""
    out = []
    if sorted(got["id"]) != sorted(ref["id"]):
        out.append(f"ids differ: {len(got)} rows vs {len(ref)}")
        return out
    a, b = ref.set_index("id"), got.set_index("id").loc[ref["id"]]
    de = (pd.to_numeric(a["e_hull"]) - pd.to_numeric(b["e_hull"])).abs().max()
    if not de <= 1e-6:
        out.append(f"E_hull differs by up to {de}")
    if (a["error"].fillna("") != b["error"].fillna("")).any():
        out.append("error columns differ")
    return out


def _kills_and_full_disk(name: str, cmd_for, read_rows, compare, rows_name: str, *, kills: int, rng, root: Path,
                         env: dict, disk_kb: int) -> dict:
    out = {name: _crash_loop(name, cmd_for, read_rows, compare, rows_name, kills=kills, rng=rng, root=root, env=env)}
    print(f"{name}:", json.dumps(out[name]), flush=True)
    out[f"{name}_full_disk"] = _full_disk(name, cmd_for, read_rows, compare, root=root, env=env, size_kb=disk_kb)
    print(f"{name}, full disk:", json.dumps(out[f"{name}_full_disk"]), flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--kills", type=int, default=20)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="runs/crash")
    ap.add_argument("--only", choices=["stability", "generate", "screen"], default=None)
    args = ap.parse_args()
    root = Path(args.out)
    parts = [args.only] if args.only else ["stability", "generate", "screen"]
    import shutil

    for part in parts:  # --only keeps the other part's folders and results
        for suffix in ("uninterrupted", "killed", "disk"):
            shutil.rmtree(root / f"{part}-{suffix}", ignore_errors=True)
    root.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    rng = np.random.default_rng(args.seed)
    exe = str(Path(sys.executable).with_name("llamat-cif"))
    record = root / "crash_test.json"
    results: dict = json.loads(record.read_text()) if record.exists() else {}
    results.update({"seed": args.seed, "kills_requested": args.kills})

    if args.only in (None, "stability"):
        from llamat_cif.data import load_split

        src = root / "structures.csv"
        load_split("mp20", "test", limit=48)[["id", "cif"]].to_csv(src, index=False)

        def stab_cmd(out: Path) -> list[str]:
            return [exe, "stability", str(src), "--out", str(out), "--max-steps", "30", "--batch-size", "1",
                    "--no-progress", "--threads", "1"]

        results.update(_kills_and_full_disk("stability", stab_cmd, stab_rows, stab_compare, "stability.parquet",
                                            kills=args.kills, rng=rng, root=root, env=env, disk_kb=40))

    if args.only in (None, "generate"):
        def gen_cmd(out: Path) -> list[str]:
            return [exe, "generate", "-n", "48", "--batch-size", "2", "--seed", "0", "--out", str(out)]

        def gen_rows(out: Path) -> pd.DataFrame:
            """The rows on disk: the committed table and the parts of a killed run, by the one reader."""
            from llamat_cif.sampling.rows import read_samples, samples_file

            return read_samples(out) if samples_file(out) is not None else pd.DataFrame({"id": []})

        def gen_compare(ref: pd.DataFrame, got: pd.DataFrame, *_dirs: Path) -> list[str]:
            if list(got["id"]) != list(ref["id"]):
                return [f"ids differ: {len(got)} rows vs {len(ref)}"]
            return [] if list(got["cif"]) == list(ref["cif"]) else ["CIF texts differ"]

        # a batch lands as a new part: the parts folder changes (its mtime) with every write
        results.update(_kills_and_full_disk("generate", gen_cmd, gen_rows, gen_compare, "samples.parts",
                                            kills=args.kills, rng=rng, root=root, env=env, disk_kb=24))

    if args.only in (None, "screen"):
        def screen_cmd(out: Path) -> list[str]:
            return [exe, "screen", "-n", "24", "--batch-size", "2", "--seed", "0", "--max-steps", "60",
                    "--out", str(out)]

        def screen_compare(ref: pd.DataFrame, got: pd.DataFrame, ref_dir: Path, got_dir: Path) -> list[str]:
            problems = stab_compare(ref, got) if len(got) else ["no stability rows"]
            from llamat_cif.sampling.rows import read_samples

            a, b = read_samples(ref_dir), read_samples(got_dir)
            if list(a["id"]) != list(b["id"]) or list(a["cif"]) != list(b["cif"]):
                problems.append("samples differ")
            fa = json.loads((ref_dir / "funnel.json").read_text())["stages"]
            fb = json.loads((got_dir / "funnel.json").read_text())["stages"]
            if [(x["stage"], x["numerator"]) for x in fa] != [(x["stage"], x["numerator"]) for x in fb]:
                problems.append("funnels differ")
            return problems

        # half the kills in generation/validation (by time), half after a stability row was written
        out = {"screen": _crash_loop("screen", screen_cmd, stab_rows, screen_compare, "stability.parquet",
                                     kills=args.kills, rng=rng, root=root, env=env, by_time_share=0.5)}
        print("screen:", json.dumps(out["screen"]), flush=True)
        results.update(out)
        results["screen_full_disk"] = _full_disk("screen", screen_cmd, stab_rows, screen_compare, root=root,
                                                 env=env, size_kb=None)
        print("screen, full disk:", json.dumps(results["screen_full_disk"]), flush=True)

    record.write_text(json.dumps(results, indent=2))
    bad = [k for k, v in results.items() if isinstance(v, dict) and not v["ok"]]
    if bad:
        raise SystemExit(f"crash test failed: {bad}")


if __name__ == "__main__":
    main()
