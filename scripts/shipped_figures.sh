#!/usr/bin/env bash
# Every figure and table in docs/results.md of the shipped ResNet-20's sweeps, remade from
# checkpoints/resnet20_cifar10jpeg.ckpt with the commands docs/results.md shows, figures copied into
# docs/figures. Run it whenever the shipped model changes. Not here: its training curve
# (scripts/training_curve.py, from the training run's log) and the three-model figure
# (scripts/merge_sweeps.py, from the sweeps of three checkpoints). On 2 CPU cores: about 53 minutes for
# the default steps (runs/shipped/timings.txt: 1,891 + 301 + 986 s, part of it beside a CI run), 10-30
# more for each fine-tuning step (ftE: E epochs per level at the default rate; ftElr: at rate 0.05).
#
#   bash scripts/shipped_figures.sh [STEP ...]     # STEP: results demo sensitivity ft1 ft2 ft3 ft1lr ft2lr ft3lr (default: the first three)
#   DATA_DIR=path/to/cifar10 bash scripts/shipped_figures.sh results
#
# Each step writes its sweep to runs/shipped/<sweep>/ (git-ignored; this script's own, emptied before each
# sweep, as the weights may have changed), its log beside it, and the command and its wall time to
# runs/shipped/timings.txt, so the timings in docs/results.md can be read off one file.
set -euo pipefail
cd "$(dirname "$0")/.."
DATA_DIR=${DATA_DIR:-../shared/data/cifar10-jpeg}
CHECKPOINT=checkpoints/resnet20_cifar10jpeg.ckpt
FIGURES=docs/figures
PYTHON=${PYTHON:-python}
STEPS=${*:-results demo sensitivity}
for step in $STEPS; do
    case $step in
        results|demo|sensitivity|ft1|ft2|ft3|ft1lr|ft2lr|ft3lr) ;;
        *) echo "shipped_figures.sh: unknown step '$step' (results, demo, sensitivity, ft1, ft2, ft3, ft1lr, ft2lr, ft3lr)" >&2; exit 2 ;;
    esac
done
OUT=runs/shipped
mkdir -p "$OUT"

sweep() {  # sweep NAME FLAG...: one sweep into a fresh $OUT/NAME, timed
    local name=$1 started=$SECONDS
    shift
    rm -rf "${OUT:?}/$name"
    echo "$PYTHON sweep.py --checkpoint $CHECKPOINT $* --output_dir $OUT/$name" | tee -a "$OUT/timings.txt"
    "$PYTHON" sweep.py --checkpoint "$CHECKPOINT" "$@" --output_dir "$OUT/$name" > "$OUT/$name.log" 2>&1
    echo "  $name: $((SECONDS - started)) s" | tee -a "$OUT/timings.txt"
}

for step in $STEPS; do
    case $step in
        results)
            sweep results --data_dir "$DATA_DIR" --methods global,layerwise --bn_recalibrate 10 --quantize 8,4 \
                --sparsities 0,0.3,0.5,0.6,0.7,0.8,0.9 --visualize --export 0.5 --cpu_processes 2
            cp "$OUT"/results/{sweep.png,sweep_bytes.png,masks_global.gif,masks_layerwise.gif,layer_sparsity.png} "$FIGURES/" ;;
        demo)
            sweep demo --data_dir demo_data --methods layerwise,global,random,filters --cpu_processes 2 ;;
        sensitivity)
            sweep sensitivity --data_dir "$DATA_DIR" --sparsities 0 --sensitivity --limit_test_batches 10
            cp "$OUT/sensitivity/sensitivity.png" "$FIGURES/" ;;
        ft1)
            sweep ft_e1 --data_dir "$DATA_DIR" --methods global --sparsities 0,0.5,0.6,0.7,0.8 --bn_recalibrate 10 \
                --finetune_epochs 1 --quantize 4
            cp "$OUT/ft_e1/sweep_bytes.png" "$FIGURES/finetune_bytes.png" ;;
        ft2|ft3)
            sweep "ft_e${step#ft}" --data_dir "$DATA_DIR" --methods global --sparsities 0,0.6,0.7,0.8 --bn_recalibrate 10 \
                --finetune_epochs "${step#ft}" --quantize 4 ;;
        ft1lr|ft2lr|ft3lr)
            epochs=${step:2:1}
            sweep "ft_e${epochs}_lr05" --data_dir "$DATA_DIR" --methods global --sparsities 0,0.7,0.8 --bn_recalibrate 10 \
                --finetune_epochs "$epochs" --finetune_lr 0.05 --quantize 4 ;;
    esac
done
