"""Bad input: one line on stderr that says what to do, exit status 2, no traceback, nothing overwritten."""
import importlib.util
import shutil
import subprocess
import sys

import pytest
import torch

import sweep
import train
from magprune.core.nets import build_model


def expect_error(main, argv, capsys, fragment: str):
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith("error:") and "\n" not in error and "Traceback" not in error, error
    assert fragment in error, error


@pytest.fixture
def foreign_files(tmp_path, checkpoint):
    data = checkpoint.read_bytes()
    (tmp_path / "truncated.ckpt").write_bytes(data[: len(data) // 2])
    (tmp_path / "noise.ckpt").write_bytes(bytes(range(256)) * 10)
    torch.save({"epoch": 3, "weights": [1, 2]}, tmp_path / "other.ckpt")
    other_arch = torch.load(checkpoint, weights_only=True)
    other_arch["hyper_parameters"]["arch"] = "resnet56"
    torch.save(other_arch, tmp_path / "mismatch.ckpt")
    (tmp_path / "in_the_way").write_text("a file where a folder should be")
    (tmp_path / "damaged_out").mkdir()
    (tmp_path / "damaged_out" / "sweep.json").write_text('{"config": {}, "rows": [')
    (tmp_path / "table_only").mkdir()
    (tmp_path / "table_only" / "sweep.csv").write_text("curve,sparsity\r\n")
    (tmp_path / "a_folder.ckpt").mkdir()
    torch.save({"state_dict": {f"module.{key}": value for key, value in build_model("resnet20").state_dict().items()}},
               tmp_path / "resnet20.th")
    return tmp_path


SWEEP_CASES = [
    ("missing checkpoint", ["--checkpoint", "{tmp}/absent.ckpt"], "does not exist"),
    ("truncated checkpoint", ["--checkpoint", "{tmp}/truncated.ckpt"], "cannot be read"),
    ("not a checkpoint at all", ["--checkpoint", "{tmp}/noise.ckpt"], "cannot be read"),
    ("someone else's checkpoint", ["--checkpoint", "{tmp}/other.ckpt"], "not a Lightning checkpoint"),
    ("checkpoint of another model", ["--checkpoint", "{tmp}/mismatch.ckpt"], "does not match"),
    ("negative sparsity", ["--checkpoint", "{ckpt}", "--sparsities", "0,-0.1"], "outside [0, 1]"),
    ("sparsity above one", ["--checkpoint", "{ckpt}", "--sparsities", "1.5"], "outside [0, 1]"),
    ("NaN sparsity", ["--checkpoint", "{ckpt}", "--sparsities", "nan"], "outside [0, 1]"),
    ("empty sparsity list", ["--checkpoint", "{ckpt}", "--sparsities", ","], "empty"),
    ("words for sparsities", ["--checkpoint", "{ckpt}", "--sparsities", "half"], "comma-separated numbers"),
    ("unknown method", ["--checkpoint", "{ckpt}", "--methods", "layerwise,magic"], "magic"),
    ("zero batch size", ["--checkpoint", "{ckpt}", "--batch_size", "0"], "--batch_size"),
    ("a GPU that is not there", ["--checkpoint", "{ckpt}", "--gpus", "1"], "--gpus: this machine has 0 CUDA GPUs"),
    ("data missing offline", ["--checkpoint", "{ckpt}", "--data_dir", "{tmp}/no_data", "--output_dir", "{tmp}/out"], "--data_dir"),
    ("output folder not writable", ["--checkpoint", "{ckpt}", "--output_dir", "{tmp}/in_the_way/out"], "--output_dir"),
    ("weights without an arch", ["--weights", "{tmp}/other.ckpt"], "--arch"),
    ("unknown arch", ["--weights", "{tmp}/other.ckpt", "--arch", "vgg16"], "unknown network 'vgg16'"),
    ("weights of another model", ["--weights", "{tmp}/resnet20.th", "--arch", "resnet56"], "does not fit"),
    ("bit width not offered", ["--checkpoint", "{ckpt}", "--quantize", "8,3"], "--quantize: 3 bits"),
    ("words for bit widths", ["--checkpoint", "{ckpt}", "--quantize", "eight"], "--quantize"),
    ("levels a TensorBoard step apart", ["--checkpoint", "{ckpt}", "--sparsities", "0.5,0.5004"], "closer than 0.1%"),
    ("bisection finer than a TensorBoard step", ["--checkpoint", "{ckpt}", "--find_knee", "--knee_resolution", "0.001"],
     "--knee_resolution"),
    ("no seeds", ["--checkpoint", "{ckpt}", "--seeds", "0"], "--seeds"),
    ("negative fine-tuning rate", ["--checkpoint", "{ckpt}", "--finetune_lr", "-1"], "--finetune_lr"),
    ("checkpoint that is a folder", ["--checkpoint", "{tmp}/a_folder.ckpt"], "is a folder, not a file"),
    ("damaged sweep.json in the output folder", ["--checkpoint", "{ckpt}", "--output_dir", "{tmp}/damaged_out"], "left as it is"),
    ("a sweep.csv without its sweep.json", ["--checkpoint", "{ckpt}", "--output_dir", "{tmp}/table_only"], "no sweep.json"),
    ("recovery without training images", ["--checkpoint", "{ckpt}", "--data_dir", "{project}/demo_data", "--bn_recalibrate", "2"],
     "no training images"),
]


@pytest.mark.parametrize("case, argv, fragment", SWEEP_CASES, ids=[case[0] for case in SWEEP_CASES])
def test_sweep_bad_input(case, argv, fragment, foreign_files, checkpoint, capsys, no_gpu, monkeypatch, project):
    monkeypatch.chdir(foreign_files)  # a case that wrongly ran would write here, not into the project
    argv = [item.format(tmp=foreign_files, ckpt=checkpoint, project=project) for item in argv]
    expect_error(sweep.main, argv, capsys, fragment)


def test_seeded_random_masks_without_scipy_stop_before_any_test(checkpoint, tmp_path, capsys, monkeypatch):
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *rest: None if name == "scipy" else find_spec(name, *rest))
    expect_error(sweep.main, ["--checkpoint", str(checkpoint), "--methods", "random", "--seeds", "3",
                              "--output_dir", str(tmp_path / "out")], capsys, "needs scipy")
    assert not (tmp_path / "out").exists()


TRAIN_CASES = [
    ("unknown arch", ["--arch", "vgg16"], "unknown network 'vgg16'"),
    ("a GPU that is not there", ["--gpus", "1"], "--gpus 1"),
    ("zero epochs", ["--epochs", "0"], "--epochs"),
    ("zero batch size", ["--batch_size", "0"], "--batch_size"),
    ("data missing offline", ["--data_dir", "{tmp}/no_data", "--arch", "resnet20"], "--data_dir"),
    ("nothing to resume", ["--resume", "--checkpoint_root", "{tmp}/none"], "--resume"),
    ("resume from a missing file", ["--resume", "{tmp}/absent.ckpt"], "--resume"),
    ("start from a folder", ["--init_from", "{tmp}"], "--init_from"),
    ("compiling a network whose masks move", ["--prune_to", "0.5", "--compile"], "--compile"),
    ("an image size of no pixels", ["--image_size", "0x32"], "--image_size"),
]


@pytest.mark.parametrize("case, argv, fragment", TRAIN_CASES, ids=[case[0] for case in TRAIN_CASES])
def test_train_bad_input(case, argv, fragment, tmp_path, capsys, monkeypatch, no_gpu):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("torchvision.datasets.CIFAR10.download", lambda self: (_ for _ in ()).throw(RuntimeError("offline")))
    expect_error(train.main, [item.format(tmp=tmp_path) for item in argv], capsys, fragment)


def test_train_refuses_a_network_whose_classifier_is_not_a_linear_layer(fake_cifar, tmp_path, capsys, no_gpu):
    expect_error(train.main, ["--arch", "tv:squeezenet1_1", "--data_dir", str(fake_cifar), "--checkpoint_root", str(tmp_path),
                              "--log_root", str(tmp_path)], capsys, "has no Linear layer")


# What a row measures: the layers pruned; the batches BatchNorm statistics are re-estimated on.
@pytest.mark.parametrize("change", [["--include_classifier"], ["--batch_size", "7"]], ids=["layers pruned", "batch size"])
def test_a_finished_sweep_is_not_overwritten_by_other_settings(change, checkpoint, fake_cifar, tmp_path, capsys):
    out = tmp_path / "sweep"
    sweep.main(["--checkpoint", str(checkpoint), "--sparsities", "0,0.5", "--data_dir", str(fake_cifar), "--output_dir", str(out),
                "--bn_recalibrate", "1"])
    before = {path.name: path.read_bytes() for path in out.glob("sweep.*")}
    capsys.readouterr()
    expect_error(sweep.main, ["--checkpoint", str(checkpoint), "--sparsities", "0,0.5", "--bn_recalibrate", "1", *change,
                              "--data_dir", str(fake_cifar), "--output_dir", str(out)], capsys, "other settings")
    assert {path.name: path.read_bytes() for path in out.glob("sweep.*")} == before


def test_the_command_line_prints_no_traceback(tmp_path, project):
    # Python, torch and Lightning start in about 6 s on an idle 2-core machine.
    result = subprocess.run([sys.executable, str(project / "sweep.py"), "--checkpoint", str(tmp_path / "absent.ckpt")],
                            cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0 and "Traceback" not in result.stderr


class RunsCodeWhenLoaded:
    """A pickle that creates a file when unpickled: what a malicious weights file can do."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.mark.parametrize("flag", ["--weights", "--checkpoint"])
def test_a_file_that_would_run_code_is_refused_and_runs_nothing(flag, tmp_path, capsys, no_gpu, monkeypatch):
    monkeypatch.chdir(tmp_path)
    marker = tmp_path / "code_ran"
    torch.save({"state_dict": {"conv1.weight": RunsCodeWhenLoaded(marker)}, "hyper_parameters": {"arch": "resnet20"}},
               tmp_path / "evil.pt")
    expect_error(sweep.main, [flag, str(tmp_path / "evil.pt"), "--arch", "resnet20"], capsys, "refused")
    assert not marker.exists()


def test_without_a_gpu_the_entry_points_choose_the_cpu_and_say_so(no_gpu, fake_cifar, checkpoint, tmp_path, capsys):
    assert train.parse_args([]).gpus == 0 and sweep.parse_args([]).gpus is None
    sweep.main(["--checkpoint", str(checkpoint), "--data_dir", str(fake_cifar), "--sparsities", "0",
                "--output_dir", str(tmp_path)])
    assert capsys.readouterr().out.splitlines()[0].startswith("device: CPU")


def test_a_sweep_does_not_resume_from_other_weights_at_the_same_path(checkpoint, fake_cifar, tmp_path, capsys):
    replaced = tmp_path / "model.ckpt"
    shutil.copy(checkpoint, replaced)
    argv = ["--checkpoint", str(replaced), "--sparsities", "0,0.5", "--data_dir", str(fake_cifar),
            "--output_dir", str(tmp_path / "sweep")]
    sweep.main(argv)
    retrained = torch.load(replaced, weights_only=False)  # our own test checkpoint, hyper-parameters and all
    name = next(key for key in retrained["state_dict"] if key.endswith("conv1.weight"))
    retrained["state_dict"][name] = retrained["state_dict"][name] * 2
    torch.save(retrained, replaced)
    capsys.readouterr()
    expect_error(sweep.main, argv, capsys, "other settings or weights")


@pytest.mark.parametrize("main, flag", [(sweep.main, "--limit_test_batches"), (train.main, "--limit_train_batches")])
def test_a_batch_limit_with_a_point_above_1_is_a_one_line_error(main, flag, capsys):
    expect_error(main, [flag, "2.5"], capsys, "a fraction of the batches lies in [0.0, 1.0]")


def test_a_retraining_that_replays_the_training_schedule_refuses_a_weights_file(capsys):
    expect_error(sweep.main, ["--weights", "w.pt", "--arch", "resnet20", "--iterative", "random_reinit"], capsys,
                 "--iterative")
