"""What a level's masks save, measured: parameters, bytes and FLOPs by arithmetic; for whole filters, the network with
them really removed (Torch-Pruning) and, at a knee, its latency; the size of the file an export would write.

    measures = Measures(config, copies)
    measures.masks(network, "filters")        # {"nonzero_params": ..., "flops": ..., "slim_params": ..., ...}
"""
import torch
from torch import nn

from magprune.core.accounting import layer_flops, storage_report
from magprune.core.export import compact_bytes, export_extra
from magprune.core.pruning import METHODS, sparsity_report
from magprune.sweep.config import SweepConfig
from magprune.sweep.copies import PrunedCopies


class Measures:
    """Measures networks pruned from one dense network (`copies`); the dense FLOPs are counted once."""

    def __init__(self, config: SweepConfig, copies: PrunedCopies):
        self.config, self.copies = config, copies
        self._dense_flops = None

    def example_input(self, device="cpu") -> torch.Tensor:
        """One image of the data's size, for what traces the network (FLOPs, filter removal)."""
        return torch.zeros(1, 3, *self.config.image_size, device=device)

    def masks(self, network: nn.Module, method: str, slim: bool = True) -> dict:
        """What the masks save, by arithmetic; for whole filters (with `slim`), the network with them really removed."""
        if self._dense_flops is None:
            self._dense_flops = layer_flops(network, self.example_input(next(network.parameters()).device))
        storage = storage_report(network, self.config.include_classifier, dense_flops=self._dense_flops)
        if METHODS[method].removes_filters and slim:
            from magprune.core.slim import remove_filters  # Torch-Pruning, only where filters are removed

            _, removed = remove_filters(network, self.example_input(), measure=False)
            storage.update(slim_params=removed["params"]["slim"], slim_flops=removed["flops"]["slim"])
        return storage

    def variant(self, network: nn.Module, records: list | None, base: dict, bits: int) -> dict:
        """What a row reports of its first copy beside its test: at full precision, what the masks save (a recovered
        row keeps its curve's masks and reports it too, so a bisected knee has it at a level its one-shot curve never
        tested; the filters' slim copy once, one-shot); at every bit width, the sparsity reached and, with
        `quantize`, the export's file (`records`: the quantiser's)."""
        row = {} if bits else self.masks(network, base["method"], slim=base["recovery"] == "none")
        row["achieved_sparsity"] = sparsity_report(network, self.config.include_classifier)["sparsity"]
        if self.config.quantize:
            extra = export_extra(self.config.arch, self.config.mean, self.config.std, base["method"], base["sparsity"], bits)
            row["disk_bytes"] = len(compact_bytes(network, extra, records))
        return row

    def slim_latency(self, method: str, sparsity: float) -> dict:
        """CPU latencies of the dense network and of the one with `method`'s zero filters removed at
        `sparsity`; measured only where reported (the knee), as timing ResNet-50 costs seconds a level."""
        if not METHODS[method].removes_filters:
            return {}
        from magprune.core.slim import remove_filters

        network = self.copies.pruned_copy(method, sparsity, self.config.seed, trained=True)  # filter removal rewrites weights
        _, slim = remove_filters(network, self.example_input(), latency_batch=32, warmup=2, repeats=5)
        return {"dense_latency_ms": slim["latency_ms"]["dense"], "slim_latency_ms": slim["latency_ms"]["slim"]}

    def file_bytes(self, method: str, sparsity: float) -> int:
        """Measured size of the compact export of the network pruned at `sparsity` by `method`."""
        return len(compact_bytes(self.copies.pruned_copy(method, sparsity, self.config.seed)))
