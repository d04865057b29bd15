"""Iterative pruning: chains of levels, each from the last one's retrained network, its masks kept; rewinding; 2:4."""
import dataclasses
import json
import re

import pytest
import torch

import sweep
import train
from lightning_module import ImageClassifier
from magprune.core import pruning
from magprune.core.nets import build_model
from magprune.core.pruning import apply_pruning, dense_under_two_of_four, prunable_layers
from magprune.report import plots
from magprune.sweep import chains as chains_module
from magprune.sweep.chains import chain_levels, hold, network_path, reset_survivors
from magprune.sweep.config import SweepConfig
from magprune.sweep.store import measures_like
from magprune.sweep.level import LevelTester


def chain_argv(checkpoint, data, out, *extra):
    return ["--checkpoint", str(checkpoint), "--data_dir", str(data), "--output_dir", str(out), "--sparsities", "0",
            "--retrain_epochs", "1", "--finetune_batches", "2", *extra]


def zeros_of(path) -> dict[str, torch.Tensor]:
    """Each pruned layer's removed weights in a chain step's saved network."""
    state = torch.load(path, weights_only=True)
    return {key.removesuffix("_mask"): value == 0 for key, value in state.items() if key.endswith("_mask")}


@pytest.fixture(scope="module")
def random_chain(checkpoint, fake_cifar, tmp_path_factory):
    out = tmp_path_factory.mktemp("random_chain")
    # Random masks ignore magnitudes: only the chain's holding of earlier masks keeps their zeros zero.
    sweep.main(chain_argv(checkpoint, fake_cifar, out, "--methods", "random", "--iterative", "lr_restart",
                          "--chain_levels", "0.3,0.6,0.8"))
    return out, json.loads((out / "sweep.json").read_text())


def test_a_pruned_weight_stays_zero_through_every_later_step_and_its_retraining(random_chain):
    out, _ = random_chain
    steps = [zeros_of(network_path(out, "random+IT-LRR", level)) for level in (0.3, 0.6, 0.8)]
    for earlier, later in zip(steps, steps[1:]):
        for layer, removed in earlier.items():
            assert not (removed & ~later[layer]).any(), layer  # removed then, removed still
    state = torch.load(network_path(out, "random+IT-LRR", 0.8), weights_only=True)
    for key in [key for key in state if key.endswith("_mask")]:
        weight = state[key.removesuffix("_mask") + "_orig"] * state[key]
        assert (weight[state[key] == 0] == 0).all()


def test_a_method_whose_masks_do_not_nest_still_never_brings_a_pruned_weight_back(checkpoint, fake_cifar, tmp_path, monkeypatch):
    # A method someone adds that redraws its masks at every level: the chain alone must keep the old zeros.
    def redrawn(layers, sparsity, seed):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed + round(1000 * sparsity))
            for module in layers.values():
                torch.nn.utils.prune.random_unstructured(module, "weight", amount=sparsity)

    monkeypatch.setitem(pruning.METHODS, "random", dataclasses.replace(pruning.METHODS["random"], install=redrawn))
    sweep.main(chain_argv(checkpoint, fake_cifar, tmp_path, "--methods", "random", "--iterative", "finetune", "--chain_levels", "0.3,0.6"))
    earlier, later = (zeros_of(network_path(tmp_path, "random+IT-FT", level)) for level in (0.3, 0.6))
    assert all(not (earlier[layer] & ~later[layer]).any() for layer in earlier)


def test_every_chain_row_says_its_level_its_step_and_the_epochs_spent_to_reach_it(random_chain):
    _, document = random_chain
    chain = [row for row in document["rows"] if row["curve"] == "random+IT-LRR"]
    assert [(row["sparsity"], row["chain_step"], row["retrain_epochs"]) for row in chain] == [(0.3, 1, 1), (0.6, 2, 2), (0.8, 3, 3)]
    assert all(row["achieved_sparsity"] >= row["sparsity"] - 1e-3 for row in chain)
    assert next(row for row in document["rows"] if row["curve"] == "random")["retrain_epochs"] == 0


def test_a_chains_first_level_is_the_one_shot_curve_with_the_same_retraining(checkpoint, fake_cifar, tmp_path):
    sweep.main(chain_argv(checkpoint, fake_cifar, tmp_path, "--sparsities", "0,0.5", "--methods", "global", "--finetune_epochs", "1",
                          "--finetune_lr", "0.05", "--iterative", "finetune", "--chain_levels", "0.5,0.7"))
    rows = {(row["curve"], row["sparsity"]): row for row in json.loads((tmp_path / "sweep.json").read_text())["rows"]}
    one_shot, chained = rows["global+FT", 0.5], rows["global+IT-FT", 0.5]
    assert (chained["correct"], chained["test_loss"]) == (one_shot["correct"], one_shot["test_loss"])
    assert chained["retrain_epochs"] == one_shot["retrain_epochs"] == 1


def test_a_chain_killed_mid_way_resumes_from_its_last_finished_step_with_the_same_rows(checkpoint, fake_cifar, tmp_path, monkeypatch,
                                                                                       random_chain, capsys):
    _, complete = random_chain
    argv = chain_argv(checkpoint, fake_cifar, tmp_path, "--methods", "random", "--iterative", "lr_restart", "--chain_levels", "0.3,0.6,0.8")
    retrain, calls = LevelTester.retrain, []

    def killed_at_the_third_step(self, *args, **kwargs):
        calls.append(args)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return retrain(self, *args, **kwargs)

    monkeypatch.setattr(LevelTester, "retrain", killed_at_the_third_step)
    with pytest.raises(SystemExit) as stopped:
        sweep.main(argv)
    assert stopped.value.code == 130
    monkeypatch.setattr(LevelTester, "retrain", lambda self, *args, **kwargs: calls.append(args) or retrain(self, *args, **kwargs))
    resumed = sweep.main(argv)
    assert len(calls) == 4  # the third step, once more; the first two were kept
    key = lambda row: (row["curve"], row["sparsity"], row["correct"], row["retrain_epochs"])  # noqa: E731
    assert sorted(map(key, resumed.store.rows)) == sorted(map(key, complete["rows"]))


def test_a_chains_retraining_shows_its_epoch_and_batch_on_the_progress_bar(checkpoint, fake_cifar, tmp_path, capsys):
    sweep.main(chain_argv(checkpoint, fake_cifar, tmp_path, "--methods", "global", "--iterative", "finetune", "--chain_levels", "0.5"))
    assert re.search(r"training epoch 1/1, batch 1/\d", capsys.readouterr().err)


def recorded_retraining(monkeypatch) -> list[int]:
    """The epochs of every retraining the sweep runs from now on (each still runs)."""
    retrain, epochs = LevelTester.retrain, []
    monkeypatch.setattr(LevelTester, "retrain", lambda self, network, count, **kwargs: epochs.append(count) or
                        retrain(self, network, count, **kwargs))
    return epochs


def test_each_step_of_a_chain_can_retrain_for_its_own_epochs(checkpoint, fake_cifar, tmp_path, monkeypatch):
    epochs = recorded_retraining(monkeypatch)
    sweep.main(chain_argv(checkpoint, fake_cifar, tmp_path, "--methods", "random", "--iterative", "lr_restart",
                          "--chain_levels", "0.3,0.6", "--retrain_epochs", "1,2"))
    chain = [row for row in json.loads((tmp_path / "sweep.json").read_text())["rows"] if row["curve"] == "random+IT-LRR"]
    assert epochs == [1, 2]
    assert [row["retrain_epochs"] for row in chain] == [1, 3]


def test_a_chain_begins_with_the_finished_steps_of_another_sweep_copied_not_retrained(random_chain, checkpoint, fake_cifar,
                                                                                      tmp_path, monkeypatch):
    source, finished = random_chain
    epochs = recorded_retraining(monkeypatch)
    sweep.main(chain_argv(checkpoint, fake_cifar, tmp_path, "--methods", "random", "--iterative", "lr_restart",
                          "--chain_levels", "0.3,0.6,0.7", "--chain_from", str(source)))
    assert epochs == [1]  # 0.7 only: 30% and 60% are the source's
    rows = {row["sparsity"]: row for row in json.loads((tmp_path / "sweep.json").read_text())["rows"] if row["curve"] == "random+IT-LRR"}
    theirs = {row["sparsity"]: row for row in finished["rows"] if row["curve"] == "random+IT-LRR"}
    assert [rows[level] for level in (0.3, 0.6)] == [theirs[level] for level in (0.3, 0.6)]
    assert network_path(tmp_path, "random+IT-LRR", 0.6).read_bytes() == network_path(source, "random+IT-LRR", 0.6).read_bytes()
    assert rows[0.7]["retrain_epochs"] == 3 and rows[0.7]["chain_step"] == 3


def test_once_a_chain_leaves_the_source_s_steps_no_later_step_is_copied(checkpoint, fake_cifar, tmp_path, monkeypatch):
    chain = ("--methods", "random", "--iterative", "lr_restart", "--chain_levels", "0.3,0.6")
    sweep.main(chain_argv(checkpoint, fake_cifar, tmp_path / "source", *chain, "--retrain_epochs", "1,2"))
    epochs = recorded_retraining(monkeypatch)
    # 2 then 1 epochs: the first step differs; the second has spent 3 epochs at 60% as the source's did, from another network.
    sweep.main(chain_argv(checkpoint, fake_cifar, tmp_path / "other", *chain, "--retrain_epochs", "2,1",
                          "--chain_from", str(tmp_path / "source")))
    assert epochs == [2, 1]


def test_an_old_sweep_with_one_number_of_retraining_epochs_still_resumes():
    config = SweepConfig(iterative=("lr_restart",), retrain_epochs=(8,))
    assert measures_like(config, {**config.to_json(), "retrain_epochs": 8})
    assert not measures_like(config, {**config.to_json(), "retrain_epochs": 4})


def test_chain_rate_prunes_that_fraction_of_what_remains_each_round():
    config = SweepConfig(iterative=("finetune",), chain_rate=0.2, sparsities=(0.6,))
    assert chain_levels(config) == (0.2, 0.36, 0.488, 0.5904)


def test_holding_earlier_masks_keeps_their_zeros_whatever_the_new_masks_choose():
    network = build_model("resnet20")
    apply_pruning(network, 0.5, "random", seed=1)
    earlier = {name: module.weight_mask.clone() for name, module in network.named_modules() if hasattr(module, "weight_mask")}
    apply_pruning(network, 0.6, "random", seed=2)
    hold(network, earlier)
    for name, mask in earlier.items():
        assert (network.get_submodule(name).weight[mask == 0] == 0).all()


def test_rewinding_restores_exactly_the_saved_weights_of_the_survivors_and_keeps_the_pruned_at_zero():
    network, early = build_model("resnet20"), build_model("resnet20")
    apply_pruning(network, 0.7, "global")
    reset_survivors(network, early.state_dict())
    for name, module in prunable_layers(network).items():
        kept = module.weight_mask.bool()
        assert torch.equal(module.weight_orig[kept], early.get_submodule(name).weight[kept])
        assert (module.weight[~kept] == 0).all()
    assert torch.equal(network.bn1.running_mean, early.bn1.running_mean)


@pytest.fixture(scope="module")
def rewound(fake_cifar, tmp_path_factory):
    """A two-epoch run of train.py that keeps its rewind points: the start and step 2."""
    root = tmp_path_factory.mktemp("rewound")
    train.main(["--arch", "resnet20", "--data_dir", str(fake_cifar), "--epochs", "2", "--T_max", "2", "--batch_size", "32",
                "--num_workers", "0", "--rewind_step", "2", "--checkpoint_root", str(root / "checkpoints"),
                "--log_root", str(root / "lightning_logs")])
    return next(root.glob("checkpoints/resnet20/version_0/best*.ckpt"))


def test_train_saves_the_initial_weights_and_those_of_the_rewind_step(rewound):
    checkpoint = torch.load(rewound, weights_only=True)
    points = checkpoint["rewind_points"]
    assert checkpoint["hyper_parameters"]["rewind_step"] == 2
    assert (points["initial"]["step"], points["early"]["step"]) == (0, 2)
    trained = ImageClassifier.load_from_checkpoint(rewound).model.state_dict()
    for name in ("conv1.weight", "linear.weight"):
        # Two steps move the weights from their start, and the rest of training moves them further.
        assert not torch.equal(points["initial"]["state_dict"][name], points["early"]["state_dict"][name])
        assert not torch.equal(points["early"]["state_dict"][name], trained[name])
    torch.manual_seed(42)  # the run's --seed: the initial weights are the seeded draw of a fresh network
    assert torch.equal(points["initial"]["state_dict"]["conv1.weight"], build_model("resnet20").conv1.weight)


def test_weight_rewinding_chains_start_each_step_from_the_early_weights(rewound, fake_cifar, tmp_path, monkeypatch):
    started = []
    start = chains_module.RETRAININGS["weight_rewind"].start

    def recorded(tester, network):
        start(tester, network)
        started.append({name: module.weight_orig.detach().clone() for name, module in prunable_layers(network).items()})

    monkeypatch.setitem(chains_module.RETRAININGS, "weight_rewind",
                        chains_module.RETRAININGS["weight_rewind"].__class__(**{**vars(chains_module.RETRAININGS["weight_rewind"]),
                                                                               "start": recorded}))
    sweep.main(chain_argv(rewound, fake_cifar, tmp_path, "--methods", "global", "--iterative", "weight_rewind,init_reset",
                          "--chain_levels", "0.5,0.8"))
    early = torch.load(rewound, weights_only=True)["rewind_points"]["early"]["state_dict"]
    assert len(started) == 2
    for weights in started:
        assert torch.equal(weights["layer1.0.conv1"], early["layer1.0.conv1.weight"])
    curves = {row["curve"] for row in json.loads((tmp_path / "sweep.json").read_text())["rows"]}
    assert {"global+IT-WR", "global+IT-INIT"} <= curves


@pytest.mark.parametrize("source, fragment", [("empty", "holds no sweep"), ("other", "other settings or weights")])
def test_starting_chains_from_a_folder_without_a_sweep_like_this_one_is_a_one_line_error(source, fragment, random_chain, checkpoint,
                                                                                         fake_cifar, tmp_path, capsys):
    folders = {"empty": tmp_path / "empty", "other": random_chain[0]}
    folders["empty"].mkdir()
    with pytest.raises(SystemExit) as stopped:  # the source was swept at --finetune_batches 2
        sweep.main(chain_argv(checkpoint, fake_cifar, tmp_path / "out", "--methods", "random", "--iterative", "lr_restart",
                              "--chain_from", str(folders[source]), "--finetune_batches", "3"))
    error = capsys.readouterr().err.strip()
    assert stopped.value.code == 2 and "\n" not in error and fragment in error, error


def test_rewinding_without_saved_rewind_points_is_a_one_line_error(checkpoint, fake_cifar, tmp_path, capsys):
    with pytest.raises(SystemExit) as stopped:
        sweep.main(chain_argv(checkpoint, fake_cifar, tmp_path, "--iterative", "weight_rewind"))
    error = capsys.readouterr().err.strip()
    assert stopped.value.code == 2 and "\n" not in error and "--rewind_step" in error


@pytest.mark.parametrize("argv, fragment", [
    (["--iterative", "finetune", "--chain_levels", "0.8,0.5"], "0.5 comes after 0.8"),
    (["--iterative", "finetune", "--chain_levels", "0.5,1.5"], "outside (0, 1]"),
    (["--iterative", "magic"], "unknown magic"),
    (["--iterative", "finetune", "--chain_levels", "0.5", "--chain_rate", "0.2"], "not both"),
    (["--methods", "2:4", "--sparsities", "0,0.6"], "takes only the levels 0, 0.5"),
    (["--iterative", "finetune", "--chain_levels", "0.5,0.8", "--retrain_epochs", "1,2,3"], "3 numbers for a chain of 2 levels"),
    (["--iterative", "finetune", "--chain_levels", "0.5,0.8", "--retrain_epochs", "2,0"], "1 or more, got 0"),
    (["--chain_from", "runs/x"], "give --iterative too"),
], ids=["levels out of order", "level above one", "unknown retraining", "levels and a rate", "2:4 at 60%",
        "epochs for other levels", "a step of no epochs", "a source without chains"])
def test_bad_chains_and_two_of_four_levels_are_one_line_errors(argv, fragment, capsys):
    with pytest.raises(SystemExit) as stopped:
        sweep.main(argv)
    error = capsys.readouterr().err.strip()
    assert stopped.value.code == 2 and "\n" not in error and fragment in error, error


def test_two_of_four_keeps_exactly_the_two_largest_of_every_four_consecutive_input_weights():
    torch.manual_seed(0)
    network = build_model("resnet20")
    originals = {name: module.weight.detach().clone() for name, module in prunable_layers(network).items()}
    apply_pruning(network, 0.5, "2:4")
    checked = 0
    for name, original in originals.items():
        weight = network.get_submodule(name).weight.detach()
        if original.shape[1] % 4:
            assert torch.equal(weight, original), name  # the stem: 3 input channels do not group by four
            continue
        # The oracle: walk every output channel and kernel position, four input channels at a time.
        for out in range(original.shape[0]):
            for row in range(original.shape[2]):
                for col in range(original.shape[3]):
                    for first in range(0, original.shape[1], 4):
                        group = original[out, first:first + 4, row, col]
                        kept = weight[out, first:first + 4, row, col] != 0
                        largest = set(group.abs().argsort(descending=True)[:2].tolist())
                        assert set(kept.nonzero().flatten().tolist()) == largest
                        checked += 1
    assert checked > 30_000
    assert dense_under_two_of_four(network) == ["conv1"]


def test_a_two_of_four_sweep_says_which_layers_stay_dense(checkpoint, fake_cifar, tmp_path, capsys):
    sweep.main(["--checkpoint", str(checkpoint), "--data_dir", str(fake_cifar), "--output_dir", str(tmp_path),
                "--methods", "2:4,global", "--sparsities", "0,0.5"])
    assert "2:4: conv1 stays dense" in capsys.readouterr().out
    rows = {row["curve"]: row for row in json.loads((tmp_path / "sweep.json").read_text())["rows"] if row["sparsity"] == 0.5}
    assert 0.49 < rows["2:4"]["achieved_sparsity"] < 0.5  # the stem's few weights are kept


def test_a_rewound_schedule_re_runs_the_end_of_training_and_a_restarted_one_compresses_it_all():
    config = SweepConfig(train_lr=0.1, train_warmup_epochs=2, train_T_max=38)
    rewound = chains_module.rewound_schedule(config, 10)
    restarted = chains_module.restarted_schedule(config, 10)
    assert rewound["schedule_from_epoch"] == 30 and (rewound["warmup_epochs"], rewound["T_max"]) == (2, 38)
    assert restarted["warmup_epochs"] == pytest.approx(0.5) and restarted["T_max"] == pytest.approx(9.5)


def test_a_schedule_started_epochs_in_runs_at_the_rates_the_full_schedule_had_there():
    # 10 steps an epoch: the full schedule's rate after 30 epochs is where the rewound one starts.
    def rates(**hparams):
        module = ImageClassifier(arch="resnet20", learning_rate=0.1, warmup_epochs=2, T_max=38, **hparams)
        module.trainer = type("Trainer", (), {"estimated_stepping_batches": 400, "max_epochs": 40})()
        scheduler = module.configure_optimizers()["lr_scheduler"]["scheduler"]
        return scheduler

    full = rates()
    for _ in range(300):
        full.optimizer.step()
        full.step()
    rewound = rates(schedule_from_epoch=30)
    assert rewound.optimizer.param_groups[0]["lr"] == pytest.approx(full.optimizer.param_groups[0]["lr"], rel=1e-9)


def test_the_cost_figure_puts_each_knee_at_the_epochs_its_curve_spent(random_chain, tmp_path):
    _, document = random_chain
    figures = plots.sweep_figures(document["rows"], [], document["summary"], "resnet20", tmp_path)
    page = figures["sweep/sparsity_vs_retraining"].axes[0]
    expected = plots.knee_costs(document["rows"], document["summary"]["knees"])
    drawn = {line.get_label(): (float(line.get_xdata()[0]), float(line.get_ydata()[0])) for line in page.get_lines()
             if line.get_label() in expected}
    assert drawn == {curve: (float(epochs or plots.ZERO_EPOCHS_AT), float(sparsity)) for curve, (epochs, sparsity) in expected.items()}
    assert (tmp_path / "sweep_cost.png").is_file()



def test_a_chains_line_starts_at_the_dense_network_it_was_pruned_from(random_chain, tmp_path):
    _, document = random_chain
    figures = plots.sweep_figures(document["rows"], [], document["summary"], "resnet20", tmp_path)
    chain = next(line for line in figures["sweep/accuracy_vs_sparsity"].axes[0].get_lines() if line.get_label() == "random+IT-LRR")
    assert (chain.get_xdata()[0], chain.get_ydata()[0]) == (0, document["summary"]["dense_acc"])
    assert list(chain.get_xdata()[1:]) == [30, 60, 80]


def test_curves_sharing_a_knee_and_its_cost_are_named_apart_and_a_curve_without_a_knee_is_named(random_chain, tmp_path):
    _, document = random_chain
    twin = [{**row, "curve": "random+IT-FT", "recovery": "it-finetune"} for row in document["rows"] if row["curve"] == "random+IT-LRR"]
    knees = {**document["summary"]["knees"], "random+IT-FT": document["summary"]["knees"]["random+IT-LRR"],
             "random+IT-RAND": {"sparsity": None, "sparsity_high": 0.3}}
    figure = plots.plot_sparsity_against_cost(document["rows"] + twin, document["summary"]["dense_acc"], 1.0, knees, "resnet20")
    page = figure.axes[0]
    offsets = {text.get_text(): text.xyann for text in page.texts if text.get_text().startswith("random+IT")}
    assert offsets["random+IT-LRR"] != offsets["random+IT-FT"]
    assert any(text.get_text() == "no level within 1 pt: random+IT-RAND" for text in page.texts)


def test_sparse_trained_models_join_a_sweep_as_a_curve_at_their_training_cost(checkpoint, fake_cifar, tmp_path, script):
    root = tmp_path / "gradual_run"
    train.main(["--arch", "resnet20", "--data_dir", str(fake_cifar), "--epochs", "2", "--T_max", "2", "--batch_size", "32",
                "--num_workers", "0", "--prune_to", "0.5", "--prune_method", "global", "--prune_end_epoch", "1",
                "--prune_every_steps", "2", "--checkpoint_root", str(root / "checkpoints"), "--log_root", str(root / "lightning_logs")])
    sparse = next(root.glob("checkpoints/resnet20/version_0/best*.ckpt"))
    sweep.main(["--checkpoint", str(checkpoint), "--data_dir", str(fake_cifar), "--output_dir", str(tmp_path / "sweep"),
                "--sparsities", "0,0.5", "--flip_test"])  # the sparse run validated without: the sweep's test decides
    script("sparse_training_curve").main([str(tmp_path / "sweep"), str(sparse), "--data_dir", str(fake_cifar),
                                          "--output_dir", str(tmp_path / "joined")])
    rows = json.loads((tmp_path / "joined" / "sweep.json").read_text())["rows"]
    gradual = [row for row in rows if row["curve"] == "gradual"]
    assert len(gradual) == 1 and gradual[0]["retrain_epochs"] == 2 and gradual[0]["method"] == "global"
    assert gradual[0]["sparsity"] == pytest.approx(0.5, abs=0.01)
    assert json.loads((tmp_path / "joined" / "gradual_0" / "sweep.json").read_text())["config"]["flip_test"] is True
    assert {row["curve"] for row in rows} == {"layerwise", "gradual"}
    assert (tmp_path / "joined" / "sweep_cost.png").is_file()
