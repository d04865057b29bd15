"""CIFAR-10 for Lightning: torchvision's download, or any ImageFolder copy with train/ and test/."""
from pathlib import Path

import lightning as L
import numpy as np
import torch
import torchvision
from torch.utils.data import DataLoader, Dataset, TensorDataset, random_split
from torchvision.io import decode_image
from torchvision.transforms import v2

from cli import UsageError

# Per-channel mean and standard deviation over every pixel of CIFAR-10's 50,000 original training
# images. The widely copied std (0.2023, 0.1994, 0.2010) averages per-image deviations instead,
# which underestimates the spread (kuangliu/pytorch-cifar issue #19). The JPEG copy in
# ../shared/data/cifar10-jpeg measures mean (0.4913, 0.4821, 0.4465), std (0.2452, 0.2428, 0.2606).
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp"}


class UInt8ImageDataset(Dataset):
    """Decoded images held in memory as one uint8 tensor (N, 3, H, W): 150 MB for all of CIFAR-10."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, transform):
        self.images, self.labels, self.transform = images, labels, transform

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, index):
        return self.transform(self.images[index]), self.labels[index]


def is_image_folder(data_dir) -> bool:
    """True when `data_dir` holds a test/ folder of class sub-folders (train/ is optional)."""
    test_dir = Path(data_dir) / "test"
    return test_dir.is_dir() and any(child.is_dir() for child in test_dir.iterdir())


def read_image_folder(split_dir: Path) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """Decode an ImageFolder split into (uint8 images, labels, class names), classes sorted by name."""
    if not split_dir.is_dir():
        raise UsageError(f"{split_dir} does not exist; --data_dir needs train/ and test/ class folders")
    classes = sorted(child.name for child in split_dir.iterdir() if child.is_dir())
    images, labels = [], []
    for label, name in enumerate(classes):
        for file in sorted((split_dir / name).iterdir()):
            if file.suffix.lower() in IMAGE_SUFFIXES:
                try:
                    images.append(decode_image(str(file), mode=torchvision.io.ImageReadMode.RGB))
                except RuntimeError as error:
                    raise UsageError(f"cannot decode {file}: {error}") from error
                labels.append(label)
    if not images:
        raise UsageError(f"no images in {split_dir}; --data_dir needs class folders of images")
    return torch.stack(images), torch.tensor(labels), classes


def read_torchvision_cifar10(data_dir: str, train: bool, download: bool) -> tuple[torch.Tensor, torch.Tensor]:
    try:
        dataset = torchvision.datasets.CIFAR10(data_dir, train=train, download=download)
    except (RuntimeError, OSError) as error:
        raise UsageError(
            f"no CIFAR-10 in --data_dir {data_dir} and it could not be downloaded ({error}); "
            "point --data_dir at a copy (torchvision's cifar-10-batches-py, or train/ and test/ class folders)"
        ) from None
    images = torch.from_numpy(np.ascontiguousarray(dataset.data)).permute(0, 3, 1, 2).contiguous()
    return images, torch.tensor(dataset.targets)


class CIFAR10DataModule(L.LightningDataModule):
    """The experiment's data: a seeded train/validation split of the training set, the test set for `test`.

    `val_fraction` 0.1 is CIFAR-10's 45,000/5,000 split; model selection sees only the validation part.
    Images stay uint8 in memory and are augmented per sample (random 4-pixel-padded crop, flip).
    """

    def __init__(
        self,
        data_dir: str = "data",
        batch_size: int = 128,
        num_workers: int = 0,
        val_fraction: float = 0.1,
        seed: int = 42,
        mean: tuple = CIFAR10_MEAN,
        std: tuple = CIFAR10_STD,
        download: bool = True,
    ):
        super().__init__()
        if batch_size < 1:
            raise UsageError(f"--batch_size must be at least 1, got {batch_size}")
        if not 0 < val_fraction < 1:
            raise UsageError(f"the validation fraction must lie in (0, 1), got {val_fraction}")
        self.save_hyperparameters()
        normalize = [v2.ToDtype(torch.float32, scale=True), v2.Normalize(list(mean), list(std))]
        self.train_transform = v2.Compose([v2.RandomCrop(32, padding=4), v2.RandomHorizontalFlip(), *normalize])
        self.eval_transform = v2.Compose(normalize)
        self.train_set = self.val_set = self.test_set = None

    @property
    def uses_image_folder(self) -> bool:
        return is_image_folder(self.hparams.data_dir)

    def prepare_data(self):
        if not self.uses_image_folder:
            for train in (True, False):
                read_torchvision_cifar10(self.hparams.data_dir, train, self.hparams.download)

    def _read(self, train: bool):
        if self.uses_image_folder:
            images, labels, _ = read_image_folder(Path(self.hparams.data_dir) / ("train" if train else "test"))
            return images, labels
        return read_torchvision_cifar10(self.hparams.data_dir, train, download=False)

    def setup(self, stage: str):
        if stage in ("fit", "validate") and self.train_set is None:
            images, labels = self._read(train=True)
            train_part, val_part = random_split(
                range(len(labels)),
                [1 - self.hparams.val_fraction, self.hparams.val_fraction],
                generator=torch.Generator().manual_seed(self.hparams.seed),
            )
            train_index, val_index = torch.tensor(train_part.indices), torch.tensor(val_part.indices)
            self.train_set = UInt8ImageDataset(images[train_index], labels[train_index], self.train_transform)
            self.val_set = self._normalized(images[val_index], labels[val_index])
        if stage in ("test", "predict") and self.test_set is None:
            self.test_set = self._normalized(*self._read(train=False))

    def _normalized(self, images: torch.Tensor, labels: torch.Tensor) -> TensorDataset:
        """Evaluation sets are normalised once up front: every later pass is a tensor slice."""
        return TensorDataset(self.eval_transform(images), labels)

    def _loader(self, dataset, shuffle: bool) -> DataLoader:
        return DataLoader(
            dataset,
            batch_size=self.hparams.batch_size,
            shuffle=shuffle,
            num_workers=self.hparams.num_workers,
            persistent_workers=self.hparams.num_workers > 0,
            pin_memory=torch.cuda.is_available(),
        )

    def train_dataloader(self):
        return self._loader(self.train_set, shuffle=True)

    def val_dataloader(self):
        return self._loader(self.val_set, shuffle=False)

    def test_dataloader(self):
        return self._loader(self.test_set, shuffle=False)

    def recalibration_dataloader(self):
        """Training images with evaluation transforms, for re-estimating BatchNorm statistics."""
        if self.train_set is None:
            self.setup("fit")
        return self._loader(UInt8ImageDataset(self.train_set.images, self.train_set.labels, self.eval_transform), True)
