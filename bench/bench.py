"""Benchmark: the project's Lightning train path and pruning sweep against the original plain-PyTorch loops.

Claim under test (one run, same machine, model, data and batch sizes as stated):
  1. Training: the project's path (Lightning `Trainer.fit`, `ImageClassifier`, `CIFAR10DataModule`: uint8
     images in memory, batched augmentation and normalisation in `on_after_batch_transfer`, channels_last)
     trains at least as fast as the original student loop (torchvision `ImageFolder` + per-image PIL
     transforms in a DataLoader, batch 60, float32, contiguous, SGD), and Lightning itself costs no more
     than 5% against a plain loop fed the same in-memory data at the same batch size ("equal footing").
  2. Sweep: `sweep.py` takes less time per sparsity level than the original loop (reload the checkpoint
     with `torch.load` per level, `prune.l1_unstructured` per Conv2d, evaluate through a PIL DataLoader,
     batch 60), both giving the same accuracies, and a level costs little more than its forward pass.
  3. The floor: forward FLOPs of the model (FlopCounterMode) over the FLOP/s of a large float32 matmul on
     the same device give the least possible time per image; every path is reported as a fraction of it
     (a training step counts 3x the forward FLOPs, evaluation 1x).

What is timed and how often:
  - training: each of the three paths runs `--warmup` untimed steps, then `--train_steps` timed steps, once;
    the clock covers data loading, the step and (Lightning) the hooks between the end of the last warm-up
    step and the end of the last timed step, the device synchronised at those two points only (a sync
    after every step, as before 2026-11-26, hides nothing of the Python between steps: on an H100 it
    made Lightning's overhead read 12.8%). Reported as images/s.
  - sweep: each path runs every level in `--levels` once. The project is timed end to end (`sweep.main`
    wall time / levels: loading, decoding the test slice, results and plots included) and per level (the
    median of the engine's own timings: copy, masks, accounting, BatchNorm folding, a Lightning test run).
    The level's forward pass, timed inside the level by hooks on the network (the device synchronised
    at each end), is the part no engine can avoid; the rest of the level is its overhead (median over
    levels). A bare forward pass of the dense network, BatchNorm folded, over the same images after one
    warm-up batch, is timed after the sweep for comparison: on a shared CPU it varies run to run by
    more than the overhead, which is why the split is made inside each level. The original is timed
    end to end per level (load + prune + decode + evaluate).
  - the matmul: 2048x2048 float32, 3 warm-up products, then the best of 5 timings of 4 products each.
  Both paths read exactly the same files: a class-balanced slice of the ImageFolder (the first K images of
  every class, as symlinks in a temporary folder). The JSON's "machine" entry records CPU or GPU, threads
  and load average; bench/README.md gives the recorded runs.

    python bench/bench.py                                  # the GPU if there is one (resnet50), else the CPU (resnet20)
    python bench/bench.py --arch resnet50 --test_images 64 --skip train   # the big model's per-level overhead on a CPU
    python bench/bench.py --device cuda                    # resnet50, full test set
    python bench/bench.py --checkpoint checkpoints/resnet20/version_0/last.ckpt --levels 0,0.5,0.9
"""
import argparse
import json
import math
import os
import platform
import statistics
import tempfile
import time
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

import lightning as L
import torch
import torch.nn.functional as F
import torchvision.transforms as T
from torch import nn
from torch.nn.utils import prune
from torch.utils.data import DataLoader
from torch.utils.flop_counter import FlopCounterMode
from torchvision.datasets import ImageFolder

import sweep
from datamodule import CIFAR10_MEAN, CIFAR10_STD, CIFAR10DataModule, augment, normalize
from lightning_module import ImageClassifier
from magprune.core.folding import fold_batchnorm
from magprune.core.io import strip_wrapper_prefixes
from magprune.core.nets import ARCHS, build_model

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)  # what akamaster's weights expect
CLASSES_PER_SET = 10

warnings.filterwarnings("ignore", ".*does not have many workers.*")
warnings.filterwarnings("ignore", ".*GPU available but not used.*")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add = parser.add_argument
    add("--device", choices=("cpu", "cuda"), help="where every path runs (default: cuda if there is a GPU, else cpu)")
    add("--arch", choices=ARCHS, help="default: resnet20 on cpu, resnet50 on cuda")
    add("--data_dir", default=str(ROOT.parent / "shared" / "data" / "cifar10-jpeg"),
        help="ImageFolder CIFAR-10 with train/ and test/ (default: ../shared/data/cifar10-jpeg)")
    add("--checkpoint", help="a Lightning checkpoint of this project to sweep (default: made from --weights, "
                             "else from an untrained model)")
    add("--weights", help="plain state dict to wrap into a checkpoint when --checkpoint is absent "
                          "(default: ../shared/models/cifar_<arch>_akamaster.th when it exists; 'none' = untrained)")
    add("--levels", default="0,0.25,0.5,0.75,0.9", help="sparsities of the sweep")
    add("--test_images", type=int, help="class-balanced slice of test/ (default: 2000 on cpu, 10000 on cuda)")
    add("--train_steps", type=int, help="timed training steps per path (default: 15 on cpu, 200 on cuda)")
    add("--warmup", type=int, help="untimed steps before (default: 3 on cpu, 20 on cuda)")
    add("--batch_size", type=int, default=128, help="project training batch (train.py's default)")
    add("--test_batch_size", type=int, default=256, help="project sweep batch (sweep.py's default)")
    add("--baseline_batch", type=int, default=60, help="the original experiment's batch, train and test")
    add("--num_workers", type=int, default=0, help="project DataLoader workers (in-memory uint8 tensors)")
    add("--baseline_workers", type=int, default=2, help="original loop's DataLoader workers (PIL decoding)")
    add("--skip", default="", help="comma-separated parts to skip: train,sweep,floor")
    add("--json", help="output path (default: bench/results-<device>.json)")
    args = parser.parse_args(argv)
    if args.device is None:
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    cuda = args.device == "cuda"
    if cuda and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device")
    args.arch = args.arch or ("resnet50" if cuda else "resnet20")
    args.test_images = args.test_images or (10000 if cuda else 2000)
    args.train_steps = args.train_steps or (200 if cuda else 15)
    args.warmup = args.warmup if args.warmup is not None else (20 if cuda else 3)
    args.levels = [float(level) for level in args.levels.split(",")]
    args.skip = {part.strip() for part in args.skip.split(",") if part.strip()}
    args.json = Path(args.json) if args.json else ROOT / "bench" / f"results-{args.device}.json"
    return args


class Clock:
    """perf_counter, after waiting for the GPU when there is one."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"

    def __call__(self) -> float:
        if self.cuda:
            torch.cuda.synchronize()
        return time.perf_counter()


def machine_info(device: torch.device) -> dict:
    cpu = platform.processor() or ""
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    info = {"cpu": cpu, "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__, "lightning": L.__version__, "python": platform.python_version(),
            "loadavg_start": os.getloadavg()}
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


# --------------------------------------------------------------------------------------------- data


def make_slice(src: Path, dst: Path, split: str, per_class: int) -> int:
    """dst/split/<class>/ with symlinks to the first `per_class` files (by name) of every class of src/split."""
    count = 0
    classes = sorted(child for child in (src / split).iterdir() if child.is_dir())
    for folder in classes:
        files = sorted(file for file in folder.iterdir() if file.is_file())[:per_class]
        if len(files) < per_class:
            raise SystemExit(f"{folder} has {len(files)} images, fewer than the {per_class} asked for")
        (dst / split / folder.name).mkdir(parents=True)
        for file in files:
            (dst / split / folder.name / file.name).symlink_to(file.resolve())
        count += len(files)
    return count


# ----------------------------------------------------------------------------------------- training


def timed_span(warmup: int, steps: int) -> tuple[int, int]:
    """The steps after which the clock is read: the last warm-up step (or the first step) and the last timed one."""
    return (warmup - 1, warmup + steps - 1) if warmup else (0, steps - 1)


class StepTimes(L.Callback):
    """Clock readings at the ends of the timed span only: a GPU synchronised after every step could
    not run ahead of the Python between steps, as it does in a real run."""

    def __init__(self, clock: Clock, span: tuple[int, int]):
        self.clock, self.span, self.times = clock, span, {}

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if batch_idx in self.span:
            self.times[batch_idx] = self.clock()


def timed_rate(times: dict[int, float], warmup: int, steps: int, batch: int) -> dict:
    first, last = timed_span(warmup, steps)
    seconds = times[last] - times[first]
    counted = last - first
    return {"images_per_s": counted * batch / seconds, "seconds": seconds, "steps": counted, "batch": batch}


def train_project(args, data_dir: Path, device, clock):
    """train.py's path: same module, datamodule and Trainer flags, minus logger, checkpoints and validation."""
    L.seed_everything(42, workers=True)
    datamodule = CIFAR10DataModule(data_dir=str(data_dir), batch_size=args.batch_size,
                                   num_workers=args.num_workers, seed=42)
    model = ImageClassifier(arch=args.arch, channels_last=True)
    timer = StepTimes(clock, timed_span(args.warmup, args.train_steps))
    trainer = L.Trainer(
        accelerator="gpu" if device.type == "cuda" else "cpu", devices=1, strategy="auto", precision="32-true",
        max_epochs=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, callbacks=[timer], limit_train_batches=args.warmup + args.train_steps,
        limit_val_batches=0, deterministic=False,
    )
    trainer.fit(model, datamodule=datamodule)
    return timed_rate(timer.times, args.warmup, args.train_steps, args.batch_size), trainer, datamodule


def train_plain_same_data(args, datamodule, device, clock) -> dict:
    """Equal footing: the datamodule's own in-memory loader, batch and on-device augmentation, no Lightning."""
    torch.manual_seed(42)
    model = build_model(args.arch).to(device, memory_format=torch.channels_last).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=1000)
    mean, std = datamodule.hparams.mean, datamodule.hparams.std
    times, span = {}, timed_span(args.warmup, args.train_steps)
    loader = datamodule.train_dataloader()
    for step, (images, labels) in enumerate(loader):
        if step == args.warmup + args.train_steps:
            break
        images, labels = images.to(device, non_blocking=True), labels.to(device, non_blocking=True)
        images = normalize(augment(images), mean, std).contiguous(memory_format=torch.channels_last)
        logits = model(images)
        loss = F.cross_entropy(logits, labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        if step in span:
            times[step] = clock()
    return timed_rate(times, args.warmup, args.train_steps, args.batch_size)


def train_original(args, data_dir: Path, mean, std, device, clock) -> dict:
    """The student experiment: ImageFolder + PIL transforms per image, batch 60, float32, contiguous, SGD."""
    torch.manual_seed(42)
    transform = T.Compose([T.RandomCrop(32, padding=4), T.RandomHorizontalFlip(), T.ToTensor(), T.Normalize(mean, std)])
    loader = DataLoader(ImageFolder(str(data_dir / "train"), transform=transform), batch_size=args.baseline_batch,
                        shuffle=True, num_workers=args.baseline_workers)
    model = build_model(args.arch).to(device).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    criterion = nn.CrossEntropyLoss()
    times, span = {}, timed_span(args.warmup, args.train_steps)
    for step, (images, labels) in enumerate(loader):
        if step == args.warmup + args.train_steps:
            break
        images, labels = images.to(device), labels.to(device)
        optimizer.zero_grad()
        loss = criterion(model(images), labels)
        loss.backward()
        optimizer.step()
        if step in span:
            times[step] = clock()
    return timed_rate(times, args.warmup, args.train_steps, args.baseline_batch)


# -------------------------------------------------------------------------------------------- sweep


def make_checkpoint(args, data_dir: Path, path: Path, device) -> str:
    """A Lightning checkpoint written by this project's Trainer: real weights when there are some, else untrained."""
    weights = args.weights
    if weights is None:
        default = ROOT.parent / "shared" / "models" / f"cifar_{args.arch}_akamaster.th"
        weights = str(default) if default.exists() else "none"
    mean, std, what = CIFAR10_MEAN, CIFAR10_STD, "untrained model (accuracies ~10%; timings still valid)"
    model = ImageClassifier(arch=args.arch)
    if weights != "none":
        state = torch.load(weights, map_location="cpu", weights_only=True)
        model.model.load_state_dict(strip_wrapper_prefixes(state.get("state_dict", state)))
        mean, std = IMAGENET_MEAN, IMAGENET_STD  # the only plain weights around here (akamaster's) used these
        what = f"weights {weights} (normalised with mean {mean}, std {std})"
    datamodule = CIFAR10DataModule(data_dir=str(data_dir), batch_size=args.batch_size, mean=mean, std=std,
                                   download=False)
    trainer = L.Trainer(accelerator="cpu", devices=1, max_steps=0, limit_val_batches=0, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(model, datamodule=datamodule)
    trainer.save_checkpoint(path, weights_only=True)
    return what


def forward_seconds(engine, clock) -> float:
    """One forward pass of the dense network, BatchNorm folded, over the sweep's test images: the floor of a level."""
    network = fold_batchnorm(engine.tester.dense).to(memory_format=torch.channels_last)
    images = engine.tester.datamodule.test_set.tensors[0]
    batch = engine.config.batch_size
    device = next(network.parameters()).device
    inputs = [normalize(images[start : start + batch].to(device), engine.config.mean, engine.config.std)
              .contiguous(memory_format=torch.channels_last) for start in range(0, len(images), batch)]
    with torch.no_grad():
        network(inputs[0])  # warm-up, untimed
        start = clock()
        for chunk in inputs:
            network(chunk)
        return clock() - start


class ForwardTimer:
    """The intervals spent inside the forward calls of one module class (the whole network), by global hooks.

    A level's forward time is then measured inside that level, on its own network: a bare forward pass
    timed apart varies by more than the overhead it is compared with on a shared CPU.
    """

    def __init__(self, network_class: type, clock: Clock):
        self.network_class, self.clock, self.intervals, self._started = network_class, clock, [], {}

    def __enter__(self):
        def before(module, inputs):
            if type(module) is self.network_class:
                self._started[id(module)] = self.clock()

        def after(module, inputs, output):
            if type(module) is self.network_class:
                self.intervals.append((self._started.pop(id(module)), self.clock()))

        self._handles = [nn.modules.module.register_module_forward_pre_hook(before),
                         nn.modules.module.register_module_forward_hook(after)]
        return self

    def __exit__(self, *exc):
        for handle in self._handles:
            handle.remove()

    def within(self, start: float, end: float) -> float:
        return sum(stop - begin for begin, stop in self.intervals if start <= begin and stop <= end)


def sweep_project(args, checkpoint: Path, data_dir: Path, out_dir: Path, device, clock) -> dict:
    """sweep.main in-process, with the per-level timings the engine records, each level's own forward time, and the bare forward pass."""
    argv = ["--checkpoint", str(checkpoint), "--data_dir", str(data_dir), "--methods", "layerwise",
            "--sparsities", ",".join(f"{level:g}" for level in args.levels), "--output_dir", str(out_dir),
            "--batch_size", str(args.test_batch_size), "--gpus", "1" if device.type == "cuda" else "0"]
    with ForwardTimer(type(build_model(args.arch)), clock) as timer:
        start = clock()
        engine = sweep.main(argv)
        total = clock() - start
    level_seconds = [timing["seconds"] for timing in engine.tester.timings]
    level_forward = [timer.within(timing["started"], timing["started"] + timing["seconds"]) for timing in engine.tester.timings]
    outside_test = statistics.median(timing["seconds"] - timing["test_seconds"] for timing in engine.tester.timings)
    bare_forward = forward_seconds(engine, clock)
    accuracy = {row["sparsity"]: row["test_acc"] for row in engine.store.rows}
    levels = len(level_seconds)
    # Medians: one slow level (a busy moment) would move a mean of five.
    return {"seconds_total": total, "levels": levels, "s_per_level_end_to_end": total / levels,
            "s_per_level_evaluate": statistics.median(level_seconds), "level_seconds": level_seconds,
            "level_forward_seconds": level_forward,
            "forward_per_level_s": statistics.median(level_forward),
            "overhead_per_level_s": statistics.median(seconds - forward for seconds, forward in zip(level_seconds, level_forward)),
            "bare_forward_per_level_s": bare_forward,
            "outside_test_loop_per_level_s": outside_test,
            "accuracy": accuracy, "argv": argv}


def sweep_original(args, checkpoint: Path, data_dir: Path, device, clock) -> dict:
    """Per level: torch.load the checkpoint, l1_unstructured every Conv2d, evaluate through a PIL DataLoader."""
    header = torch.load(checkpoint, map_location="cpu", weights_only=True)
    data_hparams = header.get("datamodule_hyper_parameters", {})
    mean, std = data_hparams.get("mean", CIFAR10_MEAN), data_hparams.get("std", CIFAR10_STD)
    dataset = ImageFolder(str(data_dir / "test"), transform=T.Compose([T.ToTensor(), T.Normalize(mean, std)]))
    accuracy, seconds = {}, []
    for level in sorted(set(args.levels) | {0.0}):
        start = clock()
        state = torch.load(checkpoint, map_location=device, weights_only=True)["state_dict"]
        model = build_model(args.arch)
        model.load_state_dict({key.removeprefix("model."): value for key, value in state.items()
                               if key.startswith("model.")})
        model.to(device).eval()
        for module in model.modules():
            if isinstance(module, nn.Conv2d):
                prune.l1_unstructured(module, "weight", amount=level)
        loader = DataLoader(dataset, batch_size=args.baseline_batch, shuffle=False, num_workers=args.baseline_workers)
        correct = total = 0
        with torch.no_grad():
            for images, labels in loader:
                images, labels = images.to(device), labels.to(device)
                correct += (model(images).argmax(1) == labels).sum().item()
                total += labels.numel()
        accuracy[level] = 100 * correct / total
        seconds.append(clock() - start)
    return {"s_per_level": statistics.mean(seconds), "level_seconds": seconds, "accuracy": accuracy,
            "mean": list(mean), "std": list(std)}


# -------------------------------------------------------------------------------------------- floor


def forward_flops(arch: str) -> int:
    model = build_model(arch).eval()
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(torch.zeros(1, 3, 32, 32))
    return counter.get_total_flops()


def matmul_flops_per_s(device, clock, size: int = 2048, repeats: int = 5, per_timing: int = 4) -> dict:
    a = torch.randn(size, size, device=device)
    b = torch.randn(size, size, device=device)
    for _ in range(3):
        a @ b
    timings = []
    for _ in range(repeats):
        start = clock()
        for _ in range(per_timing):
            a @ b
        timings.append((clock() - start) / per_timing)
    flops = 2 * size**3
    return {"size": size, "best_s": min(timings), "median_s": statistics.median(timings),
            "flops_per_s": flops / min(timings), "flops_per_s_median": flops / statistics.median(timings)}


# ------------------------------------------------------------------------------------------- report


def fmt(value, digits=1):
    return "-" if value is None else f"{value:,.{digits}f}"


def print_table(rows: list[tuple]) -> None:
    headers = ("path", "measured", "unit", "vs baseline")
    widths = [max(len(str(row[i])) for row in rows + [headers]) for i in range(4)]
    line = f"{{:<{widths[0]}}}  {{:>{widths[1]}}}  {{:<{widths[2]}}}  {{}}"
    print()
    print(line.format(*headers))
    print("-" * (sum(widths) + 6))
    for row in rows:
        print(line.format(*row))


def main(argv=None):
    args = parse_args(argv)
    device = torch.device(args.device)
    print(f"device: {torch.cuda.get_device_name(device) if device.type == 'cuda' else f'CPU, {torch.get_num_threads()} threads'}")
    clock = Clock(device)
    data_root = Path(args.data_dir).resolve()
    results = {"args": {k: (sorted(v) if isinstance(v, set) else str(v) if isinstance(v, Path) else v)
                        for k, v in vars(args).items()},
               "machine": machine_info(device)}
    wall_start = time.perf_counter()
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-") as tmp:
        tmp = Path(tmp)
        per_class_test = math.ceil(args.test_images / CLASSES_PER_SET)
        steps = args.warmup + args.train_steps
        needed = max(math.ceil(steps * args.batch_size / 0.9) + args.batch_size, steps * args.baseline_batch)
        per_class_train = math.ceil(needed / CLASSES_PER_SET)
        data_dir = tmp / "data"
        n_test = make_slice(data_root, data_dir, "test", per_class_test)
        n_train = make_slice(data_root, data_dir, "train", per_class_train)
        results["data"] = {"source": str(data_root), "test_images": n_test, "train_images": n_train}
        print(f"data: {n_train} train and {n_test} test images, the first of every class of {data_root}")

        flops = forward_flops(args.arch)
        results["forward_flops_per_image"] = flops
        peak = None
        if "floor" not in args.skip:
            results["matmul"] = matmul_flops_per_s(device, clock)
            peak = results["matmul"]["flops_per_s"]
            rows.append(("matmul 2048^2 fp32", fmt(peak / 1e9), "GFLOP/s", "peak (best of 5)"))
            rows.append((f"{args.arch} forward", fmt(flops / 1e6), "MFLOP/img", ""))
            rows.append(("floor: train (3x fwd)", fmt(peak / (3 * flops), 0), "img/s max", ""))
            rows.append(("floor: eval (1x fwd)", fmt(peak / flops, 0), "img/s max", ""))

        def of_peak(images_per_s, factor):
            return f"{100 * images_per_s * factor * flops / peak:.1f}% of peak" if peak else ""

        if "train" not in args.skip:
            print(f"training: {args.warmup} warm-up + {args.train_steps} timed steps per path")
            project, trainer, datamodule = train_project(args, data_dir, device, clock)
            plain = train_plain_same_data(args, datamodule, device, clock)
            mean, std = datamodule.hparams.mean, datamodule.hparams.std
            original = train_original(args, data_dir, mean, std, device, clock)
            results["train"] = {"project_lightning": project, "plain_same_data": plain, "original": original,
                                "speedup_vs_original": project["images_per_s"] / original["images_per_s"],
                                "lightning_overhead": 1 - project["images_per_s"] / plain["images_per_s"]}
            base = original["images_per_s"]
            rows.append((f"train original (PIL, b{args.baseline_batch})", fmt(base), "img/s",
                         f"1.00x  {of_peak(base, 3)}"))
            rows.append((f"train plain loop (in-mem, b{args.batch_size})", fmt(plain["images_per_s"]), "img/s",
                         f"{plain['images_per_s'] / base:.2f}x  {of_peak(plain['images_per_s'], 3)}"))
            rows.append((f"train project Lightning (b{args.batch_size})", fmt(project["images_per_s"]), "img/s",
                         f"{project['images_per_s'] / base:.2f}x  {of_peak(project['images_per_s'], 3)}"))
            rows.append(("  Lightning overhead vs plain loop", f"{100 * results['train']['lightning_overhead']:.1f}",
                         "%", "target <= 5%"))

        if "sweep" not in args.skip:
            checkpoint = Path(args.checkpoint).resolve() if args.checkpoint else tmp / "bench.ckpt"
            if args.checkpoint:
                results["checkpoint"] = str(checkpoint)
            else:
                results["checkpoint"] = make_checkpoint(args, data_dir, checkpoint, device)
            print(f"sweep checkpoint: {results['checkpoint']}")
            print(f"sweep: levels {args.levels} over {n_test} test images")
            project = sweep_project(args, checkpoint, data_dir, tmp / "sweep", device, clock)
            original = sweep_original(args, checkpoint, data_dir, device, clock)
            shared = sorted(set(project["accuracy"]) & set(original["accuracy"]))
            difference = max(abs(project["accuracy"][level] - original["accuracy"][level]) for level in shared)
            results["sweep"] = {"project": project, "original": original, "max_abs_acc_diff_points": difference,
                                "speedup_end_to_end": original["s_per_level"] / project["s_per_level_end_to_end"],
                                "speedup_evaluate": original["s_per_level"] / project["s_per_level_evaluate"]}
            base = original["s_per_level"]
            rate = lambda seconds: n_test / seconds  # noqa: E731
            rows.append((f"sweep original (reload+PIL, b{args.baseline_batch})", fmt(base, 2), "s/level",
                         f"1.00x  {of_peak(rate(base), 1)}"))
            rows.append((f"sweep project end to end (b{args.test_batch_size})",
                         fmt(project["s_per_level_end_to_end"], 2), "s/level",
                         f"{results['sweep']['speedup_end_to_end']:.2f}x faster  "
                         f"{of_peak(rate(project['s_per_level_end_to_end']), 1)}"))
            rows.append(("sweep project per level (LevelTester.evaluate)", fmt(project["s_per_level_evaluate"], 2), "s/level",
                         f"{results['sweep']['speedup_evaluate']:.2f}x faster  "
                         f"{of_peak(rate(project['s_per_level_evaluate']), 1)}"))
            rows.append(("  of which the forward pass", fmt(project["forward_per_level_s"], 3), "s/level",
                         "timed inside each level (median)"))
            rows.append(("  of which everything else", fmt(project["overhead_per_level_s"], 3), "s/level",
                         "target <= 0.1 s (resnet20), 0.3 s (resnet50) on 2 CPU cores"))
            rows.append(("  a bare forward pass, for comparison", fmt(project["bare_forward_per_level_s"], 3), "s/level",
                         "dense, folded, after the sweep"))
            rows.append(("  of which outside Lightning's test loop", fmt(project["outside_test_loop_per_level_s"], 3),
                         "s/level", "copy, masks, accounting (median, same run)"))
            rows.append(("  accuracy max |project - original|", f"{difference:.3f}", "points", "target ~0"))
            print("\nlevel   project acc   original acc")
            for level in shared:
                print(f"{level:5.2f}   {project['accuracy'][level]:10.2f}%   {original['accuracy'][level]:11.2f}%")

    results["machine"]["loadavg_end"] = os.getloadavg()
    results["wall_seconds"] = time.perf_counter() - wall_start
    info = results["machine"]
    print(f"\n{args.arch} on {args.device} ({info.get('gpu', info['cpu'])}, {info['cores']} cores, "
          f"{info['torch_threads']} torch threads; load average {info['loadavg_start'][0]:.2f} at start, "
          f"{info['loadavg_end'][0]:.2f} at end)")
    print_table(rows)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(results, indent=1, default=str))
    print(f"\nwall time {results['wall_seconds']:.0f} s; wrote {args.json}")
    return results


if __name__ == "__main__":
    main()
