#!/usr/bin/env bash
# Stability alignment of the shipped llamat-cif-small on this 2-core CPU machine, and the
# before/after comparison on the seeds of the physical-decoding benchmark (benchmarks/physics/).
# Run from the project root with LLAMAT_CIF_DATA set. One process at a time, one torch thread.
set -euo pipefail
export HF_HUB_OFFLINE=1 OMP_NUM_THREADS=1
A=benchmarks/align/runs/small-seed0
E=benchmarks/align/runs/eval
ROUNDS=${ROUNDS:-4}

# 1. alignment: 16 prompts x 6 constrained samples per round (half formula headers from MP-20 train),
#    reward -E_hull after <= 100 FIRE steps (CHGNet, fmax 0.1, MP-20 hull), DPO beta 0.1, lr 3e-5,
#    2 epochs per round, reference = the shipped model
/usr/bin/time -v llamat-cif align --out $A --rounds "$ROUNDS" --prompts 16 --samples-per-prompt 6 --seed 0 --no-progress

# 2. how well the short relaxation ranks samples like the full one (40 valid default samples)
python benchmarks/align/reward_rank.py benchmarks/physics/runs/t0.7-p0.9-seed0-physics -k 40 --seed 1

# 3. the aligned model on the seeds of the recorded default run (300 samples, batch 8, seed 0),
#    validity of all, stability of 100 seeded-random valid samples with the default pipeline
llamat-cif generate -n 300 --batch-size 8 --seed 0 --model $A/final --out $E/aligned-300
llamat-cif validate $E/aligned-300 --out $E/aligned-300 --jobs 1
llamat-cif benchmark --samples $E/aligned-300 --out $E/aligned-300/stability-100 --stability 100 --seed 0 --no-coverage

# 4. the table (before = the recorded default run of benchmarks/physics/)
P=benchmarks/physics/runs/t0.7-p0.9-seed0-physics
python benchmarks/physics/ablation.py "llamat-cif-small (before)=$P:$P/stability-100" \
  "aligned, $ROUNDS rounds (after)=$E/aligned-300:$E/aligned-300/stability-100" --out benchmarks/align/before_after.json

# 5. formula-conditioned: the 200 MP-20 test formulas of benchmarks/generate/, before and after
#    (formula met, validity of all 200; stability of 50 seeded-random valid samples)
for m in "before:default" "after:$A/final"; do
  tag=${m%%:*}; model=${m#*:}
  llamat-cif generate --targets benchmarks/generate/targets_mp20_test_200.csv --batch-size 8 --seed 0 \
    --model "$model" --out $E/formula200-$tag
  llamat-cif validate $E/formula200-$tag --out $E/formula200-$tag --jobs 1
  llamat-cif benchmark --samples $E/formula200-$tag --out $E/formula200-$tag/stability-50 --stability 50 --seed 0 --no-coverage
done
python benchmarks/physics/ablation.py "formula-conditioned, before=$E/formula200-before:$E/formula200-before/stability-50" \
  "formula-conditioned, after=$E/formula200-after:$E/formula200-after/stability-50" --out benchmarks/align/formula200.json

# ---- second run (today's decoding: align samples with every generate default) ----------------------
A2=benchmarks/align/runs/small-anion-seed0
E2=benchmarks/align/runs/eval-anion
# 6. alignment, 24 prompts x 6 samples per round (a quarter formula headers), scoring in 2 workers
#    while sampling; the recorded model is round_02/model (the run was stopped after round 2)
llamat-cif align --out $A2 --rounds 3 --prompts 24 --samples-per-prompt 6 --conditional 0.25 --score-workers 2 --seed 0 --no-progress
# 7. the #12 ablation seeds (300, 100 relaxed); before = benchmarks/physics/runs/t0.7-p0.9-seed0-anion-steer
for i in 0 1; do llamat-cif generate -n 300 --batch-size 8 --seed 0 --model $A2/round_02/model --out $E2/aligned3-300 --shard $i/2 & done; wait
llamat-cif generate -n 300 --batch-size 8 --seed 0 --model $A2/round_02/model --out $E2/aligned3-300
llamat-cif validate $E2/aligned3-300 --out $E2/aligned3-300 --jobs 2
llamat-cif benchmark --samples $E2/aligned3-300 --out $E2/aligned3-300/stability-100 --stability 100 --seed 0 --no-coverage --workers 2
P2=benchmarks/physics/runs/t0.7-p0.9-seed0-anion-steer
python benchmarks/physics/ablation.py "llamat-cif-small, today's decoding (before)=$P2:$P2/stability-100" \
  "aligned, 3 rounds x 144 samples (after)=$E2/aligned3-300:$E2/aligned3-300/stability-100" --out benchmarks/align/before_after_anion.json
# 8. the 1,000-sample protocol (before = benchmarks/physics/runs/t0.7-p0.9-seed0-anion-1000)
bash benchmarks/physics/protocol_1000.sh aligned3-t0.7-p0.9-seed0-1000 --model $A2/round_02/model
# 9. formula-conditioned, 200 MP-20 test formulas, both models with today's decoding (50 relaxed each)
for m in "after:$A2/round_02/model" "before:default"; do
  tag=${m%%:*}; model=${m#*:}; R=$E2/formula200-$tag
  for i in 0 1; do llamat-cif generate --targets benchmarks/generate/targets_mp20_test_200.csv --batch-size 8 --seed 0 --model "$model" --out $R --shard $i/2 & done; wait
  llamat-cif generate --targets benchmarks/generate/targets_mp20_test_200.csv --batch-size 8 --seed 0 --model "$model" --out $R
  llamat-cif validate $R --out $R --jobs 2
  llamat-cif benchmark --samples $R --out $R/stability-50 --stability 50 --seed 0 --no-coverage --workers 2
done

# ---- third run: rounds 3-5 continue the second run's rounds 0-2 with --cross-round-unique ----------
A3=benchmarks/align/runs/small-anion-xr-seed0
# 10. copy rounds 0-2 of the second run (drawn before the rule existed; round 0 is unaffected by it),
#     then continue to 6 rounds with a sample matching an earlier round's winner ineligible
mkdir -p $A3 && cp -r $A2/round_00 $A2/round_01 $A2/round_02 $A3/
python - <<PY
import json; c = json.load(open("$A2/align_config.json"))
c.update(out_dir="$A3", cross_round_unique=True); json.dump(c, open("$A3/align_config.json", "w"), indent=2)
PY
llamat-cif align --out $A3 --rounds 6 --prompts 24 --samples-per-prompt 6 --conditional 0.25 --score-workers 2 --seed 0 --no-progress
# 11. the 1,000-sample protocol on round 5's model; stability of 100 chosen (the 300-sample
#     benchmark was stopped for time: the sampled distribution had already collapsed, see README)
bash benchmarks/physics/protocol_1000.sh alignedxr6-t0.7-p0.9-seed0-1000 --model $A3/round_05/model  # stopped after validate
R=benchmarks/physics/runs/alignedxr6-t0.7-p0.9-seed0-1000
llamat-cif benchmark --samples $R --out $R/bench --stability 100 --seed 0 --workers 2

# ---- fourth run: rounds 3-4 continue the second run's rounds 0-2 with --family-share 0.05 ----------
A4=benchmarks/align/runs/small-anion-fam-seed0
# 12. copy rounds 0-2 of the second run, and round 3's sample and score parts of the third run (the
#     same model, prompts and seeds draw the same samples; only the pairs differ under the new rule),
#     then continue; started with --rounds 6 and stopped after round 4 for time (--rounds 5 gives the
#     same rounds)
mkdir -p $A4/round_03 && cp -r $A2/round_00 $A2/round_01 $A2/round_02 $A4/
cp -r $A3/round_03/samples.parts $A3/round_03/scores.parts $A4/round_03/
python - <<PY
import json; c = json.load(open("$A2/align_config.json"))
c.update(out_dir="$A4", cross_round_unique=True, family_share=0.05); json.dump(c, open("$A4/align_config.json", "w"), indent=2)
PY
llamat-cif align --out $A4 --rounds 5 --prompts 24 --samples-per-prompt 6 --conditional 0.25 --score-workers 2 --seed 0 --no-progress --family-share 0.05
# 13. the 1,000-sample protocol on round 4's model, then 200 MP-20 test formulas (50 relaxed)
bash benchmarks/physics/protocol_1000.sh alignedfam5-t0.7-p0.9-seed0-1000 --model $A4/round_04/model
R=benchmarks/align/runs/eval-fam/formula200-after
for i in 0 1; do llamat-cif generate --targets benchmarks/generate/targets_mp20_test_200.csv --batch-size 8 --seed 0 --model $A4/round_04/model --out $R --shard $i/2 & done; wait
llamat-cif generate --targets benchmarks/generate/targets_mp20_test_200.csv --batch-size 8 --seed 0 --model $A4/round_04/model --out $R
llamat-cif validate $R --out $R --jobs 2
llamat-cif benchmark --samples $R --out $R/stability-50 --stability 50 --seed 0 --no-coverage --workers 2

# ---- fifth run: as the fourth, with a stronger anchor (--beta 0.3 --sft-weight 0) ----------
A5=benchmarks/align/runs/small-anion-anchor-seed0
# 14. the same copies as step 12, then rounds 3-4 and the 1,000-sample protocol on round 4's model
mkdir -p $A5/round_03 && cp -r $A2/round_00 $A2/round_01 $A2/round_02 $A5/
cp -r $A3/round_03/samples.parts $A3/round_03/scores.parts $A5/round_03/
python - <<PY
import json; c = json.load(open("$A2/align_config.json"))
c.update(out_dir="$A5", cross_round_unique=True, family_share=0.05, beta=0.3, sft_weight=0.0); json.dump(c, open("$A5/align_config.json", "w"), indent=2)
PY
llamat-cif align --out $A5 --rounds 5 --prompts 24 --samples-per-prompt 6 --conditional 0.25 --score-workers 2 --seed 0 --no-progress --family-share 0.05 --beta 0.3 --sft-weight 0
bash benchmarks/physics/protocol_1000.sh alignedanchor5-t0.7-p0.9-seed0-1000 --model $A5/round_04/model

# ---- sixth run: bigger rounds (48 prompts x 6 samples per round), unconditional prompts only ----------
A6=benchmarks/align/runs/small-big-seed0
# 15. three rounds of 288 samples (twice the second run's samples per update), the second run's DPO
#     settings, then the 1,000-sample protocol on round 2's model (started with --rounds 2, extended)
llamat-cif align --out $A6 --rounds 3 --prompts 48 --samples-per-prompt 6 --conditional 0 --score-workers 2 --seed 0 --no-progress
bash benchmarks/physics/protocol_1000.sh alignedbig3-t0.7-p0.9-seed0-1000 --model $A6/round_02/model
#     then a fourth round (the same folder extended) and its model's protocol
llamat-cif align --out $A6 --rounds 4 --prompts 48 --samples-per-prompt 6 --conditional 0 --score-workers 2 --seed 0 --no-progress
bash benchmarks/physics/protocol_1000.sh alignedbig4-t0.7-p0.9-seed0-1000 --model $A6/round_03/model
# 16. round_02 at warmer temperatures (uniqueness against stability)
PR=benchmarks/physics/runs
for T in 0.8 0.9; do
  bash benchmarks/physics/protocol_1000.sh alignedbig3-t$T-p0.9-seed0-1000 --model $A6/round_02/model --temperature $T
done
python benchmarks/physics/ablation.py "llamat-cif-small (before; ../physics/runs/t0.7-p0.9-seed0-pinned-1000)=$PR/t0.7-p0.9-seed0-pinned-1000:$PR/t0.7-p0.9-seed0-pinned-1000/bench" \
  "aligned 3 x 288, T 0.7=$PR/alignedbig3-t0.7-p0.9-seed0-1000:$PR/alignedbig3-t0.7-p0.9-seed0-1000/bench" \
  "aligned 3 x 288, T 0.8=$PR/alignedbig3-t0.8-p0.9-seed0-1000:$PR/alignedbig3-t0.8-p0.9-seed0-1000/bench" \
  "aligned 3 x 288, T 0.9=$PR/alignedbig3-t0.9-p0.9-seed0-1000:$PR/alignedbig3-t0.9-p0.9-seed0-1000/bench" \
  "aligned 4 x 288, T 0.7=$PR/alignedbig4-t0.7-p0.9-seed0-1000:$PR/alignedbig4-t0.7-p0.9-seed0-1000/bench" --out benchmarks/align/before_after_big.json
# 17. formula-conditioned, 200 MP-20 test formulas, both models on today's code (50 relaxed each)
E6=benchmarks/align/runs/eval-big
for m in "after:$A6/round_02/model" "before:default"; do
  tag=${m%%:*}; model=${m#*:}; R=$E6/formula200-$tag
  for i in 0 1; do llamat-cif generate --targets benchmarks/generate/targets_mp20_test_200.csv --batch-size 8 --seed 0 --model $model --out $R --shard $i/2 & done; wait
  llamat-cif generate --targets benchmarks/generate/targets_mp20_test_200.csv --batch-size 8 --seed 0 --model $model --out $R
  llamat-cif validate $R --out $R --jobs 2
  llamat-cif benchmark --samples $R --out $R/stability-50 --stability 50 --seed 0 --no-coverage --workers 2
done
python benchmarks/physics/ablation.py "formula-conditioned, llamat-cif-small (before)=$E6/formula200-before:$E6/formula200-before/stability-50" \
  "formula-conditioned, aligned 3 x 288 (after)=$E6/formula200-after:$E6/formula200-after/stability-50" --out benchmarks/align/formula200_big.json
# 18. the third update again with --family-share 0.02 (rounds 0-1 and round 2's samples/scores copied)
#     (today one command does the copying: llamat-cif align --out $B6 --from-run $A6 --keep-rounds 2 --reuse-samples --rounds 3 ... --family-share 0.02)
B6=benchmarks/align/runs/small-bigcap-seed0
mkdir -p $B6/round_02 && cp -r $A6/round_00 $A6/round_01 $B6/ && cp -r $A6/round_02/samples.parts $A6/round_02/scores.parts $B6/round_02/
python - <<PY
import json; c = json.load(open("$A6/align_config.json"))
c.update(out_dir="$B6", rounds=3, family_share=0.02); json.dump(c, open("$B6/align_config.json", "w"), indent=2)
PY
llamat-cif align --out $B6 --rounds 3 --prompts 48 --samples-per-prompt 6 --conditional 0 --score-workers 2 --seed 0 --no-progress --family-share 0.02
bash benchmarks/physics/protocol_1000.sh alignedbigcap3-t0.7-p0.9-seed0-1000 --model $B6/round_02/model
# 19. round_02 interpolated toward the shipped model (0.75 aligned), T 0.7
python benchmarks/align/interpolate.py llamat_cif/models/llamat-cif-small $A6/round_02/model 0.75 /tmp/soup/a075
bash benchmarks/physics/protocol_1000.sh soup075-t0.7-p0.9-seed0-1000 --model /tmp/soup/a075 --temperature 0.7
# 20. a fourth update on a 1,002-sample round (table of steps 19-21 at the end) (rounds 0-2 copied; --prompts changes when a run is extended)
#     (today: llamat-cif align --out $A7 --from-run $A6 --keep-rounds 3 --rounds 4 --prompts 167 ...)
A7=benchmarks/align/runs/small-big1000-seed0
mkdir -p $A7 && cp -r $A6/round_00 $A6/round_01 $A6/round_02 $A7/ && head -3 $A6/rounds.jsonl > $A7/rounds.jsonl
python - <<PY
import json; c = json.load(open("$A6/align_config.json"))
c.update(out_dir="$A7", rounds=3); json.dump(c, open("$A7/align_config.json", "w"), indent=2)
PY
llamat-cif align --out $A7 --rounds 4 --prompts 167 --samples-per-prompt 6 --conditional 0 --score-workers 2 --seed 0 --no-progress
bash benchmarks/physics/protocol_1000.sh alignedbig1000r4-t0.7-p0.9-seed0-1000 --model $A7/round_03/model
# 21. a diversity-only update of round_02 on step 20's round-3 samples
python benchmarks/align/dedupe_update.py $A7 3 $A6/round_02/model benchmarks/align/runs/dedupe-r02-seed0
bash benchmarks/physics/protocol_1000.sh aligneddedupe-t0.7-p0.9-seed0-1000 --model benchmarks/align/runs/dedupe-r02-seed0/model
python benchmarks/physics/ablation.py "llamat-cif-small (before)=$PR/t0.7-p0.9-seed0-pinned-1000:$PR/t0.7-p0.9-seed0-pinned-1000/bench" \
  "aligned 3 x 288 (round_02), T 0.7=$PR/alignedbig3-t0.7-p0.9-seed0-1000:$PR/alignedbig3-t0.7-p0.9-seed0-1000/bench" \
  "aligned 3 x 288, T 0.9=$PR/alignedbig3-t0.9-p0.9-seed0-1000:$PR/alignedbig3-t0.9-p0.9-seed0-1000/bench" \
  "interpolated 0.25 shipped + 0.75 round_02, T 0.7=$PR/soup075-t0.7-p0.9-seed0-1000:$PR/soup075-t0.7-p0.9-seed0-1000/bench" \
  "round_02 + a fourth update on 1,002 samples, T 0.7=$PR/alignedbig1000r4-t0.7-p0.9-seed0-1000:$PR/alignedbig1000r4-t0.7-p0.9-seed0-1000/bench" \
  "round_02 + a diversity-only update (repeats rejected), T 0.7=$PR/aligneddedupe-t0.7-p0.9-seed0-1000:$PR/aligneddedupe-t0.7-p0.9-seed0-1000/bench" \
  --out benchmarks/align/before_after_big1000.json
