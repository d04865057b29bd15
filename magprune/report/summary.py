"""What a sweep's rows answer, as one summary: the dense accuracy, each curve's knee with its range and
what its masks save, and the smallest file within tolerance. `sweep.py`, `scripts/merge_sweeps.py` and
`scripts/plot_sweep.py` all summarise with `summarise`.
"""
from magprune.core.stats import dense_row, find_knees, knee_ranges, smallest_file
from magprune.errors import InputError


def summarise(rows: list[dict], tolerance: float, file_bytes=None, latency=None, rule: str = "point") -> dict:
    """The summary of `rows`, each knee found by the knee `rule` (`stats.KNEE_RULES`): `file_bytes` and `latency` as in
    `knee_summary` (measured only at the knees)."""
    dense = dense_row(rows)
    if dense is None:
        raise InputError("the rows hold no dense (0%, one-shot, float32) row to measure the knees against")
    knees = knee_summary(rows, find_knees(rows, dense, tolerance, rule), file_bytes, knee_ranges(rows, dense, tolerance), latency)
    summary = {"dense_acc": dense["test_acc"], "tolerance": tolerance, "knee_rule": rule, "knees": knees}
    summary.update({key: dense[key] for key in ("dense_bytes", "flops_dense") if key in dense})
    smallest = smallest_file(rows, dense, tolerance, rule)
    if smallest:
        summary["smallest_file"] = {key: smallest[key] for key in ("curve", "sparsity", "test_acc", "test_acc_se", "disk_bytes")}
        summary["smallest_file"]["times_smaller"] = dense["dense_bytes"] / smallest["disk_bytes"]
    return summary


def knee_summary(rows: list[dict], knees: dict, file_bytes=None, ranges: dict | None = None, latency=None) -> dict:
    """Each knee with what its masks save (recovery changes weights, not masks).

    `file_bytes(method, sparsity)`, when given, measures the compact export of a knee's network:
    the one compressed size the sweep reports, since compressing every level would cost more than testing it.
    `latency(method, sparsity)`, when given, times it the same way, only here (a dict of latencies, or empty).
    """
    measured = {(row["method"], row["sparsity"]): row for row in rows if row["recovery"] == "none" and not row.get("quantize")}
    keys = ("bitmask_bytes", "csr_bytes", "flops_sparse", "nonzero_weights", "slim_params", "slim_flops")
    summary = {}
    for curve, knee in knees.items():
        low, high = (ranges or {}).get(curve, (None, None))
        if knee is None:
            summary[curve] = {"sparsity": None, "achieved_sparsity": None, "test_acc": None,
                              "sparsity_low": low, "sparsity_high": high}
            continue
        entry = {key: knee[key] for key in ("sparsity", "achieved_sparsity", "test_acc", "test_acc_se", "correct", "total",
                                            "seeds", "paired_drop", "paired_drop_low", "paired_drop_high") if key in knee}
        entry.update(sparsity_low=low, sparsity_high=high)
        source = {**measured.get((knee["method"], knee["sparsity"]), {}), **knee}
        entry.update({key: source[key] for key in keys if key in source})
        if "disk_bytes" in knee:
            entry["disk_bytes"] = knee["disk_bytes"]
        elif file_bytes is not None:
            entry["disk_bytes"] = file_bytes(knee["method"], knee["sparsity"])
        if latency is not None and knee["sparsity"] > 0:
            entry.update(latency(knee["method"], knee["sparsity"]))
        summary[curve] = entry
    return summary
