"""build_model: the networks the experiment names (shaped for 32x32 CIFAR images unless the data says otherwise),
any torchvision classifier, and what every network is checked for when it is built."""
import json

import pytest
import torch

import sweep
from magprune.core.folding import fold_batchnorm
from magprune.core.nets import ARCHS, NETWORKS, build_model
from magprune.errors import InputError
from magprune.core.pruning import apply_pruning, prunable_layers


@pytest.mark.parametrize("arch", ["resnet20", "resnet32", "resnet44", "resnet56", "resnet18"])
def test_every_arch_maps_a_cifar_batch_to_ten_logits(arch):
    assert build_model(arch)(torch.randn(2, 3, 32, 32)).shape == (2, 10)


def test_resnet50_keeps_32x32_resolution_into_the_first_stage():
    model = build_model("resnet50")
    assert model.conv1.kernel_size == (3, 3) and model.conv1.stride == (1, 1)
    assert isinstance(model.maxpool, torch.nn.Identity)
    assert sum(parameter.numel() for parameter in model.parameters()) == pytest.approx(23.5e6, rel=0.01)


@pytest.mark.parametrize("arch, parameters", [("resnet20", 0.27e6), ("resnet56", 0.85e6)])
def test_cifar_resnets_have_the_parameter_counts_of_he_et_al(arch, parameters):
    assert sum(parameter.numel() for parameter in build_model(arch).parameters()) == pytest.approx(parameters, rel=0.02)


@pytest.mark.parametrize("arch", sorted(NETWORKS))
def test_every_registered_network_answers_the_datas_classes_at_the_datas_image_size(arch):
    assert build_model(arch, 12, (40, 48))(torch.randn(2, 3, 40, 48)).shape == (2, 12)


def test_a_torchvision_resnet_takes_the_cifar_stem_for_small_images_and_its_own_from_64_pixels():
    small, large = build_model("resnet18", 10, (32, 32)), build_model("resnet18", 10, (64, 64))
    assert small.conv1.kernel_size == (3, 3) and isinstance(small.maxpool, torch.nn.Identity)
    assert large.conv1.kernel_size == (7, 7) and isinstance(large.maxpool, torch.nn.MaxPool2d)


def test_any_torchvision_classifier_is_built_by_its_name_for_the_datas_classes():
    network = build_model("tv:mobilenet_v3_small", 12, (40, 40))
    assert network(torch.randn(2, 3, 40, 40)).shape == (2, 12) and network.classifier[-1].out_features == 12


@pytest.mark.parametrize("arch, size, message", [
    ("tv:squeezenet1_1", (32, 32), "has no Linear layer"),              # its classifier is a convolution
    ("tv:vit_b_16", (40, 40), "does not take 40x40 images"),            # made for 224x224
    ("tv:not_a_network", (32, 32), "torchvision ships no classifier"),
])
def test_a_network_pruning_cannot_handle_is_refused_when_built_in_one_line(arch, size, message):
    with pytest.raises((InputError, ValueError)) as refused:
        build_model(arch, 10, size)
    assert message in str(refused.value) and "\n" not in str(refused.value)


def test_unknown_arch_is_a_value_error_naming_the_choices():
    with pytest.raises(ValueError, match="resnet50"):
        build_model("vgg16")
    assert "resnet56" in ARCHS


@pytest.mark.parametrize("arch", ["resnet20", "resnet56"])
def test_cifar_resnet_loads_the_pretrained_weights_in_shared(arch, shared_models):
    path = shared_models / f"cifar_{arch}_akamaster.th"
    weights = torch.load(path, map_location="cpu", weights_only=True)["state_dict"]
    model = build_model(arch)
    model.load_state_dict({key.removeprefix("module."): value for key, value in weights.items()})
    assert torch.equal(model.linear.weight, weights["module.linear.weight"])


@pytest.mark.parametrize("arch", ["resnet20", "resnet18"])
def test_folding_batchnorm_keeps_a_pruned_models_outputs_and_zeros(arch):
    torch.manual_seed(0)
    network = build_model(arch)
    for module in network.modules():
        if isinstance(module, torch.nn.BatchNorm2d):  # fresh BN is the identity; make folding do something
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2.0)
    apply_pruning(network, 0.5)
    network.eval()
    masks = {name: module.weight_mask for name, module in prunable_layers(network).items()}
    folded = fold_batchnorm(network)
    images = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(folded(images), network(images), atol=1e-4, rtol=1e-4)
    assert not any(isinstance(module, torch.nn.BatchNorm2d) for module in folded.modules())
    folded_layers = dict(folded.named_modules())
    for name, mask in masks.items():
        assert torch.all(folded_layers[name].weight[mask == 0] == 0)
    assert hasattr(network.conv1, "weight_mask")  # the original keeps its masks


@pytest.mark.parametrize("arch, correct", [("resnet20", 8103), ("resnet56", 8320)])
def test_pretrained_weights_score_what_an_independent_implementation_measured(arch, correct, tmp_path, monkeypatch, shared_models, shared_cifar10):
    """81.03% and 83.20% on the 10,000 JPEG test images: a wrong shortcut, padding or stride would miss them.

    The reference figures come from akamaster's own model code run on the same images. 21 s
    (ResNet-20) and 49 s (ResNet-56) on one idle core.
    """
    if not shared_cifar10.is_dir():
        pytest.skip(f"needs {shared_cifar10}")
    monkeypatch.chdir(tmp_path)
    sweep.main(["--weights", str(shared_models / f"cifar_{arch}_akamaster.th"), "--arch", arch,
                "--mean", "0.485,0.456,0.406", "--std", "0.229,0.224,0.225", "--data_dir", str(shared_cifar10),
                "--sparsities", "0", "--output_dir", str(tmp_path)])
    dense = json.loads((tmp_path / "sweep.json").read_text())["rows"][0]
    assert (dense["correct"], dense["total"]) == (correct, 10000)
