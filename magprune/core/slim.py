"""Filters removed for real: after `filters` pruning, the smaller network Torch-Pruning builds, and its latency."""
import copy
import statistics
import time

import torch
import torch_pruning as tp
from torch import nn

from magprune.core.accounting import WEIGHT_LAYERS, layer_flops
from magprune.core.nets import classifier_name
from magprune.core.pruning import permanent_copy


def count_params(model: nn.Module) -> int:
    return sum(parameter.numel() for parameter in model.parameters())


@torch.no_grad()
def median_latency_ms(model: nn.Module, images: torch.Tensor, warmup: int, repeats: int) -> float:
    for _ in range(warmup):
        model(images)
    timings = []
    for _ in range(repeats):
        start = time.perf_counter()
        model(images)
        timings.append((time.perf_counter() - start) * 1000)
    return statistics.median(timings)


def zero_filters(layer: nn.Module) -> list[int]:
    """Output channels whose whole filter (row of a Linear) is zero."""
    return torch.nonzero(layer.weight.detach().flatten(1).abs().sum(dim=1) == 0).flatten().tolist()


def removable_filters(graph, network: nn.Module) -> list[tuple[nn.Module, list[int]]]:
    """Each layer whose zero output filters can go alone (the one producer of its channel group) and those filters'
    indices; a layer all of whose filters are zero keeps one. The classifier's logits are never a group."""
    classifier = classifier_name(network)
    logits_layer = [] if classifier is None else [network.get_submodule(classifier)]
    removals = []
    for group in graph.get_all_groups(ignored_layers=logits_layer, root_module_types=WEIGHT_LAYERS):
        producers = [dependency.target.module for dependency, _ in group
                     if graph.is_out_channel_pruning_fn(dependency.handler) and isinstance(dependency.target.module, WEIGHT_LAYERS)]
        if len(producers) != 1:  # coupled across a residual stage, or mistraced: kept (see remove_filters)
            continue
        removable = zero_filters(producers[0])
        if len(removable) == producers[0].weight.shape[0]:
            removable = removable[1:]
        if removable:
            removals.append((producers[0], removable))
    return removals


def remove_filters(
    model: nn.Module,
    example_input: torch.Tensor,
    latency_batch: int = 64,
    warmup: int = 3,
    repeats: int = 10,
    seed: int = 0,
    measure: bool = True,
) -> tuple[nn.Module, dict]:
    """Physically remove the all-zero output filters left by `filters` pruning; measure what it saves.

    Torch-Pruning's DependencyGraph, traced on `example_input`, groups the channels that must go
    together. Only groups with a single producing Conv2d/Linear are shrunk (`removable_filters`): channels internal to a
    block (BasicBlock conv1; Bottleneck conv1 and conv2) and a stem that feeds only convolutions
    (torchvision's), taken out of that conv, its batch norm and the input of the convs it feeds.
    Channels that feed a residual addition are coupled across a whole stage (every block's last
    conv, projection shortcuts, the CIFAR ResNets' stem) and are kept, as are the logits of the
    last Linear: removing a coupled channel needs its filter to be zero in every producer, and
    the option-A zero-pad shortcut of the CIFAR ResNets is not traced correctly (Torch-Pruning
    treats the channel pad as an elementwise op, merging stages of different widths into one group).

    Not equivalent to the masked model: a zero filter followed by batch norm outputs the norm's shift (beta - gamma *
    mean / std), not zero; `max_logit_difference` measures what dropping it does on a random batch.

    Returns (slim_model, stats), the slim model in eval mode, stats holding
      removed_channels      {layer name: output channels removed}
      params                {"dense": n, "slim": n} parameter entries
      flops                 {"dense": n, "slim": n} FLOPs of one forward pass on `example_input`
    and, only with `measure` (for a ResNet-50, seconds of CPU work; a sweep's storage columns need neither),
      latency_ms            {"dense": ms, "slim": ms} median CPU wall time of a forward pass on a
                            random batch of `latency_batch`, in eval mode under no_grad, after `warmup` passes
      max_logit_difference  max |slim - masked| over the logits of that batch
    """
    dense = permanent_copy(model).eval().cpu()
    slim = copy.deepcopy(dense)
    example_input = example_input.cpu()
    # Torch-Pruning traces through autograd, so a caller's no_grad would leave it with no graph.
    with torch.enable_grad():
        graph = tp.DependencyGraph().build_dependency(slim, example_inputs=example_input, verbose=False)
    names = {module: name for name, module in slim.named_modules()}
    removals = removable_filters(graph, slim)
    for layer, removable in removals:
        prune_out_channels = graph.get_pruner_of_module(layer).prune_out_channels
        graph.get_pruning_group(layer, prune_out_channels, removable).prune(record_history=False)

    stats = {
        "removed_channels": {names[layer]: len(removable) for layer, removable in removals},
        "params": {"dense": count_params(dense), "slim": count_params(slim)},
        "flops": {"dense": layer_flops(dense, example_input)[0], "slim": layer_flops(slim, example_input)[0]},
    }
    if measure:
        generator = torch.Generator().manual_seed(seed)
        images = torch.randn((latency_batch, *example_input.shape[1:]), generator=generator)
        with torch.no_grad():
            stats["max_logit_difference"] = float((slim(images) - dense(images)).abs().max())
        stats["latency_ms"] = {
            "dense": median_latency_ms(dense, images, warmup, repeats),
            "slim": median_latency_ms(slim, images, warmup, repeats),
        }
    return slim, stats
