"""Pictures of the real model's masks, for the sparsity sweep.

After the sweep, `write_visuals` prunes a fresh copy of the dense model once per method and level
(with the masks the sweep tested: the same method, level and seed) and draws it:

    magnitudes = weight_magnitudes(model, default_layers(model))
    log_weight_histograms(experiment, method, sparsity, model)
    frames.append((sparsity, test_accuracy, magnitudes))
    ...
    images = write_mask_gif(frames, f"masks_{method}.gif", title=method)
    for (sparsity, _, _), image in zip(frames, images):
        log_mask_frame(experiment, method, sparsity, image)
    write_layer_sparsity_chart({method: [(sparsity, report), ...], ...}, "layer_sparsity.png")

`experiment` is a `torch.utils.tensorboard.SummaryWriter`, which is what Lightning's
`TensorBoardLogger.experiment` is; TensorBoard steps are the sparsity in tenths of a percent.
"""
import copy
from pathlib import Path

import matplotlib
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from PIL import Image
from torch import nn
from tqdm import tqdm

from magprune.core.pruning import apply_pruning
from magprune.sweep.config import sparsity_step

# Light grey is nowhere in viridis, so a pruned weight never reads as a small surviving one.
BLANK_COLOUR = (0.85, 0.85, 0.85)
HEATMAP = matplotlib.colormaps.get_cmap("viridis").with_extremes(bad=BLANK_COLOUR)
# The colour scale ends at this percentile of the densest frame: a few large weights would
# otherwise squeeze everything else into the darkest colours.
SCALE_PERCENTILE = 99
FRAME_DPI = 80
FRAME_MILLISECONDS = 700
LAST_FRAME_MILLISECONDS = 2500
# A shared palette keeps the colours steady from frame to frame; few colours keep the GIF small.
GIF_COLOURS = 64
CHART_LEVELS = 5


def default_layers(model: nn.Module) -> list[str]:
    """Names of the first Conv2d, the middle Conv2d and the classifier (the last Linear), in model order."""
    convs = [name for name, module in model.named_modules() if isinstance(module, nn.Conv2d)]
    linears = [name for name, module in model.named_modules() if isinstance(module, nn.Linear)]
    if not convs or not linears:
        raise ValueError("the model needs at least one Conv2d and one Linear to pick default layers from")
    names = [convs[0], convs[len(convs) // 2], linears[-1]]
    return list(dict.fromkeys(names))


def weight_magnitudes(model: nn.Module, layer_names: list[str]) -> dict[str, np.ndarray]:
    """|weight| of each named layer as a 2-D float array, pruned (zero) weights as NaN.

    Rows are output channels (a Linear's outputs); columns flatten the rest, in*kh*kw for a conv.
    """
    magnitudes = {}
    for name in layer_names:
        weight = model.get_submodule(name).weight.detach().float().cpu()
        magnitude = weight.reshape(weight.shape[0], -1).abs().numpy()
        magnitudes[name] = np.where(magnitude == 0, np.nan, magnitude)
    return magnitudes


def _colour_scale_tops(frames: list) -> dict[str, float]:
    """Per layer, the top of the colour scale shared by every frame, from the frame that keeps most weights."""
    tops = {}
    for name in frames[0][2]:
        densest = max((magnitudes[name] for _, _, magnitudes in frames), key=lambda m: np.isfinite(m).sum())
        surviving = densest[np.isfinite(densest)]
        tops[name] = float(np.percentile(surviving, SCALE_PERCENTILE)) if surviving.size else 1.0
    return tops


def _render_mask_frame(
    title: str, sparsity: float, accuracy: float | None, magnitudes: dict, tops: dict[str, float]
) -> np.ndarray:
    """One GIF frame as an RGB array: a heat-map per layer, coloured up to that layer's entry in `tops`."""
    # Wide layers get wider panels, so fewer of their columns are lost to downsampling, but no
    # panel gets under half the widest one's width, or its labels would collide.
    width_ratios = np.sqrt([magnitude.shape[1] for magnitude in magnitudes.values()])
    width_ratios = np.maximum(width_ratios, width_ratios.max() / 2)
    figure = Figure(figsize=(4.5 * len(magnitudes), 3.8), dpi=FRAME_DPI)
    axes = figure.subplots(1, len(magnitudes), squeeze=False, gridspec_kw={"width_ratios": width_ratios})
    # A fixed layout, not a tight one, so the panels stay put while the labels change between frames.
    figure.subplots_adjust(left=0.05, right=0.97, bottom=0.15, top=0.78, wspace=0.4)
    for ax, (name, magnitude) in zip(axes[0], magnitudes.items()):
        image = ax.imshow(magnitude, cmap=HEATMAP, vmin=0, vmax=tops[name], aspect="auto", interpolation="nearest")
        ax.set_title(f"{name} {magnitude.shape[0]}×{magnitude.shape[1]}\n{np.isnan(magnitude).mean():.0%} pruned")
        ax.set_xlabel("input weight index")
        ax.set_ylabel("output channel")
        figure.colorbar(image, ax=ax, extend="max", label="|w|")
    accuracy_label = "" if accuracy is None else f", test accuracy {accuracy:.1%}"
    figure.suptitle(f"{title}: sparsity {sparsity:.0%}{accuracy_label}  (grey = pruned)", fontweight="bold")
    canvas = FigureCanvasAgg(figure)
    canvas.draw()
    rgb = np.asarray(canvas.buffer_rgba())[..., :3].copy()
    return rgb


def write_mask_gif(frames: list, path, title: str) -> list[np.ndarray]:
    """Animate the masks over a sweep: one GIF frame per level, one heat-map panel per layer.

    `frames` is a list of `(sparsity, test_accuracy, magnitudes)` in level order, where `magnitudes`
    comes from `weight_magnitudes` and `test_accuracy` is a fraction in [0, 1] (or None).
    Each layer keeps one colour scale across the frames, so fading weights are seen to vanish.
    Returns the frames as RGB uint8 arrays (H, W, 3), before the GIF's palette, for TensorBoard.
    """
    if not frames:
        raise ValueError("write_mask_gif needs at least one frame")
    tops = _colour_scale_tops(frames)
    images = [
        _render_mask_frame(title, sparsity, accuracy, magnitudes, tops) for sparsity, accuracy, magnitudes in frames
    ]
    palette_source = Image.fromarray(np.concatenate([image[::2, ::2] for image in images]))
    palette = palette_source.quantize(GIF_COLOURS, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE)
    gif_frames = [Image.fromarray(image).quantize(palette=palette, dither=Image.Dither.NONE) for image in images]
    durations = [FRAME_MILLISECONDS] * (len(images) - 1) + [LAST_FRAME_MILLISECONDS]
    gif_frames[0].save(Path(path), save_all=True, append_images=gif_frames[1:], duration=durations, loop=0)
    return images


def _spread_levels(levels: list, count: int) -> list:
    """Up to `count` entries spread evenly from the first to the last, skipping the unpruned ones (all bars 0)."""
    pruned = [level for level in levels if level[0] > 0] or levels
    picks = np.unique(np.linspace(0, len(pruned) - 1, min(count, len(pruned))).round().astype(int))
    return [pruned[index] for index in picks]


def write_layer_sparsity_chart(reports_by_method: dict, path) -> Path:
    """Bar chart of the sparsity each layer actually reached, one panel per method.

    `reports_by_method` maps a method to `[(sparsity, report), ...]` with `report` from
    `apply_pruning`. Up to five levels are drawn, as grouped bars per layer in model order,
    with the requested level as a dashed line of the same colour: layerwise bars sit on it,
    global ones do not. Returns the path written.
    """
    methods = list(reports_by_method)
    layer_count = max(len(report["layers"]) for levels in reports_by_method.values() for _, report in levels)
    figure = Figure(figsize=(max(8, 0.45 * layer_count), 3.4 * len(methods)), dpi=100)
    axes = figure.subplots(len(methods), 1, sharey=True, squeeze=False)
    colours = matplotlib.colormaps.get_cmap("plasma")(np.linspace(0.1, 0.85, CHART_LEVELS))
    for ax, method in zip(axes[:, 0], methods):
        levels = _spread_levels(reports_by_method[method], CHART_LEVELS)
        layer_names = list(levels[0][1]["layers"])
        positions = np.arange(len(layer_names))
        bar_width = 0.8 / len(levels)
        for index, ((sparsity, report), colour) in enumerate(zip(levels, colours)):
            achieved = [report["layers"][name] for name in layer_names]
            offsets = positions - 0.4 + bar_width * (index + 0.5)
            label = f"target {sparsity:.0%} (overall {report['sparsity']:.0%})"
            ax.bar(offsets, achieved, bar_width, color=colour, label=label)
            ax.axhline(sparsity, color=colour, linestyle="--", linewidth=1)
        ax.set_title(f"{method} pruning: sparsity reached per layer")
        ax.set_xticks(positions, layer_names, rotation=60, ha="right", fontsize=8)
        ax.set_xlim(-0.6, len(layer_names) - 0.4)
        ax.set_ylim(0, 1)
        ax.set_ylabel("fraction of weights pruned")
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1))
    axes[-1, 0].set_xlabel("layer (model order)")
    figure.tight_layout()
    path = Path(path)
    figure.savefig(path)
    return path


def log_mask_frame(experiment, method: str, sparsity: float, frame: np.ndarray) -> None:
    """Log one frame from `write_mask_gif` as the image `masks/<method>` at step `sparsity_step(sparsity)`."""
    experiment.add_image(f"masks/{method}", frame, global_step=sparsity_step(sparsity), dataformats="HWC")


def log_weight_histograms(
    experiment, method: str, sparsity: float, model: nn.Module, layer_names: list[str] | None = None
) -> None:
    """Histogram the surviving (non-zero) signed weights of each layer as `weights/<method>/<layer>`.

    `layer_names` defaults to `default_layers(model)`; the step is `sparsity_step(sparsity)`.
    A layer with no weights left is skipped, as TensorBoard cannot histogram nothing.
    """
    for name in default_layers(model) if layer_names is None else layer_names:
        weight = model.get_submodule(name).weight.detach().float().cpu().flatten()
        surviving = weight[weight != 0]
        if surviving.numel():
            experiment.add_histogram(f"weights/{method}/{name}", surviving, global_step=sparsity_step(sparsity))


def write_visuals(network: nn.Module, methods: list[str], sparsities: list[float], accuracy: dict, out_dir: Path,
                  experiment, layer_names: list[str], include_classifier: bool = False, seed: int = 0) -> None:
    """Mask GIFs, per-layer sparsity charts, and TensorBoard images and histograms, per method and level.

    `accuracy` maps (method, sparsity) to the one-shot test accuracy in percent, shown on each frame.
    """
    reports = {}
    for method in tqdm(methods, desc="visualize", unit="method"):
        frames = []
        for level in sparsities:
            pruned = copy.deepcopy(network)
            reports.setdefault(method, []).append((level, apply_pruning(pruned, level, method, include_classifier, seed)))
            log_weight_histograms(experiment, method, level, pruned, layer_names)
            test_acc = accuracy.get((method, level))
            frames.append((level, None if test_acc is None else test_acc / 100, weight_magnitudes(pruned, layer_names)))
        images = write_mask_gif(frames, out_dir / f"masks_{method}.gif", title=f"{method} pruning")
        for (level, _, _), image in zip(frames, images):
            log_mask_frame(experiment, method, level, image)
    charted = {method: reports[method] for method in ("layerwise", "global") if method in reports}
    if charted:
        write_layer_sparsity_chart(charted, out_dir / "layer_sparsity.png")
