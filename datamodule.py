"""CIFAR-10 for Lightning: torchvision's download, or any ImageFolder copy with train/ and test/.

Every split is decoded once into one uint8 tensor and, by default, kept on the device the Trainer
runs on (all of CIFAR-10 is 184 MB): batches are slices of it, augmented and normalised there.
"""
import math
from pathlib import Path

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
import torchvision
from PIL import Image, UnidentifiedImageError
from torch.utils.data import DataLoader, TensorDataset, random_split
from torchvision.io import ImageReadMode

from magprune.errors import InputError
from magprune.sweep.config import EVAL_SPLITS

# Per-channel mean and standard deviation over every pixel of CIFAR-10's 50,000 original training
# images. The widely copied std (0.2023, 0.1994, 0.2010) averages per-image deviations instead,
# which underestimates the spread (kuangliu/pytorch-cifar issue #19). The JPEG copy in
# ../shared/data/cifar10-jpeg measures mean (0.4913, 0.4821, 0.4465), std (0.2452, 0.2428, 0.2606).
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp"}
JPEG_SUFFIXES = {".jpg", ".jpeg"}


def augment(images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Random 4-pixel-padded crop and horizontal flip, per image, for a whole uint8 batch at once.

    Batched on whatever device the batch is on: per-image torchvision transforms cost more than a
    ResNet-20 step on a CPU and keep a GPU waiting.
    """
    count, _, height, width = images.shape
    padding = 4
    padded = F.pad(images, (padding, padding, padding, padding))
    offsets = torch.randint(0, 2 * padding + 1, (2, count, 1), device=images.device, generator=generator)
    rows = (offsets[0] + torch.arange(height, device=images.device))[:, None, :, None]
    cols = (offsets[1] + torch.arange(width, device=images.device))[:, None, None, :]
    batch = torch.arange(count, device=images.device)[:, None, None, None]
    channels = torch.arange(images.shape[1], device=images.device)[None, :, None, None]
    cropped = padded[batch, channels, rows, cols]
    flip = torch.rand(count, device=images.device, generator=generator) < 0.5
    return torch.where(flip[:, None, None, None], cropped.flip(3), cropped)


def normalize(images: torch.Tensor, mean, std) -> torch.Tensor:
    """uint8 (N, 3, H, W) to float32 with zero mean and unit deviation per channel."""
    mean = torch.tensor(mean, device=images.device).view(1, -1, 1, 1)
    std = torch.tensor(std, device=images.device).view(1, -1, 1, 1)
    return (images.float() / 255 - mean) / std


def is_image_folder(data_dir) -> bool:
    """True when `data_dir` holds a test/ folder of class sub-folders (train/ is optional)."""
    test_dir = Path(data_dir) / "test"
    return test_dir.is_dir() and any(child.is_dir() for child in test_dir.iterdir())


def has_cifar10(data_dir) -> bool:
    """Whether `data_dir` holds CIFAR-10 already: class folders, or torchvision's download."""
    return Path(data_dir).is_dir() and (is_image_folder(data_dir) or (Path(data_dir) / "cifar-10-batches-py").is_dir())


def pillow_rgb(file: Path) -> torch.Tensor:
    """One image file as a (3, height, width) uint8 tensor of RGB, or a one-line error naming it."""
    try:
        with Image.open(file) as image:
            rgb = image if image.mode == "RGB" else image.convert("RGB")
            return torch.from_numpy(np.array(rgb)).permute(2, 0, 1)
    except (OSError, UnidentifiedImageError) as error:
        raise InputError(f"cannot decode {file}: {error}") from None


def decode_images(files: list[Path]) -> list[torch.Tensor]:
    """Each image file as a (3, height, width) uint8 tensor of RGB, or a one-line error naming the first it cannot read."""
    # The JPEGs go to torchvision in one call: on 2 CPU cores it decodes the JPEG copy's 10,000 test
    # images in 0.9-1.1 s and its 50,000 training images in 5.0-6.1 s, where Pillow, with the same
    # libjpeg-turbo and the same pixels, takes 2.3 and 13.1-13.3 s (it parses each file's header
    # in Python). Pillow reads the rest (PNG, BMP), any JPEG torchvision refuses (so that the error
    # names the file), and everything once torchvision drops its decoders (deprecated in 0.29 for
    # TorchCodec, which is not a dependency).
    images = [None] * len(files)
    jpegs = [index for index, file in enumerate(files) if file.suffix.lower() in JPEG_SUFFIXES]
    if jpegs and hasattr(torchvision.io, "decode_jpeg"):
        try:
            encoded = [torch.frombuffer(bytearray(files[index].read_bytes()), dtype=torch.uint8) for index in jpegs]
            for index, image in zip(jpegs, torchvision.io.decode_jpeg(encoded, mode=ImageReadMode.RGB)):
                images[index] = image
        except (OSError, RuntimeError):
            pass
    return [pillow_rgb(file) if image is None else image for file, image in zip(files, images)]


def read_image_folder(split_dir: Path) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """Decode an ImageFolder split into (uint8 images, labels, class names), classes sorted by name."""
    if not split_dir.is_dir():
        raise InputError(f"{split_dir} does not exist; a CIFAR-10 folder holds train/ and test/ class folders")
    try:
        classes = sorted(child.name for child in split_dir.iterdir() if child.is_dir())
    except PermissionError:
        raise InputError(f"cannot read {split_dir}; check its permissions") from None
    files, labels = [], []
    for label, name in enumerate(classes):
        for file in sorted((split_dir / name).iterdir()):
            if file.suffix.lower() in IMAGE_SUFFIXES:
                files.append(file)
                labels.append(label)
    images = decode_images(files)
    if not images:
        raise InputError(f"no images in {split_dir}; it needs class folders of images")
    sizes = {tuple(image.shape[:0:-1]) for image in images}
    if len(sizes) > 1:
        raise InputError(f"the images in {split_dir} differ in size ({', '.join(f'{w}x{h}' for w, h in sorted(sizes))}); "
                         "a split must hold images of one size")
    return torch.stack(images), torch.tensor(labels), classes


def read_torchvision_cifar10(data_dir: str, train: bool, download: bool) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    try:
        dataset = torchvision.datasets.CIFAR10(data_dir, train=train, download=download)
    except (RuntimeError, OSError):
        raise InputError(
            f"no CIFAR-10 in {data_dir} and it could not be downloaded; "
            "give a copy (torchvision's cifar-10-batches-py, or train/ and test/ class folders)"
        ) from None
    images = torch.from_numpy(np.ascontiguousarray(dataset.data)).permute(0, 3, 1, 2).contiguous()
    return images, torch.tensor(dataset.targets), list(dataset.classes)


class ResidentBatches:
    """Batches sliced from tensors that stay on their device: no worker processes, no per-image collation.

    Each pass (an epoch) draws a new order from a seeded generator when `shuffle`; the sequence of
    orders is the same in every run with the same seed. With `replicas` processes (DDP), the order is
    padded to a multiple of `replicas` by repeating its start, as DistributedSampler does, and process
    `rank` takes every `replicas`-th image of it, so every process sees as many batches as the others.
    """

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, batch_size: int, shuffle: bool = False,
                 seed: int = 0, rank: int = 0, replicas: int = 1, drop_last: bool = False):
        self.images, self.labels = images, labels
        self.batch_size, self.shuffle, self.drop_last = batch_size, shuffle, drop_last
        self.rank, self.replicas = rank, replicas
        self.generator = torch.Generator().manual_seed(seed)

    def _indices(self) -> torch.Tensor:
        count = len(self.labels)
        order = torch.randperm(count, generator=self.generator) if self.shuffle else torch.arange(count)
        padded = math.ceil(count / self.replicas) * self.replicas
        order = torch.cat([order, order[: padded - count]])
        return order[self.rank :: self.replicas].to(self.images.device)

    def __len__(self) -> int:
        per_replica = math.ceil(len(self.labels) / self.replicas)
        return per_replica // self.batch_size if self.drop_last else math.ceil(per_replica / self.batch_size)

    def __iter__(self):
        indices = self._indices()
        for start in range(0, len(self) * self.batch_size, self.batch_size):
            chunk = indices[start : start + self.batch_size]
            yield self.images[chunk], self.labels[chunk]


class CIFAR10DataModule(L.LightningDataModule):
    """The experiment's data: a seeded train/validation split of the training set, the test set for `test`.

    `val_fraction` 0.1 is CIFAR-10's 45,000/5,000 split; model selection sees only the validation part.
    Images stay uint8; augmentation (training only) and normalisation happen on the device, a batch
    at a time, in `on_after_batch_transfer`. With `resident` (the default) each split lives on the
    Trainer's device and batches are `ResidentBatches`; without it, or when a split would not fit in
    the GPU's free memory, a DataLoader with `num_workers` workers feeds them from CPU memory.
    `drop_last` leaves out each epoch's last, partial training batch: a compiled network meets a new
    batch shape there and compiles again (over 35 s for ResNet-50 on an H100, more than an epoch).
    `test_split` "val" makes `trainer.test` answer the validation part instead of the test set (the same
    images in the same order as `val_dataloader`): a sweep chooses on it and keeps the test set for the
    numbers it reports. `order_seed` (default `seed`) seeds the order of the training batches alone, so a
    retraining repeated over seeds sees other orders of the same split.
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
        resident: bool = True,
        drop_last: bool = False,
        test_split: str = "test",
    ):
        super().__init__()
        if batch_size < 1:
            raise InputError(f"the batch size must be at least 1, got {batch_size}")
        if not 0 < val_fraction < 1:
            raise InputError(f"the validation fraction must lie in (0, 1), got {val_fraction}")
        if test_split not in EVAL_SPLITS:
            raise InputError(f"the split to test on is one of {', '.join(EVAL_SPLITS)}, got {test_split!r}")
        self.save_hyperparameters()
        self.order_seed = seed
        self.train_set = self.val_set = self.test_set = None
        self.classes = None  # the class names, once a split is read
        self._recalibration = {}
        self._on_device = {}
        self._told_not_resident = False

    @property
    def uses_image_folder(self) -> bool:
        return is_image_folder(self.hparams.data_dir)

    def prepare_data(self):
        if not self.uses_image_folder:
            for train in (True, False):
                read_torchvision_cifar10(self.hparams.data_dir, train, self.hparams.download)

    def _read(self, train: bool):
        if self.uses_image_folder:
            images, labels, classes = read_image_folder(Path(self.hparams.data_dir) / ("train" if train else "test"))
        else:
            images, labels, classes = read_torchvision_cifar10(self.hparams.data_dir, train, download=False)
        if self.classes is not None and classes != self.classes:
            raise InputError(f"{self.hparams.data_dir}: the training and test splits have different classes")
        self.classes = classes
        return images, labels

    @property
    def num_classes(self) -> int:
        """How many classes the data has (an image folder's class folders), read from the training split."""
        if self.classes is None:
            self.setup("fit")
        return len(self.classes)

    @property
    def image_size(self) -> tuple[int, int]:
        """Height and width of the images, from the training split."""
        if self.train_set is None:
            self.setup("fit")
        return tuple(self.train_set.tensors[0].shape[-2:])

    def setup(self, stage: str):
        if stage in ("fit", "validate") and self.train_set is None:
            images, labels = self._read(train=True)
            train_part, val_part = random_split(
                range(len(labels)),
                [1 - self.hparams.val_fraction, self.hparams.val_fraction],
                generator=torch.Generator().manual_seed(self.hparams.seed),
            )
            train_index, val_index = torch.tensor(train_part.indices), torch.tensor(val_part.indices)
            self.train_set = TensorDataset(images[train_index], labels[train_index])
            self.val_set = TensorDataset(images[val_index], labels[val_index])
        if stage in ("test", "predict") and self.test_set is None and self.hparams.test_split == "val":
            self.setup("fit")
            self.test_set = self.val_set
        if stage in ("test", "predict") and self.test_set is None:
            images, labels = self._read(train=False)
            # Folders list images class by class; a fixed shuffle makes every --limit_test_batches
            # prefix a class-mixed sample. The whole set, and so its accuracy, is unchanged.
            order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(0))
            self.test_set = TensorDataset(images[order], labels[order])

    def on_after_batch_transfer(self, batch, dataloader_idx):
        images, labels = batch
        if self.trainer is not None and self.trainer.training:
            images = augment(images)
        return normalize(images, self.hparams.mean, self.hparams.std), labels

    def _device(self) -> torch.device:
        return self.trainer.strategy.root_device if self.trainer is not None else torch.device("cpu")

    def _resident_on(self, device: torch.device) -> bool:
        """Whether the splits can live on `device`: always on a CPU; on a GPU, if twice their size is free."""
        if not self.hparams.resident:
            return False
        if device.type != "cuda":
            return True
        needed = 2 * sum(part.nbytes for split in (self.train_set, self.val_set, self.test_set) if split is not None
                         for part in split.tensors)
        if torch.cuda.mem_get_info(device)[0] < needed:
            if not self._told_not_resident:
                print(f"data: {needed / 2**20:.0f} MB would not fit on {device}; batches come from CPU memory instead")
                self._told_not_resident = True
            return False
        return True

    def _loader(self, dataset, shuffle: bool, drop_last: bool = False):
        device = self._device()
        if self._resident_on(device):
            # Moved once per device and kept: a sweep asks for the test split at every level.
            key = (id(dataset), str(device))
            if key not in self._on_device:
                self._on_device[key] = tuple(tensor.to(device) for tensor in dataset.tensors)
            images, labels = self._on_device[key]
            trainer = self.trainer
            rank, replicas = (trainer.global_rank, trainer.world_size) if trainer is not None else (0, 1)
            return ResidentBatches(images, labels, self.hparams.batch_size, shuffle=shuffle,
                                   seed=self.order_seed, rank=rank, replicas=replicas, drop_last=drop_last)
        return DataLoader(
            dataset,
            batch_size=self.hparams.batch_size,
            shuffle=shuffle,
            drop_last=drop_last,
            num_workers=self.hparams.num_workers,
            persistent_workers=self.hparams.num_workers > 0,
            pin_memory=torch.cuda.is_available(),
        )

    def train_dataloader(self):
        return self._loader(self.train_set, shuffle=True, drop_last=self.hparams.drop_last)

    def val_dataloader(self):
        return self._loader(self.val_set, shuffle=False)

    def test_dataloader(self):
        return self._loader(self.test_set, shuffle=False)

    def plain_test_batches(self, limit_batches: int | float | None = None):
        """The test split as normalised (images, labels) batches on the CPU, in order, with no Trainer:
        for running a network outside Lightning (an exported model). `limit_batches` as Lightning reads it."""
        images, labels = self.test_set.tensors
        batches = math.ceil(len(labels) / self.hparams.batch_size)
        if isinstance(limit_batches, int):
            batches = min(batches, limit_batches)
        elif limit_batches is not None:
            batches = int(batches * limit_batches)
        for start in range(0, batches * self.hparams.batch_size, self.hparams.batch_size):
            stop = start + self.hparams.batch_size
            yield normalize(images[start:stop], self.hparams.mean, self.hparams.std), labels[start:stop]

    def calibration_images(self, count: int, seed: int, device) -> torch.Tensor:
        """`count` training images drawn by `seed`, augmented and normalised as training sees them: what OBS prunes
        from. Never a validation or test image; the same for the same seed."""
        if self.train_set is None:
            self.setup("fit")
        images = self.train_set.tensors[0]
        if not 0 < count <= len(images):
            raise ValueError(f"calibration takes 1 to {len(images)} training images, not {count}")
        generator = torch.Generator().manual_seed(self.hparams.seed + 1_000_003 * (seed + 1))
        chosen = torch.randperm(len(images), generator=generator)[:count]
        return normalize(augment(images[chosen], generator).to(device), self.hparams.mean, self.hparams.std)

    def recalibration_batches(self, count: int, device) -> list[torch.Tensor]:
        """`count` seeded batches of training images, augmented and normalised as in training.

        Augmented because BatchNorm learned its statistics on augmented images: re-estimated on
        plain ones, the project's first shipped ResNet-20, unpruned, dropped from 85.4% to 83.5%
        (first 3,000 test images); on augmented ones it kept 85.5%. No labels are returned:
        re-estimation needs none.
        The same for every call, so made once and kept: a sweep asks for them at every level.
        """
        key = (count, str(device))
        if key not in self._recalibration:
            if self.train_set is None:
                self.setup("fit")
            generator = torch.Generator().manual_seed(self.hparams.seed)
            order = torch.randperm(len(self.train_set), generator=generator)
            size = self.hparams.batch_size
            images = self.train_set.tensors[0]
            self._recalibration[key] = [
                normalize(augment(images[order[start : start + size]], generator).to(device), self.hparams.mean, self.hparams.std)
                for start in range(0, min(count * size, len(order)), size)
            ]
        return self._recalibration[key]
