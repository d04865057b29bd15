"""Gradual pruning while training: Zhu & Gupta's cubic schedule, its callback, and train.py --prune_to."""
import re
from pathlib import Path

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

import train
from lightning_module import ImageClassifier
from magprune.core.nets import build_model
from magprune.core.pruning import METHODS, apply_pruning, prunable_layers, sparsity_report
from prune_callback import GradualPruningCallback, cubic_sparsity

EPOCHS = 3
# fake_cifar's 200 training images less the 10% validation split, at batch 32.
BATCHES_PER_EPOCH = 6


def test_cubic_sparsity_holds_outside_the_span_and_is_cubic_inside():
    assert cubic_sparsity(0, 10, 110, 0.1, 0.9) == 0.1
    assert cubic_sparsity(10, 10, 110, 0.1, 0.9) == 0.1
    assert cubic_sparsity(60, 10, 110, 0.1, 0.9) == pytest.approx(0.9 - 0.8 * 0.5**3)
    assert cubic_sparsity(110, 10, 110, 0.1, 0.9) == 0.9
    assert cubic_sparsity(500, 10, 110, 0.1, 0.9) == 0.9


def test_cubic_sparsity_rises_monotonically_and_fastest_at_first():
    values = [cubic_sparsity(step, 0, 100, 0.0, 0.8) for step in range(101)]
    increments = [later - earlier for earlier, later in zip(values, values[1:])]
    assert all(increment >= 0 for increment in increments)
    assert increments == sorted(increments, reverse=True)


def test_the_callback_prunes_every_n_steps_and_on_the_last_batch_of_the_span():
    callback = GradualPruningCallback(0.8, start_epoch=1, end_epoch=3, every_n_steps=4)
    schedule = [callback.scheduled_sparsity(10, step) for step in range(40)]
    changes = [step for step in range(1, 40) if schedule[step] != schedule[step - 1]]
    assert changes == [14, 18, 22, 26, 29]
    assert schedule[:14] == [0.0] * 14 and schedule[29:] == [0.8] * 11


@pytest.mark.parametrize("argv, message", [
    (["--prune_to", "1.5"], "--prune_to is a sparsity in [0, 1]"),
    (["--prune_to", "0.5", "--epochs", "1"], "must come before --prune_end_epoch 0"),
    (["--prune_to", "0.5", "--epochs", "4", "--prune_end_epoch", "5"], "--prune_end_epoch 5 is past"),
])
def test_bad_schedules_are_one_line_errors(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        train.main(["--arch", "resnet20", *argv])
    error = capsys.readouterr().err
    assert exit_info.value.code == 2 and message in error and len(error.strip().splitlines()) == 1


@pytest.mark.parametrize("method", [name for name, method in METHODS.items() if method.levels is None and not method.calibrated])
def test_pruning_again_keeps_the_parameters_the_optimizer_updates(method):
    torch.manual_seed(0)
    model = build_model("resnet20")
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    images, labels = torch.randn(4, 3, 32, 32), torch.randint(0, 10, (4,))

    def train_step():
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(model(images), labels).backward()
        optimizer.step()

    apply_pruning(model, 0.3, method)
    first_masks = {name: layer.weight_mask.clone() for name, layer in prunable_layers(model).items()}
    train_step()
    apply_pruning(model, 0.6, method)
    trained = {name: layer.weight_orig.detach().clone() for name, layer in prunable_layers(model).items()}
    train_step()

    optimized = {id(parameter) for group in optimizer.param_groups for parameter in group["params"]}
    assert optimized == {id(parameter) for parameter in model.parameters()}
    for name, layer in prunable_layers(model).items():
        assert not torch.equal(layer.weight_orig, trained[name]), f"{name} no longer trains"
        assert not (layer.weight_mask.bool() & ~first_masks[name].bool()).any(), f"{name} regrew weights"
    # Whole filters round per layer: 10 of 16 is 0.625.
    assert sparsity_report(model)["sparsity"] == pytest.approx(0.6, abs=0.03)


def train_args(fake_cifar: Path, root: Path, *extra: str) -> list[str]:
    return ["--arch", "resnet20", "--data_dir", str(fake_cifar), "--T_max", str(EPOCHS), "--batch_size", "32",
            "--learning_rate", "0.05", "--num_workers", "0", "--prune_to", "0.5", "--prune_every_steps", "2",
            "--checkpoint_root", str(root / "checkpoints"), "--log_root", str(root / "lightning_logs"), *extra]


@pytest.fixture(scope="module")
def pruned_run(tmp_path_factory, fake_cifar) -> Path:
    """Three epochs pruned to 50% over the first two (the default end, 3 * 3 // 4), two batches apart."""
    root = tmp_path_factory.mktemp("pruned")
    train.main(train_args(fake_cifar, root, "--epochs", str(EPOCHS)))
    return root


def run_folder(root: Path) -> Path:
    return root / "checkpoints" / "resnet20" / "version_0"


def scalars(root: Path, tag: str) -> list:
    events = EventAccumulator(str(root / "lightning_logs" / "train" / "version_0"))
    events.Reload()
    return events.Scalars(tag)


def test_the_best_checkpoint_is_from_an_epoch_at_final_sparsity_and_loads_half_pruned(pruned_run):
    best = next(run_folder(pruned_run).glob("best*.ckpt"))
    assert int(re.search(r"epoch(\d+)", best.name).group(1)) >= 1
    state = torch.load(best, weights_only=True)["state_dict"]
    assert "model.conv1.weight_orig" in state and "model.conv1.weight_mask" in state
    model = ImageClassifier.load_from_checkpoint(best).eval()
    # The masked `weight` attribute is only recomputed from weight_orig * weight_mask by a forward pass.
    model(torch.zeros(1, 3, 32, 32))
    report = sparsity_report(model.model)
    assert report["sparsity"] == pytest.approx(0.5, abs=1e-3)
    assert all(sparsity == pytest.approx(0.5, abs=0.02) for sparsity in report["layers"].values())


def test_every_checkpoint_of_a_pruned_run_keeps_its_schedule_among_the_hyper_parameters(pruned_run):
    for path in run_folder(pruned_run).glob("*.ckpt"):
        hparams = torch.load(path, weights_only=True)["hyper_parameters"]
        assert {key: hparams[key] for key in ("prune_to", "prune_method", "prune_start_epoch", "prune_end_epoch", "prune_every_steps")} \
            == {"prune_to": 0.5, "prune_method": "layerwise", "prune_start_epoch": 0, "prune_end_epoch": 2, "prune_every_steps": 2}


def test_a_loaded_pruned_checkpoint_reports_its_sparsity_before_any_forward_pass(pruned_run):
    model = ImageClassifier.load_from_checkpoint(next(run_folder(pruned_run).glob("best*.ckpt")))
    assert sparsity_report(model.model)["sparsity"] == pytest.approx(0.5, abs=1e-3)


def test_train_sparsity_rises_to_the_final_sparsity_in_tensorboard(pruned_run):
    logged = scalars(pruned_run, "train/sparsity")
    steps, values = [event.step for event in logged], [event.value for event in logged]
    assert len(values) >= 3 and steps == sorted(steps) and max(steps) < 2 * BATCHES_PER_EPOCH
    assert all(earlier < later for earlier, later in zip(values, values[1:]))
    assert values[-1] == pytest.approx(0.5, abs=1e-3)


def test_val_acc_at_final_sparsity_counts_only_after_the_schedule(pruned_run):
    at_final = [event.value for event in scalars(pruned_run, "val/acc_at_final_sparsity")]
    accuracy = [event.value for event in scalars(pruned_run, "val/acc")]
    assert at_final[0] == -1 and at_final[1:] == pytest.approx(accuracy[1:])


def test_resuming_a_pruned_run_keeps_its_masks(fake_cifar, tmp_path):
    schedule = ["--prune_end_epoch", "1", "--limit_train_batches", "2", "--limit_test_batches", "1"]
    train.main(train_args(fake_cifar, tmp_path, "--epochs", "2", *schedule))
    last = run_folder(tmp_path) / "last.ckpt"
    masks_before = {key: value for key, value in torch.load(last, weights_only=True)["state_dict"].items()
                    if key.endswith("_mask")}
    train.main(train_args(fake_cifar, tmp_path, "--epochs", "3", *schedule, "--resume"))
    resumed = torch.load(last, weights_only=True)
    assert resumed["epoch"] == 2 and resumed["global_step"] == 3 * 2
    masks_after = {key: value for key, value in resumed["state_dict"].items() if key.endswith("_mask")}
    assert masks_before and masks_after.keys() == masks_before.keys()
    assert all(torch.equal(masks_after[key], masks_before[key]) for key in masks_before)
