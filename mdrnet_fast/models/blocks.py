"""Building blocks shared by the MDRNet sub-networks."""
import contextlib

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from ..nn import SPADE, GatedConv2d


class GatedResBlock(nn.Module):
    """x + gated_conv(gated_conv(x)) (DeepFillv2-style gated convolutions, 3x3, 'same' size)."""

    def __init__(self, channels, dilation=1):
        super().__init__()
        self.conv1 = GatedConv2d(channels, channels, 3, padding=dilation, dilation=dilation)
        self.conv2 = GatedConv2d(channels, channels, 3, padding=1, activation="none")

    def forward(self, x):
        return x + self.conv2(self.conv1(x))


class SPADEResBlock(nn.Module):
    """SPADE residual block (Park et al. 2019): two SPADE-ReLU-conv stages, learned shortcut if needed."""

    def __init__(self, in_channels, out_channels, cond_channels, hidden_channels=128):
        super().__init__()
        mid = min(in_channels, out_channels)
        self.norm1 = SPADE(in_channels, cond_channels, hidden_channels)
        self.conv1 = nn.Conv2d(in_channels, mid, 3, padding=1)
        self.norm2 = SPADE(mid, cond_channels, hidden_channels)
        self.conv2 = nn.Conv2d(mid, out_channels, 3, padding=1)
        self.shortcut = None
        if in_channels != out_channels:
            self.norm_s = SPADE(in_channels, cond_channels, hidden_channels)
            self.shortcut = nn.Conv2d(in_channels, out_channels, 1, bias=False)

    def forward(self, x, cond):
        skip = x if self.shortcut is None else self.shortcut(self.norm_s(x, cond))
        h = self.conv1(F.leaky_relu(self.norm1(x, cond), 0.2))
        h = self.conv2(F.leaky_relu(self.norm2(h, cond), 0.2))
        return skip + h


def conv_block(cin, cout, k=3, stride=1, norm=True, act="relu"):
    """Conv (+ instance norm) + activation: the plain convs of the parser, style encoder and critic."""
    layers = [nn.Conv2d(cin, cout, k, stride, k // 2, bias=not norm)]  # a norm cancels any bias
    if norm:
        # Instance norm with affine parameters, computed by group_norm with one channel per group: the
        # same values and state_dict keys (weight, bias) as nn.InstanceNorm2d(cout, affine=True), but
        # torch's group-norm kernel is ~7x faster on CPU and keeps channels_last (instance_norm copies).
        layers.append(nn.GroupNorm(cout, cout))
    if act == "relu":
        layers.append(nn.ReLU(inplace=True))
    elif act == "lrelu":
        layers.append(nn.LeakyReLU(0.2, inplace=True))
    return nn.Sequential(*layers)


def checkpointed(fn, *args, stateful=()):
    """fn(*args) under activation checkpointing (torch.utils.checkpoint, use_reentrant=False): only the inputs are
    kept for the backward, which runs fn again to get the rest. `stateful`: modules whose buffers fn updates in
    training (batch norms' running statistics): the recomputation would update them a second time, so their
    buffers are put back as they were after it."""
    if not stateful or torch.compiler.is_compiling():
        # compiled, the recomputation is the partitioner's, of a functional graph: no buffer is updated twice
        return checkpoint(fn, *args, use_reentrant=False)
    return checkpoint(fn, *args, use_reentrant=False,
                      context_fn=lambda: (contextlib.nullcontext(), _buffers_restored(stateful)))


@contextlib.contextmanager
def _buffers_restored(modules):
    saved = [(b, b.clone()) for m in modules for b in m.buffers()]
    try:
        yield
    finally:
        with torch.no_grad():
            for buffer, value in saved:
                buffer.copy_(value)
