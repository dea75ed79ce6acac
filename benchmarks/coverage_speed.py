"""Coverage speed: 10,000 generated x 7,342 reference fingerprints, once fingerprints are cached.

The reference fingerprints are the real MP-20 test (available subset) ones from the cache (warm it
with ``python -m llamat_cif.metrics.fingerprints mp20-test``); the 10,000 "generated" rows are
reference rows drawn with replacement plus Gaussian noise, so that distances have realistic
magnitudes and both covered and uncovered pairs occur. The result is also checked against
``scipy.spatial.distance.cdist`` on a slice.

Usage:
    python benchmarks/coverage_speed.py [--n-gen 10000] [--reference mp20-test] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import numpy as np
from scipy.spatial.distance import cdist

from llamat_cif.metrics.coverage import coverage, nearest_neighbours, scale_composition
from llamat_cif.metrics.fingerprints import compute_fingerprints, reference_cifs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n-gen", type=int, default=10_000)
    ap.add_argument("--reference", default="mp20-test")
    ap.add_argument("--reference-limit", type=int, default=None)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", default=str(Path(__file__).parent / "mp20" / "coverage_speed.json"))
    ap.add_argument("--fingerprint-sample", type=int, default=40,
                    help="also time fingerprinting this many reference structures, every site vs "
                         "symmetry-reduced (0: skip)")
    ap.add_argument("--allow-compute", action="store_true",
                    help="fingerprint missing reference structures (slow) instead of stopping")
    args = ap.parse_args()

    cifs = reference_cifs(args.reference, limit=args.reference_limit)["cif"].tolist()
    t = time.perf_counter()
    if not args.allow_compute:
        # a dry pass that computes nothing tells whether the cache is warm
        probe = compute_fingerprints(cifs[:64])
        if probe.computed:
            raise SystemExit("reference fingerprints are not cached; run "
                             f"`python -m llamat_cif.metrics.fingerprints {args.reference}` first")
    ref = compute_fingerprints(cifs)
    t_load = time.perf_counter() - t
    if ref.computed and not args.allow_compute:
        raise SystemExit(f"{ref.computed} reference fingerprints were missing from the cache")
    rs, rc = ref.struct[ref.ok], ref.comp[ref.ok]

    rng = np.random.default_rng(args.seed)
    pick = rng.integers(0, len(rs), args.n_gen)
    gs = np.clip(rs[pick] + rng.normal(0, 0.08, (args.n_gen, rs.shape[1])), 0, None)
    gc = rc[pick] * rng.normal(1.0, 0.05, (args.n_gen, rc.shape[1]))

    timings = {}
    results = {}
    for pairing in ("independent", "joint"):
        best = np.inf
        for _ in range(args.repeats):
            t = time.perf_counter()
            res = coverage(gs, gc, rs, rc, struct_cutoff=0.4, comp_cutoff=10.0, pairing=pairing)
            best = min(best, time.perf_counter() - t)
        timings[pairing] = best
        results[pairing] = {"recall": res.recall.to_dict(), "precision": res.precision.to_dict()}

    # agreement with scipy's cdist on a slice of generated rows
    k = 500
    t = time.perf_counter()
    ds = cdist(gs[:k], rs)
    dc = cdist(scale_composition(gc[:k]), scale_composition(rc))
    t_cdist_slice = time.perf_counter() - t
    nn = nearest_neighbours(gs[:k], scale_composition(gc[:k]), rs, scale_composition(rc),
                            struct_cutoff=0.4, comp_cutoff=10.0)
    max_err = float(max(np.abs(nn.gen_struct - ds.min(1)).max(), np.abs(nn.gen_comp - dc.min(1)).max()))

    fp_speed = _fingerprint_speed(cifs[: args.fingerprint_sample]) if args.fingerprint_sample else None

    out = {
        "fingerprint_speed": fp_speed,
        "what": f"coverage of {args.n_gen} generated x {len(rs)} reference fingerprints (61 + 132 dims)",
        "reference": f"{args.reference} (n={len(cifs)}, {len(rs)} with fingerprints)",
        "generated": "reference rows drawn with replacement + Gaussian noise (struct sd 0.08, comp x N(1, 0.05))",
        "seconds_best_of": args.repeats,
        "coverage_seconds": {k_: round(v, 3) for k_, v in timings.items()},
        "pairs_per_second_independent": round(args.n_gen * len(rs) / timings["independent"]),
        "cdist_seconds_for_500_rows_both_fingerprints": round(t_cdist_slice, 3),
        "cdist_extrapolated_seconds_full": round(t_cdist_slice * args.n_gen / k, 1),
        "max_abs_difference_vs_cdist": max_err,
        "fingerprint_cache_load_seconds": round(t_load, 2),
        "results": results,
        "hardware": {"cpu_count": os.cpu_count(), "platform": platform.platform(),
                     "note": "machine shared with other jobs while measured"},
        "numpy": np.__version__,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=2))
    print(json.dumps({k_: out[k_] for k_ in ("what", "coverage_seconds", "pairs_per_second_independent",
                                             "cdist_extrapolated_seconds_full", "max_abs_difference_vs_cdist",
                                             "fingerprint_speed")},
                     indent=2))


def _fingerprint_speed(cifs: list[str]) -> dict:
    """Structures per second for CDVAE fingerprints, every site vs symmetry-equivalent sites once."""
    import warnings

    from pymatgen.core import Structure

    from llamat_cif.metrics.fingerprints import fingerprint_structure

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        structs = [Structure.from_str(c, fmt="cif") for c in cifs]
    fingerprint_structure(structs[0])  # featurizer set-up outside the timing
    out = {"n_structures": len(structs), "n_sites": int(sum(len(s) for s in structs))}
    diffs = []
    fps = {}
    for label, symprec in (("every_site", None), ("symmetry_reduced", 0.01)):
        t = time.perf_counter()
        fps[label] = [fingerprint_structure(s, symprec=symprec)[0] for s in structs]
        dt = time.perf_counter() - t
        out[f"{label}_structures_per_s"] = round(len(structs) / dt, 3)
    diffs = [float(np.abs(a - b).max()) for a, b in zip(fps["every_site"], fps["symmetry_reduced"], strict=True)]
    out["max_abs_difference"] = max(diffs)
    out["median_abs_difference"] = float(np.median(diffs))
    return out


if __name__ == "__main__":
    main()
