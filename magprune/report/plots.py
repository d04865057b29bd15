"""The sweep's figures: accuracy against sparsity (all of it, and close to dense where the knees are decided), sparsity
within tolerance against the epochs of retraining spent, accuracy against bytes on disk, and layer sensitivity."""
import math
from collections import Counter

import numpy as np
from matplotlib.figure import Figure
from matplotlib.transforms import ScaledTranslation

from magprune.core.stats import dense_row, kept, margin95
from magprune.report.styles import QUANTIZE_MARKERS, RECOVERY_LINES, RETRAINING_LINES, method_colour
FIGURE_FILES = {"sweep/accuracy_vs_sparsity": "sweep.png", "sweep/accuracy_vs_bytes": "sweep_bytes.png",
                "sweep/sensitivity": "sensitivity.png", "sweep/sparsity_vs_retraining": "sweep_cost.png"}
FEW_LEVELS = 5  # a curve tested at fewer levels is drawn as its points: a line from 0% to 90% would read as measured
CLOSE_POINTS = 3  # the close-up panel spans dense accuracy +- this many points
SEED_OFFSET = 0.8  # how far right of its row's mean (in % of weights) each seed's own accuracy is drawn
ZERO_EPOCHS_AT = 0.25  # where rows without retraining sit on the log epochs axis, labelled "0": room for their knees side by side
# Renda, Frankle & Carbin 2020, "Comparing Rewinding and Fine-tuning in Neural Network Pruning" (ICLR), ResNet-20 on
# CIFAR-10: per route, the sparsity (%) kept within one point of their own dense network at each budget of retraining
# epochs. Their dense accuracy is not ours, so only the drops compare.
RENDA_2020 = {"dense_acc": 91.72, "routes": (
    ("iterative, learning-rate rewinding", ((50, 67.2), (210, 79.0), (630, 86.6), (1300, 89.3))),
    ("one-shot, then 10 epochs of fine-tuning", ((10, 67.2),)))}


def _is_chain(points: list[dict]) -> bool:
    return points[-1].get("recovery", "none").startswith("it-")


def _style(points: list[dict]) -> dict:
    """A colour per method, a line style per recovery or retraining, a marker per bit width or retraining (`styles`)."""
    method, recovery = points[-1].get("method"), points[-1].get("recovery", "none")
    if recovery.startswith("it-"):
        line_style, marker = RETRAINING_LINES.get(recovery.removeprefix("it-"), ("-", "o"))
    else:
        line_style, marker = RECOVERY_LINES.get(recovery, "-"), QUANTIZE_MARKERS.get(points[-1].get("quantize", 0), "o")
    return {"color": method_colour(method), "linestyle": line_style, "marker": marker}


def _curves(rows: list[dict]) -> dict[str, list[dict]]:
    """Each curve's rows by rising sparsity; a chain's from the dense network's row, where its steps began."""
    curves: dict[str, list[dict]] = {}
    for row in rows:
        curves.setdefault(row["curve"], []).append(row)
    dense = {row["method"]: row for row in rows if row["sparsity"] == 0 and row.get("recovery") == "none" and not row.get("quantize")}
    for points in curves.values():
        if _is_chain(points) and points[0]["method"] in dense:
            points.append(dense[points[0]["method"]])
    return {name: sorted(points, key=lambda row: row["sparsity"]) for name, points in curves.items()}


def accuracy_interval(row: dict, dense_acc: float) -> tuple[float, float]:
    """The row's 95% interval in accuracy points: its paired drop from dense turned into accuracy where the sweep
    measured it (image by image: several times tighter), else its accuracy +- `stats.margin95`."""
    if "paired_drop_high" in row:
        return dense_acc - row["paired_drop_high"], dense_acc - row["paired_drop_low"]
    margin = margin95(row)
    return row["test_acc"] - margin, row["test_acc"] + margin


def seed_accuracies(row: dict) -> list[float]:
    """Each seed's own accuracy where the row is the mean of several: `total` counts the test images once per seed."""
    seeds = row.get("seed_correct", [])
    return [100 * correct * len(seeds) / row["total"] for correct in seeds]


def _draw_curve(axes, name: str, points: list[dict], dense_acc: float, bars: bool) -> str:
    """One curve, its colour returned: a line through its rows where it has FEW_LEVELS levels or more; fewer, its
    markers alone, each with its 95% bar, so no straight line between far-apart levels reads as measured. `bars`
    gives every curve its bars."""
    style, few = _style(points), len(points) < FEW_LEVELS
    if few:
        style["linestyle"] = "none"
    levels, accuracies = [100 * row["sparsity"] for row in points], [row["test_acc"] for row in points]
    line, = axes.plot(levels, accuracies, markersize=5 if few or _is_chain(points) else 3, label=name, **style)
    if bars or few:
        intervals = [accuracy_interval(row, dense_acc) for row in points]
        # Float noise between a paired drop and the counts' accuracy must not make a bar's length negative, which matplotlib refuses.
        below = [max(0.0, accuracy - low) for accuracy, (low, _) in zip(accuracies, intervals)]
        above = [max(0.0, high - accuracy) for accuracy, (_, high) in zip(accuracies, intervals)]
        axes.errorbar(levels, accuracies, yerr=[below, above], fmt="none", ecolor=line.get_color(), elinewidth=1, capsize=2)
    return line.get_color()


def _circle_knee(axes, knee: dict | None, colour: str) -> None:
    if knee and knee["sparsity"] is not None:
        axes.plot(100 * knee["sparsity"], knee["test_acc"], marker="o", markersize=11, fillstyle="none", color=colour)


def draw_accuracy_vs_sparsity(axes, rows, dense_acc: float, tolerance: float, knees: dict, title: str) -> None:
    """Each curve in its 95% band (`stats.margin95`), or as its points where it has few levels; the dense accuracy and
    its tolerance band marked, each curve's knee circled."""
    axes.axhspan(dense_acc - tolerance, dense_acc, color="tab:green", alpha=0.12, label=f"within {tolerance:g} pt of dense")
    axes.axhline(dense_acc, color="black", linestyle="--", linewidth=1, label=f"dense {dense_acc:.2f}%")
    for name, points in _curves(rows).items():
        colour = _draw_curve(axes, name, points, dense_acc, bars=False)
        if len(points) >= FEW_LEVELS and all(row.get("test_acc_se") is not None for row in points):
            levels, margins = [100 * row["sparsity"] for row in points], [margin95(row) for row in points]
            axes.fill_between(levels, [row["test_acc"] - margin for row, margin in zip(points, margins)],
                              [row["test_acc"] + margin for row, margin in zip(points, margins)], color=colour, alpha=0.15, linewidth=0)
        _circle_knee(axes, knees.get(name), colour)
    axes.set(xlabel="weights removed (%)", ylabel="test accuracy (%), shaded or bars: 95% interval", title=title,
             xlim=(0, 100), ylim=(0, 100))
    axes.grid(alpha=0.3)


def draw_close_to_dense(axes, rows, dense_acc: float, tolerance: float, knees: dict, knee_rule: str) -> None:
    """Dense accuracy +- CLOSE_POINTS, where the knees are decided: every row at its mean with its 95% bar, each seed's
    own accuracy hollow beside it, the dense and tolerance lines, each curve's knee circled."""
    axes.axhline(dense_acc, color="black", linestyle="--", linewidth=1, label=f"dense {dense_acc:.2f}%")
    axes.axhline(dense_acc - tolerance, color="tab:green", linewidth=1, label=f"tolerance: dense - {tolerance:g} pt")
    for name, points in _curves(rows).items():
        colour = _draw_curve(axes, name, points, dense_acc, bars=True)
        for row in points:
            seeds = seed_accuracies(row)
            if seeds:
                axes.plot([100 * row["sparsity"] + SEED_OFFSET] * len(seeds), seeds, marker=_style(points)["marker"],
                          markersize=3, fillstyle="none", linestyle="none", color=colour, label="one seed (hollow, beside its mean)")
        _circle_knee(axes, knees.get(name), colour)
    axes.set(xlabel="weights removed (%)", ylabel="test accuracy (%), bars: 95% interval", xlim=(0, 100),
             ylim=(dense_acc - CLOSE_POINTS, dense_acc + CLOSE_POINTS), title=f"within {CLOSE_POINTS} pt of dense (knees: {knee_rule} rule)")
    axes.grid(alpha=0.3)


def plot_accuracy_vs_sparsity(rows, dense_acc: float, tolerance: float, knees: dict, title: str, knee_rule: str = "point"):
    """All of each curve (left) and the close-up where its knee is decided (right), one legend for both."""
    figure = Figure(figsize=(15, 5.8), dpi=110)
    whole, close = figure.subplots(1, 2)
    draw_accuracy_vs_sparsity(whole, rows, dense_acc, tolerance, knees, title)
    draw_close_to_dense(close, rows, dense_acc, tolerance, knees, knee_rule)
    entries = {}
    for axes in (whole, close):
        for handle, label in zip(*axes.get_legend_handles_labels()):
            entries.setdefault(label, handle)
    close.legend(entries.values(), entries.keys(), fontsize=8, loc="center left", bbox_to_anchor=(1.01, 0.5))
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


def frontier(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """The most removed at each budget or less: of the (epochs, sparsity) points, those that beat every cheaper one."""
    steps = []
    for epochs, sparsity in sorted(points, key=lambda point: (point[0], -point[1])):
        if not steps or sparsity > steps[-1][1]:
            steps.append((epochs, sparsity))
    return steps


def _draw_kept_rows(axes, rows, dense_acc: float, tolerance: float, knee_rule: str) -> dict[str, list]:
    """Every row within tolerance under the rule, at the epochs its curve spent to reach it (no retraining at
    ZERO_EPOCHS_AT); returns those (epochs, sparsity) points by curve."""
    within, dense = {}, dense_row(rows)
    for name, points in _curves(rows).items():
        within[name] = [(row.get("retrain_epochs") or ZERO_EPOCHS_AT, 100 * row["sparsity"]) for row in points
                        if row["curve"] == name and kept(row, dense, tolerance, knee_rule)]
        style = _style(points)
        if within[name]:
            axes.plot(*zip(*within[name]), marker=style["marker"], markersize=5, linestyle="none", color=style["color"], alpha=0.7)
    return within


def _draw_knees(axes, rows, knees: dict) -> None:
    """Each knee bigger, with a bar over its 95% range (no low end: 0; no high end: the knee), named beside it."""
    curves, sharing_epochs, sharing_point = _curves(rows), Counter(), Counter()
    for curve, (epochs, sparsity) in knee_costs(rows, knees).items():
        style, knee, epochs = _style(curves[curve]), knees[curve], epochs or ZERO_EPOCHS_AT
        low, high = 100 * (knee.get("sparsity_low") or 0), 100 * (knee.get("sparsity_high") or knee["sparsity"])
        # Knees at the same budget (all the one-shot curves at 0) step a few points apart on the page, so their bars don't overlap.
        beside = axes.transData + ScaledTranslation(4 * sharing_epochs[epochs] / 72, 0, axes.figure.dpi_scale_trans)
        line, = axes.plot(epochs, sparsity, marker=style["marker"], markersize=9, linestyle="none", color=style["color"], label=curve,
                          transform=beside)
        axes.errorbar(epochs, sparsity, yerr=[[max(0.0, sparsity - low)], [max(0.0, high - sparsity)]], fmt="none",
                      ecolor=line.get_color(), elinewidth=1.5, capsize=4, transform=beside)
        # Curves with the same knee at the same cost share a point: their names stack beside it rather than overprint.
        axes.annotate(curve, (epochs, sparsity), textcoords="offset points", fontsize=7,
                      xytext=(7 + 4 * sharing_epochs[epochs], 4 + 9 * sharing_point[epochs, sparsity]))
        sharing_epochs[epochs] += 1
        sharing_point[epochs, sparsity] += 1


def _draw_epochs_axis(axes, largest: float) -> None:
    """Log epochs, with the rows that spent none at ZERO_EPOCHS_AT, labelled 0 and set apart by a dotted line."""
    axes.set_xscale("log")
    decades = [10 ** power for power in range(math.ceil(math.log10(largest)) + 1)]
    axes.set_xticks([ZERO_EPOCHS_AT, *decades], ["0", *(f"{decade:,}" for decade in decades)])
    axes.minorticks_off()
    axes.axvline(math.sqrt(ZERO_EPOCHS_AT), color="grey", linewidth=0.8, linestyle=":")  # halfway to 1 on the log axis
    axes.set_xlim(ZERO_EPOCHS_AT / 1.6, largest * 1.6)


def plot_sparsity_against_cost(rows, dense_acc: float, tolerance: float, knees: dict, title: str, knee_rule: str = "point",
                               epoch_share: float = 1.0):
    """The field's question on one page: how much of the network can go within tolerance, against the epochs of
    retraining that cost. Every row within it under the knee rule at its curve's epochs (a chain's steps each at
    theirs), each knee with its range, the frontier across curves, and the route Renda et al. 2020 published."""
    figure = Figure(figsize=(10, 7.5), dpi=110)
    axes = figure.subplots()
    kept_by_curve = _draw_kept_rows(axes, rows, dense_acc, tolerance, knee_rule)
    kept = [point for points in kept_by_curve.values() for point in points]
    missing = [curve for curve in dict.fromkeys([*kept_by_curve, *knees]) if not kept_by_curve.get(curve)]
    _draw_knees(axes, rows, knees)
    if kept:
        steps = frontier(kept)
        steps += [(max(epochs for epochs, _ in kept), steps[-1][1])]  # the best so far holds to the largest budget spent
        axes.plot(*zip(*steps), color="black", linewidth=1.2, drawstyle="steps-post", zorder=1,
                  label=f"frontier: most removed within {tolerance:g} pt at this many epochs or fewer")
    for route, points in RENDA_2020["routes"]:
        axes.plot(*zip(*points), color="0.5", marker="*", markersize=8, drawstyle="steps-post", zorder=1,
                  label=f"Renda et al. 2020, published (their dense {RENDA_2020['dense_acc']:.2f}%): {route}")
    if missing:
        axes.text(0.02, 0.97, f"no level within {tolerance:g} pt: {', '.join(missing)}", transform=axes.transAxes, fontsize=7, va="top")
    axes.text(0.98, 0.02, f"within {tolerance:g} pt of each model's own dense, ours {dense_acc:.2f}% (Renda et al.: 1 pt of "
              f"{RENDA_2020['dense_acc']:.2f}%):\ndrops, not accuracies", transform=axes.transAxes, fontsize=8, ha="right", va="bottom")
    _draw_epochs_axis(axes, max([epochs for epochs, _ in kept] + [epochs for _, points in RENDA_2020["routes"] for epochs, _ in points]))
    # A retraining limited to part of the split (--finetune_batches 0.25) counts its short epochs: the axis says how short.
    share = f", each {epoch_share:.0%} of the training split" if epoch_share < 1 else ""
    axes.set(xlabel=f"epochs of retraining spent{share} (log scale; 0: none)", ylabel=f"weights removed within {tolerance:g} pt of dense (%)",
             title=f"{title}: how much can go, against what it costs (knees: {knee_rule} rule)", ylim=(0, 100))
    axes.grid(alpha=0.3)
    axes.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.11), ncol=2)
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
    dense_acc, knee_rule = summary["dense_acc"], summary.get("knee_rule", "point")  # sweeps before the rule: "point"
    one_shot = [row for row in rows if row["recovery"] == "none"]
    figures = {
        "sweep/accuracy_vs_sparsity": plot_accuracy_vs_sparsity(rows, dense_acc, summary["tolerance"], summary["knees"],
                                                                f"{arch}: accuracy vs sparsity ({knee_rule} rule)", knee_rule),
        "sweep/accuracy_vs_bytes": plot_accuracy_vs_bytes(rows if any("disk_bytes" in row for row in rows) else one_shot,
                                                          summary["dense_bytes"], f"{arch}: accuracy vs size ({knee_rule} rule)", dense_acc,
                                                          summary["tolerance"], summary.get("smallest_file")),
    }
    if any(row.get("retrain_epochs") for row in rows):
        figures["sweep/sparsity_vs_retraining"] = plot_sparsity_against_cost(rows, dense_acc, summary["tolerance"],
                                                                             summary["knees"], arch, knee_rule,
                                                                             summary.get("epoch_share", 1.0))
    if sensitivity:
        levels = sorted({row["sparsity"] for row in sensitivity})
        layers = list(dict.fromkeys(row["layer"] for row in sensitivity))
        cells = {(row["layer"], row["sparsity"]): row["test_acc"] for row in sensitivity}
        matrix = np.array([[cells[layer, level] for level in levels] for layer in layers])
        figures["sweep/sensitivity"] = plot_sensitivity(matrix, layers, levels, f"{arch}: one layer pruned at a time (L1)")
    for tag, figure in figures.items():
        figure.savefig(out_dir / FIGURE_FILES[tag])
    return figures
