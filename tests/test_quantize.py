"""Quantised twins of every curve, files whose size is what the table says, and exports that run outside PyTorch."""
import json

import numpy as np
import pytest
import torch

import sweep
from magprune.core.export import export_onnx, export_pruned, load_compact
from magprune.core.nets import build_model
from magprune.core.pruning import apply_pruning, make_permanent, prunable_layers
from magprune.core.quantize import dequantize, kmeans_codebook, quantize_network, quantize_weight


@pytest.fixture
def pruned_network():
    torch.manual_seed(0)
    network = build_model("resnet20")
    apply_pruning(network, 0.7, "global")
    return make_permanent(network).eval()


@pytest.mark.parametrize("bits", [8, 4])
def test_a_pruned_weight_stays_exactly_zero_through_quantisation(pruned_network, bits):
    zero_before = {name: layer.weight == 0 for name, layer in prunable_layers(pruned_network).items()}
    quantize_network(pruned_network, bits, prunable_layers(pruned_network))
    for name, layer in prunable_layers(pruned_network).items():
        assert (layer.weight[zero_before[name]] == 0).all(), name


def test_eight_bit_dequantisation_is_within_half_a_step_of_each_channel(pruned_network):
    weight = pruned_network.layer2[0].conv1.weight.detach()
    restored = dequantize(quantize_weight(weight, 8))
    step = weight.flatten(1).abs().amax(dim=1) / 127  # one step of each output channel's scale
    error = (restored - weight).abs().flatten(1)
    assert (error <= step[:, None] / 2 + 1e-7).all()
    assert error.max() > 0  # it did quantise


def test_four_bits_leave_at_most_sixteen_values_per_layer_fitted_to_the_survivors(pruned_network):
    weight = pruned_network.layer3[1].conv2.weight.detach()
    restored = dequantize(quantize_weight(weight, 4))
    assert len(restored[weight != 0].unique()) <= 16
    survivors = weight[weight != 0]
    codes, codebook = kmeans_codebook(survivors, 4)
    assert torch.equal(codebook[codes.long()], restored[weight != 0])
    # Each survivor stands for its nearest codebook value; and k-means moved the codebook off its linear start.
    nearest = (survivors[:, None] - codebook[None, :]).abs().min(dim=1).values
    assert torch.allclose((restored[weight != 0] - survivors).abs(), nearest, atol=1e-7)
    linear = torch.linspace(float(survivors.min()), float(survivors.max()), 16)
    linear_error = (survivors[:, None] - linear[None, :]).abs().min(dim=1).values
    assert (nearest ** 2).mean() < (linear_error ** 2).mean()


def test_the_onnx_file_gives_the_logits_pytorch_gives(pruned_network, tmp_path):
    export_onnx(pruned_network, tmp_path / "model.onnx")
    import onnxruntime

    session = onnxruntime.InferenceSession(str(tmp_path / "model.onnx"), providers=["CPUExecutionProvider"])
    images = torch.randn(7, 3, 32, 32)  # a batch size the export never saw
    with torch.no_grad():
        expected = pruned_network(images).numpy()
    assert np.abs(session.run(None, {"images": images.numpy()})[0] - expected).max() < 1e-4


def test_filters_export_the_network_with_its_zero_filters_removed(tmp_path):
    import onnx

    network = build_model("resnet20").eval()
    paths, slim = export_pruned(network, tmp_path, 0.5, "filters", False, 0, "resnet20", (0, 0, 0), (1, 1, 1))
    assert sum(parameter.numel() for parameter in slim.parameters()) < 0.75 * sum(p.numel() for p in network.parameters())
    stored = sum(int(np.prod(tensor.dims)) for tensor in onnx.load(str(paths["onnx"])).graph.initializer)
    assert stored < 0.75 * sum(parameter.numel() for parameter in network.parameters())


@pytest.fixture(scope="module")
def quantized_sweep(checkpoint, fake_cifar, tmp_path_factory):
    out = tmp_path_factory.mktemp("quantized")
    sweep.main(["--checkpoint", str(checkpoint), "--data_dir", str(fake_cifar), "--output_dir", str(out),
                "--sparsities", "0,0.5,0.9", "--methods", "layerwise,global", "--quantize", "8,4", "--export", "0.5"])
    return out, json.loads((out / "sweep.json").read_text())


def test_every_curve_gains_its_quantised_twins_at_the_same_sparsity(quantized_sweep):
    _, document = quantized_sweep
    rows = {(row["curve"], row["sparsity"]): row for row in document["rows"]}
    assert {curve for curve, _ in rows} == {"layerwise", "layerwise+Q8", "layerwise+Q4", "global", "global+Q8", "global+Q4"}
    for twin in ("layerwise+Q8", "layerwise+Q4"):
        assert rows[twin, 0.9]["achieved_sparsity"] == rows["layerwise", 0.9]["achieved_sparsity"]
        assert rows[twin, 0.9]["disk_bytes"] < rows["layerwise", 0.9]["disk_bytes"]
    assert rows["layerwise+Q4", 0.5]["disk_bytes"] < rows["layerwise+Q8", 0.5]["disk_bytes"]


def test_disk_bytes_is_the_length_of_the_file_the_export_writes_for_that_row(quantized_sweep):
    out, document = quantized_sweep
    rows = {(row["curve"], row["sparsity"]): row for row in document["rows"]}
    files = document["summary"]["export"]["files"]
    assert files["ptz"]["bytes"] == (out / "resnet20_layerwise_50.ptz").stat().st_size == rows["layerwise", 0.5]["disk_bytes"]
    assert files["q8"]["bytes"] == rows["layerwise+Q8", 0.5]["disk_bytes"]
    assert files["q4"]["bytes"] == rows["layerwise+Q4", 0.5]["disk_bytes"]


def test_the_onnx_export_is_checked_against_pytorch_on_the_test_split(quantized_sweep):
    _, document = quantized_sweep
    checked = document["summary"]["export"]
    assert checked["images"] == 80
    assert abs(checked["onnx_acc"] - checked["pytorch_acc"]) <= 0.05


def test_a_quantised_export_loads_back_to_the_accuracy_of_its_sweep_row(quantized_sweep, fake_cifar, tmp_path):
    out, document = quantized_sweep
    state, extra = load_compact(out / "resnet20_layerwise_50_q4.ptz")
    assert extra["quantize"] == 4
    sweep.main(["--weights", str(out / "resnet20_layerwise_50_q4.ptz"), "--arch", "resnet20", "--data_dir", str(fake_cifar),
                "--output_dir", str(tmp_path), "--sparsities", "0"])
    reloaded = json.loads((tmp_path / "sweep.json").read_text())["rows"][0]
    row = next(row for row in document["rows"] if row["curve"] == "layerwise+Q4" and row["sparsity"] == 0.5)
    assert (reloaded["correct"], reloaded["total"]) == (row["correct"], row["total"])
    assert reloaded["test_loss"] == pytest.approx(row["test_loss"], abs=1e-5)


def test_the_smallest_file_within_tolerance_is_reported(quantized_sweep):
    _, document = quantized_sweep
    smallest = document["summary"]["smallest_file"]
    dense = next(row for row in document["rows"] if row["curve"] == "layerwise" and row["sparsity"] == 0)
    within = [row for row in document["rows"] if row["correct"] / row["total"] * 100 >= dense["test_acc"] - 1.0]
    assert smallest["disk_bytes"] == min(row["disk_bytes"] for row in within)
    assert smallest["times_smaller"] == pytest.approx(dense["dense_bytes"] / smallest["disk_bytes"])
