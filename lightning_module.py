"""The LightningModule: cross-entropy training of a network with SGD, its metrics and its schedule.

    python train.py --arch resnet50 --gpus 1      # the experiment
    python train.py --arch resnet20               # small enough for a CPU
"""
import inspect
import warnings
from pathlib import Path

import lightning as L
import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics import Metric
from torchmetrics.classification import MulticlassAccuracy

from datamodule import CIFAR10_MEAN, CIFAR10_STD
from magprune.core.export import read_state_dict
from magprune.core.io import read_checkpoint, strip_wrapper_prefixes
from magprune.core.nets import build_model, check_arch
from magprune.core.pruning import restore_masks
from magprune.errors import InputError


class CorrectCount(Metric):
    """Correct predictions and images seen, as integers: accuracies that compare exactly; and which images were right.

    A float32 accuracy cannot say whether 8,418 of 10,000 is exactly one point below 8,518 of 10,000;
    the counts can. `answers()` is a bool per image in the order tested: two networks tested on the same
    images are compared image by image (the paired drop). Gathered across processes like any torchmetrics state.
    """

    full_state_update = False

    def __init__(self):
        super().__init__()
        self.add_state("hits", [], dist_reduce_fx="cat")

    def update(self, logits: torch.Tensor, labels: torch.Tensor) -> None:
        self.hits.append(logits.argmax(1) == labels)

    def answers(self) -> torch.Tensor:
        hits = self.hits if isinstance(self.hits, torch.Tensor) else torch.cat(self.hits) if self.hits else torch.zeros(0, dtype=torch.bool)
        return hits.cpu()

    def compute(self) -> tuple[int, int]:
        answers = self.answers()
        return int(answers.sum()), answers.numel()


class ImageClassifier(L.LightningModule):
    """Cross-entropy training of a network with SGD and a cosine learning rate.

    The network is `build_model(arch, num_classes)`, or `network` when one is passed in (the sweep passes pruned
    ones); `arch` still names it, so a checkpoint rebuilds it. `num_classes` and `image_size` (height, width)
    are the data's, recorded so that a checkpoint says what its network answers and takes.

    `T_max` and `warmup_epochs` are in epochs, as in the original experiment; the schedule steps
    every batch, so its length comes from `trainer.estimated_stepping_batches` rather than from the
    data set's size. With `warmup_epochs` the rate climbs linearly from near zero before the cosine.
    `decay_norms_and_biases=False` exempts BatchNorm and bias parameters from weight decay.
    `schedule_from_epoch` starts the schedule that many epochs in, so a short fit re-runs its end
    (learning-rate rewinding); `warmup_epochs` and `T_max` may be fractions (a schedule compressed into a few epochs).
    `recipe` only records which `train.py --recipe` chose these values, so a checkpoint says it.
    `channels_last` changes speed only. `flip_test` makes validation and test answer with the mean of the
    logits of each image and its mirror image (test-time augmentation); training is unchanged.
    """

    def __init__(
        self,
        arch: str = "resnet50",
        num_classes: int = 10,
        image_size: tuple = (32, 32),
        learning_rate: float = 0.01,
        momentum: float = 0.9,
        weight_decay: float = 5e-4,
        T_max: float = 20,
        channels_last: bool = False,
        nesterov: bool = False,
        label_smoothing: float = 0.0,
        warmup_epochs: float = 0,
        schedule_from_epoch: float = 0.0,
        decay_norms_and_biases: bool = True,
        recipe: str = "original",
        flip_test: bool = False,
        network: nn.Module | None = None,
    ):
        super().__init__()
        self.save_hyperparameters(ignore=["network"])
        self.model = build_model(arch, num_classes, tuple(image_size)) if network is None else network
        if channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        # Unvalidated: torchmetrics' input checks call torch.unique, which waits for the GPU every step.
        self.train_acc, self.val_acc, self.test_acc = (
            MulticlassAccuracy(num_classes, average="micro", validate_args=False) for _ in range(3))
        # Not logged, so Lightning leaves it alone: read with `.compute()` after `trainer.test`.
        self.test_counts = CorrectCount()

    def forward(self, images):
        if self.hparams.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        return self.model(images)

    def model_step(self, batch, stage: str, accuracy: MulticlassAccuracy):
        """Loss and accuracy of one batch, logged under `stage/`; returns the logits and the loss."""
        images, labels = batch
        logits = self(images)
        if self.hparams.flip_test and stage != "train":
            logits = (logits + self(images.flip(3))) / 2
        loss = F.cross_entropy(logits, labels, label_smoothing=self.hparams.label_smoothing if stage == "train" else 0.0)
        accuracy.update(logits, labels)  # not a call: that would also compute each batch's own accuracy
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
        with warnings.catch_warnings():
            # Stepped before any optimizer step on purpose: the steps a rewound schedule starts after.
            warnings.filterwarnings("ignore", message=r"Detected call of `lr_scheduler.step\(\)` before `optimizer.step\(\)`")
            for _ in range(round(hparams.schedule_from_epoch * steps_per_epoch)):
                scheduler.step()
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


def load_classifier(path: Path) -> tuple[ImageClassifier, dict, dict]:
    """The model, the datamodule's hyper-parameters and the rewind points (`train.py --rewind_step`; {} if none)
    from a Lightning checkpoint of this project."""
    checkpoint = read_checkpoint(path)
    hparams = dict(checkpoint["hyper_parameters"])
    if not isinstance(hparams.get("arch"), str) or check_arch(hparams["arch"]):
        raise InputError(f"{path} was not written by this project's train.py (no known 'arch' hyper-parameter)")
    # Settings of older versions of this project that no longer exist (such as fold_batchnorm) are dropped.
    known = inspect.signature(ImageClassifier.__init__).parameters
    model = ImageClassifier(**{key: value for key, value in hparams.items() if key in known})
    restore_masks(model, checkpoint["state_dict"])
    try:
        model.load_state_dict(checkpoint["state_dict"])
    except (RuntimeError, KeyError, TypeError) as error:
        raise InputError(f"{path} does not match its architecture: {str(error).splitlines()[0]}") from None
    return model, dict(checkpoint.get("datamodule_hyper_parameters", {})), dict(checkpoint.get("rewind_points", {}))


def classifier_from_weights(path: Path, arch: str) -> tuple[ImageClassifier, dict]:
    """A plain state dict (names optionally wrapped) or a .ptz export as the `arch` network in an ImageClassifier,
    answering as many classes as its classifier has rows.

    Returns the model and what the file says of its inputs (a .ptz export's mean and std, else CIFAR-10's).
    """
    state_dict, extra = read_state_dict(path)
    state_dict = strip_wrapper_prefixes(state_dict)
    # The classifier is the last Linear: its rows are the classes the weights answer.
    matrices = [value for key, value in state_dict.items() if key.endswith("weight") and value.ndim == 2]
    model = ImageClassifier(arch=arch, num_classes=len(matrices[-1]) if matrices else 10)
    try:
        model.model.load_state_dict(state_dict)
    except RuntimeError as error:
        raise InputError(f"{path} does not fit {arch}: {str(error).splitlines()[0]}") from None
    return model, {"mean": tuple(extra.get("mean", CIFAR10_MEAN)), "std": tuple(extra.get("std", CIFAR10_STD))}
