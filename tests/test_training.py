"""ImageClassifier's optimisation: the cosine's length in epochs, the fast recipe's warm-up and decay groups."""
import math

import lightning as L
import pytest
import torch

import train
from datamodule import CIFAR10DataModule, normalize
from lightning_module import ImageClassifier


class LearningRates(L.Callback):
    """The learning rate each training batch is taken with."""

    def __init__(self):
        self.rates = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.rates.append(trainer.optimizers[0].param_groups[0]["lr"])


def rates_over(model: ImageClassifier, fake_cifar, epochs: int, batches: int) -> list[float]:
    recorder = LearningRates()
    trainer = L.Trainer(max_epochs=epochs, limit_train_batches=batches, limit_val_batches=0, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        callbacks=[recorder])
    trainer.fit(model, datamodule=CIFAR10DataModule(str(fake_cifar), batch_size=16))
    return recorder.rates


def test_t_max_is_in_epochs_and_the_cosine_steps_every_batch(fake_cifar):
    rates = rates_over(ImageClassifier(arch="resnet20", learning_rate=0.1, T_max=2), fake_cifar, epochs=3, batches=4)
    # Half a cosine period over 2 epochs of 4 batches: zero at step 8, then back up (the original's T_max < epochs).
    expected = [0.1 * (1 + math.cos(math.pi * step / 8)) / 2 for step in range(12)]
    assert rates == pytest.approx(expected, abs=1e-9)


def test_warm_up_climbs_to_the_peak_then_one_cosine_ends_at_zero(fake_cifar):
    model = ImageClassifier(arch="resnet20", learning_rate=0.2, T_max=2, warmup_epochs=1)
    rates = rates_over(model, fake_cifar, epochs=3, batches=4)
    assert rates[:5] == pytest.approx([0.05, 0.0875, 0.125, 0.1625, 0.2])
    assert all(later < earlier for earlier, later in zip(rates[4:], rates[5:]))
    assert rates[-1] == pytest.approx(0.2 * (1 + math.cos(math.pi * 7 / 8)) / 2)


def test_without_decay_on_norms_and_biases_only_weight_matrices_decay():
    model = ImageClassifier(arch="resnet20", weight_decay=5e-4, decay_norms_and_biases=False)
    model.trainer = type("Trainer", (), {"estimated_stepping_batches": 10, "max_epochs": 1})()
    groups = model.configure_optimizers()["optimizer"].param_groups
    decayed = [parameter for group in groups if group["weight_decay"] > 0 for parameter in group["params"]]
    spared = [parameter for group in groups if group["weight_decay"] == 0 for parameter in group["params"]]
    assert decayed and all(parameter.ndim > 1 for parameter in decayed)
    norms = [module.weight for module in model.modules() if isinstance(module, torch.nn.BatchNorm2d)]
    assert spared and all(any(parameter is norm for parameter in spared) for norm in norms)
    assert len(decayed) + len(spared) == len(list(model.parameters()))


def test_a_fast_recipe_checkpoint_records_the_recipe(fake_cifar, tmp_path):
    train.main(["--recipe", "fast", "--arch", "resnet20", "--data_dir", str(fake_cifar), "--epochs", "3",
                "--batch_size", "64", "--num_workers", "0", "--limit_train_batches", "1", "--limit_val_batches", "1",
                "--limit_test_batches", "1", "--checkpoint_root", str(tmp_path / "checkpoints"),
                "--log_root", str(tmp_path / "lightning_logs")])
    saved = torch.load(tmp_path / "checkpoints" / "resnet20" / "version_0" / "last.ckpt", weights_only=True)
    hparams = saved["hyper_parameters"]
    assert hparams["recipe"] == "fast" and hparams["nesterov"] and hparams["label_smoothing"] == 0.1
    assert hparams["learning_rate"] == pytest.approx(0.1 * 64 / 128)
    assert (hparams["warmup_epochs"], hparams["T_max"]) == (2, 1)
    assert not hparams["decay_norms_and_biases"] and hparams["channels_last"]


def test_a_flag_given_explicitly_beats_the_recipe():
    args = train.parse_args(["--recipe", "fast", "--learning_rate", "0.3", "--no-nesterov", "--epochs", "12"])
    assert (args.learning_rate, args.nesterov, args.epochs, args.T_max) == (0.3, False, 12, 10)
    original = train.parse_args([])
    assert (original.learning_rate, original.epochs, original.T_max, original.warmup_epochs) == (0.01, 60, 20, 0)


def test_a_run_can_start_from_another_runs_weights(checkpoint, fake_cifar, tmp_path):
    # At learning rate 0 the only training step changes no weight: the run's weights are the ones it started from.
    train.main(["--arch", "resnet20", "--init_from", str(checkpoint), "--data_dir", str(fake_cifar), "--epochs", "1",
                "--learning_rate", "0", "--num_workers", "0", "--limit_train_batches", "1", "--limit_val_batches", "1",
                "--limit_test_batches", "1", "--checkpoint_root", str(tmp_path / "checkpoints"),
                "--log_root", str(tmp_path / "lightning_logs")])
    started = torch.load(checkpoint, weights_only=True)["state_dict"]
    trained = torch.load(tmp_path / "checkpoints" / "resnet20" / "version_0" / "last.ckpt", weights_only=True)["state_dict"]
    weights = [name for name in started if name.endswith("weight") and started[name].ndim > 1]
    assert len(weights) == 20 and all(torch.equal(trained[name], started[name]) for name in weights)


def test_starting_from_another_network_is_a_clear_error(checkpoint, fake_cifar, tmp_path, capsys):
    with pytest.raises(SystemExit) as stopped:
        train.main(["--arch", "resnet32", "--init_from", str(checkpoint), "--data_dir", str(fake_cifar),
                    "--checkpoint_root", str(tmp_path / "checkpoints"), "--log_root", str(tmp_path / "lightning_logs")])
    assert stopped.value.code == 2
    assert "holds a resnet20, not the --arch resnet32" in capsys.readouterr().err


class LeftMinusRight(torch.nn.Module):
    """Class 0 when the leftmost column of the image is brighter than the rightmost, else class 1: a mirror
    image negates the difference exactly, so the two answers average to a tie."""

    def forward(self, images):
        difference = (images[..., 0] - images[..., -1]).mean((1, 2))
        return torch.stack([difference, -difference, *[torch.full_like(difference, -1e9)] * 8], dim=1)


@pytest.mark.parametrize("flip_test", [False, True])
def test_a_flip_test_answers_with_the_mean_logits_of_an_image_and_its_mirror(fake_cifar, flip_test):
    datamodule = CIFAR10DataModule(str(fake_cifar), batch_size=16)
    module = ImageClassifier(arch="resnet20", network=LeftMinusRight(), flip_test=flip_test)
    L.Trainer(logger=False, enable_progress_bar=False, enable_model_summary=False).test(module, datamodule=datamodule, verbose=False)
    images, labels = datamodule.test_set.tensors
    if flip_test:  # the two halves average out: every logit of classes 0 and 1 ties, and the tie goes to class 0
        expected = int((labels == 0).sum())
    else:
        expected = int((LeftMinusRight()(normalize(images, datamodule.hparams.mean, datamodule.hparams.std)).argmax(1) == labels).sum())
    assert module.test_counts.compute() == (expected, len(labels))
