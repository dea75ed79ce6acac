#!/usr/bin/env bash
# Equal-budget CPU ablation (issue #4): what the representation and the training budget each earn.
#
#   cif_cpu     small (6.5M), symmetric CIF,       MP-20 train available subset, 1,150 steps x 8 x 512 tokens (~45 min on 1 CPU thread)
#   llamat_cpu  small (6.5M), LLaMat P1 text (+2 translated, permuted copies), same data, same budget
#   shipped     llamat-cif-small: same size, CIF, 29.6k structures, 124.5M tokens on an H100
#
# Each model: 200 unconstrained samples (T 1.0, top-p 1.0, seed 0), scored with evaluate_runs.py.
# Usage: bash benchmarks/generate/ablation_cpu.sh [WORKDIR]   (run from the repository root)
set -euo pipefail
W=${1:-runs/ablation}
MIN=${ABLATION_MINUTES:-50}
mkdir -p "$W"
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 HF_HUB_OFFLINE=1

for fmt in cif llamat; do
  aug=""; [ "$fmt" = llamat ] && aug="--translations 2 --permute"
  [ -f "$W/corpus_$fmt/stats.json" ] || llamat-cif corpus build --dataset mp20 --split train --format $fmt $aug \
      --jobs 1 --roundtrip-sample 200 --seed 0 --out "$W/corpus_$fmt"
done
for fmt in cif llamat; do   # the two trainings share the 2 cores, one thread each
  llamat-cif train --corpus "$W/corpus_$fmt" --config small --block-size 512 --batch-size 8 \
      --lr 1e-3 --warmup-steps 50 --max-steps "${STEPS:-1150}" --time-limit "$MIN" --eval-every 250 \
      --save-every 250 --seed 0 --no-progress --out "$W/${fmt}_cpu" --resume > "$W/train_$fmt.log" 2>&1 &
done
wait
for fmt in cif llamat; do
  llamat-cif generate -n 200 --model "$W/${fmt}_cpu/final" --unconstrained --temperature 1.0 --top-p 1.0 \
      --batch-size 8 --seed 0 --out "$W/gen_${fmt}_uncond" > "$W/gen_$fmt.log" 2>&1 &
done
wait
python benchmarks/generate/evaluate_runs.py "$W/gen_cif_uncond" "$W/gen_llamat_uncond" --out "$W"
