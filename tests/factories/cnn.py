"""A plain CIFAR-style CNN, as a user's ``module:callable`` factory would return it."""

import torch
from torch import nn


class SmallCNN(nn.Module):
    def __init__(self, num_classes: int = 10, channels: int = 3):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(channels, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(16, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
        )
        self.head = nn.Linear(32, num_classes)

    def forward(self, images):
        return self.head(self.features(images).flatten(1))


def cifar_cnn():
    torch.manual_seed(0)
    return SmallCNN()


class TwoHeads(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Linear(8, 16)
        self.a = nn.Linear(16, 2)
        self.b = nn.Linear(16, 3)

    def forward(self, features, mask):
        hidden = torch.relu(self.body(features)) * mask.unsqueeze(-1)
        return self.a(hidden), self.b(hidden)


def two_heads():
    torch.manual_seed(0)
    return TwoHeads()


def not_a_module():
    return 42


def broken_factory():
    raise RuntimeError("the factory fell over")


class ReturnsString(nn.Module):
    def forward(self, x):
        return "not a tensor"


def returns_a_string():
    return ReturnsString()


def gemm_mlp():
    """Three Linear layers: a graph whose every quantizable node is a Gemm."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 4)).eval()
