"""compression.py: counts, byte formulas, FLOPs, the compact file format and physical filter removal."""
import io
import os

import pytest
import torch
from torch import nn
from torch.nn.utils import prune

import compression
from compression import export_compact, load_compact, remove_filters, storage_report
from lightning_module import build_model
from prune_callback import apply_pruning, prunable_layers


def resnet20_without_zero_parameters(seed: int = 0) -> nn.Module:
    """resnet20 with every parameter and batch-norm statistic drawn at random: batch norm starts
    with zero shifts, which would otherwise count as pruned weights and hide the BN shift effect."""
    torch.manual_seed(seed)
    model = build_model("resnet20")
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.normal_(0, 0.1)
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.weight.uniform_(0.5, 1.5)
                module.running_mean.normal_(0, 0.1)
                module.running_var.uniform_(0.5, 1.5)
    return model.eval()


def test_dense_model_counts_every_parameter_as_nonzero():
    model = resnet20_without_zero_parameters()
    report = storage_report(model)
    total = sum(parameter.numel() for parameter in model.parameters())
    assert report["nonzero_weights"] == report["total_params"] == total
    assert report["dense_bytes"] == 4 * total
    assert report["flops_sparse"] == report["flops_dense"] > 0


def test_layerwise_pruning_halves_the_pruned_layers_and_leaves_the_callers_model_masked():
    model = resnet20_without_zero_parameters()
    apply_pruning(model, 0.5, "layerwise")
    report = storage_report(model)
    pruned_sizes = [layer.weight.numel() for layer in prunable_layers(model).values()]
    # l1_unstructured removes round(amount * n) entries of each layer.
    assert report["total_params"] - report["nonzero_weights"] == sum(round(0.5 * size) for size in pruned_sizes)
    assert all(hasattr(layer, "weight_mask") for layer in prunable_layers(model).values())


def test_byte_and_flop_formulas_on_a_hand_made_model():
    hidden, classifier = nn.Linear(8, 4), nn.Linear(4, 2)
    with torch.no_grad():
        hidden.weight.zero_()
        hidden.weight.view(-1)[:10] = torch.arange(1.0, 11.0)
        for parameter in (hidden.bias, classifier.weight, classifier.bias):
            parameter.fill_(1.0)
    report = storage_report(nn.Sequential(hidden, nn.ReLU(), classifier), input_size=(1, 8))

    unpruned_bytes = 4 * (4 + 8 + 2)  # hidden bias, classifier weight and bias stay dense float32
    assert report["total_params"] == 32 + 4 + 8 + 2
    assert report["nonzero_weights"] == 10 + 4 + 8 + 2
    assert report["dense_bytes"] == 4 * 46
    # 32-entry mask in 4 bytes, 10 float32 values.
    assert report["bitmask_bytes"] == 4 + 10 * 4 + unpruned_bytes
    # 10 values and 10 int32 column indices, 4 rows + 1 int32 row pointers.
    assert report["csr_bytes"] == 10 * (4 + 4) + 5 * 4 + unpruned_bytes
    # 2 FLOPs per multiply-add: 8x4 and 4x2 matrix products; the hidden layer is 10/32 dense.
    assert report["flops_dense"] == 2 * 8 * 4 + 2 * 4 * 2
    assert report["flops_sparse"] == 2 * 8 * 4 * 10 // 32 + 2 * 4 * 2


def test_sparse_flops_of_a_single_conv_scale_with_its_density():
    torch.manual_seed(0)
    conv = nn.Conv2d(3, 8, 3, padding=1, bias=False)
    prune.l1_unstructured(conv, "weight", amount=0.75)  # 162 of 216 weights: density exactly 1/4
    report = storage_report(nn.Sequential(conv))
    assert report["flops_dense"] == 2 * 8 * 3 * 3 * 3 * 32 * 32
    assert report["flops_sparse"] == report["flops_dense"] // 4


def test_export_round_trip_reproduces_the_masked_model_exactly(tmp_path):
    model = resnet20_without_zero_parameters()
    apply_pruning(model, 0.7, "layerwise")
    path = tmp_path / "resnet20.compact"
    export_compact(model, path, extra={"arch": "resnet20", "sparsity": 0.7})

    state, extra = load_compact(path)
    restored = build_model(extra["arch"])
    restored.load_state_dict(state)
    images = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.equal(restored.eval()(images), model.eval()(images))
    assert extra == {"arch": "resnet20", "sparsity": 0.7}
    assert os.listdir(tmp_path) == [path.name]


def test_compact_file_is_much_smaller_than_the_dense_state_dict(tmp_path):
    model = resnet20_without_zero_parameters()
    apply_pruning(model, 0.9, "layerwise")
    path = tmp_path / "resnet20.compact"
    export_compact(model, path)
    dense_file = io.BytesIO()
    torch.save(compression.effective_copy(model).state_dict(), dense_file)

    assert path.stat().st_size < 0.2 * len(dense_file.getbuffer())
    assert storage_report(model)["disk_bytes"] == path.stat().st_size


def test_a_failed_export_leaves_the_previous_file_and_no_temporary(tmp_path, monkeypatch):
    model = resnet20_without_zero_parameters()
    path = tmp_path / "resnet20.compact"
    export_compact(model, path, extra={"version": 1})

    def crash(source, target):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError, match="disk full"):
        export_compact(model, path, extra={"version": 2})
    assert load_compact(path)[1] == {"version": 1}
    assert os.listdir(tmp_path) == [path.name]


def test_remove_filters_shrinks_block_internal_channels_only():
    model = resnet20_without_zero_parameters()
    apply_pruning(model, 0.5, "filters")
    slim, stats = remove_filters(model, torch.randn(1, 3, 32, 32), latency_batch=8, warmup=1, repeats=3)

    blocks = {name: block for name, block in model.named_modules() if name.count(".") == 1}
    slim_blocks = dict(slim.named_modules())
    assert set(stats["removed_channels"]) == {f"{name}.conv1" for name in blocks}
    for name, block in blocks.items():
        removed = stats["removed_channels"][f"{name}.conv1"]
        assert removed == block.conv1.out_channels // 2
        assert slim_blocks[name].conv1.out_channels == block.conv1.out_channels - removed
        assert slim_blocks[name].conv2.out_channels == block.conv2.out_channels
    # Each removed channel takes its conv1 filter, its two batch-norm parameters and a conv2 input slice.
    expected_saving = sum(
        stats["removed_channels"][f"{name}.conv1"] * (block.conv1.in_channels * 9 + 2 + block.conv2.out_channels * 9)
        for name, block in blocks.items()
    )
    assert stats["params"]["dense"] - stats["params"]["slim"] == expected_saving
    assert stats["flops"]["slim"] < 0.6 * stats["flops"]["dense"]
    assert stats["latency_ms"]["dense"] > 0 and stats["latency_ms"]["slim"] > 0
    assert slim(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    # The batch-norm shifts after the zeroed filters are non-zero here, and removing them shows.
    assert stats["max_logit_difference"] > 1e-3
    assert hasattr(model.layer1[0].conv1, "weight_mask")


def test_remove_filters_matches_the_masked_model_when_batch_norm_maps_zero_to_zero():
    torch.manual_seed(0)
    model = build_model("resnet20").eval()  # fresh batch norm: zero shift and zero running mean
    apply_pruning(model, 0.5, "filters")
    _, stats = remove_filters(model, torch.randn(1, 3, 32, 32), latency_batch=8, warmup=0, repeats=1)
    assert sum(stats["removed_channels"].values()) > 0
    assert stats["max_logit_difference"] < 1e-4
