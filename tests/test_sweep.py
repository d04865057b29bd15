"""sweep.py beyond one curve: methods side by side, recovery, sensitivity, export, knee search, resume."""
import csv
import json
import shutil
import subprocess
import sys

import lightning as L
import pytest
import torch
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

import sweep
from datamodule import CIFAR10DataModule, normalize
from lightning_module import ImageClassifier
from magprune.core import io
from magprune.core.export import load_compact
from magprune.core.nets import build_model
from magprune.core.pruning import apply_pruning, prunable_layers
from magprune.report import plots
from magprune.sweep.level import LevelTester
from magprune.sweep.searches import bisect
from prune_callback import PruningCallback


def run_sweep(checkpoint, fake_cifar, out, *extra):
    sweep.main(["--checkpoint", str(checkpoint), "--data_dir", str(fake_cifar), "--output_dir", str(out), *extra])
    return json.loads((out / "sweep.json").read_text())


@pytest.fixture(scope="module")
def all_methods(checkpoint, fake_cifar, tmp_path_factory):
    out = tmp_path_factory.mktemp("all_methods")
    document = run_sweep(checkpoint, fake_cifar, out, "--sparsities", "0,0.5,0.9", "--methods", "layerwise,global,random,filters",
                         "--bn_recalibrate", "2", "--sensitivity", "--sensitivity_sparsities", "0.5,0.9", "--visualize",
                         "--export", "0.6")
    return out, document


def test_every_method_and_recovery_is_a_curve_of_its_own(all_methods):
    out, document = all_methods
    curves = {row["curve"] for row in document["rows"]}
    assert curves == {"layerwise", "global", "random", "filters", "layerwise+BN", "global+BN", "random+BN", "filters+BN"}
    assert set(document["summary"]["knees"]) == curves
    for curve in curves:
        events = EventAccumulator(str(out / curve))
        events.Reload()
        assert [event.step for event in events.Scalars("sweep/test_acc")] == [0, 500, 900], curve


def test_every_level_reports_what_the_masks_save(all_methods):
    _, document = all_methods
    rows = {(row["curve"], row["sparsity"]): row for row in document["rows"]}
    dense, pruned = rows["layerwise", 0.0], rows["layerwise", 0.9]
    assert pruned["nonzero_weights"] < 0.2 * dense["nonzero_weights"]
    assert pruned["bitmask_bytes"] < 0.4 * dense["bitmask_bytes"] and pruned["bitmask_bytes"] < dense["dense_bytes"]
    assert pruned["flops_sparse"] < 0.2 * dense["flops_dense"]
    assert rows["filters", 0.5]["slim_flops"] < rows["filters", 0.5]["flops_dense"]
    assert rows["filters", 0.5]["slim_params"] < rows["filters", 0.0]["slim_params"]
    assert not any("slim_latency_ms" in row for row in document["rows"])  # timed at the knee only


def test_the_accuracy_figure_draws_every_curve_with_its_knee(all_methods, tmp_path):
    out, document = all_methods
    figures = plots.sweep_figures(document["rows"], document["sensitivity"], document["summary"], "resnet20", tmp_path)
    axes = figures["sweep/accuracy_vs_sparsity"].axes[0]
    lines = {line.get_label(): line for line in axes.get_lines()}
    knees = document["summary"]["knees"]
    for curve in knees:
        rows = sorted((row for row in document["rows"] if row["curve"] == curve), key=lambda row: row["sparsity"])
        assert list(lines[curve].get_xdata()) == pytest.approx([100 * row["sparsity"] for row in rows]), curve
        assert list(lines[curve].get_ydata()) == pytest.approx([row["test_acc"] for row in rows]), curve
    # One circle per curve that has a knee, where the knee is.
    circles = {(float(line.get_xdata()[0]), float(line.get_ydata()[0])) for line in axes.get_lines() if line.get_markersize() == 11}
    assert circles == {(100 * knee["sparsity"], knee["test_acc"]) for knee in knees.values() if knee["sparsity"] is not None}
    assert {"sweep/accuracy_vs_bytes", "sweep/sensitivity"} <= set(figures)
    for name in ("sweep.png", "sweep_bytes.png", "sensitivity.png", "layer_sparsity.png"):
        assert Image.open(out / name).getextrema() != ((255, 255),) * 3, name  # drawn on, not blank


def test_a_sweeps_tests_leave_the_network_where_it_is(checkpoint, fake_cifar, tmp_path, monkeypatch):
    # Lightning's own teardown moves the tested module to the CPU (and empties the CUDA cache) after each test.
    moved = []
    monkeypatch.setattr(ImageClassifier, "cpu", lambda module: moved.append(module) or module)
    run_sweep(checkpoint, fake_cifar, tmp_path / "out", "--sparsities", "0,0.5")
    assert moved == []


def test_a_sweep_json_cut_short_can_be_drawn_again(all_methods, tmp_path, project):
    out, document = all_methods
    document["rows"] = [row for row in document["rows"] if row["sparsity"] < 0.9]  # as if stopped before 90%
    (tmp_path / "sweep.json").write_text(json.dumps(document))
    drawn = subprocess.run([sys.executable, str(project / "scripts" / "plot_sweep.py"), str(tmp_path / "sweep.json"),
                            str(tmp_path / "again.png")], check=True, capture_output=True, text=True)
    curves = {row["curve"] for row in document["rows"]}
    assert drawn.stdout.strip() == f"{tmp_path / 'again.png'}: {len(curves)} curves, {len(document['rows'])} rows"
    assert Image.open(tmp_path / "again.png").size == (1650, 638)


def test_sensitivity_prunes_each_layer_alone_at_each_level(all_methods, checkpoint):
    out, document = all_methods
    layers = list(prunable_layers(ImageClassifier.load_from_checkpoint(checkpoint).model))
    assert {(row["layer"], row["sparsity"]) for row in document["sensitivity"]} == {
        (layer, level) for layer in layers for level in (0.5, 0.9)}
    table = list(csv.DictReader((out / "sensitivity.csv").open()))
    assert len(table) == 2 * len(layers) and set(table[0]) == {"layer", "sparsity", "test_acc"}
    events = EventAccumulator(str(out), size_guidance={"images": 0})
    events.Reload()
    assert "sweep/sensitivity" in events.Tags()["images"]


def test_visualize_writes_mask_gifs_and_tensorboard_images(all_methods):
    out, _ = all_methods
    for method in ("layerwise", "global", "random", "filters"):
        assert (out / f"masks_{method}.gif").stat().st_size < 3_000_000
    events = EventAccumulator(str(out), size_guidance={"images": 0, "histograms": 0})
    events.Reload()
    assert [event.step for event in events.Images("masks/global")] == [0, 500, 900]
    assert any(tag.startswith("weights/layerwise/") for tag in events.Tags()["histograms"])


def test_the_export_loads_back_to_the_masked_models_outputs(all_methods, checkpoint, fake_cifar, tmp_path):
    out, _ = all_methods
    export = out / "resnet20_layerwise_60.ptz"
    state_dict, extra = load_compact(export)
    assert extra["arch"] == "resnet20" and extra["sparsity"] == 0.6
    restored = build_model("resnet20")
    restored.load_state_dict(state_dict)
    masked = ImageClassifier.load_from_checkpoint(checkpoint).model
    apply_pruning(masked, 0.6)
    images = torch.randn(4, 3, 32, 32)
    assert torch.equal(restored.eval()(images), masked.eval()(images))
    document = run_sweep(None, fake_cifar, tmp_path, "--weights", str(export), "--arch", "resnet20", "--sparsities", "0")
    assert document["rows"][0]["achieved_sparsity"] == pytest.approx(0.6, abs=0.001)


def test_fine_tuning_keeps_pruned_weights_exactly_zero(checkpoint, fake_cifar):
    model = ImageClassifier.load_from_checkpoint(checkpoint)
    before = model.model.layer1[0].conv1.weight.detach().clone()
    callback = PruningCallback(0.7)
    trainer = L.Trainer(max_epochs=1, limit_val_batches=0, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, callbacks=[callback])
    trainer.fit(model, datamodule=CIFAR10DataModule(str(fake_cifar), batch_size=32))
    for name in callback.report["layers"]:
        layer = model.get_submodule(name)
        assert (layer.weight[layer.weight_mask == 0] == 0).all(), name
    kept = model.model.layer1[0].conv1.weight_mask.bool()
    assert not torch.equal(model.model.layer1[0].conv1.weight[kept], before[kept])


def test_fine_tuned_curve_is_reported(checkpoint, fake_cifar, tmp_path):
    document = run_sweep(checkpoint, fake_cifar, tmp_path, "--sparsities", "0,0.8", "--finetune_epochs", "1",
                         "--finetune_batches", "2")
    assert {row["curve"] for row in document["rows"]} == {"layerwise", "layerwise+FT"}
    # Nothing pruned, nothing to recover: the dense model is not fine-tuned.
    assert [row["sparsity"] for row in document["rows"] if row["curve"] == "layerwise+FT"] == [0.8]


def test_fine_tuning_a_warm_up_recipe_model_starts_at_its_peak_rate(learned, learnable_cifar, tmp_path, monkeypatch):
    # `learned` was trained with a warm-up; a one-epoch fine-tuning that inherited it would never reach its peak.
    rates = []
    step = torch.optim.SGD.step
    monkeypatch.setattr(torch.optim.SGD, "step", lambda self, *args, **kwargs: (rates.append(self.param_groups[0]["lr"]), step(self, *args, **kwargs))[1])
    run_sweep(learned, learnable_cifar, tmp_path, "--sparsities", "0.5", "--finetune_epochs", "1", "--finetune_lr", "0.02",
              "--finetune_batches", "3")
    assert rates[0] == pytest.approx(0.02)
    assert rates[-1] < rates[0]


def test_knee_bisection_needs_far_fewer_tests_than_the_grid(synthetic_sweep):
    # Accuracy 90% up to 63% sparsity, 40% beyond: a knee the bisection must find.
    searcher = synthetic_sweep(lambda method, sparsity, recovery: (180 if sparsity <= 0.63 else 80, 200))
    found = bisect(searcher)["layerwise"]
    assert 0.62 <= found["sparsity"] <= 0.63
    assert found["test_passes"] <= 9 and searcher.tester.test_passes <= 10


def test_knee_bisection_searches_each_recovery_as_a_curve_of_its_own(synthetic_sweep):
    # Accuracy 90% up to 63% sparsity one-shot and up to 81% with BatchNorm re-estimated, 40% beyond.
    found = bisect(synthetic_sweep(lambda method, sparsity, recovery: (180 if sparsity <= (0.81 if recovery == "bn" else 0.63) else 80, 200),
                                   bn_recalibrate=10))
    assert set(found) == {"layerwise", "layerwise+BN"}
    assert 0.62 <= found["layerwise"]["sparsity"] <= 0.63 and 0.80 <= found["layerwise+BN"]["sparsity"] <= 0.81


def test_find_knee_reports_a_search_per_curve_with_the_levels_it_tested(checkpoint, fake_cifar, tmp_path):
    document = run_sweep(checkpoint, fake_cifar, tmp_path / "bisected", "--find_knee", "--knee_resolution", "0.25",
                         "--bn_recalibrate", "1")
    searches = document["summary"]["knee_search"]
    assert set(searches) == {"layerwise", "layerwise+BN"}
    for curve, search in searches.items():
        tested = [row for row in document["rows"] if row["curve"] == curve]
        assert search["sparsity"] in {row["sparsity"] for row in tested} and len(tested) <= 4


def test_an_interrupted_sweep_resumes_without_redoing_finished_levels(checkpoint, fake_cifar, tmp_path, monkeypatch):
    arguments = ("--sparsities", "0,0.3,0.6", "--methods", "layerwise,random")
    complete = run_sweep(checkpoint, fake_cifar, tmp_path / "complete", *arguments)
    interrupted = tmp_path / "interrupted"
    run_sweep(checkpoint, fake_cifar, interrupted, *arguments)
    document = json.loads((interrupted / "sweep.json").read_text())
    document["rows"] = document["rows"][:2]
    del document["summary"]
    (interrupted / "sweep.json").write_text(json.dumps(document))
    evaluated = []
    original = LevelTester.evaluate
    monkeypatch.setattr(LevelTester, "evaluate", lambda self, *key: evaluated.append(key) or original(self, *key))
    resumed = run_sweep(checkpoint, fake_cifar, interrupted, *arguments)
    assert len(evaluated) == 4
    assert (interrupted / "sweep.csv").read_text() == (tmp_path / "complete" / "sweep.csv").read_text()
    assert resumed["summary"] == complete["summary"]


def test_a_sweep_rerun_with_more_levels_and_methods_tests_only_those_and_keeps_its_rows(checkpoint, fake_cifar, tmp_path, monkeypatch):
    complete = run_sweep(checkpoint, fake_cifar, tmp_path / "complete", "--sparsities", "0,0.3,0.6", "--methods", "layerwise,global")
    extended = tmp_path / "extended"
    run_sweep(checkpoint, fake_cifar, extended, "--sparsities", "0,0.6", "--methods", "layerwise")
    evaluated = []
    original = LevelTester.evaluate
    monkeypatch.setattr(LevelTester, "evaluate", lambda self, *key: evaluated.append(key) or original(self, *key))
    document = run_sweep(checkpoint, fake_cifar, extended, "--sparsities", "0.3", "--methods", "global")
    assert sorted(evaluated) == [("global", 0.0, "none"), ("global", 0.3, "none"), ("global", 0.6, "none"),
                                 ("layerwise", 0.3, "none")]
    assert document["config"]["sparsities"] == [0.0, 0.3, 0.6]
    assert sorted(document["config"]["methods"]) == ["global", "layerwise"]
    key = lambda row: (row["curve"], row["sparsity"])  # noqa: E731
    assert ({key(row): row["correct"] for row in document["rows"]}
            == {key(row): row["correct"] for row in complete["rows"]})


def test_a_sweep_resumes_from_the_same_weights_in_another_file(checkpoint, fake_cifar, tmp_path, monkeypatch):
    run_sweep(checkpoint, fake_cifar, tmp_path / "sweep", "--sparsities", "0,0.5")
    copied = tmp_path / "elsewhere.ckpt"
    shutil.copy(checkpoint, copied)
    evaluated = []
    monkeypatch.setattr(LevelTester, "evaluate", lambda self, *key: evaluated.append(key) or [])
    document = run_sweep(copied, fake_cifar, tmp_path / "sweep", "--sparsities", "0,0.5")
    assert evaluated == [] and len(document["rows"]) == 2


def test_same_seed_same_data_gives_identical_csvs(checkpoint, fake_cifar, tmp_path):
    arguments = ("--sparsities", "0,0.5", "--methods", "layerwise,global,random", "--seed", "7")
    run_sweep(checkpoint, fake_cifar, tmp_path / "first", *arguments)
    run_sweep(checkpoint, fake_cifar, tmp_path / "second", *arguments)
    assert (tmp_path / "first" / "sweep.csv").read_bytes() == (tmp_path / "second" / "sweep.csv").read_bytes()


def test_results_are_replaced_whole_or_not_at_all(tmp_path, monkeypatch):
    target = tmp_path / "sweep.csv"
    target.write_text("the finished results\n")

    def fail(*_):
        raise OSError("disk full")

    monkeypatch.setattr(io.os, "replace", fail)
    with pytest.raises(OSError):
        io.atomic_write(target, "half a fi")
    assert target.read_text() == "the finished results\n"
    assert [path.name for path in tmp_path.iterdir()] == ["sweep.csv"]


def test_include_classifier_prunes_the_classifier_too(checkpoint, fake_cifar, tmp_path):
    run_sweep(checkpoint, fake_cifar, tmp_path, "--sparsities", "0,0.5", "--include_classifier", "--export", "0.5")
    state_dict, _ = load_compact(tmp_path / "resnet20_layerwise_50.ptz")
    assert (state_dict["linear.weight"] == 0).sum() == state_dict["linear.weight"].numel() // 2


def test_mean_and_std_given_for_weights_are_the_normalisation_tested_with(learned, learnable_cifar, tmp_path):
    network = ImageClassifier.load_from_checkpoint(learned).model.eval()
    torch.save(network.state_dict(), tmp_path / "weights.pt")
    mean, std = (0.5, 0.4, 0.3), (0.2, 0.3, 0.4)
    document = run_sweep(None, learnable_cifar, tmp_path / "out", "--weights", str(tmp_path / "weights.pt"), "--arch",
                         "resnet20", "--mean", "0.5,0.4,0.3", "--std", "0.2,0.3,0.4", "--sparsities", "0")
    datamodule = CIFAR10DataModule(str(learnable_cifar))
    datamodule.setup("test")
    images, labels = datamodule.test_set.tensors
    with torch.no_grad():
        correct = int((network(normalize(images, mean, std)).argmax(1) == labels).sum())
    assert (document["rows"][0]["correct"], document["rows"][0]["total"]) == (correct, 200)
    assert document["config"]["mean"] == list(mean) and document["config"]["std"] == list(std)


def test_with_no_flags_a_fresh_clone_sweeps_the_shipped_model_on_the_shipped_images(tmp_path, project):
    # A clone with no ../shared beside it: the shipped checkpoint's data folder is missing.
    clone = tmp_path / "clone"
    (clone / "checkpoints").mkdir(parents=True)
    shutil.copy(project / "checkpoints" / "resnet20_cifar10jpeg.ckpt", clone / "checkpoints")
    # Two levels instead of 21 to keep the test short; checkpoint and data are what is left to the defaults.
    result = subprocess.run([sys.executable, str(project / "sweep.py"), "--sparsities", "0,1", "--gpus", "0"],
                            cwd=clone, capture_output=True, text=True, timeout=300)  # about 25 s on an idle 2-core machine
    assert result.returncode == 0, result.stderr[-2000:]
    first_lines = result.stdout.splitlines()[:3]
    assert first_lines[0].startswith("device: CPU")
    assert "resnet20_cifar10jpeg.ckpt" in first_lines[1] and "demo_data" in first_lines[2]
    rows = json.loads(next(clone.glob("lightning_logs/sweep/version_0/sweep.json")).read_text())["rows"]
    assert rows[0]["total"] == 2000 and rows[0]["correct"] > 1600


def test_a_limit_of_1_is_one_batch_and_1_point_0_the_whole_split_as_lightning_reads_them(checkpoint, fake_cifar, tmp_path):
    one = run_sweep(checkpoint, fake_cifar, tmp_path / "one", "--sparsities", "0", "--limit_test_batches", "1", "--batch_size", "16")
    whole = run_sweep(checkpoint, fake_cifar, tmp_path / "whole", "--sparsities", "0", "--limit_test_batches", "1.0")
    assert one["rows"][0]["total"] == 16 and whole["rows"][0]["total"] == 80


def test_a_lower_precision_sweep_reports_the_float32_dense_accuracy_beside_its_own(learned, learnable_cifar, tmp_path):
    document = run_sweep(learned, learnable_cifar, tmp_path, "--sparsities", "0", "--precision", "bf16-mixed")
    assert document["config"]["precision"] == "bf16-mixed"
    assert document["summary"]["dense_acc_float32"] >= 90 and document["summary"]["dense_acc"] >= 90


def test_levels_pruned_recalibrated_or_fine_tuned_leave_the_dense_network_as_it_was(checkpoint, fake_cifar, tmp_path):
    engine = sweep.main(["--checkpoint", str(checkpoint), "--data_dir", str(fake_cifar), "--output_dir", str(tmp_path),
                         "--sparsities", "0,0.8", "--bn_recalibrate", "2", "--finetune_epochs", "1", "--finetune_batches", "2"])
    saved = ImageClassifier.load_from_checkpoint(checkpoint).model.state_dict()
    assert all(torch.equal(value.cpu(), saved[key]) for key, value in engine.tester.dense.state_dict().items())
    # A copy not to be trained shares the dense weights' memory; one to be trained does not.
    weight = engine.tester.dense.layer1[0].conv1.weight
    assert engine.tester.copies.dense_copy(trained=False).layer1[0].conv1.weight.data_ptr() == weight.data_ptr()
    assert engine.tester.copies.dense_copy(trained=True).layer1[0].conv1.weight.data_ptr() != weight.data_ptr()


def test_a_flip_test_sweep_says_so_and_tests_every_level_that_way(checkpoint, fake_cifar, tmp_path, monkeypatch):
    flips = []
    test_step = ImageClassifier.test_step
    monkeypatch.setattr(ImageClassifier, "test_step", lambda module, *args: flips.append(module.hparams.flip_test) or test_step(module, *args))
    document = run_sweep(checkpoint, fake_cifar, tmp_path / "out", "--sparsities", "0,0.5", "--flip_test")
    assert document["config"]["flip_test"] is True
    assert flips and all(flips)
