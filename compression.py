"""What magnitude pruning really saves, measured rather than assumed.

A masked model is exactly as large and as slow as the dense one: `torch.nn.utils.prune` keeps
every weight and multiplies by a mask. The savings only exist once the zeros are exploited:

* `storage_report`: the bytes the weights would take dense, as a bitmask plus values, and as CSR
  (computed from the formulas), the bytes `export_compact` actually writes (measured), and the
  forward-pass FLOPs dense and as a sparse kernel would do them.
* `export_compact` / `load_compact`: a compressed file that stores sparse tensors as a packed
  bitmask plus their non-zero values, and reads back a plain dense state dict.
* `remove_filters`: after structured (`filters`) pruning, physically removes the zeroed output
  channels with Torch-Pruning, and measures parameters, FLOPs and CPU latency before and after.

Every function works on a copy; the caller's model is left as it was. FLOPs are those of
`torch.utils.flop_counter.FlopCounterMode`, which counts a multiply-add as 2 FLOPs and counts only
convolutions and matrix products (batch norm, activations, additions and pooling are free).
"""
import copy
import io
import math
import os
import statistics
import tempfile
import time
import zlib
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch
import torch_pruning as tp
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from prune_callback import make_permanent, prunable_layers

FLOAT32_BYTES = 4
# CSR indices as int32, the index type of scipy.sparse and cuSPARSE; every layer here has far
# fewer than 2**31 columns or non-zeros.
CSR_INDEX_BYTES = 4
# Huffman coding alone (no LZ77 string matching): float values hold no repeated strings, so the
# gain is in the skewed byte frequencies of exponents and bitmasks. On ResNet-50 it wrote files within
# 0.3% of zlib level 6 (smaller at 95% sparsity) in about half the time.
ZLIB_STRATEGY = zlib.Z_HUFFMAN_ONLY
COMPACT_FORMAT = "bitmask-zlib-v1"
WEIGHT_LAYERS = (nn.Conv2d, nn.Linear)


def effective_copy(model: nn.Module) -> nn.Module:
    """A deep copy with every pruning mask folded into its weight, so parameters are what the forward pass uses."""
    # A masked module's `weight` is a plain attribute computed as weight_orig * weight_mask, which
    # deepcopy refuses because it is not a graph leaf; the memo hands deepcopy a detached copy instead.
    computed = {
        id(value): value.detach().clone()
        for module in model.modules()
        for value in vars(module).values()
        if isinstance(value, torch.Tensor) and not value.is_leaf
    }
    return make_permanent(copy.deepcopy(model, memo=computed))


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


def storage_report(model: nn.Module, include_classifier: bool = False, input_size=(1, 3, 32, 32)) -> dict:
    """Sizes and FLOPs of `model` as it is (masked or not), counting its effective (masked) weights.

    Returns a dict of ints:
      nonzero_weights  non-zero entries over all parameters
      total_params     entries over all parameters
      dense_bytes      float32 bytes of all parameters: a dense state dict's parameter data
      bitmask_bytes    the weights of `prunable_layers(model, include_classifier)` as a 1-bit mask
                       plus float32 non-zeros; every other parameter dense float32
      csr_bytes        those weights as CSR of the (out, rest) 2-D view, float32 values with int32
                       column indices and row pointers; every other parameter dense float32
      disk_bytes       measured size of the file `export_compact` writes; unlike the three above it
                       also holds the buffers (batch-norm statistics), pickle framing, and is zlib-compressed
      flops_dense      FLOPs of one forward pass on an `input_size` input
      flops_sparse     the FLOPs a sparse kernel would still do: each Conv2d/Linear's FLOPs times its
                       weight density, everything else as dense
    """
    effective = effective_copy(model).eval()
    sparse_weights = {id(module.weight) for module in prunable_layers(effective, include_classifier).values()}
    nonzero_weights = total_params = dense = bitmask = csr = 0
    for parameter in effective.parameters():
        numel, nonzeros = parameter.numel(), int(torch.count_nonzero(parameter))
        nonzero_weights += nonzeros
        total_params += numel
        dense += numel * FLOAT32_BYTES
        if id(parameter) in sparse_weights:
            bitmask += bitmask_bytes(numel, nonzeros)
            csr += csr_bytes(parameter.shape[0], nonzeros)
        else:
            bitmask += numel * FLOAT32_BYTES
            csr += numel * FLOAT32_BYTES

    flops_dense, per_layer = layer_flops(effective, torch.zeros(input_size, device=model_device(effective)))
    layers = dict(effective.named_modules())
    flops_in_layers = sum(per_layer.values())
    flops_in_sparse_layers = sum(
        flops * float(torch.count_nonzero(layers[name].weight)) / layers[name].weight.numel()
        for name, flops in per_layer.items()
    )

    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "model.compact"
        export_compact(effective, path)
        disk_bytes = path.stat().st_size

    return {
        "nonzero_weights": nonzero_weights,
        "total_params": total_params,
        "dense_bytes": dense,
        "bitmask_bytes": bitmask,
        "csr_bytes": csr,
        "disk_bytes": disk_bytes,
        "flops_dense": flops_dense,
        "flops_sparse": round(flops_dense - flops_in_layers + flops_in_sparse_layers),
    }


def pack_tensor(tensor: torch.Tensor) -> dict:
    """A floating-point tensor as a packed bitmask plus its non-zeros when that is smaller, else as it is."""
    tensor = tensor.detach().cpu()
    numel = tensor.numel()
    if tensor.is_floating_point():
        mask = tensor != 0
        nonzeros = int(mask.sum())
        if bitmask_bytes(numel, nonzeros, tensor.element_size()) < numel * tensor.element_size():
            mask_bits = torch.from_numpy(np.packbits(mask.flatten().numpy()))
            return {"shape": tuple(tensor.shape), "mask_bits": mask_bits, "values": tensor[mask].clone()}
    return {"dense": tensor.clone()}


def unpack_tensor(packed: dict) -> torch.Tensor:
    if "dense" in packed:
        return packed["dense"]
    numel = math.prod(packed["shape"])
    mask = torch.from_numpy(np.unpackbits(packed["mask_bits"].numpy(), count=numel).astype(bool))
    tensor = torch.zeros(numel, dtype=packed["values"].dtype)
    tensor[mask] = packed["values"]
    return tensor.reshape(packed["shape"])


def export_compact(model: nn.Module, path, extra: dict | None = None) -> None:
    """Write `model`, permanently pruned, as a zlib-compressed torch.save of bitmask-packed tensors.

    `extra` (e.g. {"arch": "resnet20", "sparsity": 0.7}) is stored alongside and must hold only
    what `torch.load(weights_only=True)` accepts: tensors, numbers, strings, lists, dicts. The file
    is written to a temporary name in the same folder and renamed over `path`, so a crash never
    leaves a truncated file behind.
    """
    state = effective_copy(model).state_dict()
    payload = {
        "format": COMPACT_FORMAT,
        "tensors": {key: pack_tensor(tensor) for key, tensor in state.items()},
        "extra": extra or {},
    }
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    compressor = zlib.compressobj(strategy=ZLIB_STRATEGY)
    compressed = compressor.compress(buffer.getbuffer()) + compressor.flush()

    path = Path(path)
    descriptor, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(descriptor, "wb") as file:
            file.write(compressed)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        os.unlink(temporary)
        raise


def load_compact(path) -> tuple[dict[str, torch.Tensor], dict]:
    """Read an `export_compact` file: a plain dense state dict (masks folded in) and the `extra` dict."""
    payload = torch.load(io.BytesIO(zlib.decompress(Path(path).read_bytes())), weights_only=True)
    if payload.get("format") != COMPACT_FORMAT:
        raise ValueError(f"{path} is not a {COMPACT_FORMAT} file (format {payload.get('format')!r})")
    state = {key: unpack_tensor(packed) for key, packed in payload["tensors"].items()}
    return state, payload["extra"]


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


def remove_filters(
    model: nn.Module,
    example_input: torch.Tensor,
    latency_batch: int = 64,
    warmup: int = 3,
    repeats: int = 10,
    seed: int = 0,
) -> tuple[nn.Module, dict]:
    """Physically remove the all-zero output filters left by `filters` pruning; measure what it saves.

    Torch-Pruning's DependencyGraph, traced on `example_input`, groups the channels that must go
    together. Only groups with a single producing Conv2d/Linear are shrunk: channels internal to a
    block (BasicBlock conv1; Bottleneck conv1 and conv2) and a stem that feeds only convolutions
    (torchvision's), taken out of that conv, its batch norm and the input of the convs it feeds.
    Channels that feed a residual addition are coupled across a whole stage (every block's last
    conv, projection shortcuts, the CIFAR ResNets' stem) and are kept, as are the logits of the
    last Linear: removing a coupled channel needs its filter to be zero in every producer, and
    the option-A zero-pad shortcut of the CIFAR ResNets is not traced correctly (Torch-Pruning
    treats the channel pad as an elementwise op, merging stages of different widths into one group).
    A layer whose filters are all zero keeps one so the network stays connected.

    Not equivalent to the masked model: a zero filter followed by batch norm outputs the norm's
    shift (beta - gamma * mean / std), not zero, and removing the channel drops that constant. The
    returned `max_logit_difference` measures the consequence on a random batch instead of assuming it away.

    Returns (slim_model, stats), the slim model in eval mode, stats holding
      removed_channels      {layer name: output channels removed}
      params                {"dense": n, "slim": n} parameter entries
      flops                 {"dense": n, "slim": n} FLOPs of one forward pass on `example_input`
      latency_ms            {"dense": ms, "slim": ms} median CPU wall time of a forward pass on a
                            batch of `latency_batch`, in eval mode under no_grad, after `warmup` passes
      max_logit_difference  max |slim - masked| over the logits of that batch
    """
    dense = effective_copy(model).eval().cpu()
    slim = copy.deepcopy(dense)
    example_input = example_input.cpu()
    # Torch-Pruning traces through autograd, so a caller's no_grad would leave it with no graph.
    with torch.enable_grad():
        graph = tp.DependencyGraph().build_dependency(slim, example_inputs=example_input, verbose=False)
    names = {module: name for name, module in slim.named_modules()}
    linear_layers = [module for module in slim.modules() if isinstance(module, nn.Linear)]
    logits_layer = linear_layers[-1:]

    removals = []
    for group in graph.get_all_groups(ignored_layers=logits_layer, root_module_types=WEIGHT_LAYERS):
        producers = [
            dependency.target.module
            for dependency, _ in group
            if graph.is_out_channel_pruning_fn(dependency.handler)
            and isinstance(dependency.target.module, WEIGHT_LAYERS)
        ]
        if len(producers) != 1:  # coupled across a residual stage, or mistraced: kept (see above)
            continue
        layer = producers[0]
        removable = zero_filters(layer)
        if len(removable) == layer.weight.shape[0]:
            removable = removable[1:]
        if removable:
            removals.append((layer, removable))
    for layer, removable in removals:
        prune_out_channels = graph.get_pruner_of_module(layer).prune_out_channels
        graph.get_pruning_group(layer, prune_out_channels, removable).prune(record_history=False)

    generator = torch.Generator().manual_seed(seed)
    images = torch.randn((latency_batch, *example_input.shape[1:]), generator=generator)
    with torch.no_grad():
        max_logit_difference = float((slim(images) - dense(images)).abs().max())
    stats = {
        "removed_channels": {names[layer]: len(removable) for layer, removable in removals},
        "params": {"dense": count_params(dense), "slim": count_params(slim)},
        "flops": {"dense": layer_flops(dense, example_input)[0], "slim": layer_flops(slim, example_input)[0]},
        "latency_ms": {
            "dense": median_latency_ms(dense, images, warmup, repeats),
            "slim": median_latency_ms(slim, images, warmup, repeats),
        },
        "max_logit_difference": max_logit_difference,
    }
    return slim, stats
