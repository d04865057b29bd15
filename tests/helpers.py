"""Models the tests share."""
import torch
from torch import nn

from models import build_model


def resnet20_without_zero_parameters(seed: int = 0) -> nn.Module:
    """resnet20 with every parameter and batch-norm statistic drawn at random: batch norm starts
    with zero shifts, which would otherwise count as pruned weights and hide the BN shift effect."""
    torch.manual_seed(seed)
    model = build_model("resnet20")
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.normal_(0, 0.1)
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.weight.uniform_(0.5, 1.5)
                module.running_mean.normal_(0, 0.1)
                module.running_var.uniform_(0.5, 1.5)
    return model.eval()
