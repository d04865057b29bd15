"""OBS reconstruction and LAMP allocation: the closed forms they rest on, and what they promise a sweep."""
import copy
import json

import pytest
import torch
from torch import nn

import sweep
from magprune.core import pruning
from magprune.core.obs import Calibration, prune_by_obs, reconstruct
from magprune.core.pruning import METHODS, apply_pruning, groups_by_four, prunable_layers, ranking, sparsity_report


def small_cnn() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 16, 3, padding=1),
                         nn.BatchNorm2d(16), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 4)).eval()


def calibration(count: int = 32, seed: int = 0) -> Calibration:
    return Calibration(torch.randn(count, 3, 8, 8, generator=torch.Generator().manual_seed(seed)), block=8)


def test_with_h_the_identity_the_masks_are_magnitudes_and_no_survivor_moves():
    weight = torch.randn(6, 40, generator=torch.Generator().manual_seed(1))
    corrected, kept = reconstruct(weight, torch.eye(40), 100, block=8)
    magnitude = torch.ones(240, dtype=torch.bool)
    magnitude[weight.abs().flatten().argsort()[:100]] = False
    assert torch.equal(kept.flatten(), magnitude)
    assert torch.allclose(corrected[kept].float(), weight[kept])
    assert torch.all(corrected[~kept] == 0)


def test_one_removal_moves_the_row_and_costs_what_the_closed_form_says():
    # H = [[2, 1], [1, 2]], H^-1 = [[2, -1], [-1, 2]] / 3. Removing w0 = 0.3 changes the row by
    # -w0 / [H^-1]_00 * [H^-1]_0,: = -0.45 * [2/3, -1/3] = [-0.3, 0.15]; its error is w0^2 / [H^-1]_00 = 0.135.
    hessian = torch.tensor([[2.0, 1.0], [1.0, 2.0]])
    weight = torch.tensor([[0.3, 1.0]])
    corrected, kept = reconstruct(weight, hessian, 1, damping=0.0)
    assert kept.tolist() == [[False, True]]
    assert torch.allclose(corrected, torch.tensor([[0.0, 1.15]], dtype=torch.float64))
    change = (corrected - weight.double())[0]
    assert change @ hessian.double() @ change == pytest.approx(0.135)


def test_a_weight_whose_input_is_weak_goes_before_a_smaller_one_whose_input_is_strong():
    # Scores w^2 / [H^-1]_jj: 1^2 / 1 = 1 for the first, 0.5^2 / 0.01 = 25 for the second.
    _, kept = reconstruct(torch.tensor([[1.0, 0.5]]), torch.diag(torch.tensor([1.0, 100.0])), 1, damping=0.0)
    assert kept.tolist() == [[False, True]]


def test_a_layer_that_loses_nothing_still_corrects_what_the_layer_before_it_lost():
    dense = small_cnn()
    data = calibration(64)
    network = copy.deepcopy(dense)
    layers = prunable_layers(network)
    first, second = layers
    prune_by_obs(network, layers, {first: 100, second: 0}, data)
    uncorrected = copy.deepcopy(network)
    uncorrected.get_submodule(second).weight_orig.data = dense.get_submodule(second).weight.detach().clone()
    assert torch.all(network.get_submodule(second).weight != 0)
    assert layer_output_error(network, dense, data.images) < 0.9 * layer_output_error(uncorrected, dense, data.images)


def layer_output_error(pruned: nn.Module, dense: nn.Module, images: torch.Tensor) -> float:
    with torch.no_grad():
        return float((pruned[:4](images) - dense[:4](images)).pow(2).sum())


def test_obs_misses_the_calibration_outputs_less_than_magnitude_removing_as_many():
    dense = small_cnn()
    data = calibration(64)
    obs, magnitude = copy.deepcopy(dense), copy.deepcopy(dense)
    apply_pruning(obs, 0.6, "obs-layerwise", calibration=data)
    apply_pruning(magnitude, 0.6, "layerwise")
    assert sparsity_report(obs)["zeros"] == sparsity_report(magnitude)["zeros"]
    assert layer_output_error(obs, dense, data.images) < 0.5 * layer_output_error(magnitude, dense, data.images)


def independent_lamp_scores(weights: list[float]) -> list[float]:
    """The paper's definition, by loops: w_u^2 / sum of w_v^2 over the weights v with |w_v| >= |w_u|."""
    return [w * w / sum(v * v for v in weights if abs(v) >= abs(w)) for w in weights]


def test_lamp_removes_the_weights_of_lowest_score_by_the_papers_definition():
    first, second = nn.Linear(5, 1, bias=False), nn.Linear(4, 1, bias=False)
    values = ([0.5, -0.1, 0.9, 0.3, -0.7], [2.0, -4.0, 1.0, 3.0])
    with torch.no_grad():
        first.weight.copy_(torch.tensor([values[0]]))
        second.weight.copy_(torch.tensor([values[1]]))
    network = nn.Sequential(first, second, nn.Linear(1, 1))
    scores = independent_lamp_scores(values[0]) + independent_lamp_scores(values[1])
    lowest = sorted(range(9), key=scores.__getitem__)[:4]
    apply_pruning(network, 4 / 9, "lamp")
    removed = (torch.cat([first.weight.flatten(), second.weight.flatten()]) == 0).nonzero().flatten().tolist()
    assert sorted(removed) == sorted(lowest)


@pytest.mark.parametrize("method", ["obs-layerwise", "obs-global", "obs-lamp"])
def test_obs_removes_exactly_the_allocations_count_from_each_layer_and_zeroes_it(method):
    network = small_cnn()
    allocation = ranking(network, method.removeprefix("obs-"))
    apply_pruning(network, 0.55, method, calibration=calibration())
    for name, module in prunable_layers(network).items():
        positions, pool = allocation[name]
        removed = ~module.weight_mask.bool()
        assert int(removed.sum()) == int((positions < round(0.55 * pool)).sum())
        assert torch.all(module.weight[removed] == 0)


def test_the_same_images_give_the_same_masks_and_weights_twice():
    first, second = small_cnn(), small_cnn()
    apply_pruning(first, 0.5, "obs-global", calibration=calibration(seed=3))
    apply_pruning(second, 0.5, "obs-global", calibration=calibration(seed=3))
    assert all(torch.equal(a, b) for a, b in zip(first.state_dict().values(), second.state_dict().values()))


def test_a_second_obs_step_holds_the_first_steps_zeros():
    network = small_cnn()
    apply_pruning(network, 0.4, "obs-global", calibration=calibration())
    before = {name: module.weight == 0 for name, module in prunable_layers(network).items()}
    apply_pruning(network, 0.7, "obs-global", calibration=calibration(seed=1))
    assert all(torch.all(module.weight[before[name]] == 0) for name, module in prunable_layers(network).items())
    assert sparsity_report(network)["sparsity"] == pytest.approx(0.7, abs=1e-3)


def test_a_grouped_convolution_is_pruned_as_its_groups_each_its_own_layer_with_an_equal_share():
    torch.manual_seed(0)
    grouped = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 6, 3, padding=1, groups=2),
                            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(6, 2)).eval()
    images = calibration(16).images
    inputs = grouped[1](grouped[0](images))
    pruned = copy.deepcopy(grouped)
    prune_by_obs(pruned, {"2": pruned[2]}, {"2": 25}, Calibration(images, block=8))
    assert int((pruned[2].weight == 0).sum()) == 25
    for group, share in ((0, 13), (1, 12)):  # 25 removals dealt to two groups
        alone = nn.Sequential(nn.Conv2d(2, 3, 3, padding=1)).eval()
        alone[0].weight.data = grouped[2].weight[3 * group : 3 * group + 3].clone()
        prune_by_obs(alone, {"0": alone[0]}, {"0": share}, Calibration(inputs[:, 2 * group : 2 * group + 2], block=8))
        assert torch.allclose(pruned[2].weight[3 * group : 3 * group + 3], alone[0].weight, atol=1e-5)


def test_obs_two_of_four_keeps_two_of_every_four_input_channels_and_leaves_the_stem_dense():
    network = small_cnn()
    apply_pruning(network, 0.5, "obs-2:4", calibration=calibration())
    stem, second = network[0], network[3]
    assert not groups_by_four(stem) and torch.all(stem.weight != 0)
    groups = (second.weight != 0).movedim(1, -1).reshape(-1, 4)
    assert torch.all(groups.sum(dim=1) == 2)


def test_obs_without_calibration_images_is_a_value_error():
    with pytest.raises(ValueError, match="calibration images"):
        apply_pruning(small_cnn(), 0.5, "obs-global")
    with pytest.raises(ValueError, match="calibration images"):
        prune_by_obs(small_cnn(), {}, {}, Calibration(torch.empty(0, 3, 8, 8)))


def test_every_obs_method_is_calibrated_and_every_other_is_not():
    assert {name for name, method in METHODS.items() if method.calibrated} == {"obs-layerwise", "obs-global", "obs-lamp", "obs-2:4"}


def test_a_sweep_prunes_by_obs_once_a_level_for_every_recovery_and_exports_it(checkpoint, fake_cifar, tmp_path, monkeypatch):
    passes = []
    monkeypatch.setattr(pruning, "prune_by_obs", lambda *args: passes.append(args) or prune_by_obs(*args))
    sweep.main(["--checkpoint", str(checkpoint), "--data_dir", str(fake_cifar), "--output_dir", str(tmp_path),
                "--methods", "obs-global", "--sparsities", "0,0.6", "--bn_recalibrate", "2", "--finetune_epochs", "1",
                "--finetune_batches", "2", "--calibration_images", "16", "--quantize", "8", "--export", "0.6"])
    rows = json.loads((tmp_path / "sweep.json").read_text())["rows"]
    assert {row["curve"] for row in rows} == {"obs-global", "obs-global+BN", "obs-global+FT", "obs-global+Q8",
                                             "obs-global+BN+Q8", "obs-global+FT+Q8"}
    assert all(row["achieved_sparsity"] == pytest.approx(row["sparsity"], abs=1e-4) for row in rows if not row["quantize"])
    assert len(passes) == 2  # the level's, which every recovery and the summary start from; the export's
    assert (tmp_path / "resnet20_obs-global_60.ptz").is_file()


def test_a_chain_prunes_each_step_by_obs_from_the_retrained_network(checkpoint, fake_cifar, tmp_path):
    sweep.main(["--checkpoint", str(checkpoint), "--data_dir", str(fake_cifar), "--output_dir", str(tmp_path),
                "--methods", "obs-lamp", "--sparsities", "0,0.6", "--iterative", "finetune", "--chain_levels", "0.3,0.6",
                "--retrain_epochs", "1", "--finetune_batches", "2", "--calibration_images", "16"])
    rows = [row for row in json.loads((tmp_path / "sweep.json").read_text())["rows"] if "+IT-" in row["curve"]]
    assert [(row["sparsity"], round(row["achieved_sparsity"], 3)) for row in rows] == [(0.3, 0.3), (0.6, 0.6)]


@pytest.mark.parametrize("flags, message", [
    (["--calibration_images", "0"], "--calibration_images: counts images: 1 or more, got 0"),
    (["--obs_block", "6"], "--obs_block: a multiple of 4, got 6"),
])
def test_bad_calibration_settings_are_one_line_errors(checkpoint, fake_cifar, tmp_path, capsys, flags, message):
    with pytest.raises(SystemExit) as exit_info:
        sweep.main(["--checkpoint", str(checkpoint), "--data_dir", str(fake_cifar), "--output_dir", str(tmp_path),
                    "--methods", "obs-global", *flags])
    error = capsys.readouterr().err.strip()
    assert exit_info.value.code == 2 and message in error and "\n" not in error and "Traceback" not in error, error


def test_calibration_images_are_augmented_training_images_never_validation_or_test_ones(fake_cifar, monkeypatch):
    import datamodule as datamodule_module

    seen = []
    augment = datamodule_module.augment
    monkeypatch.setattr(datamodule_module, "augment", lambda images, *args: seen.append(images.clone()) or augment(images, *args))
    data = datamodule_module.CIFAR10DataModule(data_dir=str(fake_cifar), val_fraction=0.2)
    images = data.calibration_images(40, seed=0, device="cpu")
    data.setup("test")
    drawn = {image.numpy().tobytes() for image in seen[0]}
    assert images.shape == (40, 3, 32, 32) and len(drawn) == 40
    assert drawn <= {image.numpy().tobytes() for image in data.train_set.tensors[0]}
    assert not drawn & {image.numpy().tobytes() for split in (data.val_set, data.test_set) for image in split.tensors[0]}
    assert torch.equal(images, data.calibration_images(40, seed=0, device="cpu"))
    assert not torch.equal(images, data.calibration_images(40, seed=1, device="cpu"))


def test_the_study_script_refuses_an_unknown_step_before_running_anything(project):
    import subprocess

    done = subprocess.run(["bash", str(project / "scripts" / "obs_study.sh"), "knees_val", "nope"], capture_output=True, text=True)
    assert done.returncode == 2 and "unknown step 'nope'" in done.stderr and not done.stdout
