#!/usr/bin/env bash
# The headline study of docs/headline.md, under the reviewer's rules: every choice made on the checkpoint's own
# validation split (--eval_split val: the 5,000 images train.py held out), three training seeds wherever a level
# retrains, each drop from dense measured image by image; the test split run once, for the choices, at the end.
# Resumable: every sweep folder resumes, and a test run copies the chosen route's networks (--chain_from) instead
# of retraining them.
#
#   bash scripts/headline_study.sh [STEP ...]
#
# precision   one route (80% in one step, the schedule restarted for 4 epochs), two seeds in float32 and three in
#             bf16 autocast (the retraining default on a CPU that runs bf16 natively): is bf16 within noise?
# rate        the +FT rate: one epoch at 70% (global), rates 0.01, 0.02, 0.05, 0.1, on validation
# knees_val   one-shot, +BN and +FT (RATE, 3 seeds) knees of global and layer-wise magnitude, bisected on validation
# route90_val  the route to 90% of the earlier study (50, 70, 80, 86% at 8 epochs a step, then 90% with 28: 60 in all),
#             three seeds, on validation
# routes_val  routes to 80%, 3 seeds each: 50-70-80% at 4 epochs a step (12 in all), then the same with a 12-epoch
#             last step (20 in all; its first two steps copied), beside `precision`'s 80% at once with 4
# knees_test  the knee levels validation found (KNEES; KNEE_FT for +FT, 3 seeds), once on the test split
# route_test  the route validation picked (ROUTE: its folder), its networks tested once on the test split
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${DATA:-../shared/data/cifar10-jpeg}
PYTHON=${PYTHON:-python}
OUT=${OUT:-runs/headline}
RATE=${RATE:-0.05}
KNEES=${KNEES:-0.375,0.461}  # the one-shot and +BN knees validation found
KNEE_FT=${KNEE_FT:-0.672}    # the +FT knee validation found
ROUTE=${ROUTE:-val_80_4_4_12}
RETRAIN=(${RETRAIN:-})       # more retraining flags for route90_val and route_test (the same to both), e.g. --retrain_compile
COMMON=(--checkpoint checkpoints/resnet20_cifar10jpeg.ckpt --data_dir "$DATA" --methods global)
LRR=(--iterative lr_restart --sparsities 0,0.8)

STEPS=${*:-precision rate routes_val knees_val knees_test route_test}
for step in $STEPS; do
    case $step in
        precision|rate|knees_val|route90_val|routes_val|knees_test|route_test) ;;
        *) echo "headline_study.sh: unknown step '$step' (precision, rate, knees_val, route90_val, routes_val, knees_test," \
                "route_test)" >&2
           exit 2 ;;
    esac
done
for step in $STEPS; do
    case $step in
        precision)
            $PYTHON sweep.py "${COMMON[@]}" "${LRR[@]}" --chain_levels 0.8 --retrain_epochs 4 --seeds 2 --eval_split val \
                --retrain_precision 32-true --output_dir $OUT/val_80_1x4_fp32
            $PYTHON sweep.py "${COMMON[@]}" "${LRR[@]}" --chain_levels 0.8 --retrain_epochs 4 --seeds 3 --eval_split val \
                --retrain_precision bf16-mixed --output_dir $OUT/val_80_1x4 ;;
        rate)
            for rate in 0.01 0.02 0.05 0.1; do
                $PYTHON sweep.py "${COMMON[@]}" --sparsities 0,0.7 --finetune_epochs 1 --finetune_lr $rate --eval_split val \
                    --output_dir $OUT/val_rate_$rate
            done ;;
        knees_val)
            $PYTHON sweep.py "${COMMON[@]}" --methods global,layerwise --bn_recalibrate 10 --find_knee --eval_split val \
                --output_dir $OUT/val_knees
            $PYTHON sweep.py "${COMMON[@]}" --finetune_epochs 1 --finetune_lr "$RATE" --seeds 3 --find_knee --eval_split val \
                --output_dir $OUT/val_knees_ft ;;
        route90_val)
            $PYTHON sweep.py "${COMMON[@]}" --iterative lr_restart --sparsities 0,0.9 --chain_levels 0.5,0.7,0.8,0.86,0.9 \
                --retrain_epochs 8,8,8,8,28 --seeds 3 --eval_split val ${RETRAIN[@]+"${RETRAIN[@]}"} --output_dir $OUT/val_90_8x4_28 ;;
        routes_val)
            $PYTHON sweep.py "${COMMON[@]}" "${LRR[@]}" --chain_levels 0.5,0.7,0.8 --retrain_epochs 4 --seeds 3 --eval_split val \
                --output_dir $OUT/val_80_3x4
            $PYTHON sweep.py "${COMMON[@]}" "${LRR[@]}" --chain_levels 0.5,0.7,0.8 --retrain_epochs 4,4,12 --seeds 3 \
                --eval_split val --chain_from $OUT/val_80_3x4 --output_dir $OUT/val_80_4_4_12 ;;
        knees_test)
            $PYTHON sweep.py "${COMMON[@]}" --methods global,layerwise --bn_recalibrate 10 --sparsities "$KNEES" \
                --output_dir $OUT/test_knees
            $PYTHON sweep.py "${COMMON[@]}" --finetune_epochs 1 --finetune_lr "$RATE" --seeds 3 --sparsities "$KNEE_FT" \
                --output_dir $OUT/test_knees_ft ;;
        route_test)
            LEVELS=$($PYTHON -c "import json; c = json.load(open('$OUT/$ROUTE/sweep.json'))['config']; print(','.join(map(str, c['chain_levels'])), ','.join(map(str, c['retrain_epochs'])))")
            SPARSITIES=0,${LEVELS% *}; SPARSITIES=${SPARSITIES##*,}
            $PYTHON sweep.py "${COMMON[@]}" --iterative lr_restart --sparsities 0,$SPARSITIES --chain_levels ${LEVELS% *} \
                --retrain_epochs ${LEVELS#* } --seeds 3 ${RETRAIN[@]+"${RETRAIN[@]}"} \
                --chain_from $OUT/$ROUTE --output_dir $OUT/test_${ROUTE#val_} ;;
    esac
done
