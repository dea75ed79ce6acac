#!/usr/bin/env bash
# Device machine: acceptance sampling runs for the shipped model, sharded over 16 CPU processes + 1 GPU.
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
W=/tmp/runs; mkdir -p $W
G() { timeout ${T:-380} python3 -c "from llamat_cif.cli import main; main()" generate --device cuda "$@"; }
for s in 0 1 2 3 4 5 6 7; do G -n 125 --seed $s --batch-size 32 --out $W/uncond_constrained_s$s > $W/c$s.log 2>&1 & done
for s in 0 1 2 3; do G -n 250 --seed $s --batch-size 64 --unconstrained --out $W/uncond_unconstrained_s$s > $W/u$s.log 2>&1 & done
for k in 0 1 2 3; do G --targets .gpu/targets_$k.csv --seed $k --batch-size 50 --out $W/formula_s$k > $W/f$k.log 2>&1 & done
wait
tail -n 3 $W/c0.log $W/u0.log $W/f0.log
timeout 100 python3 benchmarks/sample_speed.py --device cuda --batch-sizes 1,16,64 --n-per-batch-size 64 --out $W/sample_speed_cuda.json 2>&1 | tail -15
cd $W && tar czf $OUT/samples.tgz */samples.parquet */sample_summary.json */sample_config.json sample_speed_cuda.json *.log && ls -la $OUT
