"""The grammar's own cost per document in both constrained loops, on the same documents.

Greedy decoding writes the same documents in the jump and step-by-step loops
(``tests/test_jump_decode.py``), so 16 formula-conditioned greedy documents are drawn by each loop,
twice (the first round builds the lazily kept symmetry tables), with ``Decoder.advance`` and
``Decoder.allowed`` timed. Sampled runs of the two loops draw other documents, whose grammar cost
differs with them (the look-ahead is heavy-tailed per document), so this is where the loops compare.

    python benchmarks/generate/advance_same_docs.py [--out benchmarks/generate/advance_same_docs.json]
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import json
import time
from pathlib import Path

FORMULAS = ["NaCl", "LiFePO4", "BaTiO3", "Mg2SiO4", "CuO", "SrTiO3", "Al2O3", "ZnS", "GaAs", "KMgF3", "Li2O",
            "CaCO3", "FeS2", "TiO2", "NiO", "CsPbI3"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default="benchmarks/generate/advance_same_docs.json")
    args = ap.parse_args()
    import torch

    from llamat_cif.sampling import SampleConfig, engine
    from llamat_cif.sampling.config import parse_formula
    from llamat_cif.sampling.sample import BatchSampler, draw_batch

    torch.set_num_threads(1)
    bs = BatchSampler(SampleConfig(n=16, out_dir="unused", batch_size=16, seed=0))
    model, tok = bs.model, bs.tokenizer
    conds = [dataclasses.replace(bs.cond, formula=parse_formula(f)) for f in FORMULAS]
    spent: collections.Counter = collections.Counter()

    def timed(name: str) -> None:
        f = getattr(engine.Decoder, name)

        def wrapper(*a, **k):
            t = time.perf_counter()
            try:
                return f(*a, **k)
            finally:
                spent[name + "_s"] += time.perf_counter() - t
                spent[name + "_calls"] += 1

        setattr(engine.Decoder, name, wrapper)

    timed("advance")
    timed("allowed")
    rows, texts = [], {}
    for rnd in range(2):
        for mode in ("jump", "lean"):
            spent.clear()
            t = time.perf_counter()
            new = draw_batch(model, tok, size=len(conds), seed=(0, 0), conditions=conds, grammar=bs.grammar,
                             vocab=bs.vocab, temperature=0.0, decoder=mode)
            wall = time.perf_counter() - t
            texts.setdefault(mode, [tok.decode([x for x in r.tolist() if x != tok.pad_token_id]) for r in new])
            rows.append({"round": rnd, "decoder": mode, "wall_s": round(wall, 3),
                         **{k: round(v, 3) for k, v in spent.items()}})
            print(json.dumps(rows[-1]), flush=True)
    same = sum(a == b for a, b in zip(texts["jump"], texts["lean"], strict=True))
    Path(args.out).write_text(json.dumps({"formulas": FORMULAS, "greedy": True, "threads": 1,
                                          "identical_documents": f"{same}/{len(FORMULAS)}",
                                          "note": "round 0 builds the lazily kept tables; compare round 1",
                                          "rows": rows}, indent=2))
    print(f"identical documents {same}/{len(FORMULAS)}")


if __name__ == "__main__":
    main()
