"""The Optimal Brain Surgeon layer by layer (Hassibi & Stork 1993; OBC and SparseGPT, Frantar & Alistarh 2022-23).

Magnitude ranks a weight by |w|; OBS ranks it by what removing it does to its layer's output on calibration
inputs X, and lets the surviving weights of its row absorb that error. For a layer with weights W (rows x d,
a convolution's input patches unfolded to d columns) and H = X^T X + damping, removing weight j of a row costs
w_j^2 / [H^-1]_jj, and the least-squares correction of the rest of the row is -w_j / [H^-1]_jj * [H^-1]_j,:.
SparseGPT's order makes that cheap: columns are visited left to right and the correction of each goes to the
columns after it only, through the upper Cholesky factor of H^-1, a block of columns at a time.

`prune_by_obs` runs the pass through a network: each layer in the order the forward pass reaches it, its H from
the inputs the already-pruned layers before it give, and its target the output the network had before this
pruning (so a layer corrects what the layers before it lost as well as its own removals). The network must
trace with torch.fx, as BatchNorm folding needs too.
"""
import copy
import functools
from dataclasses import dataclass

import torch
import torch.fx
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import prune

GROUP = 4  # N:M's M, as magnitude's 2:4 groups weights: four consecutive input channels at one kernel position


@dataclass(frozen=True)
class Calibration:
    """What OBS prunes from: calibration images (normalised as the network's inputs) and the solver's settings."""

    images: torch.Tensor
    damping: float = 0.01    # added to H's diagonal, as a fraction of its mean: keeps H invertible
    block: int = 128         # columns corrected together (a multiple of GROUP)
    batch_size: int = 256    # images per forward pass while gathering H


def unfolded(layer: nn.Module, inputs: torch.Tensor, group: int = 0) -> torch.Tensor:
    """The layer's inputs as the d x n matrix its (rows x d) weight matrix multiplies: one column per output
    position, its rows ordered kernel position first, input channel last, as `weight_matrix` orders the weights.
    For a grouped convolution, the inputs of its `group`-th group (the rows of that group multiply them alone)."""
    if isinstance(layer, nn.Linear):
        return inputs.reshape(-1, inputs.shape[-1]).T
    (kh, kw), (sh, sw), (ph, pw), (dh, dw) = layer.kernel_size, layer.stride, layer.padding, layer.dilation
    channels = layer.in_channels // layer.groups
    inputs = inputs[:, group * channels : (group + 1) * channels]
    channels_first = F.pad(inputs, (pw, pw, ph, ph)).transpose(0, 1)  # (C, N, H, W)
    out_h = (channels_first.shape[2] - dh * (kh - 1) - 1) // sh + 1
    out_w = (channels_first.shape[3] - dw * (kw - 1) - 1) // sw + 1
    # One strided view per kernel position, stacked: 20x faster than F.unfold and its transpose on a CPU.
    shifted = [channels_first[:, :, i * dh: i * dh + sh * (out_h - 1) + 1: sh, j * dw: j * dw + sw * (out_w - 1) + 1: sw]
               for i in range(kh) for j in range(kw)]
    return torch.stack(shifted).reshape(kh * kw * channels, -1)


def weight_matrix(weight: torch.Tensor) -> torch.Tensor:
    """A Linear's or convolution's weight as (rows, d), columns ordered as `unfolded` orders the inputs."""
    return weight.movedim(1, -1).reshape(weight.shape[0], -1) if weight.ndim == 4 else weight


def weight_tensor(matrix: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    """`weight_matrix` undone."""
    if len(shape) != 4:
        return matrix.reshape(shape)
    rows, channels, height, width = shape
    return matrix.reshape(rows, height, width, channels).movedim(-1, 1).contiguous()


def _lowest(scores: torch.Tensor, count: int) -> torch.Tensor:
    """A mask of the `count` lowest scores, ties by position."""
    chosen = torch.zeros(scores.numel(), dtype=torch.bool, device=scores.device)
    chosen[scores.flatten().argsort(stable=True)[:count]] = True
    return chosen.view(scores.shape)


def reconstruct(weight: torch.Tensor, hessian: torch.Tensor, removals: int | None, *, held: torch.Tensor | None = None,
                damping: float = 0.01, block: int = 128, target: torch.Tensor | None = None,
                cross: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Remove `removals` weights of `weight` (rows x d) by OBS on H = `hessian` (d x d); None: two of every four
    consecutive columns. Returns the corrected weights (removed ones exactly zero) and the mask of those kept.

    `held`: weights already removed (False), removed again whatever their score. With `target` (the layer's weights
    before pruning) and `cross` (X_before^T X, the inputs it had then against the ones it has now), the survivors
    fit the output the layer had before, the ridge toward `target` matching the damping: W* = (target cross +
    damp target)(H + damp)^-1; without, the output `weight` gives. The choice is adaptive (SparseGPT's): at each
    block, the lowest scores w^2 / U_jj^2 among the columns not yet visited, with the weights as corrected so far.
    """
    rows, size = weight.shape
    if removals is not None and held is not None:
        removals = max(removals, int((~held).sum()))  # an earlier mask outnumbering the allocation still holds
    hessian = hessian.double().clone()
    dead = hessian.diagonal() == 0  # inputs that are always zero: any weight there is as good as another
    hessian[dead, dead] = 1
    damp = damping * hessian.diagonal().mean()
    hessian += damp * torch.eye(size, dtype=hessian.dtype, device=hessian.device)
    factor = torch.linalg.cholesky(hessian)
    if target is not None:
        fitted = target.double() @ cross.double() + damp * target.double()
        weight = torch.cholesky_solve(fitted.T, factor).T
    upper = torch.linalg.cholesky(torch.cholesky_inverse(factor), upper=True)
    weight = weight.double().clone()
    forced = torch.zeros_like(weight, dtype=torch.bool) if held is None else ~held
    removed = torch.zeros_like(weight, dtype=torch.bool)
    pivots = upper.diagonal()
    for start in range(0, size, block):
        end = min(start + block, size)
        if removals is not None:
            scores = (weight[:, start:] / pivots[start:]) ** 2
            scores[forced[:, start:]] = -1
            removed[:, start:end] = _lowest(scores, removals - int(removed.sum()))[:, : end - start]
        errors = torch.zeros(rows, end - start, dtype=weight.dtype, device=weight.device)
        for column in range(start, end):
            if removals is None and (column - start) % GROUP == 0:
                group = slice(column, column + GROUP)
                scores = (weight[:, group] / pivots[group]) ** 2
                scores[forced[:, group]] = -1
                removed[:, group] = _lowest_per_row(scores, GROUP // 2)
            values = weight[:, column]
            error = torch.where(removed[:, column], values, 0) / pivots[column]
            weight[:, column:end] -= error[:, None] * upper[column, column:end][None]
            errors[:, column - start] = error
        weight[:, end:] -= errors @ upper[start:end, end:]
    weight[removed] = 0
    return weight, ~removed


def _lowest_per_row(scores: torch.Tensor, count: int) -> torch.Tensor:
    chosen = torch.zeros_like(scores, dtype=torch.bool)
    return chosen.scatter_(1, scores.argsort(dim=1, stable=True)[:, :count], True)


def _step(node: torch.fx.Node, env: dict, root: nn.Module, images: torch.Tensor):
    """What `node` of a traced `root` gives, its inputs read from `env`."""
    args, kwargs = torch.fx.node.map_arg((node.args, node.kwargs), env.__getitem__)
    if node.op == "placeholder":
        return images
    if node.op == "get_attr":
        return functools.reduce(getattr, node.target.split("."), root)
    if node.op == "call_module":
        return root.get_submodule(node.target)(*args, **kwargs)
    if node.op == "call_function":
        return node.target(*args, **kwargs)
    if node.op == "call_method":
        return getattr(args[0], node.target)(*args[1:], **kwargs)
    return args[0]  # output


def traced(network: nn.Module) -> torch.fx.Graph:
    try:
        return torch.fx.symbolic_trace(network).graph
    except Exception as error:  # torch.fx raises many kinds; any means the graph cannot be followed
        raise ValueError(f"OBS follows the network's graph, and torch.fx cannot trace {type(network).__name__}: {error}") from None


@torch.no_grad()
def prune_by_obs(network: nn.Module, layers: dict[str, nn.Module], removals: dict[str, int | None],
                 calibration: Calibration) -> None:
    """Mask `removals[name]` weights of each layer (None: two of every four; absent: none) by OBS, correcting the
    survivors, in place. Earlier masks must be folded in (`pruning.make_permanent`): the zeros they left stay zero.

    The calibration images flow once through the traced network and once through a copy of it as it was (each
    layer's target), node by node, a batch of images at a time, every activation dropped once no later node
    reads it: a layer is pruned when the pass reaches it, from the inputs the layers pruned before it give.
    """
    if len(calibration.images) == 0:
        raise ValueError("OBS needs calibration images; got none")
    was_training = network.training
    network.eval()
    before = copy.deepcopy(network)
    graph = traced(network)
    pending = {name for name in layers if name in removals}  # `layers` are named as in `network`, as its graph is
    last_reader = {}
    for node in graph.nodes:
        for read in node.all_input_nodes:
            last_reader[read] = node
    batches = calibration.images.split(calibration.batch_size)
    flows = [(network, [{} for _ in batches]), (before, [{} for _ in batches])]
    for node in graph.nodes:
        if not pending:
            break  # every layer asked for is pruned: the rest of the network need not run
        if node.op == "call_module" and node.target in pending:
            pending.remove(node.target)
            now, then = ([env[node.args[0]] for env in envs] for _, envs in flows)
            _prune_layer(layers[node.target], now, then, removals[node.target], calibration)
        for root, envs in flows:
            for env, images in zip(envs, batches):
                env[node] = _step(node, env, root, images)
                for read in node.all_input_nodes:
                    if last_reader[read] is node:
                        del env[read]
    network.train(was_training)


def _prune_layer(layer: nn.Module, now: list[torch.Tensor], then: list[torch.Tensor], removals: int | None,
                 calibration: Calibration) -> None:
    """Prune `layer` by OBS from its inputs now and as they were (per batch), and install the mask. A grouped
    convolution is its groups' own layers (each group's rows see only its inputs), each losing an equal share."""
    if removals is not None and removals >= layer.weight.numel():
        prune.custom_from_mask(layer, "weight", torch.zeros_like(layer.weight, dtype=torch.bool))  # nothing survives to correct
        return
    groups = getattr(layer, "groups", 1)
    rows = layer.weight.shape[0] // groups
    weight, mask = layer.weight.detach().clone(), torch.ones_like(layer.weight, dtype=torch.bool)
    for group, share in enumerate(_shares(removals, groups)):
        part = slice(group * rows, (group + 1) * rows)
        weight[part], mask[part] = _reconstruct_group(layer, group, weight[part], now, then, share, calibration)
    layer.weight.data = weight
    prune.custom_from_mask(layer, "weight", mask)


def _shares(removals: int | None, groups: int) -> list[int | None]:
    """`removals` dealt to `groups` as evenly as whole weights allow (None, two of every four, to each)."""
    if removals is None:
        return [None] * groups
    return [removals // groups + (group < removals % groups) for group in range(groups)]


def _reconstruct_group(layer: nn.Module, group: int, weight: torch.Tensor, now: list[torch.Tensor], then: list[torch.Tensor],
                       removals: int | None, calibration: Calibration) -> tuple[torch.Tensor, torch.Tensor]:
    """One group's weights (all of a layer of one group) corrected by OBS and the mask of those it keeps."""
    hessian = cross = 0
    for inputs, reference in zip(now, then):
        current, earlier = unfolded(layer, inputs, group), unfolded(layer, reference, group)
        hessian = hessian + (current @ current.T).double()
        cross = cross + (earlier @ current.T).double()
    count = len(calibration.images)
    matrix = weight_matrix(weight)
    corrected, kept = reconstruct(matrix, hessian / count, removals, held=matrix != 0, damping=calibration.damping,
                                  block=calibration.block, target=matrix, cross=cross / count)
    return weight_tensor(corrected.to(matrix.dtype), weight.shape), weight_tensor(kept, weight.shape)
