"""ResNets for 32x32 images and the LightningModule that trains them.

    python train.py --arch resnet50 --gpus 1      # the experiment
    python train.py --arch resnet20               # small enough for a CPU
"""
import copy
from functools import partial

import lightning as L
import torch
import torch.nn.functional as F
import torchvision
from torch import nn
from torch.fx.experimental.optimization import fuse
from torchmetrics import Metric
from torchmetrics.classification import MulticlassAccuracy

from prune_callback import make_permanent, restore_masks

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


def fold_batchnorm(network: nn.Module) -> nn.Module:
    """An inference copy of `network` with each BatchNorm folded into the convolution before it.

    Exact in eval mode up to float rounding; a pruned weight stays zero, since folding scales each
    output filter by one factor. Saves a pass over every activation map (about 15% of a CPU forward).
    """
    # A masked layer's `weight` is the product weight_orig * mask from its last forward, a tensor
    # deepcopy refuses while it carries a graph; the copy recomputes it anyway.
    products = {id(module.weight): module.weight.detach() for module in network.modules() if hasattr(module, "weight_mask")}
    permanent = make_permanent(copy.deepcopy(network, memo=products)).eval()
    return fuse(permanent, inplace=True)


class CorrectCount(Metric):
    """Correct predictions and images seen, as integers: accuracies that compare exactly.

    A float32 accuracy cannot say whether 8,418 of 10,000 is exactly one point below 8,518 of 10,000;
    the counts can. Summed across processes like any torchmetrics state.
    """

    full_state_update = False

    def __init__(self):
        super().__init__()
        self.add_state("correct", torch.tensor(0), dist_reduce_fx="sum")
        self.add_state("total", torch.tensor(0), dist_reduce_fx="sum")

    def update(self, logits: torch.Tensor, labels: torch.Tensor) -> None:
        self.correct += (logits.argmax(1) == labels).sum()
        self.total += labels.numel()

    def compute(self) -> tuple[int, int]:
        return int(self.correct), int(self.total)


class ImageClassifier(L.LightningModule):
    """Cross-entropy training of `build_model(arch)` with SGD and a cosine learning rate.

    `T_max` and `warmup_epochs` are in epochs, as in the original experiment; the schedule steps
    every batch, so its length comes from `trainer.estimated_stepping_batches` rather than from the
    data set's size. With `warmup_epochs` the rate climbs linearly from near zero before the cosine.
    `decay_norms_and_biases=False` exempts BatchNorm and bias parameters from weight decay.
    `recipe` only records which `train.py --recipe` chose these values, so a checkpoint says it.
    `channels_last` and `fold_batchnorm` change speed only: the sweep turns both on for its tests.
    """

    def __init__(
        self,
        arch: str = "resnet50",
        num_classes: int = 10,
        learning_rate: float = 0.01,
        momentum: float = 0.9,
        weight_decay: float = 5e-4,
        T_max: int = 20,
        channels_last: bool = False,
        fold_batchnorm: bool = False,
        nesterov: bool = False,
        label_smoothing: float = 0.0,
        warmup_epochs: int = 0,
        decay_norms_and_biases: bool = True,
        recipe: str = "original",
    ):
        super().__init__()
        self.save_hyperparameters()
        self.model = build_model(arch, num_classes)
        if channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.train_acc = MulticlassAccuracy(num_classes, average="micro")
        self.val_acc = MulticlassAccuracy(num_classes, average="micro")
        self.test_acc = MulticlassAccuracy(num_classes, average="micro")
        # Not logged, so Lightning leaves it alone: read with `.compute()` after `trainer.test`.
        self.test_counts = CorrectCount()
        self.test_network = None

    def forward(self, images):
        if self.hparams.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        network = self.model if self.test_network is None else self.test_network
        return network(images)

    def model_step(self, batch, stage: str, accuracy: MulticlassAccuracy):
        """Loss and accuracy of one batch, logged under `stage/`; returns the logits and the loss."""
        images, labels = batch
        logits = self(images)
        loss = F.cross_entropy(logits, labels, label_smoothing=self.hparams.label_smoothing if stage == "train" else 0.0)
        accuracy(logits, labels)
        on_step = stage == "train"
        self.log(f"{stage}/loss", loss, on_step=on_step, on_epoch=True, prog_bar=True, sync_dist=not on_step)
        self.log(f"{stage}/acc", accuracy, on_step=False, on_epoch=True, prog_bar=True)
        return logits, loss

    def training_step(self, batch, batch_idx):
        return self.model_step(batch, "train", self.train_acc)[1]

    def validation_step(self, batch, batch_idx):
        self.model_step(batch, "val", self.val_acc)

    def test_step(self, batch, batch_idx):
        _, labels = batch
        logits, _ = self.model_step(batch, "test", self.test_acc)
        self.test_counts.update(logits, labels)

    def on_test_start(self):
        self.test_counts.reset()
        # After any PruningCallback has masked the model: callbacks' hooks run before the module's.
        if self.hparams.fold_batchnorm:
            folded = fold_batchnorm(self.model)
            self.test_network = folded.to(memory_format=torch.channels_last) if self.hparams.channels_last else folded

    def on_test_end(self):
        self.test_network = None

    def on_load_checkpoint(self, checkpoint):
        # A model pruned during training saved `weight_orig` and `weight_mask`, not `weight`.
        restore_masks(self, checkpoint["state_dict"])

    def configure_optimizers(self):
        hparams = self.hparams
        if hparams.decay_norms_and_biases:
            groups = [{"params": list(self.parameters())}]
        else:
            # BatchNorm scales and all biases are vectors; decaying them only fights the normalisation.
            matrices = [parameter for parameter in self.parameters() if parameter.ndim > 1]
            vectors = [parameter for parameter in self.parameters() if parameter.ndim <= 1]
            groups = [{"params": matrices}, {"params": vectors, "weight_decay": 0.0}]
        optimizer = torch.optim.SGD(
            groups,
            lr=hparams.learning_rate,
            momentum=hparams.momentum,
            weight_decay=hparams.weight_decay,
            nesterov=hparams.nesterov,
        )
        steps_per_epoch = self.trainer.estimated_stepping_batches / max(self.trainer.max_epochs, 1)
        cosine = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(1, round(hparams.T_max * steps_per_epoch)))
        scheduler = cosine
        warmup_steps = round(hparams.warmup_epochs * steps_per_epoch)
        if warmup_steps > 0:
            warmup = torch.optim.lr_scheduler.LinearLR(optimizer, start_factor=1 / warmup_steps, total_iters=warmup_steps)
            scheduler = torch.optim.lr_scheduler.SequentialLR(optimizer, [warmup, cosine], milestones=[warmup_steps])
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
