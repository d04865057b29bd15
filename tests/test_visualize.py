"""The mask pictures show what apply_pruning did to a real resnet20, and land where the sweep expects."""
import numpy as np
import pytest
import torch
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torch.utils.tensorboard import SummaryWriter

from magprune.core.nets import build_model
from magprune.core.pruning import apply_pruning
from magprune.report.masks import (
    HEATMAP,
    default_layers,
    log_mask_frame,
    log_weight_histograms,
    weight_magnitudes,
    write_layer_sparsity_chart,
    write_mask_gif,
)

LEVELS = (0.0, 0.3, 0.6, 0.9)
# Upsampling a weight matrix onto whole pixels makes some cells a pixel wider than others.
PIXEL_TOLERANCE = 0.02


@pytest.fixture
def resnet20() -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model("resnet20")


def sweep(model: torch.nn.Module, method: str, layer_names: list[str]) -> tuple[list, list]:
    """Prune `model` through LEVELS as the sweep does; the GIF frames and the (level, report) pairs."""
    frames, reports = [], []
    for sparsity in LEVELS:
        report = apply_pruning(model, sparsity, method, include_classifier=True)
        frames.append((sparsity, 1 - sparsity / 2, weight_magnitudes(model, layer_names)))
        reports.append((sparsity, report))
    return frames, reports


def panel_regions(image: np.ndarray, blank: np.ndarray) -> list[tuple[slice, slice]]:
    """The (rows, columns) of each heat-map, left to right, in a frame whose every weight is pruned.

    Only the heat-maps are large blocks of the blank colour; the few text pixels that anti-aliasing
    happens to give that grey fall below the half-height threshold.
    """
    is_blank = (image == blank).all(axis=-1)
    column_counts = is_blank.sum(axis=0)
    is_panel_column = column_counts > column_counts.max() / 2
    edges = np.flatnonzero(np.diff(np.concatenate([[0], is_panel_column.astype(int), [0]])))
    regions = []
    for start, stop in zip(edges[::2], edges[1::2]):
        rows = np.flatnonzero(is_blank[:, start:stop].mean(axis=1) > 0.5)
        regions.append((slice(rows[0], rows[-1] + 1), slice(start, stop)))
    return regions


def test_default_layers_are_first_conv_middle_conv_and_classifier(resnet20):
    assert default_layers(resnet20) == ["conv1", "layer2.1.conv1", "linear"]


def test_weight_magnitudes_blank_exactly_the_pruned_weights(resnet20):
    layer_names = default_layers(resnet20)
    report = apply_pruning(resnet20, 0.6, "global", include_classifier=True)
    magnitudes = weight_magnitudes(resnet20, layer_names)

    assert list(magnitudes) == layer_names
    for name, magnitude in magnitudes.items():
        weight = resnet20.get_submodule(name).weight.detach()
        assert magnitude.shape == (weight.shape[0], weight[0].numel())
        assert np.isnan(magnitude).mean() == pytest.approx(report["layers"][name])
        surviving = ~np.isnan(magnitude)
        np.testing.assert_array_equal(magnitude[surviving], weight.abs().reshape(magnitude.shape).numpy()[surviving])
    # Global pruning spreads unevenly, so these are three different fractions, not 0.6 three times.
    assert len({round(report["layers"][name], 3) for name in layer_names}) == 3


def test_gif_has_one_frame_per_level_blanked_as_reported(resnet20, tmp_path):
    layer_names = default_layers(resnet20)
    frames, reports = sweep(resnet20, "global", layer_names)
    path = tmp_path / "masks.gif"

    images = write_mask_gif(frames, path, title="resnet20 global")

    with Image.open(path) as gif:
        assert gif.n_frames == len(LEVELS)
    assert path.stat().st_size < 2_000_000
    assert len(images) == len(LEVELS)
    assert all(image.dtype == np.uint8 and image.ndim == 3 and image.shape == images[0].shape for image in images)
    for (_, _, magnitudes), (_, report) in zip(frames, reports):
        for name in layer_names:
            assert np.isnan(magnitudes[name]).mean() == pytest.approx(report["layers"][name])

    # Same layout, every weight pruned: the blank panels mark where each layer's heat-map is drawn.
    all_pruned = {name: np.full_like(magnitude, np.nan) for name, magnitude in frames[0][2].items()}
    [reference] = write_mask_gif([(1.0, None, all_pruned)], tmp_path / "reference.gif", title="resnet20 global")
    blank = np.asarray(HEATMAP(np.nan, bytes=True))[:3]
    regions = panel_regions(reference, blank)
    assert len(regions) == len(layer_names)
    for image, (_, report) in zip(images, reports):
        for name, (rows, columns) in zip(layer_names, regions):
            blanked = (image[rows, columns] == blank).all(axis=-1).mean()
            assert blanked == pytest.approx(report["layers"][name], abs=PIXEL_TOLERANCE)


def test_layer_sparsity_chart_is_written(tmp_path):
    reports_by_method = {}
    for method in ("layerwise", "global"):
        torch.manual_seed(0)
        _, reports_by_method[method] = sweep(build_model("resnet20"), method, [])
    path = tmp_path / "layer_sparsity.png"

    assert write_layer_sparsity_chart(reports_by_method, path) == path

    with Image.open(path) as chart:
        assert chart.format == "PNG"
        pixels = np.asarray(chart.convert("L"))
    # Bars, not an empty canvas.
    assert (pixels < 128).mean() > 0.02


def test_tensorboard_holds_mask_images_and_histograms_per_level(resnet20, tmp_path):
    layer_names = default_layers(resnet20)
    # 0.05 * 3 is 0.15000000000000002 in floating point, and must still be step 150 (tenths of a percent).
    levels = (0.0, 0.05 * 3)
    writer = SummaryWriter(str(tmp_path / "run"))
    frames, surviving_counts = [], []
    for sparsity in levels:
        apply_pruning(resnet20, sparsity, "layerwise", include_classifier=True)
        log_weight_histograms(writer, "layerwise", sparsity, resnet20, layer_names)
        frames.append((sparsity, 0.9, weight_magnitudes(resnet20, layer_names)))
        surviving_counts.append({name: int((resnet20.get_submodule(name).weight != 0).sum()) for name in layer_names})
    images = write_mask_gif(frames, tmp_path / "masks.gif", title="resnet20 layerwise")
    for sparsity, image in zip(levels, images):
        log_mask_frame(writer, "layerwise", sparsity, image)
    writer.close()

    events = EventAccumulator(str(tmp_path / "run"), size_guidance={"images": 0, "histograms": 0}).Reload()
    assert events.Tags()["images"] == ["masks/layerwise"]
    logged_images = events.Images("masks/layerwise")
    assert [event.step for event in logged_images] == [0, 150]
    assert (logged_images[0].height, logged_images[0].width) == images[0].shape[:2]
    assert sorted(events.Tags()["histograms"]) == sorted(f"weights/layerwise/{name}" for name in layer_names)
    for name in layer_names:
        histograms = events.Histograms(f"weights/layerwise/{name}")
        assert [event.step for event in histograms] == [0, 150]
        # Only the surviving weights are counted, so each level's histogram holds fewer.
        assert [event.histogram_value.num for event in histograms] == [counts[name] for counts in surviving_counts]
        assert histograms[1].histogram_value.num < histograms[0].histogram_value.num
