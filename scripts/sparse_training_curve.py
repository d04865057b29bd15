"""Sparse from the start as a curve of its own: the models `train.py --prune_to S` trained, one per level, set into a sweep.

    python train.py --arch resnet20 --recipe fast --epochs 30 --prune_to 0.8 ...     # one run per level
    python scripts/sparse_training_curve.py runs/iterative checkpoints/resnet20/version_3/best*.ckpt ... \\
        --data_dir ../shared/data/cifar10-jpeg --output_dir runs/with_gradual

Each checkpoint is tested as it is (`sweep.py --sparsities 0` in a folder of its own, so with the sweep's own
test, test-time flip as the sweep had it), and its row joins the sweep's rows as the curve `gradual` at the sparsity its masks have, costing the
epochs it trained (Zhu & Gupta's schedule prunes while the network trains, so no dense training precedes it;
the chains' epochs come on top of the dense model's). Writes sweep.csv, sweep.json, sweep.png and
sweep_cost.png to --output_dir, the knees found again with the sweep's rule.
"""
import contextlib
import io
import json
from pathlib import Path

import sweep
from magprune.cli import ArgumentParser, UsageError, one_line_errors
from magprune.core.io import atomic_write, read_torch_file
from magprune.report import plots, tables
from magprune.report.summary import summarise
from magprune.sweep.store import csv_text, read_sweep


def flip_flag(flip_test: bool | None) -> list[str]:
    return [] if flip_test is None else ["--flip_test" if flip_test else "--no-flip_test"]


def gradual_row(checkpoint: Path, data_dir: str, out_dir: Path, flip_test: bool | None) -> dict:
    """The row of one sparse-trained checkpoint: its test as the sweep tests a level (with the sweep's test-time flip),
    its sparsity, the method that pruned it, its training epochs."""
    # The inner sweep's own report would call the checkpoint's masks 0% (it prunes nothing more): only its row counts.
    with contextlib.redirect_stdout(io.StringIO()):
        tested = sweep.main(["--checkpoint", str(checkpoint), "--data_dir", data_dir, "--sparsities", "0",
                             "--output_dir", str(out_dir), *flip_flag(flip_test)])
    row = dict(tested.store.rows[0])
    saved = read_torch_file(checkpoint, "checkpoint")
    method = saved["hyper_parameters"].get("prune_method", "unknown")  # checkpoints from before it was saved
    return {**row, "curve": "gradual", "method": method, "recovery": "gradual", "sparsity": round(row["achieved_sparsity"], 3),
            "retrain_epochs": saved["epoch"] + 1}


@one_line_errors
def main(argv=None):
    parser = ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("sweep", help="the sweep folder (or its sweep.json) whose curves the sparse-trained models join")
    parser.add_argument("checkpoints", nargs="+", help="checkpoints of train.py --prune_to, one per level")
    parser.add_argument("--data_dir", required=True, help="the test images the sweep used")
    parser.add_argument("--output_dir", required=True, help="where the joined sweep.csv, sweep.json and figures go")
    parser.add_argument("--tolerance", type=float, default=1.0, help="accuracy points below dense that count as kept")
    args = parser.parse_args(argv)
    document = read_sweep(Path(args.sweep))
    out_dir = Path(args.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = [row for row in document["rows"] if row["curve"] != "gradual"]
    for index, checkpoint in enumerate(args.checkpoints):
        row = gradual_row(Path(checkpoint), args.data_dir, out_dir / f"gradual_{index}", document["config"].get("flip_test"))
        if row["total"] != rows[0]["total"]:
            raise UsageError(f"{checkpoint} was tested on {row['total']} images, the sweep on {rows[0]['total']}: not one test set")
        print(f"gradual: {checkpoint}: {100 * row['sparsity']:g}% removed ({row['method']}), "
              f"{row['test_acc']:.2f} +- {row['test_acc_se']:.2f}%, {row['retrain_epochs']} epochs of training")
        rows.append(row)
    summary = summarise(rows, args.tolerance)
    atomic_write(out_dir / "sweep.csv", csv_text(rows))
    atomic_write(out_dir / "sweep.json", json.dumps({**document, "rows": rows, "summary": summary}, indent=1))
    arch = document["config"].get("arch", "")
    plots.plot_accuracy_vs_sparsity(rows, summary["dense_acc"], args.tolerance, summary["knees"], arch).savefig(out_dir / "sweep.png")
    plots.plot_sparsity_against_cost(rows, summary["dense_acc"], args.tolerance, summary["knees"], arch).savefig(out_dir / "sweep_cost.png")
    tables.print_table(rows, summary["knees"], summary["dense_acc"], args.tolerance)
    print(f"\nwrote {out_dir}/sweep.csv, sweep.json, sweep.png, sweep_cost.png")


if __name__ == "__main__":
    main()
