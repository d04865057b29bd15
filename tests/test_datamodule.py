"""CIFAR10DataModule: ImageFolder copies, a seeded split, batch augmentation, clear errors offline."""
import pickle

import lightning as L
import numpy
import pytest
import torch
from PIL import Image

from datamodule import CIFAR10_STD, CIFAR10DataModule, ResidentBatches, augment, normalize
from magprune.core.datasets import read_image_folder
from lightning_module import ImageClassifier
from magprune.errors import InputError


def test_image_folder_gives_a_seeded_disjoint_split_and_the_whole_test_set(fake_cifar):
    datamodule = CIFAR10DataModule(str(fake_cifar), batch_size=16, seed=1)
    datamodule.setup("fit")
    datamodule.setup("test")
    assert (len(datamodule.train_set), len(datamodule.val_set), len(datamodule.test_set)) == (180, 20, 80)
    again = CIFAR10DataModule(str(fake_cifar), batch_size=16, seed=1)
    again.setup("fit")
    assert torch.equal(again.val_set.tensors[0], datamodule.val_set.tensors[0])
    other_seed = CIFAR10DataModule(str(fake_cifar), batch_size=16, seed=2)
    other_seed.setup("fit")
    assert not torch.equal(other_seed.val_set.tensors[0], datamodule.val_set.tensors[0])


def test_class_folders_sorted_by_name_are_the_labels(fake_cifar):
    datamodule = CIFAR10DataModule(str(fake_cifar))
    datamodule.setup("test")
    images, labels = datamodule.test_set.tensors
    assert labels.bincount().tolist() == [8] * 10
    # conftest paints class k red 25 k plus noise of mean 29.5: the label must follow the folder.
    assert torch.equal(((images[:, 0].float().mean((1, 2)) - 29.5) / 25).round().long(), labels)


def test_a_slice_of_the_test_set_mixes_the_classes(fake_cifar):
    datamodule = CIFAR10DataModule(str(fake_cifar))
    datamodule.setup("test")
    assert len(datamodule.test_set.tensors[1][:20].unique()) >= 5


def test_augment_crops_inside_the_padded_image_and_flips():
    torch.manual_seed(0)
    images = torch.randint(1, 256, (64, 3, 32, 32), dtype=torch.uint8)
    augmented = augment(images)
    assert augmented.shape == images.shape and augmented.dtype == torch.uint8
    padded = torch.nn.functional.pad(images, (4, 4, 4, 4))
    for index in range(8):
        windows = [padded[index, :, top : top + 32, left : left + 32] for top in range(9) for left in range(9)]
        assert any(torch.equal(augmented[index], window) or torch.equal(augmented[index], window.flip(2)) for window in windows)
    assert not torch.equal(augmented, images)


def crop_offsets_and_flips(augmented: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Each augmented copy of `position_image()`'s where its window starts in the padded image, and whether it is mirrored."""
    rows, cols = augmented[:, 0].long(), augmented[:, 1].long()
    flipped = cols[:, 16, 20] < cols[:, 16, 12]  # columns count down in a mirror image
    # Centre pixels come from inside the image whatever the offset: their value is the source position + 1.
    top = rows[:, 16, 16] - 1 - 16 + 4
    left = torch.where(flipped, cols[:, 16, 15], cols[:, 16, 16]) - 1 - 16 + 4
    return top, left, flipped


def position_image() -> torch.Tensor:
    """A 32x32 image whose red value is its row + 1 and green its column + 1: a crop says where it was cut."""
    index = torch.arange(1, 33, dtype=torch.uint8)
    return torch.stack([index.view(32, 1).expand(32, 32), index.view(1, 32).expand(32, 32), torch.zeros(32, 32, dtype=torch.uint8)])


def test_augment_pads_four_pixels_so_every_crop_offset_from_0_to_8_occurs_and_no_other():
    augmented = augment(position_image().expand(20000, 3, 32, 32), generator=torch.Generator().manual_seed(0))
    top, left, _ = crop_offsets_and_flips(augmented)
    assert set(top.tolist()) == set(range(9)) and set(left.tolist()) == set(range(9))
    # Uniform: each of the 9 offsets about 1/9 of the time (2,222 of 20,000, binomial sd 44).
    assert torch.bincount(top, minlength=9).min() > 2000 and torch.bincount(left, minlength=9).min() > 2000


def test_augment_mirrors_about_half_of_a_batch():
    augmented = augment(position_image().expand(20000, 3, 32, 32), generator=torch.Generator().manual_seed(0))
    _, _, flipped = crop_offsets_and_flips(augmented)
    assert flipped.float().mean().item() == pytest.approx(0.5, abs=0.02)  # 14 binomial standard deviations wide


def test_a_crop_past_the_edge_shows_the_zero_padding():
    augmented = augment(position_image().expand(2000, 3, 32, 32), generator=torch.Generator().manual_seed(1))
    top, _, _ = crop_offsets_and_flips(augmented)
    cut_from_the_top = augmented[top == 0]
    assert len(cut_from_the_top) > 100
    assert (cut_from_the_top[:, :, :4] == 0).all() and (cut_from_the_top[:, 0, 4, 16] == 1).all()


def test_normalize_uses_the_given_channel_statistics():
    images = torch.full((1, 3, 2, 2), 255, dtype=torch.uint8)
    normalized = normalize(images, (1.0, 1.0, 1.0), CIFAR10_STD)
    assert torch.allclose(normalized, torch.zeros_like(normalized))


def test_no_data_and_no_network_is_an_input_error_naming_the_folder(tmp_path):
    datamodule = CIFAR10DataModule(str(tmp_path / "nowhere"), download=False)
    with pytest.raises(InputError, match="nowhere"):
        datamodule.prepare_data()


def test_zero_batch_size_is_an_input_error():
    with pytest.raises(InputError, match="batch size"):
        CIFAR10DataModule(batch_size=0)


def test_recalibration_batches_are_augmented_as_in_training_and_reproducible(fake_cifar):
    datamodule = CIFAR10DataModule(str(fake_cifar), batch_size=16)
    batches = datamodule.recalibration_batches(2, "cpu")
    again = CIFAR10DataModule(str(fake_cifar), batch_size=16).recalibration_batches(2, "cpu")
    assert [batch.shape for batch in batches] == [(16, 3, 32, 32)] * 2
    assert all(torch.equal(batch, same) for batch, same in zip(batches, again))
    images = datamodule.train_set.tensors[0]
    plain = normalize(images, datamodule.hparams.mean, datamodule.hparams.std)
    assert not any(torch.equal(batches[0][0], image) for image in plain)  # cropped or flipped, not as stored


def write_torchvision_cifar10(root, cifar_classes, images_per_batch: int = 4):
    """torchvision's on-disk CIFAR-10, tiny: five training batches, a test batch and the class names."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    generator = torch.Generator().manual_seed(0)
    batches = {}
    for name in [f"data_batch_{index}" for index in range(1, 6)] + ["test_batch"]:
        images = torch.randint(0, 256, (images_per_batch, 3, 32, 32), dtype=torch.uint8, generator=generator)
        labels = torch.randint(0, 10, (images_per_batch,), generator=generator)
        # CIFAR-10's rows: 1,024 red values, then green, then blue, each image row by row.
        entry = {"data": images.reshape(images_per_batch, -1).numpy(), "labels": labels.tolist()}
        (folder / name).write_bytes(pickle.dumps(entry))
        batches[name] = images, labels
    (folder / "batches.meta").write_bytes(pickle.dumps({"label_names": list(cifar_classes)}))
    return batches


def test_torchvision_cifar10_files_are_read_as_uint8_images_in_channel_order(tmp_path, cifar_classes, monkeypatch):
    batches = write_torchvision_cifar10(tmp_path, cifar_classes)
    # The files are not the published ones, so their checksums cannot match.
    monkeypatch.setattr("torchvision.datasets.cifar.check_integrity", lambda *args: True)
    datamodule = CIFAR10DataModule(str(tmp_path), download=False, val_fraction=0.25)
    datamodule.prepare_data()
    datamodule.setup("fit")
    datamodule.setup("test")
    test_images, test_labels = batches["test_batch"]
    order = torch.randperm(len(test_labels), generator=torch.Generator().manual_seed(0))
    assert torch.equal(datamodule.test_set.tensors[0], test_images[order])
    assert torch.equal(datamodule.test_set.tensors[1], test_labels[order])
    train_images = torch.cat([batches[f"data_batch_{index}"][0] for index in range(1, 6)])
    seen = torch.cat([datamodule.train_set.tensors[0], datamodule.val_set.tensors[0]])
    assert sorted(map(bytes, seen.flatten(1).numpy())) == sorted(map(bytes, train_images.flatten(1).numpy()))


def test_normalize_subtracts_each_channels_mean_and_divides_by_its_std():
    images = torch.tensor([51, 102, 204], dtype=torch.uint8).view(1, 3, 1, 1).expand(2, 3, 4, 4)
    mean, std = (0.1, 0.2, 0.3), (0.5, 0.25, 0.125)
    expected = torch.tensor([(0.2 - 0.1) / 0.5, (0.4 - 0.2) / 0.25, (0.8 - 0.3) / 0.125]).view(1, 3, 1, 1)
    assert torch.allclose(normalize(images, mean, std), expected.expand(2, 3, 4, 4), atol=1e-6)


def test_train_and_validation_images_are_disjoint_and_cover_the_training_set(fake_cifar):
    datamodule = CIFAR10DataModule(str(fake_cifar), val_fraction=0.1)
    datamodule.setup("fit")
    train_images = {bytes(image) for image in datamodule.train_set.tensors[0].flatten(1).numpy()}
    val_images = {bytes(image) for image in datamodule.val_set.tensors[0].flatten(1).numpy()}
    assert len(train_images) == 180 and len(val_images) == 20  # conftest's noise makes every image unique
    assert not train_images & val_images


def test_resident_batches_are_the_loaders_batches_in_order_when_not_shuffled(fake_cifar):
    datamodule = CIFAR10DataModule(str(fake_cifar), batch_size=16)
    datamodule.setup("test")
    resident = list(datamodule.test_dataloader())
    loader = list(CIFAR10DataModule(str(fake_cifar), batch_size=16, resident=False, num_workers=0)._loader(datamodule.test_set, False))
    assert len(resident) == len(loader) == len(datamodule.test_dataloader()) == 5
    for (images, labels), (loader_images, loader_labels) in zip(resident, loader):
        assert torch.equal(images, loader_images) and torch.equal(labels, loader_labels)


def pairs(batches) -> list[tuple[bytes, int]]:
    return sorted((bytes(image.flatten().numpy()), int(label)) for images, labels in batches for image, label in zip(images, labels))


def test_a_shuffled_epoch_holds_every_image_once_in_a_seeded_order_that_changes_each_epoch(fake_cifar):
    datamodule = CIFAR10DataModule(str(fake_cifar), batch_size=16, seed=3)
    datamodule.setup("fit")
    batches = datamodule.train_dataloader()
    first, second = list(batches), list(batches)
    assert pairs(first) == pairs(second) == pairs([datamodule.train_set.tensors])
    assert not torch.equal(first[0][0], second[0][0])
    again = CIFAR10DataModule(str(fake_cifar), batch_size=16, seed=3)
    again.setup("fit")
    assert all(torch.equal(images, same) for (images, _), (same, _) in zip(first, again.train_dataloader()))


def test_a_compiled_run_trains_on_full_batches_only(fake_cifar):
    # 180 training images in batches of 16: eleven full ones; the last 4 images wait for the next epoch's order.
    datamodule = CIFAR10DataModule(str(fake_cifar), batch_size=16, drop_last=True)
    datamodule.setup("fit")
    batches = list(datamodule.train_dataloader())
    assert len(batches) == len(datamodule.train_dataloader()) == 11
    assert {len(labels) for _, labels in batches} == {16}
    assert len(list(datamodule.val_dataloader())) == 2  # every validation image still counts


def test_processes_of_a_ddp_run_take_disjoint_equal_shares(fake_cifar):
    datamodule = CIFAR10DataModule(str(fake_cifar), batch_size=16)
    datamodule.setup("test")
    images, labels = datamodule.test_set.tensors[0][:79], datamodule.test_set.tensors[1][:79]
    shares = [list(ResidentBatches(images, labels, 16, shuffle=True, seed=0, rank=rank, replicas=2)) for rank in (0, 1)]
    assert len(shares[0]) == len(shares[1]) == 3
    assert sum(len(batch[1]) for share in shares for batch in share) == 80  # 79 padded to a multiple of 2
    assert set(pairs(shares[0]) + pairs(shares[1])) == set(pairs([(images, labels)]))


def test_resident_and_loader_data_give_the_same_test_answers(learned, learnable_cifar):
    counts = []
    for resident in (True, False):
        model = ImageClassifier.load_from_checkpoint(learned, weights_only=True)
        trainer = L.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False)
        trainer.test(model, datamodule=CIFAR10DataModule(str(learnable_cifar), batch_size=64, resident=resident), verbose=False)
        counts.append(model.test_counts.compute())
    assert counts[0] == counts[1]



def image_folder(root, images: dict):
    """A test/ split of one class folder holding `images` (file name -> PIL image)."""
    folder = root / "test" / "cat"
    folder.mkdir(parents=True)
    for name, image in images.items():
        image.save(folder / name)
    return root / "test"


def test_every_image_format_reads_as_the_rgb_pixels_pil_decodes(tmp_path):
    pixels = torch.randint(0, 256, (32, 32, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(0)).numpy()
    files = {"a.png": Image.fromarray(pixels), "b.jpg": Image.fromarray(pixels), "c.bmp": Image.fromarray(pixels),
             "d.png": Image.fromarray(pixels[..., 0]), "e.png": Image.fromarray(pixels).convert("RGBA"),
             "f.jpg": Image.fromarray(pixels[..., 0]), "g.png": Image.fromarray(pixels[..., 0].astype(numpy.uint16) * 257)}
    images, labels, _ = read_image_folder(image_folder(tmp_path, files))
    for image, name in zip(images, sorted(files)):
        with Image.open(tmp_path / "test" / "cat" / name) as decoded:
            expected = torch.from_numpy(numpy.array(decoded.convert("RGB"))).permute(2, 0, 1)
        assert torch.equal(image, expected), name
    assert images.shape == (7, 3, 32, 32) and images.is_contiguous() and labels.tolist() == [0] * 7


def test_an_image_that_cannot_be_decoded_is_a_usage_error_naming_it(tmp_path):
    split = image_folder(tmp_path, {})
    (split / "cat" / "broken.jpg").write_bytes(b"\xff\xd8 not a jpeg")
    with pytest.raises(InputError, match="broken.jpg"):
        read_image_folder(split)


def test_images_of_different_sizes_are_a_usage_error_naming_the_sizes(tmp_path):
    split = image_folder(tmp_path, {"a.png": Image.new("RGB", (32, 32)), "b.png": Image.new("RGB", (24, 32))})
    with pytest.raises(InputError, match="24x32, 32x32"):
        read_image_folder(split)
