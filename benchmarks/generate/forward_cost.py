"""What one decode step of the shipped model costs on this CPU, by batch size and context length.

The lean decode loop (``llamat_cif/sampling/lean.py``) runs the model's forward as flat tensor
operations. This script feeds it random tokens (the cost does not depend on which) and measures the
step time in three context windows, the share of that time spent in attention
(``scaled_dot_product_attention``, from the torch profiler), and the same steps with the weights
and cache in bfloat16 (a variant that would change samples; measured, not used). Attention at query
length 1 reads the whole key/value cache every step, so its cost grows with the context and is bound
by memory bandwidth rather than arithmetic; the per-document estimate sums a row's share of the
step cost over a document's tokens (300, about the default's documents, and 420).

    python benchmarks/generate/forward_cost.py --batch-sizes 8,32

writes ``forward_cost_cpu.json`` beside this script and prints a table.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
#: context windows (tokens already in the cache while the steps run)
WINDOWS = ((20, 120), (120, 220), (220, 320), (320, 420))


def step_ms(lean, batch: int, window: tuple[int, int], repeats: int) -> list[float]:
    """Milliseconds per one-token step while the cache grows through ``window``, ``repeats`` times."""
    import torch

    out = []
    for _ in range(repeats):
        lean.start(batch, window[1] + 1)
        with torch.no_grad():
            lean.forward(torch.randint(5, 100, (batch, window[0])))
            nxt = torch.randint(5, 100, (batch, 1))
            t = time.perf_counter()
            for _ in range(window[1] - window[0]):
                lean.forward(nxt)
        out.append((time.perf_counter() - t) / (window[1] - window[0]) * 1e3)
    return out


def attention_share(lean, batch: int, window: tuple[int, int]) -> float:
    import torch
    from torch.profiler import profile

    lean.start(batch, window[1] + 1)
    with torch.no_grad():
        lean.forward(torch.randint(5, 100, (batch, window[0])))
        nxt = torch.randint(5, 100, (batch, 1))
        with profile() as prof:
            for _ in range(window[1] - window[0]):
                lean.forward(nxt)
    events = prof.key_averages()
    total = sum(e.self_cpu_time_total for e in events)
    attn = sum(e.self_cpu_time_total for e in events if "scaled_dot_product" in e.key or "flash_attention" in e.key)
    return attn / total


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="default")
    ap.add_argument("--batch-sizes", default="8,32")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--doc-tokens", type=int, default=300,
                    help="document length for the per-document estimate (the default protocol's documents: "
                         "~280 new tokens after a ~20-token prompt)")
    ap.add_argument("--out", default=str(HERE / "forward_cost_cpu.json"))
    args = ap.parse_args()

    import torch

    torch.set_num_threads(1)
    from llamat_cif.model import load_generator, resolve_model_path
    from llamat_cif.protocol import hardware, package_versions
    from llamat_cif.sampling.lean import LeanLlama

    model, _ = load_generator(str(resolve_model_path(args.model)))
    lean32 = LeanLlama(model)
    lean16 = LeanLlama(copy.deepcopy(model).to(torch.bfloat16))  # a 13 MB copy; the fp32 weights stay as shipped
    rows = []
    batches = [int(b) for b in args.batch_sizes.split(",")]
    for batch in batches:
        for window in WINDOWS:
            fp32 = statistics.median(step_ms(lean32, batch, window, args.repeats))
            share = attention_share(lean32, batch, window)
            bf16 = statistics.median(step_ms(lean16, batch, window, args.repeats))
            rows.append({"batch": batch, "context": f"{window[0]}-{window[1]}", "fp32_ms_per_step": round(fp32, 3),
                         "attention_share_fp32": round(share, 3), "bf16_ms_per_step": round(bf16, 3),
                         "fp32_ms_per_token_row": round(fp32 / batch, 4)})
            print(f"batch {batch:3d}  context {window[0]:3d}-{window[1]:3d}: fp32 {fp32:7.2f} ms/step "
                  f"(attention {100 * share:4.1f} %), bf16 {bf16:7.2f} ms/step, fp32 {fp32 / batch:6.3f} ms per token and row")
    # a document of L tokens: its steps in each window (a row's share of each step)
    per_doc = {}
    for length in (args.doc_tokens, WINDOWS[-1][1]):
        for batch in batches:
            ms = sum(min(max(length - int(x["context"].split("-")[0]), 0), 100) * x["fp32_ms_per_token_row"]
                     for x in rows if x["batch"] == batch)
            per_doc[f"{length} tokens, batch {batch}"] = round(ms / 1e3, 3)
            print(f"batch {batch}: ~{ms / 1e3:.2f} s of model forward per {length}-token document (fp32, 1 thread)")
    rec = {"setting": {"model": args.model, "torch_threads": 1, "repeats": args.repeats,
                       "windows": [f"{a}-{b}" for a, b in WINDOWS], "tokens": "random ids (cost is independent of them)"},
           "rows": rows, "fp32_forward_s_per_document": per_doc,
           "load_average_1min_at_end": os.getloadavg()[0], "hardware": hardware(),
           "versions": package_versions(("torch", "transformers"))}
    Path(args.out).write_text(json.dumps(rec, indent=2))
    print(f"-> {args.out}")


if __name__ == "__main__":
    main()
