"""A claim a reviewer accepts: chosen on validation, repeated over training seeds, judged on the paired drop from dense."""
import json
import math
import types

import numpy as np
import pytest
import torch
from scipy.stats import t as student_t

import datamodule as datamodule_module
import sweep
from datamodule import CIFAR10DataModule
from lightning_module import load_classifier
from magprune.cli import cpu_runs_bf16, resolve_retrain_precision
from magprune.core.io import answers_path, read_answers
from magprune.core.nets import build_model
from magprune.core.pruning import apply_pruning, prunable_layers
from magprune.core.stats import Z95, find_knees, kept, paired_drop, seeded_accuracy
from magprune.report import plots
from magprune.sweep.chains import RETRAININGS, network_path
from magprune.sweep.level import LevelTester
from magprune.sweep.ranks import Ranks


def argv(checkpoint, data, out, *extra):
    return ["--checkpoint", str(checkpoint), "--data_dir", str(data), "--output_dir", str(out), "--finetune_batches", "2", *extra]


def rows_of(out) -> dict:
    return {(row["curve"], row["sparsity"]): row for row in json.loads((out / "sweep.json").read_text())["rows"]}


# The paired drop, worked by hand.

def test_one_runs_paired_drop_is_the_discordant_difference_with_the_wald_interval_worked_by_hand():
    dense = [1, 1, 1, 1, 1, 1, 1, 1, 0, 0]
    pruned = [1, 1, 1, 1, 1, 1, 0, 0, 1, 0]  # b = 2 images only dense got right, c = 1 only the pruned one did
    result = paired_drop(dense, [pruned])
    # (b - c) / n = 0.1; standard error sqrt(b + c - (b - c)^2 / n) / n = sqrt(2.9) / 10.
    assert result["paired_drop"] == pytest.approx(10.0)
    assert result["paired_drop_se"] == pytest.approx(100 * math.sqrt(2.9) / 10)
    assert result["paired_drop_high"] == pytest.approx(10.0 + Z95 * 100 * math.sqrt(2.9) / 10)
    assert result["discordant"] == 3


def test_k_seeds_paired_drop_is_a_students_t_interval_over_the_seeds_widened_by_the_images_error():
    dense = [1, 1, 1, 1]
    seeds = [[1, 1, 1, 0], [1, 1, 0, 0], [1, 1, 1, 1]]  # drops of 25, 50 and 0 points
    result = paired_drop(dense, seeds)
    spread = 25.0  # the sample standard deviation of 25, 50, 0
    per_image = np.array([0, 0, 1 / 3, 2 / 3])  # dense minus the seeds' mean answer
    image_se = 100 * per_image.std() / 2
    se = math.sqrt(image_se ** 2 + spread ** 2 / 3)
    degrees = 2 * (se ** 2 / (spread ** 2 / 3)) ** 2
    assert result["seed_drops"] == [25.0, 50.0, 0.0]
    assert result["paired_drop"] == pytest.approx(25.0)
    assert result["paired_drop_high"] - 25.0 == pytest.approx(student_t.ppf(0.975, degrees) * se)


def test_a_paired_interval_is_tighter_than_two_independent_binomial_errors_when_the_networks_mostly_agree():
    rng = np.random.default_rng(0)
    dense = rng.random(10_000) < 0.88
    pruned = dense.copy()
    pruned[rng.choice(10_000, 150, replace=False)] ^= True  # they disagree on 150 images of 10,000
    result = paired_drop(dense, [pruned])
    independent = 100 * math.sqrt(2 * 0.88 * 0.12 / 10_000)
    assert result["paired_drop_se"] < independent / 3


# The knee rules.

DENSE = {"curve": "global", "method": "global", "recovery": "none", "sparsity": 0.0, "correct": 9000, "total": 10000,
         "test_acc": 90.0, "test_acc_se": 0.3}


def level(sparsity, correct, high):
    return {**DENSE, "sparsity": sparsity, "correct": correct, "test_acc": correct / 100, "paired_drop": 90 - correct / 100,
            "paired_drop_high": high}


def test_confident_never_takes_a_level_whose_upper_bound_exceeds_the_tolerance_point_does_where_the_estimate_is_inside():
    rows = [DENSE, level(0.3, 8960, 0.8), level(0.5, 8930, 1.2), level(0.7, 8700, 3.5)]
    assert find_knees(rows, DENSE, 1.0, "point")["global"]["sparsity"] == 0.5
    assert find_knees(rows, DENSE, 1.0, "confident")["global"]["sparsity"] == 0.3
    assert not kept(rows[2], DENSE, 1.0, "confident") and kept(rows[2], DENSE, 1.0, "point")


def test_a_sweep_says_which_knee_rule_it_used_in_its_summary_and_on_the_console(checkpoint, fake_cifar, tmp_path, capsys):
    sweep.main(argv(checkpoint, fake_cifar, tmp_path, "--methods", "global", "--sparsities", "0,0.5", "--knee_rule", "confident",
                    "--finetune_epochs", "1"))
    document = json.loads((tmp_path / "sweep.json").read_text())
    assert document["summary"]["knee_rule"] == "confident"
    assert "knees by the confident rule" in capsys.readouterr().out
    figures = plots.sweep_figures(document["rows"], [], document["summary"], "resnet20", tmp_path)
    assert len(figures) == 3 and all(any("confident rule" in axes.get_title() for axes in figure.axes) for figure in figures.values())


# The validation split.

def test_the_validation_split_a_sweep_tests_on_is_the_one_train_py_held_out_in_the_same_order(checkpoint, fake_cifar):
    config = sweep.parse_args(["--checkpoint", str(checkpoint), "--data_dir", str(fake_cifar), "--eval_split", "val", "--gpus", "0"])
    _, built, _, _ = sweep.build(config, Ranks(), lambda *_: None)
    _, data_hparams, _ = load_classifier(checkpoint)
    held_out = CIFAR10DataModule(**{**data_hparams, "data_dir": str(fake_cifar)})
    held_out.setup("fit")
    assert torch.equal(built.test_set.tensors[0], held_out.val_set.tensors[0])
    assert torch.equal(built.test_set.tensors[1], held_out.val_set.tensors[1])


def test_no_retraining_or_batchnorm_re_estimation_sees_a_validation_or_test_image(checkpoint, fake_cifar, tmp_path, monkeypatch):
    seen = []
    augment = datamodule_module.augment  # every training batch and every re-estimation batch is augmented first
    monkeypatch.setattr(datamodule_module, "augment", lambda images, *args: seen.append(images.clone()) or augment(images, *args))
    sweep.main(argv(checkpoint, fake_cifar, tmp_path, "--methods", "global", "--sparsities", "0,0.5", "--eval_split", "val",
                    "--bn_recalibrate", "2", "--finetune_epochs", "1", "--iterative", "finetune", "--chain_levels", "0.5"))
    data = CIFAR10DataModule(data_dir=str(fake_cifar), **{key: value for key, value in load_classifier(checkpoint)[1].items()
                                                         if key in ("seed", "val_fraction")})
    data.setup("fit")
    data.setup("test")
    held = {image.numpy().tobytes() for split in (data.val_set, data.test_set) for image in split.tensors[0]}
    trained_on = {image.numpy().tobytes() for images in seen for image in images}
    assert trained_on and trained_on <= {image.numpy().tobytes() for image in data.train_set.tensors[0]}
    assert not trained_on & held


def test_eval_split_other_than_test_or_val_is_a_one_line_error(capsys):
    with pytest.raises(SystemExit) as stopped:
        sweep.main(["--eval_split", "train"])
    assert stopped.value.code == 2 and "--eval_split" in capsys.readouterr().err


# Training seeds.

def test_k_seeds_retrain_k_different_networks_from_identical_masks_and_the_row_is_their_students_t_mean(checkpoint, fake_cifar,
                                                                                                          tmp_path, monkeypatch):
    tested = []
    test = LevelTester.test
    monkeypatch.setattr(LevelTester, "test", lambda self, network, *args: tested.append(
        {name: module.weight.detach().clone() for name, module in prunable_layers(network).items()}) or test(self, network, *args))
    sweep.main(argv(checkpoint, fake_cifar, tmp_path, "--methods", "global", "--sparsities", "0,0.5", "--finetune_epochs", "1",
                    "--seeds", "3"))
    networks = tested[-3:]  # the +FT level's three seeds, tested last
    for other in networks[1:]:
        assert all(torch.equal(networks[0][name] == 0, other[name] == 0) for name in other)  # the same masks
        assert any(not torch.equal(networks[0][name], other[name]) for name in other)  # other weights
    row = rows_of(tmp_path)["global+FT", 0.5]
    assert row["seeds"] == 3 and len(row["seed_correct"]) == 3
    expected = seeded_accuracy([(correct, row["total"] // 3) for correct in row["seed_correct"]])
    assert row["test_acc_se"] == pytest.approx(expected["test_acc_se"])


def test_the_first_seed_retrains_as_a_sweep_of_one_seed_did(checkpoint, fake_cifar, tmp_path):
    sweep.main(argv(checkpoint, fake_cifar, tmp_path / "one", "--methods", "global", "--sparsities", "0,0.5", "--finetune_epochs", "1"))
    sweep.main(argv(checkpoint, fake_cifar, tmp_path / "three", "--methods", "global", "--sparsities", "0,0.5", "--finetune_epochs", "1",
                    "--seeds", "3"))
    assert rows_of(tmp_path / "one")["global+FT", 0.5]["correct"] == rows_of(tmp_path / "three")["global+FT", 0.5]["seed_correct"][0]


def test_a_chain_with_seeds_is_one_chain_per_seed_and_resumes_each_after_its_last_finished_step(checkpoint, fake_cifar, tmp_path,
                                                                                                  monkeypatch):
    chain = argv(checkpoint, fake_cifar, tmp_path, "--methods", "global", "--sparsities", "0", "--iterative", "lr_restart",
                 "--chain_levels", "0.3,0.6", "--retrain_epochs", "1", "--seeds", "2")
    sweep.main(chain)
    first = {level: network_path(tmp_path, "global+IT-LRR", level).read_bytes() for level in (0.3, 0.6)}
    second = network_path(tmp_path, "global+IT-LRR", 0.6, seed=1)
    assert second.read_bytes() != first[0.6]  # each seed carries its own network
    # Killed after seed 1's first step: its second step, and the level's row, are gone.
    second.unlink()
    second.with_suffix(".json").unlink()
    document = json.loads((tmp_path / "sweep.json").read_text())
    document["rows"] = [row for row in document["rows"] if (row["curve"], row["sparsity"]) != ("global+IT-LRR", 0.6)]
    (tmp_path / "sweep.json").write_text(json.dumps(document))
    retrained = []
    retrain = LevelTester.retrain
    monkeypatch.setattr(LevelTester, "retrain", lambda self, *args, **kwargs: retrained.append(args) or retrain(self, *args, **kwargs))
    sweep.main(chain)
    assert len(retrained) == 1  # seed 1 at 60%, from its own 30% network
    assert {level: network_path(tmp_path, "global+IT-LRR", level).read_bytes() for level in (0.3, 0.6)} == first
    assert rows_of(tmp_path)["global+IT-LRR", 0.6]["seeds"] == 2


@pytest.fixture(scope="module")
def two_seeds(checkpoint, fake_cifar, tmp_path_factory):
    """A sweep of magnitude and random masks, each random level tested with two seeds."""
    out = tmp_path_factory.mktemp("two_seeds")
    sweep.main(argv(checkpoint, fake_cifar, out, "--methods", "global,random", "--sparsities", "0,0.5", "--seeds", "2"))
    return out


def test_each_rows_per_image_answers_add_up_to_its_correct_count(two_seeds):
    for row in rows_of(two_seeds).values():
        answers = [read_answers(answers_path(two_seeds, row["curve"], row["sparsity"], seed), row["total"] // row["seeds"])
                   for seed in row["run_seeds"]]
        assert sum(int(hits.sum()) for hits in answers) == row["correct"]
        assert "paired_drop" in row


def test_the_headline_table_gives_each_seed_the_mean_the_paired_drop_and_the_seeds_within(two_seeds, script):
    row = rows_of(two_seeds)["random", 0.5]
    images = row["total"] // 2
    line = script("headline_table").table_rows(two_seeds, {"random"}, tolerance=100.0)[0]
    cells = [cell.strip() for cell in line.strip("|").split("|")]
    assert cells[2:5] == ["50%", "0", ", ".join(f"{100 * correct / images:.2f}" for correct in row["seed_correct"])]
    assert cells[6] == f"{row['paired_drop']:.2f} [{row['paired_drop_low']:.2f}, {row['paired_drop_high']:.2f}]"
    assert cells[7] == "2 of 2"  # every drop is within 100 points


def test_the_random_reinitialisation_control_redraws_every_surviving_weight_and_keeps_the_masks():
    network = build_model("resnet20")
    apply_pruning(network, 0.6, "global")
    before = {name: (module.weight_orig.detach().clone(), module.weight_mask.clone()) for name, module in prunable_layers(network).items()}
    tester = types.SimpleNamespace(config=types.SimpleNamespace(arch="resnet20", num_classes=10, image_size=(32, 32)))
    RETRAININGS["random_reinit"].start(tester, network)
    for name, module in prunable_layers(network).items():
        weights, mask = before[name]
        survivors = mask.bool()
        assert torch.equal(module.weight_mask, mask)
        assert (module.weight_orig[survivors] != weights[survivors]).all(), name


# Retraining precision.

def test_retraining_defaults_to_bf16_only_on_a_cpu_that_runs_it_natively(tmp_path):
    native, other = tmp_path / "native", tmp_path / "other"
    native.write_text("model name\t: EPYC\nflags\t\t: fpu avx2 avx512f avx512_bf16\n")
    other.write_text("model name\t: EPYC\nflags\t\t: fpu avx2 fma\n")
    assert cpu_runs_bf16(str(native)) and not cpu_runs_bf16(str(other))
    assert resolve_retrain_precision("32-true", gpus=0) == "32-true"
    assert resolve_retrain_precision(None, gpus=1) == "32-true"


def test_a_retraining_runs_at_the_retraining_precision_and_the_test_at_the_tests(checkpoint, fake_cifar, tmp_path, monkeypatch):
    asked = []
    trainer = LevelTester.trainer
    monkeypatch.setattr(LevelTester, "trainer", lambda self, **overrides: asked.append(overrides.get("precision")) or trainer(self, **overrides))
    sweep.main(argv(checkpoint, fake_cifar, tmp_path, "--methods", "global", "--sparsities", "0,0.5", "--finetune_epochs", "1",
                    "--retrain_precision", "bf16-mixed"))
    assert asked.count("bf16-mixed") == 1  # the one +FT retraining; the tests' Trainer keeps --precision
    assert json.loads((tmp_path / "sweep.json").read_text())["config"]["retrain_precision"] == "bf16-mixed"


def test_a_compiled_retraining_trains_the_networks_own_weights_as_the_uncompiled_one_does(checkpoint, fake_cifar, tmp_path,
                                                                                          monkeypatch):
    compiled = []
    real_compile = torch.compile

    def trace_only(network, **options):  # dynamo's graph run eagerly: the same arithmetic, without inductor's minutes
        compiled.append(network)
        return real_compile(network, backend="eager")

    monkeypatch.setattr(torch, "compile", trace_only)
    flags = ("--methods", "global", "--sparsities", "0.5", "--finetune_epochs", "1", "--retrain_precision", "32-true")
    sweep.main(argv(checkpoint, fake_cifar, tmp_path / "eager", *flags))
    sweep.main(argv(checkpoint, fake_cifar, tmp_path / "compiled", *flags, "--retrain_compile"))
    assert len(compiled) == 1 and not hasattr(compiled[0], "_orig_mod")  # the network compiled, not left compiled

    def answers(folder, curve):
        return answers_path(tmp_path / folder, curve, 0.5, 0).read_bytes()

    assert answers("eager", "global+FT") != answers("eager", "global")  # the retraining changes answers here
    assert answers("compiled", "global+FT") == answers("eager", "global+FT")


def test_a_sweep_saved_before_the_retraining_precision_was_a_setting_resumes_as_float32():
    from magprune.sweep.config import SweepConfig
    from magprune.sweep.store import measures_like

    config = SweepConfig(retrain_precision="32-true")
    saved = {key: value for key, value in config.to_json().items() if key != "retrain_precision"}
    assert measures_like(config, saved)
    assert not measures_like(SweepConfig(retrain_precision="bf16-mixed"), saved)


def test_a_route_chosen_on_validation_is_tested_on_the_test_split_from_its_networks_without_retraining(checkpoint, fake_cifar,
                                                                                                          tmp_path, monkeypatch):
    route = ("--methods", "global", "--sparsities", "0", "--iterative", "lr_restart", "--chain_levels", "0.3,0.6",
             "--retrain_epochs", "1", "--seeds", "2")
    sweep.main(argv(checkpoint, fake_cifar, tmp_path / "val", *route, "--eval_split", "val"))
    retrained = []
    monkeypatch.setattr(LevelTester, "retrain", lambda *args, **kwargs: retrained.append(args))
    sweep.main(argv(checkpoint, fake_cifar, tmp_path / "test", *route, "--chain_from", str(tmp_path / "val")))
    assert retrained == []
    chosen, tested = rows_of(tmp_path / "val"), rows_of(tmp_path / "test")
    images = CIFAR10DataModule(data_dir=str(fake_cifar))
    images.setup("test")
    assert tested["global+IT-LRR", 0.6]["total"] == 2 * len(images.test_set) != chosen["global+IT-LRR", 0.6]["total"]
    for seed in (None, 1):
        assert network_path(tmp_path / "test", "global+IT-LRR", 0.6, seed).read_bytes() == \
            network_path(tmp_path / "val", "global+IT-LRR", 0.6, seed).read_bytes()


def test_a_sweep_on_the_validation_split_says_so_in_its_table_summary_and_figures(checkpoint, fake_cifar, tmp_path, capsys):
    sweep.main(argv(checkpoint, fake_cifar, tmp_path, "--methods", "global", "--sparsities", "0,0.5", "--eval_split", "val"))
    assert "validation accuracy (%)" in capsys.readouterr().out
    assert json.loads((tmp_path / "sweep.json").read_text())["summary"]["eval_split"] == "val"


def test_the_headline_table_of_a_folder_without_a_sweep_is_a_one_line_error(tmp_path, script, capsys):
    with pytest.raises(SystemExit) as stopped:
        script("headline_table").main([str(tmp_path / "missing")])
    error = capsys.readouterr().err
    assert stopped.value.code == 2 and "cannot be read" in error and "Traceback" not in error
