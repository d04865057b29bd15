"""The sweep: prune one dense network at every level of every method, recover as asked, test each.

    config = SweepConfig(source=..., weights_sha256=..., arch="resnet20", methods=("layerwise", "global"), sparsities=(0, 0.5, 0.9), ...)
    sweep = Sweep(config, model, datamodule)
    sweep.grid()                      # every (recovery, method, level); or sweep.bisect(), sweep.layer_sensitivity()
    sweep.rows                        # one dict per (curve, level): correct/total, loss, what the masks save

Every level starts again from the dense weights. One level: copy the dense network, mask it
(`pruning.apply_pruning`), re-estimate BatchNorm or fine-tune with the masks held, fold the masks
into the weights once, count what they save (`accounting`), fold BatchNorm into the convolutions
and run Lightning's test loop; with `quantize`, also test a quantised copy per bit width and measure
each variant's export file; with `seeds`, repeat for each seed of a seeded method. The rows are
written to `sweep.json` and `sweep.csv` after every test (by several processes, to one file each,
`sweep_ranks`), so an interrupted sweep resumes where it stopped; `sweep.json` also holds the config, as run.
"""
import copy
import dataclasses
import json
import time
import zlib
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.strategies import SingleDeviceStrategy
from torch import nn

import results
from accounting import layer_flops, storage_report
from export import compact_bytes, export_extra
from files import atomic_write
from lightning_module import ImageClassifier
from models import conv_batchnorm_pairs, fold_batchnorm
from pruning import (
    METHODS,
    apply_pruning,
    make_permanent,
    prunable_layers,
    ranking,
    recalibrate_batchnorm,
    sparsity_report,
)
from quantize import quantize_network
from sweep_ranks import Ranks, clear_shards, raise_if_failed, read_shards, shard_path

# Recovery steps after masking, by the suffix their curves carry.
RECOVERIES = {"none": "", "bn": "+BN", "finetune": "+FT"}


def curve_name(method: str, recovery: str) -> str:
    return method + RECOVERIES[recovery]


@dataclasses.dataclass(frozen=True)
class SweepConfig:
    """Everything a sweep does, as run: `sweep.json` stores it, and resuming compares it."""

    source: str                      # the checkpoint or weights file swept
    weights_sha256: str              # of the dense weights: a file replaced at the same path is another sweep
    arch: str
    methods: tuple[str, ...]         # names in pruning.METHODS, one curve each
    sparsities: tuple[float, ...]    # fractions of the prunable weights removed; 0 is always among them
    data_dir: str
    mean: tuple[float, ...]          # the input normalisation the network was trained with
    std: tuple[float, ...]
    output_dir: str
    include_classifier: bool = False
    bn_recalibrate: int = 0          # training batches for the '+BN' curves; 0: no such curves
    finetune_epochs: int = 0         # epochs of the '+FT' curves; 0: no such curves
    finetune_lr: float = 0.01        # peak of the fine-tuning cosine
    finetune_batches: int | float | None = None   # Lightning limit_train_batches while fine-tuning
    find_knee: bool = False          # bisect for each method's knee instead of the grid
    knee_resolution: float = 0.01    # width, in sparsity, at which bisection stops
    sensitivity_sparsities: tuple[float, ...] = ()  # one layer pruned at a time at these levels; () is off
    tolerance: float = 1.0           # accuracy points below dense that still count as kept
    batch_size: int = 256            # images per batch: of the tests, BatchNorm recalibration and fine-tuning
    limit_test_batches: int | float | None = None
    seed: int = 0                    # of the random method's masks
    seeds: int = 1                   # seeded methods test this many masks per level, seed, seed+1, ...
    quantize: tuple[int, ...] = ()   # bits of each curve's quantised twins ('+Q8', '+Q4'); () is none
    device: str = "cpu"              # "cpu" or "gpu"
    precision: str = "32-true"       # Lightning precision of the tests
    flip_test: bool = False          # each test image answered with the mean logits of it and its mirror image

    # Settings that change what is reported or added, not what an existing row measured: a sweep
    # resumed with other values for them keeps its rows. The file swept is compared by its weights' digest,
    # so a copy elsewhere (a slimmed checkpoint) resumes, and other weights at the same path do not.
    NOT_COMPARED = ("source", "output_dir", "tolerance", "knee_resolution", "sensitivity_sparsities")
    # The grid itself: a rerun with other methods or levels adds them to the rows kept.
    EXTENDED = ("methods", "sparsities")

    @property
    def recoveries(self) -> list[str]:
        return ["none"] + ["bn"] * bool(self.bn_recalibrate) + ["finetune"] * bool(self.finetune_epochs)

    def to_json(self) -> dict:
        return json.loads(json.dumps(dataclasses.asdict(self)))

    def measures_like(self, saved: dict) -> bool:
        """Whether the rows of a sweep run with the `saved` config are what this one would measure."""
        mine = {key: value for key, value in self.to_json().items() if key not in self.NOT_COMPARED + self.EXTENDED}
        # A setting added since that sweep was made measured then what its default measures now.
        defaults = json.loads(json.dumps({field.name: field.default for field in dataclasses.fields(self)
                                          if field.default is not dataclasses.MISSING}))
        return mine == {key: saved.get(key, defaults.get(key)) for key in mine}

    def joined_with(self, saved: dict) -> "SweepConfig":
        """This config with the methods and levels of the `saved` sweep it resumes added: a rerun never
        drops rows. Its own methods come first (the first is the one `--export` writes)."""
        methods = self.methods + tuple(method for method in saved["methods"] if method not in self.methods)
        return dataclasses.replace(self, methods=methods, sparsities=tuple(sorted({*self.sparsities, *saved["sparsities"]})))


class SettingsChanged(Exception):
    """The output folder holds a sweep run with other settings."""


class KeepOnDevice(SingleDeviceStrategy):
    """Lightning's one-device strategy, minus its teardown's moving the network back to the CPU and
    emptying the CUDA cache: after a sweep's test the network is dropped, and the next level would
    have to allocate its activations from CUDA afresh."""

    def teardown(self) -> None:
        self.precision_plugin.teardown()
        self.checkpoint_io.teardown()


class Sweep:
    """Tests pruned copies of one dense network, keeping results on disk after every test so it can resume.

    `timings` records each test: when it started (`time.perf_counter`), its wall time and the part of
    it spent in Lightning's test loop.
    """

    def __init__(self, config: SweepConfig, model: ImageClassifier, datamodule, ranks: Ranks | None = None):
        self.config = config
        self.dense = model
        self.datamodule = datamodule
        self.ranks = ranks or Ranks()
        self.out_dir = Path(config.output_dir)
        self.rows, self.sensitivity = self._resume()
        self._made: list[dict] = []  # the rows this process tested in this run: its shard, when it is one of several
        if self.ranks.world > 1 and self.ranks.is_main:
            self.save()  # the config, before any rank writes rows: what a resumed run compares against
        self.test_passes = 0
        self.timings: list[dict] = []
        self._rankings = {}
        self._dense_flops = None
        self._folding = None  # the dense network's (conv, BatchNorm) pairs, traced once: every level has the same
        self._test_trainer = None

    def _resume(self) -> tuple[list[dict], list[dict]]:
        saved = self.out_dir / "sweep.json"
        if not saved.exists():
            return [], []
        document = json.loads(saved.read_text())
        if not self.config.measures_like(document.get("config", {})):
            raise SettingsChanged(self.out_dir)
        self.config = self.config.joined_with(document["config"])
        rows = self._with_shards(document["rows"])
        for row in rows:  # rows of a sweep made before accuracies carried their standard error
            row.setdefault("test_acc_se", results.binomial_se(row["correct"], row["total"]))
        return rows, document.get("sensitivity", [])

    def _with_shards(self, rows: list[dict]) -> list[dict]:
        """`rows` and the rows of every rank's file in the output folder that they do not already hold."""
        known = {(row["curve"], row["sparsity"]) for row in rows}
        return rows + [row for row in read_shards(self.out_dir) if (row["curve"], row["sparsity"]) not in known]

    def trainer(self, **overrides) -> L.Trainer:
        settings = dict(
            accelerator=self.config.device,
            devices=[self.ranks.local_rank] if self.config.device == "gpu" else 1,
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
            self._rankings[method] = ranking(self.dense.model, method, self.config.include_classifier)
        return self._rankings[method]

    def _module(self, network: nn.Module, **hparams) -> ImageClassifier:
        """`network` in a LightningModule with the dense model's settings, some replaced by `hparams`."""
        return ImageClassifier(**{**self.dense.hparams, **hparams}, network=network)

    def test(self, network: nn.Module, precision: str | None = None) -> tuple[int, int, float]:
        """Correct answers, test images and mean loss of `network`, a permanently pruned copy it folds in place."""
        self.test_passes += 1
        if self._folding is None:
            self._folding = conv_batchnorm_pairs(network)
        module = self._module(fold_batchnorm(network, in_place=True, pairs=self._folding), channels_last=True,
                              flip_test=self.config.flip_test)
        if precision:
            trainer = self.trainer(precision=precision)
        else:
            # One Trainer tests every level (Lightning resets its loops per call): building one costs more than a small network's test.
            if self._test_trainer is None:
                self._test_trainer = self.trainer(strategy=KeepOnDevice(self.dense.device))
            trainer = self._test_trainer
        metrics = trainer.test(module, datamodule=self.datamodule, verbose=False)[0]
        correct, total = module.test_counts.compute()
        return correct, total, metrics["test/loss"]

    def evaluate(self, method: str, sparsity: float, recovery: str = "none") -> list[dict]:
        """Prune fresh copies of the dense network, recover as asked, test each: the row of this test, then its quantised twins'.

        One copy per seed for a method whose masks come from a seed (`--seeds`), else (and at 0) one. With
        `quantize`, each copy is also tested with its surviving weights quantised to each number of
        bits, and every row measures the file its export would write (`disk_bytes`).
        """
        started = time.perf_counter()
        # Seeded by the test alone, so a fine-tuned level is the same whichever process tests it, and in what order.
        torch.manual_seed(self.config.seed + zlib.crc32(f"{method}/{recovery}/{sparsity}".encode()))
        seeds = self.config.seeds if METHODS[method].seeded and sparsity > 0 else 1  # at 0 every seed's mask is empty
        base = {"curve": curve_name(method, recovery), "method": method, "recovery": recovery, "sparsity": sparsity}
        variants = (*self.config.quantize, 0)  # bits; 0, float32, last: testing folds that copy in place
        counts, losses, disk_bytes = {bits: [] for bits in variants}, {bits: [] for bits in variants}, {}
        achieved = {}  # bits: zero weights of the first seed's tested network (8-bit codes round the tiniest survivors to zero)
        test_seconds = 0.0
        for seed in range(self.config.seed, self.config.seed + seeds):
            network = self.pruned(method, sparsity, recovery, seed)
            if seed == self.config.seed:
                # A recovered row keeps its curve's masks and reports what they save too, so a bisected
                # knee has it at a level its one-shot curve never tested; the filters' slim copy, once.
                storage = self.measure(network, method, slim=recovery == "none")
            for bits in variants:
                tested_network, records = network, None
                if bits:
                    tested_network = copy.deepcopy(network)
                    records = quantize_network(tested_network, bits, prunable_layers(tested_network, self.config.include_classifier))
                    if recovery != "none" and self.config.bn_recalibrate:
                        # A recovered curve's twin recovers too, cheaply: quantising shifts the activations
                        # as pruning did, and re-estimating BatchNorm for them makes 4 bits nearly free.
                        self.recalibrate(tested_network)
                if seed == self.config.seed:
                    achieved[bits] = sparsity_report(tested_network, self.config.include_classifier)["sparsity"]
                if self.config.quantize and seed == self.config.seed:
                    extra = export_extra(self.config.arch, self.config.mean, self.config.std, method, sparsity, bits)
                    disk_bytes[bits] = len(compact_bytes(tested_network, extra, records))
                tested = time.perf_counter()
                correct, total, loss = self.test(tested_network)
                test_seconds += time.perf_counter() - tested
                counts[bits].append((correct, total))
                losses[bits].append(loss)
        rows = []
        for bits in sorted(variants, key=lambda bits: (bits != 0, -bits)):
            row = {**base, "curve": base["curve"] + (f"+Q{bits}" if bits else ""), "quantize": bits, "achieved_sparsity": achieved[bits],
                   **(storage if not bits else {}), **({"disk_bytes": disk_bytes[bits]} if bits in disk_bytes else {})}
            row.update(results.seeded_accuracy(counts[bits]), test_loss=sum(losses[bits]) / len(losses[bits]))
            rows.append(row)
        self.timings.append({"curve": base["curve"], "sparsity": sparsity, "started": started,
                             "seconds": time.perf_counter() - started, "test_seconds": test_seconds})
        return rows

    def pruned(self, method: str, sparsity: float, recovery: str, seed: int) -> nn.Module:
        """A copy of the dense network masked at `sparsity`, recovered, with its masks folded in."""
        network = self.dense_copy(trained=recovery == "finetune").to(memory_format=torch.channels_last)
        apply_pruning(network, sparsity, method, self.config.include_classifier, seed, ranking=self.removal_order(method))
        if recovery == "bn":
            self.recalibrate(network)
        if recovery == "finetune":
            # A module of its own for the fine-tuning schedule, a cosine from its peak with no warm-up (the
            # training recipe's warm-up would outlast a short fine-tuning); the masks hold the zeros.
            finetune = self._module(network, channels_last=True, learning_rate=self.config.finetune_lr,
                                    T_max=self.config.finetune_epochs, warmup_epochs=0)
            self.trainer(max_epochs=self.config.finetune_epochs, limit_val_batches=0,
                         limit_train_batches=self.config.finetune_batches).fit(finetune, datamodule=self.datamodule)
        return make_permanent(network).eval()

    def dense_copy(self, trained: bool) -> nn.Module:
        """A copy of the dense network to prune; unless it is to be `trained`, its prunable weights share the dense ones' memory.

        Masking, folding the masks in and folding BatchNorm all write new tensors and never into a
        weight, so an untrained copy needs its own Parameter objects (`prune.remove` swaps their data)
        but not its own 94 MB of ResNet-50 weights. An optimizer writes in place: a trained copy gets everything.
        """
        if trained:
            return copy.deepcopy(self.dense.model)
        weights = (module._parameters.get("weight") for module in prunable_layers(self.dense.model, self.config.include_classifier).values())
        shared = {id(weight): nn.Parameter(weight.data, requires_grad=weight.requires_grad) for weight in weights if weight is not None}
        return copy.deepcopy(self.dense.model, memo=shared)

    def recalibrate(self, network: nn.Module) -> None:
        """Re-estimate `network`'s BatchNorm statistics on the configured training batches, where the network is."""
        device = next(network.parameters()).device
        recalibrate_batchnorm(self._module(network, channels_last=True), self.datamodule.recalibration_batches(self.config.bn_recalibrate, device))

    def measure(self, network: nn.Module, method: str, slim: bool = True) -> dict:
        """What the masks save, by arithmetic; for whole filters (with `slim`), the network with them really removed."""
        if self._dense_flops is None:
            self._dense_flops = layer_flops(network, torch.zeros(1, 3, 32, 32, device=next(network.parameters()).device))
        storage = storage_report(network, self.config.include_classifier, dense_flops=self._dense_flops)
        if method == "filters" and slim:
            from slim import remove_filters  # Torch-Pruning, only where filters are removed

            _, removed = remove_filters(network, torch.zeros(1, 3, 32, 32), measure=False)
            storage.update(slim_params=removed["params"]["slim"], slim_flops=removed["flops"]["slim"])
        return storage

    def slim_latency(self, method: str, sparsity: float) -> dict:
        """CPU latencies of the dense network and of the one with `method`'s zero filters removed at
        `sparsity`; measured only where reported (the knee), as timing ResNet-50 costs seconds a level."""
        if method != "filters":
            return {}
        from slim import remove_filters

        network = copy.deepcopy(self.dense.model)
        apply_pruning(network, sparsity, method, self.config.include_classifier, self.config.seed, ranking=self.removal_order(method))
        _, slim = remove_filters(network, torch.zeros(1, 3, 32, 32), latency_batch=32, warmup=2, repeats=5)
        return {"dense_latency_ms": slim["latency_ms"]["dense"], "slim_latency_ms": slim["latency_ms"]["slim"]}

    def file_bytes(self, method: str, sparsity: float) -> int:
        """Measured size of the compact export of the network pruned at `sparsity` by `method`."""
        network = copy.deepcopy(self.dense.model)
        apply_pruning(network, sparsity, method, self.config.include_classifier, self.config.seed, ranking=self.removal_order(method))
        return len(compact_bytes(network))

    def dense_accuracy_in_float32(self) -> float:
        """The dense network's test accuracy at full precision, to set beside a sweep run in another."""
        correct, total, _ = self.test(make_permanent(copy.deepcopy(self.dense.model)).eval(), precision="32-true")
        return 100 * correct / total

    def result(self, method: str, sparsity: float, recovery: str = "none") -> dict:
        """The row for this test (its quantised twins are stored beside it), from disk when a previous run already made it."""
        curve = curve_name(method, recovery)
        row = next((row for row in self.rows if row["curve"] == curve and row["sparsity"] == sparsity), None)
        if row is None:
            new_rows = self.evaluate(method, sparsity, recovery)
            self.rows.extend(new_rows)
            self._made.extend(new_rows)
            if self.ranks.world == 1:
                self.save()
            else:
                atomic_write(shard_path(self.out_dir, self.ranks.rank), json.dumps(self._made, indent=1))
                if self.ranks.is_main:
                    raise_if_failed(self.out_dir, self.ranks)
            row = new_rows[0]
        return row

    def plan(self) -> list[tuple[str, str, float]]:
        """Every (method, recovery, level) of the grid, in the order the rows are written.

        Fine-tuning skips level 0: with nothing pruned there is nothing to recover, and an epoch of
        training the dense model would cost as much as any other level's.
        """
        return [(method, recovery, level) for recovery in self.config.recoveries
                for method in self.config.methods for level in self.config.sparsities
                if not (recovery == "finetune" and level == 0)]

    def grid(self, progress=lambda plan: plan) -> None:
        """This process's share of the grid: every cell, or with several processes every `world`-th from its rank.

        `progress` wraps the cells (a progress bar). A single process then orders and saves the rows;
        several leave that to `gather`.
        """
        for method, recovery, level in progress(self.plan()[self.ranks.rank::self.ranks.world]):
            self.result(method, level, recovery)
        if self.ranks.world == 1:
            self._order_rows()
            self.save()
            clear_shards(self.out_dir)  # rows an earlier run of several processes left are in sweep.json now

    def gather(self) -> None:
        """Rank 0, once every rank is done: every rank's rows in grid order, in this sweep's own files."""
        self.rows = self._with_shards(self.rows)
        self._order_rows()
        self.save()
        clear_shards(self.out_dir)

    def _order_rows(self) -> None:
        position = {(method, recovery, level): index for index, (method, recovery, level) in enumerate(self.plan())}
        self.rows.sort(key=lambda row: (position.get((row["method"], row["recovery"], row["sparsity"]), len(position)),
                                        row.get("quantize", 0) != 0, -row.get("quantize", 0)))

    def bisect(self, progress=lambda curves: curves) -> dict[str, dict]:
        """Per curve (each method, one-shot and with each recovery asked for), the largest sparsity within
        tolerance of the dense network, assuming accuracy falls as sparsity rises."""
        tolerance = self.config.tolerance
        dense = self.result(self.config.methods[0], 0.0)
        searches = {}
        curves = [(method, recovery) for method in self.config.methods for recovery in self.config.recoveries]
        for method, recovery in progress(curves):
            passes_before = self.test_passes
            kept, lost = 0.0, 1.0
            if results.within_tolerance(self.result(method, 1.0, recovery), dense, tolerance):
                kept = lost = 1.0
            while lost - kept > self.config.knee_resolution:
                middle = round((kept + lost) / 2, 6)
                if results.within_tolerance(self.result(method, middle, recovery), dense, tolerance):
                    kept = middle
                else:
                    lost = middle
            searches[curve_name(method, recovery)] = {"sparsity": kept, "test_passes": self.test_passes - passes_before}
        return searches

    def layer_sensitivity(self, progress=lambda plan: plan) -> list[dict]:
        """Distiller's sensitivity analysis: L1-prune one layer at a time, the others dense."""
        layers = list(prunable_layers(self.dense.model, self.config.include_classifier))
        plan = [(layer, level) for layer in layers for level in self.config.sensitivity_sparsities]
        done = {(row["layer"], row["sparsity"]) for row in self.sensitivity}
        for layer, level in progress(plan):
            if (layer, level) in done:
                continue
            network = copy.deepcopy(self.dense.model)
            apply_pruning(network, level, "layerwise", only=[layer])
            correct, total, _ = self.test(make_permanent(network).eval())
            self.sensitivity.append({"layer": layer, "sparsity": level, "test_acc": 100 * correct / total})
            self.save()
        return self.sensitivity

    def save(self, summary: dict | None = None) -> None:
        document = {"config": self.config.to_json(), "rows": self.rows, "sensitivity": self.sensitivity,
                    **({"summary": summary} if summary else {})}
        atomic_write(self.out_dir / "sweep.json", json.dumps(document, indent=1))
        atomic_write(self.out_dir / "sweep.csv", results.csv_text(self.rows))
        if self.sensitivity:
            atomic_write(self.out_dir / "sensitivity.csv", results.csv_text(self.sensitivity))
