#!/usr/bin/env bash
# The field's answer to "how much can go", at budgets a GPU affords: iterative pruning with every retraining,
# the lottery-ticket comparison, and sparse training, for ResNet-20 and ResNet-50, each curve against the
# epochs of retraining it cost (sweep_cost.png in each folder). Resumable: rerun the same command after a stop.
#
#   bash scripts/iterative_study.sh                    # on a GPU machine; DATA and EPOCHS may be set
#
# Targets (issue 29): ResNet-20 within one point of dense at 95%; the same question answered for ResNet-50.
# Nothing here has run on a GPU yet; docs/iterative.md holds what the CPU measured.
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${DATA:-../shared/data/cifar10-jpeg}
EPOCHS=${EPOCHS:-20}         # of retraining per pruning step
LEVELS=0.5,0.7,0.8,0.86,0.9,0.93,0.95

for ARCH in resnet20 resnet50; do
    # A dense model that keeps its rewind points (the start, and step 500: early in training).
    if ! ls checkpoints/rewind/$ARCH/version_*/best*.ckpt >/dev/null 2>&1; then
        python train.py --gpus 1 --arch $ARCH --recipe fast --epochs 30 --data_dir "$DATA" --rewind_step 500 \
            --checkpoint_root checkpoints/rewind
    fi
    CKPT=$(ls -t checkpoints/rewind/$ARCH/version_*/best*.ckpt | head -1)
    # One-shot, +BN and +FT beside the chains of every retraining, on the same test images.
    python sweep.py --gpus 1 --checkpoint "$CKPT" --data_dir "$DATA" --methods global \
        --sparsities 0,$LEVELS --bn_recalibrate 20 --finetune_epochs "$EPOCHS" --finetune_lr 0.05 \
        --iterative finetune,lr_rewind,lr_restart,weight_rewind,init_reset,random_reinit \
        --retrain_epochs "$EPOCHS" --chain_levels $LEVELS --output_dir runs/iterative_$ARCH
    # Sparse from the start: one training run per level, joined to the sweep at its cost.
    for LEVEL in 0.8 0.9 0.95; do
        ls checkpoints/gradual_$LEVEL/$ARCH/version_*/best*.ckpt >/dev/null 2>&1 || python train.py --gpus 1 --arch $ARCH --recipe fast \
            --epochs 30 --data_dir "$DATA" --prune_to $LEVEL --checkpoint_root checkpoints/gradual_$LEVEL
    done
    python scripts/sparse_training_curve.py runs/iterative_$ARCH checkpoints/gradual_*/$ARCH/version_*/best*.ckpt \
        --data_dir "$DATA" --output_dir runs/iterative_${ARCH}_with_gradual
done
