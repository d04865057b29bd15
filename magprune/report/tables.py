"""The console's view of a sweep: accuracy by curve and level, each knee with its range and cost."""
from magprune.core.stats import KNEE_RULES


def print_table(rows: list[dict], knees: dict, dense_acc: float, tolerance: float, rule: str = "point", split: str = "test") -> None:
    curves = sorted({row["curve"] for row in rows})
    levels = sorted({row["sparsity"] for row in rows})
    by_key = {(row["curve"], row["sparsity"]): row for row in rows}
    width = max(14, *(len(curve) + 2 for curve in curves))
    print(f"\n{'validation' if split == 'val' else 'test'} accuracy (%) +- standard error, by sparsity")
    print("sparsity".rjust(9) + "".join(curve.rjust(width) for curve in curves))
    for level in levels:
        cells = [by_key.get((curve, level)) for curve in curves]
        print(f"{100 * level:8.1f}%" + "".join((_accuracy(cell) if cell else "-").rjust(width) for cell in cells))
    print(f"\nlargest sparsity within {points(tolerance)} of dense ({dense_acc:.2f}%), knees by the {rule} rule ({KNEE_RULES[rule]}); "
          f"the range it could lie in (each accuracy anywhere in its 95% interval), its drop from dense measured image by "
          f"image with its 95% interval, and what it costs:")
    print(f"  {'curve':<{width}} {'sparsity':>9} {'range':>13} {'accuracy':>14} {'paired drop (95%)':>24} {'on disk':>10} {'FLOPs':>10}")
    for curve in curves:
        knee = knees[curve]
        low, high = knee.get("sparsity_low"), knee.get("sparsity_high")
        span = "none" if high is None else f"{'none' if low is None else percent(low)} to {percent(high)}%"
        if knee["sparsity"] is None:
            print(f"  {curve:<{width}} {'none':>9} {span:>13}")
            continue
        size = f"{knee['disk_bytes'] / 1e6:.3f} MB" if knee.get("disk_bytes") else "-"
        flops = f"{knee['flops_sparse'] / 1e6:.1f} M" if knee.get("flops_sparse") else "-"
        # The achieved sparsity, not the level asked for: a checkpoint pruned in training starts sparse.
        print(f"  {curve:<{width}} {100 * knee['achieved_sparsity']:8.1f}% {span:>13} {_accuracy(knee) + '%':>14} "
              f"{_drop(knee):>24} {size:>10} {flops:>10}")


def points(tolerance: float) -> str:
    return f"{tolerance:g} point" + ("" if tolerance == 1 else "s")


def percent(fraction: float) -> str:
    """A sparsity in percent to a tenth at most: 0.40625 is '40.6', 0.25 is '25'."""
    return f"{100 * fraction:.1f}".removesuffix(".0")


def _drop(row: dict) -> str:
    """The paired drop from dense and its 95% interval, with the number of seeds where there are several."""
    if "paired_drop" not in row:
        return "-"
    seeds = f", {row['seeds']} seeds" if row.get("seeds", 1) > 1 else ""
    return f"{row['paired_drop']:.2f} [{row['paired_drop_low']:.2f}, {row['paired_drop_high']:.2f}]{seeds}"


def _accuracy(row: dict) -> str:
    return f"{row['test_acc']:.2f}" + (f"+-{row['test_acc_se']:.2f}" if row.get("test_acc_se") is not None else "")


def print_summary(rows: list[dict], summary: dict) -> None:
    """The accuracy table, the knees, and what else the summary holds: the float32 reference, the smallest
    file within tolerance, the exported files and their ONNX check, the bisection's cost."""
    tolerance, dense_acc = summary["tolerance"], summary["dense_acc"]
    if "dense_acc_float32" in summary:
        print(f"dense accuracy: {dense_acc:.2f}% in {summary['precision']}, {summary['dense_acc_float32']:.2f}% in float32")
    print_table(rows, summary["knees"], dense_acc, tolerance, summary.get("knee_rule", "point"), summary.get("eval_split", "test"))
    smallest = summary.get("smallest_file")
    if smallest:
        print(f"\nsmallest file within {points(tolerance)} of dense: {smallest['curve']} at "
              f"{percent(smallest['sparsity'])}%, {smallest['disk_bytes'] / 1e3:.1f} kB, "
              f"{smallest['times_smaller']:.1f}x smaller than the float32 parameters ({summary['dense_bytes'] / 1e3:.1f} kB)")
    checked = summary.get("export")
    if checked:
        for written in checked["files"].values():
            print(f"exported {written['path']} ({written['bytes'] / 1e3:.1f} kB)")
        print(f"ONNX under onnxruntime: {checked['onnx_acc']:.2f}% against PyTorch's {checked['pytorch_acc']:.2f}% "
              f"on the same {checked['images']} test images")
    for curve, search in summary.get("knee_search", {}).items():
        print(f"  {curve}: knee {100 * search['sparsity']:.1f}% found in {search['test_passes']} test passes")
