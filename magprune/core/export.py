"""The compact export (.ptz): a permanently pruned model as packed bitmasks and non-zero values, compressed.

    export_compact(network, "resnet20_global_70.ptz", extra={"arch": "resnet20", ...})
    export_compact(network, "resnet20_global_70_q4.ptz", quantized=quantize_network(network, 4, layers))
    state_dict, extra = load_compact("resnet20_global_70.ptz")      # a plain dense state dict

Float weights are zlib-compressed; a file with quantised layers (their masks, codes and scales or
codebooks, `quantize.py`) is lzma-compressed, which finds the repeats in small codes that Huffman
coding alone cannot. The file loads with `torch.load(weights_only=True)`: no code runs when it is read.
`export_onnx` writes the same network for runtimes outside PyTorch.
"""
import copy
import io
import lzma
import math
import zlib
from pathlib import Path

import numpy as np
import torch
from torch import nn

from magprune.core.accounting import bitmask_bytes
from magprune.core.io import atomic_write, read_torch_file
from magprune.core.pruning import METHODS, apply_pruning, permanent_copy, prunable_layers
from magprune.core.quantize import dequantize, quantize_network
from magprune.errors import InputError

# Huffman coding alone (no LZ77 string matching): float values hold no repeated strings, so the
# gain is in the skewed byte frequencies of exponents and bitmasks. On ResNet-50 it wrote files within
# 0.3% of zlib level 6 (smaller at 95% sparsity) in about half the time.
ZLIB_STRATEGY = zlib.Z_HUFFMAN_ONLY
COMPACT_FORMAT = "bitmask-zlib-v1"
QUANTIZED_FORMAT = "bitmask-quantized-lzma-v1"
LZMA_MAGIC = b"\xfd7zXZ\x00"


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
    if "quantized" in packed:
        return dequantize(packed["quantized"])
    if "dense" in packed:
        return packed["dense"]
    numel = math.prod(packed["shape"])
    mask = torch.from_numpy(np.unpackbits(packed["mask_bits"].numpy(), count=numel).astype(bool))
    tensor = torch.zeros(numel, dtype=packed["values"].dtype)
    tensor[mask] = packed["values"]
    return tensor.reshape(packed["shape"])


def compact_bytes(model: nn.Module, extra: dict | None = None, quantized: dict[str, dict] | None = None) -> bytes:
    """The bytes `export_compact` writes for `model` (masks folded into a copy; `model` keeps them).

    `quantized` holds `quantize_network`'s records by layer name: those weights are stored as their
    codes instead of their float values.
    """
    state = permanent_copy(model).state_dict()
    tensors = {key: pack_tensor(tensor) for key, tensor in state.items()}
    for name, record in (quantized or {}).items():
        tensors[f"{name}.weight"] = {"quantized": record}
    payload = {"format": QUANTIZED_FORMAT if quantized else COMPACT_FORMAT, "tensors": tensors, "extra": extra or {}}
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    if quantized:
        return lzma.compress(buffer.getbuffer(), preset=9)
    compressor = zlib.compressobj(strategy=ZLIB_STRATEGY)
    return compressor.compress(buffer.getbuffer()) + compressor.flush()


def export_compact(model: nn.Module, path, extra: dict | None = None, quantized: dict[str, dict] | None = None) -> None:
    """Write `model`, permanently pruned, as a compact file, whole or not at all.

    `extra` (e.g. {"arch": "resnet20", "sparsity": 0.7}) is stored alongside and must hold only
    what `torch.load(weights_only=True)` accepts: tensors, numbers, strings, lists, dicts.
    """
    atomic_write(Path(path), compact_bytes(model, extra, quantized))


def load_compact(path) -> tuple[dict[str, torch.Tensor], dict]:
    """Read an `export_compact` file: a plain dense state dict (masks folded in, codes dequantised) and the `extra` dict."""
    data = Path(path).read_bytes()
    raw = lzma.decompress(data) if data.startswith(LZMA_MAGIC) else zlib.decompress(data)
    payload = torch.load(io.BytesIO(raw), weights_only=True)
    if payload.get("format") not in (COMPACT_FORMAT, QUANTIZED_FORMAT):
        raise ValueError(f"{path} is not a {COMPACT_FORMAT} or {QUANTIZED_FORMAT} file (format {payload.get('format')!r})")
    state = {key: unpack_tensor(packed) for key, packed in payload["tensors"].items()}
    return state, payload["extra"]


def read_state_dict(path: Path) -> tuple[dict[str, torch.Tensor], dict]:
    """The state dict in a weights file (plain, optionally under 'state_dict') or a .ptz export, and what
    the file says of its inputs (a .ptz export's `extra`: mean, std)."""
    if path.suffix == ".ptz" and path.is_file():
        try:
            state_dict, extra = load_compact(path)
        except Exception as error:  # a damaged export fails in zlib, pickle or torch
            raise InputError(f"{path} cannot be read as a compact export ({type(error).__name__})") from None
    else:
        weights = read_torch_file(path, "weights file")
        state_dict = weights.get("state_dict", weights) if isinstance(weights, dict) else None
        extra = {}
    if not isinstance(state_dict, dict) or not all(isinstance(value, torch.Tensor) for value in state_dict.values()):
        raise InputError(f"{path} holds no state dict")
    return state_dict, extra


def export_onnx(network: nn.Module, path: Path, image_size: tuple[int, int] = (32, 32)) -> None:
    """`network` (permanently pruned, in eval mode) as ONNX, for a batch of any size of 3 x `image_size` images."""
    import onnx  # only the export path needs ONNX

    example = torch.zeros(2, 3, *image_size)
    network = copy.deepcopy(network).cpu().float().to(memory_format=torch.contiguous_format).eval()
    program = torch.onnx.export(network, (example,), dynamo=True, input_names=["images"], output_names=["logits"],
                                dynamic_shapes=({0: torch.export.Dim("batch")},), verbose=False)
    atomic_write(Path(path), program.model_proto.SerializeToString())
    onnx.checker.check_model(str(path))


def export_extra(arch: str, mean, std, method: str, sparsity: float, bits: int = 0) -> dict:
    """What an export stores beside the weights, so `sweep.py --weights FILE` needs nothing else."""
    return {"arch": arch, "mean": list(mean), "std": list(std), "method": method, "sparsity": sparsity,
            **({"quantize": bits} if bits else {})}


def export_pruned(network: nn.Module, out_dir: Path, sparsity: float, method: str, include_classifier: bool,
                  seed: int, arch: str, mean, std, bits: tuple[int, ...] = (),
                  calibration=None, image_size: tuple[int, int] = (32, 32)) -> tuple[dict[str, Path], nn.Module]:
    """`network` pruned at `sparsity` by `method` (the caller's left dense), written three ways.

    `<arch>_<method>_<percent>.ptz` (compact float), `..._q<bits>.ptz` per number of `bits`
    (quantised), and `.onnx` (for `filters`, the network with its zero filters removed, smaller for
    real). A calibrated method prunes from `calibration`. Returns the paths by kind ("ptz", "q8", "onnx", ...) and the network the ONNX file holds.
    """
    pruned = copy.deepcopy(network)
    apply_pruning(pruned, sparsity, method, include_classifier, seed, calibration=calibration)
    stem = out_dir / f"{arch}_{method}_{round(100 * sparsity)}"
    paths = {"ptz": stem.with_suffix(".ptz")}
    export_compact(pruned, paths["ptz"], extra=export_extra(arch, mean, std, method, sparsity))
    permanent = permanent_copy(pruned).eval()
    for count in bits:
        quantized = copy.deepcopy(permanent)
        records = quantize_network(quantized, count, prunable_layers(quantized, include_classifier))
        paths[f"q{count}"] = stem.with_name(f"{stem.name}_q{count}.ptz")
        export_compact(quantized, paths[f"q{count}"], export_extra(arch, mean, std, method, sparsity, count), records)
    if METHODS[method].removes_filters:
        from magprune.core.slim import remove_filters  # Torch-Pruning, only where filters are removed

        permanent, _ = remove_filters(permanent, torch.zeros(1, 3, *image_size, device=next(permanent.parameters()).device),
                                      measure=False)
    paths["onnx"] = stem.with_suffix(".onnx")
    export_onnx(permanent, paths["onnx"], image_size)
    return paths, permanent


def onnx_counts(path: Path, batches) -> tuple[int, int]:
    """Correct answers and images of the ONNX model at `path`, run by onnxruntime, over (images, labels) batches."""
    import onnxruntime  # only the export path needs it

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    correct = total = 0
    for images, labels in batches:
        logits = session.run(None, {"images": images.cpu().numpy()})[0]
        correct += int((logits.argmax(1) == labels.cpu().numpy()).sum())
        total += len(labels)
    return correct, total


def torch_counts(network: nn.Module, batches) -> tuple[int, int]:
    """The same count for a PyTorch network, in float32 on the CPU, as onnxruntime runs it."""
    network = copy.deepcopy(network).cpu().float().eval()
    correct = total = 0
    with torch.no_grad():
        for images, labels in batches:
            correct += int((network(images.cpu()).argmax(1) == labels.cpu()).sum())
            total += len(labels)
    return correct, total
