#!/usr/bin/env bash
# The comparison report of issue 18: the shipped model's recorded default run (physical decoding,
# T 0.7 / top-p 0.9, seed 0: benchmarks/physics/runs/), 1,000 MP-20 train
# structures (upper bound) and 1,000 pyxtal random symmetric crystals (non-learned baseline),
# benchmarked against MP-20 test under one protocol. Run from the repository root with the venv active
# and LLAMAT_CIF_DATA pointing at the data. Resumable: fingerprints, validity and relaxations are kept.
set -euo pipefail
export HF_HUB_OFFLINE=1 OMP_NUM_THREADS=1
[ -f runs/compare/pyxtal-random-1000/failed.json ] || python benchmarks/compare/make_baseline.py --n 1000 --seed 0 --out runs/compare/pyxtal-random-1000
llamat-cif benchmark \
  --samples llamat-cif-small=benchmarks/physics/runs/t0.7-p0.9-seed0-physics-1000 \
  --samples mp20-train=mp20-train \
  --samples pyxtal-random=runs/compare/pyxtal-random-1000 \
  --reference mp20-test --max-samples 1000 --seed 0 --stability 50 --workers 2 \
  --out benchmarks/compare/mp20
