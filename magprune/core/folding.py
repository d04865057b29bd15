"""BatchNorm folded into the convolution before it: the inference network every sweep level tests."""
import torch
import torch.fx
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_weights

from magprune.core.pruning import make_permanent, permanent_copy


def conv_batchnorm_pairs(network: nn.Module) -> list[tuple[str, str]]:
    """(convolution, BatchNorm) names where the BatchNorm alone reads that convolution's output, found by tracing.

    The same for every pruned copy of one network: a sweep traces once and folds every level from the list.
    """
    modules = dict(network.named_modules())
    pairs = []
    for node in torch.fx.symbolic_trace(network).graph.nodes:
        if node.op != "call_module" or not isinstance(modules[node.target], nn.modules.batchnorm._BatchNorm):
            continue
        source = node.args[0]
        if (isinstance(source, torch.fx.Node) and source.op == "call_module" and isinstance(modules[source.target], nn.Conv2d)
                and len(source.users) == 1):
            pairs.append((source.target, node.target))
    return pairs


def fold_batchnorm(network: nn.Module, in_place: bool = False, pairs: list[tuple[str, str]] | None = None) -> nn.Module:
    """An inference copy of `network` with each BatchNorm folded into the convolution before it.

    `in_place=True` folds `network` itself (its masks too), sparing a copy of a network not needed again;
    `pairs` (from `conv_batchnorm_pairs`) spares tracing it again. Exact in eval mode up to float
    rounding; a pruned weight stays zero, since folding scales each output filter by one factor. Saves a
    pass over every activation map (about 15% of a CPU forward).
    """
    network = (make_permanent(network) if in_place else permanent_copy(network)).eval()
    for conv_name, norm_name in conv_batchnorm_pairs(network) if pairs is None else pairs:
        conv, norm = network.get_submodule(conv_name), network.get_submodule(norm_name)
        conv.weight, conv.bias = fuse_conv_bn_weights(conv.weight, conv.bias, norm.running_mean, norm.running_var,
                                                      norm.eps, norm.weight, norm.bias)
        parent, _, name = norm_name.rpartition(".")
        setattr(network.get_submodule(parent), name, nn.Identity())
    return network
