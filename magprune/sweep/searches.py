"""Which levels a sweep tests, and in what order: the grid, the bisection for a knee, the layer sensitivity.

    sweep = Sweep(RowStore(config, ranks), LevelTester(config, network, wrap, datamodule), ranks)
    grid(sweep)                       # every (recovery, method, level); or bisect(sweep), layer_sensitivity(sweep)
    sweep.store.rows                  # one dict per (curve, level): correct/total, loss, what the masks save

A search is a function of a `Sweep`, which pairs the store of rows with the tester of one level:
`sweep.result(method, level, recovery)` is the row, from the store when an earlier run made it, else
tested now and stored at once. A new search is one more function here (and its test).
"""
import copy

from magprune.core.pruning import apply_pruning, make_permanent, prunable_layers
from magprune.core.stats import kept
from magprune.sweep.level import LevelTester
from magprune.sweep.ranks import Ranks, raise_if_failed
from magprune.sweep.recoveries import RECOVERIES, curve_name
from magprune.sweep.store import RowStore


def _unwrapped(items):
    return items


class Sweep:
    """A store of rows and a level tester, over one or several processes (`ranks`)."""

    def __init__(self, store: RowStore, tester: LevelTester, ranks: Ranks | None = None, chain_source=None):
        self.store, self.tester = store, tester
        self.ranks = ranks or Ranks()
        self.chain_source = chain_source  # another sweep's finished chain steps, which the chains may begin with
        # The store's config: this run's joined with the grid of the run it resumes.
        self.config = tester.config = store.config

    def result(self, method: str, sparsity: float, recovery: str = "none") -> dict:
        """The row for this test (its quantised twins are stored beside it), tested now unless a previous run made it."""
        row = self.store.find(curve_name(method, recovery), sparsity)
        if row is None:
            rows = self.tester.evaluate(method, sparsity, recovery)
            self.store.add(rows)
            if self.ranks.world > 1 and self.ranks.is_main:
                raise_if_failed(self.store.out_dir, self.ranks)
            row = rows[0]
        return row


def plan(config) -> list[tuple[str, str, float]]:
    """Every (method, recovery, level) of the grid, in the order the rows are written.

    A recovery that has nothing to do at level 0 (fine-tuning: nothing is pruned there) skips it.
    """
    return [(method, recovery, level) for recovery in config.recoveries
            for method in config.methods for level in config.sparsities
            if RECOVERIES[recovery].at_dense or level > 0]


def grid(sweep: Sweep, progress=_unwrapped) -> None:
    """This process's share of the grid: every cell, or with several processes every `world`-th from its rank.

    `progress` wraps the cells (a progress bar). A single process then orders and saves the rows;
    several leave that to rank 0's `sweep.store.finish` once every rank is done.
    """
    for method, recovery, level in progress(plan(sweep.config)[sweep.ranks.rank::sweep.ranks.world]):
        sweep.result(method, level, recovery)
    if sweep.ranks.world == 1:
        sweep.store.finish(plan(sweep.config))


def bisect(sweep: Sweep, progress=_unwrapped) -> dict[str, dict]:
    """Per curve (each method, one-shot and with each recovery asked for), the largest sparsity within
    tolerance of the dense network by the knee rule, assuming accuracy falls as sparsity rises."""
    config = sweep.config
    dense = sweep.result(config.methods[0], 0.0)
    searches = {}
    curves = [(method, recovery) for method in config.methods for recovery in config.recoveries]
    for method, recovery in progress(curves):
        passes_before = sweep.tester.test_passes
        inside, outside = 0.0, 1.0  # the largest level known within tolerance, the smallest known outside
        if kept(sweep.result(method, 1.0, recovery), dense, config.tolerance, config.knee_rule):
            inside = outside = 1.0
        while outside - inside > config.knee_resolution:
            middle = round((inside + outside) / 2, 6)
            if kept(sweep.result(method, middle, recovery), dense, config.tolerance, config.knee_rule):
                inside = middle
            else:
                outside = middle
        searches[curve_name(method, recovery)] = {"sparsity": inside, "test_passes": sweep.tester.test_passes - passes_before}
    return searches


def layer_sensitivity(sweep: Sweep, progress=_unwrapped) -> list[dict]:
    """Distiller's sensitivity analysis: L1-prune one layer at a time, the others dense."""
    tester, store = sweep.tester, sweep.store
    layers = list(prunable_layers(tester.dense, sweep.config.include_classifier))
    cells = [(layer, level) for layer in layers for level in sweep.config.sensitivity_sparsities]
    done = {(row["layer"], row["sparsity"]) for row in store.sensitivity}
    for layer, level in progress(cells):
        if (layer, level) in done:
            continue
        network = copy.deepcopy(tester.dense)
        apply_pruning(network, level, "layerwise", only=[layer])
        answers, _ = tester.test(make_permanent(network).eval())
        store.add_sensitivity({"layer": layer, "sparsity": level, "test_acc": 100 * answers.float().mean().item()})
    return store.sensitivity
