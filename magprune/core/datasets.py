"""The data sets a network can be trained and swept on: a name -> how its splits are read and normalised.

    DATASETS["cifar10"].read(data_dir, train=True, download=False) -> (uint8 images (N, 3, H, W), labels, class names)

A new data set is one entry here plus its test (tests/test_datasets.py): `read` returns a split as one uint8 tensor
(every image one size), `mean`/`std` are its per-channel statistics (None: measured on the training images), `finds`
says whether a folder already holds it (else the sweep falls back to the demo images). What the network needs of
the data (its classes, its image size) is read from the split itself, never from the entry.
"""
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
import torchvision
from PIL import Image, UnidentifiedImageError
from torchvision.io import ImageReadMode

from magprune.errors import InputError

# Per-channel mean and standard deviation over every pixel of CIFAR-10's 50,000 original training
# images. The widely copied std (0.2023, 0.1994, 0.2010) averages per-image deviations instead,
# which underestimates the spread (kuangliu/pytorch-cifar issue #19). The JPEG copy in
# ../shared/data/cifar10-jpeg measures mean (0.4913, 0.4821, 0.4465), std (0.2452, 0.2428, 0.2606).
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)
# The same over CIFAR-100's 50,000 training images.
CIFAR100_MEAN = (0.5071, 0.4865, 0.4409)
CIFAR100_STD = (0.2673, 0.2564, 0.2762)
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp"}
JPEG_SUFFIXES = {".jpg", ".jpeg"}


def is_image_folder(data_dir) -> bool:
    """True when `data_dir` holds a test/ folder of class sub-folders (train/ is optional)."""
    test_dir = Path(data_dir) / "test"
    return test_dir.is_dir() and any(child.is_dir() for child in test_dir.iterdir())


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


def resized(image: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """A uint8 (3, H, W) image at `size` (height, width), antialiased; unchanged where it already is."""
    if tuple(image.shape[-2:]) == tuple(size):
        return image
    scaled = F.interpolate(image[None].float(), size=tuple(size), mode="bilinear", antialias=True, align_corners=False)
    return scaled[0].round().clamp(0, 255).to(torch.uint8)


def stacked(images: list[torch.Tensor], size: tuple[int, int] | None, where: Path) -> torch.Tensor:
    """The images as one uint8 tensor, each resized to `size` where given; else they must share one size."""
    if size is not None:
        return torch.stack([resized(image, size) for image in images])
    sizes = {tuple(image.shape[:0:-1]) for image in images}
    if len(sizes) > 1:
        raise InputError(f"the images in {where} differ in size ({', '.join(f'{w}x{h}' for w, h in sorted(sizes))}); "
                         "give --image_size to resize them to one")
    return torch.stack(images)


def read_image_folder(split_dir: Path, size: tuple[int, int] | None = None) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """Decode an ImageFolder split into (uint8 images, labels, class names), classes sorted by name."""
    if not split_dir.is_dir():
        raise InputError(f"{split_dir} does not exist; an image folder holds train/ and test/ class folders")
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
    return stacked(images, size, split_dir), torch.tensor(labels), classes


def read_torchvision(dataset: Callable, data_dir: str, train: bool, download: bool, size=None):
    """A torchvision data set of uint8 HWC arrays (CIFAR-10, CIFAR-100) as (uint8 images, labels, class names)."""
    try:
        split = dataset(data_dir, train=train, download=download)
    except (RuntimeError, OSError):
        raise InputError(f"no {dataset.__name__} in {data_dir} and it could not be downloaded; give a copy (torchvision's "
                         "download, or train/ and test/ class folders)") from None
    images = torch.from_numpy(np.ascontiguousarray(split.data)).permute(0, 3, 1, 2).contiguous()
    if size is not None:
        images = torch.stack([resized(image, size) for image in images])
    return images, torch.tensor(split.targets), list(split.classes)


@dataclass(frozen=True)
class DataSet:
    """How a data set is read, normalised and found. `read(data_dir, train, download, size)`; `downloads`: whether
    `read` may fetch it (torchvision's); `mean`/`std` None: measured on the training split."""

    read: Callable[..., tuple[torch.Tensor, torch.Tensor, list[str]]]
    finds: Callable[[str], bool]
    help: str
    mean: tuple[float, float, float] | None = None
    std: tuple[float, float, float] | None = None
    downloads: bool = False


def _torchvision_or_folder(dataset: Callable, folder_name: str):
    """Read a torchvision data set, or the same data as class folders where `data_dir` holds them."""
    def read(data_dir: str, train: bool, download: bool = False, size=None):
        if is_image_folder(data_dir):
            return read_image_folder(Path(data_dir) / ("train" if train else "test"), size)
        return read_torchvision(dataset, data_dir, train, download, size)

    def finds(data_dir: str) -> bool:
        return Path(data_dir).is_dir() and (is_image_folder(data_dir) or (Path(data_dir) / folder_name).is_dir())

    return read, finds


def _folder_read(data_dir: str, train: bool, download: bool = False, size=None):
    return read_image_folder(Path(data_dir) / ("train" if train else "test"), size)


DATASETS = {
    "cifar10": DataSet(*_torchvision_or_folder(torchvision.datasets.CIFAR10, "cifar-10-batches-py"),
                       "CIFAR-10: torchvision's download into --data_dir, or its train/ and test/ class folders",
                       CIFAR10_MEAN, CIFAR10_STD, downloads=True),
    "cifar100": DataSet(*_torchvision_or_folder(torchvision.datasets.CIFAR100, "cifar-100-python"),
                        "CIFAR-100: torchvision's download into --data_dir, or its train/ and test/ class folders",
                        CIFAR100_MEAN, CIFAR100_STD, downloads=True),
    "folder": DataSet(_folder_read, is_image_folder,
                      "any image folder: train/ and test/ of class folders, any number of classes, any size (one size, "
                      "or --image_size); mean and std measured on its training images"),
}


def channel_statistics(images: torch.Tensor, chunk: int = 1024) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and standard deviation over every pixel of uint8 `images` (N, 3, H, W), in [0, 1] units
    (summed a chunk of images at a time: a large folder's pixels in float64 at once would not fit)."""
    total = torch.zeros(images.shape[1], dtype=torch.float64)
    squares = torch.zeros_like(total)
    for start in range(0, len(images), chunk):
        pixels = images[start : start + chunk].transpose(0, 1).reshape(images.shape[1], -1).double() / 255
        total += pixels.sum(1)
        squares += (pixels * pixels).sum(1)
    count = images.numel() // images.shape[1]
    mean = total / count
    std = (squares / count - mean * mean).clamp_min(0).sqrt()
    return tuple(round(value, 4) for value in mean.tolist()), tuple(round(value, 4) for value in std.tolist())
