"""build_model: the architectures the experiment names, shaped for 32x32 CIFAR images."""
import pytest
import torch

from conftest import SHARED_MODELS
from lightning_module import ARCHS, build_model


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


def test_unknown_arch_is_a_value_error_naming_the_choices():
    with pytest.raises(ValueError, match="resnet50"):
        build_model("vgg16")
    assert "resnet56" in ARCHS


@pytest.mark.parametrize("arch", ["resnet20", "resnet56"])
def test_cifar_resnet_loads_the_pretrained_weights_in_shared(arch):
    path = SHARED_MODELS / f"cifar_{arch}_akamaster.th"
    weights = torch.load(path, map_location="cpu", weights_only=False)["state_dict"]
    model = build_model(arch)
    model.load_state_dict({key.removeprefix("module."): value for key, value in weights.items()})
    assert torch.equal(model.linear.weight, weights["module.linear.weight"])
