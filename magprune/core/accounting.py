"""What the masks save, by arithmetic: non-zero weights, bytes in sparse formats, FLOPs.

A masked model is exactly as large and as slow as the dense one: `torch.nn.utils.prune` keeps
every weight and multiplies by a mask. The savings exist only once the zeros are exploited, and
these functions say how much that would be, exactly, from the weights alone: no file is written.
`export.py` writes the bitmask format these formulas describe; its tests hold them to it.

FLOPs are those of `torch.utils.flop_counter.FlopCounterMode`, which counts a multiply-add as 2
FLOPs and counts only convolutions and matrix products (batch norm, activations, additions and
pooling are free).
"""
import math
from collections import defaultdict

import torch
from torch import nn
from torch.nn.utils.prune import BasePruningMethod
from torch.utils.flop_counter import FlopCounterMode

from magprune.core.pruning import count_nonzero, permanent_copy, prunable_layers

FLOAT32_BYTES = 4
# CSR indices as int32, the index type of scipy.sparse and cuSPARSE; every layer here has far
# fewer than 2**31 columns or non-zeros.
CSR_INDEX_BYTES = 4
WEIGHT_LAYERS = (nn.Conv2d, nn.Linear)


def bitmask_bytes(numel: int, nonzeros: int, value_bytes: int = FLOAT32_BYTES) -> int:
    """One bit per entry (padded to whole bytes, as `numpy.packbits` does) plus the non-zero values."""
    return math.ceil(numel / 8) + nonzeros * value_bytes


def csr_bytes(rows: int, nonzeros: int) -> int:
    """float32 values and int32 column indices per non-zero, plus rows + 1 int32 row pointers."""
    return nonzeros * (FLOAT32_BYTES + CSR_INDEX_BYTES) + (rows + 1) * CSR_INDEX_BYTES


def layer_flops(model: nn.Module, example_input: torch.Tensor) -> tuple[int, dict[str, int]]:
    """FLOPs of one forward pass in total and per Conv2d/Linear (summed over calls if a layer is reused)."""
    names = {module: name for name, module in model.named_modules() if isinstance(module, WEIGHT_LAYERS)}
    counter = FlopCounterMode(display=False)
    started_at, per_layer = {}, defaultdict(int)

    def before(module, args):
        started_at[module] = counter.get_total_flops()

    def after(module, args, output):
        per_layer[names[module]] += counter.get_total_flops() - started_at.pop(module)

    hooks = [module.register_forward_pre_hook(before) for module in names]
    hooks += [module.register_forward_hook(after) for module in names]
    try:
        with counter, torch.no_grad():
            model(example_input)
    finally:
        for hook in hooks:
            hook.remove()
    return counter.get_total_flops(), dict(per_layer)


def model_device(model: nn.Module) -> torch.device:
    parameter = next(model.parameters(), None)
    return parameter.device if parameter is not None else torch.device("cpu")


def storage_report(network: nn.Module, include_classifier: bool = False, input_size=(1, 3, 32, 32),
                   dense_flops: tuple[int, dict[str, int]] | None = None) -> dict:
    """Sizes and FLOPs of `network` as its forward pass sees it, masks applied; `network` is left as it was.

    A permanently pruned network (`pruning.make_permanent`) is read as it is; a masked one is read
    through a copy with its masks folded in. `dense_flops`, `layer_flops` of the same architecture
    counted once, spares a counted forward pass: masks change no shape, so it is the same at every level.

    Returns a dict of ints:
      nonzero_weights  non-zero entries over all parameters
      total_params     entries over all parameters
      dense_bytes      float32 bytes of all parameters: a dense state dict's parameter data
      bitmask_bytes    the weights of `prunable_layers(network, include_classifier)` as a 1-bit mask
                       plus float32 non-zeros; every other parameter dense float32
      csr_bytes        those weights as CSR of the (out, rest) 2-D view, float32 values with int32
                       column indices and row pointers; every other parameter dense float32
      flops_dense      FLOPs of one forward pass on an `input_size` input
      flops_sparse     the FLOPs a sparse kernel would still do: each Conv2d/Linear's FLOPs times its
                       weight density, everything else as dense
    """
    if any(isinstance(hook, BasePruningMethod) for module in network.modules() for hook in module._forward_pre_hooks.values()):
        network = permanent_copy(network)
    sparse_weights = {id(module.weight) for module in prunable_layers(network, include_classifier).values()}
    nonzeros_of = {id(parameter): count_nonzero(parameter) for parameter in network.parameters()}
    nonzero_weights = total_params = dense = bitmask = csr = 0
    for parameter in network.parameters():
        numel, nonzeros = parameter.numel(), nonzeros_of[id(parameter)]
        nonzero_weights += nonzeros
        total_params += numel
        dense += numel * FLOAT32_BYTES
        if id(parameter) in sparse_weights:
            bitmask += bitmask_bytes(numel, nonzeros)
            csr += csr_bytes(parameter.shape[0], nonzeros)
        else:
            bitmask += numel * FLOAT32_BYTES
            csr += numel * FLOAT32_BYTES

    flops_dense, per_layer = dense_flops or layer_flops(network, torch.zeros(input_size, device=model_device(network)))
    layers = dict(network.named_modules())
    flops_in_layers = sum(per_layer.values())
    flops_in_sparse_layers = sum(
        flops * nonzeros_of[id(layers[name].weight)] / layers[name].weight.numel()
        for name, flops in per_layer.items()
    )
    return {
        "nonzero_weights": nonzero_weights,
        "total_params": total_params,
        "dense_bytes": dense,
        "bitmask_bytes": bitmask,
        "csr_bytes": csr,
        "flops_dense": flops_dense,
        "flops_sparse": round(flops_dense - flops_in_layers + flops_in_sparse_layers),
    }
