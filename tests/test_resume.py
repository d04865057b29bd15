"""An interrupted train.py run continues with --resume: to the full epoch count, in the same version folder."""
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch

EPOCHS = 4
BATCH_SIZE = 8
# fake_cifar's 200 training images less the 10% validation split; the last batch is a partial one.
BATCHES_PER_EPOCH = math.ceil(180 / BATCH_SIZE)
# The first epoch's checkpoint comes about 12 s after the start on an idle 2-core machine (the whole
# test takes 23 s); a loaded machine gets ten times that.
SECONDS_TO_FIRST_CHECKPOINT = 120


def train_command(project: Path, fake_cifar: Path, *extra: str) -> list[str]:
    return [sys.executable, str(project / "train.py"), "--arch", "resnet20", "--data_dir", str(fake_cifar),
            "--epochs", str(EPOCHS), "--T_max", str(EPOCHS), "--batch_size", str(BATCH_SIZE), "--num_workers", "0",
            "--limit_test_batches", "1", "--checkpoint_root", "checkpoints", "--log_root", "lightning_logs", *extra]


def start_training(command: list[str], cwd: Path, stderr) -> subprocess.Popen:
    # The progress bar would fill an unread stdout pipe and stall the run.
    return subprocess.Popen(command, cwd=cwd, stdout=subprocess.DEVNULL, stderr=stderr,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})


def wait_for_checkpoint(run: subprocess.Popen, checkpoint: Path, stderr: Path):
    """Poll until `checkpoint` exists, failing if the run ends or takes too long first."""
    deadline = time.monotonic() + SECONDS_TO_FIRST_CHECKPOINT
    while not checkpoint.exists() and run.poll() is None and time.monotonic() < deadline:
        time.sleep(0.1)
    assert run.poll() is None, f"training ended before it could be interrupted:\n{stderr.read_text()[-2000:]}"
    assert checkpoint.exists(), f"no {checkpoint.name} within {SECONDS_TO_FIRST_CHECKPOINT} s"


def test_a_killed_run_resumes_to_the_last_epoch_in_its_own_version_folder(fake_cifar, tmp_path, project):
    last = tmp_path / "checkpoints" / "resnet20" / "version_0" / "last.ckpt"
    stderr = tmp_path / "stderr.txt"
    with stderr.open("wb") as stderr_file:
        interrupted = start_training(train_command(project, fake_cifar), tmp_path, stderr_file)
        try:
            wait_for_checkpoint(interrupted, last, stderr)
        finally:
            interrupted.send_signal(signal.SIGKILL)
            interrupted.wait()
        assert torch.load(last, weights_only=True)["epoch"] < EPOCHS - 1

        resumed = start_training(train_command(project, fake_cifar, "--resume"), tmp_path, stderr_file)
        try:
            assert resumed.wait(timeout=300) == 0, stderr.read_text()[-2000:]
        finally:
            resumed.kill()

    checkpoint = torch.load(last, weights_only=True)
    assert checkpoint["epoch"] == EPOCHS - 1 and checkpoint["global_step"] == EPOCHS * BATCHES_PER_EPOCH
    assert [path.name for path in (tmp_path / "checkpoints" / "resnet20").iterdir()] == ["version_0"]
    assert [path.name for path in (tmp_path / "lightning_logs" / "train").iterdir()] == ["version_0"]
    # TensorBoard names event files events.out.tfevents.<time>.<host>.<pid>.<n>: both runs wrote here.
    event_files = (tmp_path / "lightning_logs" / "train" / "version_0").glob("events.out.tfevents.*")
    assert {path.name.split(".")[-2] for path in event_files} == {str(interrupted.pid), str(resumed.pid)}
    assert len(list(last.parent.glob("best*.ckpt"))) == 1
