import pytest
import torch


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield


def small_firing_model(mechanism="none", seed=0, **extra):
    """A small classifier (8 features, 4 tokens, 5 classes, D=8, 2 blocks) with trained-like BatchNorm
    statistics, so that every population fires; in eval mode. Shared by the exporter tests."""
    from torch import nn

    from spiking_attn.models import ModelConfig, build_model

    torch.manual_seed(seed)
    model = build_model(ModelConfig(in_features=8, num_tokens=4, num_classes=5, dim=8, heads=2, depth=2,
                                    mlp_ratio=2.0, mechanism=mechanism, **extra))
    with torch.no_grad():
        for mod in model.modules():
            if isinstance(mod, nn.BatchNorm1d):
                mod.running_var.uniform_(0.05, 0.2)
                mod.weight.uniform_(0.5, 2.0)
                mod.bias.uniform_(0.0, 0.5)
    return model.eval()
