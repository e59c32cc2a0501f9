"""A small CNN trained (in a few seconds) on scikit-learn's handwritten digits, and a
network whose activations overflow FP16.  Used as ``module:callable`` factories."""

from __future__ import annotations

from functools import lru_cache

import torch
from torch import nn

TRAIN = 1400   # the first 1400 digits train; the remaining 397 are held out


class DigitsCNN(nn.Module):
    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(),
            nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(32, 32, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
        )
        self.head = nn.Linear(32, 10)

    def forward(self, images):
        return self.head(self.features(images).flatten(1))


@lru_cache(maxsize=1)
def _trained_state():
    from edgeport.data import digits_images

    images, labels = digits_images(TRAIN)
    torch.manual_seed(0)
    model = DigitsCNN()
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    x, y = torch.from_numpy(images), torch.from_numpy(labels)
    for _ in range(25):
        order = torch.randperm(len(x))
        for start in range(0, len(x), 64):
            index = order[start:start + 64]
            optimizer.zero_grad()
            nn.functional.cross_entropy(model(x[index]), y[index]).backward()
            optimizer.step()
    return {k: v.clone() for k, v in model.state_dict().items()}


def trained_digits_cnn():
    model = DigitsCNN()
    model.load_state_dict(_trained_state())
    return model.eval()


class Overflowing(nn.Module):
    """exp() of activations up to ~20: past FP16's 65504 (e^11.1), fine in FP32, and brought
    back to order 1 by a LayerNorm."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.weight = nn.Parameter(torch.randn(16, 32) * 2.0)
        self.norm = nn.LayerNorm(32)
        self.out = nn.Linear(32, 4)

    def forward(self, features):
        return self.out(self.norm(torch.exp(torch.matmul(features, self.weight))))


def overflowing():
    return Overflowing().eval()
