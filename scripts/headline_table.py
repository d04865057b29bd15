"""The rows of one or more sweeps as the markdown table docs/headline.md shows: each level's seeds, their mean, its
paired drop from dense with the 95% interval, and how many seeds lie within the tolerance.

    python scripts/headline_table.py runs/headline/val_80_3x4 runs/headline/val_80_2x4 [--curves global+IT-LRR]
"""
from pathlib import Path

from magprune.cli import ArgumentParser, one_line_errors
from magprune.sweep.store import read_sweep


def table_rows(folder: Path, curves: set[str] | None, tolerance: float) -> list[str]:
    """One markdown line per row of the sweep in `folder` (of `curves`, if given) that has a paired drop."""
    document = read_sweep(folder)
    lines = []
    for row in document["rows"]:
        if "paired_drop" not in row or (curves and row["curve"] not in curves) or row["sparsity"] == 0:
            continue
        images = row["total"] // row.get("seeds", 1)
        seeds = row.get("seed_correct", [row["correct"]])
        drops = row.get("seed_drops", [row["paired_drop"]])
        within = sum(drop <= tolerance for drop in drops)
        lines.append(f"| {folder.name} | {row['curve']} | {100 * row['sparsity']:g}% | {row.get('retrain_epochs', 0)} | "
                     f"{', '.join(f'{100 * correct / images:.2f}' for correct in seeds)} | {row['test_acc']:.2f} | "
                     f"{row['paired_drop']:.2f} [{row['paired_drop_low']:.2f}, {row['paired_drop_high']:.2f}] | "
                     f"{within} of {len(drops)} |")
    return lines


@one_line_errors
def main(argv=None) -> None:
    parser = ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("folders", nargs="+", type=Path, help="sweep folders (each with its sweep.json and answers/)")
    parser.add_argument("--curves", help="comma-separated curves to show (default: all)")
    parser.add_argument("--tolerance", type=float, default=1.0, help="points of drop that count as within (default 1)")
    args = parser.parse_args(argv)
    curves = set(args.curves.split(",")) if args.curves else None
    lines = [line for folder in args.folders for line in table_rows(folder, curves, args.tolerance)]  # every folder read first
    print("| sweep | curve | level | epochs | each seed (%) | mean (%) | paired drop [95%] | seeds within |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
