"""The networks: a name -> how to build it for a data set's classes and image size.

    build_model("resnet50")                          # the experiment's network, for 32x32 CIFAR-10
    build_model("resnet20")                          # small enough for a CPU; loads the weights in ../shared/models
    build_model("tv:mobilenet_v3_small", 12, (64, 64))   # any classification network torchvision ships

A new network is one entry of `NETWORKS` plus its test (tests/test_models.py). What pruning, BatchNorm folding,
OBS and export ask of every network is checked once, when it is built (`check_network`): torch.fx can trace it,
and its last Linear is the classifier (it answers the classes; pruning leaves it dense unless asked).
"""
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import torch
import torch.fx
import torch.nn.functional as F
import torchvision
from torch import nn

from magprune.errors import InputError

TORCHVISION = "tv:"  # the prefix that names any classification network torchvision ships
SMALL_IMAGES = 64  # below this side a torchvision ResNet takes the CIFAR stem: its own would leave 2x2 maps at 32x32


class ShortcutA(nn.Module):
    """He et al.'s option A: subsample and zero-pad channels, so the shortcut has no parameters."""

    def __init__(self, out_channels: int, stride: int):
        super().__init__()
        self.stride = stride
        self.out_channels = out_channels

    def forward(self, x):
        x = x[:, :, :: self.stride, :: self.stride]
        missing = self.out_channels - x.shape[1]
        return F.pad(x, (0, 0, 0, 0, missing // 2, missing - missing // 2))


class BasicBlock(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        reshapes = stride != 1 or in_channels != out_channels
        self.shortcut = ShortcutA(out_channels, stride) if reshapes else nn.Identity()

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class CifarResNet(nn.Module):
    """The CIFAR ResNet of He et al. 2016; parameter names match akamaster/pytorch_resnet_cifar10."""

    def __init__(self, blocks_per_stage: int, num_classes: int = 10):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 16, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        stage = partial(self._stage, blocks_per_stage)
        self.layer1 = stage(16, 16, stride=1)
        self.layer2 = stage(16, 32, stride=2)
        self.layer3 = stage(32, 64, stride=2)
        self.linear = nn.Linear(64, num_classes)
        for module in self.modules():
            if isinstance(module, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_normal_(module.weight)

    @staticmethod
    def _stage(blocks: int, in_channels: int, out_channels: int, stride: int) -> nn.Sequential:
        first = BasicBlock(in_channels, out_channels, stride)
        rest = [BasicBlock(out_channels, out_channels, 1) for _ in range(blocks - 1)]
        return nn.Sequential(first, *rest)

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer3(self.layer2(self.layer1(out)))
        out = F.adaptive_avg_pool2d(out, 1).flatten(1)
        return self.linear(out)


def torchvision_resnet(builder: Callable, num_classes: int, image_size: tuple[int, int]) -> nn.Module:
    """A torchvision ResNet; for small images with the CIFAR stem (a 3x3 stride-1 convolution and no max-pool), as a
    7x7 stride-2 stem and a max-pool would shrink 32x32 images to 8x8 before the first block."""
    model = builder(num_classes=num_classes)
    if min(image_size) < SMALL_IMAGES:
        model.conv1 = nn.Conv2d(3, 64, 3, 1, 1, bias=False)
        model.maxpool = nn.Identity()
    return model


@dataclass(frozen=True)
class Network:
    """How a network is built: `build(num_classes, image_size)`, the input sizes it takes, a line of help."""

    build: Callable[[int, tuple[int, int]], nn.Module]
    sizes: str
    help: str


# He et al. 2016, section 4.2: depth 6n + 2 with n blocks per stage.
CIFAR_RESNET_BLOCKS = {"resnet20": 3, "resnet32": 5, "resnet44": 7, "resnet56": 9}
NETWORKS = {
    **{name: Network(lambda classes, size, blocks=blocks: CifarResNet(blocks, classes), "any (made for 32x32)",
                     f"He et al.'s CIFAR ResNet, {6 * blocks + 2} layers") for name, blocks in CIFAR_RESNET_BLOCKS.items()},
    **{name: Network(partial(torchvision_resnet, getattr(torchvision.models, name)), "any (CIFAR stem below 64 pixels)",
                     f"torchvision's {name}") for name in ("resnet18", "resnet34", "resnet50")},
}
ARCHS = tuple(NETWORKS)


def torchvision_classifiers() -> list[str]:
    """The classification networks torchvision ships (not its detection, segmentation or video ones)."""
    return torchvision.models.list_models(module=torchvision.models)


def check_arch(arch: str) -> str | None:
    """What is wrong with a network's name (None if nothing): one of `NETWORKS`, or tv: and a torchvision classifier."""
    if arch in NETWORKS:
        return None
    if arch.startswith(TORCHVISION):
        if arch[len(TORCHVISION):] in torchvision_classifiers():
            return None
        return f"torchvision ships no classifier {arch[len(TORCHVISION):]!r}; torchvision.models.list_models() lists them"
    return f"unknown network {arch!r}; choose one of {', '.join(ARCHS)}, or tv:<a torchvision classifier>"


def classifier_name(network: nn.Module) -> str | None:
    """The classifier's name: the last Linear the network registers (None if it has none)."""
    linears = [name for name, module in network.named_modules() if isinstance(module, nn.Linear)]
    return linears[-1] if linears else None


def check_network(network: nn.Module, arch: str, num_classes: int, image_size: tuple[int, int]) -> nn.Module:
    """`network`, or a one-line InputError naming what pruning, folding, OBS or export need of it and it lacks."""
    classifier = classifier_name(network)
    if classifier is None:
        raise InputError(f"{arch} has no Linear layer: the classifier that pruning leaves dense must be its last Linear")
    if network.get_submodule(classifier).out_features != num_classes:
        raise InputError(f"{arch}'s last Linear ({classifier}) answers {network.get_submodule(classifier).out_features} "
                         f"classes, not the data's {num_classes}: it must be the classifier")
    try:
        torch.fx.symbolic_trace(network)
    except Exception as error:  # torch.fx raises many kinds; any means folding and OBS cannot follow the graph
        raise InputError(f"torch.fx cannot trace {arch} (BatchNorm folding and OBS follow its graph): {first_line(error)}") from None
    training = network.training
    try:
        with torch.no_grad():
            network.eval()(torch.zeros(1, 3, *image_size))
    except Exception as error:  # a network made for other inputs (ViT's 224x224) fails in many ways
        takes = NETWORKS[arch].sizes if arch in NETWORKS else "see its torchvision page"
        raise InputError(f"{arch} does not take {image_size[0]}x{image_size[1]} images ({takes}): {first_line(error)}; "
                         "give --image_size") from None
    finally:
        network.train(training)
    return network


def first_line(error: BaseException) -> str:
    return str(error).splitlines()[0] if str(error) else type(error).__name__


def build_model(arch: str = "resnet50", num_classes: int = 10, image_size: tuple[int, int] = (32, 32)) -> nn.Module:
    """The network `arch` for `num_classes` classes and images of `image_size`, checked; an unknown `arch` is a
    ValueError naming the known ones."""
    problem = check_arch(arch)
    if problem:
        raise ValueError(problem)
    if arch.startswith(TORCHVISION):
        network = torchvision.models.get_model(arch[len(TORCHVISION):], num_classes=num_classes)
    else:
        network = NETWORKS[arch].build(num_classes, tuple(image_size))
    return check_network(network, arch, num_classes, tuple(image_size))
