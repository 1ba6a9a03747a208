"""A user model file for the CLI tests (copied next to a checkpoint and loaded with --arch net.py:SlowMLP)."""
import time

from torch import nn


class SlowMLP(nn.Module):
    """The zoo's digits MLP taking at least 10 ms per batch, so that a run lasts long enough to be interrupted."""

    def __init__(self):
        super().__init__()
        from certify import models
        self.inner = models.build("digits_mlp")

    def forward(self, x):
        time.sleep(0.01)
        return self.inner(x)
