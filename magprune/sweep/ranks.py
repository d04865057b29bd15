"""A sweep over several processes: Lightning's launcher starts them, the grid's cells are dealt out, files gather them.

    ranks = launch(processes_per_node=2, num_nodes=1)   # this process is one of them: ranks.rank, ranks.world
    ... each rank tests cells rank, rank + world, ... and writes its rows to sweep.rank<r>.json ...
    mark(out_dir, ranks)                                # every rank: done (or failed, with the error)
    wait_for_others(out_dir, ranks)                     # rank 0: until every other rank has marked

The processes come from the same launcher and cluster handling as training's DDP: started here on one
machine, or by torchrun or SLURM (one task per device), which Lightning's cluster environments read.
They never talk to each other directly: a test inside a rank is an ordinary single-device Lightning run,
and a process group would make its torchmetrics synchronise with ranks busy with other tests. So rows and
outcomes travel through files in the output folder (shared between machines on a cluster): each rank
writes its rows after every test, and at its end `rank<r>.<launch>.done`, or `.failed` with the error;
rank 0 waits for every other rank, then merges. Resuming reads every rank's rows, whatever number of
processes made them.
"""
import dataclasses
import os
import time
from pathlib import Path

import torch
from lightning.fabric.plugins.environments import LightningEnvironment, SLURMEnvironment, TorchElasticEnvironment
from lightning.fabric.strategies.launchers.subprocess_script import _SubprocessScriptLauncher

from magprune.core.io import atomic_write

POLL_SECONDS = 0.5


class RankFailed(Exception):
    """Another process of the sweep failed or vanished; the message says which and why."""


@dataclasses.dataclass
class Ranks:
    rank: int = 0
    world: int = 1
    local_rank: int = 0        # which of its machine's devices this process uses
    launch_id: str = ""        # the same in every process of one launch, different in the next
    children: list = dataclasses.field(default_factory=list)  # processes this one started (rank 0 of a local launch)

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def launch(processes_per_node: int, num_nodes: int = 1) -> Ranks:
    """Become one of `processes_per_node * num_nodes` processes: start the others here unless a cluster already has."""
    if processes_per_node * num_nodes == 1:
        return Ranks()
    environment = next((kind() for kind in (SLURMEnvironment, TorchElasticEnvironment) if kind.detect()), None)
    environment = environment or LightningEnvironment()
    launcher = _SubprocessScriptLauncher(environment, processes_per_node, num_nodes)
    launcher.launch(lambda: None)  # re-runs this command in the other local processes, with their ranks in the environment
    launch_id = "-".join(os.environ.get(key, "") for key in ("SLURM_JOB_ID", "SLURM_STEP_ID", "TORCHELASTIC_RUN_ID", "MASTER_PORT"))
    return Ranks(rank=environment.node_rank() * processes_per_node + environment.local_rank(),
                 world=processes_per_node * num_nodes, local_rank=environment.local_rank(),
                 launch_id=launch_id.strip("-"), children=launcher.procs)


def share_cpu_threads(processes: int) -> int:
    """Give each of `processes` CPU processes an equal share of this machine's cores, and return it.

    Each process would otherwise take a thread per core, so N processes would run N threads on every
    core. OMP_NUM_THREADS, when set, wins; set here, it reaches the processes the launcher starts.
    """
    if "OMP_NUM_THREADS" not in os.environ:
        os.environ["OMP_NUM_THREADS"] = str(max(1, len(os.sched_getaffinity(0)) // processes))
    threads = int(os.environ["OMP_NUM_THREADS"])
    torch.set_num_threads(threads)
    return threads


def _marker(out_dir: Path, ranks: Ranks, rank: int, outcome: str) -> Path:
    return out_dir / f"rank{rank}.{ranks.launch_id}.{outcome}"


def mark(out_dir: Path, ranks: Ranks, error: BaseException | None = None) -> None:
    """Say that this rank finished its cells, or with which error it stopped."""
    outcome = "failed" if error is not None else "done"
    atomic_write(_marker(out_dir, ranks, ranks.rank, outcome), f"{type(error).__name__}: {error}" if error is not None else "")


def raise_if_failed(out_dir: Path, ranks: Ranks) -> None:
    """Rank 0: raise RankFailed if another rank failed, or its process ended without finishing."""
    for rank in range(1, ranks.world):
        failed = _marker(out_dir, ranks, rank, "failed")
        if failed.exists():
            raise RankFailed(f"rank {rank} of {ranks.world} failed: {failed.read_text()}")
    for rank, child in enumerate(ranks.children, start=1):
        if child.poll() is not None and not _marker(out_dir, ranks, rank, "done").exists():
            raise RankFailed(f"rank {rank} of {ranks.world} ended (exit status {child.returncode}) before finishing its tests")


def wait_for_others(out_dir: Path, ranks: Ranks) -> None:
    """Rank 0: return when every other rank is done; raise RankFailed as soon as one fails."""
    while True:
        raise_if_failed(out_dir, ranks)
        if all(_marker(out_dir, ranks, rank, "done").exists() for rank in range(1, ranks.world)):
            return
        time.sleep(POLL_SECONDS)


def stop_children(ranks: Ranks) -> None:
    """Rank 0, failing: end the processes it started rather than leave them testing for nobody."""
    for child in ranks.children:
        if child.poll() is None:
            child.kill()
