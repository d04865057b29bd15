"""Draw a training run's curves from its TensorBoard log: validation accuracy and training loss per epoch.

    python scripts/training_curve.py lightning_logs/train/version_0 docs/figures/shipped_training.png

Reads the event files with TensorBoard's own EventAccumulator, so the figure shows what was logged.
"""
import argparse

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("run", help="a train.py TensorBoard run folder (lightning_logs/train/version_N)")
    parser.add_argument("figure", help="the PNG to write")
    args = parser.parse_args(argv)
    events = EventAccumulator(args.run, size_guidance={"scalars": 0})
    events.Reload()
    epochs = {event.step: event.value for event in events.Scalars("epoch")}
    accuracy = [(int(epochs.get(event.step, 0)) + 1, 100 * event.value) for event in events.Scalars("val/acc")]
    loss = [(int(epochs.get(event.step, 0)) + 1, event.value) for event in events.Scalars("train/loss_epoch")]
    figure, left = plt.subplots(figsize=(7, 4), dpi=110)
    left.plot(*zip(*accuracy), marker="o", markersize=3, color="tab:blue", label="validation accuracy")
    left.set(xlabel="epoch", ylabel="validation accuracy (%)", ylim=(0, 100))
    left.grid(alpha=0.3)
    right = left.twinx()
    right.plot(*zip(*loss), color="tab:orange", label="training loss (label-smoothed)")
    right.set_ylabel("training loss")
    figure.legend(loc="center right", bbox_to_anchor=(0.88, 0.5), fontsize=8)
    best_epoch, best = max(accuracy, key=lambda point: point[1])
    left.set_title(f"best validation accuracy {best:.2f}% (epoch {best_epoch} of {len(accuracy)}, counting from 1)")
    figure.tight_layout()
    figure.savefig(args.figure)
    print(f"{args.figure}: {len(accuracy)} epochs, best validation accuracy {best:.2f}% at epoch {best_epoch}")


if __name__ == "__main__":
    main()
