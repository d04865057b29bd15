"""A sweep dealt out across processes (CPU, two processes of one thread): the same results, resumable, failing loudly."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from magprune.sweep.config import SweepConfig
from magprune.sweep.ranks import share_cpu_threads
from magprune.sweep.store import RowStore

# Each process takes about 10 s to start on an idle 2-core machine and the grid below about 15 s
# more; a loaded machine gets ten times that before a test calls it a hang.
DEADLINE_SECONDS = 300
GRID = ["--sparsities", "0,0.3,0.6,0.9", "--methods", "layerwise,random",
        "--bn_recalibrate", "1", "--finetune_epochs", "1", "--finetune_batches", "1"]


def sweep_command(project, checkpoint, fake_cifar, out, *extra):
    return [sys.executable, str(project / "sweep.py"), "--checkpoint", str(checkpoint), "--data_dir", str(fake_cifar),
            "--output_dir", str(out), "--batch_size", "16", *GRID, *extra]


def run(command, cwd):
    result = subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=DEADLINE_SECONDS,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    return result


@pytest.fixture(scope="module")
def one_process(checkpoint, fake_cifar, tmp_path_factory, project):
    out = tmp_path_factory.mktemp("one_process")
    result = run(sweep_command(project, checkpoint, fake_cifar, out / "sweep"), out)
    assert result.returncode == 0, result.stderr[-2000:]
    return (out / "sweep" / "sweep.csv").read_text()


def test_two_processes_write_what_one_process_writes(one_process, checkpoint, fake_cifar, tmp_path, project):
    result = run(sweep_command(project, checkpoint, fake_cifar, tmp_path / "sweep", "--cpu_processes", "2"), tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "2 processes" in result.stdout.splitlines()[0]
    # Fine-tuned levels included: each test seeds itself, whichever process runs it.
    assert (tmp_path / "sweep" / "sweep.csv").read_text() == one_process
    assert not list((tmp_path / "sweep").glob("sweep.rank*.json"))  # the shards are merged and gone


def test_an_interrupted_two_process_sweep_resumes_without_redoing_finished_tests(one_process, checkpoint, fake_cifar, tmp_path, project):
    out = tmp_path / "sweep"
    command = sweep_command(project, checkpoint, fake_cifar, out, "--cpu_processes", "2")
    interrupted = subprocess.Popen(command, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                   env={**os.environ, "OMP_NUM_THREADS": "1"}, start_new_session=True)
    deadline = time.monotonic() + DEADLINE_SECONDS
    try:
        while not any(path.stat().st_size for path in out.glob("sweep.rank1.json")) and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        os.killpg(interrupted.pid, signal.SIGKILL)  # both processes, as a lost allocation would
        interrupted.wait()
    finished = len(json.loads((out / "sweep.rank1.json").read_text()))
    assert finished >= 1

    resumed = run(command, tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    kept = int(resumed.stdout.split("resuming: ")[1].split()[0])
    assert kept >= finished
    assert (out / "sweep.csv").read_text() == one_process


def test_a_failing_rank_ends_the_run_with_its_error(checkpoint, fake_cifar, tmp_path, project):
    out = tmp_path / "sweep"
    (out / ".sweep.rank1.json.partial").mkdir(parents=True)  # rank 1 cannot write its results
    started = time.monotonic()
    result = run(sweep_command(project, checkpoint, fake_cifar, out, "--cpu_processes", "2"), tmp_path)
    assert result.returncode != 0
    assert "rank 1 of 2" in result.stderr, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    assert time.monotonic() - started < DEADLINE_SECONDS


def test_cpu_processes_share_the_cores_unless_omp_num_threads_says_otherwise(monkeypatch):
    cores = len(os.sched_getaffinity(0))
    threads_before = torch.get_num_threads()
    try:
        monkeypatch.setenv("OMP_NUM_THREADS", "")  # so that the value set below is undone after the test
        monkeypatch.delenv("OMP_NUM_THREADS")
        assert share_cpu_threads(cores) == 1 == torch.get_num_threads()
        assert os.environ["OMP_NUM_THREADS"] == "1"  # what the launched processes inherit
        monkeypatch.setenv("OMP_NUM_THREADS", "3")
        assert share_cpu_threads(cores) == 3 == torch.get_num_threads()
    finally:
        torch.set_num_threads(threads_before)


def test_rows_the_plan_does_not_name_follow_it_by_curve_and_level_in_whatever_order_the_ranks_merged_them(tmp_path):
    store = RowStore(SweepConfig(output_dir=str(tmp_path), arch="resnet20"))
    chain, dense = ("global+IT-LRR", "it-lr_restart"), ("global", "none")
    store.rows = [{"curve": curve, "method": "global", "recovery": recovery, "sparsity": level}
                  for (curve, recovery), level in ((chain, 0.8), (chain, 0.5), (dense, 0.9), (chain, 0.9), (dense, 0.0))]
    store.order([("global", "none", 0.0), ("global", "none", 0.9)])
    assert [(row["curve"], row["sparsity"]) for row in store.rows] == [
        ("global", 0.0), ("global", 0.9), ("global+IT-LRR", 0.5), ("global+IT-LRR", 0.8), ("global+IT-LRR", 0.9)]
