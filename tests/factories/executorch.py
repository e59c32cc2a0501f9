"""Modules ``torch.export`` cannot capture, as ``module:callable`` factories."""

from __future__ import annotations

from torch import nn


class DataDependent(nn.Module):
    """Python control flow on a tensor's value: what torch.export refuses to guess."""

    def forward(self, x):
        if x.sum() > 0:
            return x * 2
        return x - 1


def data_dependent():
    return DataDependent().eval()
