"""Prune a trained classifier at a sweep of sparsities and test each: how much of the network can go?

    python sweep.py                                   # newest checkpoint, layer-wise L1, 21 levels
    python sweep.py --checkpoint checkpoints/resnet20_cifar10jpeg.ckpt --data_dir demo_data \\
        --methods layerwise,global,random,filters
    python sweep.py --weights model.th --arch resnet56 --mean 0.485,0.456,0.406 --std 0.229,0.224,0.225

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
import tempfile
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.loggers import TensorBoardLogger
from tqdm import tqdm

import plots
from cli import ArgumentParser, UsageError, one_line_errors
from datamodule import CIFAR10_MEAN, CIFAR10_STD, CIFAR10DataModule
from lightning_module import ARCHS, ImageClassifier
from prune_callback import METHODS, PruningCallback, make_permanent

DEFAULT_SPARSITIES = tuple(round(0.05 * step, 2) for step in range(21))
RESULT_COLUMNS = ("curve", "method", "recovery", "sparsity", "achieved_sparsity", "test_acc", "test_loss")


def parse_args(argv=None) -> argparse.Namespace:
    parser = ArgumentParser(description=__doc__.split("\n")[0])
    add = parser.add_argument
    add("--checkpoint", help="Lightning checkpoint to prune (default: the newest under checkpoints/)")
    add("--weights", help="a plain state dict instead of a checkpoint (needs --arch)")
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


def load_weights(path: Path, arch: str | None) -> ImageClassifier:
    """A plain state dict (optionally under 'state_dict', keys optionally prefixed 'module.')."""
    if arch is None:
        raise UsageError("--weights needs --arch to know which network the weights belong to")
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
    return model


def atomic_write(path: Path, write) -> None:
    """Write through a temporary file in the same folder, then rename: a reader never sees half a file."""
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(handle, "w", newline="") as stream:
            write(stream)
        os.replace(temporary, path)
    except BaseException:
        os.unlink(temporary)
        raise


def write_csv(rows: list[dict], stream) -> None:
    columns = list(RESULT_COLUMNS) + sorted({key for row in rows for key in row} - set(RESULT_COLUMNS))
    writer = csv.DictWriter(stream, fieldnames=columns)
    writer.writeheader()
    writer.writerows(rows)


def find_knees(rows: list[dict], dense_acc: float, tolerance: float) -> dict[str, dict]:
    """Per curve: the largest sparsity whose accuracy is within `tolerance` points of the dense model."""
    knees = {}
    for row in sorted(rows, key=lambda row: row["sparsity"]):
        if row["test_acc"] >= dense_acc - tolerance:
            knees[row["curve"]] = row
    return {curve: knees.get(curve, {"sparsity": None, "test_acc": None}) for curve in {row["curve"] for row in rows}}


class Sweep:
    """Runs the levels of one sweep, keeping results on disk after every level so that it can resume."""

    def __init__(self, model, datamodule, args, config: dict, out_dir: Path):
        self.dense_model = model
        self.datamodule = datamodule
        self.args = args
        self.config = config
        self.out_dir = out_dir
        self.rows = self._resume()

    def _resume(self) -> list[dict]:
        results = self.out_dir / "sweep.json"
        if not results.exists():
            return []
        saved = json.loads(results.read_text())
        if saved.get("config") != self.config:
            raise UsageError(
                f"{self.out_dir} holds a sweep with other settings; choose a new --output_dir to keep both"
            )
        return saved["rows"]

    def done(self, curve: str, sparsity: float) -> dict | None:
        return next((row for row in self.rows if row["curve"] == curve and row["sparsity"] == sparsity), None)

    def trainer(self, callbacks) -> L.Trainer:
        return L.Trainer(
            accelerator="gpu" if self.args.gpus else "cpu",
            devices=1,
            logger=False,
            callbacks=callbacks,
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            limit_test_batches=self.args.limit_test_batches,
        )

    def evaluate(self, method: str, sparsity: float, recalibrate_batches: int = 0) -> dict:
        model = copy.deepcopy(self.dense_model)
        callback = PruningCallback(sparsity, method, self.args.include_classifier, self.args.seed, recalibrate_batches)
        metrics = self.trainer([callback]).test(model, datamodule=self.datamodule, verbose=False)[0]
        recovery = "bn" if recalibrate_batches else "none"
        return {
            "curve": method + ("+BN" if recalibrate_batches else ""),
            "method": method,
            "recovery": recovery,
            "sparsity": sparsity,
            "achieved_sparsity": callback.report["sparsity"],
            "test_acc": 100 * metrics["test/acc"],
            "test_loss": metrics["test/loss"],
        }

    def run(self, methods: list[str], sparsities: list[float]) -> list[dict]:
        plan = [(method, 0, level) for method in methods for level in sparsities]
        if self.args.bn_recalibrate:
            plan += [(method, self.args.bn_recalibrate, level) for method in methods for level in sparsities]
        for method, recalibrate, level in tqdm(plan, desc="sweep", unit="level"):
            curve = method + ("+BN" if recalibrate else "")
            if self.done(curve, level) is None:
                self.rows.append(self.evaluate(method, level, recalibrate))
                self.save()
        return self.rows

    def save(self, summary: dict | None = None) -> None:
        document = {"config": self.config, "rows": self.rows, **({"summary": summary} if summary else {})}
        atomic_write(self.out_dir / "sweep.json", lambda stream: json.dump(document, stream, indent=1))
        atomic_write(self.out_dir / "sweep.csv", lambda stream: write_csv(self.rows, stream))


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
    print(f"\nlargest sparsity within {tolerance:g} points of dense ({dense_acc:.2f}%):")
    for curve in curves:
        knee = knees[curve]
        answer = "none" if knee["sparsity"] is None else f"{100 * knee['sparsity']:.1f}% -> {knee['test_acc']:.2f}%"
        print(f"  {curve:<{width}} {answer}")


def log_to_tensorboard(logger: TensorBoardLogger, rows: list[dict], figure) -> None:
    for row in rows:
        family = "sweep" if row["curve"] == "layerwise" else f"sweep-{row['curve']}"
        step = round(100 * row["sparsity"])
        logger.log_metrics(
            {f"{family}/test_acc": row["test_acc"], f"{family}/test_loss": row["test_loss"],
             f"{family}/sparsity": 100 * row["achieved_sparsity"]},
            step=step,
        )
    logger.experiment.add_figure("sweep/accuracy_vs_sparsity", figure, close=False)
    logger.experiment.flush()


def make_logger(args) -> TensorBoardLogger:
    if args.output_dir:
        return TensorBoardLogger(save_dir=args.output_dir, name="", version="")
    return TensorBoardLogger(args.log_root, name="sweep")


@one_line_errors
def main(argv=None):
    args = parse_args(argv)
    # A Trainer per level would print its device banner dozens of times.
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
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

    if args.weights:
        model = load_weights(Path(args.weights), args.arch)
        source = str(args.weights)
        data_hparams = {"mean": parse_channels(args.mean, CIFAR10_MEAN, "--mean"),
                        "std": parse_channels(args.std, CIFAR10_STD, "--std")}
    else:
        path = Path(args.checkpoint) if args.checkpoint else newest_checkpoint()
        print(f"checkpoint: {path}")
        model, data_hparams = load_checkpoint(path)
        source = str(path)
    make_permanent(model)  # masks of a model pruned during training become its dense starting point
    data_hparams.update(batch_size=args.batch_size, num_workers=0, download=False)
    if args.data_dir:
        data_hparams["data_dir"] = args.data_dir
    datamodule = CIFAR10DataModule(**data_hparams)
    datamodule.prepare_data()
    datamodule.setup("test")

    logger = make_logger(args)
    out_dir = Path(logger.log_dir)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / ".write_test").touch()
        (out_dir / ".write_test").unlink()
    except OSError as error:
        raise UsageError(f"cannot write to {out_dir} ({error.strerror}); choose another --output_dir") from None
    config = {"source": source, "arch": model.hparams.arch, "methods": methods, "sparsities": sparsities,
              "include_classifier": args.include_classifier, "bn_recalibrate": args.bn_recalibrate,
              "data_dir": str(datamodule.hparams.data_dir), "limit_test_batches": args.limit_test_batches,
              "seed": args.seed}
    print(f"results: {out_dir}")

    sweep = Sweep(model, datamodule, args, config, out_dir)
    rows = sweep.run(methods, sparsities)
    dense_acc = next(row["test_acc"] for row in rows if row["sparsity"] == 0 and row["recovery"] == "none")
    knees = find_knees(rows, dense_acc, args.tolerance)
    summary = {"dense_acc": dense_acc, "tolerance": args.tolerance,
               "knees": {curve: {"sparsity": knee["sparsity"], "test_acc": knee["test_acc"]} for curve, knee in knees.items()}}
    sweep.save(summary)

    figure = plots.plot_accuracy_vs_sparsity(rows, dense_acc, args.tolerance, knees, f"{model.hparams.arch}: accuracy vs sparsity")
    figure.savefig(out_dir / "sweep.png")
    log_to_tensorboard(logger, rows, figure)
    print_table(rows, knees, dense_acc, args.tolerance)
    print(f"\nwrote {out_dir}/sweep.csv, sweep.json, sweep.png; tensorboard --logdir {args.output_dir or args.log_root}")


if __name__ == "__main__":
    main()
