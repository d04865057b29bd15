"""The callbacks that decide when to prune: once as fitting or testing starts, or gradually in training;
and the one that keeps what pruning with rewinding needs (the weights at the start and at an early step).

The pruning itself is `magprune.core.pruning.apply_pruning`, which works on any nn.Module.

    trainer.test(model, datamodule=datamodule, callbacks=[PruningCallback(0.5, "global")])
"""
import copy

import lightning as L

from magprune.core.obs import Calibration
from magprune.core.pruning import apply_pruning, check_method, check_sparsity, recalibrate_batchnorm


class PruningCallback(L.Callback):
    """Prunes the LightningModule once, when fitting or testing first starts; `report` says what it removed.

    With `recalibrate_batches` > 0, BatchNorm statistics are re-estimated on that many training
    batches (from the datamodule's `recalibration_batches`) after masking and before testing.
    Fitting with it fine-tunes with the masks held: pruned weights stay exactly zero.
    """

    def __init__(
        self,
        sparsity: float,
        method: str = "layerwise",
        include_classifier: bool = False,
        seed: int = 0,
        recalibrate_batches: int = 0,
        calibration: Calibration | None = None,
    ):
        self.sparsity = check_sparsity(sparsity)
        self.method = check_method(method).name
        if check_method(method).calibrated and calibration is None:
            raise ValueError(f"{method} prunes from calibration images: pass calibration=Calibration(images)")
        self.include_classifier, self.seed = include_classifier, seed
        self.recalibrate_batches = recalibrate_batches
        self.calibration = calibration
        self.report = None

    def _prune_once(self, pl_module: L.LightningModule):
        if self.report is None:
            self.report = apply_pruning(pl_module, self.sparsity, self.method, self.include_classifier, self.seed,
                                        calibration=self.calibration)

    def on_fit_start(self, trainer, pl_module):
        self._prune_once(pl_module)

    def on_test_start(self, trainer, pl_module):
        self._prune_once(pl_module)
        if self.recalibrate_batches:
            batches = trainer.datamodule.recalibration_batches(self.recalibrate_batches, pl_module.device)
            recalibrate_batchnorm(pl_module, batches)


def cubic_sparsity(step: int, start_step: int, end_step: int, initial: float, final: float) -> float:
    """Zhu & Gupta's schedule: `initial` until `start_step`, `final` from `end_step`, a cubic between.

    s_t = final + (initial - final) * (1 - (step - start_step) / (end_step - start_step))^3 prunes
    fastest early, while the network still has redundant weights, and slows as it nears `final`.
    """
    if step <= start_step:
        return initial
    if step >= end_step:
        return final
    remaining = 1 - (step - start_step) / (end_step - start_step)
    return final + (initial - final) * remaining**3


class GradualPruningCallback(L.Callback):
    """Raises the sparsity from 0 to `final_sparsity` over training epochs [start_epoch, end_epoch).

    Every `every_n_steps` batches from the span's first batch, and at its last batch, the weights
    are masked to the scheduled `cubic_sparsity` with `apply_pruning`, which keeps pruned weights
    pruned and the Parameter objects the optimizer holds. Step positions come from
    `trainer.num_training_batches`, so the span means the same whatever the data set's size; a
    Δt longer than the span prunes once, to `final_sparsity`, at its last batch.

    Logs `train/sparsity` (achieved) at each pruning and, every validation,
    `val/acc_at_final_sparsity`: val/acc once the final sparsity is in place, -1 before. Monitoring
    it keeps ModelCheckpoint from choosing a denser network from before the schedule ended; -1 rather
    than a missing value because ModelCheckpoint fails on a monitored key that a validation did not
    log, and rather than 0 because ModelCheckpoint replaces its best only on a strictly higher value.
    """

    def __init__(
        self,
        final_sparsity: float,
        start_epoch: int,
        end_epoch: int,
        method: str = "layerwise",
        include_classifier: bool = False,
        every_n_steps: int = 100,
        seed: int = 0,
    ):
        if not 0 <= start_epoch < end_epoch:
            raise ValueError(f"need 0 <= start_epoch < end_epoch, got {start_epoch} and {end_epoch}")
        if every_n_steps < 1:
            raise ValueError(f"every_n_steps must be at least 1, got {every_n_steps}")
        self.method = check_method(method).name
        if check_method(method).calibrated:
            raise ValueError(f"{method} prunes from calibration images, once; gradual pruning takes a magnitude method")
        self.final_sparsity = check_sparsity(final_sparsity)
        self.start_epoch, self.end_epoch = start_epoch, end_epoch
        self.include_classifier, self.seed = include_classifier, seed
        self.every_n_steps = every_n_steps
        self.applied_sparsity = 0.0

    @property
    def reached_final_sparsity(self) -> bool:
        return self.applied_sparsity >= self.final_sparsity

    def scheduled_sparsity(self, batches_per_epoch: int, step: int) -> float:
        """The sparsity due at batch position `step` (counted from the start of training)."""
        start_step = self.start_epoch * batches_per_epoch
        last_step = self.end_epoch * batches_per_epoch - 1
        if step >= last_step:
            return self.final_sparsity
        # Between pruning steps the sparsity stays at the last one's, as in Zhu & Gupta's Δt.
        pruning_step = start_step + (step - start_step) // self.every_n_steps * self.every_n_steps
        return cubic_sparsity(pruning_step, start_step, last_step, 0.0, self.final_sparsity)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        step = trainer.current_epoch * trainer.num_training_batches + batch_idx
        sparsity = self.scheduled_sparsity(trainer.num_training_batches, step)
        if sparsity <= self.applied_sparsity:
            return
        report = apply_pruning(pl_module, sparsity, self.method, self.include_classifier, self.seed)
        self.applied_sparsity = sparsity
        # Straight to the loggers: self.log would keep only every log_every_n_steps-th value.
        for logger in trainer.loggers:
            logger.log_metrics({"train/sparsity": report["sparsity"]}, step=trainer.global_step)

    def on_validation_epoch_end(self, trainer, pl_module):
        accuracy = trainer.callback_metrics["val/acc"] if self.reached_final_sparsity else -1.0
        pl_module.log("val/acc_at_final_sparsity", accuracy)

    def state_dict(self) -> dict:
        return {"applied_sparsity": self.applied_sparsity}

    def on_save_checkpoint(self, trainer, pl_module, checkpoint):
        # The schedule among the hyper-parameters, under train.py's flag names: what repeats the run, and
        # which method's masks the checkpoint holds (scripts/sparse_training_curve.py colours its row by it).
        checkpoint["hyper_parameters"].update(
            prune_to=self.final_sparsity, prune_method=self.method, prune_start_epoch=self.start_epoch,
            prune_end_epoch=self.end_epoch, prune_every_steps=self.every_n_steps)

    def load_state_dict(self, state_dict: dict) -> None:
        self.applied_sparsity = state_dict["applied_sparsity"]


class RewindPoints(L.Callback):
    """Keeps the network's weights at the start of training and after `step` optimizer steps, in every checkpoint.

    What iterative pruning with rewinding resets the survivors to: the early step for the lottery ticket
    (Frankle et al. 2020, rewinding to an early step), the start for the original lottery ticket's control.
    The checkpoint holds them as `rewind_points` = {"initial": {"step": 0, "state_dict": ...}, "early": {"step":
    step, ...}} (the bare network's names) and `rewind_step` among its hyper-parameters; a resumed run reads them back.
    """

    def __init__(self, step: int):
        if step < 1:
            raise ValueError(f"the rewind step counts optimizer steps: 1 or more, got {step}")
        self.step = step
        self.points: dict[str, dict] = {}

    @staticmethod
    def _weights(pl_module) -> dict:
        return {name: tensor.detach().cpu().clone() for name, tensor in copy.copy(pl_module.model.state_dict()).items()}

    def on_fit_start(self, trainer, pl_module):
        if trainer.global_step == 0 and "initial" not in self.points:
            self.points["initial"] = {"step": 0, "state_dict": self._weights(pl_module)}

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_step == self.step and "early" not in self.points:
            self.points["early"] = {"step": self.step, "state_dict": self._weights(pl_module)}

    def on_save_checkpoint(self, trainer, pl_module, checkpoint):
        checkpoint["rewind_points"] = self.points
        checkpoint["hyper_parameters"]["rewind_step"] = self.step

    def on_load_checkpoint(self, trainer, pl_module, checkpoint):
        self.points = dict(checkpoint.get("rewind_points", {}))
