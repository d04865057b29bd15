"""Every accuracy carries its standard error, and the knee the range it could lie in."""
import csv
import json
import math

import pytest

import sweep
from magprune.core.stats import Z95, binomial_se, find_knees, knee_ranges, margin95, merge_models, seeded_accuracy
from magprune.report.plots import plot_accuracy_vs_sparsity
from magprune.report.summary import knee_summary
from magprune.report.tables import print_table

DENSE = {"curve": "layerwise", "recovery": "none", "sparsity": 0.0, "correct": 9000, "total": 10000, "test_acc": 90.0}


def row(sparsity, correct, total=10000):
    return {"curve": "layerwise", "recovery": "none", "sparsity": sparsity, "correct": correct, "total": total,
            "test_acc": 100 * correct / total, "test_acc_se": binomial_se(correct, total)}


def test_the_binomial_error_of_an_accuracy_is_sqrt_p_one_minus_p_over_n_in_points():
    assert binomial_se(9000, 10000) == pytest.approx(100 * math.sqrt(0.9 * 0.1 / 10000))  # 0.30 points
    assert binomial_se(1000, 2000) == pytest.approx(100 * math.sqrt(0.25 / 2000))          # 1.12 points
    assert binomial_se(2000, 2000) == 0.0


def test_the_error_bars_in_the_csv_equal_the_binomial_formula(checkpoint, fake_cifar, tmp_path):
    sweep.main(["--checkpoint", str(checkpoint), "--data_dir", str(fake_cifar), "--output_dir", str(tmp_path),
                "--sparsities", "0,0.5,0.9", "--methods", "layerwise,global"])
    rows = list(csv.DictReader((tmp_path / "sweep.csv").open()))
    assert len(rows) == 6
    for stored in rows:
        accuracy, images = int(stored["correct"]) / int(stored["total"]), int(stored["total"])
        assert float(stored["test_acc_se"]) == pytest.approx(100 * math.sqrt(accuracy * (1 - accuracy) / images), rel=1e-9)
    document = json.loads((tmp_path / "sweep.json").read_text())
    assert all(row["test_acc_se"] == pytest.approx(float(stored["test_acc_se"]))
               for row, stored in zip(document["rows"], rows))


def test_several_seeds_give_their_mean_and_an_error_that_counts_their_spread():
    counts = [(5000, 10000), (5200, 10000), (4800, 10000)]
    seeded = seeded_accuracy(counts)
    assert (seeded["correct"], seeded["total"], seeded["seeds"]) == (15000, 30000, 3)
    assert seeded["test_acc"] == 50.0
    assert seeded["seed_sd"] == pytest.approx(2.0)
    one_seed = binomial_se(5000, 10000)
    assert seeded["test_acc_se"] == pytest.approx(math.sqrt(one_seed ** 2 + 2.0 ** 2 / 3))


def test_random_masks_are_tested_once_per_seed(checkpoint, fake_cifar, tmp_path):
    sweep.main(["--checkpoint", str(checkpoint), "--data_dir", str(fake_cifar), "--output_dir", str(tmp_path),
                "--sparsities", "0,0.5", "--methods", "layerwise,random", "--seeds", "3"])
    rows = {(stored["curve"], stored["sparsity"]): stored for stored in json.loads((tmp_path / "sweep.json").read_text())["rows"]}
    images = rows["layerwise", 0.5]["total"]
    assert rows["layerwise", 0.5]["seeds"] == 1  # a magnitude order has no seed to vary
    assert rows["random", 0.0]["seeds"] == 1  # nor has a mask that removes nothing
    assert (rows["random", 0.5]["seeds"], rows["random", 0.5]["total"]) == (3, 3 * images)
    assert "seed_sd" in rows["random", 0.5]


def test_the_knee_range_holds_the_levels_the_error_leaves_undecided():
    # Tolerance 1 point below 90%: 89.0%. At 10,000 images one error is about 0.31 points, 95% about 0.61.
    rows = [DENSE | {"test_acc_se": binomial_se(9000, 10000)},
            row(0.5, 8990), row(0.6, 8970),  # clearly within
            row(0.7, 8910),                  # within, but not by 95% of its error
            row(0.8, 8880),                  # outside, but not by 95% of its error
            row(0.9, 8500)]                  # clearly outside
    assert find_knees(rows, DENSE, 1.0)["layerwise"]["sparsity"] == 0.7
    assert knee_ranges(rows, DENSE, 1.0)["layerwise"] == (0.6, 0.8)


def test_an_error_of_the_test_images_alone_spans_1_96_standard_errors_either_side():
    assert margin95(row(0.5, 8900)) == pytest.approx(1.959964 * binomial_se(8900, 10000))


def test_an_error_that_is_all_spread_of_three_models_spans_students_t_with_two_degrees_of_freedom():
    spread_only = {"test_acc": 88.0, "test_acc_se": 2.0 / math.sqrt(3), "model_sd": 2.0, "models": 3}
    assert margin95(spread_only) == pytest.approx(4.302653 * 2.0 / math.sqrt(3), rel=1e-6)  # t(0.975; 2)


def test_the_interval_narrows_from_students_t_towards_1_96_as_the_test_images_error_outweighs_the_spread():
    factors = [margin95({"test_acc_se": math.sqrt(binomial ** 2 + 1.0 / 3), "seed_sd": 1.0, "seeds": 3})
               / math.sqrt(binomial ** 2 + 1.0 / 3) for binomial in (0.01, 0.3, 1.0, 10.0)]
    assert factors[0] == pytest.approx(4.30, abs=0.01) and factors[3] == pytest.approx(1.96, abs=0.01)
    assert factors[0] > factors[1] > factors[2] > factors[3]
    assert margin95({"test_acc_se": 0.3, "seed_sd": 0.0, "seeds": 3}) == pytest.approx(Z95 * 0.3)


def test_a_knee_over_three_models_counts_the_wider_interval_of_their_spread():
    # At 60%, 88.0% with an error of 0.4 points, all of it the models' spread: 1 point below 90% is
    # out of reach at 1.96 errors (88.0 + 0.78 < 89), within it at Student's 4.30 (88.0 + 1.72 > 89).
    models = {"model_sd": 0.4 * math.sqrt(3), "models": 3}
    rows = [DENSE | {"test_acc_se": 0.0}, row(0.5, 8990) | {"test_acc_se": 0.01}, row(0.6, 8800) | {"test_acc_se": 0.4} | models]
    assert knee_ranges(rows, DENSE, 1.0)["layerwise"] == (0.5, 0.6)
    assert knee_ranges([{**each, "models": 1000} for each in rows], DENSE, 1.0)["layerwise"] == (0.5, 0.5)


def test_the_dense_network_is_within_its_own_tolerance_whatever_its_error():
    small_test = {**DENSE, "correct": 90, "total": 100, "test_acc_se": binomial_se(90, 100)}  # 3 points of error
    assert knee_ranges([small_test], small_test, 1.0)["layerwise"] == (0.0, 0.0)


def test_the_plot_shades_each_curve_with_its_95_percent_band():
    # Five levels: a curve tested at fewer is drawn as its points with bars, not as a line in a band.
    rows = [DENSE | {"method": "layerwise", "test_acc_se": 0.3}, *(row(level, 8900) | {"method": "layerwise"} for level in (0.2, 0.3, 0.4, 0.5))]
    figure = plot_accuracy_vs_sparsity(rows, 90.0, 1.0, {}, "test")
    band = figure.axes[0].collections[0].get_paths()[0].vertices
    assert band[:, 1].max() == pytest.approx(90.0 + Z95 * 0.3)
    assert band[:, 1].min() == pytest.approx(89.0 - Z95 * binomial_se(8900, 10000))


def test_the_knee_table_gives_each_accuracy_its_error_and_each_knee_its_range(capsys):
    rows = [DENSE | {"method": "layerwise", "achieved_sparsity": 0.0, "test_acc_se": 0.3},
            row(0.5, 8980) | {"method": "layerwise", "achieved_sparsity": 0.5}]
    knees = knee_summary(rows, find_knees(rows, DENSE, 1.0), ranges=knee_ranges(rows, DENSE, 1.0))
    print_table(rows, knees, 90.0, 1.0)
    printed = capsys.readouterr().out
    assert "89.80+-0.30" in printed
    assert printed.strip().splitlines()[-1].split()[:5] == ["layerwise", "50.0%", "50", "to", "50%"]


def test_several_trained_models_give_their_mean_and_an_error_that_counts_their_spread():
    models = [[{**row(0.0, correct), "method": "layerwise", "achieved_sparsity": 0.0},
               {**row(0.5, correct - 500), "method": "layerwise", "achieved_sparsity": 0.5}] for correct in (9000, 8800, 8600)]
    merged = {row["sparsity"]: row for row in merge_models(models)}
    dense = merged[0.0]
    assert (dense["correct"], dense["total"], dense["models"]) == (26400, 30000, 3)
    assert dense["test_acc"] == pytest.approx(88.0) and dense["model_sd"] == pytest.approx(2.0)
    # One model's binomial error at the mean accuracy, and the models' spread over sqrt 3.
    assert dense["test_acc_se"] == pytest.approx(math.sqrt(100 ** 2 * 0.88 * 0.12 / 10000 + 2.0 ** 2 / 3))
    assert merged[0.5]["test_acc"] == pytest.approx(83.0)


def test_a_merged_rows_error_is_the_models_spread_over_root_k_with_one_models_binomial_error_on_one_test_set():
    # Three models, each row itself the mean of 2 pruning seeds over the same 1,000 test images (2,000 answers).
    accuracies = (0.80, 0.83, 0.89)
    models = [[{"curve": "random", "method": "random", "recovery": "none", "sparsity": 0.5, "achieved_sparsity": 0.5,
                "correct": round(2000 * accuracy), "total": 2000, "seeds": 2}] for accuracy in accuracies]
    merged = merge_models(models)[0]
    mean = sum(accuracies) / 3
    spread = math.sqrt(sum((100 * accuracy - 100 * mean) ** 2 for accuracy in accuracies) / 2)
    binomial = 100 * math.sqrt(mean * (1 - mean) / 1000)  # one model, one test set: 1,000 images, not 2,000 or 6,000
    assert merged["model_sd"] == pytest.approx(spread)
    assert merged["test_acc_se"] == pytest.approx(math.sqrt(binomial ** 2 + spread ** 2 / 3), rel=1e-12)


def test_a_level_some_model_lacks_is_left_out_of_the_merge():
    first = [{**row(0.0, 9000), "method": "layerwise", "achieved_sparsity": 0.0}, {**row(0.9, 1000), "method": "layerwise", "achieved_sparsity": 0.9}]
    second = [{**row(0.0, 8900), "method": "layerwise", "achieved_sparsity": 0.0}]
    assert [row["sparsity"] for row in merge_models([first, second])] == [0.0]


def test_the_sweeps_of_two_models_merge_into_one_with_its_table_and_plot(checkpoint, fake_cifar, tmp_path, script):
    for name in ("first", "second"):
        sweep.main(["--checkpoint", str(checkpoint), "--data_dir", str(fake_cifar), "--output_dir", str(tmp_path / name),
                    "--sparsities", "0,0.5"])
    # The second "model": the same checkpoint answering 3 more test images right at every level.
    document = json.loads((tmp_path / "second" / "sweep.json").read_text())
    for tested in document["rows"]:
        tested["correct"] += 3
    (tmp_path / "second" / "sweep.json").write_text(json.dumps(document))
    script("merge_sweeps").main([str(tmp_path / "first"), str(tmp_path / "second"), "--output_dir", str(tmp_path / "merged")])
    merged = list(csv.DictReader((tmp_path / "merged" / "sweep.csv").open()))
    assert [(float(tested["sparsity"]), int(tested["models"])) for tested in merged] == [(0.0, 2), (0.5, 2)]
    total = int(merged[0]["total"]) // 2
    assert float(merged[0]["model_sd"]) == pytest.approx(100 * 3 / total / math.sqrt(2))
    merged_json = json.loads((tmp_path / "merged" / "sweep.json").read_text())
    assert merged_json["summary"]["models"] == 2 and set(merged_json["summary"]["knees"]) == {"layerwise"}
    assert (tmp_path / "merged" / "sweep.png").stat().st_size > 10_000


def test_sweeps_of_different_experiments_do_not_merge(checkpoint, fake_cifar, tmp_path, capsys, script):
    for name, limit in (("full", []), ("part", ["--limit_test_batches", "1"])):
        sweep.main(["--checkpoint", str(checkpoint), "--data_dir", str(fake_cifar), "--output_dir", str(tmp_path / name),
                    "--sparsities", "0", *limit])
    with pytest.raises(SystemExit) as stopped:
        script("merge_sweeps").main([str(tmp_path / "full"), str(tmp_path / "part"), "--output_dir", str(tmp_path / "merged")])
    assert stopped.value.code == 2
    assert "differ in limit_test_batches" in capsys.readouterr().err
