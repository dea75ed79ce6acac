"""A diversity-only DPO update: a round's repeated crystals rejected against its unique metastable ones.

Usage:
    python benchmarks/align/dedupe_update.py RUN_DIR ROUND POLICY_DIR OUT_DIR [--max-pairs N]

Reads round ``ROUND`` of an alignment run folder (its samples and ``scores.parquet``, duplicates
already marked by ``llamat-cif align``), and pairs every valid sample that repeats another sample of
the round (``duplicate_of``) or an earlier round's winner (``repeat_of``) as *rejected* with a
distinct *chosen* sample that is eligible (valid, novel, unique, not a repeat, not family-capped) and
metastable (E_hull below the run's threshold after the reward relaxation), the chosen taken from the
rarest structure families of the round first. Only unconditional samples are paired (they share the
prompt, BOS alone). Then one DPO update of ``POLICY_DIR`` with the run's settings (beta, SFT weight,
learning rate, epochs, seed), anchored to the run's reference model, saved to ``OUT_DIR`` with the
pairs (``pairs.parquet``) and ``record.json``.

The question it answers: can an update that only pushes the policy off its repeated crystals
restore uniqueness without giving back the stability the earlier rounds gained?
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import fields
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("run_dir")
    ap.add_argument("round", type=int)
    ap.add_argument("policy")
    ap.add_argument("out")
    ap.add_argument("--max-pairs", type=int, default=None)
    args = ap.parse_args()

    import pandas as pd

    from llamat_cif.runs import RunStore, write_parquet
    from llamat_cif.train.align_policy import dpo_update, load_policy, save_policy
    from llamat_cif.train.config import AlignConfig

    run, out = Path(args.run_dir), Path(args.out)
    saved = json.loads((run / "align_config.json").read_text())
    cfg = AlignConfig(**{f.name: saved[f.name] for f in fields(AlignConfig) if f.name in saved})
    rdir = run / f"round_{args.round:02d}"
    samples = RunStore(rdir / "samples.parquet", append=False).read()
    scores = pd.read_parquet(rdir / "scores.parquet")
    df = scores.merge(samples[["id", "target_formula"]], on="id")
    df = df[df["target_formula"].fillna("") == ""]  # unconditional: the prompt is BOS alone
    valid = df["valid"].astype(bool)
    repeated = valid & (df["duplicate_of"].notna() | df["repeat_of"].notna())
    chosen_ok = df["eligible"].astype(bool) & (pd.to_numeric(df["e_hull"], errors="coerce") < cfg.metastable)
    fam_n = df.loc[valid, "prototype"].value_counts()
    pool = df[chosen_ok].assign(fam_n=lambda d: d["prototype"].map(fam_n).fillna(0))
    pool = pool.sort_values(["fam_n", "reward", "id"], ascending=[True, False, True])
    rejected = df[repeated].sort_values("id")
    n = min(len(rejected), len(pool), args.max_pairs or len(rejected))
    if n == 0:
        raise SystemExit(f"{rdir}: no repeated samples or no eligible metastable ones to pair")
    pairs = pd.DataFrame({"prompt": "unconditional", "chosen": pool["id"].to_numpy()[:n],
                          "rejected": rejected["id"].to_numpy()[:n],
                          "reward_chosen": pool["reward"].to_numpy()[:n],
                          "reward_rejected": rejected["reward"].to_numpy()[:n], "rejected_eligible": False})
    out.mkdir(parents=True, exist_ok=True)
    write_parquet(pairs, out / "pairs.parquet")

    t0 = time.time()
    model, tok = load_policy(cfg, Path(args.policy), trainable=True)
    ref, _ = load_policy(cfg, cfg.model, trainable=False)
    for p in ref.parameters():
        p.requires_grad_(False)
    stats = dpo_update(model, ref, tok, samples, pairs, cfg, args.round, out / "trainer")
    save_policy(model, tok, Path(args.policy), out / "model", cfg)
    rec = {"run": str(run), "round": args.round, "policy": args.policy, "pairs": n,
           "repeated_valid": int(repeated.sum()), "chosen_pool": int(len(pool)),
           "chosen_families": int(pairs["chosen"].map(df.set_index("id")["prototype"]).nunique()),
           "rejected_e_hull_median": float(pd.to_numeric(rejected["e_hull"], errors="coerce").median()),
           "dpo": stats, "wall_s": round(time.time() - t0, 1),
           "settings": {k: saved.get(k) for k in ("beta", "sft_weight", "lr", "epochs", "batch_size", "seed", "model")}}
    (out / "record.json").write_text(json.dumps(rec, indent=2, default=str))
    print(json.dumps(rec, indent=2, default=str))


if __name__ == "__main__":
    main()
