"""What may be done to a freshly masked network before it is tested: the RECOVERIES registry.

A recovery is one entry here plus its function. The function takes the level tester (for the data and
the Trainer it needs) and the masked network, and recovers the network in place with the masks held,
so a pruned weight stays exactly zero. Its curves carry the entry's suffix ('global+BN'); the setting
named by `enabled_by` switches it on (0 is off), and its value says how much (batches, epochs).
"""
from dataclasses import dataclass
from typing import Callable

from torch import nn


def _none(level, network: nn.Module) -> None:
    pass


def _recalibrate(level, network: nn.Module) -> None:
    level.recalibrate(network)


def finetune_schedule(config, epochs: int) -> dict:
    """A cosine from `finetune_lr` to zero over `epochs`, no warm-up (the training recipe's would outlast a short fit)."""
    return {"learning_rate": config.finetune_lr, "warmup_epochs": 0, "T_max": epochs}


def _finetune(level, network: nn.Module) -> None:
    level.retrain(network, level.config.finetune_epochs, **finetune_schedule(level.config, level.config.finetune_epochs))


@dataclass(frozen=True)
class Recovery:
    name: str
    suffix: str                  # appended to the method's name: the curve
    enabled_by: str | None       # the SweepConfig setting that switches it on; None: always run
    description: str
    recover: Callable[[object, nn.Module], None]
    epochs_setting: str | None = None  # the setting that counts its epochs of retraining (each row's `retrain_epochs`)
    at_dense: bool = True        # whether level 0 is tested too (nothing pruned: nothing to recover)

    @property
    def seeded(self) -> bool:
        """Whether what it does depends on the seed: a recovery that trains draws batches and augmentations."""
        return self.epochs_setting is not None


RECOVERIES = {recovery.name: recovery for recovery in (
    Recovery("none", "", None, "the masked network as it is (one-shot)", _none),
    Recovery("bn", "+BN", "bn_recalibrate", "BatchNorm statistics re-estimated on training batches", _recalibrate),
    # An epoch of training the dense model would cost as much as any level's, and recover nothing.
    Recovery("finetune", "+FT", "finetune_epochs", "epochs of training with the masks held, a cosine from the peak rate",
             _finetune, epochs_setting="finetune_epochs", at_dense=False),
)}


def curve_name(method: str, recovery: str) -> str:
    return method + RECOVERIES[recovery].suffix
