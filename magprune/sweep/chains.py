"""Iterative pruning: a chain of levels, each pruned from the network the level before retrained, its masks kept.

    chains(sweep)          # per method and retraining in config.iterative: prune, retrain E epochs, test, go on

The field's answer to "how much can go" (Han et al. 2015; Frankle & Carbin 2019; Renda et al. 2020): remove a
little, retrain, remove more. Every level of a chain starts from the previous level's retrained network and its
masks, so a weight pruned once stays exactly zero to the end. How a step retrains is one entry of RETRAININGS:
what the survivors start from (their retrained values, an early step's, their initial values, a fresh draw) and
the learning-rate schedule of the step's E epochs (one E for every step, or one per step). Each (method,
retraining) is a curve of its own (`global+IT-LRR`), each row says the epochs of retraining its chain spent to
reach it (`retrain_epochs`), and every step's network is kept in the output folder (`chains/<curve>/<level>.pt`),
so a chain resumes after its last finished step, and another chain that begins with the same steps can start
from them (`ChainSource`, --chain_from) rather than retrain them.
"""
import io
import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from torch import nn
from torch.nn.utils import prune

from magprune.core.io import answers_path, atomic_write
from magprune.core.stats import mean_of_seeds
from magprune.core.nets import build_model
from magprune.core.pruning import apply_pruning, permanent_copy, restore_masks
from magprune.errors import InputError
from magprune.sweep.recoveries import finetune_schedule
from magprune.sweep.store import measures_like

# A rewind point's names, as train.py --rewind_step saves them in the checkpoint.
INITIAL, EARLY = "initial", "early"


def _keep(tester, network: nn.Module) -> None:
    pass


def _survivors_from(point: str) -> Callable:
    def start(tester, network: nn.Module) -> None:
        reset_survivors(network, tester.rewind_points[point]["state_dict"])
    return start


def _redrawn(tester, network: nn.Module) -> None:
    # A fresh initialisation of the same architecture, drawn from the generator the step and its seed seeded
    # (`seed_training`): the control that keeps the masks only.
    reset_survivors(network, build_model(tester.config.arch, tester.config.num_classes, tester.config.image_size).state_dict())


def rewound_schedule(config, epochs: int) -> dict:
    """The last `epochs` of the training schedule, at the rates they had (Renda et al.'s learning-rate rewinding)."""
    total = config.train_warmup_epochs + config.train_T_max
    return {"learning_rate": config.train_lr, "warmup_epochs": config.train_warmup_epochs, "T_max": config.train_T_max,
            "schedule_from_epoch": max(0.0, total - epochs)}


def restarted_schedule(config, epochs: int) -> dict:
    """The whole training schedule, warm-up and cosine at the training rate, compressed into `epochs` (Le & Hua 2021)."""
    total = config.train_warmup_epochs + config.train_T_max
    warmup = epochs * config.train_warmup_epochs / total if total else 0.0
    return {"learning_rate": config.train_lr, "warmup_epochs": warmup, "T_max": epochs - warmup}


@dataclass(frozen=True)
class Retraining:
    name: str                                  # in --iterative
    suffix: str                                # the curve: method + "+IT-" + suffix
    description: str
    start: Callable[[object, nn.Module], None]  # what the survivors start each step from
    schedule: Callable[[object, int], dict]     # the step's learning-rate schedule (ImageClassifier hparams)
    needs: str | None = None                   # the rewind point the checkpoint must hold
    seed_key: str = ""                         # what seeds its steps (with method, level, seed); default "it-<name>"
    # Whether its schedule re-runs the training schedule a checkpoint records (a --weights file records none).
    replays_training: bool = True

    def __post_init__(self):
        object.__setattr__(self, "seed_key", self.seed_key or f"it-{self.name}")


RETRAININGS = {retraining.name: retraining for retraining in (
    # Seeded as the grid's +FT is: a fine-tuning chain's first step is the grid's +FT level.
    Retraining("finetune", "FT", "fine-tuning: a cosine from --finetune_lr", _keep, finetune_schedule,
               seed_key="finetune", replays_training=False),
    Retraining("lr_rewind", "LRW", "learning-rate rewinding: the last E epochs of the training schedule re-run",
               _keep, rewound_schedule),
    Retraining("lr_restart", "LRR", "learning-rate restarting: the whole training schedule compressed into E epochs",
               _keep, restarted_schedule),
    Retraining("weight_rewind", "WR", "the lottery ticket: survivors reset to an early step of training, then the "
               "restarted schedule", _survivors_from(EARLY), restarted_schedule, needs=EARLY),
    Retraining("init_reset", "INIT", "control: survivors reset to their initial values, then the restarted schedule",
               _survivors_from(INITIAL), restarted_schedule, needs=INITIAL),
    Retraining("random_reinit", "RAND", "control: survivors drawn afresh at random, then the restarted schedule",
               _redrawn, restarted_schedule),
)}


def chain_curve(method: str, retraining: str) -> str:
    return f"{method}+IT-{RETRAININGS[retraining].suffix}"


def chain_levels(config) -> tuple[float, ...]:
    """The chain's levels: --chain_levels in order; or with --chain_rate that fraction of what remains per round
    up to the largest of --sparsities (Frankle & Carbin's 20% a round); or else --sparsities above 0."""
    if config.chain_levels:
        return config.chain_levels
    if not config.chain_rate:
        return tuple(level for level in config.sparsities if level > 0)
    top = max(config.sparsities)
    levels, remaining = [], 1.0
    while True:
        remaining *= 1 - config.chain_rate
        if 1 - remaining > top + 1e-9:
            return tuple(levels)
        levels.append(round(1 - remaining, 4))


def step_epochs(config) -> tuple[int, ...]:
    """The epochs of retraining of each step of the chain: --retrain_epochs, one number for all or one per level."""
    levels = chain_levels(config)
    return tuple(config.retrain_epochs) * len(levels) if len(config.retrain_epochs) == 1 else tuple(config.retrain_epochs)


def masks_of(network: nn.Module) -> dict[str, torch.Tensor]:
    """Each pruned layer's mask (which weights survive), by layer name."""
    return {name: module.weight_mask.detach().clone() for name, module in network.named_modules() if hasattr(module, "weight_mask")}


def hold(network: nn.Module, masks: dict[str, torch.Tensor]) -> None:
    """Keep every weight the earlier masks removed removed, whatever the new masks say: multiply them in."""
    for name, mask in masks.items():
        prune.custom_from_mask(network.get_submodule(name), "weight", mask)


def reset_survivors(network: nn.Module, state_dict: dict) -> None:
    """Every parameter and BatchNorm statistic from `state_dict` (names as the bare network has them); the masks stay."""
    with torch.no_grad():
        for name, tensor in network.state_dict(keep_vars=True).items():
            source = state_dict.get(name.removesuffix("_orig"))
            if source is not None and not name.endswith("_mask"):
                tensor.copy_(source)


def save_network(network: nn.Module, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    torch.save(network.state_dict(), buffer)  # masks included: weight_orig and weight_mask
    atomic_write(path, buffer.getvalue())


def load_network(network: nn.Module, path: Path) -> nn.Module:
    state_dict = torch.load(path, map_location=next(network.parameters()).device, weights_only=True)
    restore_masks(network, state_dict)
    network.load_state_dict(state_dict)
    return network


def network_path(out_dir: Path, curve: str, level: float, seed: int | None = None) -> Path:
    """Where a chain's step keeps its network: the first seed's (None) as before seeds, each other seed's in its own folder.
    Beside it, `.json`: that seed's row of the step."""
    folder = out_dir / "chains" / curve
    return (folder if seed is None else folder / f"seed{seed}") / f"{level:g}.pt"


# The settings that say which chains a sweep runs, their steps and what their rows are tested on, not what a step's
# network is: sweeps that differ in them can share steps.
CHAIN_SHAPE = ("iterative", "chain_levels", "chain_rate", "retrain_epochs", "seeds", "eval_split")


class ChainSource:
    """The finished steps of another sweep's chains, for chains that begin with the same steps.

    A step is the same when the other sweep trained like this one (settings, weights; its chains aside), pruned
    its curve to the same level at the same step with the same seed and had spent the same epochs of retraining by
    then: with every step before it the same too, the same network. Its network is copied instead of retrained, and
    its row too where the other sweep tested on the same split (`--eval_split`); else the copy is tested here. So a
    route chosen on the validation split is tested once on the test split without retraining anything.
    """

    def __init__(self, folder: Path, config, saved: dict | None):
        if saved is None:
            raise InputError(f"{folder} holds no sweep (no sweep.json) to start the chains from")
        if not measures_like(config, saved.get("config", {}), ignoring=CHAIN_SHAPE):
            raise InputError(f"{folder} was swept with other settings or weights than these; its chain steps are not "
                             "the ones this sweep would train")
        self.folder, self.rows = folder, saved["rows"]
        self.first_seed = saved["config"].get("seed", 0)
        self.same_split = saved["config"].get("eval_split", "test") == config.eval_split

    def step(self, curve: str, level: float, step: int, spent: int, seed: int) -> tuple[Path, dict] | None:
        """The network file and that seed's row of that step if the other sweep finished it, else None."""
        path = network_path(self.folder, curve, level, None if seed == self.first_seed else seed)
        record = path.with_suffix(".json")
        if record.is_file():
            row = json.loads(record.read_text())
        else:  # a sweep saved before each seed's row was kept beside its network: its one seed's row is the curve's
            row = next((row for row in self.rows if row["curve"] == curve and row["sparsity"] == level
                        and row.get("seeds", 1) == 1 and seed == self.first_seed), None)
        if row is None or (row.get("chain_step"), row["retrain_epochs"]) != (step, spent) or not path.is_file():
            return None
        return path, row

    def copy_answers(self, row: dict, out_dir: Path) -> None:
        """The per-image answers of each seed of a step's `row`, into `out_dir` (a row saved before answers were kept has none)."""
        for seed in row.get("run_seeds", ()):
            answers = answers_path(self.folder, row["curve"], row["sparsity"], seed)
            if answers.is_file():
                copied = answers_path(out_dir, row["curve"], row["sparsity"], seed)
                copied.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(answers, copied)

    def holds(self, row: dict) -> bool:
        """Whether `row` is one of the source's steps (copied from it, now or by an earlier run of this sweep)."""
        if "copied_from" in row or "run_seeds" in row:
            return row.get("copied_from") == str(self.folder)
        # A row copied before copies said so: the source's own row, compared.
        finished = self.step(row["curve"], row["sparsity"], row["chain_step"], row["retrain_epochs"], self.first_seed)
        return finished is not None and finished[1]["correct"] == row["correct"]


def finished_step(path: Path, network: nn.Module, sweep, curve: str, level: float) -> tuple[nn.Module, dict] | None:
    """A step this sweep finished before: its network and its seed's row, else None."""
    if not path.is_file():
        return None
    record = path.with_suffix(".json")
    if record.is_file():
        return load_network(network, path), json.loads(record.read_text())
    row = sweep.store.find(curve, level)  # a sweep saved before each seed's row was kept beside its network
    return (load_network(network, path), row) if row is not None and row.get("seeds", 1) == 1 else None


def chain_step(sweep, network: nn.Module, method: str, retraining: str, level: float, epochs: int, before: list[dict],
               source: ChainSource | None, seed: int) -> tuple[nn.Module, dict]:
    """One step of one seed's chain: `network` (the step before's, masks on) pruned to `level`, retrained for `epochs`
    as `retraining` says, kept on disk and tested; that seed's row, also kept beside the network. A step on disk is
    read, not redone; one that `source` finished is copied from there."""
    curve = chain_curve(method, retraining)
    path = network_path(Path(sweep.config.output_dir), curve, level, None if seed == sweep.config.seed else seed)
    finished = finished_step(path, network, sweep, curve, level)
    if finished:
        return finished
    base = {"curve": curve, "method": method, "recovery": f"it-{retraining}", "sparsity": level,
            "retrain_epochs": (before[-1]["retrain_epochs"] if before else 0) + epochs, "chain_step": len(before) + 1}
    copied = source.step(curve, level, base["chain_step"], base["retrain_epochs"], seed) if source else None
    if copied:
        network, row = copied_step(sweep, network, path, base, seed, source, copied)
    else:
        network, row = trained_step(sweep, network, path, base, RETRAININGS[retraining], epochs, seed)
    for answered_seed, hits in row.pop("answers", {}).items():
        sweep.store.keep_answers(curve, level, answered_seed, hits)
    atomic_write(path.with_suffix(".json"), json.dumps(row, indent=1))
    return network, row


def trained_step(sweep, network: nn.Module, path: Path, base: dict, entry: Retraining, epochs: int,
                 seed: int) -> tuple[nn.Module, dict]:
    """A step retrained here: pruned to its level, the earlier masks held, the survivors started as `entry` says,
    retrained with its schedule, kept at `path` and tested."""
    tester, config = sweep.tester, sweep.config
    # Seeded by the step and the seed alone, as a grid level is: the first step of a fine-tuning chain is the grid's +FT level.
    tester.seed_training(seed, f"{base['method']}/{entry.seed_key}/{base['sparsity']}")
    earlier = masks_of(network)
    apply_pruning(network, base["sparsity"], base["method"], config.include_classifier, seed,
                  calibration=tester.copies.calibration(base["method"], seed))
    hold(network, earlier)
    entry.start(tester, network)
    tester.retrain(network, epochs, **entry.schedule(config, epochs))
    save_network(network, path)
    return network, tester.tested_row(permanent_copy(network), base, seed)


def copied_step(sweep, network: nn.Module, path: Path, base: dict, seed: int, source: ChainSource,
                finished: tuple[Path, dict]) -> tuple[nn.Module, dict]:
    """A step `source` finished: its network copied to `path`; its row and answers too where it tested on this
    sweep's split, else the copy tested here."""
    path.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(finished[0], path)
    network = load_network(network, path)
    if not source.same_split:
        return network, {**sweep.tester.tested_row(permanent_copy(network), base, seed), "copied_from": str(source.folder)}
    source.copy_answers(finished[1], Path(sweep.config.output_dir))
    return network, {**finished[1], "copied_from": str(source.folder)}


def chains(sweep, progress=lambda steps: steps, source: ChainSource | None = None) -> dict[str, list[dict]]:
    """Every chain the config asks for (each method, each retraining in `iterative`, each seed), step by step; its
    rows by curve: each level's once every seed has reached it, the seeds' mean.

    `progress` wraps the steps (a progress bar). With several processes each takes every `world`-th chain (a seed's
    chain is one): a chain's steps follow one another. `source` holds another sweep's finished steps a chain may begin with.
    """
    config, tester = sweep.config, sweep.tester
    seeds = range(config.seed, config.seed + config.seeds)
    cells = [(method, retraining, seed) for retraining in config.iterative for method in config.methods for seed in seeds]
    steps = [(method, retraining, seed, level, epochs) for method, retraining, seed in cells[sweep.ranks.rank::sweep.ranks.world]
             for level, epochs in zip(chain_levels(config), step_epochs(config))]
    done: dict[tuple[str, int], list[dict]] = {}  # (curve, seed): that seed's rows, step by step
    on_source: dict[tuple[str, int], bool] = {}  # a chain that left the source's steps has networks of its own from there on
    network = None
    for method, retraining, seed, level, epochs in progress(steps):
        chain = (chain_curve(method, retraining), seed)
        if chain not in done:  # a chain starts from the dense network
            done[chain], network = [], tester.copies.dense_copy(trained=True).to(memory_format=torch.channels_last)
            on_source[chain] = source is not None
        network, row = chain_step(sweep, network, method, retraining, level, epochs, done[chain],
                                  source if on_source[chain] else None, seed)
        on_source[chain] = on_source[chain] and source.holds(row)
        done[chain].append(row)
        level_row(sweep, chain[0], level)
    return {curve: [row for row in sweep.store.rows if row["curve"] == curve] for curve, _ in done}


# What each seed of a chain's step has of its own; the level's row holds the seeds' mean instead.
SEED_OWN = ("correct", "total", "test_acc", "test_acc_se", "seeds", "seed_sd", "test_loss", "run_seeds", "seed_correct",
            "copied_from")


def level_row(sweep, curve: str, level: float) -> dict | None:
    """A chain's row at `level`, stored once every seed's chain has reached it: the seeds' mean (`mean_of_seeds`),
    each seed's count kept. None while a seed has not."""
    config, row = sweep.config, sweep.store.find(curve, level)
    if row is not None:
        return row
    paths = [network_path(Path(config.output_dir), curve, level, None if seed == config.seed else seed)
             for seed in range(config.seed, config.seed + config.seeds)]
    records = [path.with_suffix(".json") for path in paths]
    if not all(record.is_file() for record in records):
        return None
    seed_rows = [json.loads(record.read_text()) for record in records]
    row = {key: value for key, value in seed_rows[0].items() if key not in SEED_OWN}
    row.update(mean_of_seeds([seed for seed_row in seed_rows for seed in seed_row["run_seeds"]],
                             [(seed_row["correct"], seed_row["total"]) for seed_row in seed_rows],
                             [seed_row["test_loss"] for seed_row in seed_rows]))
    sweep.store.add([row])
    return row


def check_rewind_points(retrainings, points: dict) -> str | None:
    """What is missing for the retrainings asked for (None if nothing): the rewind points train.py --rewind_step saves."""
    missing = [name for name in retrainings if RETRAININGS[name].needs and RETRAININGS[name].needs not in points]
    if missing:
        return (f"{', '.join(missing)} need the checkpoint's rewind points, which this one does not hold; "
                "train it with train.py --rewind_step N")
    return None

