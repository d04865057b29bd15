"""The networks: torchvision's ResNets with a stem for 32x32 images, and He et al.'s CIFAR ResNets.

    build_model("resnet50")     # the experiment's network
    build_model("resnet20")     # small enough for a CPU; loads the pretrained weights in ../shared/models
"""
from functools import partial

import torch.nn.functional as F
import torchvision
from torch import nn

IMAGENET_RESNETS = {
    "resnet18": torchvision.models.resnet18,
    "resnet34": torchvision.models.resnet34,
    "resnet50": torchvision.models.resnet50,
}
# He et al. 2016, section 4.2: depth 6n + 2 with n blocks per stage.
CIFAR_RESNET_BLOCKS = {"resnet20": 3, "resnet32": 5, "resnet44": 7, "resnet56": 9}
ARCHS = tuple(IMAGENET_RESNETS) + tuple(CIFAR_RESNET_BLOCKS)


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


def build_model(arch: str = "resnet50", num_classes: int = 10) -> nn.Module:
    """A ResNet for 32x32 inputs; an unknown `arch` is a ValueError naming the known ones."""
    if arch in CIFAR_RESNET_BLOCKS:
        return CifarResNet(CIFAR_RESNET_BLOCKS[arch], num_classes)
    if arch not in IMAGENET_RESNETS:
        raise ValueError(f"unknown arch {arch!r}; choose one of {', '.join(ARCHS)}")
    model = IMAGENET_RESNETS[arch](num_classes=num_classes)
    # A 7x7 stride-2 stem and a max-pool would shrink 32x32 images to 8x8 before the first block.
    model.conv1 = nn.Conv2d(3, 64, 3, 1, 1, bias=False)
    model.maxpool = nn.Identity()
    return model
