"""How fast a chain step retrains on this machine: float32 against bf16 autocast, channels-last against contiguous, compiled.

    python bench/retrain_speed.py                    # shipped ResNet-20, 80% global masks held, batch 256
    python bench/retrain_speed.py --steps 5 --warmup 2 --variants fp32,bf16 --json /tmp/r.json   # a smoke run

A chain's step is `LevelTester.retrain`: Lightning's `Trainer.fit` of the masked network (the masks held by
`torch.nn.utils.prune`'s hooks) on the resident training split, batch 256, no validation. Each variant runs that
fit for `--warmup` untimed and `--steps` timed batches, once, one after another in this process, and is reported as
seconds per epoch of 45,000 images and as a ratio to float32 contiguous. The CPU's name and whether it has the
instructions oneDNN runs bf16 on natively (`amx_bf16`, `avx512_bf16` in /proc/cpuinfo) go into the JSON.
"""
import argparse
import json
import platform
import time
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

import lightning as L
import torch

# bench/bench.py, beside this script (Python puts a script's folder first on its path): the training bench's clock.
from bench import StepTimes, timed_rate, timed_span
from datamodule import CIFAR10DataModule
from lightning_module import load_classifier
from magprune.core.pruning import apply_pruning

# name: (Lightning precision, channels_last, torch.compile)
VARIANTS = {
    "fp32": ("32-true", False, False),
    "fp32_cl": ("32-true", True, False),
    "bf16": ("bf16-mixed", False, False),
    "bf16_cl": ("bf16-mixed", True, False),
    "fp32_compiled": ("32-true", False, True),
    "bf16_compiled": ("bf16-mixed", False, True),
    "bf16_cl_compiled": ("bf16-mixed", True, True),
}
TRAIN_IMAGES = 45_000  # an epoch of train.py's split


def cpu_features() -> dict:
    flags = set()
    try:
        flags = set(next(line for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("flags")).split())
    except (OSError, StopIteration):
        pass
    name = platform.processor()
    try:
        name = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                    if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return {"cpu": name, "threads": torch.get_num_threads(), "torch": torch.__version__,
            "native_bf16": sorted(flags & {"amx_bf16", "avx512_bf16"})}


def retrain_rate(checkpoint: Path, datamodule, variant: str, sparsity: float, warmup: int, steps: int) -> dict:
    precision, channels_last, compiled = VARIANTS[variant]
    model, _, _ = load_classifier(checkpoint)
    apply_pruning(model.model, sparsity, "global")
    model.hparams.channels_last = channels_last
    if channels_last:
        model.model.to(memory_format=torch.channels_last)
    if compiled:
        model.model.compile()
    timer = StepTimes(time.perf_counter, timed_span(warmup, steps))
    trainer = L.Trainer(accelerator="cpu", devices=1, precision=precision, max_epochs=1, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        callbacks=[timer], limit_train_batches=warmup + steps, limit_val_batches=0)
    started = time.perf_counter()
    trainer.fit(model, datamodule=datamodule)
    rate = timed_rate(timer.times, warmup, steps, datamodule.hparams.batch_size)
    return {**rate, "epoch_s": TRAIN_IMAGES / rate["images_per_s"], "wall_s": time.perf_counter() - started}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--checkpoint", default=str(ROOT / "checkpoints" / "resnet20_cifar10jpeg.ckpt"), help="the network to retrain")
    parser.add_argument("--data_dir", default=str(ROOT.parent / "shared" / "data" / "cifar10-jpeg"), help="ImageFolder CIFAR-10")
    parser.add_argument("--sparsity", type=float, default=0.8, help="global magnitude masks held while retraining")
    parser.add_argument("--batch_size", type=int, default=256, help="sweep.py's batch")
    parser.add_argument("--warmup", type=int, default=5, help="untimed batches per variant")
    parser.add_argument("--steps", type=int, default=30, help="timed batches per variant")
    parser.add_argument("--variants", default=",".join(VARIANTS), help=f"comma-separated, of {', '.join(VARIANTS)}")
    parser.add_argument("--json", default=str(ROOT / "bench" / "results-retrain-cpu.json"), help="where the results go")
    args = parser.parse_args(argv)
    variants = [name for name in args.variants.split(",") if name]
    unknown = [name for name in variants if name not in VARIANTS]
    if unknown:
        parser.error(f"--variants: unknown {', '.join(unknown)}")
    warnings.filterwarnings("ignore", ".*does not have many workers.*")
    datamodule = CIFAR10DataModule(data_dir=args.data_dir, batch_size=args.batch_size, download=False)
    results = {"machine": cpu_features(), "settings": vars(args), "variants": {}}
    for name in variants:
        torch.manual_seed(0)
        results["variants"][name] = retrain_rate(Path(args.checkpoint), datamodule, name, args.sparsity, args.warmup, args.steps)
        base = results["variants"].get("fp32")
        line = f"{name:15s} {results['variants'][name]['epoch_s']:7.1f} s/epoch"
        if base:
            line += f"  {base['epoch_s'] / results['variants'][name]['epoch_s']:.2f}x float32 contiguous"
        print(line, flush=True)
    Path(args.json).write_text(json.dumps(results, indent=1))
    print(f"{results['machine']['cpu']}, {results['machine']['threads']} threads, native bf16: "
          f"{', '.join(results['machine']['native_bf16']) or 'none'}; {args.json}")
    return results


if __name__ == "__main__":
    main()
