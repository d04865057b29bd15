#!/usr/bin/env bash
# The experiment's headline, end to end: ResNet-50 trained with the fast recipe, then pruned by every
# method at 21 levels, each level also after BatchNorm recalibration and after fine-tuning, with error
# bars over three random masks, figures and TensorBoard runs. Add SWEEP_ARGS="--quantize 8,4" for the
# quantised twins: on ResNet-50 they cost tens of CPU seconds per test (k-means, lzma), measured on a CPU.
#
#   bash scripts/resnet50_headline.sh [DATA_DIR] [OUT]      # DATA_DIR: CIFAR-10 (default ../shared/data/cifar10-jpeg)
#   source .gpu/setup.sh && SEEDS=1 bash scripts/resnet50_headline.sh "$DATA"   # on the lent GPU machine
#
# SEEDS=1 there: the Student-t intervals of several random masks need scipy, which is not among that
# machine's packages (../shared/gpu/README.md).
#
# Made for one GPU (bf16, channels-last, batch 256 at learning rate 0.2 after 3 warm-up epochs: the
# training run measured on an H100, docs/gpu.md); on a CPU it runs, for days. The
# variables EPOCHS, FINETUNE_EPOCHS, SEEDS (random masks per level, default 3), COMPILE (--compile:
# torch.compile, which cost over a minute of compiling in the first epoch on the H100), TRAIN_ARGS and
# SWEEP_ARGS (extra flags, e.g. Lightning batch limits for a smoke run) change it. Everything lands in
# OUT (default runs/resnet50_headline, git-ignored):
# checkpoints/, lightning_logs/ (training curves), sweep/ (sweep.csv, sweep.json, figures), and
# commands.txt, the commands as run.
set -euo pipefail
cd "$(dirname "$0")/.."
DATA_DIR=${1:-../shared/data/cifar10-jpeg}
OUT=${2:-runs/resnet50_headline}
EPOCHS=${EPOCHS:-30}
FINETUNE_EPOCHS=${FINETUNE_EPOCHS:-1}
mkdir -p "$OUT"
PYTHON=${PYTHON:-python}

run() {
    echo "$*" | tee -a "$OUT/commands.txt"
    "$@"
}

run $PYTHON train.py --arch resnet50 --recipe fast --epochs "$EPOCHS" --batch_size 256 --warmup_epochs 3 ${COMPILE:-} \
    --data_dir "$DATA_DIR" --checkpoint_root "$OUT/checkpoints" --log_root "$OUT/lightning_logs" ${TRAIN_ARGS:-}
checkpoint=$(ls -t "$OUT"/checkpoints/resnet50/version_*/best-*.ckpt | head -1)
run $PYTHON sweep.py --checkpoint "$checkpoint" --data_dir "$DATA_DIR" --methods layerwise,global,random,filters \
    --bn_recalibrate 20 --finetune_epochs "$FINETUNE_EPOCHS" --seeds "${SEEDS:-3}" --visualize --output_dir "$OUT/sweep" ${SWEEP_ARGS:-}
