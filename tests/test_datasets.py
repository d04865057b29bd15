"""Data other than CIFAR-10: an image folder of any number of classes and any image size trains, sweeps and exports."""
import json

import pytest
import torch
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

import sweep
import train
from lightning_module import load_classifier

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


@pytest.fixture(scope="module")
def twelve_class_checkpoint(twelve_classes, tmp_path_factory):
    root = tmp_path_factory.mktemp("twelve_run")
    train.main(["--arch", "resnet20", "--data_dir", str(twelve_classes), "--epochs", "1", "--T_max", "1",
                "--batch_size", "16", "--limit_train_batches", "3", "--num_workers", "0",
                "--checkpoint_root", str(root / "checkpoints"), "--log_root", str(root / "lightning_logs")])
    return next(root.glob("checkpoints/resnet20/version_0/last.ckpt"))


def test_a_checkpoint_records_the_classes_and_image_size_of_its_data(twelve_class_checkpoint):
    model, _, _ = load_classifier(twelve_class_checkpoint)
    assert model.hparams.num_classes == CLASSES and tuple(model.hparams.image_size) == (SIZE, SIZE)
    assert model.model.linear.out_features == CLASSES


def test_a_twelve_class_folder_of_40_pixel_images_sweeps_with_every_method_and_recovery_and_exports(
        twelve_classes, twelve_class_checkpoint, tmp_path):
    methods = "layerwise,global,random,filters,lamp,obs-global"
    sweep.main(["--checkpoint", str(twelve_class_checkpoint), "--data_dir", str(twelve_classes), "--output_dir", str(tmp_path),
                "--methods", methods, "--sparsities", "0,0.5", "--bn_recalibrate", "2", "--finetune_epochs", "1",
                "--finetune_batches", "2", "--calibration_images", "16", "--export", "0.5", "--batch_size", "16"])
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
