"""One level of a sweep: prune a copy of the dense network, recover it as asked, measure what the masks save, test it.

    tester = LevelTester(config, network, wrap, datamodule)   # wrap(network, **hparams) -> a LightningModule
    rows = tester.evaluate("global", 0.5, "bn")               # the row of this test, then its quantised twins'

Every level starts again from the dense weights: a masked copy of the dense network (`copies.PrunedCopies`),
recovered (`recoveries.RECOVERIES`: re-estimate BatchNorm, fine-tune with the masks held), the masks folded into
the weights once, what they save measured (`measures.Measures`), BatchNorm folded into the convolutions, and
Lightning's test loop run; with `quantize`, also test a quantised
copy per bit width and measure each variant's export file; with `seeds`, repeat for each seed of a
seeded method. The tester keeps no rows: the searches ask it for them, the store keeps them.
"""
import copy
import time
import zlib
from typing import Callable

import lightning as L
import torch
from lightning.pytorch.strategies import SingleDeviceStrategy
from torch import nn

from magprune.core.folding import conv_batchnorm_pairs, fold_batchnorm
from magprune.core.pruning import METHODS, make_permanent, prunable_layers, recalibrate_batchnorm, sparsity_report
from magprune.core.quantize import quantize_network
from magprune.core.stats import mean_of_seeds
from magprune.sweep.config import SweepConfig
from magprune.sweep.copies import PrunedCopies
from magprune.sweep.measures import Measures
from magprune.sweep.recoveries import RECOVERIES, curve_name


class KeepOnDevice(SingleDeviceStrategy):
    """Lightning's one-device strategy, minus its teardown's moving the network back to the CPU and
    emptying the CUDA cache: after a sweep's test the network is dropped, and the next level would
    have to allocate its activations from CUDA afresh."""

    def teardown(self) -> None:
        self.precision_plugin.teardown()
        self.checkpoint_io.teardown()


class LevelTester:
    """Tests pruned copies of one dense network (`copies` makes them, `measures` measures them).

    `wrap(network, **hparams)` puts a network in the LightningModule the Trainer tests and fine-tunes (the dense
    model's settings, some replaced by `hparams`): the experiment's `ImageClassifier`, handed in by `sweep.py`.
    `timings` records each level (its start, wall time and time in Lightning's test loop); `test_passes` counts tests.
    """

    def __init__(self, config: SweepConfig, dense: nn.Module, wrap: Callable[..., L.LightningModule], datamodule,
                 local_rank: int = 0, rewind_points: dict | None = None):
        self.config, self.dense, self.wrap, self.datamodule, self.local_rank = config, dense, wrap, datamodule, local_rank
        self.rewind_points = rewind_points or {}  # train.py --rewind_step's saved weights, for the chains that rewind
        self.copies = PrunedCopies(config, dense, datamodule)
        self.measures = Measures(config, self.copies)
        self.device = self.copies.device
        self.test_passes, self.timings = 0, []  # timings: a dict per level
        self.retrain_callbacks: list[L.Callback] = []  # handed in from above: what reports a retraining's progress
        self._folding = self._test_trainer = None  # folding: the dense network's (conv, BatchNorm) pairs, traced once

    def trainer(self, **overrides) -> L.Trainer:
        return quiet_trainer(self.config, self.local_rank, **overrides)

    def test(self, network: nn.Module, precision: str | None = None) -> tuple[torch.Tensor, float]:
        """Which test images `network` (a permanently pruned copy it folds in place) answered correctly, and its mean loss."""
        self.test_passes += 1
        if self._folding is None:
            self._folding = conv_batchnorm_pairs(network)
        module = self.wrap(fold_batchnorm(network, in_place=True, pairs=self._folding), channels_last=True,
                           flip_test=self.config.flip_test)
        if precision:
            trainer = self.trainer(precision=precision)
        else:
            # One Trainer tests every level (Lightning resets its loops per call): building one costs more than a small network's test.
            if self._test_trainer is None:
                self._test_trainer = self.trainer(strategy=KeepOnDevice(self.device))
            trainer = self._test_trainer
        metrics = trainer.test(module, datamodule=self.datamodule, verbose=False)[0]
        return module.test_counts.answers(), metrics["test/loss"]

    def seed_training(self, seed: int, key: str) -> None:
        """Seed what a retraining draws, for one test (`key`) and one of its seeds: augmentation and anything else
        from torch's generator, and the order of the training batches. The first seed keeps the order training had."""
        torch.manual_seed(seed + zlib.crc32(key.encode()))
        self.datamodule.order_seed = self.datamodule.hparams.seed + seed - self.config.seed

    def evaluate(self, method: str, sparsity: float, recovery: str = "none") -> list[dict]:
        """Prune fresh copies of the dense network, recover as asked, test each: the row of this test, then its quantised twins'.

        The first seed's copy is measured once (what its masks save; with `quantize`, each bit width's export file);
        then every seed's copy (`seeds`: a seeded method's masks, or a retraining's training, differ by seed) is
        tested at every bit width, and each row is its seeds' mean.
        """
        started, test_seconds = time.perf_counter(), 0.0
        epochs_setting = RECOVERIES[recovery].epochs_setting
        base = {"curve": curve_name(method, recovery), "method": method, "recovery": recovery, "sparsity": sparsity,
                "retrain_epochs": getattr(self.config, epochs_setting) if epochs_setting else 0}
        variants = (*self.config.quantize, 0)  # bits; 0, float32, last: testing folds that copy in place
        measured, tests = {}, {bits: [] for bits in variants}  # bits: the first copy's measures; (seed, answers, loss) each
        for seed in level_seeds(self.config, method, sparsity, recovery):
            # Seeded by the test alone, so a fine-tuned level is the same whichever process tests it, and in what order.
            self.seed_training(seed, f"{method}/{recovery}/{sparsity}")
            network = self.pruned(method, sparsity, recovery, seed)
            for bits in variants:
                tested_network, records = self.quantized(network, bits, recovery)
                if bits not in measured:
                    measured[bits] = self.measures.variant(tested_network, records, base, bits)
                tested = time.perf_counter()
                tests[bits].append((seed, *self.test(tested_network)))
                test_seconds += time.perf_counter() - tested
        rows = [{**base, "curve": base["curve"] + (f"+Q{bits}" if bits else ""), "quantize": bits, **measured[bits],
                 **tested_rows(tests[bits])} for bits in sorted(variants, key=lambda bits: (bits != 0, -bits))]
        self.timings.append({"curve": base["curve"], "sparsity": sparsity, "started": started,
                             "seconds": time.perf_counter() - started, "test_seconds": test_seconds})
        return rows

    def quantized(self, network: nn.Module, bits: int, recovery: str) -> tuple[nn.Module, list | None]:
        """`network` itself for 0 bits; else a copy with its surviving weights quantised, and the quantiser's records."""
        if not bits:
            return network, None
        copied = copy.deepcopy(network)
        records = quantize_network(copied, bits, prunable_layers(copied, self.config.include_classifier))
        if recovery != "none" and self.config.bn_recalibrate:
            # A recovered curve's twin recovers too, cheaply: quantising shifts the activations
            # as pruning did, and re-estimating BatchNorm for them makes 4 bits nearly free.
            self.recalibrate(copied)
        return copied, records

    def tested_row(self, network: nn.Module, base: dict, seed: int) -> dict:
        """The row of a network masked and retrained elsewhere (a chain's step, one seed): what its masks save, and its test."""
        network = make_permanent(network).eval()
        storage = self.measures.masks(network, base["method"], slim=False)
        achieved = sparsity_report(network, self.config.include_classifier)["sparsity"]
        return {**base, "quantize": 0, "achieved_sparsity": achieved, **storage, **tested_rows([(seed, *self.test(network))])}

    def pruned(self, method: str, sparsity: float, recovery: str, seed: int) -> nn.Module:
        """A copy of the dense network masked at `sparsity`, recovered, with its masks folded in."""
        network = self.copies.pruned_copy(method, sparsity, seed, trained=RECOVERIES[recovery].epochs_setting is not None,
                                          channels_last=True)
        RECOVERIES[recovery].recover(self, network)
        return make_permanent(network).eval()

    def retrain(self, network: nn.Module, epochs: int, **schedule) -> None:
        """Train `network` in place for `epochs` on the training split, its masks holding the zeros; `schedule`
        (learning_rate, warmup_epochs, T_max, schedule_from_epoch) replaces the dense model's."""
        module = self.wrap(network, channels_last=True, **schedule)
        if self.config.retrain_compile:
            module.model = torch.compile(network)  # shares `network`'s parameters: they train, `network` stays eager
        self.trainer(max_epochs=epochs, limit_val_batches=0, limit_train_batches=self.config.finetune_batches,
                     precision=self.config.retrain_precision, callbacks=list(self.retrain_callbacks)).fit(module, datamodule=self.datamodule)

    def recalibrate(self, network: nn.Module) -> None:
        """Re-estimate `network`'s BatchNorm statistics on the configured training batches, where the network is."""
        device = next(network.parameters()).device
        recalibrate_batchnorm(self.wrap(network, channels_last=True), self.datamodule.recalibration_batches(self.config.bn_recalibrate, device))

    def dense_accuracy_in_float32(self) -> float:
        """The dense network's test accuracy at full precision, to set beside a sweep run in another."""
        answers, _ = self.test(make_permanent(copy.deepcopy(self.dense)).eval(), precision="32-true")
        return 100 * answers.float().mean().item()


def level_seeds(config: SweepConfig, method: str, sparsity: float, recovery: str) -> range:
    """The seeds a level is tested with: `--seeds` of them where its masks or its recovery's training depend on
    the seed, else the first alone (and at 0, where nothing is pruned or trained, one)."""
    repeated = (METHODS[method].seeded or RECOVERIES[recovery].seeded) and sparsity > 0
    return range(config.seed, config.seed + (config.seeds if repeated else 1))


def quiet_trainer(config: SweepConfig, local_rank: int, **overrides) -> L.Trainer:
    """A Trainer on the sweep's device that logs, checkpoints and prints nothing; `overrides` replace its settings."""
    settings = dict(accelerator=config.device, devices=[local_rank] if config.device == "gpu" else 1, logger=False,
                    enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                    limit_test_batches=config.limit_test_batches, precision=config.precision)
    return L.Trainer(**{**settings, **overrides})


def tested_rows(tests: list[tuple[int, torch.Tensor, float]]) -> dict:
    """A row's accuracy from its seeds' tests (seed, which images each answered correctly, its loss): their mean
    (`stats.mean_of_seeds`), and the answers the store keeps beside the rows."""
    counts = [(int(answers.sum()), answers.numel()) for _, answers, _ in tests]
    return {**mean_of_seeds([seed for seed, *_ in tests], counts, [loss for *_, loss in tests]),
            "answers": {seed: answers for seed, answers, _ in tests}}
