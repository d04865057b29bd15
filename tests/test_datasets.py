"""Data other than CIFAR-10 and networks other than ResNets: an image folder of any number of classes and any image
size, a torchvision classifier, CIFAR-100; each trains, sweeps and exports."""
import json
import pickle

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

import sweep
import train
from datamodule import CIFAR10DataModule
from lightning_module import load_classifier
from magprune.core.datasets import CIFAR10_MEAN, CIFAR100_MEAN, DATASETS, channel_statistics

CLASSES = 12
SIZE = 40


@pytest.fixture(scope="module")
def twelve_classes(tmp_path_factory):
    """12 classes of 40x40 PNGs, each class its own colour."""
    root = tmp_path_factory.mktemp("twelve")
    generator = torch.Generator().manual_seed(0)
    for split, count in (("train", 12), ("test", 4)):
        for label in range(CLASSES):
            folder = root / split / f"class_{label:02d}"
            folder.mkdir(parents=True)
            for index in range(count):
                base = torch.tensor([label * 20, 255 - label * 20, (label * 53) % 255]).view(3, 1, 1)
                image = (base + torch.randint(0, 40, (3, SIZE, SIZE), generator=generator)).clamp(0, 255).to(torch.uint8)
                Image.fromarray(image.permute(1, 2, 0).numpy()).save(folder / f"{index}.png")
    return root


def train_on(folder, root, arch: str, *extra) -> "Path":
    train.main(["--arch", arch, "--data_dir", str(folder), "--epochs", "1", "--T_max", "1", "--batch_size", "16",
                "--limit_train_batches", "3", "--num_workers", "0", "--checkpoint_root", str(root / "checkpoints"),
                "--log_root", str(root / "lightning_logs"), *extra])
    return next(root.glob("checkpoints/*/version_0/last.ckpt"))


@pytest.fixture(scope="module")
def twelve_class_checkpoint(twelve_classes, tmp_path_factory):
    return train_on(twelve_classes, tmp_path_factory.mktemp("twelve_run"), "resnet20")


@pytest.fixture(scope="module")
def mobilenet_checkpoint(twelve_classes, tmp_path_factory):
    """A torchvision network that is not a ResNet (depthwise convolutions, squeeze-excitation, hard-swish)."""
    return train_on(twelve_classes, tmp_path_factory.mktemp("mobilenet_run"), "tv:mobilenet_v3_small")


def test_a_checkpoint_records_the_classes_and_image_size_of_its_data(twelve_class_checkpoint):
    model, _, _ = load_classifier(twelve_class_checkpoint)
    assert model.hparams.num_classes == CLASSES and tuple(model.hparams.image_size) == (SIZE, SIZE)
    assert model.model.linear.out_features == CLASSES


@pytest.mark.parametrize("network", ["twelve_class_checkpoint", "mobilenet_checkpoint"])
def test_a_twelve_class_folder_of_40_pixel_images_sweeps_with_every_method_and_recovery_and_exports(
        twelve_classes, network, request, tmp_path):
    methods = "layerwise,global,random,filters,lamp,obs-global"
    sweep.main(["--checkpoint", str(request.getfixturevalue(network)), "--data_dir", str(twelve_classes),
                "--output_dir", str(tmp_path), "--methods", methods, "--sparsities", "0,0.5", "--bn_recalibrate", "2",
                "--finetune_epochs", "1", "--finetune_batches", "2", "--calibration_images", "16", "--export", "0.5",
                "--batch_size", "16"])
    document = json.loads((tmp_path / "sweep.json").read_text())
    assert document["config"]["num_classes"] == CLASSES and document["config"]["image_size"] == [SIZE, SIZE]
    curves = {row["curve"] for row in document["rows"]}
    assert curves == {f"{method}{suffix}" for method in methods.split(",") for suffix in ("", "+BN", "+FT")}
    assert all(row["total"] == CLASSES * 4 for row in document["rows"])
    assert document["summary"]["export"]["onnx_acc"] == pytest.approx(document["summary"]["export"]["pytorch_acc"])
    events = EventAccumulator(str(tmp_path / "global"))
    events.Reload()
    assert [event.step for event in events.Scalars("sweep/test_acc")] == [0, 500]


def test_a_weights_file_of_twelve_classes_sweeps_its_folder_and_a_ten_class_folder_is_a_one_line_error(
        twelve_classes, twelve_class_checkpoint, fake_cifar, tmp_path, capsys):
    weights = tmp_path / "twelve.pt"
    torch.save(load_classifier(twelve_class_checkpoint)[0].model.state_dict(), weights)
    flags = ["--weights", str(weights), "--arch", "resnet20", "--sparsities", "0"]
    sweep.main([*flags, "--data_dir", str(twelve_classes), "--output_dir", str(tmp_path / "sweep")])
    document = json.loads((tmp_path / "sweep" / "sweep.json").read_text())
    assert document["config"]["num_classes"] == CLASSES and document["rows"][0]["total"] == CLASSES * 4
    capsys.readouterr()
    with pytest.raises(SystemExit) as stopped:
        sweep.main([*flags, "--data_dir", str(fake_cifar), "--output_dir", str(tmp_path / "other")])
    error = capsys.readouterr().err.strip()
    assert stopped.value.code == 2 and "has 10 classes and the network answers 12" in error and "\n" not in error


def test_a_folder_data_set_is_normalised_by_its_own_training_images_and_the_checkpoint_records_it(twelve_classes, tmp_path):
    checkpoint = train_on(twelve_classes, tmp_path, "resnet20", "--dataset", "folder")
    _, data, _ = load_classifier(checkpoint)
    datamodule = CIFAR10DataModule(str(twelve_classes), dataset="folder")
    datamodule.setup("fit")
    measured = channel_statistics(datamodule.train_set.tensors[0])
    assert (tuple(data["mean"]), tuple(data["std"])) == measured
    assert measured[0] != CIFAR10_MEAN and data["dataset"] == "folder"


@pytest.fixture(scope="module")
def mixed_sizes(tmp_path_factory):
    """Two classes whose images are 30x20, 40x40 and 50x36: a folder as photographs come."""
    root = tmp_path_factory.mktemp("mixed")
    for split in ("train", "test"):
        for label in range(2):
            folder = root / split / f"class_{label}"
            folder.mkdir(parents=True)
            for index, (width, height) in enumerate([(30, 20), (40, 40), (50, 36)] * 3):
                Image.new("RGB", (width, height), (200 * label, 50, 100)).save(folder / f"{index}.png")
    return root


def test_images_of_several_sizes_train_at_the_image_size_asked_and_without_one_are_a_one_line_error(
        mixed_sizes, tmp_path, capsys):
    checkpoint = train_on(mixed_sizes, tmp_path / "resized", "resnet20", "--image_size", "24x28")
    model, data, _ = load_classifier(checkpoint)
    assert tuple(model.hparams.image_size) == (24, 28) and tuple(data["resize_to"]) == (24, 28)
    sweep.main(["--checkpoint", str(checkpoint), "--output_dir", str(tmp_path / "sweep"), "--sparsities", "0"])
    assert json.loads((tmp_path / "sweep" / "sweep.json").read_text())["config"]["image_size"] == [24, 28]
    capsys.readouterr()
    with pytest.raises(SystemExit) as stopped:
        train_on(mixed_sizes, tmp_path / "as_they_are", "resnet20")
    error = capsys.readouterr().err.strip()
    assert stopped.value.code == 2 and "differ in size" in error and "--image_size" in error and "\n" not in error


def write_cifar100(root):
    """torchvision's CIFAR-100 files (pickles of 3072-byte rows), 2 training and 1 test image a class."""
    folder = root / "cifar-100-python"
    folder.mkdir()
    generator = np.random.default_rng(0)
    for split, per_class in (("train", 2), ("test", 1)):
        labels = [label for label in range(100) for _ in range(per_class)]
        rows = generator.integers(0, 256, (len(labels), 3072), dtype=np.uint8)
        (folder / split).write_bytes(pickle.dumps({"data": rows, "fine_labels": labels}))
    (folder / "meta").write_bytes(pickle.dumps({"fine_label_names": [f"class_{label:02d}" for label in range(100)]}))


def test_cifar100_is_read_through_torchvision_with_its_hundred_classes_and_its_own_statistics(tmp_path, monkeypatch):
    write_cifar100(tmp_path)
    monkeypatch.setattr(torchvision.datasets.cifar, "check_integrity", lambda *file: True)  # no real file's checksum
    checkpoint = train_on(tmp_path, tmp_path / "run", "resnet20", "--dataset", "cifar100")
    model, data, _ = load_classifier(checkpoint)
    assert model.hparams.num_classes == 100 and model.model.linear.out_features == 100
    assert data["dataset"] == "cifar100" and tuple(data["mean"]) == CIFAR100_MEAN
    datamodule = CIFAR10DataModule(str(tmp_path), dataset="cifar100", download=False)
    datamodule.setup("test")
    assert len(datamodule.test_set) == 100 and datamodule.classes[:2] == ["class_00", "class_01"]


def test_every_data_set_has_a_help_line_and_an_unknown_one_is_a_one_line_error(capsys):
    assert set(DATASETS) >= {"cifar10", "cifar100", "folder"} and all(entry.help for entry in DATASETS.values())
    with pytest.raises(SystemExit) as stopped:
        train.main(["--dataset", "imagenet"])
    error = capsys.readouterr().err.strip()
    assert stopped.value.code == 2 and "imagenet" in error and "\n" not in error
