"""Redraw a sweep's accuracy-against-sparsity figure (and its cost page) from its sweep.json, finished or cut short;
or one figure of several sweeps of the same checkpoint on the same images.

    python scripts/plot_sweep.py runs/sweep/sweep.json docs/figures/sweep.png --title "ResNet-20, 2 CPU cores"
    python scripts/plot_sweep.py runs/headline/test_knees runs/headline/test_80_3x4 docs/figures/headline.png \\
        --cost docs/figures/headline_cost.png --knee_rule confident

The rows are what the sweeps measured; the knees are found again from them with the rule asked for. Several sweeps
join into one set of rows: a row two sweeps measured alike is kept once (their dense rows must agree: one checkpoint
on the same images), and a curve two sweeps measured differently at a level is named apart by its sweep's folder
(`global+IT-LRR (test_80_3x4)`).
"""
from pathlib import Path

from magprune.cli import ArgumentParser, UsageError, one_line_errors
from magprune.core.stats import KNEE_RULES, is_dense
from magprune.report import plots
from magprune.report.summary import summarise
from magprune.sweep.store import read_sweep


def joined_rows(folders: list[Path]) -> list[dict]:
    """The rows of every sweep, a row several sweeps measured alike once; a curve whose sweeps measured a level
    differently (two routes' chains both named `global+IT-LRR`) named apart by its sweep's folder. The dense rows
    must agree: the sweeps are of one checkpoint on the same images, else a UsageError."""
    documents = [(folder, read_sweep(folder)["rows"]) for folder in folders]
    first: dict[tuple[str, float], dict] = {}
    differing = set()
    for folder, rows in documents:
        for row in rows:
            seen = first.setdefault((row["curve"], row["sparsity"]), row)
            if (seen["correct"], seen["total"]) != (row["correct"], row["total"]):
                if is_dense(row):
                    raise UsageError(f"{folder}: its dense network scores {row['correct']} of {row['total']}, an earlier "
                                     f"sweep's {seen['correct']} of {seen['total']}: not the same checkpoint on the same images")
                differing.add(row["curve"])
    joined, kept = [], set()
    for folder, rows in documents:
        for row in rows:
            if row["curve"] in differing:
                joined.append({**row, "curve": f"{row['curve']} ({Path(folder).resolve().name})"})
            elif (row["curve"], row["sparsity"]) not in kept:
                kept.add((row["curve"], row["sparsity"]))
                joined.append(row)
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
