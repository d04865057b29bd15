"""The experiment's data for Lightning: CIFAR-10 by default, any data set of `DATASETS` by name.

Every split is decoded once into one uint8 tensor and, by default, kept on the device the Trainer
runs on (all of CIFAR-10 is 184 MB): batches are slices of it, augmented and normalised there.
"""
import math
from pathlib import Path

import lightning as L
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset, random_split

from magprune.core.datasets import CIFAR10_MEAN, CIFAR10_STD, DATASETS, channel_statistics, is_image_folder  # noqa: F401
from magprune.errors import InputError
from magprune.sweep.config import EVAL_SPLITS


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


def fits_on(device: torch.device, splits) -> bool:
    """Whether the splits can live on `device`: always on a CPU; on a GPU, if twice their size is free."""
    if device.type != "cuda":
        return True
    needed = 2 * sum(part.nbytes for split in splits if split is not None for part in split.tensors)
    if torch.cuda.mem_get_info(device)[0] < needed:
        print(f"data: {needed / 2**20:.0f} MB would not fit on {device}; batches come from CPU memory instead")
        return False
    return True


def augmented_sample(images: torch.Tensor, chosen: torch.Tensor, generator: torch.Generator, batch: int, device,
                     mean, std) -> list[torch.Tensor]:
    """`images[chosen]` in batches of `batch`, augmented by `generator` and normalised as training sees them."""
    return [normalize(augment(images[chosen[start : start + batch]], generator).to(device), mean, std)
            for start in range(0, len(chosen), batch)]


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


class SampledBatches:
    """What a sweep draws from the splits outside Lightning's loops: the test split in order for an exported network,
    seeded augmented training images for OBS's calibration and BatchNorm's re-estimation. Never a validation or
    test image for anything that learns."""

    def plain_test_batches(self, limit_batches: int | float | None = None):
        """The test split as normalised (images, labels) batches on the CPU, in order, with no Trainer:
        for running a network outside Lightning (an exported model). `limit_batches` as Lightning reads it."""
        images, labels = self.test_set.tensors
        size = self.hparams.batch_size
        batches = math.ceil(len(labels) / size)
        batches = min(batches, limit_batches) if isinstance(limit_batches, int) else int(batches * (limit_batches or 1.0))
        for start in range(0, batches * size, size):
            yield normalize(images[start : start + size], self.hparams.mean, self.hparams.std), labels[start : start + size]

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
        return augmented_sample(images, chosen, generator, count, device, self.hparams.mean, self.hparams.std)[0]

    def recalibration_batches(self, count: int, device) -> list[torch.Tensor]:
        """`count` seeded batches of training images, augmented and normalised as in training.

        Augmented because BatchNorm learned its statistics on augmented images: re-estimated on
        plain ones, the project's first shipped ResNet-20, unpruned, dropped from 85.4% to 83.5%
        (first 3,000 test images); on augmented ones it kept 85.5%. No labels are returned:
        re-estimation needs none. The same for every call, so made once and kept: a sweep asks for them at every level.
        """
        key = (count, str(device))
        if key not in self._recalibration:
            if self.train_set is None:
                self.setup("fit")
            generator = torch.Generator().manual_seed(self.hparams.seed)
            order = torch.randperm(len(self.train_set), generator=generator)[: count * self.hparams.batch_size]
            self._recalibration[key] = augmented_sample(self.train_set.tensors[0], order, generator, self.hparams.batch_size,
                                                        device, self.hparams.mean, self.hparams.std)
        return self._recalibration[key]


class CIFAR10DataModule(SampledBatches, L.LightningDataModule):
    """The experiment's data: a seeded train/validation split of the training set, the test set for `test`.

    `dataset` names an entry of `DATASETS` (CIFAR-10 by default: the design card's data, hence the name);
    `resize_to` (height, width) resizes every image, else images keep their size; `mean`/`std` default to the data
    set's, or are measured on its training images, and are then recorded. `val_fraction` 0.1 is CIFAR-10's
    45,000/5,000 split. Images stay uint8, augmented (training only) and normalised on the device a batch at a time;
    with `resident` each split lives on the Trainer's device (`ResidentBatches`), else, or where it would not fit
    on the GPU, a DataLoader of `num_workers` feeds it. `drop_last` leaves out the last, partial training batch,
    which a compiled network would compile again for. `test_split` "val" makes `trainer.test` answer the validation
    part (as `val_dataloader` orders it). `order_seed` (default `seed`) seeds the training batches' order alone.
    """

    def __init__(self, data_dir: str = "data", batch_size: int = 128, num_workers: int = 0, val_fraction: float = 0.1,
                 seed: int = 42, mean: tuple | None = None, std: tuple | None = None, download: bool = True,
                 resident: bool = True, drop_last: bool = False, test_split: str = "test", dataset: str = "cifar10",
                 resize_to: tuple | None = None):
        super().__init__()
        if batch_size < 1:
            raise InputError(f"the batch size must be at least 1, got {batch_size}")
        if not 0 < val_fraction < 1:
            raise InputError(f"the validation fraction must lie in (0, 1), got {val_fraction}")
        if test_split not in EVAL_SPLITS:
            raise InputError(f"the split to test on is one of {', '.join(EVAL_SPLITS)}, got {test_split!r}")
        if dataset not in DATASETS:
            raise InputError(f"the data set is one of {', '.join(DATASETS)}, got {dataset!r}")
        self.save_hyperparameters()
        self.data, self.order_seed = DATASETS[dataset], seed
        self.train_set = self.val_set = self.test_set = None
        self.classes = None  # the class names, once a split is read
        self._recalibration, self._on_device, self._resident = {}, {}, {}

    def prepare_data(self):
        if self.data.downloads and not is_image_folder(self.hparams.data_dir):
            for train in (True, False):
                self.data.read(self.hparams.data_dir, train, self.hparams.download)

    def _read(self, train: bool):
        size = self.hparams.resize_to
        images, labels, classes = self.data.read(self.hparams.data_dir, train, False, tuple(size) if size else None)
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
        """Height and width of the images the network sees, from the training split."""
        if self.train_set is None:
            self.setup("fit")
        return tuple(self.train_set.tensors[0].shape[-2:])

    def setup(self, stage: str):
        if stage in ("fit", "validate") and self.train_set is None:
            images, labels = self._read(train=True)
            fractions = [1 - self.hparams.val_fraction, self.hparams.val_fraction]
            train_part, val_part = random_split(range(len(labels)), fractions, torch.Generator().manual_seed(self.hparams.seed))
            train_index, val_index = torch.tensor(train_part.indices), torch.tensor(val_part.indices)
            self.train_set = TensorDataset(images[train_index], labels[train_index])
            self.val_set = TensorDataset(images[val_index], labels[val_index])
            self._normalisation(self.train_set.tensors[0])
        if stage in ("test", "predict") and self.test_set is None and self.hparams.test_split == "val":
            self.setup("fit")
            self.test_set = self.val_set
        if stage in ("test", "predict") and self.test_set is None:
            images, labels = self._read(train=False)
            # Folders list images class by class; a fixed shuffle makes every --limit_test_batches
            # prefix a class-mixed sample. The whole set, and so its accuracy, is unchanged.
            order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(0))
            self.test_set = TensorDataset(images[order], labels[order])
            self._normalisation(None)

    def _normalisation(self, training_images: torch.Tensor | None) -> None:
        """Fill in mean and std, once: the data set's, else measured on the training part (test alone: a one-line error)."""
        if self.hparams.mean is not None and self.hparams.std is not None:
            return
        if self.data.mean is not None:
            self.hparams.mean, self.hparams.std = self.data.mean, self.data.std
        elif training_images is not None:
            self.hparams.mean, self.hparams.std = channel_statistics(training_images)
        else:
            raise InputError(f"{self.hparams.dataset} measures its mean and std on training images: give them, or train/")

    def on_after_batch_transfer(self, batch, dataloader_idx):
        images, labels = batch
        if self.trainer is not None and self.trainer.training:
            images = augment(images)
        return normalize(images, self.hparams.mean, self.hparams.std), labels

    def _loader(self, dataset, shuffle: bool, drop_last: bool = False):
        device = self.trainer.strategy.root_device if self.trainer is not None else torch.device("cpu")
        if str(device) not in self._resident:  # asked once per device: the answer holds for the run
            self._resident[str(device)] = self.hparams.resident and fits_on(device, (self.train_set, self.val_set, self.test_set))
        if not self._resident[str(device)]:
            return DataLoader(dataset, batch_size=self.hparams.batch_size, shuffle=shuffle, drop_last=drop_last,
                              num_workers=self.hparams.num_workers, persistent_workers=self.hparams.num_workers > 0,
                              pin_memory=torch.cuda.is_available())
        # Moved once per device and kept: a sweep asks for the test split at every level.
        key = (id(dataset), str(device))
        if key not in self._on_device:
            self._on_device[key] = tuple(tensor.to(device) for tensor in dataset.tensors)
        rank, replicas = (self.trainer.global_rank, self.trainer.world_size) if self.trainer is not None else (0, 1)
        return ResidentBatches(*self._on_device[key], self.hparams.batch_size, shuffle=shuffle, seed=self.order_seed,
                               rank=rank, replicas=replicas, drop_last=drop_last)

    def train_dataloader(self):
        return self._loader(self.train_set, shuffle=True, drop_last=self.hparams.drop_last)

    def val_dataloader(self):
        return self._loader(self.val_set, shuffle=False)

    def test_dataloader(self):
        return self._loader(self.test_set, shuffle=False)
