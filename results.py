"""What a sweep's rows answer: the knee of each curve, exactly, and the tables that print and store it.

Accuracies are compared as integer counts (correct, total) and turned into percentages only to be
shown, so a level exactly `tolerance` points below dense is within it, whatever float rounding says.
"""
import csv
import io
from fractions import Fraction

RESULT_COLUMNS = ("curve", "method", "recovery", "sparsity", "achieved_sparsity", "test_acc", "correct", "total", "test_loss")


def within_tolerance(row: dict, dense: dict, tolerance: float) -> bool:
    """Exactly: correct/total >= dense_correct/dense_total - tolerance/100, in integer arithmetic.

    The tolerance is read as the decimal the user typed (1.0 is exactly one point), so a level
    exactly `tolerance` points below dense is within it.
    """
    points = Fraction(str(tolerance))
    return Fraction(row["correct"], row["total"]) * 100 >= Fraction(dense["correct"], dense["total"]) * 100 - points


def find_knees(rows: list[dict], dense: dict, tolerance: float) -> dict[str, dict | None]:
    """Per curve, the row of its knee: the largest level such that it and every level below it are within tolerance.

    A curve that falls out of the tolerance and comes back (noise, or a level BatchNorm happens to
    suit) has its knee before the first level that fell out: "can go" means every smaller cut is
    safe too, which is also what bisection assumes. None where even the smallest level is outside.
    """
    knees = {}
    for curve in dict.fromkeys(row["curve"] for row in rows):
        knee = None
        for row in sorted((row for row in rows if row["curve"] == curve), key=lambda row: row["sparsity"]):
            if not within_tolerance(row, dense, tolerance):
                break
            knee = row
        knees[curve] = knee
    return knees


def knee_summary(rows: list[dict], knees: dict, file_bytes=None) -> dict:
    """Each knee with what its masks save (recovery changes weights, not masks).

    `file_bytes(method, sparsity)`, when given, measures the compact export of a knee's network:
    the one compressed size the sweep reports, since compressing every level would cost more than testing it.
    """
    measured = {(row["method"], row["sparsity"]): row for row in rows if row["recovery"] == "none"}
    keys = ("bitmask_bytes", "csr_bytes", "flops_sparse", "nonzero_weights", "slim_params", "slim_flops",
            "dense_latency_ms", "slim_latency_ms")
    summary = {}
    for curve, knee in knees.items():
        if knee is None:
            summary[curve] = {"sparsity": None, "achieved_sparsity": None, "test_acc": None}
            continue
        entry = {key: knee[key] for key in ("sparsity", "achieved_sparsity", "test_acc", "correct", "total")}
        source = measured.get((knee["method"], knee["sparsity"]), {})
        entry.update({key: source[key] for key in keys if key in source})
        if file_bytes is not None:
            entry["disk_bytes"] = file_bytes(knee["method"], knee["sparsity"])
        summary[curve] = entry
    return summary


def csv_text(rows: list[dict]) -> str:
    """The rows as CSV: the result columns first, then whatever else the rows hold, sorted."""
    present = {key for row in rows for key in row}
    columns = [key for key in RESULT_COLUMNS if key in present] + sorted(present - set(RESULT_COLUMNS))
    stream = io.StringIO()
    writer = csv.DictWriter(stream, fieldnames=columns, lineterminator="\r\n")
    writer.writeheader()
    writer.writerows(rows)
    return stream.getvalue()


def print_table(rows: list[dict], knees: dict, dense_acc: float, tolerance: float) -> None:
    curves = sorted({row["curve"] for row in rows})
    levels = sorted({row["sparsity"] for row in rows})
    by_key = {(row["curve"], row["sparsity"]): row for row in rows}
    width = max(10, *(len(curve) + 2 for curve in curves))
    print("\ntest accuracy (%) by sparsity")
    print("sparsity".rjust(9) + "".join(curve.rjust(width) for curve in curves))
    for level in levels:
        cells = [by_key.get((curve, level)) for curve in curves]
        print(f"{100 * level:8.1f}%" + "".join((f"{cell['test_acc']:.2f}" if cell else "-").rjust(width) for cell in cells))
    print(f"\nlargest sparsity within {tolerance:g} points of dense ({dense_acc:.2f}%), and what it costs:")
    print(f"  {'curve':<{width}} {'sparsity':>9} {'accuracy':>9} {'on disk':>10} {'FLOPs':>10}")
    for curve in curves:
        knee = knees[curve]
        if knee["sparsity"] is None:
            print(f"  {curve:<{width}} {'none':>9}")
            continue
        size = f"{knee['disk_bytes'] / 1e6:.3f} MB" if knee.get("disk_bytes") else "-"
        flops = f"{knee['flops_sparse'] / 1e6:.1f} M" if knee.get("flops_sparse") else "-"
        # The achieved sparsity, not the level asked for: a checkpoint pruned in training starts sparse.
        print(f"  {curve:<{width}} {100 * knee['achieved_sparsity']:8.1f}% {knee['test_acc']:8.2f}% {size:>10} {flops:>10}")
