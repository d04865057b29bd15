"""Prune a trained classifier at a sweep of sparsities and test each: how much of the network can go?

    python sweep.py                                   # newest checkpoint, layer-wise L1, 21 levels
    python sweep.py --checkpoint checkpoints/resnet20_cifar10jpeg.ckpt --data_dir demo_data \\
        --methods layerwise,global,random,filters
    python sweep.py --weights model.th --arch resnet56 --mean 0.485,0.456,0.406 --std 0.229,0.224,0.225
    python sweep.py --methods layerwise,global --bn_recalibrate 20 --finetune_epochs 1 --sensitivity --visualize
    python sweep.py --methods global --bn_recalibrate 20 --quantize 8,4 --export 0.6   # files, quantised and ONNX

The entry point only: it reads the flags into a `SweepConfig`, loads the model and the data, and
hands them to `sweep_engine.Sweep`; `results`, `plots`, `tensorboard_log`, `visualize` and
`export` turn what the sweep measured into tables, figures and files in --output_dir
(sweep.csv, sweep.json, sweep.png, one TensorBoard run per curve, the exports). Rerunning with the same
--output_dir skips finished levels and adds new ones.
"""
import argparse
import importlib.util
import logging
import math
import warnings
from pathlib import Path

import torch
from lightning.pytorch.loggers import TensorBoardLogger
from tqdm import tqdm

import plots
import results
import tensorboard_log
import visualize
from cli import ArgumentParser, UsageError, device_line, lightning_limit, one_line_errors, resolve_gpus
from datamodule import CIFAR10DataModule, has_cifar10, is_image_folder
from export import export_pruned, onnx_counts, torch_counts
from loading import load_checkpoint, load_weights, newest_checkpoint, weights_digest
from models import ARCHS
from pruning import METHODS, make_permanent
from quantize import BITS
from sweep_engine import SettingsChanged, Sweep, SweepConfig
from sweep_ranks import RankFailed, Ranks, launch, mark, share_cpu_threads, stop_children, wait_for_others

DEFAULT_SPARSITIES = tuple(round(0.05 * step, 2) for step in range(21))
DEMO_DATA = Path(__file__).resolve().parent / "demo_data"


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
    add("--methods", default="layerwise",
        help="comma-separated pruning methods, one curve each (default: layerwise): "
             + "; ".join(f"{name}: {method.description}" for name, method in METHODS.items()))
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
        help="bisect for each curve's knee (each method, one-shot and after each recovery asked for) instead of "
             "testing every level of --sparsities")
    add("--knee_resolution", type=float, default=0.01, help="with --find_knee: stop when the bracket is this narrow (0.002 or more)")
    add("--export", type=float, default=None, metavar="S",
        help="write the model pruned at sparsity S (first method, one-shot) as a compact .ptz, an .onnx checked with "
             "onnxruntime on the test split, and with --quantize a quantised .ptz per bit width")
    add("--quantize", default="", metavar="BITS",
        help="comma-separated bit widths (8, 4): every curve gains quantised twins ('+Q8': per-channel linear; "
             "'+Q4': a 16-value k-means codebook per layer) and every row the measured size of its export file")
    add("--visualize", action="store_true",
        help="write a GIF of the masks, a per-layer sparsity chart and TensorBoard images and histograms")
    add("--visualize_layers", default=None,
        help="comma-separated layer names for the GIF (default: first conv, a middle conv, the classifier)")
    add("--gpus", type=int,
        help="GPUs per machine to test on, one process each, the grid's tests dealt out among them; 0 is the CPU "
             "(default: 1 if there is one, else 0)")
    add("--cpu_processes", type=int, default=1, help="with --gpus 0: CPU processes to deal the grid's tests to, "
             "each with an equal share of the cores (OMP_NUM_THREADS overrides)")
    add("--num_nodes", type=int, default=1,
        help="machines, each running --gpus (or --cpu_processes) processes: under torchrun or SLURM (one task per device)")
    add("--batch_size", type=int, default=256, help="images per batch: of the tests, BatchNorm recalibration and fine-tuning")
    add("--precision", default="32-true", choices=("32-true", "bf16-mixed", "16-mixed"),
        help="Lightning precision of the tests; other than 32-true, the dense float32 accuracy is reported beside it")
    add("--limit_test_batches", type=float, default=None, help="Lightning: fraction or number of test batches")
    add("--flip_test", action=argparse.BooleanOptionalAction,
        help="answer each test image with the mean logits of it and its mirror image (default: as the checkpoint was validated)")
    add("--data_dir", help="CIFAR-10 location (default: the one the checkpoint was trained on, else the shipped demo_data/)")
    add("--seed", type=int, default=0, help="seed of the random method's masks")
    add("--seeds", type=int, default=1, metavar="K",
        help="test K random masks per level (seeds --seed, --seed+1, ...): the row is their mean, its error bar their spread "
             "and the test images' binomial error together, its 95%% interval Student's t")
    add("--output_dir", help="folder for this sweep's results and TensorBoard run; reusing one resumes it, adding any new levels and methods")
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




def check_args(args) -> tuple[list[float], list[str]]:
    sparsities = parse_fractions(args.sparsities, "--sparsities")
    if 0.0 not in sparsities:
        sparsities.insert(0, 0.0)  # the dense model is the reference every knee is measured against
    steps = [tensorboard_log.sparsity_step(level) for level in sparsities]
    for below, above, step, next_step in zip(sparsities, sparsities[1:], steps, steps[1:]):
        if step == next_step:
            raise UsageError(f"--sparsities: {below:g} and {above:g} are closer than 0.1%, the finest step TensorBoard is given")
    methods = [method.strip() for method in args.methods.split(",") if method.strip()]
    unknown = [method for method in methods if method not in METHODS]
    if unknown or not methods:
        raise UsageError(f"--methods: unknown {', '.join(unknown) or 'empty list'}; choose from {', '.join(METHODS)}")
    if args.batch_size < 1:
        raise UsageError(f"--batch_size must be at least 1, got {args.batch_size}")
    if args.gpus < 0 or args.gpus > torch.cuda.device_count():
        raise UsageError(f"--gpus {args.gpus}: this machine has {torch.cuda.device_count()} CUDA GPUs")
    if args.cpu_processes < 1 or args.num_nodes < 1:
        raise UsageError("--cpu_processes and --num_nodes count processes and machines: 1 or more")
    if processes(args) > 1:
        for flag, reason in (("find_knee", "each test of the bisection depends on the one before"),
                             ("sensitivity", "it is not dealt out among processes")):
            if getattr(args, flag):
                raise UsageError(f"--{flag} runs in one process ({reason}); drop it, or --gpus/--cpu_processes/--num_nodes")
        if not args.output_dir:
            raise UsageError("a sweep of several processes needs --output_dir: the folder they all write to")
    try:
        args.quantize = tuple(sorted({int(item) for item in args.quantize.split(",") if item.strip()}, reverse=True))
    except ValueError:
        raise UsageError(f"--quantize takes comma-separated bit widths, e.g. 8,4; got {args.quantize!r}") from None
    if set(args.quantize) - set(BITS):
        raise UsageError(f"--quantize: {', '.join(map(str, sorted(set(args.quantize) - set(BITS))))} bits is not offered; choose from 8, 4")
    if args.seeds < 1:
        raise UsageError(f"--seeds counts masks per level: 1 or more, got {args.seeds}")
    if args.seeds > 1 and any(METHODS[method].seeded for method in methods) and importlib.util.find_spec("scipy") is None:
        raise UsageError("--seeds: the spread of K masks gets a Student-t interval, which needs scipy (pip install scipy)")
    if args.bn_recalibrate < 0 or args.finetune_epochs < 0:
        raise UsageError("--bn_recalibrate and --finetune_epochs count batches and epochs: 0 or more")
    if not (math.isfinite(args.finetune_lr) and args.finetune_lr > 0):
        raise UsageError(f"--finetune_lr must be a learning rate above 0, got {args.finetune_lr}")
    if not math.isfinite(args.tolerance) or args.tolerance < 0:
        raise UsageError(f"--tolerance must be a number of accuracy points, 0 or more, got {args.tolerance}")
    if args.export is not None and not (math.isfinite(args.export) and 0 <= args.export <= 1):
        raise UsageError(f"--export: sparsity {args.export} is outside [0, 1]")
    # A bisection's last level lies over half the resolution from its neighbours: two steps keep them a step apart.
    finest = 2 / tensorboard_log.STEPS_PER_UNIT
    if args.find_knee and not finest <= args.knee_resolution < 1:
        raise UsageError(f"--knee_resolution must lie in [{finest:g}, 1), got {args.knee_resolution}")
    for flag in ("limit_test_batches", "finetune_batches"):
        value = getattr(args, flag)
        if value is not None and not (math.isfinite(value) and value > 0):
            raise UsageError(f"--{flag} must be a fraction in (0, 1] or a number of batches, got {value}")
    return sparsities, methods


def processes(args) -> int:
    return (args.gpus or args.cpu_processes) * args.num_nodes


def load_model(args):
    """The model, the data module's hyper-parameters it was trained with, and where it came from."""
    if args.weights:
        model, inputs = load_weights(Path(args.weights), args.arch)
        data_hparams = {"mean": parse_channels(args.mean, inputs["mean"], "--mean"),
                        "std": parse_channels(args.std, inputs["std"], "--std")}
        return model, data_hparams, str(args.weights)
    path = Path(args.checkpoint) if args.checkpoint else newest_checkpoint()
    model, data_hparams = load_checkpoint(path)
    return model, data_hparams, str(path)


def output_folder(args) -> Path:
    out_dir = Path(args.output_dir) if args.output_dir else Path(TensorBoardLogger(args.log_root, name="sweep").log_dir)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / ".write_test").touch()
        (out_dir / ".write_test").unlink()
    except OSError as error:
        raise UsageError(f"cannot write to {out_dir} ({error.strerror}); choose another --output_dir") from None
    return out_dir


def visualize_layers(args, network) -> list[str]:
    names = [name.strip() for name in args.visualize_layers.split(",")] if args.visualize_layers else visualize.default_layers(network)
    unknown = [name for name in names if name not in dict(network.named_modules())]
    if unknown:
        raise UsageError(f"--visualize_layers: no layer named {', '.join(unknown)} in this network")
    return names


def export(args, network, config: SweepConfig, datamodule, out_dir: Path) -> dict:
    """Write the --export files and check the ONNX one against PyTorch on the test images the sweep used."""
    paths, exported = export_pruned(network, out_dir, args.export, config.methods[0], config.include_classifier, config.seed,
                                    config.arch, config.mean, config.std, config.quantize)
    onnx = onnx_counts(paths["onnx"], datamodule.plain_test_batches(config.limit_test_batches))
    pytorch = torch_counts(exported, datamodule.plain_test_batches(config.limit_test_batches))
    return {"method": config.methods[0], "sparsity": args.export,
            "files": {kind: {"path": str(path), "bytes": path.stat().st_size} for kind, path in paths.items()},
            "onnx_acc": 100 * onnx[0] / onnx[1], "pytorch_acc": 100 * pytorch[0] / pytorch[1], "images": onnx[1]}


@one_line_errors
def main(argv=None):
    args = parse_args(argv)
    args.gpus = resolve_gpus(args.gpus)
    # A Trainer per level would print its device banner, and Lightning 2.6's use of a deprecated
    # torch pytree check its warning, once per level: dozens of lines through the progress bar.
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated")
    sparsities, methods = check_args(args)
    if not args.gpus and args.cpu_processes > 1:
        share_cpu_threads(args.cpu_processes)
    ranks = launch(args.gpus or args.cpu_processes, args.num_nodes)
    try:
        return run(args, sparsities, methods, ranks)
    except RankFailed as error:
        stop_children(ranks)
        raise UsageError(f"{error}; the rows finished so far are kept in {args.output_dir}, rerun to resume") from None
    except BaseException as error:
        if ranks.world == 1:
            raise
        if ranks.is_main:
            stop_children(ranks)
            raise
        mark(Path(args.output_dir), ranks, error)
        if isinstance(error, KeyboardInterrupt):
            raise
        raise UsageError(f"rank {ranks.rank} of {ranks.world}: {type(error).__name__}: {error}") from None


def run(args, sparsities: list[float], methods: list[str], ranks: Ranks):
    """The sweep as this process takes part in it: all of it, or with several processes, its share
    (and on rank 0, the gathering and every output)."""
    say = print if ranks.is_main else (lambda *_, **__: None)
    say(device_line(args.gpus) + (f"; {ranks.world} processes, the grid's tests dealt out among them" if ranks.world > 1 else ""))
    model, data_hparams, source = load_model(args)
    say(f"{'weights' if args.weights else 'checkpoint'}: {source}")
    make_permanent(model)  # masks of a model pruned during training become its dense starting point
    weights_sha256 = weights_digest(model)
    # On the test device from the start: copies, masks and BatchNorm recalibration happen there too.
    model.to(f"cuda:{ranks.local_rank}" if args.gpus else "cpu")
    model.model.to(memory_format=torch.channels_last)  # faster tests on CPUs and GPUs alike
    data_hparams.update(batch_size=args.batch_size, num_workers=0, download=False)
    if args.data_dir:
        data_hparams["data_dir"] = args.data_dir
    elif not has_cifar10(data_hparams.get("data_dir", "data")):
        say(f"data: {data_hparams.get('data_dir', 'data')} (where this model was trained) is not here; "
            f"testing on the {len(list(DEMO_DATA.glob('test/*/*')))} images of {DEMO_DATA} instead (--data_dir to choose)")
        data_hparams["data_dir"] = str(DEMO_DATA)
    data_dir = Path(data_hparams["data_dir"])
    if (args.bn_recalibrate or args.finetune_epochs) and is_image_folder(data_dir) and not (data_dir / "train").is_dir():
        raise UsageError(f"{data_dir} has no training images (train/), which --bn_recalibrate and --finetune_epochs "
                         "learn from; give a --data_dir that has them")
    datamodule = CIFAR10DataModule(**data_hparams)
    datamodule.prepare_data()
    datamodule.setup("test")
    out_dir = output_folder(args)
    say(f"results: {out_dir}")
    config = SweepConfig(
        source=source, weights_sha256=weights_sha256, arch=model.hparams.arch, methods=tuple(methods), sparsities=tuple(sparsities),
        data_dir=str(datamodule.hparams.data_dir), mean=tuple(datamodule.hparams.mean), std=tuple(datamodule.hparams.std),
        output_dir=str(out_dir), include_classifier=args.include_classifier, bn_recalibrate=args.bn_recalibrate,
        finetune_epochs=args.finetune_epochs, finetune_lr=args.finetune_lr,
        finetune_batches=lightning_limit(args.finetune_batches), find_knee=args.find_knee,
        knee_resolution=args.knee_resolution,
        sensitivity_sparsities=tuple(parse_fractions(args.sensitivity_sparsities, "--sensitivity_sparsities")) if args.sensitivity else (),
        tolerance=args.tolerance, batch_size=args.batch_size, limit_test_batches=lightning_limit(args.limit_test_batches),
        seed=args.seed, seeds=args.seeds, quantize=args.quantize, device="gpu" if args.gpus else "cpu", precision=args.precision,
        flip_test=bool(model.hparams.get("flip_test", False) if args.flip_test is None else args.flip_test),
    )
    layer_names = visualize_layers(args, model.model) if args.visualize else None
    try:
        sweep = Sweep(config, model, datamodule, ranks)
    except SettingsChanged:
        raise UsageError(f"{out_dir} holds a sweep with other settings or weights; choose a new --output_dir to keep both") from None
    if sweep.rows:
        say(f"resuming: {len(sweep.rows)} rows of an earlier run are kept")
    if sweep.config != config:
        say(f"the grid, with the earlier run's: {', '.join(sweep.config.methods)} at "
            f"{', '.join(f'{100 * level:g}%' for level in sweep.config.sparsities)}")
        config = sweep.config

    searches = sweep.bisect(lambda curves: tqdm(curves, desc="knee search", unit="curve")) if args.find_knee else None
    if not args.find_knee:
        sweep.grid(lambda plan: tqdm(plan, desc="sweep" + (f" (rank 0 of {ranks.world})" if ranks.world > 1 else ""),
                                     unit="test", disable=not ranks.is_main))
    if args.sensitivity:
        sweep.layer_sensitivity(lambda plan: tqdm(plan, desc="sensitivity", unit="test"))
    if ranks.world > 1:
        if not ranks.is_main:
            mark(out_dir, ranks)
            return None
        wait_for_others(out_dir, ranks)
        sweep.gather()

    dense = results.dense_row(sweep.rows)
    knees = results.find_knees(sweep.rows, dense, args.tolerance)
    summary = {"dense_acc": dense["test_acc"], "tolerance": args.tolerance,
               "knees": results.knee_summary(sweep.rows, knees, sweep.file_bytes,
                                             results.knee_ranges(sweep.rows, dense, args.tolerance), sweep.slim_latency),
               "dense_bytes": dense["dense_bytes"], "flops_dense": dense["flops_dense"]}
    if searches:
        summary["knee_search"] = searches
    smallest = results.smallest_file(sweep.rows, dense, args.tolerance)
    if smallest:
        summary["smallest_file"] = {key: smallest[key] for key in ("curve", "sparsity", "test_acc", "test_acc_se", "disk_bytes")}
        summary["smallest_file"]["times_smaller"] = dense["dense_bytes"] / smallest["disk_bytes"]
    if args.precision != "32-true":
        summary["dense_acc_float32"] = sweep.dense_accuracy_in_float32()
        print(f"dense accuracy: {dense['test_acc']:.2f}% in {args.precision}, {summary['dense_acc_float32']:.2f}% in float32")
    if args.export is not None:
        summary["export"] = export(args, model.model, config, datamodule, out_dir)
    sweep.save(summary)

    figures = plots.sweep_figures(sweep.rows, sweep.sensitivity, summary, config.arch, out_dir)
    root_run = TensorBoardLogger(save_dir=str(out_dir), name="", version="")
    if args.visualize:
        accuracy = {(row["method"], row["sparsity"]): row["test_acc"] for row in sweep.rows
                    if row["recovery"] == "none" and not row.get("quantize")}
        visualize.write_visuals(model.model, config.methods, sorted({row["sparsity"] for row in sweep.rows}), accuracy, out_dir,
                                root_run.experiment, layer_names, args.include_classifier, args.seed)
    tensorboard_log.log_sweep(str(out_dir), sweep.rows, summary, config.to_json(), figures, root_run.experiment)
    results.print_table(sweep.rows, summary["knees"], dense["test_acc"], args.tolerance)
    if smallest:
        print(f"\nsmallest file within {results.points(args.tolerance)} of dense: {smallest['curve']} at "
              f"{results.percent(smallest['sparsity'])}%, {smallest['disk_bytes'] / 1e3:.1f} kB, "
              f"{summary['smallest_file']['times_smaller']:.1f}x smaller than the float32 parameters ({dense['dense_bytes'] / 1e3:.1f} kB)")
    for written in summary.get("export", {}).get("files", {}).values():
        print(f"exported {written['path']} ({written['bytes'] / 1e3:.1f} kB)")
    if "export" in summary:
        checked = summary["export"]
        print(f"ONNX under onnxruntime: {checked['onnx_acc']:.2f}% against PyTorch's {checked['pytorch_acc']:.2f}% "
              f"on the same {checked['images']} test images")
    for method, search in (searches or {}).items():
        print(f"  {method}: knee {100 * search['sparsity']:.1f}% found in {search['test_passes']} test passes")
    print(f"\nwrote {out_dir}/sweep.csv, sweep.json, sweep.png; tensorboard --logdir {out_dir}, "
          "then http://localhost:6006/#custom_scalars&_smoothingWeight=0 shows every curve unsmoothed")
    return sweep


if __name__ == "__main__":
    main()
