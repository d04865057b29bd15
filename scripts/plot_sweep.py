"""Redraw a sweep's accuracy-against-sparsity figure from its sweep.json, finished or cut short.

    python scripts/plot_sweep.py runs/sweep/sweep.json docs/figures/sweep.png --title "ResNet-20, 2 CPU cores"

The rows are what the sweep measured; the knees are found again from them with the sweep's own rule.
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import plots  # noqa: E402
import results  # noqa: E402
from cli import ArgumentParser, UsageError, one_line_errors  # noqa: E402
from merge_sweeps import read_sweep  # noqa: E402  (scripts/ is on the path of a script run from it)


@one_line_errors
def main(argv=None):
    parser = ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("sweep_json", help="a sweep.json written by sweep.py")
    parser.add_argument("figure", help="the PNG to write")
    parser.add_argument("--title", default=None, help="figure title (default: the dense accuracy and the number of test images)")
    parser.add_argument("--tolerance", type=float, default=1.0, help="accuracy points below dense that count as kept")
    args = parser.parse_args(argv)
    rows = read_sweep(args.sweep_json)["rows"]
    dense = results.dense_row(rows)
    if dense is None:
        raise UsageError(f"{args.sweep_json} has no dense (0%) row to measure the knees against")
    knees = results.find_knees(rows, dense, args.tolerance)
    title = args.title or f"dense {dense['test_acc']:.2f}% on {dense['total']:,} test images"
    figure = plots.plot_accuracy_vs_sparsity(rows, dense["test_acc"], args.tolerance, knees, title)
    figure.savefig(args.figure)
    print(f"{args.figure}: {len({row['curve'] for row in rows})} curves, {len(rows)} rows")


if __name__ == "__main__":
    main()
