"""The sweep's figures: accuracy against sparsity and against bytes on disk, and layer sensitivity."""
from collections import Counter

import numpy as np
from matplotlib.figure import Figure

from magprune.core.pruning import METHODS
from magprune.core.stats import margin95
from magprune.sweep.chains import RETRAININGS
from magprune.sweep.recoveries import RECOVERIES

QUANTIZE_MARKERS = {0: "o", 8: "s", 4: "^"}  # float32 weights, 8 bits, 4 bits
FIGURE_FILES = {"sweep/accuracy_vs_sparsity": "sweep.png", "sweep/accuracy_vs_bytes": "sweep_bytes.png",
                "sweep/sensitivity": "sensitivity.png", "sweep/sparsity_vs_retraining": "sweep_cost.png"}


def _retraining(points: list[dict]):
    recovery = points[-1].get("recovery", "none")
    return RETRAININGS.get(recovery.removeprefix("it-")) if recovery.startswith("it-") else None


def _style(points: list[dict]) -> dict:
    """A colour per method, a line style per recovery or retraining (each from its registry entry), a marker per
    bit width or retraining."""
    method, recovery, retraining = points[-1].get("method"), points[-1].get("recovery", "none"), _retraining(points)
    line_style = retraining.line_style if retraining else RECOVERIES[recovery].line_style if recovery in RECOVERIES else "-"
    marker = retraining.marker if retraining else QUANTIZE_MARKERS.get(points[-1].get("quantize", 0), "o")
    return {"color": METHODS[method].colour if method in METHODS else None, "linestyle": line_style, "marker": marker}


def _curves(rows: list[dict]) -> dict[str, list[dict]]:
    """Each curve's rows by rising sparsity; a chain's from the dense network's row, where its steps began."""
    curves: dict[str, list[dict]] = {}
    for row in rows:
        curves.setdefault(row["curve"], []).append(row)
    dense = {row["method"]: row for row in rows if row["sparsity"] == 0 and row.get("recovery") == "none" and not row.get("quantize")}
    for points in curves.values():
        if _retraining(points) and points[0]["method"] in dense:
            points.append(dense[points[0]["method"]])
    return {name: sorted(points, key=lambda row: row["sparsity"]) for name, points in curves.items()}


def draw_accuracy_vs_sparsity(axes, rows, dense_acc: float, tolerance: float, knees: dict, title: str) -> None:
    """One line per curve in its 95% band (`stats.margin95`); the dense accuracy and its tolerance band marked, each curve's knee circled."""
    axes.axhspan(dense_acc - tolerance, dense_acc, color="tab:green", alpha=0.12, label=f"within {tolerance:g} pt of dense")
    axes.axhline(dense_acc, color="black", linestyle="--", linewidth=1, label=f"dense {dense_acc:.2f}%")
    for name, points in _curves(rows).items():
        levels = [100 * row["sparsity"] for row in points]
        line, = axes.plot(levels, [row["test_acc"] for row in points], markersize=5 if _retraining(points) else 3, label=name,
                          **_style(points))
        if all(row.get("test_acc_se") is not None for row in points):
            margins = [margin95(row) for row in points]
            axes.fill_between(levels, [row["test_acc"] - margin for row, margin in zip(points, margins)],
                              [row["test_acc"] + margin for row, margin in zip(points, margins)],
                              color=line.get_color(), alpha=0.15, linewidth=0)
        knee = knees.get(name)
        if knee and knee["sparsity"] is not None:
            axes.plot(100 * knee["sparsity"], knee["test_acc"], marker="o", markersize=11, fillstyle="none", color=line.get_color())
    axes.set(xlabel="weights removed (%)", ylabel="test accuracy (%), shaded: 95% interval", title=title, xlim=(0, 100), ylim=(0, 100))
    axes.grid(alpha=0.3)


def plot_accuracy_vs_sparsity(rows, dense_acc: float, tolerance: float, knees: dict, title: str):
    figure = Figure(figsize=(9, 5.5), dpi=110)
    axes = figure.subplots()
    draw_accuracy_vs_sparsity(axes, rows, dense_acc, tolerance, knees, title)
    axes.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.01, 0.5))
    figure.tight_layout()
    return figure


def knee_costs(rows: list[dict], knees: dict) -> dict[str, tuple[float, float]]:
    """Per curve with a knee: (epochs of retraining spent to reach it, the knee's sparsity in %)."""
    costs = {}
    for curve, knee in knees.items():
        if knee and knee["sparsity"] is not None:
            row = next(row for row in rows if row["curve"] == curve and row["sparsity"] == knee["sparsity"])
            costs[curve] = (row.get("retrain_epochs", 0), 100 * knee["sparsity"])
    return costs


def plot_sparsity_against_cost(rows, dense_acc: float, tolerance: float, knees: dict, title: str):
    """The field's question on one page: every curve's accuracy against sparsity (left), and how much of the network
    each can remove within tolerance against the epochs of retraining that cost (right)."""
    figure = Figure(figsize=(15, 5.8), dpi=110)
    left, right = figure.subplots(1, 2, gridspec_kw={"width_ratios": [1.35, 1]})
    draw_accuracy_vs_sparsity(left, rows, dense_acc, tolerance, knees, f"{title}: accuracy against sparsity")
    left.legend(fontsize=7, loc="lower left")
    curves, labelled = _curves(rows), Counter()
    for curve, (epochs, sparsity) in knee_costs(rows, knees).items():
        style = _style(curves[curve])
        right.plot(epochs, sparsity, marker=style["marker"], markersize=8, linestyle="none", color=style["color"], label=curve)
        # Curves with the same knee at the same cost share a point: their names stack above it rather than overprint.
        right.annotate(curve, (epochs, sparsity), textcoords="offset points", xytext=(6, 4 + 9 * labelled[epochs, sparsity]), fontsize=7)
        labelled[epochs, sparsity] += 1
    missing = [curve for curve, knee in knees.items() if not knee or knee["sparsity"] is None]
    if missing:
        right.text(0.02, 0.97, f"no level within {tolerance:g} pt: {', '.join(missing)}", transform=right.transAxes, fontsize=7, va="top")
    right.set(xlabel="epochs of retraining spent to reach the knee", ylabel=f"knee: weights removed within {tolerance:g} pt (%)",
              title="how much can go, against what it costs", ylim=(0, 100))
    right.set_xlim(left=-1)
    right.grid(alpha=0.3)
    figure.tight_layout()
    return figure


def plot_accuracy_vs_bytes(rows, dense_bytes: int, title: str, dense_acc: float | None = None, tolerance: float = 1.0,
                           smallest: dict | None = None):
    """Accuracy against size, one line per curve: the measured export file (log axis) where the rows have it,
    else the bytes of the weights as bitmask + float32 non-zeros. With `dense_acc`, the band within
    `tolerance` of it is shaded; `smallest` (a row, `summary["smallest_file"]`) is circled."""
    measured = any("disk_bytes" in row for row in rows)
    key = "disk_bytes" if measured else "bitmask_bytes"
    figure = Figure(figsize=(9, 5.5), dpi=110)
    axes = figure.subplots()
    if dense_acc is not None:
        axes.axhspan(dense_acc - tolerance, dense_acc, color="tab:green", alpha=0.12, label=f"within {tolerance:g} pt of dense")
    if smallest is not None and measured:
        axes.plot(smallest["disk_bytes"] / 1e3, smallest["test_acc"], marker="o", markersize=12, fillstyle="none",
                  color="black", linestyle="none", label=f"smallest within {tolerance:g} pt: {smallest['curve']}")
    for name, points in _curves(rows).items():
        points = [row for row in points if row.get(key)]
        if points:
            axes.plot([row[key] / 1e3 for row in points], [row["test_acc"] for row in points], markersize=3, label=name, **_style(points))
    axes.axvline(dense_bytes / 1e3, color="black", linestyle="--", linewidth=1, label=f"float32 parameters {dense_bytes / 1e3:.0f} kB")
    if measured:
        axes.axvline(dense_bytes / 1e4, color="grey", linestyle=":", linewidth=1, label=f"10x smaller: {dense_bytes / 1e4:.0f} kB")
        axes.set_xscale("log")
    xlabel = "export file, compressed (kB, log scale)" if measured else "parameters as bitmask + float32 non-zeros (kB)"
    axes.set(xlabel=xlabel, ylabel="test accuracy (%)", title=title, ylim=(0, 100))
    axes.grid(alpha=0.3, which="both")
    axes.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    figure.tight_layout()
    return figure


def plot_sensitivity(accuracy: np.ndarray, layers: list[str], sparsities: list[float], title: str):
    """Heat-map of test accuracy with one layer pruned at a time: rows are layers, columns sparsity levels."""
    figure = Figure(figsize=(1.2 + 0.55 * len(sparsities), 1.2 + 0.28 * len(layers)), dpi=110)
    axes = figure.subplots()
    image = axes.imshow(accuracy, aspect="auto", cmap="viridis", vmin=0, vmax=100)
    axes.set_xticks(range(len(sparsities)), [f"{100 * level:g}" for level in sparsities])
    axes.set_yticks(range(len(layers)), layers, fontsize=7)
    for (row, column), value in np.ndenumerate(accuracy):
        axes.text(column, row, f"{value:.0f}", ha="center", va="center", fontsize=6, color="white" if value < 60 else "black")
    axes.set(xlabel="sparsity of that one layer (%)", ylabel="layer pruned", title=title)
    figure.colorbar(image, ax=axes, label="test accuracy (%)")
    figure.tight_layout()
    return figure


def sweep_figures(rows: list[dict], sensitivity: list[dict], summary: dict, arch: str, out_dir) -> dict:
    """The sweep's figures by TensorBoard tag, each also saved as a PNG in `out_dir`."""
    dense_acc = summary["dense_acc"]
    one_shot = [row for row in rows if row["recovery"] == "none"]
    figures = {
        "sweep/accuracy_vs_sparsity": plot_accuracy_vs_sparsity(rows, dense_acc, summary["tolerance"], summary["knees"],
                                                                f"{arch}: accuracy vs sparsity"),
        "sweep/accuracy_vs_bytes": plot_accuracy_vs_bytes(rows if any("disk_bytes" in row for row in rows) else one_shot,
                                                          summary["dense_bytes"], f"{arch}: accuracy vs size", dense_acc,
                                                          summary["tolerance"], summary.get("smallest_file")),
    }
    if any(row.get("retrain_epochs") for row in rows):
        figures["sweep/sparsity_vs_retraining"] = plot_sparsity_against_cost(rows, dense_acc, summary["tolerance"], summary["knees"], arch)
    if sensitivity:
        levels = sorted({row["sparsity"] for row in sensitivity})
        layers = list(dict.fromkeys(row["layer"] for row in sensitivity))
        cells = {(row["layer"], row["sparsity"]): row["test_acc"] for row in sensitivity}
        matrix = np.array([[cells[layer, level] for level in levels] for layer in layers])
        figures["sweep/sensitivity"] = plot_sensitivity(matrix, layers, levels, f"{arch}: one layer pruned at a time (L1)")
    for tag, figure in figures.items():
        figure.savefig(out_dir / FIGURE_FILES[tag])
    return figures
