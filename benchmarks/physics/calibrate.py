"""Calibrate the physical windows of constrained decoding on real crystals (MP-20 train).

Writes ``llamat_cif/resources/physics_calibration.json`` (read by :mod:`llamat_cif.physics`) and
prints a table. Three things are measured:

1. Contacts: per structure, the smallest d_ij / (r_cov,i + r_cov,j) (Cordero radii, ASE). The
   decoding factor f is the largest two-decimal value that >= 99.9 % of MP-20 train satisfy.
2. Volume predictors, fitted / judged on MP-20 train and scored on MP-20 test (available subsets):
   (a) per-element volume increments (atom-fraction-weighted sum, non-negative least squares on
   train), (b) elemental standard-state volumes (pymatgen molar volumes), (c) pymatgen's
   DLSVolumePredictor (needs the structure, so it can only rescale a finished cell; on a subset).
3. The volume window [lo, hi] on (a)'s prediction that holds >= 99.5 % of train.

Run: LLAMAT_CIF_DATA=../shared/data python benchmarks/physics/calibrate.py [--dls 300]
"""

from __future__ import annotations

import argparse
import json
import math
import time
import warnings
from pathlib import Path

import numpy as np
from pymatgen.core import Structure
from rich.progress import track
from scipy.optimize import nnls

from llamat_cif.data import load_split
from llamat_cif.physics import (
    CALIBRATION_FILE,
    VolumeModel,
    composition_of,
    elemental_volume_per_atom,
    min_contact_ratio,
)

CONTACT_PASS = 0.999
VOLUME_PASS = 0.995


def load(split: str, data_dir: str | None):
    df = load_split("mp20", split, data_dir=data_dir)
    out = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for sid, cif in track(list(zip(df["id"], df["cif"], strict=True)), description=f"parse {split}"):
            try:
                out.append((sid, Structure.from_str(cif, fmt="cif")))
            except Exception:  # noqa: BLE001 - counted below
                pass
    return df, out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--dls", type=int, default=300, help="test structures scored with DLSVolumePredictor")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    t0 = time.time()
    train_df, train = load("train", args.data_dir)
    test_df, test = load("test", args.data_dir)

    # 1. contacts
    r_train = np.array([min_contact_ratio(s) for _, s in track(train, description="contacts train")])
    r_test = np.array([min_contact_ratio(s) for _, s in track(test, description="contacts test")])
    f = math.floor(np.quantile(r_train, 1 - CONTACT_PASS) * 100) / 100
    while (r_train >= f).mean() < CONTACT_PASS:
        f -= 0.01
    f = round(f, 2)

    # 2. volume predictors
    elements = sorted({e for _, s in train for e in composition_of(s)})
    col = {e: i for i, e in enumerate(elements)}

    def fractions(s):
        x = np.zeros(len(elements))
        comp = composition_of(s)
        tot = sum(comp.values())
        for e, n in comp.items():
            if e in col:
                x[col[e]] = n / tot
        return x

    a = np.array([fractions(s) for _, s in train])
    y = np.array([s.volume / len(s) for _, s in train])
    inc, _ = nnls(a, y)
    elemental = {e: v for e in sorted({e for _, s in train + test for e in composition_of(s)})
                 if (v := elemental_volume_per_atom(e)) is not None}
    fitted = VolumeModel(increments={e: round(float(v), 4) for e, v in zip(elements, inc, strict=True) if v > 0},
                         fallback={e: round(v, 4) for e, v in elemental.items()})
    only_elemental = VolumeModel(increments={e: round(v, 4) for e, v in elemental.items()}, fallback={})

    def errors(model: VolumeModel, structs) -> np.ndarray:
        return np.array([(s.volume / len(s)) / model.per_atom(composition_of(s)) for _, s in structs])

    ratio_train = errors(fitted, train)
    ratio_test = errors(fitted, test)
    ratio_test_el = errors(only_elemental, test)

    def summary(r: np.ndarray) -> dict:
        rel = np.abs(r - 1)
        return {"n": int(len(r)), "median_abs_rel_error": round(float(np.median(rel)), 4),
                "mean_abs_rel_error": round(float(rel.mean()), 4),
                "ratio_quantiles_2.5_50_97.5": [round(float(v), 4) for v in np.quantile(r, [0.025, 0.5, 0.975])]}

    dls = None
    if args.dls:
        from pymatgen.analysis.structure_prediction.volume_predictor import DLSVolumePredictor

        rng = np.random.default_rng(args.seed)
        pick = rng.choice(len(test), size=min(args.dls, len(test)), replace=False)
        pred = DLSVolumePredictor()
        rs = []
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for i in track(pick, description="DLS test"):
                s = test[int(i)][1]
                try:
                    rs.append(s.volume / pred.predict(s))
                except Exception:  # noqa: BLE001 - DLS lacks bond data for some pairs
                    pass
        dls = {**summary(np.array(rs)), "attempted": int(len(pick)), "seed": args.seed}

    lo = math.floor(np.quantile(ratio_train, (1 - VOLUME_PASS) / 2) * 100) / 100
    hi = math.ceil(np.quantile(ratio_train, 1 - (1 - VOLUME_PASS) / 2) * 100) / 100
    inside = lambda r: float(((r >= lo) & (r <= hi)).mean())  # noqa: E731

    steer = math.floor(np.quantile(r_train, 0.05) * 100) / 100
    result = {
        "source": "benchmarks/physics/calibrate.py on MP-20 train, available subset "
                  f"({len(train)}/{len(train_df)} parsed); scored on MP-20 test, available subset "
                  f"({len(test)}/{len(test_df)} parsed)",
        "contacts": {
            "radii": "covalent radii, Cordero et al., Dalton Trans. 2008 (ase.data.covalent_radii)",
            "rule": "d_ij >= ratio * (r_i + r_j) for every atom pair, periodic images included",
            "ratio": f,
            "train_pass": [int((r_train >= f).sum()), int(len(r_train))],
            "test_pass": [int((r_test >= f).sum()), int(len(r_test))],
            "train_min_ratio_quantiles_0.1_1_25_50_75": [round(float(v), 4) for v in
                                                         np.quantile(r_train, [0.001, 0.01, 0.25, 0.5, 0.75])],
            "test_below_0.7": [int((r_test < 0.7).sum()), int(len(r_test))],
            # steering margin for constrained decoding: the 5th percentile of train (95 % of real
            # crystals keep every pair at least this far apart)
            "steer_ratio": round(float(np.floor(np.quantile(r_train, 0.05) * 100) / 100), 2),
            "train_at_or_above_steer_ratio": [int((r_train >= steer).sum()), int(len(r_train))],
        },
        "volume": {
            "predictor": "volume per atom = sum_i x_i v_i; v_i fitted by non-negative least squares on "
                         "MP-20 train (available subset); elements absent there use the elemental volume",
            "comparison_on_test": {"fitted_increments": summary(ratio_test),
                                   "elemental_volumes": summary(ratio_test_el),
                                   "dls_volume_predictor": dls},
            "window": [lo, hi],
            "window_rule": f"lo <= V_per_atom / predicted <= hi, holding >= {VOLUME_PASS:.1%} of train",
            "train_inside": [int(round(inside(ratio_train) * len(ratio_train))), int(len(ratio_train))],
            "test_inside": [int(round(inside(ratio_test) * len(ratio_test))), int(len(ratio_test))],
            # steering range for the last cell length: the central 90 % of train
            "steer_window": [math.floor(np.quantile(ratio_train, 0.05) * 100) / 100,
                             math.ceil(np.quantile(ratio_train, 0.95) * 100) / 100],
            "steer_window_train_inside": None,
            "increments": dict(fitted.increments),
            "elemental": dict(fitted.fallback),
        },
        "wall_s": round(time.time() - t0, 1),
    }
    sw = result["volume"]["steer_window"]
    result["volume"]["steer_window_train_inside"] = [int(((ratio_train >= sw[0]) & (ratio_train <= sw[1])).sum()),
                                                     int(len(ratio_train))]
    CALIBRATION_FILE.write_text(json.dumps(result, indent=1))
    out = Path(__file__).with_name("calibration_summary.json")
    out.write_text(json.dumps({k: v for k, v in result.items() if k != "volume"}
                              | {"volume": {k: v for k, v in result["volume"].items()
                                            if k not in ("increments", "elemental")}}, indent=1))
    print(json.dumps(json.loads(out.read_text()), indent=1))


if __name__ == "__main__":
    main()
