"""slim.py: the all-zero filters of `filters` pruning physically removed, and what that saves."""
import torch

from magprune.core.nets import build_model
from magprune.core.pruning import apply_pruning
from magprune.core.slim import remove_filters


def test_remove_filters_shrinks_block_internal_channels_only(random_resnet20):
    model = random_resnet20()
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


def test_remove_filters_skips_the_timing_and_the_logit_check_when_not_asked():
    model = build_model("resnet20").eval()
    apply_pruning(model, 0.5, "filters")
    _, stats = remove_filters(model, torch.randn(1, 3, 32, 32), measure=False)
    assert "latency_ms" not in stats and "max_logit_difference" not in stats
    assert stats["flops"]["slim"] < stats["flops"]["dense"]
