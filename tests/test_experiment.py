"""End to end: train.py writes a checkpoint, sweep.py prunes it and logs the curve to TensorBoard."""
import csv
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

import sweep
import train
from datamodule import CIFAR10DataModule, normalize
from lightning_module import ImageClassifier
from magprune.core.io import newest_checkpoint


def checkpoints_of(root: Path) -> list[Path]:
    return sorted((root / "checkpoints").glob("resnet20/version_*/*.ckpt"))


def test_training_keeps_the_best_and_the_last_checkpoint_with_hyperparameters(trained):
    names = [path.name for path in checkpoints_of(trained)]
    assert "last.ckpt" in names and any(name.startswith("best-epoch") for name in names)
    checkpoint = torch.load(checkpoints_of(trained)[0], weights_only=True)
    assert checkpoint["hyper_parameters"]["arch"] == "resnet20"
    assert checkpoint["datamodule_hyper_parameters"]["mean"] == pytest.approx((0.4914, 0.4822, 0.4465))


def test_last_checkpoint_is_the_final_epoch_not_the_best_one(trained):
    last = trained / "checkpoints" / "resnet20" / "version_0" / "last.ckpt"
    assert torch.load(last, weights_only=True)["epoch"] == 1


def test_training_logs_train_val_and_test_metrics(trained):
    events = EventAccumulator(str(next((trained / "lightning_logs" / "train").glob("version_0"))))
    events.Reload()
    assert {"train/loss_epoch", "train/acc", "val/loss", "val/acc", "test/acc", "test/loss"} <= set(events.Tags()["scalars"])


def test_a_second_run_never_overwrites_the_first(trained, fake_cifar, tmp_path):
    shutil.copytree(trained / "checkpoints", tmp_path / "checkpoints")
    shutil.copytree(trained / "lightning_logs", tmp_path / "lightning_logs")
    before = {path: path.read_bytes() for path in checkpoints_of(tmp_path)}
    train.main(["--arch", "resnet20", "--data_dir", str(fake_cifar), "--epochs", "1", "--T_max", "1",
                "--batch_size", "64", "--num_workers", "0", "--limit_train_batches", "1",
                "--checkpoint_root", str(tmp_path / "checkpoints"), "--log_root", str(tmp_path / "lightning_logs")])
    assert all(path.read_bytes() == data for path, data in before.items())
    assert (tmp_path / "checkpoints" / "resnet20" / "version_1" / "last.ckpt").exists()


def test_a_fast_dev_run_writes_nothing(fake_cifar, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    train.main(["--fast_dev_run", "--arch", "resnet20", "--data_dir", str(fake_cifar), "--batch_size", "8", "--num_workers", "0",
                "--checkpoint_root", str(tmp_path / "checkpoints"), "--log_root", str(tmp_path / "lightning_logs")])
    assert [path.name for path in tmp_path.iterdir()] == []


def test_a_slim_checkpoint_keeps_the_weights_and_settings_and_sweeps_the_same(trained, fake_cifar, tmp_path, script):
    best = next(path for path in checkpoints_of(trained) if path.name.startswith("best"))
    script("slim_checkpoint").main([str(best), str(tmp_path / "slim.ckpt")])
    full, slim = torch.load(best, weights_only=True), torch.load(tmp_path / "slim.ckpt", weights_only=True)
    assert "optimizer_states" in full and "optimizer_states" not in slim
    assert slim["hyper_parameters"] == full["hyper_parameters"]
    assert all(torch.equal(slim["state_dict"][name], tensor) for name, tensor in full["state_dict"].items())
    counts = []
    for source in (best, tmp_path / "slim.ckpt"):
        out = tmp_path / source.stem
        sweep.main(["--checkpoint", str(source), "--sparsities", "0,0.5", "--data_dir", str(fake_cifar), "--output_dir", str(out)])
        counts.append([(row["sparsity"], row["correct"]) for row in json.loads((out / "sweep.json").read_text())["rows"]])
    assert counts[0] == counts[1]


def test_a_compiled_run_saves_plain_parameter_names(fake_cifar, tmp_path):
    train.main(["--arch", "resnet20", "--data_dir", str(fake_cifar), "--epochs", "1", "--T_max", "1", "--compile",
                "--batch_size", "32", "--num_workers", "0", "--limit_train_batches", "2", "--limit_val_batches", "1",
                "--limit_test_batches", "1", "--checkpoint_root", str(tmp_path / "checkpoints"),
                "--log_root", str(tmp_path / "lightning_logs")])
    saved = torch.load(tmp_path / "checkpoints" / "resnet20" / "version_0" / "last.ckpt", weights_only=True)
    assert set(saved["state_dict"]) == set(ImageClassifier(arch="resnet20").state_dict())


def test_reloaded_best_checkpoint_tests_as_the_training_run_did(trained, fake_cifar, tmp_path):
    best = next(path for path in checkpoints_of(trained) if path.name.startswith("best"))
    events = EventAccumulator(str(trained / "lightning_logs" / "train" / "version_0"))
    events.Reload()
    logged = events.Scalars("test/acc")[-1].value
    out = tmp_path / "reload"
    sweep.main(["--checkpoint", str(best), "--sparsities", "0", "--data_dir", str(fake_cifar), "--output_dir", str(out)])
    rows = json.loads((out / "sweep.json").read_text())["rows"]
    assert rows[0]["test_acc"] == pytest.approx(100 * logged, abs=1e-4)


@pytest.fixture(scope="module")
def swept(trained, fake_cifar, tmp_path_factory):
    out = tmp_path_factory.mktemp("swept")
    best = next(path for path in checkpoints_of(trained) if path.name.startswith("best"))
    sweep.main(["--checkpoint", str(best), "--sparsities", "0,0.25,0.5,1", "--methods", "layerwise,global",
                "--data_dir", str(fake_cifar), "--output_dir", str(out)])
    return out


def test_the_sweep_writes_csv_json_and_png(swept):
    rows = list(csv.DictReader((swept / "sweep.csv").open()))
    assert len(rows) == 8 and {row["curve"] for row in rows} == {"layerwise", "global"}
    document = json.loads((swept / "sweep.json").read_text())
    assert set(document["summary"]["knees"]) == {"layerwise", "global"}
    assert Image.open(swept / "sweep.png").size == (1650, 638)  # the figure's 15 x 5.8 inches at 110 dpi


def test_pruning_everything_leaves_chance_accuracy_and_no_weights(swept):
    rows = json.loads((swept / "sweep.json").read_text())["rows"]
    everything = next(row for row in rows if row["curve"] == "layerwise" and row["sparsity"] == 1)
    assert everything["achieved_sparsity"] == 1.0 and everything["test_acc"] <= 20


def test_tensorboard_reads_back_the_sweep_scalars_at_percent_steps(swept):
    for curve in ("layerwise", "global"):
        events = EventAccumulator(str(swept / curve))
        events.Reload()
        for tag in ("sweep/test_acc", "sweep/test_loss", "sweep/sparsity"):
            assert [event.step for event in events.Scalars(tag)] == [0, 250, 500, 1000], (curve, tag)
        assert [event.value for event in events.Scalars("sweep/sparsity")] == pytest.approx([0, 25, 50, 100], abs=0.01)
    figures = EventAccumulator(str(swept), size_guidance={"images": 0})
    figures.Reload()
    assert "sweep/accuracy_vs_sparsity" in figures.Tags()["images"]


def test_tensorboard_opens_on_every_curve_in_one_chart_with_the_settings_in_hparams(swept):
    root = EventAccumulator(str(swept))
    root.Reload()
    assert "custom_scalars__config__" in root.PluginTagToContent("custom_scalars")
    for curve in ("layerwise", "global"):
        run = EventAccumulator(str(swept / curve))
        run.Reload()
        assert {"_hparams_/session_start_info", "_hparams_/experiment"} <= set(run.PluginTagToContent("hparams")), curve
        assert run.Scalars("knee/sparsity")[-1].value >= 0


def test_the_engine_times_every_test_it_runs(fake_cifar, trained, tmp_path):
    engine = sweep.main(["--checkpoint", str(checkpoints_of(trained)[0]), "--sparsities", "0,0.5", "--bn_recalibrate", "1",
                         "--data_dir", str(fake_cifar), "--output_dir", str(tmp_path)])
    assert [(timing["curve"], timing["sparsity"]) for timing in engine.tester.timings] == [
        ("layerwise", 0.0), ("layerwise", 0.5), ("layerwise+BN", 0.0), ("layerwise+BN", 0.5)]
    assert all(0 < timing["test_seconds"] <= timing["seconds"] for timing in engine.tester.timings)


def test_the_sweep_answers_the_question(swept, capsys, fake_cifar, trained):
    sweep.main(["--checkpoint", str(checkpoints_of(trained)[0]), "--sparsities", "0,0.25,0.5,1",
                "--methods", "layerwise,global", "--data_dir", str(fake_cifar), "--output_dir", str(swept)])
    knee_lines = capsys.readouterr().out.split("largest sparsity within 1 point of dense")[1].splitlines()[2:]
    printed = {line.split()[0]: line.split()[1] for line in knee_lines if line.strip()}
    rows = json.loads((swept / "sweep.json").read_text())["rows"]
    dense = next(row for row in rows if row["sparsity"] == 0)
    for curve in ("layerwise", "global"):
        # The answer, worked out here from the counts: the last level before the first one over a point below dense.
        kept = None
        for row in sorted((row for row in rows if row["curve"] == curve), key=lambda row: row["sparsity"]):
            if 100 * row["correct"] * dense["total"] < (100 * dense["correct"] - dense["total"]) * row["total"]:
                break
            kept = row
        assert printed[curve] == ("none" if kept is None else f"{100 * kept['achieved_sparsity']:.1f}%"), curve


def test_default_checkpoint_is_the_newest_best(trained, monkeypatch):
    monkeypatch.chdir(trained)
    assert newest_checkpoint().name.startswith("best")


def test_ddp_on_two_cpu_processes(fake_cifar, tmp_path, project):
    """train.py --cpu_processes 2 is what --gpus 2 does, on gloo: one checkpoint, one test result (18 s idle)."""
    result = subprocess.run(
        [sys.executable, str(project / "train.py"), "--arch", "resnet20", "--data_dir", str(fake_cifar),
         "--epochs", "1", "--T_max", "1", "--batch_size", "32", "--num_workers", "0", "--cpu_processes", "2",
         "--checkpoint_root", "checkpoints", "--log_root", "lightning_logs"],
        cwd=tmp_path, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    best = list(tmp_path.glob("checkpoints/resnet20/version_0/best*.ckpt"))
    assert len(best) == 1
    # Each process trained on its half of the 180 training images: 3 steps of 32, where one process takes 6.
    assert torch.load(best[0], weights_only=True)["global_step"] == 3
    # The test accuracy logged is the one checkpoint's, over all 80 test images (each process's half, summed).
    events = EventAccumulator(str(tmp_path / "lightning_logs" / "train" / "version_0"))
    events.Reload()
    logged = events.Scalars("test/acc")[-1].value
    model = ImageClassifier.load_from_checkpoint(best[0]).eval()
    datamodule = CIFAR10DataModule(str(fake_cifar))
    datamodule.setup("test")
    images, labels = datamodule.test_set.tensors
    with torch.no_grad():
        accuracy = (model(normalize(images, datamodule.hparams.mean, datamodule.hparams.std)).argmax(1) == labels).float().mean()
    assert logged == pytest.approx(float(accuracy), abs=1e-6)
