"""Redraw a sweep's accuracy-against-sparsity figure from its sweep.json, finished or cut short.

    python scripts/plot_sweep.py runs/sweep/sweep.json docs/figures/sweep.png --title "ResNet-20, 2 CPU cores"

The rows are what the sweep measured; the knees are found again from them with the sweep's own rule.
"""
from pathlib import Path

from magprune.cli import ArgumentParser, one_line_errors
from magprune.report import plots
from magprune.report.summary import summarise
from magprune.sweep.store import read_sweep


@one_line_errors
def main(argv=None):
    parser = ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("sweep_json", help="a sweep.json written by sweep.py")
    parser.add_argument("figure", help="the PNG to write")
    parser.add_argument("--title", default=None, help="figure title (default: the dense accuracy and the number of test images)")
    parser.add_argument("--tolerance", type=float, default=1.0, help="accuracy points below dense that count as kept")
    args = parser.parse_args(argv)
    rows = read_sweep(Path(args.sweep_json))["rows"]
    summary = summarise(rows, args.tolerance)
    total = next(row["total"] for row in rows if row["sparsity"] == 0 and row["recovery"] == "none")
    title = args.title or f"dense {summary['dense_acc']:.2f}% on {total:,} test images"
    figure = plots.plot_accuracy_vs_sparsity(rows, summary["dense_acc"], args.tolerance, summary["knees"], title)
    figure.savefig(args.figure)
    print(f"{args.figure}: {len({row['curve'] for row in rows})} curves, {len(rows)} rows")


if __name__ == "__main__":
    main()
