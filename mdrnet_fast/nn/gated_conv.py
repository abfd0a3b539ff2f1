"""GatedConv2d (DeepFillv2): one conv with 2*out_channels outputs, act(feature) * sigmoid(gate)."""
import torch.nn as nn

from .. import ops


class GatedConv2d(nn.Module):
    """forward(x, mask=None) -> out, or (out, new_mask) when a (B,1,H,W) mask is given (partial + gated)."""

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, dilation=1, groups=1,
                 bias=True, activation="elu", negative_slope=0.2):
        super().__init__()
        self.out_channels = out_channels
        self.activation = activation
        self.negative_slope = negative_slope
        self.conv = nn.Conv2d(in_channels, 2 * out_channels, kernel_size, stride, padding, dilation, groups, bias)
        if isinstance(self.conv.padding, str):
            raise ValueError(f"GatedConv2d needs integer padding, got {padding!r}")

    def forward(self, x, mask=None):
        c = self.conv
        return ops.gated_conv2d(x, c.weight, c.bias, c.stride, c.padding, c.dilation, c.groups, self.activation,
                                self.negative_slope, mask)

    def extra_repr(self):
        return f"activation={self.activation!r}"
