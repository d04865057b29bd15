"""Prune a trained classifier at a sweep of sparsities and test each: how much of the network can go?

    python sweep.py                                   # newest checkpoint, layer-wise L1, 21 levels
    python sweep.py --checkpoint checkpoints/resnet20_cifar10jpeg.ckpt --data_dir demo_data \\
        --methods layerwise,global,random,filters
    python sweep.py --weights model.th --arch resnet56 --mean 0.485,0.456,0.406 --std 0.229,0.224,0.225
    python sweep.py --methods layerwise,global --bn_recalibrate 20 --finetune_epochs 1 --sensitivity --visualize

Every level starts again from the dense weights. Results go to one TensorBoard run
(lightning_logs/sweep/version_N, or --output_dir): sweep.csv, sweep.json, sweep.png, and the scalars
`sweep/test_acc`, `sweep/test_loss`, `sweep/sparsity` with step = sparsity in whole percent (other
curves under `sweep-<curve>/...`). Rerunning with the same --output_dir skips finished levels.
"""
import argparse
import copy
import csv
import io
import json
import logging
import math
import os
from fractions import Fraction
import warnings
from pathlib import Path

import lightning as L
import numpy as np
import torch
from lightning.pytorch.loggers import TensorBoardLogger
from tqdm import tqdm

import plots
import visualize
from cli import ArgumentParser, UsageError, one_line_errors
from compression import export_compact, load_compact, remove_filters, storage_report
from datamodule import CIFAR10_MEAN, CIFAR10_STD, CIFAR10DataModule
from lightning_module import ARCHS, ImageClassifier
from prune_callback import METHODS, PruningCallback, apply_pruning, make_permanent, prunable_layers

DEFAULT_SPARSITIES = tuple(round(0.05 * step, 2) for step in range(21))
FIGURE_FILES = {"sweep/accuracy_vs_sparsity": "sweep.png", "sweep/accuracy_vs_bytes": "sweep_bytes.png",
                "sweep/sensitivity": "sensitivity.png"}
RESULT_COLUMNS = ("curve", "method", "recovery", "sparsity", "achieved_sparsity", "test_acc", "test_loss")


def parse_args(argv=None) -> argparse.Namespace:
    parser = ArgumentParser(description=__doc__.split("\n")[0])
    add = parser.add_argument
    add("--checkpoint", help="Lightning checkpoint to prune (default: the newest under checkpoints/)")
    add("--weights", help="a plain state dict or an exported .ptz instead of a checkpoint (needs --arch)")
    add("--arch", choices=ARCHS, help="with --weights: the network those weights belong to")
    add("--mean", help="with --weights: per-channel input mean the weights were trained with, e.g. 0.485,0.456,0.406")
    add("--std", help="with --weights: per-channel input std the weights were trained with")
    add("--sparsities", default=",".join(f"{level:g}" for level in DEFAULT_SPARSITIES),
        help="comma-separated fractions of weights to remove (default: 0, 0.05, ..., 1)")
    add("--methods", "--scope", dest="methods", default="layerwise",
        help=f"comma-separated pruning methods, one curve each: {', '.join(METHODS)} (default: layerwise)")
    add("--include_classifier", action="store_true", help="prune the final Linear layer too (spared by default)")
    add("--tolerance", type=float, default=1.0, help="accuracy points below dense that still count as 'kept'")
    add("--bn_recalibrate", type=int, default=0, metavar="N",
        help="also test each level after re-estimating BatchNorm statistics on N training batches ('+BN' curves)")
    add("--finetune_epochs", type=int, default=0, metavar="E",
        help="also test each level after E epochs of training with the masks held fixed ('+FT' curves)")
    add("--finetune_lr", type=float, default=0.01, help="peak learning rate of the fine-tuning cosine")
    add("--finetune_batches", type=float, default=None,
        help="Lightning limit_train_batches for fine-tuning epochs (fraction or count)")
    add("--sensitivity", action="store_true",
        help="also prune one layer at a time, the others dense, and draw layer x sparsity -> accuracy")
    add("--sensitivity_sparsities", default="0.25,0.5,0.75,0.9,0.95",
        help="levels of the sensitivity analysis (comma-separated fractions)")
    add("--find_knee", action="store_true",
        help="bisect for each method's knee instead of testing every level of --sparsities")
    add("--knee_resolution", type=float, default=0.01, help="with --find_knee: stop when the bracket is this narrow")
    add("--export", type=float, default=None, metavar="S",
        help="write the model pruned at sparsity S (first method) permanently, in compact form (.ptz)")
    add("--visualize", action="store_true",
        help="write a GIF of the masks, a per-layer sparsity chart and TensorBoard images and histograms")
    add("--visualize_layers", default=None,
        help="comma-separated layer names for the GIF (default: first conv, a middle conv, the classifier)")
    add("--gpus", type=int, default=0, help="GPUs to test on (0 or 1); 0 is the CPU")
    add("--batch_size", type=int, default=256, help="test batch size")
    add("--limit_test_batches", type=float, default=None, help="Lightning: fraction or number of test batches")
    add("--data_dir", help="CIFAR-10 location (default: the one the checkpoint was trained on)")
    add("--seed", type=int, default=0, help="seed of the random method's masks")
    add("--output_dir", help="folder for this sweep's results and TensorBoard run; reusing one resumes it")
    add("--log_root", default="lightning_logs", help="where new sweep runs go when --output_dir is not given")
    return parser.parse_args(argv)


def parse_fractions(text: str, flag: str) -> list[float]:
    try:
        values = [float(item) for item in text.split(",") if item.strip()]
    except ValueError:
        raise UsageError(f"{flag} takes comma-separated numbers, got {text!r}") from None
    if not values:
        raise UsageError(f"{flag} is empty; give at least one value")
    for value in values:
        if not math.isfinite(value) or not 0 <= value <= 1:
            raise UsageError(f"{flag}: {value} is outside [0, 1]")
    return sorted(set(values))


def parse_channels(text: str | None, default: tuple, flag: str) -> tuple:
    if text is None:
        return default
    try:
        values = tuple(float(item) for item in text.split(","))
    except ValueError:
        raise UsageError(f"{flag} takes three comma-separated numbers, got {text!r}") from None
    if len(values) != 3:
        raise UsageError(f"{flag} takes three comma-separated numbers, got {text!r}")
    return values


def newest_checkpoint(root: Path = Path("checkpoints")) -> Path:
    """The newest best-by-validation checkpoint under `root`, else the newest checkpoint of any name."""
    for pattern in ("**/best*.ckpt", "**/*.ckpt"):
        found = sorted(root.glob(pattern), key=lambda path: path.stat().st_mtime)
        if found:
            return found[-1]
    raise UsageError(f"no checkpoint under {root}/; train one with train.py or pass --checkpoint")


def read_file(path: Path, what: str) -> dict:
    if not path.is_file():
        raise UsageError(f"{what} {path} does not exist")
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as error:  # torch.load raises many types for truncated or foreign files
        raise UsageError(f"{what} {path} cannot be read ({type(error).__name__}); is it complete?") from None


def load_checkpoint(path: Path) -> tuple[ImageClassifier, dict]:
    """The model and the datamodule's hyper-parameters from a Lightning checkpoint of this project."""
    checkpoint = read_file(path, "checkpoint")
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint or "hyper_parameters" not in checkpoint:
        raise UsageError(f"{path} is not a Lightning checkpoint; for a plain state dict use --weights with --arch")
    if checkpoint["hyper_parameters"].get("arch") not in ARCHS:
        raise UsageError(f"{path} was not written by this project's train.py (no known 'arch' hyper-parameter)")
    try:
        model = ImageClassifier.load_from_checkpoint(path, map_location="cpu")
    except (RuntimeError, KeyError, TypeError) as error:
        raise UsageError(f"{path} does not match its architecture: {str(error).splitlines()[0]}") from None
    return model, dict(checkpoint.get("datamodule_hyper_parameters", {}))


def load_weights(path: Path, arch: str | None) -> tuple[ImageClassifier, dict]:
    """A plain state dict (optionally under 'state_dict', keys optionally prefixed 'module.'), or a .ptz export."""
    if arch is None:
        raise UsageError("--weights needs --arch to know which network the weights belong to")
    extra = {}
    if path.suffix == ".ptz" and path.is_file():
        try:
            state_dict, extra = load_compact(path)
        except Exception as error:  # a damaged export fails in zlib, pickle or torch
            raise UsageError(f"{path} cannot be read as a compact export ({type(error).__name__})") from None
    else:
        weights = read_file(path, "weights file")
        state_dict = weights.get("state_dict", weights) if isinstance(weights, dict) else None
    if not isinstance(state_dict, dict):
        raise UsageError(f"{path} holds no state dict")
    state_dict = {key.removeprefix("module.").removeprefix("model."): value for key, value in state_dict.items()}
    model = ImageClassifier(arch=arch)
    try:
        model.model.load_state_dict(state_dict)
    except RuntimeError as error:
        raise UsageError(f"{path} does not fit --arch {arch}: {str(error).splitlines()[0]}") from None
    return model, extra


def atomic_write(path: Path, write) -> None:
    """Write through a temporary file in the same folder, then rename: a reader never sees half a file."""
    # A fixed temporary name rather than mkstemp's: mkstemp makes files only their owner can read.
    temporary = path.with_name(f".{path.name}.partial")
    try:
        with open(temporary, "w", newline="") as stream:
            write(stream)
        os.replace(temporary, path)
    except BaseException:
        os.unlink(temporary)
        raise


def write_csv(rows: list[dict], stream) -> None:
    present = {key for row in rows for key in row}
    columns = [key for key in RESULT_COLUMNS if key in present] + sorted(present - set(RESULT_COLUMNS))
    writer = csv.DictWriter(stream, fieldnames=columns)
    writer.writeheader()
    writer.writerows(rows)


def within_tolerance(row: dict, dense: dict, tolerance: float) -> bool:
    """Exactly: correct/total >= dense_correct/dense_total - tolerance/100, in integer arithmetic.

    The tolerance is read as the decimal the user typed (1.0 is exactly one point), so a level
    exactly `tolerance` points below dense is within it.
    """
    points = Fraction(str(tolerance))
    return Fraction(row["correct"], row["total"]) * 100 >= Fraction(dense["correct"], dense["total"]) * 100 - points


def find_knees(rows: list[dict], dense: dict, tolerance: float) -> dict[str, dict | None]:
    """Per curve, the row of its knee: the largest level such that it and every level below it are within tolerance.

    A curve that falls out of the tolerance and comes back (noise, or a level BatchNorm happens to
    suit) has its knee before the first level that fell out: "can go" means every smaller cut is
    safe too, which is also what bisection assumes. None where even the smallest level is outside.
    """
    knees = {}
    for curve in dict.fromkeys(row["curve"] for row in rows):
        knee = None
        for row in sorted((row for row in rows if row["curve"] == curve), key=lambda row: row["sparsity"]):
            if not within_tolerance(row, dense, tolerance):
                break
            knee = row
        knees[curve] = knee
    return knees


def curve_name(method: str, recovery: str) -> str:
    return method + {"none": "", "bn": "+BN", "finetune": "+FT"}[recovery]


class Sweep:
    """Tests pruned copies of one dense model, keeping results on disk after every test so it can resume."""

    def __init__(self, model: ImageClassifier, datamodule, args, config: dict, out_dir: Path):
        self.dense_model = model
        self.datamodule = datamodule
        self.args = args
        self.config = config
        self.out_dir = out_dir
        self.rows, self.sensitivity = self._resume()
        self.test_passes = 0

    def _resume(self) -> tuple[list[dict], list[dict]]:
        results = self.out_dir / "sweep.json"
        if not results.exists():
            return [], []
        saved = json.loads(results.read_text())
        if saved.get("config") != self.config:
            raise UsageError(f"{self.out_dir} holds a sweep with other settings; choose a new --output_dir to keep both")
        return saved["rows"], saved.get("sensitivity", [])

    def trainer(self, callbacks, **overrides) -> L.Trainer:
        settings = dict(
            accelerator="gpu" if self.args.gpus else "cpu",
            devices=1,
            logger=False,
            callbacks=callbacks,
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            limit_test_batches=self.args.limit_test_batches,
        )
        return L.Trainer(**{**settings, **overrides})

    def test(self, model, callbacks=()) -> dict:
        self.test_passes += 1
        return self.trainer(list(callbacks)).test(model, datamodule=self.datamodule, verbose=False)[0]

    def evaluate(self, method: str, sparsity: float, recovery: str = "none") -> dict:
        """Prune a fresh copy of the dense model, recover as asked, test it; one result row."""
        model = copy.deepcopy(self.dense_model)
        callback = PruningCallback(sparsity, method, self.args.include_classifier, self.args.seed,
                                   recalibrate_batches=self.args.bn_recalibrate if recovery == "bn" else 0)
        if recovery == "finetune":
            model.hparams.learning_rate = self.args.finetune_lr
            model.hparams.T_max = self.args.finetune_epochs
            self.trainer([callback], max_epochs=self.args.finetune_epochs, limit_val_batches=0,
                         limit_train_batches=self.args.finetune_batches).fit(model, datamodule=self.datamodule)
        metrics = self.test(model, [callback])
        correct, total = model.test_counts.compute()
        row = {
            "curve": curve_name(method, recovery),
            "method": method,
            "recovery": recovery,
            "sparsity": sparsity,
            "achieved_sparsity": callback.report["sparsity"],
            "test_acc": 100 * correct / total,
            "correct": correct,
            "total": total,
            "test_loss": metrics["test/loss"],
        }
        if recovery == "none":
            row.update(self.measure(model.model, method))
        return row

    def measure(self, network, method: str) -> dict:
        """What the masks save: sizes and FLOPs; for whole filters, the network with them really removed."""
        storage = storage_report(network, self.args.include_classifier)
        if method == "filters":
            _, slim = remove_filters(network, torch.zeros(1, 3, 32, 32), latency_batch=32, warmup=2, repeats=5)
            storage.update(slim_params=slim["params"]["slim"], slim_flops=slim["flops"]["slim"],
                           dense_latency_ms=slim["latency_ms"]["dense"], slim_latency_ms=slim["latency_ms"]["slim"])
        return storage

    def result(self, method: str, sparsity: float, recovery: str = "none") -> dict:
        """The row for this test, from disk when a previous run already made it."""
        curve = curve_name(method, recovery)
        row = next((row for row in self.rows if row["curve"] == curve and row["sparsity"] == sparsity), None)
        if row is None:
            row = self.evaluate(method, sparsity, recovery)
            self.rows.append(row)
            self.save()
        return row

    def grid(self, methods: list[str], sparsities: list[float]) -> None:
        recoveries = ["none"] + ["bn"] * bool(self.args.bn_recalibrate) + ["finetune"] * bool(self.args.finetune_epochs)
        plan = [(method, recovery, level) for recovery in recoveries for method in methods for level in sparsities]
        for method, recovery, level in tqdm(plan, desc="sweep", unit="test"):
            self.result(method, level, recovery)

    def bisect(self, methods: list[str], tolerance: float, resolution: float) -> dict[str, dict]:
        """Per method, the largest sparsity within tolerance, assuming accuracy falls as sparsity rises."""
        dense = self.result(methods[0], 0.0)
        searches = {}
        for method in tqdm(methods, desc="knee search", unit="method"):
            passes_before = self.test_passes
            kept, lost = 0.0, 1.0
            if within_tolerance(self.result(method, 1.0), dense, tolerance):
                kept = lost = 1.0
            while lost - kept > resolution:
                middle = round((kept + lost) / 2, 6)
                if within_tolerance(self.result(method, middle), dense, tolerance):
                    kept = middle
                else:
                    lost = middle
            searches[method] = {"sparsity": kept, "test_passes": self.test_passes - passes_before}
        return searches

    def layer_sensitivity(self, levels: list[float]) -> list[dict]:
        """Distiller's sensitivity analysis: L1-prune one layer at a time, the others dense."""
        layers = list(prunable_layers(self.dense_model.model, self.args.include_classifier))
        plan = [(layer, level) for layer in layers for level in levels]
        done = {(row["layer"], row["sparsity"]) for row in self.sensitivity}
        for layer, level in tqdm(plan, desc="sensitivity", unit="test"):
            if (layer, level) in done:
                continue
            model = copy.deepcopy(self.dense_model)
            apply_pruning(model.model, level, "layerwise", only=[layer])
            self.test(model)
            correct, total = model.test_counts.compute()
            self.sensitivity.append({"layer": layer, "sparsity": level, "test_acc": 100 * correct / total})
            self.save()
        return self.sensitivity

    def save(self, summary: dict | None = None) -> None:
        document = {"config": self.config, "rows": self.rows, "sensitivity": self.sensitivity,
                    **({"summary": summary} if summary else {})}
        atomic_write(self.out_dir / "sweep.json", lambda stream: json.dump(document, stream, indent=1))
        atomic_write(self.out_dir / "sweep.csv", lambda stream: write_csv(self.rows, stream))
        if self.sensitivity:
            atomic_write(self.out_dir / "sensitivity.csv", lambda stream: write_csv(self.sensitivity, stream))


def print_table(rows: list[dict], knees: dict, dense_acc: float, tolerance: float) -> None:
    curves = sorted({row["curve"] for row in rows})
    levels = sorted({row["sparsity"] for row in rows})
    by_key = {(row["curve"], row["sparsity"]): row for row in rows}
    width = max(10, *(len(curve) + 2 for curve in curves))
    print("\ntest accuracy (%) by sparsity")
    print("sparsity".rjust(9) + "".join(curve.rjust(width) for curve in curves))
    for level in levels:
        cells = [by_key.get((curve, level)) for curve in curves]
        print(f"{100 * level:8.1f}%" + "".join((f"{cell['test_acc']:.2f}" if cell else "-").rjust(width) for cell in cells))
    print(f"\nlargest sparsity within {tolerance:g} points of dense ({dense_acc:.2f}%), and what it costs:")
    print(f"  {'curve':<{width}} {'sparsity':>9} {'accuracy':>9} {'on disk':>10} {'FLOPs':>10}")
    for curve in curves:
        knee = knees[curve]
        if knee["sparsity"] is None:
            print(f"  {curve:<{width}} {'none':>9}")
            continue
        size = f"{knee['disk_bytes'] / 1e6:.3f} MB" if knee.get("disk_bytes") else "-"
        flops = f"{knee['flops_sparse'] / 1e6:.1f} M" if knee.get("flops_sparse") else "-"
        # The achieved sparsity, not the level asked for: a checkpoint pruned in training starts sparse.
        print(f"  {curve:<{width}} {100 * knee['achieved_sparsity']:8.1f}% {knee['test_acc']:8.2f}% {size:>10} {flops:>10}")


def knee_summary(rows: list[dict], knees: dict) -> dict:
    """Each knee with the size and FLOPs its masks give (recovery changes weights, not masks)."""
    measured = {(row["method"], row["sparsity"]): row for row in rows if row["recovery"] == "none"}
    keys = ("disk_bytes", "flops_sparse", "nonzero_weights", "slim_params", "slim_flops", "dense_latency_ms", "slim_latency_ms")
    summary = {}
    for curve, knee in knees.items():
        if knee is None:
            summary[curve] = {"sparsity": None, "achieved_sparsity": None, "test_acc": None}
            continue
        entry = {key: knee[key] for key in ("sparsity", "achieved_sparsity", "test_acc", "correct", "total")}
        source = measured.get((knee["method"], knee["sparsity"]), {})
        entry.update({key: source[key] for key in keys if key in source})
        summary[curve] = entry
    return summary


def log_to_tensorboard(logger: TensorBoardLogger, rows: list[dict], figures: dict) -> None:
    for row in rows:
        family = "sweep" if row["curve"] == "layerwise" else f"sweep-{row['curve']}"
        metrics = {f"{family}/test_acc": row["test_acc"], f"{family}/test_loss": row["test_loss"],
                   f"{family}/sparsity": 100 * row["achieved_sparsity"]}
        if "disk_bytes" in row:
            metrics[f"storage-{row['method']}/disk_bytes"] = row["disk_bytes"]
            metrics[f"storage-{row['method']}/flops_sparse"] = row["flops_sparse"]
        logger.log_metrics(metrics, step=visualize.sparsity_step(row["sparsity"]))
    for tag, figure in figures.items():
        logger.experiment.add_figure(tag, figure)  # closes it, so long sessions do not pile up figures
    logger.experiment.flush()


def write_visuals(sweep: Sweep, methods: list[str], sparsities: list[float], layer_names, experiment) -> None:
    """Mask GIFs, per-layer sparsity charts, and TensorBoard images and histograms, per method and level."""
    network = sweep.dense_model.model
    layer_names = layer_names or visualize.default_layers(network)
    unknown = [name for name in layer_names if name not in dict(network.named_modules())]
    if unknown:
        raise UsageError(f"--visualize_layers: no layer named {', '.join(unknown)} in {sweep.dense_model.hparams.arch}")
    accuracy = {(row["method"], row["sparsity"]): row["test_acc"] for row in sweep.rows if row["recovery"] == "none"}
    reports = {}
    for method in tqdm(methods, desc="visualize", unit="method"):
        frames = []
        for level in sparsities:
            pruned = copy.deepcopy(network)
            reports.setdefault(method, []).append((level, apply_pruning(pruned, level, method, sweep.args.include_classifier, sweep.args.seed)))
            visualize.log_weight_histograms(experiment, method, level, pruned, layer_names)
            test_acc = accuracy.get((method, level))
            frames.append((level, None if test_acc is None else test_acc / 100, visualize.weight_magnitudes(pruned, layer_names)))
        images = visualize.write_mask_gif(frames, sweep.out_dir / f"masks_{method}.gif", title=f"{method} pruning")
        for (level, _, _), image in zip(frames, images):
            visualize.log_mask_frame(experiment, method, level, image)
    charted = {method: reports[method] for method in ("layerwise", "global") if method in reports}
    if charted:
        visualize.write_layer_sparsity_chart(charted, sweep.out_dir / "layer_sparsity.png")


def make_logger(args) -> TensorBoardLogger:
    if args.output_dir:
        return TensorBoardLogger(save_dir=args.output_dir, name="", version="")
    return TensorBoardLogger(args.log_root, name="sweep")


def check_args(args) -> tuple[list[float], list[str]]:
    sparsities = parse_fractions(args.sparsities, "--sparsities")
    if 0.0 not in sparsities:
        sparsities.insert(0, 0.0)  # the dense model is the reference every knee is measured against
    methods = [method.strip() for method in args.methods.split(",") if method.strip()]
    unknown = [method for method in methods if method not in METHODS]
    if unknown or not methods:
        raise UsageError(f"--methods: unknown {', '.join(unknown) or 'empty list'}; choose from {', '.join(METHODS)}")
    if args.batch_size < 1:
        raise UsageError(f"--batch_size must be at least 1, got {args.batch_size}")
    if args.gpus not in (0, 1) or (args.gpus and not torch.cuda.is_available()):
        raise UsageError(f"--gpus {args.gpus}: the sweep runs on the CPU (0) or one CUDA GPU (1), and none was found")
    if args.bn_recalibrate < 0 or args.finetune_epochs < 0:
        raise UsageError("--bn_recalibrate and --finetune_epochs count batches and epochs: 0 or more")
    if not math.isfinite(args.tolerance) or args.tolerance < 0:
        raise UsageError(f"--tolerance must be a number of accuracy points, 0 or more, got {args.tolerance}")
    if args.export is not None and not (math.isfinite(args.export) and 0 <= args.export <= 1):
        raise UsageError(f"--export: sparsity {args.export} is outside [0, 1]")
    if args.find_knee and not 0 < args.knee_resolution < 1:
        raise UsageError("--knee_resolution must lie in (0, 1)")
    return sparsities, methods


def load_model(args) -> tuple[ImageClassifier, dict, str]:
    """The model, the data module's hyper-parameters it was trained with, and where it came from."""
    if args.weights:
        model, extra = load_weights(Path(args.weights), args.arch)
        data_hparams = {"mean": parse_channels(args.mean, tuple(extra.get("mean", CIFAR10_MEAN)), "--mean"),
                        "std": parse_channels(args.std, tuple(extra.get("std", CIFAR10_STD)), "--std")}
        return model, data_hparams, str(args.weights)
    path = Path(args.checkpoint) if args.checkpoint else newest_checkpoint()
    print(f"checkpoint: {path}")
    model, data_hparams = load_checkpoint(path)
    return model, data_hparams, str(path)


def output_folder(args) -> tuple[TensorBoardLogger, Path]:
    logger = make_logger(args)
    out_dir = Path(logger.log_dir)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / ".write_test").touch()
        (out_dir / ".write_test").unlink()
    except OSError as error:
        raise UsageError(f"cannot write to {out_dir} ({error.strerror}); choose another --output_dir") from None
    return logger, out_dir


def draw(sweep: Sweep, summary: dict, knees: dict, args) -> dict:
    """The sweep's figures by TensorBoard tag, each also saved as a PNG in the output folder."""
    arch, rows, dense_acc = sweep.config["arch"], sweep.rows, summary["dense_acc"]
    one_shot = [row for row in rows if row["recovery"] == "none"]
    figures = {
        "sweep/accuracy_vs_sparsity": plots.plot_accuracy_vs_sparsity(rows, dense_acc, args.tolerance, knees, f"{arch}: accuracy vs sparsity"),
        "sweep/accuracy_vs_bytes": plots.plot_accuracy_vs_bytes(one_shot, summary["dense_bytes"], f"{arch}: accuracy vs size on disk"),
    }
    if sweep.sensitivity:
        levels = sorted({row["sparsity"] for row in sweep.sensitivity})
        layers = list(dict.fromkeys(row["layer"] for row in sweep.sensitivity))
        cells = {(row["layer"], row["sparsity"]): row["test_acc"] for row in sweep.sensitivity}
        matrix = np.array([[cells[layer, level] for level in levels] for layer in layers])
        figures["sweep/sensitivity"] = plots.plot_sensitivity(matrix, layers, levels, f"{arch}: one layer pruned at a time (L1)")
    for tag, figure in figures.items():
        figure.savefig(sweep.out_dir / FIGURE_FILES[tag])
    return figures


def export(model: ImageClassifier, args, method: str, datamodule, out_dir: Path) -> Path:
    """The model pruned at --export permanently, in compact form, with what is needed to evaluate it."""
    pruned = copy.deepcopy(model)
    apply_pruning(pruned, args.export, method, args.include_classifier, args.seed)
    arch = model.hparams.arch
    path = out_dir / f"{arch}_{method}_{round(100 * args.export)}.ptz"
    export_compact(pruned.model, path, extra={"arch": arch, "method": method, "sparsity": args.export,
                                               "mean": list(datamodule.hparams.mean), "std": list(datamodule.hparams.std)})
    return path


@one_line_errors
def main(argv=None):
    args = parse_args(argv)
    # A Trainer per level would print its device banner, and Lightning 2.6's use of a deprecated
    # torch pytree check its warning, once per level: dozens of lines through the progress bar.
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated")
    sparsities, methods = check_args(args)
    model, data_hparams, source = load_model(args)
    make_permanent(model)  # masks of a model pruned during training become its dense starting point
    # Faster tests on CPUs and GPUs alike; same accuracy up to float rounding.
    model.hparams.channels_last = model.hparams.fold_batchnorm = True
    model.model.to(memory_format=torch.channels_last)
    data_hparams.update(batch_size=args.batch_size, num_workers=0, download=False)
    if args.data_dir:
        data_hparams["data_dir"] = args.data_dir
    datamodule = CIFAR10DataModule(**data_hparams)
    datamodule.prepare_data()
    datamodule.setup("test")
    logger, out_dir = output_folder(args)
    print(f"results: {out_dir}")
    config = {"source": source, "arch": model.hparams.arch, "methods": methods, "sparsities": sparsities,
              "include_classifier": args.include_classifier, "bn_recalibrate": args.bn_recalibrate,
              "finetune_epochs": args.finetune_epochs, "finetune_lr": args.finetune_lr,
              "finetune_batches": args.finetune_batches, "find_knee": args.find_knee,
              "data_dir": str(datamodule.hparams.data_dir), "mean": list(datamodule.hparams.mean),
              "std": list(datamodule.hparams.std), "limit_test_batches": args.limit_test_batches, "seed": args.seed}

    sweep = Sweep(model, datamodule, args, config, out_dir)
    searches = sweep.bisect(methods, args.tolerance, args.knee_resolution) if args.find_knee else None
    if not args.find_knee:
        sweep.grid(methods, sparsities)
    if args.sensitivity:
        sweep.layer_sensitivity(parse_fractions(args.sensitivity_sparsities, "--sensitivity_sparsities"))
    dense = next(row for row in sweep.rows if row["sparsity"] == 0 and row["recovery"] == "none")
    knees = find_knees(sweep.rows, dense, args.tolerance)
    summary = {"dense_acc": dense["test_acc"], "tolerance": args.tolerance, "knees": knee_summary(sweep.rows, knees),
               "dense_bytes": dense["dense_bytes"], "flops_dense": dense["flops_dense"]}
    if searches:
        summary["knee_search"] = searches
    sweep.save(summary)

    figures = draw(sweep, summary, summary["knees"], args)
    if args.visualize:
        layer_names = [name.strip() for name in args.visualize_layers.split(",")] if args.visualize_layers else None
        write_visuals(sweep, methods, sorted({row["sparsity"] for row in sweep.rows}), layer_names, logger.experiment)
    log_to_tensorboard(logger, sweep.rows, figures)
    if args.export is not None:
        path = export(model, args, methods[0], datamodule, out_dir)
        print(f"exported {path} ({path.stat().st_size / 1e6:.3f} MB); sweep it with --weights {path} --arch {model.hparams.arch}")

    print_table(sweep.rows, summary["knees"], dense["test_acc"], args.tolerance)
    for method, search in (searches or {}).items():
        print(f"  {method}: knee {100 * search['sparsity']:.1f}% found in {search['test_passes']} test passes")
    print(f"\nwrote {out_dir}/sweep.csv, sweep.json, sweep.png; tensorboard --logdir {args.output_dir or args.log_root}")


if __name__ == "__main__":
    main()
