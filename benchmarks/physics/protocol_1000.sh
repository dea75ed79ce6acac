#!/usr/bin/env bash
# The acceptance protocol of physical decoding (and of any new default): 1,000 unconditional samples
# of the shipped model with default settings, seed 0; validity over all 1,000; the full benchmark
# (coverage vs MP-20 test, uniqueness, novelty vs MP-20 train) with 300 seeded-random valid samples
# relaxed (CHGNet, FIRE fmax 0.1, MP-20 hull). Two sampling processes side by side (one per core),
# one torch thread each; relaxation with two workers. Run from the project root, LLAMAT_CIF_DATA set.
# Usage: [SEED=N] bash benchmarks/physics/protocol_1000.sh [RUN_NAME] [extra generate options]
# (SEED, default 0, seeds the sampling; the 300 relaxed samples are always chosen with seed 0)
set -euo pipefail
export HF_HUB_OFFLINE=1 OMP_NUM_THREADS=1
SEED=${SEED:-0}
RUN=benchmarks/physics/runs/${1:-t0.7-p0.9-seed0-default-1000}
shift || true
date
for i in 0 1; do llamat-cif generate -n 1000 --batch-size 8 --seed "$SEED" --out "$RUN" --shard $i/2 "$@" > "${TMPDIR:-/tmp}/$(basename "$RUN").shard$i.log" 2>&1 & done; wait
llamat-cif generate -n 1000 --batch-size 8 --seed "$SEED" --out "$RUN" "$@"   # merges the shards
date
llamat-cif validate "$RUN" --out "$RUN" --jobs 2
date
llamat-cif benchmark --samples "$RUN" --out "$RUN/bench" --stability 300 --seed 0 --workers 2
date
