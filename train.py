"""Train a network on CIFAR-10 (or any data set of `DATASETS`) with Lightning, keep the best checkpoint by validation accuracy, test it.

    python train.py --gpus 1                                    # the experiment: ResNet-50, 60 epochs
    python train.py --arch resnet20 --data_dir ../shared/data/cifar10-jpeg --epochs 30 --T_max 30
    python train.py --resume                                    # continue the newest interrupted run
    python train.py --gpus 1 --prune_to 0.9                     # prune gradually to 90% while training
    python train.py --recipe fast --arch resnet20 --data_dir ../shared/data/cifar10-jpeg --epochs 40 --flip_test  # the shipped model
    python train.py --recipe fast --arch resnet20 --init_from checkpoints/resnet20_cifar10jpeg.ckpt --epochs 10 \
        --warmup_epochs 0 --learning_rate 0.02 --data_dir ../shared/data/cifar10-jpeg   # a warm restart: 10 more epochs

Each run writes TensorBoard logs to lightning_logs/train/version_N and checkpoints (best by val/acc,
and last) to checkpoints/<arch>/version_N, so no run overwrites another's. With --prune_to, the best
checkpoint is the best by val/acc among the epochs that ended at the final sparsity.
"""
import argparse
import sys
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint, TQDMProgressBar
from lightning.pytorch.loggers import TensorBoardLogger

from datamodule import DATASETS, CIFAR10DataModule
from lightning_module import ImageClassifier, load_classifier
from magprune.cli import (
    ArgumentParser,
    Interrupted,
    UsageError,
    device_line,
    is_interrupt,
    flag_type,
    one_line_errors,
    resolve_gpus,
)
from magprune.core.nets import ARCHS, check_arch
from magprune.core.pruning import METHODS, make_permanent
from magprune.errors import InputError
from magprune.sweep.config import image_size, lightning_limit
from prune_callback import GradualPruningCallback, RewindPoints

CHECKPOINT_ROOT = Path("checkpoints")
LOG_ROOT = Path("lightning_logs")

# What each --recipe puts in the flags the user leaves out. `original` is the student experiment;
# `fast` reaches a strong model in few epochs: a linear warm-up into one cosine that ends at zero,
# Nesterov momentum, label smoothing, no weight decay on BatchNorm and biases, and a learning rate
# that grows with the batch (0.1 per 128 images).
RECIPES = {
    "original": {
        "learning_rate_per_128": None, "learning_rate": 0.01, "epochs": 60, "T_max": 20, "warmup_epochs": 0,
        "nesterov": False, "label_smoothing": 0.0, "decay_norms_and_biases": True,
    },
    "fast": {
        "learning_rate_per_128": 0.1, "learning_rate": None, "epochs": 30, "T_max": None, "warmup_epochs": 2,
        "nesterov": True, "label_smoothing": 0.1, "decay_norms_and_biases": False,
    },
}


def parser() -> ArgumentParser:
    """Every flag of train.py, with its default and help."""
    parser = ArgumentParser(description=__doc__.split("\n")[0])
    add = parser.add_argument
    add("--arch", default="resnet50", type=flag_type(arch_name),
        help=f"network to train: {', '.join(ARCHS)}, or tv:<name> for any classifier torchvision ships, such as "
             "tv:mobilenet_v3_small (default: resnet50)")
    add("--recipe", default="original", choices=tuple(RECIPES),
        help="defaults for the flags below that are not given: the original experiment's, or 'fast' "
             "(warm-up + cosine to zero, Nesterov, label smoothing 0.1, no decay on BatchNorm and biases, "
             "learning rate 0.1 per 128 images, 30 epochs, channels-last, bf16 on GPUs that have it)")
    add("--batch_size", type=int, default=128, help="images per batch and device")
    add("--learning_rate", type=float, help="SGD learning rate at the top of the cosine (original: 0.01)")
    add("--momentum", type=float, default=0.9, help="SGD momentum")
    add("--nesterov", action=argparse.BooleanOptionalAction, help="Nesterov momentum (original: off; fast: on)")
    add("--weight_decay", type=float, default=5e-4, help="L2 penalty on the weights")
    add("--decay_norms_and_biases", action=argparse.BooleanOptionalAction,
        help="apply the weight decay to BatchNorm and bias parameters too (original: on; fast: off)")
    add("--label_smoothing", type=float, help="cross-entropy label smoothing in training (original: 0; fast: 0.1)")
    add("--epochs", type=int, help="training epochs (original: 60; fast: 30)")
    add("--warmup_epochs", type=int, help="epochs of linear learning-rate warm-up (original: 0; fast: 2)")
    add("--T_max", type=int,
        help="cosine half-period in epochs (original: 20 of 60 epochs; fast: the epochs after warm-up)")
    add_run_flags(add)
    return parser


def add_run_flags(add) -> None:
    """The flags of the devices, the data, the run's files and limits, and gradual pruning."""
    add("--gpus", type=int, help="GPUs to train on; 0 is the CPU, more than 1 uses DDP (default: 1 if there is one, else 0)")
    add("--cpu_processes", type=int, default=1, help="with --gpus 0: CPU processes, more than 1 uses DDP (gloo)")
    add("--dataset", default="cifar10", choices=tuple(DATASETS),
        help="which data: " + "; ".join(f"{name}: {entry.help}" for name, entry in DATASETS.items()))
    add("--data_dir", default="data", help="where the data is: torchvision's download, or train/ and test/ class folders")
    add("--image_size", type=flag_type(image_size), default=None, metavar="HxW",
        help="resize every image to this size (64, or 64x48 as height x width; default: as the files are)")
    add("--seed", type=int, default=42, help="seeds weights, the train/validation split and augmentation")
    add("--num_workers", type=int, default=2, help="DataLoader worker processes")
    add("--precision", choices=("32-true", "bf16-mixed", "16-mixed"),
        help="Lightning precision (default 32-true; fast on a GPU with bf16: bf16-mixed)")
    add("--channels_last", action=argparse.BooleanOptionalAction,
        help="NHWC memory layout, faster convolutions (original: off; fast: on)")
    add("--flip_test", action="store_true",
        help="validate and test on the mean logits of each image and its mirror image (test-time flip; off in both recipes)")
    add("--compile", action="store_true",
        help="torch.compile the network (pays off on a GPU; the first steps are slow while it compiles)")
    add("--resume", nargs="?", const="newest", help="continue from a last.ckpt (default: the newest under --checkpoint_root)")
    add("--init_from", help="start from this checkpoint's weights in a new run (fresh optimizer and schedule: a warm restart)")
    add("--checkpoint_root", default=str(CHECKPOINT_ROOT), help="where runs keep their checkpoints")
    add("--log_root", default=str(LOG_ROOT), help="where TensorBoard runs go")
    add("--limit_train_batches", type=flag_type(lightning_limit), default=None,
        help="Lightning: a fraction (0.25; 1.0 is all) or a number (1 is one) of training batches")
    add("--limit_val_batches", type=flag_type(lightning_limit), default=None,
        help="Lightning: a fraction (0.25; 1.0 is all) or a number (1 is one) of validation batches")
    add("--limit_test_batches", type=flag_type(lightning_limit), default=None,
        help="Lightning: a fraction (0.25; 1.0 is all) or a number (1 is one) of test batches")
    add("--prune_to", type=float, default=0.0,
        help="prune during training, on Zhu & Gupta's cubic schedule, to this final sparsity in [0, 1]; 0 is off")
    add("--prune_method", default="layerwise", choices=tuple(name for name, method in METHODS.items() if method.levels is None and not method.calibrated),
        help="which weights --prune_to removes (a method of fixed levels, such as 2:4, cannot rise gradually)")
    add("--prune_start_epoch", type=int, default=0, help="first epoch of the pruning schedule (counted from 0)")
    add("--prune_end_epoch", type=int, default=None,
        help="epoch at which pruning ends: the final sparsity comes on the batch before it (default: 3/4 of --epochs)")
    add("--prune_every_steps", type=int, default=100,
        help="batches between pruning steps, Zhu & Gupta's Δt (default 100: 3 or 4 per CIFAR-10 epoch at batch 128)")
    add("--rewind_step", type=int, default=None, metavar="N",
        help="keep the weights at the start and after N optimizer steps in every checkpoint, for iterative pruning with "
             "rewinding (sweep.py --iterative weight_rewind,init_reset)")
    add("--fast_dev_run", action="store_true", help="Lightning: one batch of each stage, nothing written")


def arch_name(text: str) -> str:
    problem = check_arch(text)
    if problem:
        raise ValueError(problem)
    return text


def parse_args(argv=None) -> argparse.Namespace:
    """The flags, each left out filled from the recipe."""
    args = parser().parse_args(argv)
    args.gpus = resolve_gpus(args.gpus)
    apply_recipe(args)
    if args.prune_end_epoch is None:
        args.prune_end_epoch = args.epochs * 3 // 4
    return args


def apply_recipe(args: argparse.Namespace) -> None:
    """Fill every flag the user left out from the chosen recipe; a flag given explicitly wins."""
    recipe = RECIPES[args.recipe]
    for name in ("epochs", "warmup_epochs", "nesterov", "label_smoothing", "decay_norms_and_biases"):
        if getattr(args, name) is None:
            setattr(args, name, recipe[name])
    if args.learning_rate is None:
        per_128 = recipe["learning_rate_per_128"]
        args.learning_rate = recipe["learning_rate"] if per_128 is None else per_128 * args.batch_size / 128
    if args.T_max is None:
        args.T_max = recipe["T_max"] or max(1, args.epochs - args.warmup_epochs)
    fast = args.recipe == "fast"
    if args.channels_last is None:
        args.channels_last = fast
    if args.precision is None:
        gpu_bf16 = args.gpus > 0 and torch.cuda.is_available() and torch.cuda.is_bf16_supported()
        args.precision = "bf16-mixed" if fast and gpu_bf16 else "32-true"


def newest_last_checkpoint(checkpoint_root: Path) -> Path:
    candidates = sorted(checkpoint_root.glob("*/version_*/last.ckpt"), key=lambda path: path.stat().st_mtime)
    if not candidates:
        raise UsageError(f"--resume: no last.ckpt under {checkpoint_root}/; train without --resume first")
    return candidates[-1]


def missing_file(path: Path) -> str:
    return "a folder, not a checkpoint file" if path.is_dir() else "no such checkpoint file"


def check_args(args):
    if args.gpus < 0 or args.cpu_processes < 1:
        raise UsageError("--gpus must be 0 or more and --cpu_processes 1 or more")
    if args.gpus > 0 and torch.cuda.device_count() < args.gpus:
        raise UsageError(f"--gpus {args.gpus} asked for, {torch.cuda.device_count()} CUDA GPUs found; use --gpus 0 for the CPU")
    if args.batch_size < 1:
        raise UsageError(f"--batch_size must be at least 1, got {args.batch_size}")
    if args.epochs < 1 or args.T_max < 1:
        raise UsageError("--epochs and --T_max must be at least 1")
    if args.warmup_epochs < 0 or args.warmup_epochs >= args.epochs:
        raise UsageError(f"--warmup_epochs must lie in [0, --epochs), got {args.warmup_epochs}")
    if not 0 <= args.label_smoothing < 1:
        raise UsageError(f"--label_smoothing must lie in [0, 1), got {args.label_smoothing}")
    if args.resume and args.resume != "newest" and not Path(args.resume).is_file():
        raise UsageError(f"--resume {args.resume}: {missing_file(Path(args.resume))}")
    if args.init_from and args.resume:
        raise UsageError("--init_from starts a new run and --resume continues one; give one of them")
    if args.init_from and not Path(args.init_from).is_file():
        raise UsageError(f"--init_from {args.init_from}: {missing_file(Path(args.init_from))}")
    if args.rewind_step is not None and args.rewind_step < 1:
        raise UsageError(f"--rewind_step counts optimizer steps: 1 or more, got {args.rewind_step}")
    if not 0 <= args.prune_to <= 1:
        raise UsageError(f"--prune_to is a sparsity in [0, 1], got {args.prune_to}")
    if args.prune_to > 0:
        check_pruning_schedule(args)
        if args.compile:
            raise UsageError("--compile cannot follow masks that --prune_to changes during training; drop one")


def check_pruning_schedule(args):
    """The --prune_* epochs must make a non-empty span inside training."""
    if args.prune_start_epoch < 0:
        raise UsageError(f"--prune_start_epoch must be 0 or more, got {args.prune_start_epoch}")
    if args.prune_start_epoch >= args.prune_end_epoch:
        raise UsageError(
            f"--prune_start_epoch {args.prune_start_epoch} must come before --prune_end_epoch {args.prune_end_epoch} "
            "(default: 3/4 of --epochs); train more epochs or move the schedule"
        )
    if args.prune_end_epoch > args.epochs:
        raise UsageError(f"--prune_end_epoch {args.prune_end_epoch} is past the last of --epochs {args.epochs}")
    if args.prune_every_steps < 1:
        raise UsageError(f"--prune_every_steps must be at least 1, got {args.prune_every_steps}")


def resume_hint(last: Path) -> str:
    """What an interrupted run leaves: the last finished epoch's checkpoint and the command that continues it."""
    if not last.is_file():
        return "no epoch had finished, so there is no last.ckpt to resume; the same command starts again"
    return f"{last} holds the last finished epoch; python train.py --resume {last} continues from there"


def open_run(args) -> tuple[Path | None, TensorBoardLogger, Path]:
    """The checkpoint to resume (or None), the run's logger and its checkpoint folder: a resumed run keeps its own."""
    resume_from = None
    if args.resume:
        resume_from = newest_last_checkpoint(Path(args.checkpoint_root)) if args.resume == "newest" else Path(args.resume)
        print(f"resuming from {resume_from}")
    logger = TensorBoardLogger(args.log_root, name="train", version=resume_from.parent.name if resume_from else None)
    checkpoint_dir = resume_from.parent if resume_from else Path(args.checkpoint_root) / args.arch.replace(":", "-") / f"version_{logger.version}"
    return resume_from, logger, checkpoint_dir


def data_for(args) -> CIFAR10DataModule:
    """The data module, its classes and image size read: the network is built for them."""
    try:
        datamodule = CIFAR10DataModule(data_dir=args.data_dir, batch_size=args.batch_size, num_workers=args.num_workers,
                                       seed=args.seed, drop_last=args.compile, dataset=args.dataset, resize_to=args.image_size)
        datamodule.prepare_data()
        datamodule.setup("fit")
    except InputError as error:
        raise UsageError(f"--data_dir: {error}") from None
    return datamodule


def model_for(args, datamodule: CIFAR10DataModule) -> ImageClassifier:
    """The network to train, answering the data's classes at its image size; from --init_from's weights where given."""
    hparams = {name: getattr(args, name) for name in ("arch", "learning_rate", "momentum", "weight_decay", "T_max",
                                                       "channels_last", "nesterov", "label_smoothing", "warmup_epochs",
                                                       "decay_norms_and_biases", "recipe", "flip_test")}
    try:
        model = ImageClassifier(num_classes=datamodule.num_classes, image_size=datamodule.image_size, **hparams)
    except InputError as error:
        raise UsageError(f"--arch {args.arch}: {error}") from None
    if args.init_from:
        start, _, _ = load_classifier(Path(args.init_from))
        if start.hparams.arch != args.arch:
            raise UsageError(f"--init_from {args.init_from} holds a {start.hparams.arch}, not the --arch {args.arch} to train")
        model.model.load_state_dict(make_permanent(start.model).state_dict())
        print(f"weights from {args.init_from}")
    if args.compile:
        model.model.compile()  # in place: the checkpoint keeps the plain parameter names
    return model


def callbacks_for(args, checkpoint_dir: Path) -> tuple[ModelCheckpoint, list]:
    """The checkpoint that keeps the best epoch, and every callback of the run (that one included)."""
    callbacks = [LearningRateMonitor("epoch"), TQDMProgressBar(refresh_rate=20)]
    if args.rewind_step is not None:
        callbacks.append(RewindPoints(args.rewind_step))
    if args.prune_to > 0:
        callbacks.append(GradualPruningCallback(args.prune_to, args.prune_start_epoch, args.prune_end_epoch,
                                                method=args.prune_method, every_n_steps=args.prune_every_steps, seed=args.seed))
    # When pruning, a denser network from before the schedule ended would win on val/acc.
    best = ModelCheckpoint(dirpath=checkpoint_dir, filename="best-epoch{epoch:03d}-val_acc{val/acc:.4f}",
                           auto_insert_metric_name=False, mode="max",
                           monitor="val/acc_at_final_sparsity" if args.prune_to > 0 else "val/acc")
    # Not save_last=True on `best`: that writes last.ckpt only when val/acc improves, so --resume
    # would go back to the best epoch. Without a monitor, this one overwrites last.ckpt every epoch.
    last = ModelCheckpoint(dirpath=checkpoint_dir, filename="last", enable_version_counter=False)
    return best, [best, last, *callbacks]


@one_line_errors
def main(argv=None):
    args = parse_args(argv)
    check_args(args)
    print(device_line(args.gpus))
    L.seed_everything(args.seed, workers=True)
    resume_from, logger, checkpoint_dir = open_run(args)
    datamodule = data_for(args)
    model = model_for(args, datamodule)
    best, callbacks = callbacks_for(args, checkpoint_dir)
    devices = args.gpus or args.cpu_processes
    trainer = L.Trainer(accelerator="gpu" if args.gpus else "cpu", devices=devices, strategy="ddp" if devices > 1 else "auto",
                        precision=args.precision, max_epochs=args.epochs, logger=logger, callbacks=callbacks,
                        limit_train_batches=args.limit_train_batches, limit_val_batches=args.limit_val_batches,
                        limit_test_batches=args.limit_test_batches, fast_dev_run=args.fast_dev_run, deterministic=False)
    command = " ".join(["train.py", *(sys.argv[1:] if argv is None else argv)])
    trainer.logger.log_hyperparams({"command": command, **vars(args)})  # a fast_dev_run has a logger that writes nothing
    try:
        trainer.fit(model, datamodule=datamodule, ckpt_path=resume_from, weights_only=True)
    except InputError as error:  # the data module's: the one library part that reads user input while fitting
        raise UsageError(f"--data_dir: {error}") from None
    except BaseException as error:
        if is_interrupt(error):
            raise Interrupted(resume_hint(checkpoint_dir / "last.ckpt")) from None
        raise
    if not args.fast_dev_run:
        trainer.test(model, datamodule=datamodule, ckpt_path=best.best_model_path, weights_only=True)
        print(f"best checkpoint: {best.best_model_path}")


if __name__ == "__main__":
    main()
