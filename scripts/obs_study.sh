#!/usr/bin/env bash
# Post-training pruning at its best (docs/results.md, "OBS reconstruction and LAMP"), under the headline's rules:
# every choice on the checkpoint's validation split, the test split once for the choices. Resumable: each sweep
# folder resumes.
#
#   bash scripts/obs_study.sh [STEP ...]
#
# settings_val  OBS's damping (0.001, 0.01, 0.1), block (32 against 128) and calibration images (256, 1,024, 4,096)
#               at 70% global, one-shot, on validation
# knees_val     one-shot and +BN knees of obs-global, obs-lamp and LAMP magnitude, bisected on validation
# ft_val        obs-global with one epoch of fine-tuning (rate 0.02, the headline's, 3 seeds) at 70, 75, 80%, validation
# test          the knees validation found, once on test: +BN and one-shot for all three, +FT (3 seeds), the best
#               +BN knee quantised to 8 and 4 bits, 2:4 and obs-2:4, 256 and 4,096 calibration images
# resnet56      the pretrained ResNet-56 of ../shared/models on test, global and obs-global at 60 and 70% (a grid)
# cost          bench/obs_cost.py: ResNet-20 and ResNet-56 at 1,024 images, ResNet-50 at 256
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${DATA:-../shared/data/cifar10-jpeg}
PYTHON=${PYTHON:-python}
OUT=${OUT:-runs/obs}
COMMON=(--checkpoint checkpoints/resnet20_cifar10jpeg.ckpt --data_dir "$DATA")
knee() { $PYTHON -c "import json; print(json.load(open('$OUT/$1/sweep.json'))['summary']['knees']['$2']['sparsity'])"; }

STEPS=${*:-settings_val knees_val ft_val test resnet56 cost}
for step in $STEPS; do
    case $step in
        settings_val|knees_val|ft_val|test|resnet56|cost) ;;
        *) echo "obs_study.sh: unknown step '$step' (settings_val, knees_val, ft_val, test, resnet56, cost)" >&2; exit 2 ;;
    esac
done
for step in $STEPS; do
    case $step in
        settings_val)
            AT70=("${COMMON[@]}" --methods obs-global --sparsities 0,0.7 --eval_split val)
            for damping in 0.001 0.01 0.1; do
                $PYTHON sweep.py "${AT70[@]}" --obs_damping $damping --output_dir $OUT/val_damping_$damping
            done
            $PYTHON sweep.py "${AT70[@]}" --obs_block 32 --output_dir $OUT/val_block_32
            for images in 256 4096; do
                $PYTHON sweep.py "${AT70[@]}" --calibration_images $images --output_dir $OUT/val_calibration_$images
            done ;;
        knees_val)
            $PYTHON sweep.py "${COMMON[@]}" --methods obs-global,obs-lamp,lamp --bn_recalibrate 10 --find_knee --eval_split val \
                --output_dir $OUT/val_knees ;;
        ft_val)
            $PYTHON sweep.py "${COMMON[@]}" --methods obs-global --finetune_epochs 1 --finetune_lr 0.02 --seeds 3 \
                --sparsities 0,0.7,0.75,0.8 --eval_split val --output_dir $OUT/val_ft ;;
        test)
            KNEES=$($PYTHON -c "import json; k = json.load(open('$OUT/val_knees/sweep.json'))['summary']['knees']
print(','.join(sorted({str(v['sparsity']) for v in k.values()})))")
            BEST=$($PYTHON -c "import json; k = json.load(open('$OUT/val_knees/sweep.json'))['summary']['knees']
print(max((v['sparsity'], c) for c, v in k.items() if c.endswith('+BN'))[1].removesuffix('+BN'))")
            BEST_KNEE=$(knee val_knees "$BEST+BN")
            $PYTHON sweep.py "${COMMON[@]}" --methods obs-global,obs-lamp,lamp --bn_recalibrate 10 --sparsities "$KNEES" \
                --output_dir $OUT/test_knees
            $PYTHON sweep.py "${COMMON[@]}" --methods obs-global --finetune_epochs 1 --finetune_lr 0.02 --seeds 3 \
                --sparsities "$(knee val_ft obs-global+FT)" --output_dir $OUT/test_ft
            $PYTHON sweep.py "${COMMON[@]}" --methods "$BEST" --bn_recalibrate 10 --sparsities "$BEST_KNEE" --quantize 8,4 \
                --output_dir $OUT/test_quantized
            $PYTHON sweep.py "${COMMON[@]}" --methods 2:4,obs-2:4 --bn_recalibrate 10 --sparsities 0,0.5 --output_dir $OUT/test_24
            for images in 256 4096; do
                $PYTHON sweep.py "${COMMON[@]}" --methods "$BEST" --bn_recalibrate 10 --sparsities "$BEST_KNEE" \
                    --calibration_images $images --output_dir $OUT/test_calibration_$images
            done ;;
        resnet56)
            $PYTHON sweep.py --weights ../shared/models/cifar_resnet56_akamaster.th --arch resnet56 --mean 0.485,0.456,0.406 \
                --std 0.229,0.224,0.225 --data_dir "$DATA" --methods global,obs-global --bn_recalibrate 10 \
                --sparsities 0,0.6,0.7 --output_dir $OUT/test_resnet56 ;;
        cost)
            $PYTHON bench/obs_cost.py --archs resnet20,resnet56 --json $OUT/obs_cost.json
            $PYTHON bench/obs_cost.py --archs resnet50 --calibration_images 256 --json $OUT/obs_cost_resnet50.json ;;
    esac
done
