"""PartialConv2d: a drop-in for NVIDIA's `PartialConv2d` (same constructor, forward and state_dict)."""
import torch.nn as nn

from .. import ops


class PartialConv2d(nn.Conv2d):
    """nn.Conv2d arguments plus `multi_channel` and `return_mask` (keyword only, as NVIDIA's).

    forward(input, mask_in=None): mask_in (B,1,H,W), or (B,C_in,H,W) with multi_channel; 1 = valid, soft
    allowed; None = all ones. Returns output, or (output, new_mask) when return_mask.
    """

    def __init__(self, *args, multi_channel=False, return_mask=False, **kwargs):
        super().__init__(*args, **kwargs)
        if self.padding_mode != "zeros":
            raise ValueError(f"PartialConv2d supports padding_mode='zeros' only, got {self.padding_mode!r}")
        if isinstance(self.padding, str):
            raise ValueError(f"PartialConv2d needs integer padding, got {self.padding!r}")
        self.multi_channel = multi_channel
        self.return_mask = return_mask

    def forward(self, input, mask_in=None):
        out, new_mask = ops.partial_conv2d(input, mask_in, self.weight, self.bias, self.stride, self.padding,
                                           self.dilation, self.groups, self.multi_channel)
        return (out, new_mask) if self.return_mask else out

    def extra_repr(self):
        return super().extra_repr() + f", multi_channel={self.multi_channel}, return_mask={self.return_mask}"
