"""What a user can rely on: one sweep at a time per results folder, nothing finished ever lost, one line and
a documented exit status for every failure (2 bad input, 130 interrupted, 1 the run could not go on)."""
import errno
import json
import signal
import subprocess
import sys

import pytest

import sweep
import train
from lightning_module import ImageClassifier
from magprune.sweep import store
from magprune.sweep.level import LevelTester
from magprune.sweep.store import FolderBusy, hold_folder


def sweep_argv(checkpoint, data, out, *extra):
    return ["--checkpoint", str(checkpoint), "--data_dir", str(data), "--output_dir", str(out), "--sparsities", "0,0.5,0.9", *extra]


def one_line_exit(main, argv, capsys) -> tuple[int, str, str]:
    """The exit status and the one line on stderr of a command that stops, and what it printed before."""
    with pytest.raises(SystemExit) as stopped:
        main(argv)
    captured = capsys.readouterr()
    err = captured.err
    said = [line for line in err.split("\n") if line.startswith(("error:", "interrupted:"))]
    assert len(said) == 1 and "Traceback" not in err and err.endswith(said[0] + "\n"), err[-3000:]
    return stopped.value.code, said[0], captured.out


def snapshot(folder):
    """Every file under `folder`: its name, when it was last written, its bytes."""
    return {path.relative_to(folder): (path.stat().st_mtime_ns, path.read_bytes()) for path in folder.rglob("*") if path.is_file()}


@pytest.fixture(autouse=True)
def _sigint_restored():
    # Lightning ignores SIGINT after it caught a KeyboardInterrupt in fit or test; the suite's own Ctrl-C must still work.
    handler = signal.getsignal(signal.SIGINT)
    yield
    signal.signal(signal.SIGINT, handler)


def test_a_second_sweep_into_a_held_folder_is_refused_at_once_and_touches_nothing(checkpoint, fake_cifar, tmp_path, project):
    out = tmp_path / "shared_out"
    sweep.main(sweep_argv(checkpoint, fake_cifar, out))
    with hold_folder(out, "held-by-the-test"):  # as a running sweep holds it
        before = snapshot(out)
        refused = subprocess.run([sys.executable, str(project / "sweep.py"), *sweep_argv(checkpoint, fake_cifar, out, "--methods", "global")],
                                 capture_output=True, text=True, timeout=120)
    assert refused.returncode == 2
    assert refused.stderr.count("\n") == 1 and str(out) in refused.stderr and "in use by another sweep" in refused.stderr
    assert "held-by-the-test" in refused.stderr  # who holds it
    assert "device:" not in refused.stdout  # stopped before anything loaded
    assert snapshot(out) == before


def test_a_killed_sweep_leaves_its_folder_free(tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from pathlib import Path; from magprune.sweep.store import hold_folder; "
                               f"lock = hold_folder(Path({str(tmp_path)!r})); print('held', flush=True); time.sleep(60)"],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        probe = subprocess.run([sys.executable, "-c", "from pathlib import Path; from magprune.sweep.store import hold_folder; "
                                f"hold_folder(Path({str(tmp_path)!r}))"], capture_output=True, text=True, timeout=60)
        assert "FolderBusy" in probe.stderr  # held by the other process
    finally:
        holder.kill()
        holder.wait()
    hold_folder(tmp_path).close()  # the kernel let go of the killed process's lock


def test_the_lock_names_its_holder(tmp_path):
    with hold_folder(tmp_path, "launch-7"):
        assert "launch launch-7" in (tmp_path / store.LOCK_NAME).read_text()


def test_the_other_ranks_wait_for_rank_0_to_hold_the_folder_and_give_up_if_it_never_does(tmp_path):
    with hold_folder(tmp_path, "this-launch"):
        store.wait_for_folder(tmp_path, "this-launch", timeout=1)
    with pytest.raises(FolderBusy, match="did not take"):
        store.wait_for_folder(tmp_path, "another-launch", timeout=0.3, poll=0.05)


@pytest.mark.parametrize("content", ["", '{"config": {}, "rows": [{"curve": "layerwise", "spar', "[1, 2, 3]"],
                         ids=["empty", "truncated", "not a sweep"])
def test_a_damaged_sweep_json_is_refused_with_what_to_do_and_kept(checkpoint, fake_cifar, tmp_path, capsys, content):
    (tmp_path / "sweep.json").write_text(content)
    status, line, printed = one_line_exit(sweep.main, sweep_argv(checkpoint, fake_cifar, tmp_path), capsys)
    assert status == 2 and "sweep.json" in line and "left as it is" in line
    assert "device:" not in printed  # refused before the model or the data loaded
    assert (tmp_path / "sweep.json").read_text() == content


def test_a_damaged_rank_file_is_refused_and_kept(checkpoint, fake_cifar, tmp_path, capsys):
    sweep.main(sweep_argv(checkpoint, fake_cifar, tmp_path))
    (tmp_path / "sweep.rank1.json").write_text("[{")
    status, line, printed = one_line_exit(sweep.main, sweep_argv(checkpoint, fake_cifar, tmp_path), capsys)
    assert status == 2 and "sweep.rank1.json" in line
    assert (tmp_path / "sweep.rank1.json").read_text() == "[{"


def test_a_table_without_its_sweep_json_is_not_overwritten(checkpoint, fake_cifar, tmp_path, capsys):
    (tmp_path / "sweep.csv").write_bytes(b"curve,sparsity,test_acc\r\nglobal,0.5,80.0\r\n")
    status, line, printed = one_line_exit(sweep.main, sweep_argv(checkpoint, fake_cifar, tmp_path), capsys)
    assert status == 2 and "no sweep.json" in line
    assert (tmp_path / "sweep.csv").read_bytes() == b"curve,sparsity,test_acc\r\nglobal,0.5,80.0\r\n"


def failing_after(writes: int, error_number: int, real=store.atomic_write):
    """An atomic_write for the store that fails like the file system would once `writes` writes of sweep.json have gone through."""
    done = []

    def write(path, data):
        if path.name == "sweep.json":
            if len(done) == writes:
                raise OSError(error_number, "No space left on device" if error_number == errno.ENOSPC else "Permission denied", str(path))
            done.append(path)
        real(path, data)

    return write


@pytest.mark.parametrize("error_number", [errno.ENOSPC, errno.EACCES, errno.EROFS])
def test_a_full_disk_or_a_folder_gone_read_only_keeps_every_finished_row_and_says_so(checkpoint, fake_cifar, tmp_path, capsys,
                                                                                       monkeypatch, error_number):
    monkeypatch.setattr(store, "atomic_write", failing_after(2, error_number))
    status, line, printed = one_line_exit(sweep.main, sweep_argv(checkpoint, fake_cifar, tmp_path), capsys)
    assert status == 1
    assert "sweep.json" in line and "2 finished tests are kept" in line and "the same command resumes" in line
    rows = json.loads((tmp_path / "sweep.json").read_text())["rows"]
    assert [row["sparsity"] for row in rows] == [0.0, 0.5]  # whole: the third write failed, the second's file stands
    monkeypatch.undo()
    resumed = sweep.main(sweep_argv(checkpoint, fake_cifar, tmp_path))
    assert len(resumed.store.rows) == 3


def test_a_full_disk_while_writing_tensorboard_keeps_the_finished_sweep(checkpoint, fake_cifar, tmp_path, capsys, monkeypatch):
    def full(*_, **__):
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "layerwise" / "events.out.tfevents"))

    monkeypatch.setattr(sweep.tensorboard, "log_sweep", full)
    status, line, printed = one_line_exit(sweep.main, sweep_argv(checkpoint, fake_cifar, tmp_path), capsys)
    assert status == 1 and "events.out.tfevents" in line and "3 finished tests are kept" in line
    assert "summary" in json.loads((tmp_path / "sweep.json").read_text())


def test_ctrl_c_mid_sweep_says_what_was_kept_and_exits_130(checkpoint, fake_cifar, tmp_path, capsys, monkeypatch):
    evaluate, calls = LevelTester.evaluate, []

    def interrupted_third(self, *level):
        calls.append(level)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return evaluate(self, *level)

    monkeypatch.setattr(LevelTester, "evaluate", interrupted_third)
    status, line, printed = one_line_exit(sweep.main, sweep_argv(checkpoint, fake_cifar, tmp_path), capsys)
    assert status == 130
    assert line == f"interrupted: 2 finished tests are kept in {tmp_path}; the same command resumes"
    assert len(json.loads((tmp_path / "sweep.json").read_text())["rows"]) == 2


def test_ctrl_c_while_lightning_fine_tunes_is_an_interruption_too(checkpoint, fake_cifar, tmp_path, capsys, monkeypatch):
    # Lightning catches Ctrl-C inside fit and exits with status 1; the sweep still says it was interrupted.
    monkeypatch.setattr(ImageClassifier, "training_step", lambda *_: (_ for _ in ()).throw(KeyboardInterrupt))
    status, line, printed = one_line_exit(sweep.main, sweep_argv(checkpoint, fake_cifar, tmp_path, "--finetune_epochs", "1"), capsys)
    assert status == 130 and line.startswith("interrupted: 3 finished tests are kept")


def test_an_interrupted_training_run_says_which_last_checkpoint_resumes_it(fake_cifar, tmp_path, capsys, monkeypatch):
    training_step = ImageClassifier.training_step

    def second_epoch_interrupted(module, batch, index):
        if module.current_epoch == 1:
            raise KeyboardInterrupt
        return training_step(module, batch, index)

    monkeypatch.setattr(ImageClassifier, "training_step", second_epoch_interrupted)
    argv = ["--arch", "resnet20", "--data_dir", str(fake_cifar), "--epochs", "2", "--T_max", "2", "--batch_size", "64",
            "--num_workers", "0", "--checkpoint_root", str(tmp_path / "checkpoints"), "--log_root", str(tmp_path / "logs")]
    status, line, printed = one_line_exit(train.main, argv, capsys)
    last = tmp_path / "checkpoints" / "resnet20" / "version_0" / "last.ckpt"
    assert status == 130 and line == f"interrupted: {last} holds the last finished epoch; python train.py --resume {last} continues from there"
    assert last.is_file()
