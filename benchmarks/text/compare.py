"""Put a recorded ``llamat-cif text eval`` run next to LLaMat's published doping scores.

Usage::

    python benchmarks/text/compare.py --eval runs/text_doping_mini_eval --train runs/text_doping_mini \
        --name "from-scratch mini LLaMA (1.3M params), 100 steps on CPU" --out benchmarks/text/doping_scratch_mini.json

Writes a JSON record (scores with counts, wall times, protocol) and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

# LLaMat paper (Mishra et al., LLaMat), doping SIE test set: base-material F1, dopant F1,
# link-triplet F1, Jaro-Winkler similarity, exact match (LLaMat's doping_eval.py protocol).
PUBLISHED_DOPING = {
    "LLaMat-3-chat (published)": {"basemats_f1": 0.818, "dopants_f1": 0.908, "triplets_f1": 0.782,
                                  "similarity": 0.962, "exact_match": 0.619},
    "GPT-4o (published)": {"basemats_f1": 0.685, "dopants_f1": 0.798, "triplets_f1": 0.594,
                           "similarity": 0.938, "exact_match": 0.371},
}
COLUMNS = ("basemats_f1", "dopants_f1", "triplets_f1", "similarity", "exact_match", "parsable")


def _value(rate):
    return rate["value"] if isinstance(rate, dict) else rate


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--eval", required=True, type=Path, help="llamat-cif text eval --out folder")
    ap.add_argument("--train", type=Path, default=None, help="llamat-cif text train --out folder")
    ap.add_argument("--name", required=True)
    ap.add_argument("--out", required=True, type=Path)
    args = ap.parse_args()

    rec = json.loads((args.eval / "doping" / "metrics.json").read_text())
    config = json.loads((args.eval / "config.json").read_text())
    ours = {}
    for protocol in ("strict", "llamat_drop_unparsable"):
        m = rec[protocol]["metrics"]
        ours[protocol] = {k: {"value": _value(m[k]), "numerator": m[k]["numerator"],
                              "denominator": m[k]["denominator"]} for k in COLUMNS}
    record = {
        "model": args.name,
        "eval_dir": str(args.eval),
        "n_test_sentences": rec["n_evaluated"],
        "n_annotated_scored": rec["strict"]["counts"]["n_annotated"],
        "n_unparsable_outputs": rec["n_unparsable_outputs"],
        "unparsable_reasons": rec["unparsable_reasons"],
        "empty_gold_sentences": rec["strict"]["counts"]["empty_gold"],
        "scores": ours,
        "eval_generation_s": rec["generation"]["seconds_all_rows"],
        "eval_generation": rec["generation"],
        "eval_hardware": config["hardware"],
        "versions": config["versions"],
        "published": PUBLISHED_DOPING,
        "protocol": rec["protocol"],
    }
    if args.train is not None:
        record["train_summary"] = json.loads((args.train / "train_summary.json").read_text())
        tcfg = json.loads((args.train / "train_config.json").read_text())
        record["train_config"] = {"config": tcfg["config"], "resolved": tcfg["resolved"], "data": tcfg["data"]}
    args.out.write_text(json.dumps(record, indent=2))

    print("| model | " + " | ".join(COLUMNS) + " |")
    print("|---" * (len(COLUMNS) + 1) + "|")
    for name, scores in PUBLISHED_DOPING.items():
        print(f"| {name} | " + " | ".join(f"{scores[c]:.3f}" if c in scores else "-" for c in COLUMNS) + " |")
    for protocol, label in (("strict", "strict"), ("llamat_drop_unparsable", "LLaMat protocol")):
        row = ours[protocol]
        print(f"| {args.name} ({label}) | " + " | ".join(
            _cell(row[c]) for c in COLUMNS) + " |")


def _cell(rate: dict) -> str:
    counts = f"({rate['numerator']:g}/{rate['denominator']:g})"
    return f"n/a {counts}" if not rate["denominator"] else f"{rate['value']:.3f} {counts}"


if __name__ == "__main__":
    main()
