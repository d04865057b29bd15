"""apply_pruning: torch.nn.utils.prune masks, layer-wise or global, the classifier spared by default."""
import math

import pytest
import torch
from torch import nn
from torch.nn.utils import prune

from magprune.core.nets import build_model
from magprune.core.obs import Calibration
from magprune.core.pruning import (
    METHODS,
    apply_pruning,
    count_nonzero,
    make_permanent,
    prunable_layers,
    ranking,
    recalibrate_batchnorm,
)


@pytest.fixture
def resnet20():
    torch.manual_seed(0)
    return build_model("resnet20")


def test_layerwise_masks_equal_torch_l1_unstructured_layer_by_layer(resnet20):
    reference = build_model("resnet20")
    reference.load_state_dict(resnet20.state_dict())
    apply_pruning(resnet20, 0.6)
    for name, module in prunable_layers(reference).items():
        prune.l1_unstructured(module, "weight", amount=0.6)
        assert torch.equal(resnet20.get_submodule(name).weight_mask, module.weight_mask), name


def test_layerwise_removes_the_fraction_from_every_layer(resnet20):
    report = apply_pruning(resnet20, 0.3)
    for name, sparsity in report["layers"].items():
        size = resnet20.get_submodule(name).weight.numel()
        assert sparsity == round(0.3 * size) / size, name


def test_global_reaches_the_overall_sparsity_and_differs_from_layerwise(resnet20):
    layerwise = build_model("resnet20")
    layerwise.load_state_dict(resnet20.state_dict())
    global_report = apply_pruning(resnet20, 0.7, method="global")
    layerwise_report = apply_pruning(layerwise, 0.7)
    assert global_report["sparsity"] == pytest.approx(0.7, abs=1e-5)
    assert max(global_report["layers"].values()) - min(global_report["layers"].values()) > 0.1
    assert global_report["layers"] != pytest.approx(layerwise_report["layers"], abs=0.01)


def magnitudes(model, names):
    """Pruned and kept |w| of the named layers, from the masks, as two flat tensors."""
    pruned, kept = [], []
    for name in names:
        layer = model.get_submodule(name)
        pruned.append(layer.weight_orig[layer.weight_mask == 0].abs())
        kept.append(layer.weight_orig[layer.weight_mask == 1].abs())
    return torch.cat(pruned), torch.cat(kept)


def test_global_prunes_the_smallest_magnitudes_across_all_layers_together(resnet20):
    names = list(prunable_layers(resnet20))
    total = sum(resnet20.get_submodule(name).weight.numel() for name in names)
    apply_pruning(resnet20, 0.7, method="global")
    pruned, kept = magnitudes(resnet20, names)
    assert pruned.max() <= kept.min()
    assert len(pruned) == round(0.7 * total) and len(pruned) + len(kept) == total


def test_layerwise_prunes_the_smallest_magnitudes_of_each_layer_in_exact_number(resnet20):
    apply_pruning(resnet20, 0.37)
    for name, layer in prunable_layers(resnet20).items():
        pruned, kept = magnitudes(resnet20, [name])
        assert len(pruned) == round(0.37 * layer.weight.numel()), name
        assert pruned.max() <= kept.min(), name


def test_filters_removes_the_output_filters_of_smallest_l2_norm(resnet20):
    norms = {name: layer.weight.detach().flatten(1).norm(dim=1) for name, layer in prunable_layers(resnet20).items()}
    apply_pruning(resnet20, 0.5, method="filters")
    for name, norm in norms.items():
        removed = (resnet20.get_submodule(name).weight.flatten(1) == 0).all(1)
        smallest = norm.argsort()[: round(0.5 * len(norm))]
        assert set(removed.nonzero().flatten().tolist()) == set(smallest.tolist()), name


def calibration_for(method: str) -> Calibration | None:
    """A few random images for a method that prunes from calibration images (OBS), None for the others."""
    return Calibration(torch.randn(8, 3, 32, 32)) if METHODS[method].calibrated else None


@pytest.mark.parametrize("method", METHODS)
def test_the_classifier_stays_dense_under_every_method_unless_included(resnet20, method):
    classifier = resnet20.linear.weight.detach().clone()
    level = 0.9 if METHODS[method].levels is None else max(METHODS[method].levels)
    report = apply_pruning(resnet20, level, method=method, calibration=calibration_for(method))
    assert "linear" not in report["layers"] and not hasattr(resnet20.linear, "weight_mask")
    assert torch.equal(resnet20.linear.weight, classifier)
    report = apply_pruning(resnet20, level, method=method, include_classifier=True, calibration=calibration_for(method))
    assert report["layers"]["linear"] > 0  # its share: global's is its own, not 90%


def test_only_prunes_exactly_the_named_layers(resnet20):
    before = {name: layer.weight.detach().clone() for name, layer in prunable_layers(resnet20, True).items()}
    apply_pruning(resnet20, 0.5, only=["layer2.0.conv1", "conv1"])
    for name, weight in before.items():
        layer = resnet20.get_submodule(name)
        if name in ("layer2.0.conv1", "conv1"):
            assert (layer.weight == 0).sum() == round(0.5 * weight.numel()), name
        else:
            assert torch.equal(layer.weight, weight) and not hasattr(layer, "weight_mask"), name


def test_it_works_on_any_module():
    model = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 8), nn.Linear(8, 2))
    report = apply_pruning(model, 0.5)
    assert set(report["layers"]) == {"0", "2"} and report["sparsity"] == 0.5


@pytest.mark.parametrize("sparsity", [-0.1, 1.5, math.nan, math.inf, "0.5", True])
def test_sparsity_outside_zero_to_one_is_a_value_error(resnet20, sparsity):
    with pytest.raises(ValueError):
        apply_pruning(resnet20, sparsity)


@pytest.mark.parametrize("sparsity, expected", [(0.0, 0.0), (1.0, 1.0)])
def test_the_ends_of_the_range_prune_nothing_and_everything(resnet20, sparsity, expected):
    assert apply_pruning(resnet20, sparsity)["sparsity"] == expected


def test_rising_sparsity_keeps_earlier_pruned_weights_pruned(resnet20):
    apply_pruning(resnet20, 0.5)
    first_zeros = resnet20.conv1.weight == 0
    apply_pruning(resnet20, 0.8)
    assert (resnet20.conv1.weight[first_zeros] == 0).all()
    assert hasattr(resnet20.conv1, "weight_mask") and not hasattr(resnet20.conv1, "weight_orig_orig")


def test_random_masks_are_seeded_and_reproducible(resnet20):
    twin = build_model("resnet20")
    twin.load_state_dict(resnet20.state_dict())
    apply_pruning(resnet20, 0.5, method="random", seed=3)
    apply_pruning(twin, 0.5, method="random", seed=3)
    assert torch.equal(resnet20.conv1.weight_mask, twin.conv1.weight_mask)
    apply_pruning(twin, 0.0)
    apply_pruning(twin, 0.5, method="random", seed=4)
    assert not torch.equal(resnet20.conv1.weight_mask, twin.conv1.weight_mask)


def test_filters_zero_whole_output_filters(resnet20):
    report = apply_pruning(resnet20, 0.5, method="filters")
    for name in report["layers"]:
        filter_norms = resnet20.get_submodule(name).weight.flatten(1).abs().sum(1)
        assert (filter_norms == 0).sum() == round(0.5 * len(filter_norms)), name
        assert set(filter_norms.eq(0).tolist()) == {True, False}


def test_make_permanent_keeps_the_zeros_and_drops_the_masks(resnet20):
    apply_pruning(resnet20, 0.4)
    make_permanent(resnet20)
    assert not any(key.endswith("_mask") or key.endswith("_orig") for key in resnet20.state_dict())
    assert (resnet20.conv1.weight == 0).float().mean().item() == pytest.approx(0.4, abs=0.01)


def test_batchnorm_recalibration_changes_only_batchnorm_buffers(resnet20):
    apply_pruning(resnet20, 0.5)
    resnet20.eval()
    before = {key: value.clone() for key, value in resnet20.state_dict().items()}
    recalibrate_batchnorm(resnet20, [torch.randn(8, 3, 32, 32) for _ in range(2)])
    after = resnet20.state_dict()
    changed = {key for key in before if not torch.equal(before[key], after[key])}
    assert changed and all(key.rsplit(".", 1)[-1] in {"running_mean", "running_var", "num_batches_tracked"} for key in changed)
    assert not resnet20.training


def test_every_method_is_known_with_a_description():
    assert tuple(METHODS) == ("layerwise", "global", "random", "filters", "2:4", "lamp", "obs-layerwise", "obs-global",
                              "obs-lamp", "obs-2:4")
    assert all(method.description for method in METHODS.values())


@pytest.mark.parametrize("method", METHODS)
def test_channels_last_models_prune_and_stay_channels_last(resnet20, method):
    resnet20 = resnet20.to(memory_format=torch.channels_last)
    report = apply_pruning(resnet20, 0.5, method=method, calibration=calibration_for(method))
    assert report["sparsity"] == pytest.approx(0.5, abs=0.02)
    assert resnet20.layer1[0].conv1.weight.is_contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize("method", ["layerwise", "global", "filters"])
def test_one_ranking_gives_every_levels_masks_as_torch_would(resnet20, method):
    order = ranking(resnet20, method)
    for sparsity in (0.0, 0.3, 0.75, 1.0):
        sorted_each_time, thresholded = build_model("resnet20"), build_model("resnet20")
        sorted_each_time.load_state_dict(resnet20.state_dict())
        thresholded.load_state_dict(resnet20.state_dict())
        apply_pruning(sorted_each_time, sparsity, method)
        apply_pruning(thresholded, sparsity, method, ranking=order)
        for name in prunable_layers(resnet20):
            assert torch.equal(sorted_each_time.get_submodule(name).weight_mask, thresholded.get_submodule(name).weight_mask), (name, sparsity)


def test_random_has_no_fixed_order():
    assert ranking(build_model("resnet20"), "random") is None


def test_masks_from_a_ranking_keep_a_channels_last_network_channels_last(resnet20):
    resnet20 = resnet20.to(memory_format=torch.channels_last)
    apply_pruning(resnet20, 0.5, "global", ranking=ranking(resnet20, "global"))
    assert resnet20.layer1[0].conv1.weight.is_contiguous(memory_format=torch.channels_last)
    assert resnet20.layer1[0].conv1.weight_mask.is_contiguous(memory_format=torch.channels_last)


def test_nonzero_entries_are_counted_as_torch_counts_them():
    values = torch.tensor([0.0, -0.0, 1e-30, float("nan"), float("inf"), -2.0])
    assert count_nonzero(values) == int(torch.count_nonzero(values)) == 4
