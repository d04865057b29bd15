"""The sweep's figures show what the rows claim: the close-up where knees are decided, few levels as points, the cost page."""
import json

import numpy as np
import pytest
from matplotlib.collections import LineCollection

from magprune.core.stats import binomial_se
from magprune.report import plots

DENSE_ACC, TOLERANCE = 90.0, 1.0
SEEDS = (8900, 8950, 8850)  # random at 50%: three seeds on the same 10,000 images, 89.0, 89.5, 88.5%


def row(curve, sparsity, accuracy, method="global", recovery="none", epochs=0, **fields):
    correct = round(100 * accuracy)
    return {"curve": curve, "method": method, "recovery": recovery, "quantize": 0, "sparsity": sparsity, "achieved_sparsity": sparsity,
            "test_acc": accuracy, "test_acc_se": binomial_se(correct, 10000), "correct": correct, "total": 10000,
            "retrain_epochs": epochs, "seeds": 1} | fields


ROWS = [
    *(row("global", sparsity, accuracy) for sparsity, accuracy in ((0.0, 90.0), (0.1, 89.9), (0.2, 89.8), (0.3, 89.5), (0.4, 88.5), (0.6, 70.0))),
    row("random", 0.0, 90.0, method="random"),
    row("random", 0.5, 89.0, method="random", correct=sum(SEEDS), total=30000, seeds=3, seed_correct=list(SEEDS),
        paired_drop=1.0, paired_drop_low=0.6, paired_drop_high=1.4),  # within by its mean, not by its interval
    row("random", 0.9, 10.0, method="random"),
    *(row("global+IT-LRR", sparsity, accuracy, recovery="it-lr_restart", epochs=epochs)
      for sparsity, accuracy, epochs in ((0.5, 89.6, 8), (0.7, 89.2, 16), (0.8, 88.0, 24))),
    row("random+IT-RAND", 0.5, 80.0, method="random", recovery="it-random_reinit", epochs=8),
]
KNEES = {"global": {"sparsity": 0.3, "test_acc": 89.5, "sparsity_low": 0.2, "sparsity_high": 0.4},
         "random": {"sparsity": 0.5, "test_acc": 89.0, "sparsity_low": None, "sparsity_high": 0.5},
         "global+IT-LRR": {"sparsity": 0.7, "test_acc": 89.2, "sparsity_low": 0.5, "sparsity_high": 0.7},
         "random+IT-RAND": {"sparsity": None, "test_acc": None, "sparsity_low": None, "sparsity_high": None}}


def accuracy_figure(rule="point"):
    return plots.plot_accuracy_vs_sparsity(ROWS, DENSE_ACC, TOLERANCE, KNEES, "test", knee_rule=rule)


def cost_figure(rule="point", rows=ROWS):
    return plots.plot_sparsity_against_cost(rows, DENSE_ACC, TOLERANCE, KNEES, "test", knee_rule=rule)


def curve_line(axes, name):
    return next(line for line in axes.get_lines() if line.get_label() == name)


def plotted_points(axes) -> set[tuple[float, float]]:
    """Every point drawn on `axes` but the caps of error bars (a "_" marker), which only end a bar."""
    return {(round(float(x), 6), round(float(y), 6)) for line in axes.get_lines() if line.get_marker() != "_"
            for x, y in zip(line.get_xdata(), line.get_ydata())}


def frontier_points(figure) -> list[tuple[float, float]]:
    line = next(line for line in figure.axes[0].get_lines() if line.get_label().startswith("frontier"))
    return list(zip(line.get_xdata(), line.get_ydata()))


def test_the_close_up_spans_dense_accuracy_three_points_either_side():
    assert accuracy_figure().axes[1].get_ylim() == (DENSE_ACC - 3, DENSE_ACC + 3)


@pytest.mark.parametrize("panel", [0, 1])
def test_a_curve_of_few_levels_is_drawn_as_points_and_one_of_five_or_more_as_a_line(panel):
    axes = accuracy_figure().axes[panel]
    assert curve_line(axes, "random").get_linestyle() == "None"
    assert curve_line(axes, "global+IT-LRR").get_linestyle() == "None"  # three steps and the dense row it began from
    assert curve_line(axes, "global").get_linestyle() == "-"


def test_only_curves_of_five_levels_or_more_are_shaded():
    whole = accuracy_figure().axes[0]
    bands = [collection for collection in whole.collections if not isinstance(collection, LineCollection)]
    assert len(bands) == 1 and bands[0].get_paths()[0].vertices[:, 0].max() == 60  # the global curve's, to its last level


def test_each_seeds_own_accuracy_is_drawn_beside_its_mean_in_the_close_up():
    points = plotted_points(accuracy_figure().axes[1])
    for accuracy in (89.0, 89.5, 88.5):
        assert (round(50 + plots.SEED_OFFSET, 6), accuracy) in points
    assert (50.0, 89.0) in points  # the mean itself, at its level


def test_a_rows_bar_in_the_close_up_is_its_paired_interval_as_accuracy():
    segments = [segment for collection in accuracy_figure().axes[1].collections if isinstance(collection, LineCollection)
                for segment in collection.get_segments()]
    assert any(np.allclose(segment, [[50, DENSE_ACC - 1.4], [50, DENSE_ACC - 0.6]]) for segment in segments)


def test_a_row_without_a_paired_interval_keeps_its_own_95_percent_margin():
    low, high = plots.accuracy_interval(ROWS[3], DENSE_ACC)
    assert (low, high) == pytest.approx((89.5 - 1.959964 * binomial_se(8950, 10000), 89.5 + 1.959964 * binomial_se(8950, 10000)))


def test_the_cost_page_has_a_log_epochs_axis_with_the_published_route_on_it():
    axes = cost_figure().axes[0]
    assert axes.get_xscale() == "log"
    assert {(50, 67.2), (210, 79.0), (630, 86.6), (1300, 89.3), (10, 67.2)} <= plotted_points(axes)
    assert any("their dense 91.72%" in label for label in axes.get_legend_handles_labels()[1])


def test_rows_without_retraining_sit_left_of_the_log_axis_at_a_tick_labelled_0():
    axes = cost_figure().axes[0]
    assert (plots.ZERO_EPOCHS_AT, 30.0) in plotted_points(axes)  # the one-shot knee
    ticks = dict(zip(axes.get_xticks(), (label.get_text() for label in axes.get_xticklabels())))
    assert ticks[plots.ZERO_EPOCHS_AT] == "0" and axes.get_xlim()[0] < plots.ZERO_EPOCHS_AT


def test_each_chain_step_within_tolerance_sits_at_the_epochs_spent_to_reach_it():
    points = plotted_points(cost_figure().axes[0])
    assert {(8, 50.0), (16, 70.0)} <= points
    assert (24, 80.0) not in points  # 2 points below dense


def test_a_row_within_by_its_mean_but_not_its_paired_interval_leads_the_frontier_only_under_the_point_rule():
    assert (plots.ZERO_EPOCHS_AT, 50.0) in frontier_points(cost_figure("point"))
    assert (plots.ZERO_EPOCHS_AT, 50.0) not in frontier_points(cost_figure("confident"))


def test_the_frontier_is_the_most_removed_at_each_budget_or_less():
    assert plots.frontier([(8, 50.0), (0.5, 30.0), (16, 40.0), (0.5, 20.0), (24, 70.0)]) == [(0.5, 30.0), (8, 50.0), (24, 70.0)]


def test_a_knee_is_drawn_with_a_bar_over_its_range():
    axes = cost_figure().axes[0]
    segments = [segment for collection in axes.collections if isinstance(collection, LineCollection) for segment in collection.get_segments()]
    assert any(np.allclose(segment, [[16, 50], [16, 70]]) for segment in segments)  # the chain's knee, 50 to 70%
    assert any(np.allclose(segment, [[plots.ZERO_EPOCHS_AT, 0], [plots.ZERO_EPOCHS_AT, 50]]) for segment in segments)  # no low end: 0


def test_a_curve_with_no_level_within_tolerance_is_named():
    assert "no level within 1 pt: random+IT-RAND" in [text.get_text() for text in cost_figure().axes[0].texts]


def test_a_curve_the_knees_name_without_rows_is_named_too():
    figure = plots.plot_sparsity_against_cost(ROWS, DENSE_ACC, TOLERANCE, KNEES | {"filters": {"sparsity": None}}, "test")
    assert "no level within 1 pt: random+IT-RAND, filters" in [text.get_text() for text in figure.axes[0].texts]


@pytest.mark.parametrize("rule", ["point", "confident"])
def test_both_figures_name_the_knee_rule(rule):
    assert f"knees: {rule} rule" in accuracy_figure(rule).axes[1].get_title()
    assert f"knees: {rule} rule" in cost_figure(rule).axes[0].get_title()


def test_an_old_sweep_without_seeds_paired_drops_or_a_rule_draws_both_figures_under_the_point_rule(tmp_path):
    new_fields = {"seed_correct", "paired_drop", "paired_drop_low", "paired_drop_high"}
    rows = [{key: value for key, value in each.items() if key not in new_fields} for each in ROWS]
    figures = plots.sweep_figures(rows, [], {"dense_acc": DENSE_ACC, "tolerance": TOLERANCE, "knees": KNEES, "dense_bytes": 1000}, "old", tmp_path)
    assert "knees: point rule" in figures["sweep/accuracy_vs_sparsity"].axes[1].get_title()
    assert (plots.ZERO_EPOCHS_AT, 50.0) in frontier_points(figures["sweep/sparsity_vs_retraining"])
    assert (tmp_path / "sweep.png").is_file() and (tmp_path / "sweep_cost.png").is_file()


def test_the_cost_page_says_how_short_an_epoch_was_when_retraining_saw_part_of_the_split():
    rows = [{"curve": "global", "method": "global", "recovery": "none", "sparsity": 0.0, "correct": 900, "total": 1000,
             "test_acc": 90.0, "retrain_epochs": 0},
            {"curve": "global+IT-LRR", "method": "global", "recovery": "it-lr_restart", "sparsity": 0.5, "correct": 899,
             "total": 1000, "test_acc": 89.9, "retrain_epochs": 12}]
    knees = {"global": None, "global+IT-LRR": None}
    quarter = plots.plot_sparsity_against_cost(rows, 90.0, 1.0, knees, "resnet20", epoch_share=0.25).axes[0].get_xlabel()
    whole = plots.plot_sparsity_against_cost(rows, 90.0, 1.0, knees, "resnet20").axes[0].get_xlabel()
    assert "each 25% of the training split" in quarter and "%" not in whole


def write_sweep(folder, rows):
    folder.mkdir()
    (folder / "sweep.json").write_text(json.dumps({"config": {}, "rows": rows}))
    return folder


def test_plotting_several_sweeps_keeps_a_row_measured_alike_once_and_names_a_curve_measured_differently_by_its_sweep(tmp_path, script):
    dense = {"curve": "global", "method": "global", "recovery": "none", "sparsity": 0.0, "correct": 900, "total": 1000, "test_acc": 90.0}
    chain = {"curve": "global+IT-LRR", "method": "global", "recovery": "it-lr_restart", "sparsity": 0.8, "correct": 895,
             "total": 1000, "test_acc": 89.5, "retrain_epochs": 12}
    one_shot = {**dense, "sparsity": 0.8, "correct": 250, "test_acc": 25.0}
    first = write_sweep(tmp_path / "route_a", [dense, one_shot, chain])
    second = write_sweep(tmp_path / "route_b", [dense, one_shot, {**chain, "correct": 880, "test_acc": 88.0, "retrain_epochs": 8}])
    rows = script("plot_sweep").joined_rows([first, second])
    assert [row["curve"] for row in rows] == ["global", "global", "global+IT-LRR (route_a)", "global+IT-LRR (route_b)"]


def test_plotting_sweeps_of_other_dense_networks_together_is_refused(tmp_path, script):
    dense = {"curve": "global", "method": "global", "recovery": "none", "sparsity": 0.0, "correct": 900, "total": 1000, "test_acc": 90.0}
    first = write_sweep(tmp_path / "one", [dense])
    second = write_sweep(tmp_path / "other", [{**dense, "correct": 850, "test_acc": 85.0}])
    with pytest.raises(Exception, match="not the same checkpoint"):
        script("plot_sweep").joined_rows([first, second])


def test_every_registry_entry_has_a_style_of_its_own_and_a_new_method_still_gets_a_colour(monkeypatch):
    from magprune.core import pruning
    from magprune.report import styles
    from magprune.sweep.chains import RETRAININGS
    from magprune.sweep.recoveries import RECOVERIES

    assert set(styles.METHOD_COLOURS) == set(pruning.METHODS) and len(set(styles.METHOD_COLOURS.values())) == len(pruning.METHODS)
    assert set(styles.RECOVERY_LINES) == set(RECOVERIES) and set(styles.RETRAINING_LINES) == set(RETRAININGS)
    monkeypatch.setitem(pruning.METHODS, "new", pruning.METHODS["global"])
    assert styles.method_colour("new") == f"C{(len(pruning.METHODS) - 1) % 10}"
