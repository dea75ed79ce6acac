"""Where a decoder's time goes, measured by timing its parts (no profiler overhead on the rest).

For each mode (``jump`` and ``lean`` constrained, ``bare``: unconstrained lean) the shipped model
draws ``--n`` documents in batches of ``--batch-size`` (seeds ``(seed, b)``, default setting T 0.7 /
top-p 0.9, one torch thread; the model and the lazily built symmetry and grammar tables are warmed
first by ``--warm`` constrained documents of another seed, so that the first mode measured does not
pay for tables the later ones find built: a long run's steady state) and the
wall time is split into: the model's forward passes (``LeanLlama.forward`` / ``forward_packed``),
the look-ahead draws (``GrammarLogitsProcessor._pick``: draws with distance/orbit/room checks), the
grammar's advance (``Decoder.advance``: walking fields, the site and lattice checks a field runs
when it starts) and the rest. Also counts forward passes and the tokens written.

    python benchmarks/generate/decode_breakdown.py [--n 128] [--batch-size 32] [--seed 21]
        [--warm 64] [--modes jump,lean,bare] [--out benchmarks/generate/decode_breakdown.json]
"""

from __future__ import annotations

import argparse
import collections
import json
import time
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=128)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--seed", type=int, default=21)
    ap.add_argument("--warm", type=int, default=64, help="constrained documents drawn (seed + 1) before timing")
    ap.add_argument("--modes", default="jump,lean,bare")
    ap.add_argument("--out", default="benchmarks/generate/decode_breakdown.json")
    args = ap.parse_args()

    import torch
    from rich.console import Console
    from rich.table import Table

    from llamat_cif.sampling import SampleConfig, engine, lean, processor
    from llamat_cif.sampling.sample import BatchSampler, draw_batch

    torch.set_num_threads(1)
    spent: collections.Counter = collections.Counter()

    def timed(owner, name: str, part: str) -> None:
        f = getattr(owner, name)

        def wrapper(*a, **k):
            t = time.perf_counter()
            try:
                return f(*a, **k)
            finally:
                spent[part] += time.perf_counter() - t
                spent[part + " calls"] += 1

        setattr(owner, name, wrapper)

    timed(lean.LeanLlama, "forward", "forward")
    timed(lean.LeanLlama, "forward_packed", "forward")
    timed(processor.GrammarLogitsProcessor, "_pick", "look-ahead draws")
    timed(engine.Decoder, "advance", "grammar advance")
    bs = BatchSampler(SampleConfig(n=args.batch_size, out_dir="unused", batch_size=args.batch_size, seed=args.seed))
    model, tok = bs.model, bs.tokenizer

    def draw(mode: str, size: int, seed: tuple[int, ...]):
        return draw_batch(model, tok, size=size, seed=seed, conditions=None if mode == "bare" else [bs.cond] * size,
                          grammar=bs.grammar, vocab=bs.vocab, temperature=0.7, top_p=0.9,
                          decoder="lean" if mode == "bare" else mode)

    for b in range(-(-args.warm // args.batch_size)):  # warm: lazily built symmetry tables, imports
        draw("jump", min(args.batch_size, args.warm - b * args.batch_size), (args.seed + 1, b))
    rows = []
    for mode in args.modes.split(","):
        spent.clear()
        tokens = 0
        t0 = time.perf_counter()
        for b in range(-(-args.n // args.batch_size)):
            size = min(args.batch_size, args.n - b * args.batch_size)
            tokens += int((draw(mode, size, (args.seed, b)) != tok.pad_token_id).sum())
        wall = time.perf_counter() - t0
        parts = {k: round(spent[k], 2) for k in ("forward", "look-ahead draws", "grammar advance")}
        rows.append({"mode": mode, "n": args.n, "batch_size": args.batch_size, "wall_s": round(wall, 2),
                     "structures_per_s": round(args.n / wall, 3), "tokens": tokens, **parts,
                     "rest": round(wall - sum(parts.values()), 2), "forward_passes": spent["forward calls"]})
        print(json.dumps(rows[-1]), flush=True)
    Path(args.out).write_text(json.dumps({"seed": args.seed, "warm": args.warm, "threads": 1, "temperature": 0.7,
                                          "top_p": 0.9,
                                          "note": "advance of the step-by-step loop also runs on finished rows "
                                                  "(cheap); no dead-end redraws (draw_batch default)",
                                          "rows": rows}, indent=2))
    t = Table(title="decode time by part (s)")
    for k in rows[0]:
        t.add_column(k)
    for r in rows:
        t.add_row(*(str(v) for v in r.values()))
    Console().print(t)


if __name__ == "__main__":
    main()
