"""SPEC §2: gated convolution (Yu et al. 2019, DeepFillv2), optionally on a partial conv."""
import torch
import torch.nn.functional as F

from .partial_conv import partial_conv2d

ACTIVATIONS = ("elu", "leaky_relu", "relu", "none")


def activation(y, name: str, negative_slope: float = 0.2):
    if name == "elu":
        return F.elu(y)
    if name == "leaky_relu":
        return F.leaky_relu(y, negative_slope)
    if name == "relu":
        return F.relu(y)
    if name == "none":
        return y
    raise ValueError(f"activation must be one of {ACTIVATIONS}, got {name!r}")


def gated_activation(y, activation_name: str = "elu", negative_slope: float = 0.2):
    """act(first half of channels) * sigmoid(second half)."""
    c = y.shape[1] // 2
    return activation(y[:, :c], activation_name, negative_slope) * torch.sigmoid(y[:, c:])


def gated_conv2d(x, weight, bias=None, stride=1, padding=0, dilation=1, groups=1, activation="elu",
                 negative_slope=0.2, mask=None):
    """`weight` has 2*C_out output channels. Returns out, or (out, new_mask) when `mask` is given."""
    if mask is None:
        y = F.conv2d(x, weight, bias, stride, padding, dilation, groups)
        return gated_activation(y, activation, negative_slope)
    y, new_mask = partial_conv2d(x, mask, weight, bias, stride, padding, dilation, groups)
    return gated_activation(y, activation, negative_slope), new_mask
