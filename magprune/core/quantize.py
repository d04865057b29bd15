"""Quantising what pruning left: the surviving weights of each pruned layer in 8 or 4 bits (Deep Compression's second stage).

    packed = quantize_network(network, bits=4, layers=prunable_layers(network))   # in place: dequantised weights
    packed["layer1.0.conv1"]      # what a file stores for that weight: its mask, codes and scales or codebook

8 bits: per output channel, a linear scale (symmetric, max |w| -> 127), the survivors rounded to it.
4 bits: per layer, a codebook of 16 values fitted to the survivors by k-means from a linear start, as
Deep Compression (Han et al., 2016) does; each survivor stores the index of its nearest value.
Pruned weights are not quantised at all: the mask keeps them exactly zero. A survivor smaller than
half its channel's 8-bit step becomes the code 0, a zero in the dequantised weight.
BatchNorm, biases and the layers not pruned stay in float32.
"""
import numpy as np
import torch
from torch import nn

BITS = (8, 4)
KMEANS_ITERATIONS = 30


def linear_codes(weight: torch.Tensor, mask: torch.Tensor, bits: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per output channel: the survivors as signed integers of `bits` bits, and each channel's scale."""
    levels = 2 ** (bits - 1) - 1
    rows = weight.flatten(1)
    peak = rows.abs().amax(dim=1)
    scales = torch.where(peak > 0, peak / levels, torch.ones_like(peak))  # a channel pruned away has no scale to speak of
    codes = torch.round(rows / scales[:, None]).clamp(-levels, levels).to(torch.int8)
    return codes.flatten()[mask.flatten()], scales.float()


def kmeans_codebook(values: torch.Tensor, bits: int, iterations: int = KMEANS_ITERATIONS) -> tuple[torch.Tensor, torch.Tensor]:
    """The codes (indices into the codebook) of `values` and a codebook of 2**bits values fitted by 1-D k-means.

    Starts from values spaced evenly between the smallest and largest survivor: Deep Compression's
    finding is that this linear start keeps the rare large weights, which matter most, represented.
    """
    values = values.double()
    if values.numel() == 0:
        return torch.zeros(0, dtype=torch.uint8), torch.zeros(2 ** bits)
    codebook = torch.linspace(float(values.min()), float(values.max()), 2 ** bits, dtype=torch.float64)
    for _ in range(iterations):
        codes = torch.bucketize(values, (codebook[1:] + codebook[:-1]) / 2)
        sums = torch.zeros_like(codebook).index_add_(0, codes, values)
        counts = torch.zeros_like(codebook).index_add_(0, codes, torch.ones_like(values))
        updated = torch.where(counts > 0, sums / counts.clamp(min=1), codebook)
        updated, _ = updated.sort()
        if torch.equal(updated, codebook):
            break
        codebook = updated
    codebook = codebook.float()
    codes = torch.bucketize(values.float(), (codebook[1:] + codebook[:-1]) / 2)
    return codes.to(torch.uint8), codebook


def quantize_weight(weight: torch.Tensor, bits: int) -> dict:
    """A pruned weight as a file stores it: shape, packed mask of survivors, their codes, and the scales or codebook."""
    if bits not in BITS:
        raise ValueError(f"quantisation to {bits} bits: choose from {BITS}")
    weight = weight.detach().float().cpu()
    mask = weight != 0
    packed = {"shape": tuple(weight.shape), "bits": bits, "mask_bits": torch.from_numpy(np.packbits(mask.flatten().numpy()))}
    if bits == 8:
        packed["codes"], packed["scales"] = linear_codes(weight, mask, bits)
    else:
        codes, packed["codebook"] = kmeans_codebook(weight[mask], bits)
        packed["codes"] = pack_nibbles(codes)
    packed["survivors"] = int(mask.sum())
    return packed


def dequantize(packed: dict) -> torch.Tensor:
    """The float32 weight a `quantize_weight` record stands for; pruned positions exactly zero."""
    shape, survivors = packed["shape"], packed["survivors"]
    numel = int(np.prod(shape))
    mask = torch.from_numpy(np.unpackbits(packed["mask_bits"].numpy(), count=numel).astype(bool))
    if packed["bits"] == 8:
        channel = torch.arange(numel).div(numel // shape[0], rounding_mode="floor")[mask]
        values = packed["codes"].float() * packed["scales"][channel]
    else:
        values = packed["codebook"][unpack_nibbles(packed["codes"], survivors).long()]
    weight = torch.zeros(numel)
    weight[mask] = values
    return weight.reshape(shape)


def pack_nibbles(codes: torch.Tensor) -> torch.Tensor:
    """4-bit codes, two to a byte."""
    codes = codes.to(torch.uint8)
    if codes.numel() % 2:
        codes = torch.cat([codes, codes.new_zeros(1)])
    return codes[0::2] << 4 | codes[1::2]


def unpack_nibbles(packed: torch.Tensor, count: int) -> torch.Tensor:
    return torch.stack([packed >> 4, packed & 15], dim=1).flatten()[:count]


def quantize_network(network: nn.Module, bits: int, layers: dict[str, nn.Module]) -> dict[str, dict]:
    """Replace the weights of `layers` (permanently pruned) by their dequantised values; the records, by layer name."""
    records = {}
    with torch.no_grad():
        for name, layer in layers.items():
            records[name] = quantize_weight(layer.weight, bits)
            layer.weight.copy_(dequantize(records[name]).to(layer.weight.device, layer.weight.dtype))
    return records
