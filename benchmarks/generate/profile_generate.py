"""Where does sampling time go? ``generate`` under cProfile, own time grouped by component.

Components (by the file a function lives in, own time only, so nothing is counted twice):

* ``model forward``: torch / transformers modelling code and the lean loop's forward
  (``llamat_cif/sampling/lean.py``: matmuls, attention, the KV cache);
* ``generate loop``: the rest of transformers' ``generate`` or the lean ``sample_tokens`` (stopping,
  warpers, bookkeeping);
* ``look-ahead geometry``: ``llamat_cif/sampling/placement.py``, the distance and orbit helpers of
  ``sampling/lattice.py`` and ``llamat_cif/symmetry.py``, plus numpy called from them;
* ``grammar``: the rest of ``llamat_cif/sampling/`` (engine, grammars, logits processor) and
  ``llamat_cif/symmetry.py``;
* ``decode to structure``: pymatgen / our CIF code turning finished documents into structures;
* ``other``.

numpy's and torch's C functions are attributed to the caller that spends them (cProfile's callers),
so a ``numpy.einsum`` called by the look-ahead counts as look-ahead, one called by pymatgen as decode.

    python benchmarks/generate/profile_generate.py --n 16 --batch-size 8 --seed 21
"""

from __future__ import annotations

import argparse
import cProfile
import json
import os
import pstats
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent

COMPONENTS = ("model forward", "generate loop", "look-ahead geometry", "grammar", "decode to structure", "other")


#: helpers in sampling/lattice.py and symmetry.py that serve the look-ahead (before the split into
#: llamat_cif/sampling/ and symmetry.py they lived in grammar.py and placement.py)
GEOMETRY_HELPERS = {"pair_distances", "min_image_sq", "min_distance", "orbit", "space_group_ops",
                    "wyckoff_subspaces", "orbit_sizes", "wyckoff_table", "allocation_entry", "allocatable",
                    "allocatable_on", "min_lines", "_fewest_lines", "_probe_params",
                    "snap", "block", "to_bits", "from_bits"}
SHARED = ("llamat_cif/sampling/lattice.py", "llamat_cif/symmetry.py")


def component_of(filename: str, name: str = "") -> str | None:
    f = filename.replace("\\", "/")
    if "llamat_cif/sampling/lean.py" in f:  # the lean decode loop: its forward, and its generate()
        return "generate loop" if name == "sample_tokens" else "model forward"
    if "llamat_cif/sampling/jump.py" in f:  # the jump decoder's loop (its forward is lean.py's)
        return "generate loop"
    if "llamat_cif/sampling/placement.py" in f or (any(p in f for p in SHARED) and name in GEOMETRY_HELPERS):
        return "look-ahead geometry"
    if "llamat_cif/sampling/" in f or "llamat_cif/symmetry.py" in f or "llamat_cif/physics.py" in f:
        return "grammar"
    if "transformers/generation" in f:
        return "generate loop"
    if "transformers/" in f or "torch/nn" in f or "torch/_" in f:
        return "model forward"
    if "pymatgen" in f or "llamat_cif/cif.py" in f or "spglib" in f:
        return "decode to structure"
    return None  # C functions and other Python: attributed to their callers


def breakdown(stats: pstats.Stats) -> dict[str, float]:
    """Own time per component; functions without one (C builtins, numpy...) go to their heaviest caller's."""
    raw = stats.stats  # (file, line, name) -> (cc, nc, tt, ct, callers)
    out = dict.fromkeys(COMPONENTS, 0.0)
    memo: dict = {}

    def comp(key, depth=0) -> str:
        if key in memo:
            return memo[key]
        c = component_of(key[0], key[2])
        if c is None and depth < 12:
            callers = raw.get(key, (0, 0, 0, 0, {}))[4]
            if callers:
                # the caller that spent the most time in this function decides
                top = max(callers.items(), key=lambda kv: kv[1][3] if len(kv[1]) > 3 else 0)[0]
                c = comp(top, depth + 1)
        memo[key] = c or "other"
        return memo[key]

    for key, (_, _, tt, _, _) in raw.items():
        out[comp(key)] += tt
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="default")
    ap.add_argument("--n", type=int, default=16)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--seed", type=int, default=21)
    ap.add_argument("--unconstrained", action="store_true")
    ap.add_argument("--out", default=str(HERE / "profile_generate.json"))
    args = ap.parse_args()

    import torch

    torch.set_num_threads(1)
    from llamat_cif.model import load_generator, resolve_model_path
    from llamat_cif.protocol import hardware, package_versions
    from llamat_cif.sampling import SampleConfig, generate

    model, tok = load_generator(str(resolve_model_path(args.model)))
    with tempfile.TemporaryDirectory() as d:
        cfg = SampleConfig(n=args.n, batch_size=args.batch_size, seed=args.seed, out_dir=d,
                           constrained=not args.unconstrained)
        prof = cProfile.Profile()
        t0 = time.perf_counter()
        prof.enable()
        generate(cfg, progress=False, model=model, tokenizer=tok)
        prof.disable()
        wall = time.perf_counter() - t0
        from llamat_cif.sampling.rows import read_samples

        samples = read_samples(d)
    stats = pstats.Stats(prof)
    parts = breakdown(stats)
    total = sum(parts.values())
    rec = {"setting": {"model": args.model, "n": args.n, "batch_size": args.batch_size, "seed": args.seed,
                       "constrained": not args.unconstrained, "temperature/top_p": "defaults of SampleConfig",
                       "torch_threads": 1},
           "wall_s": wall, "structures_per_s": args.n / wall, "n_decoded": int((samples["error"] == "").sum()),
           "profiled_s": total, "seconds": parts, "share": {k: v / total for k, v in parts.items()},
           "load_average_1min_at_end": os.getloadavg()[0], "hardware": hardware(),
           "versions": package_versions(("torch", "transformers", "numpy"))}
    Path(args.out).write_text(json.dumps(rec, indent=2))
    print(f"{args.n} samples, batch {args.batch_size}: {wall:.1f} s wall ({args.n / wall:.2f} structures/s) "
          f"under cProfile; load average {rec['load_average_1min_at_end']:.1f}")
    for k in COMPONENTS:
        print(f"  {k:22s} {parts[k]:7.1f} s  {100 * parts[k] / total:5.1f} %")


if __name__ == "__main__":
    main()
