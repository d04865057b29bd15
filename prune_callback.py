"""Magnitude pruning of any nn.Module with torch.nn.utils.prune, and the callbacks that decide when.

`apply_pruning` is the whole method; `PruningCallback` applies it as testing (or fine-tuning)
starts, and `GradualPruningCallback` raises the sparsity during training on Zhu & Gupta's schedule.
"""
import math

import lightning as L
import torch
from torch import nn
from torch.nn.utils import prune

# layerwise: each layer loses `sparsity` of its weights, smallest |w| first (the original experiment).
# global:    the smallest |w| across all pruned layers together.
# random:    seeded uniformly random weights: the floor any magnitude criterion has to beat.
# filters:   whole output filters (rows of a Linear) by L2 norm, per layer.
METHODS = ("layerwise", "global", "random", "filters")


def prunable_layers(model: nn.Module, include_classifier: bool = False) -> dict[str, nn.Module]:
    """Every Conv2d and Linear by name; the classifier (the last Linear) only if asked for."""
    layers = {name: module for name, module in model.named_modules() if isinstance(module, (nn.Conv2d, nn.Linear))}
    linear_names = [name for name, module in layers.items() if isinstance(module, nn.Linear)]
    if linear_names and not include_classifier:
        del layers[linear_names[-1]]
    return layers


def check_sparsity(sparsity) -> float:
    if isinstance(sparsity, bool) or not isinstance(sparsity, (int, float)) or not math.isfinite(sparsity):
        raise ValueError(f"sparsity must be a number in [0, 1], got {sparsity!r}")
    if not 0 <= sparsity <= 1:
        raise ValueError(f"sparsity must lie in [0, 1], got {sparsity}")
    return float(sparsity)


def make_permanent(model: nn.Module) -> nn.Module:
    """Fold every mask into its weight (`prune.remove`): pruned entries become stored zeros."""
    for module in model.modules():
        hooks = list(module._forward_pre_hooks.values())
        for hook in hooks:
            if isinstance(hook, prune.BasePruningMethod):
                prune.remove(module, hook._tensor_name)
    return model


def sparsity_report(model: nn.Module, include_classifier: bool = False) -> dict:
    """Fraction of zero weights overall and per layer, over the layers `apply_pruning` would prune."""
    layers = prunable_layers(model, include_classifier)
    zeros = {name: int((module.weight == 0).sum()) for name, module in layers.items()}
    sizes = {name: module.weight.numel() for name, module in layers.items()}
    total_zeros, total = sum(zeros.values()), sum(sizes.values())
    return {
        "sparsity": total_zeros / total if total else 0.0,
        "zeros": total_zeros,
        "weights": total,
        "layers": {name: zeros[name] / sizes[name] for name in layers},
    }


def apply_pruning(
    model: nn.Module,
    sparsity: float,
    scope: str = "layerwise",
    include_classifier: bool = False,
    seed: int = 0,
    only: list[str] | None = None,
) -> dict:
    """Mask `sparsity` of the weights of every Conv2d and Linear in place; returns `sparsity_report`.

    `only` names the layers to prune, the rest left dense (for sensitivity analysis).
    Masks already on the model are folded in first, so the weights they zeroed count as the
    smallest and stay pruned: calling this with rising sparsity prunes monotonically.
    """
    sparsity = check_sparsity(sparsity)
    if scope not in METHODS:
        raise ValueError(f"unknown pruning method {scope!r}; choose one of {', '.join(METHODS)}")
    make_permanent(model)
    layers = prunable_layers(model, include_classifier)
    if only is not None:
        layers = {name: model.get_submodule(name) for name in only}
    # torch's pruning methods flatten weights with .view(-1), which channels-last tensors refuse.
    channels_last = any(module.weight.is_contiguous(memory_format=torch.channels_last) and not module.weight.is_contiguous()
                        for module in layers.values())
    if channels_last:
        model.to(memory_format=torch.contiguous_format)
    if scope == "global":
        prune.global_unstructured(
            [(module, "weight") for module in layers.values()], pruning_method=prune.L1Unstructured, amount=sparsity
        )
    elif scope == "random":
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            for module in layers.values():
                prune.random_unstructured(module, "weight", amount=sparsity)
    elif scope == "filters":
        for module in layers.values():
            prune.ln_structured(module, "weight", amount=sparsity, n=2, dim=0)
    else:
        for module in layers.values():
            prune.l1_unstructured(module, "weight", amount=sparsity)
    if channels_last:
        model.to(memory_format=torch.channels_last)
        refresh_masked_weights(model)
    return sparsity_report(model, include_classifier)


def refresh_masked_weights(model: nn.Module) -> None:
    """Recompute every masked tensor from its `_orig` and `_mask`; torch only does so before a forward pass."""
    for module in model.modules():
        for hook in list(module._forward_pre_hooks.values()):
            if isinstance(hook, prune.BasePruningMethod):
                setattr(module, hook._tensor_name, hook.apply_mask(module))


def restore_masks(model: nn.Module, state_dict: dict) -> None:
    """Give `model` the pruning parametrisation a masked state dict was saved with, so that it loads."""
    masked = [key[: -len("_mask")] for key in state_dict if key.endswith("_mask")]
    for key in masked:
        module_name, _, tensor_name = key.rpartition(".")
        module = model.get_submodule(module_name)
        if not hasattr(module, f"{tensor_name}_mask"):
            prune.custom_from_mask(module, tensor_name, torch.ones_like(getattr(module, tensor_name)))
    if masked:
        model.register_load_state_dict_post_hook(lambda module, incompatible_keys: refresh_masked_weights(module))


@torch.no_grad()
def recalibrate_batchnorm(model: nn.Module, batches) -> None:
    """Re-estimate every BatchNorm's running mean and variance on `batches` of inputs.

    Pruning shifts each layer's activation statistics away from those BatchNorm froze during
    training. Only BatchNorm buffers change: no labels, no gradients, no weight update.
    """
    norms = [module for module in model.modules() if isinstance(module, nn.modules.batchnorm._BatchNorm)]
    momenta = [norm.momentum for norm in norms]
    was_training = model.training
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None  # a cumulative average over all batches, not an exponential one
    model.train()
    for images in batches:
        model(images)
    for norm, momentum in zip(norms, momenta):
        norm.momentum = momentum
    model.train(was_training)


class PruningCallback(L.Callback):
    """Prunes the LightningModule once, when fitting or testing first starts, and logs the sparsity.

    With `recalibrate_batches` > 0, BatchNorm statistics are re-estimated on that many training
    batches (from the datamodule's `recalibration_batches`) after masking and before testing.
    """

    def __init__(
        self,
        sparsity: float,
        scope: str = "layerwise",
        include_classifier: bool = False,
        seed: int = 0,
        recalibrate_batches: int = 0,
    ):
        self.sparsity = check_sparsity(sparsity)
        self.scope, self.include_classifier, self.seed = scope, include_classifier, seed
        self.recalibrate_batches = recalibrate_batches
        self.report = None

    def _prune_once(self, pl_module: L.LightningModule):
        if self.report is None:
            self.report = apply_pruning(pl_module, self.sparsity, self.scope, self.include_classifier, self.seed)

    def on_fit_start(self, trainer, pl_module):
        self._prune_once(pl_module)

    def on_test_start(self, trainer, pl_module):
        self._prune_once(pl_module)
        if self.recalibrate_batches:
            batches = trainer.datamodule.recalibration_batches(self.recalibrate_batches, pl_module.device)
            recalibrate_batchnorm(pl_module, batches)
        pl_module.log("test/sparsity", self.report["sparsity"])


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
        scope: str = "layerwise",
        include_classifier: bool = False,
        every_n_steps: int = 100,
        seed: int = 0,
    ):
        if not 0 <= start_epoch < end_epoch:
            raise ValueError(f"need 0 <= start_epoch < end_epoch, got {start_epoch} and {end_epoch}")
        if every_n_steps < 1:
            raise ValueError(f"every_n_steps must be at least 1, got {every_n_steps}")
        if scope not in METHODS:
            raise ValueError(f"unknown pruning method {scope!r}; choose one of {', '.join(METHODS)}")
        self.final_sparsity = check_sparsity(final_sparsity)
        self.start_epoch, self.end_epoch = start_epoch, end_epoch
        self.scope, self.include_classifier, self.seed = scope, include_classifier, seed
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
        report = apply_pruning(pl_module, sparsity, self.scope, self.include_classifier, self.seed)
        self.applied_sparsity = sparsity
        # Straight to the loggers: self.log would keep only every log_every_n_steps-th value.
        for logger in trainer.loggers:
            logger.log_metrics({"train/sparsity": report["sparsity"]}, step=trainer.global_step)

    def on_validation_epoch_end(self, trainer, pl_module):
        accuracy = trainer.callback_metrics["val/acc"] if self.reached_final_sparsity else -1.0
        pl_module.log("val/acc_at_final_sparsity", accuracy)

    def state_dict(self) -> dict:
        return {"applied_sparsity": self.applied_sparsity}

    def load_state_dict(self, state_dict: dict) -> None:
        self.applied_sparsity = state_dict["applied_sparsity"]
