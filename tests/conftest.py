"""Fixtures that keep every test tiny, on the CPU and offline: fake CIFAR-10 folders, small runs."""
import runpy
import subprocess
import types
from pathlib import Path

import pytest
import torch
from PIL import Image
from torch import nn

from magprune.core.nets import build_model
from magprune.sweep.config import SweepConfig
from magprune.sweep.recoveries import curve_name
from magprune.sweep.searches import Sweep
from magprune.sweep.store import RowStore

PROJECT = Path(__file__).resolve().parents[1]


def shared_folder() -> Path:
    """`../shared` beside the project, or beside the checkout it was cloned from (a clone in a temp folder)."""
    origin = subprocess.run(["git", "-C", str(PROJECT), "remote", "get-url", "origin"], capture_output=True, text=True).stdout.strip()
    candidates = [PROJECT.parent / "shared"] + ([Path(origin).parent / "shared"] if origin else [])
    return next((folder for folder in candidates if folder.is_dir()), candidates[0])


CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")


def write_image_folder(root: Path, images_per_class: dict[str, int], seed: int = 0) -> Path:
    """CIFAR-10 in ImageFolder layout: 32x32 PNGs whose colour depends on the class, so it is learnable."""
    generator = torch.Generator().manual_seed(seed)
    for split, count in images_per_class.items():
        for label, name in enumerate(CLASSES):
            folder = root / split / name
            folder.mkdir(parents=True)
            for index in range(count):
                noise = torch.randint(0, 60, (3, 32, 32), generator=generator)
                base = torch.tensor([label * 25, 255 - label * 25, (label * 77) % 255]).view(3, 1, 1)
                image = (base + noise).clamp(0, 255).to(torch.uint8)
                Image.fromarray(image.permute(1, 2, 0).numpy()).save(folder / f"{index:04d}.png")
    return root


@pytest.fixture(scope="session")
def fake_cifar(tmp_path_factory) -> Path:
    return write_image_folder(tmp_path_factory.mktemp("cifar"), {"train": 20, "test": 8})


@pytest.fixture(scope="session")
def trained(tmp_path_factory, fake_cifar) -> Path:
    """A two-epoch ResNet-20 run of train.py on the fake data; its folder holds checkpoints/ and lightning_logs/."""
    import train

    torch.set_num_threads(1)  # session fixtures start before `_one_thread`; one thread makes the run the same in any test order
    root = tmp_path_factory.mktemp("run")
    train.main(["--arch", "resnet20", "--data_dir", str(fake_cifar), "--epochs", "2", "--T_max", "2",
                "--batch_size", "32", "--learning_rate", "0.05", "--num_workers", "0",
                "--checkpoint_root", str(root / "checkpoints"), "--log_root", str(root / "lightning_logs")])
    return root


@pytest.fixture(scope="session")
def checkpoint(trained) -> Path:
    """The best checkpoint of that run."""
    return next(trained.glob("checkpoints/resnet20/version_0/best*.ckpt"))


@pytest.fixture(scope="session")
def learnable_cifar(tmp_path_factory) -> Path:
    """Enough of the coloured classes for a ResNet-20 to learn them: 500 training and 200 test images."""
    return write_image_folder(tmp_path_factory.mktemp("learnable"), {"train": 50, "test": 20}, seed=1)


@pytest.fixture(scope="session")
def learned(tmp_path_factory, learnable_cifar) -> Path:
    """The best checkpoint of a ResNet-20 that has learned `learnable_cifar`: 100% on its 200 test images.

    A model that knows its task is what lets a test assert that pruning hurts, that magnitude beats
    random, that recovery recovers. Eight epochs of the fast recipe: about 45 s on one core.
    """
    import train

    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("learned")
    train.main(["--recipe", "fast", "--arch", "resnet20", "--data_dir", str(learnable_cifar), "--epochs", "8",
                "--warmup_epochs", "1", "--batch_size", "32", "--num_workers", "0",
                "--checkpoint_root", str(root / "checkpoints"), "--log_root", str(root / "lightning_logs")])
    return next(root.glob("checkpoints/resnet20/version_0/best*.ckpt"))


@pytest.fixture
def no_gpu(monkeypatch):
    """A machine without CUDA, whatever this one has."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)


@pytest.fixture(scope="session")
def project() -> Path:
    """The checkout under test: its entry points, scripts and shipped files."""
    return PROJECT


@pytest.fixture(scope="session")
def shared_models() -> Path:
    return shared_folder() / "models"


@pytest.fixture(scope="session")
def shared_cifar10() -> Path:
    return shared_folder() / "data" / "cifar10-jpeg"


@pytest.fixture(scope="session")
def cifar_classes() -> tuple[str, ...]:
    """CIFAR-10's class names in label order, as the fake folders name them."""
    return CLASSES


@pytest.fixture
def script():
    """A script of scripts/ as a module (its `main` and helpers), run from its file: scripts are no package."""

    def load(name: str) -> types.SimpleNamespace:
        return types.SimpleNamespace(**runpy.run_path(str(PROJECT / "scripts" / f"{name}.py")))

    return load


@pytest.fixture
def random_resnet20():
    """resnet20 with every parameter and batch-norm statistic drawn at random: batch norm starts
    with zero shifts, which would otherwise count as pruned weights and hide the BN shift effect."""

    def make(seed: int = 0) -> nn.Module:
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

    return make


class AnsweringTester:
    """A level tester that answers each level with `accuracy(method, sparsity, recovery) -> (correct, total)`, testing nothing."""

    def __init__(self, config, accuracy):
        self.config, self.accuracy, self.test_passes = config, accuracy, 0

    def evaluate(self, method, sparsity, recovery="none"):
        self.test_passes += 1
        correct, total = self.accuracy(method, sparsity, recovery)
        return [{"curve": curve_name(method, recovery), "method": method, "recovery": recovery, "sparsity": sparsity,
                 "achieved_sparsity": sparsity, "correct": correct, "total": total, "test_acc": 100 * correct / total,
                 "test_loss": 0.0}]


@pytest.fixture
def synthetic_sweep(tmp_path):
    """A Sweep of one layerwise curve over a folder of its own whose accuracies are given, not measured: searches in isolation."""

    def make(accuracy, **settings) -> Sweep:
        config = SweepConfig(output_dir=str(tmp_path / "synthetic"), arch="resnet20", **settings)
        Path(config.output_dir).mkdir(exist_ok=True)
        return Sweep(RowStore(config), AnsweringTester(config, accuracy))

    return make
