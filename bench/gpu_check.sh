#!/usr/bin/env bash
# Every GPU measurement the project reports, in one run that fits a short loan of a GPU machine:
# the ResNet-50 headline (trained with the fast recipe, swept by every method with BatchNorm
# recalibration, fine-tuned at the levels that matter) and the speed checks (sweep per level and
# 21 levels end to end, bench.py's Lightning-vs-plain-loop and forward-vs-overhead split, fp32 and
# compiled bf16 epochs). Steps run in order of importance, each under its own time limit and all
# under DEADLINE seconds; a step that fails is logged and the rest go on, except the first two,
# which every later step needs.
#
#   bash ../shared/gpu/stage.sh                                    # on the CPU machine, once
#   source .gpu/setup.sh && bash bench/gpu_check.sh "$DATA" "$OUT"  # on the GPU machine
#
# Everything lands in OUT/gpu_check.tgz, remade after every step (the device tool brings back plain
# files of a few levels only, so one archive rather than a tree): one log per step, commands.txt (every
# command as run, with its wall time and exit status), the TensorBoard runs, the sweeps' CSV/JSON/figures
# and bench.py's JSON. The tree itself is built in WORK (default /tmp/gpu_check); checkpoints go to
# CKPT (default /tmp/gpu_check_checkpoints): they are not results.
# EPOCHS, LEVELS, FT_LEVELS, ARCH, GPUS, SKIP (step names), BENCH_ARGS, TRAIN_LIMIT and SWEEP_LIMIT
# (Lightning batch limits) change it; a smoke run on a CPU:
#   ARCH=resnet20 GPUS=0 EPOCHS=4 SKIP=train_compiled BENCH_ARGS="--device cpu --train_steps 2 --test_images 100" \
#   TRAIN_LIMIT="--limit_train_batches 2 --limit_val_batches 2 --limit_test_batches 2" \
#   SWEEP_LIMIT="--limit_test_batches 2 --finetune_batches 2" bash bench/gpu_check.sh ../shared/data/cifar10-jpeg /tmp/smoke
set -uo pipefail
cd "$(dirname "$0")/.."
DATA_DIR=${1:?usage: bench/gpu_check.sh DATA_DIR OUT}
ARCHIVE=${2:?usage: bench/gpu_check.sh DATA_DIR OUT}/gpu_check.tgz
WORK=${WORK:-/tmp/gpu_check}
CKPT=${CKPT:-/tmp/gpu_check_checkpoints}
DEADLINE=${DEADLINE:-570}
EPOCHS=${EPOCHS:-30}
LEVELS=${LEVELS:-0,0.05,0.1,0.15,0.2,0.25,0.3,0.35,0.4,0.45,0.5,0.55,0.6,0.65,0.7,0.75,0.8,0.85,0.9,0.95,1}
FT_LEVELS=${FT_LEVELS:-0,0.5,0.6,0.7,0.8,0.9}
ARCH=${ARCH:-resnet50}
GPUS=${GPUS:-1}
SKIP=${SKIP:-}
TRAIN_LIMIT=${TRAIN_LIMIT:-}
SWEEP_LIMIT=${SWEEP_LIMIT:-}
BENCH_ARGS=${BENCH_ARGS:-}
PYTHON=${PYTHON:-python3}
mkdir -p "$WORK" "$(dirname "$ARCHIVE")"
started=$(date +%s)

# step NAME SECONDS COMMAND...: run COMMAND under the smaller of SECONDS and the time left, logging
# its output to WORK/NAME.log and its line, wall time and exit status to WORK/commands.txt.
step() {
    local name=$1 limit=$2
    shift 2
    local left=$((DEADLINE - ($(date +%s) - started)))
    if [[ " $SKIP " == *" $name "* ]]; then
        echo "skipped $name: in SKIP" | tee -a "$WORK/commands.txt"
        return 0
    fi
    if ((left < 20)); then
        echo "skipped $name: ${left} s left of DEADLINE" | tee -a "$WORK/commands.txt"
        return 124
    fi
    ((limit > left)) && limit=$left
    local t0=$(date +%s%N)
    timeout --signal=INT --kill-after=10 "$limit" "$@" >"$WORK/$name.log" 2>&1
    local status=$?
    local ms=$((($(date +%s%N) - t0) / 1000000))
    printf '%s (limit %s s): %s\n  wall %d.%03d s, exit %s\n' "$name" "$limit" "$*" $((ms / 1000)) $((ms % 1000)) "$status" \
        | tee -a "$WORK/commands.txt"
    tail -n 3 "$WORK/$name.log" | cut -c1-300
    tar czf "$ARCHIVE" -C "$WORK" .
    return $status
}

{ nvidia-smi; $PYTHON -c "import torch, lightning; print('torch', torch.__version__, 'lightning', lightning.__version__)"; } \
    >"$WORK/machine.txt" 2>&1
head -n 12 "$WORK/machine.txt" | cut -c1-200

# 1. The headline model. Batch 256 (learning rate 0.2 by the recipe's 0.1 per 128) and 3 warm-up
#    epochs: a ResNet-50 at batch 512 and learning rate 0.2 without warm-up stayed at chance.
step train_headline 240 $PYTHON train.py --arch "$ARCH" --recipe fast --epochs "$EPOCHS" --batch_size 256 \
    --warmup_epochs 3 --data_dir "$DATA_DIR" --checkpoint_root "$CKPT/headline" --log_root "$WORK/lightning_logs" $TRAIN_LIMIT
headline=$(ls -t "$CKPT"/headline/"$ARCH"/version_*/best-*.ckpt 2>/dev/null | head -1)
[ -n "$headline" ] || { echo "no headline checkpoint; stopping"; exit 3; }

# 2. A sweep as a user runs it (layer-wise, 21 levels, fp32): the seconds from start to the last level.
step sweep_timing 90 $PYTHON sweep.py --checkpoint "$headline" --sparsities "$LEVELS" \
    --output_dir "$WORK/sweep_timing" $SWEEP_LIMIT || { echo "the sweep failed; stopping"; exit 3; }

# 3. Lightning against a plain loop on the same resident data; a sweep level's forward pass against the rest.
step bench 150 $PYTHON bench/bench.py --device cuda --data_dir "$DATA_DIR" --checkpoint "$headline" \
    --levels 0,0.5,0.9 --json "$WORK/bench-cuda.json" $BENCH_ARGS

# 4. The headline sweep: every method at 21 levels, each also after BatchNorm recalibration.
step sweep_headline 180 $PYTHON sweep.py --checkpoint "$headline" --sparsities "$LEVELS" \
    --methods layerwise,global,random,filters --bn_recalibrate 20 --output_dir "$WORK/sweep_headline" $SWEEP_LIMIT

# 5. Fine-tuning one epoch per level where pruning costs accuracy.
step sweep_finetune 120 $PYTHON sweep.py --checkpoint "$headline" --sparsities "$FT_LEVELS" \
    --methods layerwise,global --bn_recalibrate 20 --finetune_epochs 1 --output_dir "$WORK/sweep_finetune" $SWEEP_LIMIT

# 6. `python train.py --gpus 1` as the experiment has it (fp32, batch 128), two epochs timed.
step train_fp32 90 $PYTHON train.py --gpus "$GPUS" --epochs 2 --data_dir "$DATA_DIR" \
    --checkpoint_root "$CKPT/fp32" --log_root "$WORK/lightning_logs_fp32" $TRAIN_LIMIT

# 7. The fastest training path: bf16, channels-last, compiled, batch 512; three epochs timed.
step train_compiled 180 $PYTHON train.py --arch "$ARCH" --precision bf16-mixed --channels_last --compile \
    --batch_size 512 --epochs 3 --data_dir "$DATA_DIR" --checkpoint_root "$CKPT/compiled" \
    --log_root "$WORK/lightning_logs_compiled" $TRAIN_LIMIT

# 8. The sweep evaluated in bf16, its dense accuracy beside fp32's.
step sweep_bf16 60 $PYTHON sweep.py --checkpoint "$headline" --sparsities "$LEVELS" --precision bf16-mixed \
    --output_dir "$WORK/sweep_bf16" $SWEEP_LIMIT

echo "gpu_check: $(($(date +%s) - started)) s in all"
