"""Prune a trained classifier at a sweep of sparsities and test each: how much of the network can go?

    python sweep.py                                   # newest checkpoint, layer-wise L1, 21 levels
    python sweep.py --checkpoint checkpoints/resnet20_cifar10jpeg.ckpt --data_dir demo_data \\
        --methods layerwise,global,random,filters
    python sweep.py --weights model.th --arch resnet56 --mean 0.485,0.456,0.406 --std 0.229,0.224,0.225
    python sweep.py --methods layerwise,global --bn_recalibrate 20 --finetune_epochs 1 --sensitivity --visualize
    python sweep.py --methods global --bn_recalibrate 20 --quantize 8,4 --export 0.6   # files, quantised and ONNX

The entry point: flags -> `SweepConfig` (every check, before anything loads) -> build (the model, the
data, the results folder) -> run (the searches of `magprune.sweep`) -> summarise -> report (tables,
figures, TensorBoard runs and exports in --output_dir: sweep.csv, sweep.json, sweep.png, one run per
curve). Rerunning with the same --output_dir skips finished levels and adds new ones.
"""
import contextlib
import dataclasses
import logging
import os
import sys
import time
import warnings
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.loggers import TensorBoardLogger
from tqdm import tqdm

from datamodule import DATASETS, CIFAR10DataModule, is_image_folder
from lightning_module import ImageClassifier, classifier_from_weights, load_classifier
from magprune.cli import (
    ArgumentParser,
    Failed,
    Interrupted,
    UsageError,
    device_line,
    is_interrupt,
    is_storage_error,
    one_line_errors,
    resolve_gpus,
    resolve_retrain_precision,
)
from magprune.core.export import export_pruned, onnx_counts, torch_counts
from magprune.core.io import newest_checkpoint, weights_digest
from magprune.core.pruning import dense_under_two_of_four, make_permanent
from magprune.errors import InputError
from magprune.report import masks, plots, tables, tensorboard
from magprune.report.summary import summarise
from magprune.sweep.chains import ChainSource, chains, check_rewind_points
from magprune.sweep.config import SweepConfig, add_flags, from_flags
from magprune.sweep.level import LevelTester
from magprune.sweep.ranks import RankFailed, Ranks, launch, mark, share_cpu_threads, stop_children, wait_for_others
from magprune.sweep.searches import Sweep, bisect, grid, layer_sensitivity, plan
from magprune.sweep.store import RowStore, SettingsChanged, hold_folder, saved_sweep, wait_for_folder

DEMO_DATA = Path(__file__).resolve().parent / "demo_data"


def parser() -> ArgumentParser:
    """Every flag of sweep.py: one per setting of `SweepConfig`."""
    parser = ArgumentParser(description=__doc__.split("\n")[0])
    add_flags(parser, SweepConfig)
    return parser


def parse_args(argv=None) -> SweepConfig:
    """The flags as a checked config: a bad value is a one-line error before any model or data loads."""
    return from_flags(SweepConfig, parser().parse_args(argv))


@one_line_errors
def main(argv=None):
    config = parse_args(argv)
    config = dataclasses.replace(config, gpus=resolve_gpus(config.gpus))
    # A Trainer per level would print its device banner, and Lightning 2.6's use of a deprecated
    # torch pytree check its warning, once per level: dozens of lines through the progress bar.
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated")
    if not config.gpus and config.cpu_processes > 1:
        share_cpu_threads(config.cpu_processes)
    ranks = launch(config.gpus or config.cpu_processes, config.num_nodes)
    try:
        return run(config, ranks)
    except RankFailed as error:
        stop_children(ranks)
        raise UsageError(f"{error}; the rows finished so far are kept in {config.output_dir}, rerun to resume") from None
    except BaseException as error:
        if ranks.world == 1:
            raise
        if ranks.is_main:
            stop_children(ranks)
            raise
        mark(Path(config.output_dir), ranks, error)
        if isinstance(error, Interrupted):
            sys.exit(130)  # rank 0 says what was kept
        raise UsageError(f"rank {ranks.rank} of {ranks.world}: {type(error).__name__}: {error}") from None


def run(config: SweepConfig, ranks: Ranks) -> Sweep | None:
    """The sweep as this process takes part in it: all of it, or with several processes its share
    (and on rank 0, the gathering and every output). The results folder is held from the start: a second
    sweep into it is refused before anything loads."""
    say = print if ranks.is_main else (lambda *_, **__: None)
    config = dataclasses.replace(config, output_dir=str(output_folder(config)))
    out_dir = Path(config.output_dir)
    with hold_folder(out_dir, ranks.launch_id) if ranks.is_main else contextlib.nullcontext(wait_for_folder(out_dir, ranks.launch_id)):
        saved_sweep(out_dir)  # a damaged results file is refused before anything loads
        try:
            return sweep_in(config, ranks, say)
        except BaseException as error:
            if is_interrupt(error):
                raise Interrupted(f"{kept(out_dir)}; the same command resumes") from None
            if is_storage_error(error):
                where = error.filename or f"the figures and TensorBoard runs in {out_dir}"
                raise Failed(f"{error.strerror}: {where}; {kept(out_dir)}; free space (or make the folder "
                             "writable) and the same command resumes") from None
            raise


def sweep_in(config: SweepConfig, ranks: Ranks, say) -> Sweep | None:
    """Build, run, summarise, report: the sweep in a folder this process (or its rank 0) holds."""
    say(device_line(config.gpus) + (f"; {ranks.world} processes, the grid's tests dealt out among them" if ranks.world > 1 else ""))
    model, datamodule, rewind_points, config = build(config, ranks, say)
    say(f"results: {config.output_dir}")
    sweep = open_sweep(config, model, datamodule, rewind_points, ranks, say)
    searches = run_searches(sweep, ranks)
    if ranks.world > 1:
        if not ranks.is_main:
            mark(Path(sweep.config.output_dir), ranks)
            return None
        wait_for_others(Path(sweep.config.output_dir), ranks)
        sweep.store.finish(plan(sweep.config))
    summary = summarise_sweep(sweep, model, datamodule, searches)
    report(sweep, summary, model)
    return sweep


def kept(out_dir: Path) -> str:
    """What the folder keeps of this sweep: the tests in its sweep.json (and the ranks' files), each one whole."""
    try:
        rows = RowStore.rows_on_disk(out_dir)
    except InputError:
        rows = 0
    return f"{rows} finished tests are kept in {out_dir}"


def load_model(config: SweepConfig) -> tuple[ImageClassifier, dict, dict, str]:
    """The model, the data module's hyper-parameters it was trained with, its rewind points, and where it came from."""
    if config.weights:
        model, inputs = classifier_from_weights(Path(config.weights), config.arch)
        return model, {"mean": config.mean or inputs["mean"], "std": config.std or inputs["std"]}, {}, config.weights
    path = Path(config.checkpoint) if config.checkpoint else newest_checkpoint()
    if path is None:
        raise UsageError("no checkpoint under checkpoints/; train one with train.py or pass --checkpoint")
    model, data_hparams, rewind_points = load_classifier(path)
    missing = check_rewind_points(config.iterative, rewind_points)
    if missing:
        raise UsageError(f"--iterative: {missing}")
    return model, data_hparams, rewind_points, str(path)


def build(config: SweepConfig, ranks: Ranks, say) -> tuple[ImageClassifier, CIFAR10DataModule, dict, SweepConfig]:
    """The dense model on the test device, its test data, its rewind points, and the config with what they say."""
    model, data_hparams, rewind_points, source = load_model(config)
    say(f"{'weights' if config.weights else 'checkpoint'}: {source}")
    if "2:4" in config.methods:
        dense = dense_under_two_of_four(model.model, config.include_classifier)
        say(f"2:4: {', '.join(dense) or 'no layer'} stays dense (its inputs do not group by four)")
    make_permanent(model)  # masks of a model pruned during training become its dense starting point
    weights_sha256 = weights_digest(model)
    # On the test device from the start: copies, masks and BatchNorm recalibration happen there too.
    model.to(f"cuda:{ranks.local_rank}" if config.gpus else "cpu")
    model.model.to(memory_format=torch.channels_last)  # faster tests on CPUs and GPUs alike
    data_hparams.update(batch_size=config.batch_size, num_workers=0, download=False, test_split=config.eval_split)
    if config.data_dir:
        data_hparams["data_dir"] = config.data_dir
    elif not DATASETS[data_hparams.get("dataset", "cifar10")].finds(data_hparams.get("data_dir", "data")):
        say(f"data: {data_hparams.get('data_dir', 'data')} (where this model was trained) is not here; "
            f"testing on the {len(list(DEMO_DATA.glob('test/*/*')))} images of {DEMO_DATA} instead (--data_dir to choose)")
        data_hparams["data_dir"] = str(DEMO_DATA)
    data_dir = Path(data_hparams["data_dir"])
    if (config.bn_recalibrate or config.finetune_epochs or config.iterative or config.eval_split == "val") \
            and is_image_folder(data_dir) and not (data_dir / "train").is_dir():
        raise UsageError(f"{data_dir} has no training images (train/), which --bn_recalibrate, --finetune_epochs and "
                         "--iterative learn from and --eval_split val holds out; give a --data_dir that has them")
    if config.visualize and config.visualize_layers:
        unknown = [name for name in config.visualize_layers if name not in dict(model.model.named_modules())]
        if unknown:
            raise UsageError(f"--visualize_layers: no layer named {', '.join(unknown)} in this network")
    try:
        datamodule = CIFAR10DataModule(**data_hparams)
        datamodule.prepare_data()
        datamodule.setup("test")
    except InputError as error:
        raise UsageError(f"--data_dir: {error}") from None
    if len(datamodule.classes) != model.hparams.num_classes:
        raise UsageError(f"--data_dir: {datamodule.hparams.data_dir} has {len(datamodule.classes)} classes and the network "
                         f"answers {model.hparams.num_classes}")
    config = dataclasses.replace(
        config, source=source, weights_sha256=weights_sha256, arch=model.hparams.arch, data_dir=str(datamodule.hparams.data_dir),
        mean=tuple(datamodule.hparams.mean), std=tuple(datamodule.hparams.std),
        num_classes=model.hparams.num_classes, image_size=tuple(datamodule.test_set.tensors[0].shape[-2:]),
        device="gpu" if config.gpus else "cpu", retrain_precision=resolve_retrain_precision(config.retrain_precision, config.gpus),
        train_lr=model.hparams.learning_rate,
        train_warmup_epochs=model.hparams.warmup_epochs, train_T_max=model.hparams.T_max,
        flip_test=bool(model.hparams.get("flip_test", False) if config.flip_test is None else config.flip_test))
    return model, datamodule, rewind_points, config


def output_folder(config: SweepConfig) -> Path:
    out_dir = Path(config.output_dir) if config.output_dir else Path(TensorBoardLogger(config.log_root, name="sweep").log_dir)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise UsageError(f"--output_dir: cannot make {out_dir} ({error.strerror}); choose another") from None
    if not os.access(out_dir, os.W_OK | os.X_OK):
        raise UsageError(f"--output_dir: cannot write to {out_dir} (permission denied); choose another")
    return out_dir


def open_sweep(config: SweepConfig, model: ImageClassifier, datamodule, rewind_points: dict, ranks: Ranks, say) -> Sweep:
    """The store of rows (resuming what the folder holds) and the level tester, the experiment's module handed in."""
    try:
        store = RowStore(config, ranks)
    except SettingsChanged:
        raise UsageError(f"{config.output_dir} holds a sweep with other settings or weights; "
                         "choose a new --output_dir to keep both") from None
    if store.rows:
        say(f"resuming: {len(store.rows)} rows of an earlier run are kept")
    if store.config != config:
        say(f"the grid, with the earlier run's: {', '.join(store.config.methods)} at "
            f"{', '.join(f'{100 * level:g}%' for level in store.config.sparsities)}")

    source = None
    if store.config.chain_from:
        try:
            source = ChainSource(Path(config.chain_from), store.config, saved_sweep(Path(config.chain_from)))
        except InputError as error:
            raise UsageError(f"--chain_from: {error}") from None

    def wrap(network, **hparams):
        return ImageClassifier(**{**model.hparams, **hparams}, network=network)

    tester = LevelTester(store.config, model.model, wrap, datamodule, ranks.local_rank, rewind_points)
    return Sweep(store, tester, ranks, chain_source=source)


class TrainingOnBar(L.Callback):
    """A retraining's epoch and batch on the sweep's progress bar, at most once a second: a chain's step or a
    `+FT` level trains for minutes (hours for ResNet-50) between two ticks of the bar."""

    def __init__(self, bar: tqdm):
        self.bar = bar
        self.shown_at = 0.0

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        now = time.monotonic()
        if now - self.shown_at >= 1:
            self.shown_at = now
            self.bar.set_postfix_str(f"training epoch {trainer.current_epoch + 1}/{trainer.max_epochs}, "
                                     f"batch {batch_idx + 1}/{trainer.num_training_batches}")

    def on_train_end(self, trainer, module) -> None:
        self.bar.set_postfix_str("")


def run_searches(sweep: Sweep, ranks: Ranks) -> dict | None:
    """The grid or the bisection, then the chains and the layer sensitivity if asked for; the bisection's searches."""
    config = sweep.config
    rank = f" (rank 0 of {ranks.world})" if ranks.world > 1 else ""

    def bar(desc: str, unit: str):
        def wrap(items):
            shown = tqdm(items, desc=desc + rank, unit=unit, disable=not ranks.is_main)
            sweep.tester.retrain_callbacks = [TrainingOnBar(shown)]
            return shown
        return wrap

    searches = bisect(sweep, bar("knee search", "curve")) if config.find_knee else None
    if not config.find_knee:
        grid(sweep, bar("sweep", "test"))
    if config.iterative:
        chains(sweep, bar("chains", "step"), sweep.chain_source)
    if config.sensitivity:
        layer_sensitivity(sweep, bar("sensitivity", "test"))
    return searches


def summarise_sweep(sweep: Sweep, model: ImageClassifier, datamodule, searches: dict | None) -> dict:
    """The summary (knees, ranges, sizes, smallest file; the searches, float32 accuracy, export), saved in sweep.json."""
    config, tester = sweep.config, sweep.tester
    summary = summarise(sweep.store.rows, config.tolerance, tester.measures.file_bytes, tester.measures.slim_latency, config.knee_rule)
    summary["eval_split"] = config.eval_split  # what every accuracy is measured on
    if isinstance(config.finetune_batches, float) and config.finetune_batches < 1:
        summary["epoch_share"] = config.finetune_batches  # an epoch of retraining saw this share of the training split
    if searches:
        summary["knee_search"] = searches
    if config.precision != "32-true":
        summary.update(precision=config.precision, dense_acc_float32=tester.dense_accuracy_in_float32())
    if config.export is not None:
        summary["export"] = export(config, model.model, datamodule, tester.copies.calibration(config.methods[0], config.seed))
    sweep.store.save(summary)
    return summary


def export(config: SweepConfig, network, datamodule, calibration) -> dict:
    """Write the --export files and check the ONNX one against PyTorch on the test images the sweep used."""
    paths, exported = export_pruned(network, Path(config.output_dir), config.export, config.methods[0], config.include_classifier,
                                    config.seed, config.arch, config.mean, config.std, config.quantize, calibration,
                                    config.image_size)
    onnx = onnx_counts(paths["onnx"], datamodule.plain_test_batches(config.limit_test_batches))
    pytorch = torch_counts(exported, datamodule.plain_test_batches(config.limit_test_batches))
    return {"method": config.methods[0], "sparsity": config.export,
            "files": {kind: {"path": str(path), "bytes": path.stat().st_size} for kind, path in paths.items()},
            "onnx_acc": 100 * onnx[0] / onnx[1], "pytorch_acc": 100 * pytorch[0] / pytorch[1], "images": onnx[1]}


def report(sweep: Sweep, summary: dict, model: ImageClassifier) -> None:
    """Figures, mask pictures and TensorBoard runs in the output folder; the tables on the console."""
    config, rows = sweep.config, sweep.store.rows
    out_dir = Path(config.output_dir)
    title = config.arch + (", on the validation split" if config.eval_split == "val" else "")
    figures = plots.sweep_figures(rows, sweep.store.sensitivity, summary, title, out_dir)
    root_run = TensorBoardLogger(save_dir=str(out_dir), name="", version="")
    if config.visualize:
        accuracy = {(row["method"], row["sparsity"]): row["test_acc"] for row in rows
                    if row["recovery"] == "none" and not row.get("quantize")}
        layers = list(config.visualize_layers or masks.default_layers(model.model))
        masks.write_visuals(model.model, config.methods, sorted({row["sparsity"] for row in rows}), accuracy, out_dir,
                            root_run.experiment, layers, config.include_classifier, config.seed)
    tensorboard.log_sweep(str(out_dir), rows, summary, config.to_json(), figures, root_run.experiment)
    tables.print_summary(rows, summary)
    print(f"\nwrote {out_dir}/sweep.csv, sweep.json, sweep.png; tensorboard --logdir {out_dir}, "
          "then http://localhost:6006/#custom_scalars&_smoothingWeight=0 shows every curve unsmoothed")


if __name__ == "__main__":
    main()
