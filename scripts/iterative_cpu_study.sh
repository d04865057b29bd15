#!/usr/bin/env bash
# The CPU study of docs/iterative.md, as it ran on 2 cores: each step's command, in the order the page reports
# them. Resumable: every sweep folder resumes, and a finished training run is not repeated.
#
#   bash scripts/iterative_cpu_study.sh [STEP ...]    # STEP: chain8 long_last small_steps lottery gradual one_step
#                                                     # (default: all)
#
# chain8    the shipped ResNet-20 pruned 50, 70, 80, 86, 90%, the training schedule restarted for 8 epochs a step
#           (40 epochs in all; about 2 h 10 min on one thread beside the other steps)
# long_last   chain8's first four steps (copied from its folder), then 90% with 28 epochs: 60 in all (about 1 h, 2 threads)
# small_steps chain8's first four steps, then 88% with 8 epochs and 90% with 20: 60 in all (about 1 h, 2 threads)
# lottery   a dense ResNet-20 that keeps its rewind points (12 quarter-epochs, fast recipe, step 50 kept), then at
#           80% its survivors rewound to step 50, reset to their initial values, or drawn afresh, each retrained for
#           12 quarter-epochs; two seeds of the retraining (about 15 + 2 x 32 min)
# gradual   sparse from the start at the lottery's budget: train.py --prune_to 0.8 for 12 quarter-epochs, joined to
#           the lottery sweep at its cost (about 12 min)
# one_step  the shipped ResNet-20 pruned to 80% at once, the schedule restarted for 8 epochs (about 25 min)
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${DATA:-../shared/data/cifar10-jpeg}
SHIPPED=checkpoints/resnet20_cifar10jpeg.ckpt
PYTHON=${PYTHON:-python}
FROM_CHAIN8=(--checkpoint $SHIPPED --data_dir "$DATA" --methods global --sparsities 0,0.9 --iterative lr_restart
            --chain_from runs/iterative_lrr8)
QUARTER=(--epochs 12 --batch_size 256 --limit_train_batches 0.25 --recipe fast --arch resnet20 --gpus 0 --data_dir "$DATA")

STEPS=${*:-chain8 long_last small_steps lottery gradual one_step}
for step in $STEPS; do
    case $step in
        chain8|long_last|small_steps|lottery|gradual|one_step) ;;
        *) echo "iterative_cpu_study.sh: unknown step '$step' (chain8, long_last, small_steps, lottery, gradual, one_step)" >&2; exit 2 ;;
    esac
done
for step in $STEPS; do
    case $step in
        chain8)
            $PYTHON sweep.py --checkpoint $SHIPPED --data_dir "$DATA" --methods global --sparsities 0,0.9 \
                --iterative lr_restart --retrain_epochs 8 --chain_levels 0.5,0.7,0.8,0.86,0.9 --output_dir runs/iterative_lrr8 ;;
        long_last)
            $PYTHON sweep.py "${FROM_CHAIN8[@]}" --chain_levels 0.5,0.7,0.8,0.86,0.9 --retrain_epochs 8,8,8,8,28 \
                --output_dir runs/lrr8_last28 ;;
        small_steps)
            $PYTHON sweep.py "${FROM_CHAIN8[@]}" --chain_levels 0.5,0.7,0.8,0.86,0.88,0.9 --retrain_epochs 8,8,8,8,8,20 \
                --output_dir runs/lrr8_88_90 ;;
        lottery)
            ls runs/lottery/checkpoints/resnet20/version_0/best*.ckpt >/dev/null 2>&1 || $PYTHON train.py "${QUARTER[@]}" \
                --rewind_step 50 --checkpoint_root runs/lottery/checkpoints --log_root runs/lottery/logs
            DENSE=$(ls runs/lottery/checkpoints/resnet20/version_0/best*.ckpt)
            for seed in 0 1; do
                $PYTHON sweep.py --checkpoint "$DENSE" --data_dir "$DATA" --methods global --sparsities 0,0.8 \
                    --iterative weight_rewind,init_reset,random_reinit --retrain_epochs 12 --finetune_batches 0.25 \
                    --chain_levels 0.8 --seed $seed --output_dir runs/lottery_sweep$([ $seed = 0 ] || echo _seed$seed)
            done ;;
        gradual)
            ls runs/gradual/checkpoints/resnet20/version_0/best*.ckpt >/dev/null 2>&1 || $PYTHON train.py "${QUARTER[@]}" \
                --prune_to 0.8 --prune_method global --prune_every_steps 20 --checkpoint_root runs/gradual/checkpoints \
                --log_root runs/gradual/logs
            $PYTHON scripts/sparse_training_curve.py runs/lottery_sweep runs/gradual/checkpoints/resnet20/version_0/best*.ckpt \
                --data_dir "$DATA" --output_dir runs/lottery_with_gradual ;;
        one_step)
            $PYTHON sweep.py --checkpoint $SHIPPED --data_dir "$DATA" --methods global --sparsities 0,0.8 \
                --iterative lr_restart --retrain_epochs 8 --chain_levels 0.8 --output_dir runs/one_step_lrr8 ;;
        *) echo "iterative_cpu_study.sh: unknown step '$step' (chain8, long_last, small_steps, lottery, gradual, one_step)" >&2; exit 2 ;;
    esac
done
