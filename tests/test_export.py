"""export.py: the compact file format round-trips, is small, matches the byte arithmetic, and is written whole."""
import io
import os

import pytest
import torch

from magprune.core.accounting import storage_report
from magprune.core.export import compact_bytes, export_compact, load_compact, pack_tensor
from magprune.core.nets import build_model
from magprune.core.pruning import apply_pruning, permanent_copy, prunable_layers


def test_export_round_trip_reproduces_the_masked_model_exactly(tmp_path, random_resnet20):
    model = random_resnet20()
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


def test_compact_file_is_much_smaller_than_the_dense_state_dict(tmp_path, random_resnet20):
    model = random_resnet20()
    apply_pruning(model, 0.9, "layerwise")
    path = tmp_path / "resnet20.compact"
    export_compact(model, path)
    dense_file = io.BytesIO()
    torch.save(permanent_copy(model).state_dict(), dense_file)

    assert path.stat().st_size < 0.2 * len(dense_file.getbuffer())
    assert len(compact_bytes(model)) == path.stat().st_size


def test_a_failed_export_leaves_the_previous_file_and_no_temporary(tmp_path, monkeypatch, random_resnet20):
    model = random_resnet20()
    path = tmp_path / "resnet20.compact"
    export_compact(model, path, extra={"version": 1})

    def crash(source, target):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError, match="disk full"):
        export_compact(model, path, extra={"version": 2})
    assert load_compact(path)[1] == {"version": 1}
    assert os.listdir(tmp_path) == [path.name]




def test_the_bitmask_arithmetic_is_the_size_of_the_packed_tensors(random_resnet20):
    model = random_resnet20()
    apply_pruning(model, 0.7, "global")
    network = permanent_copy(model)
    report = storage_report(network)
    sparse = {f"{name}.weight" for name in prunable_layers(network)}
    packed_bytes = 0
    for key, parameter in network.named_parameters():
        packed = pack_tensor(parameter)
        if key in sparse:
            assert "mask_bits" in packed, key
            packed_bytes += packed["mask_bits"].numel() + packed["values"].numel() * packed["values"].element_size()
        else:
            packed_bytes += parameter.numel() * 4
    assert report["bitmask_bytes"] == packed_bytes


def test_the_csr_arithmetic_is_the_size_of_torch_csr_tensors_with_int32_indices(random_resnet20):
    model = random_resnet20()
    apply_pruning(model, 0.6, "layerwise")
    network = permanent_copy(model)
    sparse = {f"{name}.weight" for name in prunable_layers(network)}
    csr_bytes = 0
    for key, parameter in network.named_parameters():
        if key in sparse:
            matrix = parameter.detach().flatten(1).to_sparse_csr()
            parts = (matrix.values(), matrix.col_indices().int(), matrix.crow_indices().int())
            csr_bytes += sum(part.numel() * part.element_size() for part in parts)
        else:
            csr_bytes += parameter.numel() * 4
    assert storage_report(network)["csr_bytes"] == csr_bytes
