"""scripts/recipe_ablation.py: each variant's accuracies read from its TensorBoard run, set against the recipe's."""
import pytest
from torch.utils.tensorboard import SummaryWriter


def write_run(path, test_acc=None):
    writer = SummaryWriter(str(path))
    for epoch, (val, train) in enumerate([(0.50, 0.40), (0.70, 0.65), (0.68, 0.80)]):
        writer.add_scalar("val/acc", val, epoch)
        writer.add_scalar("train/acc", train, epoch)
    if test_acc is not None:
        writer.add_scalar("test/acc", test_acc, 3)
    writer.close()


def test_a_finished_run_gives_its_best_validation_last_training_and_test_accuracy(tmp_path, script):
    write_run(tmp_path, test_acc=0.6912)
    assert script("recipe_ablation").read_run(tmp_path) == pytest.approx({"best_val_acc": 70.0, "last_train_acc": 80.0, "test_acc": 69.12})


def test_a_run_without_a_test_is_not_finished(tmp_path, script):
    write_run(tmp_path)
    assert script("recipe_ablation").read_run(tmp_path) == {}


def test_the_table_sets_each_variant_against_the_recipe(script):
    measured = {"best_val_acc": 80.0, "last_train_acc": 85.0, "wall_s": 600}
    text = script("recipe_ablation").table({"fast": {"flags": [], "test_acc": 80.5, **measured},
                                  "no_nesterov": {"flags": ["--no-nesterov"], "test_acc": 80.25, **measured}})
    rows = [line.split(" | ") for line in text.splitlines()[2:]]
    assert [cells[5] for cells in rows] == ["+0.00", "-0.25"]
    assert rows[1][1] == "--no-nesterov"
