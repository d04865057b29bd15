"""What each part of `--recipe fast` gives: the recipe, then the recipe with one part undone, trained alike.

    python scripts/recipe_ablation.py --data_dir ../shared/data/cifar10-jpeg --epochs 6 --output_dir runs/recipe_ablation

Each variant is `train.py --recipe fast --arch resnet20 --epochs E` with one flag changed. All but
`seed_43` share the seed, so the same train/validation split, initial weights and augmentation; the
difference between two variants is that flag plus the noise of one run, which `seed_43` (the recipe
again with another seed) measures. Short runs rank the parts; they do not say what each gives at 40 epochs.

Writes OUT/<variant>/ (checkpoints and the TensorBoard run), and OUT/ablation.json and OUT/ablation.md
after every variant. A variant with a finished run in OUT is read, not trained again: an interrupted
ablation resumes.
"""
import json
import subprocess
import sys
import time
from pathlib import Path

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

PROJECT = Path(__file__).resolve().parent.parent

from magprune.cli import ArgumentParser, UsageError, one_line_errors

# Each part of the recipe undone on its own; the original's learning rate stands for its schedule's scale.
# `seed_43` is the recipe itself with other weights, split and batches: how far one run alone moves.
VARIANTS = {
    "fast": [],
    "seed_43": ["--seed", "43"],
    "no_label_smoothing": ["--label_smoothing", "0"],
    "no_nesterov": ["--no-nesterov"],
    "decay_norms_and_biases": ["--decay_norms_and_biases"],
    "learning_rate_0.01": ["--learning_rate", "0.01"],
    "no_warmup": ["--warmup_epochs", "0"],
}


def read_run(log_dir: Path) -> dict:
    """The finished run's best validation accuracy, last training accuracy and test accuracy, in percent."""
    events = EventAccumulator(str(log_dir), size_guidance={"scalars": 0}).Reload()
    tags = events.Tags()["scalars"]
    if "test/acc" not in tags:
        return {}
    return {
        "best_val_acc": 100 * max(event.value for event in events.Scalars("val/acc")),
        "last_train_acc": 100 * events.Scalars("train/acc")[-1].value,
        "test_acc": 100 * events.Scalars("test/acc")[-1].value,
    }


def table(results: dict) -> str:
    lines = ["| variant | flags beside `--recipe fast` | best val acc | last train acc | test acc | vs fast | wall |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    reference = results.get("fast", {}).get("test_acc")
    for name, result in results.items():
        delta = "" if reference is None else f"{result['test_acc'] - reference:+.2f}"
        lines.append(f"| {name} | {' '.join(result['flags']) or '-'} | {result['best_val_acc']:.2f} | "
                     f"{result['last_train_acc']:.2f} | {result['test_acc']:.2f} | {delta} | {result['wall_s'] / 60:.1f} min |")
    return "\n".join(lines) + "\n"


@one_line_errors
def main(argv=None):
    parser = ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data_dir", default="../shared/data/cifar10-jpeg", help="CIFAR-10 for train.py")
    parser.add_argument("--epochs", type=int, default=6, help="epochs of every variant")
    parser.add_argument("--arch", default="resnet20", help="network of every variant")
    parser.add_argument("--variants", default=",".join(VARIANTS), help=f"comma-separated, in order; from {', '.join(VARIANTS)}")
    parser.add_argument("--output_dir", default="runs/recipe_ablation", help="where the runs and the table go")
    parser.add_argument("train_args", nargs="*", help="after --: more train.py flags for every variant (e.g. batch limits)")
    args = parser.parse_args(argv)
    names = [name.strip() for name in args.variants.split(",") if name.strip()]
    unknown = [name for name in names if name not in VARIANTS]
    if unknown or not names:
        raise UsageError(f"--variants: unknown {', '.join(unknown) or 'empty list'}; choose from {', '.join(VARIANTS)}")
    out = Path(args.output_dir).resolve()
    out.mkdir(parents=True, exist_ok=True)
    summary_path = out / "ablation.json"
    results = json.loads(summary_path.read_text()) if summary_path.exists() else {}
    for name in names:
        if name in results:
            continue
        command = [sys.executable, "train.py", "--recipe", "fast", "--arch", args.arch, "--epochs", str(args.epochs),
                   "--data_dir", str(Path(args.data_dir).resolve()), "--checkpoint_root", str(out / name / "checkpoints"),
                   "--log_root", str(out / name / "lightning_logs"), *VARIANTS[name], *args.train_args]
        print(" ".join(command[1:]), flush=True)
        started = time.perf_counter()
        status = subprocess.run(command, cwd=PROJECT).returncode
        if status:
            raise UsageError(f"variant {name}: train.py stopped with exit status {status} (its output is above)")
        runs = sorted((out / name / "lightning_logs" / "train").glob("version_*"), key=lambda path: int(path.name.split("_")[1]))
        result = read_run(runs[-1])
        if not result:
            raise UsageError(f"{runs[-1]} has no test accuracy: the run did not finish")
        results[name] = {"flags": VARIANTS[name], "epochs": args.epochs, "arch": args.arch, **result,
                         "wall_s": time.perf_counter() - started}
        summary_path.write_text(json.dumps(results, indent=1))
        text = table(results)
        (out / "ablation.md").write_text(text)
        print(text, flush=True)


if __name__ == "__main__":
    main()
