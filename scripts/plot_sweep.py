"""Redraw a sweep's accuracy-against-sparsity figure (and its cost page) from its sweep.json, finished or cut short;
or one figure of several sweeps of the same checkpoint on the same images.

    python scripts/plot_sweep.py runs/sweep/sweep.json docs/figures/sweep.png --title "ResNet-20, 2 CPU cores"
    python scripts/plot_sweep.py runs/headline/test_knees runs/headline/test_80_3x4 docs/figures/headline.png \\
        --cost docs/figures/headline_cost.png --knee_rule confident

The rows are what the sweeps measured; the knees are found again from them with the rule asked for. Several sweeps
join into one set of rows: the first one's dense row is the reference (each must have tested the same images), and
a curve two sweeps both have is named apart by its sweep's folder (`global+IT-LRR (test_80_3x4)`).
"""
from pathlib import Path

from magprune.cli import ArgumentParser, UsageError, one_line_errors
from magprune.core.stats import KNEE_RULES, is_dense
from magprune.report import plots
from magprune.report.summary import summarise
from magprune.sweep.store import read_sweep


def joined_rows(folders: list[Path]) -> list[dict]:
    """The rows of every sweep, each method's dense row once (the same in every sweep, or a UsageError), a curve several
    sweeps share named apart by its sweep's folder."""
    documents = [(folder, read_sweep(folder)["rows"]) for folder in folders]
    owners: dict[str, set[Path]] = {}
    for folder, rows in documents:
        for row in rows:
            if not is_dense(row):
                owners.setdefault(row["curve"], set()).add(folder)
    joined, dense = [], {}  # dense: each method's dense row, from the first sweep that has it
    for folder, rows in documents:
        for row in rows:
            if is_dense(row):
                first = dense.setdefault(row["curve"], row)
                if (row["correct"], row["total"]) != (first["correct"], first["total"]):
                    raise UsageError(f"{folder}: its dense network scores {row['correct']} of {row['total']}, an earlier sweep's "
                                     f"{first['correct']} of {first['total']}: not the same checkpoint on the same images")
                if first is not row:
                    continue
            shared = not is_dense(row) and len(owners[row["curve"]]) > 1
            joined.append({**row, "curve": f"{row['curve']} ({Path(folder).resolve().name})"} if shared else row)
    return joined


@one_line_errors
def main(argv=None):
    parser = ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("sweeps", nargs="+", help="sweep folders or sweep.json files written by sweep.py, then the PNG to write")
    parser.add_argument("--cost", help="also write the cost page (sparsity within tolerance against epochs of retraining) here")
    parser.add_argument("--title", default=None, help="figure title (default: the dense accuracy and the number of images)")
    parser.add_argument("--tolerance", type=float, default=1.0, help="accuracy points below dense that count as kept")
    parser.add_argument("--knee_rule", choices=tuple(KNEE_RULES), default="point", help="how a knee is found: "
                        + "; ".join(f"{name}: {text}" for name, text in KNEE_RULES.items()))
    args = parser.parse_args(argv)
    if len(args.sweeps) < 2:
        parser.error("give at least one sweep and the figure to write")
    *sweeps, figure_path = args.sweeps
    rows = joined_rows([Path(sweep) for sweep in sweeps])
    summary = summarise(rows, args.tolerance, rule=args.knee_rule)
    total = next(row["total"] for row in rows if is_dense(row))
    title = args.title or f"dense {summary['dense_acc']:.2f}% on {total:,} images"
    plots.plot_accuracy_vs_sparsity(rows, summary["dense_acc"], args.tolerance, summary["knees"], title,
                                    args.knee_rule).savefig(figure_path)
    if args.cost:
        plots.plot_sparsity_against_cost(rows, summary["dense_acc"], args.tolerance, summary["knees"], title,
                                         args.knee_rule).savefig(args.cost)
    print(f"{figure_path}: {len({row['curve'] for row in rows})} curves, {len(rows)} rows")


if __name__ == "__main__":
    main()
