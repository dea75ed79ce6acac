"""Put a recorded ``llamat-cif text eval`` run next to LLaMat's published doping scores.

Usage::

    python benchmarks/text/compare.py --eval runs/text_doping_mini_eval --train runs/text_doping_mini \
        --name "from-scratch mini LLaMA (1.3M params), 100 steps on CPU" --out benchmarks/text/doping_scratch_mini.json

Writes a JSON record (scores with counts, wall times, protocol) and prints a Markdown table.

Re-score a recorded run from its kept raw answers (after a metrics change)::

    python benchmarks/text/compare.py --rescore benchmarks/text/doping_mini_stage2.json \
        --predictions benchmarks/text/doping_mini_stage2_predictions.jsonl
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
    ap.add_argument("--eval", type=Path, help="llamat-cif text eval --out folder")
    ap.add_argument("--train", type=Path, default=None, help="llamat-cif text train --out folder")
    ap.add_argument("--name")
    ap.add_argument("--out", type=Path)
    ap.add_argument("--rescore", type=Path, help="a record written by this script: recompute its scores")
    ap.add_argument("--predictions", type=Path, help="with --rescore: the run's doping predictions.jsonl")
    args = ap.parse_args()
    if args.rescore:
        rescore(args.rescore, args.predictions)
        return
    if not (args.eval and args.name and args.out):
        ap.error("--eval, --name and --out are required (or --rescore with --predictions)")

    rec = json.loads((args.eval / "doping" / "metrics.json").read_text())
    config = json.loads((args.eval / "config.json").read_text())
    ours = _scores(rec)
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
    for protocol, label in (("strict", "strict"), ("llamat", "LLaMat protocol")):
        row = ours[protocol]
        if "error" in row:
            print(f"| {args.name} ({label}) | " + " | ".join("n/a" for _ in COLUMNS) + " |")
            print(f"\n{label}: {row['error']}")
            continue
        print(f"| {args.name} ({label}) | " + " | ".join(
            _cell(row[c]) for c in COLUMNS) + " |")


def _scores(rec: dict) -> dict:
    ours = {}
    for protocol in ("strict", "llamat"):
        m = rec[protocol]["metrics"]
        if rec[protocol].get("error"):
            ours[protocol] = {"error": rec[protocol]["error"]}
            continue
        ours[protocol] = {k: {"value": _value(m[k]), "numerator": m[k]["numerator"],
                              "denominator": m[k]["denominator"]} for k in COLUMNS}
    return ours


def rescore(record_path: Path, predictions: Path) -> None:
    """Recompute a record's scores (both protocols) from the raw answers kept beside it."""
    from llamat_cif.text_tasks.evaluate import json_default, score_rows
    from llamat_cif.text_tasks.tasks import load_task

    record = json.loads(record_path.read_text())
    rows = {}
    for line in predictions.read_text().splitlines():
        if line.strip():
            row = json.loads(line)
            rows[row["id"]] = row
    taskset = load_task("doping", "test")
    examples = [e for e in taskset.examples if e.id in rows]
    if len(examples) != len(taskset.examples):
        raise SystemExit(f"{predictions} holds {len(examples)} of {len(taskset.examples)} test answers")
    rec = json.loads(json.dumps(score_rows(taskset, examples, rows), default=json_default))
    record["scores"] = _scores(rec)
    record["protocol"] = rec["protocol"]
    record["n_unparsable_outputs"] = rec["n_unparsable_outputs"]
    record["unparsable_reasons"] = rec["unparsable_reasons"]
    record_path.write_text(json.dumps(record, indent=2))
    for protocol, row in record["scores"].items():
        print(protocol, row.get("error") or {k: round(v["value"], 4) for k, v in row.items()})


def _cell(rate: dict) -> str:
    counts = f"({rate['numerator']:g}/{rate['denominator']:g})"
    return f"n/a {counts}" if not rate["denominator"] else f"{rate['value']:.3f} {counts}"


if __name__ == "__main__":
    main()
