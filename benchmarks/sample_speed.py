"""Sampling throughput of a generator: tokens/s and structures/s by batch size, constrained or not.

Usage:
    python benchmarks/sample_speed.py [--model default] [--device cpu|cuda] [--batch-sizes 1,8,32]
        [--n-per-batch-size 32] [--temperature 1.0] [--top-p 1.0] [--decoders jump,lean,transformers]
        [--modes unconstrained,constrained]
        [--out benchmarks/generate/sample_speed_<device>.json]

Prints a table and writes the rows (with device, versions and the exact settings) to a JSON file,
rewritten after every row so an interrupted run keeps what it measured.
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import tempfile
import time
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="default")
    ap.add_argument("--device", default=None)
    ap.add_argument("--batch-sizes", default="1,8,32")
    ap.add_argument("--n-per-batch-size", type=int, default=32)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--temperature", type=float, default=1.0)
    ap.add_argument("--top-p", type=float, default=1.0)
    ap.add_argument("--decoders", default="lean",
                    help="comma-separated decode loops (SampleConfig.decoder), measured one after the other "
                         "for each batch size, so their ratio is taken in one run")
    ap.add_argument("--modes", default="unconstrained,constrained",
                    help="comma-separated: unconstrained, constrained (in that order)")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()

    import torch
    from rich.console import Console
    from rich.table import Table

    from llamat_cif.model import load_generator, resolve_model_path
    from llamat_cif.sampling import SampleConfig, generate
    from llamat_cif.sampling.config import model_format

    torch.set_num_threads(args.threads)
    model_dir = resolve_model_path(args.model)
    model, tok = load_generator(str(model_dir), device=args.device)
    device = str(next(model.parameters()).device)
    fmt = model_format(model_dir)
    out_path = Path(args.out or f"benchmarks/generate/sample_speed_{'cuda' if 'cuda' in device else 'cpu'}.json")
    out_path.parent.mkdir(parents=True, exist_ok=True)

    def write(rows: list[dict]) -> None:
        info = {"model": model_dir.name, "device": device,
                "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
                "cpu": platform.processor() or platform.machine(), "threads": args.threads, "torch": torch.__version__,
                "temperature": args.temperature, "top_p": args.top_p, "seed": args.seed,
                "n_per_batch_size": args.n_per_batch_size,
                "note": "wall time includes grammar bookkeeping, decoding to Structure and writing samples.parquet",
                "rows": rows}
        out_path.write_text(json.dumps(info, indent=2))

    rows = []
    modes = args.modes.split(",")
    for constrained in [c for c in (False, True) if ("constrained" if c else "unconstrained") in modes]:
        for bs in (int(b) for b in args.batch_sizes.split(",")):
            texts = {}
            for decoder in args.decoders.split(","):
                n = max(bs, args.n_per_batch_size)
                out = Path(tempfile.mkdtemp())
                t0 = time.time()
                df = generate(SampleConfig(n=n, out_dir=str(out), batch_size=bs, seed=args.seed,
                                           constrained=constrained, temperature=args.temperature, top_p=args.top_p,
                                           device=args.device, threads=args.threads, fmt=fmt, decoder=decoder),
                              progress=False, model=model, tokenizer=tok)
                wall = time.time() - t0
                summ = json.loads((out / "sample_summary.json").read_text())
                texts[decoder] = list(df["text"])
                first = next(iter(texts.values()))
                rows.append({"constrained": constrained, "batch_size": bs, "decoder": decoder, "n": n,
                             "wall_s": round(wall, 2), "structures_per_s": round(n / wall, 3),
                             "tokens_per_s": round(df["n_tokens"].sum() / wall, 1), "decoded": summ["decoded"],
                             "fallbacks": summ["this_session"]["constraint_fallbacks"],
                             "lookahead_vetoes": summ["this_session"].get("lookahead_vetoes"),
                             "same_texts_as_first_decoder": sum(a == b for a, b in zip(first, texts[decoder],
                                                                                       strict=True))})
                shutil.rmtree(out)
                write(rows)
                print(json.dumps(rows[-1]), flush=True)
    t = Table(title=f"sampling speed: {model_dir.name} ({fmt}) on {device}")
    for k in rows[0]:
        t.add_column(k)
    for r in rows:
        t.add_row(*(str(v) for v in r.values()))
    Console().print(t)
    print(f"wrote {out_path}")


if __name__ == "__main__":
    main()
