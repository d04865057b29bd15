"""The experiment's answer, exactly: the largest level whose accuracy stays within the tolerance of dense."""
from magprune.core.stats import binomial_se, find_knees, knee_ranges
from magprune.report.summary import knee_summary
from magprune.report.tables import print_table
from magprune.sweep.config import sparsity_step
from magprune.sweep.searches import bisect

DENSE = {"curve": "layerwise", "sparsity": 0.0, "correct": 8518, "total": 10000}


def curve(*points, name="layerwise"):
    """Rows of one curve from (sparsity, correct out of 10,000) pairs."""
    return [{"curve": name, "sparsity": sparsity, "correct": correct, "total": 10000} for sparsity, correct in points]


def knee(rows, tolerance=1.0):
    found = find_knees(rows, DENSE, tolerance)["layerwise"]
    return None if found is None else found["sparsity"]


def test_exactly_the_tolerance_below_dense_is_within():
    # 84.18% against 85.18%: as float32 percentages, 84.18 >= 85.18 - 1 is False.
    assert knee(curve((0.0, 8518), (0.5, 8418), (0.6, 8417))) == 0.5


def test_one_image_short_of_the_tolerance_is_outside():
    assert knee(curve((0.0, 8518), (0.5, 8417))) == 0.0


def test_a_fractional_tolerance_is_read_as_the_decimal_typed():
    assert knee(curve((0.0, 8518), (0.3, 8508), (0.4, 8507)), tolerance=0.1) == 0.3


def test_a_curve_that_dips_and_recovers_keeps_its_knee_before_the_dip():
    rows = curve((0.0, 8518), (0.1, 8500), (0.2, 8300), (0.3, 8510), (0.4, 8000))
    assert knee(rows) == 0.1


def test_levels_tied_with_dense_take_the_largest():
    assert knee(curve((0.0, 8518), (0.1, 8518), (0.2, 8518), (0.3, 7000))) == 0.2


def test_a_curve_within_tolerance_everywhere_has_its_knee_at_the_top():
    assert knee(curve((0.0, 8518), (0.5, 8600), (1.0, 8520))) == 1.0


def test_a_curve_already_outside_at_its_first_level_has_no_knee():
    assert knee(curve((0.0, 8000), (0.5, 7000))) is None


def test_each_curve_gets_its_own_knee_in_any_row_order():
    rows = curve((0.5, 8418), (0.0, 8518), (0.7, 8000)) + curve((0.7, 8500), (0.0, 8518), (0.5, 8510), name="global")
    knees = find_knees(rows, DENSE, 1.0)
    assert (knees["layerwise"]["sparsity"], knees["global"]["sparsity"]) == (0.5, 0.7)


def test_bisection_finds_the_same_exact_boundary(synthetic_sweep):
    # 84.18% (exactly one point below dense) up to 63% sparsity, one image fewer beyond.
    boundary = synthetic_sweep(lambda method, sparsity, recovery: (8518 if sparsity == 0 else 8418 if sparsity <= 0.63 else 8417, 10000),
                               tolerance=1.0, knee_resolution=0.01)
    assert 0.62 <= bisect(boundary)["layerwise"]["sparsity"] <= 0.63


def test_every_level_a_bisection_tests_has_a_tensorboard_step_of_its_own(synthetic_sweep):
    tested = []

    def accuracy(method, sparsity, recovery):
        tested.append(sparsity)
        return (8518 if sparsity <= 0.3 else 8000), 10000

    # The finest resolution the config accepts, and a boundary that is not a power-of-two fraction.
    bisect(synthetic_sweep(accuracy, tolerance=1.0, knee_resolution=0.002))
    assert len(tested) > 9
    assert len({sparsity_step(level) for level in tested}) == len(set(tested))


def test_the_knee_table_prints_the_sparsity_the_model_has(capsys):
    # A checkpoint pruned to 80% in training is 80% sparse at the sweep's level 0.
    rows = [{"curve": "layerwise", "method": "layerwise", "recovery": "none", "sparsity": 0.0, "achieved_sparsity": 0.8, "test_acc": 85.18, "correct": 8518, "total": 10000}]
    knees = knee_summary(rows, find_knees(rows, rows[0], 1.0))
    print_table(rows, knees, 85.18, 1.0)
    knee_line = capsys.readouterr().out.strip().splitlines()[-1]
    assert knee_line.split()[:2] == ["layerwise", "80.0%"]


def test_the_knee_range_of_a_bisection_prints_to_a_tenth_of_a_percent(capsys):
    rows = curve((0.0, 8518), (0.0625, 8518), (0.40625, 8430), (0.5, 8000))
    for row in rows:
        row.update(method="layerwise", recovery="none", achieved_sparsity=row["sparsity"], test_acc=row["correct"] / 100,
                   test_acc_se=binomial_se(row["correct"], row["total"]))
    knees = knee_summary(rows, find_knees(rows, rows[0], 1.0), ranges=knee_ranges(rows, rows[0], 1.0))
    print_table(rows, knees, 85.18, 1.0)
    output = capsys.readouterr().out
    assert "within 1 point of dense" in output
    assert output.strip().splitlines()[-1].split()[1:5] == ["40.6%", "6.2", "to", "40.6%"]


def test_latency_is_measured_for_the_knee_only():
    rows = [{"curve": "filters", "method": "filters", "recovery": "none", "sparsity": sparsity, "achieved_sparsity": sparsity,
             "test_acc": correct / 100, "correct": correct, "total": 10000}
            for sparsity, correct in ((0.0, 8500), (0.1, 8480), (0.2, 8000))]
    timed = []

    def latency(method, sparsity):
        timed.append((method, sparsity))
        return {"dense_latency_ms": 2.0, "slim_latency_ms": 1.5}

    knees = knee_summary(rows, find_knees(rows, rows[0], 1.0), latency=latency)
    assert timed == [("filters", 0.1)]
    assert knees["filters"]["slim_latency_ms"] == 1.5


def test_a_recovered_knee_reports_what_its_masks_save_where_the_one_shot_curve_has_no_row():
    # A bisected "+BN" curve stops at a level its one-shot search never tested.
    rows = [{"curve": "global", "method": "global", "recovery": "none", "sparsity": 0.0, "achieved_sparsity": 0.0,
             "test_acc": 85.0, "correct": 8500, "total": 10000, "flops_sparse": 100, "bitmask_bytes": 1000},
            {"curve": "global+BN", "method": "global", "recovery": "bn", "sparsity": 0.461, "achieved_sparsity": 0.461,
             "test_acc": 84.5, "correct": 8450, "total": 10000, "flops_sparse": 60, "bitmask_bytes": 700}]
    knees = knee_summary(rows, find_knees(rows, rows[0], 1.0))
    assert (knees["global+BN"]["flops_sparse"], knees["global+BN"]["bitmask_bytes"]) == (60, 700)
