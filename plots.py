"""The sweep's figures: accuracy against sparsity and against bytes on disk, and layer sensitivity."""
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (the backend must be chosen first)
import numpy as np  # noqa: E402

from pruning import METHODS  # noqa: E402

# One colour per method (from its registry entry), one line style per recovery, so twelve curves stay tellable apart.
RECOVERY_STYLES = {"none": "-", "bn": "--", "finetune": ":"}
FIGURE_FILES = {"sweep/accuracy_vs_sparsity": "sweep.png", "sweep/accuracy_vs_bytes": "sweep_bytes.png",
                "sweep/sensitivity": "sensitivity.png"}


def _style(points: list[dict]) -> dict:
    method, recovery = points[0].get("method"), points[0].get("recovery", "none")
    return {"color": METHODS[method].colour if method in METHODS else None, "linestyle": RECOVERY_STYLES.get(recovery, "-")}


def _curves(rows: list[dict]) -> dict[str, list[dict]]:
    curves: dict[str, list[dict]] = {}
    for row in rows:
        curves.setdefault(row["curve"], []).append(row)
    return {name: sorted(points, key=lambda row: row["sparsity"]) for name, points in curves.items()}


def plot_accuracy_vs_sparsity(rows, dense_acc: float, tolerance: float, knees: dict, title: str):
    """One line per curve; the dense accuracy and its tolerance band marked, each curve's knee circled."""
    figure, axes = plt.subplots(figsize=(9, 5.5), dpi=110)
    axes.axhspan(dense_acc - tolerance, dense_acc, color="tab:green", alpha=0.12, label=f"within {tolerance:g} pt of dense")
    axes.axhline(dense_acc, color="black", linestyle="--", linewidth=1, label=f"dense {dense_acc:.2f}%")
    for name, points in _curves(rows).items():
        line, = axes.plot(
            [100 * row["sparsity"] for row in points], [row["test_acc"] for row in points], marker="o", markersize=3,
            label=name, **_style(points),
        )
        knee = knees.get(name)
        if knee and knee["sparsity"] is not None:
            axes.plot(100 * knee["sparsity"], knee["test_acc"], marker="o", markersize=11, fillstyle="none", color=line.get_color())
    axes.set(xlabel="weights removed (%)", ylabel="test accuracy (%)", title=title, xlim=(0, 100), ylim=(0, 100))
    axes.grid(alpha=0.3)
    axes.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.01, 0.5))
    figure.tight_layout()
    return figure


def plot_accuracy_vs_bytes(rows, dense_bytes: int, title: str):
    """Accuracy against the bytes of the weights as bitmask + float32 non-zeros, one line per curve."""
    figure, axes = plt.subplots(figsize=(8, 5), dpi=110)
    for name, points in _curves(rows).items():
        points = [row for row in points if row.get("bitmask_bytes")]
        if points:
            axes.plot([row["bitmask_bytes"] / 1e6 for row in points], [row["test_acc"] for row in points], marker="o", markersize=3, label=name, **_style(points))
    axes.axvline(dense_bytes / 1e6, color="black", linestyle="--", linewidth=1, label=f"dense float32 {dense_bytes / 1e6:.2f} MB")
    axes.set(xlabel="parameters as bitmask + float32 non-zeros (MB)", ylabel="test accuracy (%)", title=title, ylim=(0, 100))
    axes.grid(alpha=0.3)
    axes.legend(fontsize=8)
    figure.tight_layout()
    return figure


def plot_sensitivity(accuracy: np.ndarray, layers: list[str], sparsities: list[float], title: str):
    """Heat-map of test accuracy with one layer pruned at a time: rows are layers, columns sparsity levels."""
    figure, axes = plt.subplots(figsize=(1.2 + 0.55 * len(sparsities), 1.2 + 0.28 * len(layers)), dpi=110)
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
        "sweep/accuracy_vs_bytes": plot_accuracy_vs_bytes(one_shot, summary["dense_bytes"], f"{arch}: accuracy vs size"),
    }
    if sensitivity:
        levels = sorted({row["sparsity"] for row in sensitivity})
        layers = list(dict.fromkeys(row["layer"] for row in sensitivity))
        cells = {(row["layer"], row["sparsity"]): row["test_acc"] for row in sensitivity}
        matrix = np.array([[cells[layer, level] for level in levels] for layer in layers])
        figures["sweep/sensitivity"] = plot_sensitivity(matrix, layers, levels, f"{arch}: one layer pruned at a time (L1)")
    for tag, figure in figures.items():
        figure.savefig(out_dir / FIGURE_FILES[tag])
    return figures
