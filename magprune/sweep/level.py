"""One level of a sweep: prune a copy of the dense network, recover it as asked, measure what the masks save, test it.

    tester = LevelTester(config, network, wrap, datamodule)   # wrap(network, **hparams) -> a LightningModule
    rows = tester.evaluate("global", 0.5, "bn")               # the row of this test, then its quantised twins'

Every level starts again from the dense weights: copy the dense network, mask it
(`pruning.apply_pruning`), recover it (`recoveries.RECOVERIES`: re-estimate BatchNorm, fine-tune with
the masks held), fold the masks into the weights once, count what they save (`accounting`), fold
BatchNorm into the convolutions and run Lightning's test loop; with `quantize`, also test a quantised
copy per bit width and measure each variant's export file; with `seeds`, repeat for each seed of a
seeded method. The tester keeps no rows: the schedules ask it for them, the store keeps them.
"""
import copy
import time
import zlib
from typing import Callable

import lightning as L
import torch
from lightning.pytorch.strategies import SingleDeviceStrategy
from torch import nn
from torch.nn.utils import prune

from magprune.core.accounting import layer_flops, storage_report
from magprune.core.export import compact_bytes, export_extra
from magprune.core.folding import conv_batchnorm_pairs, fold_batchnorm
from magprune.core.obs import Calibration
from magprune.core.pruning import (
    METHODS,
    apply_pruning,
    make_permanent,
    prunable_layers,
    ranking,
    recalibrate_batchnorm,
    sparsity_report,
)
from magprune.core.quantize import quantize_network
from magprune.core.stats import mean_of_seeds
from magprune.sweep.config import SweepConfig
from magprune.sweep.recoveries import RECOVERIES, curve_name


class KeepOnDevice(SingleDeviceStrategy):
    """Lightning's one-device strategy, minus its teardown's moving the network back to the CPU and
    emptying the CUDA cache: after a sweep's test the network is dropped, and the next level would
    have to allocate its activations from CUDA afresh."""

    def teardown(self) -> None:
        self.precision_plugin.teardown()
        self.checkpoint_io.teardown()


class LevelTester:
    """Tests pruned copies of one dense network.

    `wrap(network, **hparams)` puts a network in the LightningModule the Trainer tests and fine-tunes
    (the dense model's settings, some replaced by `hparams`): the experiment's `ImageClassifier`,
    handed in by `sweep.py`. `timings` records each level: when it started (`time.perf_counter`), its
    wall time and the part of it spent in Lightning's test loop; `test_passes` counts test loops run.
    """

    def __init__(self, config: SweepConfig, dense: nn.Module, wrap: Callable[..., L.LightningModule], datamodule,
                 local_rank: int = 0, rewind_points: dict | None = None):
        self.config = config
        self.rewind_points = rewind_points or {}  # train.py --rewind_step's saved weights, for the chains that rewind
        self.dense = dense
        self.wrap = wrap
        self.datamodule = datamodule
        self.local_rank = local_rank
        self.device = next(dense.parameters()).device if dense is not None else torch.device("cpu")
        self.test_passes = 0
        self.timings: list[dict] = []
        self.retrain_callbacks: list[L.Callback] = []  # handed in from above: what reports a retraining's progress
        self._rankings = {}
        self._calibrations = {}  # seed: the images a calibrated method prunes from, drawn once
        self._reconstructed = {}  # (method, level, seed): a calibrated method's corrected weights and masks, by layer
        self._dense_flops = None
        self._folding = None  # the dense network's (conv, BatchNorm) pairs, traced once: every level has the same
        self._test_trainer = None

    def trainer(self, **overrides) -> L.Trainer:
        settings = dict(
            accelerator=self.config.device,
            devices=[self.local_rank] if self.config.device == "gpu" else 1,
            logger=False,
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            limit_test_batches=self.config.limit_test_batches,
            precision=self.config.precision,
        )
        return L.Trainer(**{**settings, **overrides})

    def removal_order(self, method: str) -> dict | None:
        """The dense network's order of removal for `method`, sorted once for every level."""
        if method not in self._rankings:
            self._rankings[method] = ranking(self.dense, method, self.config.include_classifier)
        return self._rankings[method]

    def calibration(self, method: str, seed: int) -> Calibration | None:
        """What a `calibrated` method (OBS) prunes from, for `seed`: its training images drawn once and kept resident;
        None for any other method."""
        if not METHODS[method].calibrated:
            return None
        if seed not in self._calibrations:
            images = self.datamodule.calibration_images(self.config.calibration_images, seed, self.device)
            self._calibrations[seed] = Calibration(images, self.config.obs_damping, self.config.obs_block, self.config.batch_size)
        return self._calibrations[seed]

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

    def seeds(self, method: str, sparsity: float, recovery: str) -> range:
        """The seeds a level is tested with: `--seeds` of them where its masks or its recovery's training depend on
        the seed, else the first alone (and at 0, where nothing is pruned or trained, one)."""
        repeated = (METHODS[method].seeded or RECOVERIES[recovery].seeded) and sparsity > 0
        return range(self.config.seed, self.config.seed + (self.config.seeds if repeated else 1))

    def seed_training(self, seed: int, key: str) -> None:
        """Seed what a retraining draws, for one test (`key`) and one of its seeds: augmentation and anything else
        from torch's generator, and the order of the training batches. The first seed keeps the order training had."""
        torch.manual_seed(seed + zlib.crc32(key.encode()))
        self.datamodule.order_seed = self.datamodule.hparams.seed + seed - self.config.seed

    def evaluate(self, method: str, sparsity: float, recovery: str = "none") -> list[dict]:
        """Prune fresh copies of the dense network, recover as asked, test each: the row of this test, then its quantised twins'.

        One copy per seed (`seeds`): a seeded method's masks, or a retraining recovery's training, differ by seed;
        the row is their mean. With `quantize`, each copy is also tested with its surviving weights quantised to
        each number of bits, and every row measures the file its export would write (`disk_bytes`).
        """
        started = time.perf_counter()
        epochs_setting = RECOVERIES[recovery].epochs_setting
        base = {"curve": curve_name(method, recovery), "method": method, "recovery": recovery, "sparsity": sparsity,
                "retrain_epochs": getattr(self.config, epochs_setting) if epochs_setting else 0}
        variants = (*self.config.quantize, 0)  # bits; 0, float32, last: testing folds that copy in place
        tests = {bits: [] for bits in variants}  # bits: (seed, answers, loss) of each seed's copy
        measured = {bits: {} for bits in variants}  # bits: what the first seed's copy saves (and its file)
        test_seconds = 0.0
        for seed in self.seeds(method, sparsity, recovery):
            # Seeded by the test alone, so a fine-tuned level is the same whichever process tests it, and in what order.
            self.seed_training(seed, f"{method}/{recovery}/{sparsity}")
            network = self.pruned(method, sparsity, recovery, seed)
            first = seed == self.config.seed
            if first:
                # A recovered row keeps its curve's masks and reports what they save too, so a bisected
                # knee has it at a level its one-shot curve never tested; the filters' slim copy, once.
                measured[0] = self.measure(network, method, slim=recovery == "none")
            for bits in variants:
                tested_network, records = self.quantized(network, bits, recovery)
                if first:
                    measured[bits]["achieved_sparsity"] = sparsity_report(tested_network, self.config.include_classifier)["sparsity"]
                if first and self.config.quantize:
                    extra = export_extra(self.config.arch, self.config.mean, self.config.std, method, sparsity, bits)
                    measured[bits]["disk_bytes"] = len(compact_bytes(tested_network, extra, records))
                tested = time.perf_counter()
                answers, loss = self.test(tested_network)
                test_seconds += time.perf_counter() - tested
                tests[bits].append((seed, answers, loss))
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
        storage = self.measure(network, base["method"], slim=False)
        achieved = sparsity_report(network, self.config.include_classifier)["sparsity"]
        answers, loss = self.test(network)
        return {**base, "quantize": 0, "achieved_sparsity": achieved, **storage, **tested_rows([(seed, answers, loss)])}

    def pruned(self, method: str, sparsity: float, recovery: str, seed: int) -> nn.Module:
        """A copy of the dense network masked at `sparsity`, recovered, with its masks folded in."""
        network = self.pruned_copy(method, sparsity, seed, trained=RECOVERIES[recovery].epochs_setting is not None,
                                   channels_last=True)
        RECOVERIES[recovery].recover(self, network)
        return make_permanent(network).eval()

    def pruned_copy(self, method: str, sparsity: float, seed: int, trained: bool = False,
                    channels_last: bool = False) -> nn.Module:
        """A copy of the dense network masked at `sparsity` by `method`, nothing recovered: how every caller gets one.
        A calibrated method's masks and corrected weights are worked out once per level and seed, and every later
        copy of that level starts from them. `trained`: see `dense_copy`."""
        network = self.dense_copy(trained)
        if channels_last:
            network = network.to(memory_format=torch.channels_last)
        if not METHODS[method].calibrated:
            apply_pruning(network, sparsity, method, self.config.include_classifier, seed, ranking=self.removal_order(method))
            return network
        layers = prunable_layers(network, self.config.include_classifier)
        key = (method, sparsity, seed)
        if key not in self._reconstructed:
            apply_pruning(network, sparsity, method, self.config.include_classifier, seed, calibration=self.calibration(method, seed))
            self._reconstructed[key] = {name: (layer.weight_orig.detach().clone(), layer.weight_mask.clone())
                                        for name, layer in layers.items() if hasattr(layer, "weight_mask")}
            return network
        for name, (weight, mask) in self._reconstructed[key].items():
            layers[name].weight.data = weight.clone()  # a copy: fine-tuning writes into it
            prune.custom_from_mask(layers[name], "weight", mask)
        return network

    def dense_copy(self, trained: bool = False) -> nn.Module:
        """A copy of the dense network to prune; unless it is to be `trained`, its prunable weights share the dense ones' memory.

        Masking, folding the masks in and folding BatchNorm all write new tensors and never into a
        weight, so an untrained copy needs its own Parameter objects (`prune.remove` swaps their data)
        but not its own 94 MB of ResNet-50 weights. An optimizer writes in place: a trained copy gets everything.
        """
        if trained:
            return copy.deepcopy(self.dense)
        weights = (module._parameters.get("weight") for module in prunable_layers(self.dense, self.config.include_classifier).values())
        shared = {id(weight): nn.Parameter(weight.data, requires_grad=weight.requires_grad) for weight in weights if weight is not None}
        return copy.deepcopy(self.dense, memo=shared)

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

    def example_input(self, device="cpu") -> torch.Tensor:
        """One image of the data's size, for what traces the network (FLOPs, filter removal)."""
        return torch.zeros(1, 3, *self.config.image_size, device=device)

    def measure(self, network: nn.Module, method: str, slim: bool = True) -> dict:
        """What the masks save, by arithmetic; for whole filters (with `slim`), the network with them really removed."""
        if self._dense_flops is None:
            self._dense_flops = layer_flops(network, self.example_input(next(network.parameters()).device))
        storage = storage_report(network, self.config.include_classifier, dense_flops=self._dense_flops)
        if METHODS[method].removes_filters and slim:
            from magprune.core.slim import remove_filters  # Torch-Pruning, only where filters are removed

            _, removed = remove_filters(network, self.example_input(), measure=False)
            storage.update(slim_params=removed["params"]["slim"], slim_flops=removed["flops"]["slim"])
        return storage

    def slim_latency(self, method: str, sparsity: float) -> dict:
        """CPU latencies of the dense network and of the one with `method`'s zero filters removed at
        `sparsity`; measured only where reported (the knee), as timing ResNet-50 costs seconds a level."""
        if not METHODS[method].removes_filters:
            return {}
        from magprune.core.slim import remove_filters

        network = self.pruned_copy(method, sparsity, self.config.seed, trained=True)  # filter removal rewrites weights
        _, slim = remove_filters(network, self.example_input(), latency_batch=32, warmup=2, repeats=5)
        return {"dense_latency_ms": slim["latency_ms"]["dense"], "slim_latency_ms": slim["latency_ms"]["slim"]}

    def file_bytes(self, method: str, sparsity: float) -> int:
        """Measured size of the compact export of the network pruned at `sparsity` by `method`."""
        return len(compact_bytes(self.pruned_copy(method, sparsity, self.config.seed)))

    def dense_accuracy_in_float32(self) -> float:
        """The dense network's test accuracy at full precision, to set beside a sweep run in another."""
        answers, _ = self.test(make_permanent(copy.deepcopy(self.dense)).eval(), precision="32-true")
        return 100 * answers.float().mean().item()


def tested_rows(tests: list[tuple[int, torch.Tensor, float]]) -> dict:
    """A row's accuracy from its seeds' tests (seed, which images each answered correctly, its loss): their mean
    (`stats.mean_of_seeds`), and the answers the store keeps beside the rows."""
    counts = [(int(answers.sum()), answers.numel()) for _, answers, _ in tests]
    return {**mean_of_seeds([seed for seed, *_ in tests], counts, [loss for *_, loss in tests]),
            "answers": {seed: answers for seed, answers, _ in tests}}
