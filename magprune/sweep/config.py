"""A sweep's settings, each defined once: its name, type, default, help and check.

    parser = argparse.ArgumentParser(); add_flags(parser, SweepConfig)   # --methods, --sparsities, ...
    config = from_flags(SweepConfig, parser.parse_args(argv))             # parsed, checked, frozen
    config = dataclasses.replace(config, arch=..., weights_sha256=...)     # what the loaded model says

Every field is a setting; `setting(...)` holds its help, how a flag's text becomes its value and the
check of that value, and whether it changes what a row measures (`compared`). A check that needs
two settings is in `SweepConfig.__post_init__`, so a config is checked however it is made, before
any model or data loads. `sweep.json` stores the config as run, and resuming compares it.
"""
import argparse
import dataclasses
import importlib.util
import json
import math
import types
import typing
from typing import Any, Callable

import torch

from magprune.core.nets import ARCHS, check_arch
from magprune.core.pruning import METHODS
from magprune.core.quantize import BITS
from magprune.core.stats import KNEE_RULES
from magprune.errors import SettingError
from magprune.sweep.chains import RETRAININGS, chain_levels
from magprune.sweep.recoveries import RECOVERIES

PRECISIONS = ("32-true", "bf16-mixed", "16-mixed")
EVAL_SPLITS = ("test", "val")  # what a level is tested on: the test set, or the part of training the checkpoint held out
DEFAULT_SPARSITIES = tuple(round(0.05 * step, 2) for step in range(21))
STEPS_PER_UNIT = 1000  # TensorBoard's step for a level: a tenth of a percent of sparsity, the finest two levels may differ by


def setting(default, help: str, *, parse: Callable[[str], Any] | None = None, check: Callable[[Any], str | None] | None = None,
            compared: bool = True, flag: bool = True, choices=None, metavar: str | None = None, before=dataclasses.MISSING):
    """A field of a config: `parse` turns a flag's text into the value (default: the field's type), `check`
    returns what is wrong with a value (None if nothing), `compared=False` marks a setting that changes what
    is reported or added, not what an existing row measured; `flag=False` one the loaded model fills in;
    `before`, where it differs from the default, what a sweep saved before the setting existed measured."""
    return dataclasses.field(default=default, metadata=dict(help=help, parse=parse, check=check, compared=compared, flag=flag,
                                                            choices=choices, metavar=metavar,
                                                            before=default if before is dataclasses.MISSING else before))


def sparsity_step(sparsity: float) -> int:
    """A level's step in TensorBoard (375 is 37.5%): integers, fine enough for a bisection's levels."""
    return round(sparsity * STEPS_PER_UNIT)


# How flags' texts become values.
def levels_in_order(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(item) for item in text.split(",") if item.strip())
    except ValueError:
        raise ValueError(f"takes comma-separated numbers, got {text!r}") from None


def counts(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(item) for item in text.split(",") if item.strip())
    except ValueError:
        raise ValueError(f"takes comma-separated whole numbers, got {text!r}") from None


def fractions(text: str) -> tuple[float, ...]:
    return tuple(sorted(set(levels_in_order(text))))


def names(text: str) -> tuple[str, ...]:
    return tuple(dict.fromkeys(item.strip() for item in text.split(",") if item.strip()))


def bit_widths(text: str) -> tuple[int, ...]:
    try:
        return tuple(sorted({int(item) for item in text.split(",") if item.strip()}, reverse=True))
    except ValueError:
        raise ValueError(f"takes comma-separated bit widths, e.g. 8,4; got {text!r}") from None


def channels(text: str) -> tuple[float, ...]:
    try:
        values = tuple(float(item) for item in text.split(","))
    except ValueError:
        values = ()
    if len(values) != 3:
        raise ValueError(f"takes three comma-separated numbers, got {text!r}")
    return values


def image_size(text: str) -> tuple[int, int]:
    """An --image_size text: "64" (square) or "64x48" (height x width), in pixels."""
    try:
        sides = tuple(int(side) for side in text.lower().split("x"))
    except ValueError:
        sides = ()
    if len(sides) not in (1, 2) or min(sides) < 1:
        raise ValueError(f"takes a size in pixels, 64 or 64x48 (height x width), got {text!r}")
    return sides * 2 if len(sides) == 1 else sides


def lightning_limit(text: str) -> int | float:
    """A --limit_*_batches text as Lightning reads its value: a whole number counts batches ("1": one batch), a
    number with a point is a fraction of them in [0.0, 1.0] ("1.0": all)."""
    try:
        return int(text)
    except ValueError:
        pass
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"takes a number of batches (10) or a fraction of them (0.25), got {text!r}") from None
    if not 0 <= value <= 1:
        raise ValueError(f"a fraction of the batches lies in [0.0, 1.0] (a whole number counts batches), got {text}")
    return value


# What makes a value wrong (None: nothing).
def fractions_in_unit(values) -> str | None:
    if not values:
        return "is empty; give at least one value"
    outside = [value for value in values if not (math.isfinite(value) and 0 <= value <= 1)]
    if outside:
        return f"{outside[0]:g} is outside [0, 1]"
    steps = [sparsity_step(value) for value in values]
    for below, above, step, next_step in zip(values, values[1:], steps, steps[1:]):
        if step == next_step:
            return f"{below:g} and {above:g} are closer than 0.1%, the finest step TensorBoard is given"
    return None


def rising_levels(values) -> str | None:
    if not values:
        return None
    outside = [value for value in values if not (math.isfinite(value) and 0 < value <= 1)]
    if outside:
        return f"{outside[0]:g} is outside (0, 1]"
    falling = next(((below, above) for below, above in zip(values, values[1:]) if above <= below), None)
    if falling:
        return f"a chain's levels rise: {falling[1]:g} comes after {falling[0]:g}"
    return fractions_in_unit(values)


def known_retrainings(values) -> str | None:
    unknown = [value for value in values if value not in RETRAININGS]
    return f"unknown {', '.join(unknown)}; choose from {', '.join(RETRAININGS)}" if unknown else None


def a_fraction_of_what_remains(value) -> str | None:
    return None if value is None or (math.isfinite(value) and 0 < value < 1) else f"must lie in (0, 1), got {value}"


def known_methods(values) -> str | None:
    unknown = [value for value in values if value not in METHODS]
    if unknown or not values:
        return f"unknown {', '.join(unknown) or 'empty list'}; choose from {', '.join(METHODS)}"
    return None


def offered_bits(values) -> str | None:
    missing = sorted(set(values) - set(BITS))
    return f"{', '.join(map(str, missing))} bits is not offered; choose from {', '.join(map(str, BITS))}" if missing else None


def at_least(low: float, what: str) -> Callable[[Any], str | None]:
    return lambda value: None if value is None or value >= low else f"{what}: {low:g} or more, got {value}"


def each_at_least(low: float, what: str) -> Callable[[Any], str | None]:
    one = at_least(low, what)
    return lambda values: next(filter(None, map(one, values)), None) if values else f"{what}: give at least one number"


def positive_number(value) -> str | None:
    return None if value is None or (math.isfinite(value) and value > 0) else f"must be above 0, got {value}"


def points_of_accuracy(value) -> str | None:
    return None if math.isfinite(value) and value >= 0 else f"must be a number of accuracy points, 0 or more, got {value}"


def optional_fraction(value) -> str | None:
    return None if value is None or (math.isfinite(value) and 0 <= value <= 1) else f"sparsity {value} is outside [0, 1]"


def gpus_here(value) -> str | None:
    count = torch.cuda.device_count()
    return None if value is None or 0 <= value <= count else f"this machine has {count} CUDA GPUs, asked for {value}"


@dataclasses.dataclass(frozen=True)
class Sources:
    """What is swept: the network, its weights and its data."""

    checkpoint: str | None = setting(None, "Lightning checkpoint to prune (default: the newest under checkpoints/)", compared=False)
    weights: str | None = setting(None, "a plain state dict or an exported .ptz instead of a checkpoint (needs --arch)",
                                  compared=False)
    arch: str | None = setting(None, f"with --weights: the network those weights belong to ({', '.join(ARCHS)}, or "
                                     "tv:<a torchvision classifier>)", check=lambda arch: arch and check_arch(arch))
    mean: tuple[float, ...] | None = setting(
        None, "with --weights: per-channel input mean the weights were trained with, e.g. 0.485,0.456,0.406", parse=channels)
    std: tuple[float, ...] | None = setting(None, "with --weights: per-channel input std the weights were trained with",
                                            parse=channels)
    data_dir: str | None = setting(None, "where the data is (default: the one the checkpoint was trained on, else the "
                                         "shipped demo_data/); read as the checkpoint's data set, resized as it was")


@dataclasses.dataclass(frozen=True)
class Grid:
    """The grid: one curve per method and recovery, one row per level, and what a level is tested on."""

    methods: tuple[str, ...] = setting(
        ("layerwise",), "comma-separated pruning methods, one curve each (default: layerwise): "
        + "; ".join(f"{name}: {method.description}" for name, method in METHODS.items()), parse=names, check=known_methods)
    sparsities: tuple[float, ...] = setting(
        DEFAULT_SPARSITIES, "comma-separated fractions of weights to remove; 0, the dense reference, is always added "
        "(default: 0, 0.05, ..., 1)", parse=fractions, check=fractions_in_unit)
    include_classifier: bool = setting(False, "prune the final Linear layer too (spared by default)")
    tolerance: float = setting(1.0, "accuracy points below dense that still count as 'kept'", check=points_of_accuracy,
                               compared=False)
    knee_rule: str = setting("point", "when a level counts as within the tolerance, for its curve's knee: "
                             + "; ".join(f"{name}: {text}" for name, text in KNEE_RULES.items()),
                             choices=tuple(KNEE_RULES), compared=False)
    eval_split: str = setting("test", "the images each level is tested on: test (the test set) or val (the part of the "
                                      "training set the checkpoint held out from training, rebuilt from its seed and fraction: "
                                      "choose schedules and rates on it, then run the choice once on test)",
                              choices=EVAL_SPLITS)


@dataclasses.dataclass(frozen=True)
class CalibrationSettings:
    """What the calibrated methods (OBS) prune from and how they solve."""

    calibration_images: int = setting(1024, "training images (augmented as in training) the obs-* methods prune from; "
                                             "never a validation or test image", metavar="N", check=at_least(1, "counts images"))
    obs_damping: float = setting(0.01, "obs-* methods: added to each layer's H = X^T X diagonal, as a fraction of its mean",
                                 check=positive_number)
    obs_block: int = setting(128, "obs-* methods: columns of a layer's weights corrected together (a multiple of 4)",
                             check=lambda value: None if value >= 4 and value % 4 == 0 else f"a multiple of 4, got {value}")


@dataclasses.dataclass(frozen=True)
class Recoveries:
    """What recovers a level without changing its masks: BatchNorm re-estimation, fine-tuning."""

    bn_recalibrate: int = setting(0, "also test each level after re-estimating BatchNorm statistics on N training batches "
                                     "('+BN' curves)", metavar="N", check=at_least(0, "counts batches"))
    finetune_epochs: int = setting(0, "also test each level after E epochs of training with the masks held fixed ('+FT' curves)",
                                   metavar="E", check=at_least(0, "counts epochs"))
    finetune_lr: float = setting(0.01, "peak learning rate of the fine-tuning cosine", check=positive_number)
    finetune_batches: int | float | None = setting(None, "Lightning limit_train_batches for fine-tuning epochs: a fraction (0.25; 1.0 is all) "
                                                   "or a number (1 is one batch)",
                                                   parse=lightning_limit, check=positive_number)


@dataclasses.dataclass(frozen=True)
class Searches:
    """Which levels are tested besides the grid: a knee bisected, one layer at a time, chains of levels."""

    find_knee: bool = setting(False, "bisect for each curve's knee (each method, one-shot and after each recovery asked for) "
                                     "instead of testing every level of --sparsities")
    knee_resolution: float = setting(0.01, "with --find_knee: stop when the bracket is this narrow (0.002 or more)",
                                     compared=False)
    sensitivity: bool = setting(False, "also prune one layer at a time, the others dense, and draw layer x sparsity -> accuracy",
                                compared=False)
    sensitivity_sparsities: tuple[float, ...] = setting((0.25, 0.5, 0.75, 0.9, 0.95),
                                                        "levels of the sensitivity analysis (comma-separated fractions)",
                                                        parse=fractions, check=fractions_in_unit, compared=False)
    iterative: tuple[str, ...] = setting(
        (), "comma-separated retrainings, each an iterative-pruning curve per method: a chain of levels (--chain_levels, or "
        "--chain_rate), each pruned from the one before's retrained network, its masks kept: "
        + "; ".join(f"{name}: {retraining.description}" for name, retraining in RETRAININGS.items()),
        parse=names, check=known_retrainings)
    retrain_epochs: tuple[int, ...] = setting((2,), "with --iterative: epochs of retraining after each pruning step: one number "
                                                    "for every step, or one per level of the chain (8,8,8,8,28: a longer last step)",
                                              metavar="E", parse=counts, check=each_at_least(1, "counts epochs"))
    chain_levels: tuple[float, ...] = setting((), "with --iterative: the chain's levels, rising (default: --sparsities above 0)",
                                              parse=levels_in_order, check=rising_levels)
    chain_rate: float | None = setting(None, "with --iterative: prune this fraction of the weights that remain at each step "
                                             "(0.2: 20%, 36%, 48.8%, ...) up to the largest of --sparsities, instead of --chain_levels",
                                       check=a_fraction_of_what_remains)
    chain_from: str | None = setting(None, "with --iterative: another sweep's folder, swept with the same settings, whose finished "
                                           "chain steps these chains begin with (same levels and epochs): they are copied, "
                                           "networks and rows, not retrained; a longer or other last step costs only itself",
                                     metavar="DIR", compared=False)


@dataclasses.dataclass(frozen=True)
class Outputs:
    """What each level also measures, and what the sweep writes."""

    quantize: tuple[int, ...] = setting((), "comma-separated bit widths (8, 4): every curve gains quantised twins ('+Q8': "
                                            "per-channel linear; '+Q4': a 16-value k-means codebook per layer) and every row the "
                                            "measured size of its export file", parse=bit_widths, check=offered_bits,
                                        metavar="BITS")
    export: float | None = setting(None, "write the model pruned at sparsity S (first method, one-shot) as a compact .ptz, an "
                                         ".onnx checked with onnxruntime on the test split, and with --quantize a quantised "
                                         ".ptz per bit width", metavar="S", check=optional_fraction, compared=False)
    visualize: bool = setting(False, "write a GIF of the masks, a per-layer sparsity chart and TensorBoard images and histograms",
                              compared=False)
    visualize_layers: tuple[str, ...] | None = setting(
        None, "comma-separated layer names for the GIF (default: first conv, a middle conv, the classifier)", parse=names,
        compared=False)
    output_dir: str | None = setting(None, "folder for this sweep's results and TensorBoard run; reusing one resumes it, "
                                           "adding any new levels and methods", compared=False)
    log_root: str = setting("lightning_logs", "where new sweep runs go when --output_dir is not given", compared=False)


@dataclasses.dataclass(frozen=True)
class Running:
    """How the tests and retrainings run: devices, processes, batches, precision and seeds."""

    gpus: int | None = setting(None, "GPUs per machine to test on, one process each, the grid's tests dealt out among them; "
                                     "0 is the CPU (default: 1 if there is one, else 0)", check=gpus_here, compared=False)
    cpu_processes: int = setting(1, "with --gpus 0: CPU processes to deal the grid's tests to, each with an equal share of the "
                                    "cores (OMP_NUM_THREADS overrides)", check=at_least(1, "counts processes"), compared=False)
    num_nodes: int = setting(1, "machines, each running --gpus (or --cpu_processes) processes: under torchrun or SLURM "
                                "(one task per device)", check=at_least(1, "counts machines"), compared=False)
    batch_size: int = setting(256, "images per batch: of the tests, BatchNorm recalibration and fine-tuning",
                              check=at_least(1, "counts images"))
    precision: str = setting("32-true", "Lightning precision of the tests; other than 32-true, the dense float32 accuracy is "
                                        "reported beside it", choices=PRECISIONS)
    limit_test_batches: int | float | None = setting(None, "Lightning: a fraction (0.25; 1.0 is all) or a number (1 is one) "
                                                           "of test batches", parse=lightning_limit, check=positive_number)
    flip_test: bool | None = setting(None, "answer each test image with the mean logits of it and its mirror image "
                                           "(default: as the checkpoint was validated)")
    seed: int = setting(0, "seed of the random method's masks and of each retraining's batch order and augmentation")
    seeds: int = setting(1, "K seeds (--seed, --seed+1, ...) wherever a level depends on one: K random masks, K retrainings "
                            "of every +FT level from the same masks, K chains each carrying its own network: the row is "
                            "their mean, its error bar their spread and the test images' error together, its 95% interval "
                            "Student's t; each seed's count is kept in the row", metavar="K", check=at_least(1, "counts seeds"))
    retrain_precision: str | None = setting(
        None, "Lightning precision of every retraining (+FT, chain steps); the tests stay at --precision (default: bf16-mixed "
              "on a CPU that runs bfloat16 natively (AMX or AVX512-BF16), else 32-true)", choices=PRECISIONS,
        before="32-true")
    retrain_compile: bool = setting(False, "torch.compile the network each retraining fits; the tests stay uncompiled "
                                           "(on 2 CPU cores no dependable gain over bf16 alone: docs/speed.md)")


@dataclasses.dataclass(frozen=True)
class ModelRecord:
    """What the loaded model says (not flags): its training schedule, which learning-rate rewinding re-runs and restarting
    compresses, its weights, the classes and image size of its data, the device."""

    # The schedule the model was trained with: what learning-rate rewinding re-runs and restarting compresses.
    train_lr: float = setting(0.1, "peak learning rate of the training schedule", flag=False, compared=False)
    train_warmup_epochs: float = setting(0.0, "warm-up epochs of the training schedule", flag=False, compared=False)
    train_T_max: float = setting(1.0, "cosine epochs of the training schedule", flag=False, compared=False)
    source: str = setting("", "the checkpoint or weights file swept", flag=False, compared=False)
    # Of the dense weights: a file replaced at the same path is another sweep, a copy elsewhere (a slim checkpoint) the same.
    weights_sha256: str = setting("", "SHA-256 of the dense weights", flag=False)
    num_classes: int = setting(10, "classes the network answers (the data's)", flag=False)
    image_size: tuple[int, ...] = setting((32, 32), "height and width of the images the network takes (the data's)", flag=False)
    device: str = setting("cpu", "cpu or gpu", flag=False)


@dataclasses.dataclass(frozen=True)
class SweepConfig(ModelRecord, Running, Outputs, Searches, Recoveries, CalibrationSettings, Grid, Sources):
    """Everything a sweep does, as run: each group of settings is a base (listed last first, as flags and sweep.json
    order them); every setting is read flat (`config.methods`)."""

    def __post_init__(self):
        for field in dataclasses.fields(self):
            check = field.metadata.get("check")
            problem = check(getattr(self, field.name)) if check else None
            if problem:
                raise SettingError(field.name, problem)
        if 0.0 not in self.sparsities:  # the dense model is the reference every knee is measured against
            object.__setattr__(self, "sparsities", (0.0, *self.sparsities))
        if self.weights and not self.arch:
            raise SettingError("weights", "needs --arch to know which network the weights belong to")
        if self.weights and any(RETRAININGS[name].replays_training for name in self.iterative):
            raise SettingError("iterative", "rewinding and restarting re-run the training schedule, which a checkpoint "
                                            "records and --weights does not; give --checkpoint, or --iterative finetune")
        if self.processes > 1:
            for name, reason in (("find_knee", "each test of the bisection depends on the one before"),
                                 ("sensitivity", "it is not dealt out among processes")):
                if getattr(self, name):
                    raise SettingError(name, f"runs in one process ({reason}); drop it, or --gpus/--cpu_processes/--num_nodes")
            if not self.output_dir:
                raise SettingError("output_dir", "a sweep of several processes needs one: the folder they all write to")
        if self.seeds > 1 and any(METHODS[method].seeded for method in self.methods) and importlib.util.find_spec("scipy") is None:
            raise SettingError("seeds", "the spread of K masks gets a Student-t interval, which needs scipy (pip install scipy)")
        for method in self.methods:
            levels = METHODS[method].levels
            if levels is not None and set(self.sparsities) - set(levels):
                raise SettingError("sparsities", f"{method} takes only the levels {', '.join(f'{level:g}' for level in levels)}; "
                                                 f"sweep it on its own with --sparsities {','.join(f'{level:g}' for level in levels)}")
            if levels is not None and self.iterative:
                raise SettingError("iterative", f"{method} has fixed levels: there is no chain to prune along")
        if self.iterative and self.chain_levels and self.chain_rate:
            raise SettingError("chain_rate", "give a chain's levels (--chain_levels) or its rate, not both")
        if self.iterative and len(self.retrain_epochs) not in (1, len(chain_levels(self))):
            raise SettingError("retrain_epochs", f"{len(self.retrain_epochs)} numbers for a chain of {len(chain_levels(self))} "
                                                 "levels: give one for every step, or one per level")
        if self.chain_from and not self.iterative:
            raise SettingError("chain_from", "starts chains from another sweep's steps: give --iterative too")
        # A bisection's last level lies over half the resolution from its neighbours: two steps keep them a step apart.
        finest = 2 / STEPS_PER_UNIT
        if self.find_knee and not finest <= self.knee_resolution < 1:
            raise SettingError("knee_resolution", f"must lie in [{finest:g}, 1), got {self.knee_resolution}")

    @property
    def processes(self) -> int:
        return (self.gpus or self.cpu_processes) * self.num_nodes

    @property
    def recoveries(self) -> list[str]:
        return [name for name, recovery in RECOVERIES.items() if recovery.enabled_by is None or getattr(self, recovery.enabled_by)]

    def to_json(self) -> dict:
        return json.loads(json.dumps(dataclasses.asdict(self)))


def _value_type(annotation) -> type:
    """The type a field's value has when given: `int | None` is int, `tuple[float, ...]` is tuple."""
    kinds = [kind for kind in typing.get_args(annotation) if kind is not type(None)] if isinstance(annotation, types.UnionType) else [annotation]
    return typing.get_origin(kinds[0]) or kinds[0]


def add_flags(parser: argparse.ArgumentParser, config_class) -> None:
    """One flag per setting of `config_class`, named, typed, defaulted and explained by its field."""
    hints = typing.get_type_hints(config_class)
    for field in dataclasses.fields(config_class):
        meta = field.metadata
        if not meta.get("flag", True):
            continue
        kind = _value_type(hints[field.name])
        options = {"help": meta["help"].replace("%", "%%"), "dest": field.name}  # argparse formats help with %
        if kind is bool:
            # A setting that is off unless asked for is a switch; one with a default to resolve, a --x/--no-x pair.
            options["action"] = "store_true" if field.default is False else argparse.BooleanOptionalAction
        else:
            options.update(type=str, default=argparse.SUPPRESS)
            if meta.get("choices"):
                options["choices"] = meta["choices"]
            if meta.get("metavar"):
                options["metavar"] = meta["metavar"]
        if kind is bool and field.default is False:
            options["default"] = argparse.SUPPRESS
        parser.add_argument(f"--{field.name}", **options)


def from_flags(config_class, namespace: argparse.Namespace, **filled):
    """The config the parsed flags ask for: each given flag's text parsed as its setting says, the rest defaults.

    A flag whose text cannot be parsed is a SettingError, like a value its check refuses.
    """
    hints = typing.get_type_hints(config_class)
    values = dict(filled)
    for field in dataclasses.fields(config_class):
        if not hasattr(namespace, field.name):
            continue
        text = getattr(namespace, field.name)
        kind = _value_type(hints[field.name])
        if kind is bool or not isinstance(text, str):
            values[field.name] = text
            continue
        parse = field.metadata.get("parse") or kind
        try:
            values[field.name] = parse(text)
        except ValueError as error:
            detail = str(error) if field.metadata.get("parse") else f"takes {kind.__name__} values, got {text!r}"
            raise SettingError(field.name, detail) from None
    return config_class(**values)
