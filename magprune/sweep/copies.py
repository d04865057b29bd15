"""Pruned copies of one dense network: how every part of a sweep gets a network to test, retrain, measure or export.

    copies = PrunedCopies(config, dense, datamodule)
    network = copies.pruned_copy("global", 0.5, seed=0)   # masked, nothing recovered

A method's order of removal is sorted once for every level; a calibrated method (OBS) draws its calibration images
once per seed and works out a level's masks and corrected weights once, every later copy of that level starting
from them.
"""
import copy

import torch
from torch import nn
from torch.nn.utils import prune

from magprune.core.obs import Calibration
from magprune.core.pruning import METHODS, apply_pruning, prunable_layers, ranking
from magprune.sweep.config import SweepConfig


class PrunedCopies:
    """Copies of `dense` masked by a method at a level; `datamodule` gives a calibrated method its training images."""

    def __init__(self, config: SweepConfig, dense: nn.Module, datamodule):
        self.config, self.dense, self.datamodule = config, dense, datamodule
        self.device = next(dense.parameters()).device if dense is not None else torch.device("cpu")
        self._rankings = {}
        self._calibrations = {}  # seed: the images a calibrated method prunes from, drawn once
        self._reconstructed = {}  # (method, level, seed): a calibrated method's corrected weights and masks, by layer

    def removal_order(self, method: str) -> dict | None:
        """The dense network's order of removal for `method`, sorted once for every level."""
        if method not in self._rankings:
            self._rankings[method] = ranking(self.dense, method, self.config.include_classifier)
        return self._rankings[method]

    def calibration(self, method: str, seed: int) -> Calibration | None:
        """What a `calibrated` method (OBS) prunes from, for `seed`: its training images drawn once and kept resident;
        None for any other method."""
        if not METHODS[method].calibrated:
            return None
        if seed not in self._calibrations:
            images = self.datamodule.calibration_images(self.config.calibration_images, seed, self.device)
            self._calibrations[seed] = Calibration(images, self.config.obs_damping, self.config.obs_block, self.config.batch_size)
        return self._calibrations[seed]

    def pruned_copy(self, method: str, sparsity: float, seed: int, trained: bool = False,
                    channels_last: bool = False) -> nn.Module:
        """A copy of the dense network masked at `sparsity` by `method`, nothing recovered: how every caller gets one.
        `trained`: see `dense_copy`."""
        network = self.dense_copy(trained)
        if channels_last:
            network = network.to(memory_format=torch.channels_last)
        if not METHODS[method].calibrated:
            apply_pruning(network, sparsity, method, self.config.include_classifier, seed, ranking=self.removal_order(method))
            return network
        layers = prunable_layers(network, self.config.include_classifier)
        key = (method, sparsity, seed)
        if key not in self._reconstructed:
            apply_pruning(network, sparsity, method, self.config.include_classifier, seed, calibration=self.calibration(method, seed))
            self._reconstructed[key] = {name: (layer.weight_orig.detach().clone(), layer.weight_mask.clone())
                                        for name, layer in layers.items() if hasattr(layer, "weight_mask")}
            return network
        for name, (weight, mask) in self._reconstructed[key].items():
            layers[name].weight.data = weight.clone()  # a copy: fine-tuning writes into it
            prune.custom_from_mask(layers[name], "weight", mask)
        return network

    def dense_copy(self, trained: bool = False) -> nn.Module:
        """A copy of the dense network to prune; unless it is to be `trained`, its prunable weights share the dense ones' memory.

        Masking, folding the masks in and folding BatchNorm all write new tensors and never into a
        weight, so an untrained copy needs its own Parameter objects (`prune.remove` swaps their data)
        but not its own 94 MB of ResNet-50 weights. An optimizer writes in place: a trained copy gets everything.
        """
        if trained:
            return copy.deepcopy(self.dense)
        weights = (module._parameters.get("weight") for module in prunable_layers(self.dense, self.config.include_classifier).values())
        shared = {id(weight): nn.Parameter(weight.data, requires_grad=weight.requires_grad) for weight in weights if weight is not None}
        return copy.deepcopy(self.dense, memo=shared)
