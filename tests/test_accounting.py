"""accounting.py: counts, byte formulas and FLOPs, by arithmetic over the masks."""
import torch
from torch import nn
from torch.nn.utils import prune

from magprune.core.accounting import layer_flops, storage_report
from magprune.core.pruning import apply_pruning, prunable_layers


def test_dense_model_counts_every_parameter_as_nonzero(random_resnet20):
    model = random_resnet20()
    report = storage_report(model)
    total = sum(parameter.numel() for parameter in model.parameters())
    assert report["nonzero_weights"] == report["total_params"] == total
    assert report["dense_bytes"] == 4 * total
    assert report["flops_sparse"] == report["flops_dense"] > 0


def test_layerwise_pruning_halves_the_pruned_layers_and_leaves_the_callers_model_masked(random_resnet20):
    model = random_resnet20()
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


def test_flops_counted_once_give_the_same_report_at_every_level(random_resnet20):
    model = random_resnet20()
    counted_once = layer_flops(model, torch.zeros(1, 3, 32, 32))
    for sparsity in (0.3, 0.8):
        apply_pruning(model, sparsity, "global")
        assert storage_report(model, dense_flops=counted_once) == storage_report(model)
