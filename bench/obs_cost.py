"""What a level of OBS costs on this machine, by phase, against a magnitude level with BatchNorm re-estimated.

    python bench/obs_cost.py                                  # resnet20, resnet56, resnet50; 1,024 images
    python bench/obs_cost.py --archs resnet20 --calibration_images 256 --json /tmp/obs.json   # a smoke run

Each network is untrained (what a level costs does not depend on the weights), in eval mode, pruned at
`--sparsity` by `obs-global` from random images of CIFAR's size and by global magnitude. The OBS level's phases
are the reconstruction (`obs.reconstruct`, wrapped and timed: Cholesky factors and the column loop) and the rest,
the pass (the images through the network and its copy as it was, and each layer's H and X_before X^T). The magnitude
level is global masks plus BatchNorm re-estimated on `--bn_batches` batches of 256, what a sweep's `+BN` adds. A
sweep's test of the level comes on top of either and is the same for both. Memory: the largest H, and the
process's peak resident set after each network (it only grows: run one network a process to read it alone).
"""
import argparse
import json
import resource
import time
from pathlib import Path

import torch

from magprune.core import obs
from magprune.core.nets import build_model
from magprune.core.pruning import apply_pruning, prunable_layers, recalibrate_batchnorm

ROOT = Path(__file__).resolve().parent.parent


def timed(spent: dict, key: str, function):
    def wrapper(*args, **kwargs):
        started = time.perf_counter()
        try:
            return function(*args, **kwargs)
        finally:
            spent[key] += time.perf_counter() - started
    return wrapper


def obs_level(arch: str, images: torch.Tensor, sparsity: float) -> dict:
    network = build_model(arch).eval()
    spent = {"reconstruct_s": 0.0}
    original = obs.reconstruct
    obs.reconstruct = timed(spent, "reconstruct_s", obs.reconstruct)
    try:
        started = time.perf_counter()
        apply_pruning(network, sparsity, "obs-global", calibration=obs.Calibration(images))
        spent["level_s"] = time.perf_counter() - started
    finally:
        obs.reconstruct = original
    spent["pass_s"] = spent["level_s"] - spent["reconstruct_s"]
    largest = max(layer.weight[0].numel() for layer in prunable_layers(network).values())
    return {**spent, "largest_hessian": largest, "hessian_mb": 2 * largest ** 2 * 8 / 2 ** 20}  # H and X_before X^T, float64


def magnitude_level(arch: str, sparsity: float, batches: int) -> float:
    network = build_model(arch).eval()
    generator = torch.Generator().manual_seed(1)
    started = time.perf_counter()
    apply_pruning(network, sparsity, "global")
    recalibrate_batchnorm(network, (torch.randn(256, 3, 32, 32, generator=generator) for _ in range(batches)))
    return time.perf_counter() - started


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--archs", default="resnet20,resnet56,resnet50", help="comma-separated networks, smallest first")
    parser.add_argument("--calibration_images", type=int, default=1024, help="images OBS prunes from")
    parser.add_argument("--sparsity", type=float, default=0.6, help="the level pruned")
    parser.add_argument("--bn_batches", type=int, default=10, help="BatchNorm re-estimation batches of the magnitude level")
    parser.add_argument("--json", default=str(ROOT / "bench" / "results-obs-cpu.json"), help="where the results go")
    args = parser.parse_args(argv)
    from retrain_speed import cpu_features  # beside this script: the machine's name and threads

    images = torch.randn(args.calibration_images, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    results = {"machine": cpu_features(), "settings": vars(args), "archs": {}}
    for arch in filter(None, args.archs.split(",")):
        torch.manual_seed(0)
        row = obs_level(arch, images, args.sparsity)
        row["magnitude_bn_s"] = magnitude_level(arch, args.sparsity, args.bn_batches)
        row["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        results["archs"][arch] = row
        print(f"{arch:9s} OBS level {row['level_s']:7.1f} s (pass {row['pass_s']:6.1f} s, reconstruction "
              f"{row['reconstruct_s']:5.1f} s; largest H {row['largest_hessian']}^2, {row['hessian_mb']:.0f} MB with its "
              f"cross term); magnitude +BN {row['magnitude_bn_s']:5.1f} s; peak RSS {row['peak_rss_mb']:.0f} MB", flush=True)
    Path(args.json).write_text(json.dumps(results, indent=1))
    return results


if __name__ == "__main__":
    main()
