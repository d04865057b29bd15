"""Error bars over several trained models: merge the sweeps of K checkpoints of one network into one.

    python sweep.py --checkpoint checkpoints/resnet20/version_0/best-...ckpt --output_dir runs/model0
    python sweep.py --checkpoint checkpoints/resnet20/version_1/best-...ckpt --output_dir runs/model1
    python scripts/merge_sweeps.py runs/model0 runs/model1 --output_dir runs/models

Each accuracy becomes the mean over the models, its standard error the models' spread over sqrt K
with one model's binomial error (`stats.merge_models`), its 95% interval Student's t
(`stats.margin95`: K models estimate their spread only roughly); the knees and their ranges are
found from those. Writes sweep.csv, sweep.json (the sources and the merged rows) and sweep.png to
--output_dir.
"""
import json
from pathlib import Path

from magprune.cli import ArgumentParser, UsageError, one_line_errors
from magprune.core.io import atomic_write
from magprune.core.stats import merge_models
from magprune.report import plots, tables
from magprune.report.summary import summarise
from magprune.sweep.store import csv_text, read_sweep

# What must agree for the models' accuracies to be draws of one experiment.
SAME_EXPERIMENT = ("arch", "data_dir", "mean", "std", "limit_test_batches", "batch_size", "flip_test", "precision",
                   "include_classifier", "bn_recalibrate", "finetune_epochs", "finetune_lr", "finetune_batches", "seeds")


@one_line_errors
def main(argv=None):
    parser = ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("sweeps", nargs="+", help="sweep output folders (or their sweep.json), one per trained model")
    parser.add_argument("--output_dir", required=True, help="where the merged sweep.csv, sweep.json and sweep.png go")
    parser.add_argument("--tolerance", type=float, default=1.0, help="accuracy points below dense that count as kept")
    args = parser.parse_args(argv)
    if len(args.sweeps) < 2:
        raise UsageError("give the sweeps of at least two trained models")
    documents = [read_sweep(Path(folder)) for folder in args.sweeps]
    for name in SAME_EXPERIMENT:
        values = {json.dumps(document["config"].get(name)) for document in documents}
        if len(values) > 1:
            raise UsageError(f"the sweeps differ in {name} ({', '.join(sorted(values))}): not one experiment")
    rows = merge_models([document["rows"] for document in documents])
    summary = {**summarise(rows, args.tolerance), "models": len(documents)}
    out_dir = Path(args.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write(out_dir / "sweep.csv", csv_text(rows))
    atomic_write(out_dir / "sweep.json", json.dumps(
        {"sources": [document["config"].get("source") for document in documents], "rows": rows, "summary": summary}, indent=1))
    title = f"{documents[0]['config'].get('arch')}: mean of {len(documents)} trained models, 95% band"
    plots.plot_accuracy_vs_sparsity(rows, summary["dense_acc"], args.tolerance, summary["knees"], title).savefig(out_dir / "sweep.png")
    tables.print_table(rows, summary["knees"], summary["dense_acc"], args.tolerance)
    print(f"\nwrote {out_dir}/sweep.csv, sweep.json, sweep.png")


if __name__ == "__main__":
    main()
