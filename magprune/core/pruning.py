"""Magnitude pruning of any nn.Module with torch.nn.utils.prune: the methods, and what they leave.

Pure functions of a network: nothing here knows of Lightning. `apply_pruning` is the experiment's
cut; `prune_callback.py` decides when to make it. A method is one entry of `METHODS`: adding one
is a function that installs masks on the layers it is given, and its entry.
"""
import copy
import functools
import math
from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn
from torch.nn.utils import prune

from magprune.core.nets import classifier_name
from magprune.core.obs import Calibration, prune_by_obs


def _layerwise(layers: dict[str, nn.Module], sparsity: float, seed: int) -> None:
    for module in layers.values():
        prune.l1_unstructured(module, "weight", amount=sparsity)


def _global(layers: dict[str, nn.Module], sparsity: float, seed: int) -> None:
    prune.global_unstructured([(module, "weight") for module in layers.values()], pruning_method=prune.L1Unstructured, amount=sparsity)


def _random(layers: dict[str, nn.Module], sparsity: float, seed: int) -> None:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for module in layers.values():
            prune.random_unstructured(module, "weight", amount=sparsity)


def _filters(layers: dict[str, nn.Module], sparsity: float, seed: int) -> None:
    for module in layers.values():
        prune.ln_structured(module, "weight", amount=sparsity, n=2, dim=0)


def _order(values: torch.Tensor) -> torch.Tensor:
    """Each value's position in ascending order (ties by position): position < k means among the k smallest."""
    positions = torch.empty(values.numel(), dtype=torch.int32, device=values.device)
    positions[values.flatten().argsort(stable=True)] = torch.arange(values.numel(), dtype=torch.int32, device=values.device)
    return positions


def _rank_layerwise(layers: dict[str, nn.Module]) -> dict[str, tuple[torch.Tensor, int]]:
    return {name: (_order(module.weight.detach().abs()).view(module.weight.shape), module.weight.numel())
            for name, module in layers.items()}


def _rank_across_layers(layers: dict[str, nn.Module], score: Callable[[torch.Tensor], torch.Tensor]) -> dict[str, tuple[torch.Tensor, int]]:
    """Every weight's position in the ascending order of `score(weight)` across all layers together, one pool."""
    scores = [score(module.weight.detach()).flatten() for module in layers.values()]
    positions = _order(torch.cat(scores)).split([len(part) for part in scores])
    total = sum(len(part) for part in scores)
    return {name: (position.view(module.weight.shape), total) for (name, module), position in zip(layers.items(), positions)}


def _rank_global(layers: dict[str, nn.Module]) -> dict[str, tuple[torch.Tensor, int]]:
    return _rank_across_layers(layers, torch.abs)


def _lamp_scores(weight: torch.Tensor) -> torch.Tensor:
    """LAMP's score of each weight (Lee et al. 2021): w^2 over the sum of w^2 of the weights of its layer at least as
    large (itself included; ties by position)."""
    squares = weight.double().flatten() ** 2
    ascending, positions = squares.sort(stable=True)
    at_least = ascending.flip(0).cumsum(0).flip(0)
    scores = torch.empty_like(squares)
    scores[positions] = ascending / at_least.clamp_min(torch.finfo(at_least.dtype).tiny)
    return scores.view(weight.shape)


def _rank_lamp(layers: dict[str, nn.Module]) -> dict[str, tuple[torch.Tensor, int]]:
    return _rank_across_layers(layers, _lamp_scores)


def _from_ranking(rank: Callable) -> Callable:
    """The install of a method whose choice is `rank`'s order: mask every position below the level's share of its pool."""
    def install(layers: dict[str, nn.Module], sparsity: float, seed: int) -> None:
        for name, (positions, pool) in rank(layers).items():
            prune.custom_from_mask(layers[name], "weight", positions >= round(sparsity * pool))
    return install


def _rank_filters(layers: dict[str, nn.Module]) -> dict[str, tuple[torch.Tensor, int]]:
    ranking = {}
    for name, module in layers.items():
        weight = module.weight.detach()
        rows = _order(weight.flatten(1).norm(dim=1)).view(-1, *[1] * (weight.ndim - 1))
        ranking[name] = (rows.expand(weight.shape), weight.shape[0])
    return ranking


GROUP = 4  # N:M sparsity's M: the weights a sparse tensor core reads together


def groups_by_four(module: nn.Module) -> bool:
    """Whether a layer's input weights split into groups of four consecutive ones (the 3-channel stem's do not)."""
    return module.weight.shape[1] % GROUP == 0


def _rank_two_of_four(layers: dict[str, nn.Module]) -> dict[str, tuple[torch.Tensor, int]]:
    """In every group of four consecutive input weights, the two smallest |w| first: half of each layer at 50%.

    A group is four neighbouring input channels at one output channel and kernel position, the order the
    NHWC kernels of sparse tensor cores read them in. Position = (rank within its group) x (groups) + group,
    so the positions below half the pool are exactly each group's two smallest. A layer whose inputs do not
    group by four stays dense at every level (its positions all lie above the pool).
    """
    ranking = {}
    for name, module in layers.items():
        weight = module.weight.detach()
        if not groups_by_four(module):
            ranking[name] = (torch.full_like(weight, weight.numel(), dtype=torch.long), weight.numel())
            continue
        inputs_last = weight.abs().movedim(1, -1)  # (out, kh, kw, in) for a conv, (out, in) for a Linear
        groups = inputs_last.reshape(-1, GROUP)
        rank_in_group = groups.argsort(dim=1, stable=True).argsort(dim=1, stable=True)
        positions = rank_in_group * len(groups) + torch.arange(len(groups), device=weight.device)[:, None]
        ranking[name] = (positions.reshape(inputs_last.shape).movedim(-1, 1), weight.numel())
    return ranking


def _check_two_of_four(sparsity: float) -> None:
    if sparsity not in (0.0, 0.5):
        raise ValueError(f"2:4 keeps two of every four weights: its levels are 0 and 0.5, not {sparsity}")


def _two_of_four(layers: dict[str, nn.Module], sparsity: float, seed: int) -> None:
    _check_two_of_four(sparsity)
    _from_ranking(_rank_two_of_four)(layers, sparsity, seed)


def _obs(allocation: Callable | None) -> Callable:
    """The install of OBS (`obs.prune_by_obs`) removing from each layer as many weights as `allocation`'s order would
    at the level; None: two of every four (the layers whose inputs group by four)."""
    def install(layers: dict[str, nn.Module], sparsity: float, seed: int, network: nn.Module, calibration: Calibration) -> None:
        if sparsity == 0:
            return  # nothing to remove: the network as it is
        if allocation is None:
            _check_two_of_four(sparsity)
            removals = {name: None for name, module in layers.items() if groups_by_four(module)}
        else:
            removals = {name: int((positions < round(sparsity * pool)).sum()) for name, (positions, pool) in allocation(layers).items()}
        prune_by_obs(network, layers, removals, calibration)
    return install


def dense_under_two_of_four(model: nn.Module, include_classifier: bool = False) -> list[str]:
    """The layers 2:4 leaves dense: those whose inputs do not group by four."""
    return [name for name, module in prunable_layers(model, include_classifier).items() if not groups_by_four(module)]


@dataclass(frozen=True)
class Method:
    """A way to choose the weights to remove: `install(layers, sparsity, seed)` masks them in place.

    `rank(layers)`, where the choice follows a fixed order, gives each weight its position in that
    order and the size of the pool it competes in: the weights at positions below
    round(sparsity * pool) are the ones `install` removes, so one ranking serves every level.
    A method without one draws its choice from `seed`.
    """

    name: str
    description: str
    install: Callable[[dict[str, nn.Module], float, int], None]
    rank: Callable[[dict[str, nn.Module]], dict[str, tuple[torch.Tensor, int]]] | None = None
    levels: tuple[float, ...] | None = None  # the only sparsities it takes (2:4: 0 and 0.5); None: any in [0, 1]
    # Whether `install` also takes the network and a `Calibration` (the images it prunes from, drawn by seed).
    calibrated: bool = False
    # Whether it removes whole output filters, which `slim.remove_filters` can then take out of the network for real.
    removes_filters: bool = False

    @property
    def seeded(self) -> bool:
        return self.rank is None


METHODS = {method.name: method for method in (
    Method("layerwise", "each layer loses `sparsity` of its weights, smallest |w| first (the original experiment)",
           _layerwise, _rank_layerwise),
    Method("global", "the smallest |w| across all pruned layers together", _global, _rank_global),
    Method("random", "seeded uniformly random weights: the floor any magnitude criterion has to beat", _random),
    Method("filters", "whole output filters (rows of a Linear) by L2 norm, per layer", _filters, _rank_filters,
           removes_filters=True),
    Method("2:4", "semi-structured N:M: the two largest |w| of every four consecutive input weights kept, the pattern "
           "sparse tensor cores run (levels 0 and 0.5 only; a layer whose inputs do not group by four stays dense)",
           _two_of_four, _rank_two_of_four, levels=(0.0, 0.5)),
    Method("lamp", "the smallest LAMP scores across all pruned layers together: w^2 over the sum of w^2 of its layer's "
           "weights at least as large (Lee et al. 2021)", _from_ranking(_rank_lamp), _rank_lamp),
    Method("obs-layerwise", "OBS from calibration images (OBC/SparseGPT): each layer loses `sparsity` of its weights, "
           "those whose removal its output on the images misses least, its survivors corrected",
           _obs(_rank_layerwise), calibrated=True),
    Method("obs-global", "OBS, each layer losing as many weights as global magnitude would take from it",
           _obs(_rank_global), calibrated=True),
    Method("obs-lamp", "OBS, each layer losing as many weights as LAMP would take from it",
           _obs(_rank_lamp), calibrated=True),
    Method("obs-2:4", "OBS choosing two of every four consecutive input weights (SparseGPT's N:M), survivors corrected "
           "(levels 0 and 0.5 only)", _obs(None), levels=(0.0, 0.5), calibrated=True),
)}


def ranking(model: nn.Module, method: str, include_classifier: bool = False) -> dict | None:
    """The positions `apply_pruning(..., ranking=...)` masks from, for every level; None for `random`."""
    rank = check_method(method).rank
    return None if rank is None else rank(prunable_layers(model, include_classifier))


def prunable_layers(model: nn.Module, include_classifier: bool = False) -> dict[str, nn.Module]:
    """Every Conv2d and Linear by name; the classifier (the last Linear) only if asked for."""
    layers = {name: module for name, module in model.named_modules() if isinstance(module, (nn.Conv2d, nn.Linear))}
    classifier = classifier_name(model)
    if classifier is not None and not include_classifier:
        del layers[classifier]
    return layers


def check_sparsity(sparsity) -> float:
    if isinstance(sparsity, bool) or not isinstance(sparsity, (int, float)) or not math.isfinite(sparsity):
        raise ValueError(f"sparsity must be a number in [0, 1], got {sparsity!r}")
    if not 0 <= sparsity <= 1:
        raise ValueError(f"sparsity must lie in [0, 1], got {sparsity}")
    return float(sparsity)


def check_method(method: str) -> Method:
    if method not in METHODS:
        raise ValueError(f"unknown pruning method {method!r}; choose one of {', '.join(METHODS)}")
    return METHODS[method]


def make_permanent(model: nn.Module) -> nn.Module:
    """Fold every mask into its weight (`prune.remove`): pruned entries become stored zeros."""
    for module in model.modules():
        hooks = list(module._forward_pre_hooks.values())
        for hook in hooks:
            if isinstance(hook, prune.BasePruningMethod):
                prune.remove(module, hook._tensor_name)
    return model


def permanent_copy(model: nn.Module) -> nn.Module:
    """A deep copy with every mask folded into its weight; `model` keeps its masks."""
    # A masked module's `weight` is a plain attribute computed as weight_orig * weight_mask, which
    # deepcopy refuses when it carries a graph; the memo hands deepcopy a detached copy instead.
    computed = {
        id(value): value.detach().clone()
        for module in model.modules()
        for value in vars(module).values()
        if isinstance(value, torch.Tensor) and not value.is_leaf
    }
    return make_permanent(copy.deepcopy(model, memo=computed))


def count_nonzero(tensor: torch.Tensor) -> int:
    """Non-zero entries of `tensor`, as `torch.count_nonzero` counts them.

    Counted on a boolean copy: on a float tensor with scattered zeros, as pruning leaves them,
    torch's count branches on every entry and runs 3x slower on a CPU (61 vs 18 ms for 23.5 M).
    """
    return int(torch.count_nonzero(tensor != 0))


def sparsity_report(model: nn.Module, include_classifier: bool = False) -> dict:
    """Fraction of zero weights overall and per layer, over the layers `apply_pruning` would prune."""
    layers = prunable_layers(model, include_classifier)
    zeros = {name: module.weight.numel() - count_nonzero(module.weight) for name, module in layers.items()}
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
    method: str = "layerwise",
    include_classifier: bool = False,
    seed: int = 0,
    only: list[str] | None = None,
    ranking: dict | None = None,
    calibration: Calibration | None = None,
) -> dict:
    """Mask `sparsity` of the weights of every Conv2d and Linear in place; returns `sparsity_report`.

    `only` names the layers to prune, the rest left dense (for sensitivity analysis).
    Masks already on the model are folded in first, so the weights they zeroed count as the
    smallest and stay pruned: calling this with rising sparsity prunes monotonically.
    `ranking`, from `ranking(model, method)` on these same weights, makes the masks a threshold
    away instead of a sort per level; they are the masks `method` would choose. A `calibrated` method
    prunes from `calibration`'s images.
    """
    sparsity = check_sparsity(sparsity)
    entry = check_method(method)
    if entry.calibrated and calibration is None:
        raise ValueError(f"{method} prunes from calibration images: give it some (--calibration_images)")
    install = functools.partial(entry.install, network=model, calibration=calibration) if entry.calibrated else entry.install
    make_permanent(model)
    layers = prunable_layers(model, include_classifier)
    if only is not None:
        layers = {name: model.get_submodule(name) for name in only}
    if ranking is not None:
        # Masks by threshold are elementwise: made in each weight's own memory format, no conversion
        # needed; torch multiplies the boolean mask into a float one of the weight's dtype.
        for name, module in layers.items():
            positions, pool = ranking[name]
            prune.custom_from_mask(module, "weight", positions >= round(sparsity * pool))
        return sparsity_report(model, include_classifier)
    # torch's pruning methods flatten weights with .view(-1), which channels-last tensors refuse.
    channels_last = any(module.weight.is_contiguous(memory_format=torch.channels_last) and not module.weight.is_contiguous()
                        for module in layers.values())
    if channels_last:
        model.to(memory_format=torch.contiguous_format)
    install(layers, sparsity, seed)
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
