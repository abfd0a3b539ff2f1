"""The coarse network: a U-Net of partial convolutions (Liu et al. 2018), producing the coarse face P."""
import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..nn import PartialConv2d
from .blocks import checkpointed
from .lean import conv_in_row_bands, upsample_cat, upsample_cat_rows, wants_bands


def default_depth(image_size: int) -> int:
    """Stride-2 levels of the coarse U-Net for an image size: down to 2x2 at most, 7 levels at most."""
    return min(7, int(math.log2(image_size)) - 1)


class PartialConvUNet(nn.Module):
    """NVIDIA-style PConv U-Net: `depth` stride-2 partial convs (kernels 7, 5, 5, 3, ...), then nearest
    upsampling, skip concatenation of features and masks, and 3x3 partial convs back to full size.

    Masks are multi-channel (one per feature channel) as in the original. forward(image, mask) with
    image (B,3,H,W) in [-1,1] and mask (B,1,H,W), 1 = valid; H and W multiples of 2**depth.

    `checkpoint_activations = True` recomputes each level's activations in the backward instead of keeping them
    (less memory, about one more forward of time); a runtime switch, off by default and in no state_dict.
    """

    checkpoint_activations = False

    def __init__(self, in_channels=3, out_channels=3, base_channels=64, depth=7, max_channels=512):
        super().__init__()
        self.depth = depth
        widths = [min(base_channels * 2 ** i, max_channels) for i in range(depth)]
        kernels = [7, 5, 5] + [3] * max(depth - 3, 0)
        self.enc, self.enc_bn = nn.ModuleList(), nn.ModuleList()
        cin = in_channels
        for i, (w, k) in enumerate(zip(widths, kernels)):
            self.enc.append(PartialConv2d(cin, w, k, stride=2, padding=k // 2, bias=i == 0,
                                          multi_channel=True, return_mask=True))
            self.enc_bn.append(nn.Identity() if i == 0 else nn.BatchNorm2d(w))
            cin = w
        self.dec, self.dec_bn = nn.ModuleList(), nn.ModuleList()
        skips = [in_channels] + widths[:-1]
        for i in reversed(range(depth)):
            last = i == 0
            cout = out_channels if last else skips[i]
            self.dec.append(PartialConv2d(cin + skips[i], cout, 3, padding=1, bias=last, multi_channel=True,
                                          return_mask=True))
            self.dec_bn.append(nn.Identity() if last else nn.BatchNorm2d(cout))
            cin = cout

    def forward(self, image, mask):
        # the mask per image channel, materialised in image's layout: every torch.cat of masks below then
        # keeps that layout (an expanded view would make the concatenations, and the convs, NCHW)
        h, m = image, torch.empty_like(image).copy_(mask.expand(-1, image.shape[1], -1, -1))
        feats, masks = [h], [m]
        recompute = self.checkpoint_activations and torch.is_grad_enabled()
        for conv, bn in zip(self.enc, self.enc_bn):
            if recompute:
                h, m = checkpointed(_down, conv, bn, h, m, stateful=(bn,))
            else:
                h, m = _down(conv, bn, h, m)
            feats.append(h)
            masks.append(m)
        feats.pop(), masks.pop()
        for j, (conv, bn) in enumerate(zip(self.dec, self.dec_bn)):
            # cat(upsample(h), skip) with no upsampled copy, in an inference in bands of rows (models/lean.py):
            # at full resolution the concatenations of features and masks are 67-channel maps
            skip, skip_mask = feats.pop(), masks.pop()
            last = j == self.depth - 1
            if recompute:  # the level's batch norm and activation are in the recomputed part too
                h, m = checkpointed(_up, conv, bn, last, h, m, skip, skip_mask, stateful=(bn,))
            elif wants_bands(h):
                sources = [upsample_cat_rows(h, skip), upsample_cat_rows(m, skip_mask)]
                h, m = conv_in_row_bands(conv, sources, h, skip.shape[-2:], 3 * conv.in_channels)
            else:
                x, mx = upsample_cat(h, skip), upsample_cat(m, skip_mask)
                del h, m
                h, m = conv(x, mx)
                del x, mx
            del skip, skip_mask
            if not (last or recompute):
                h = F.leaky_relu(bn(h), 0.2)
        return h


def _down(conv, bn, h, m):
    """An encoder level: stride-2 partial conv, batch norm, ReLU."""
    h, m = conv(h, m)
    return F.relu(bn(h)), m


def _up(conv, bn, last, h, m, skip, skip_mask):
    """A decoder level (its training form): upsample and concatenate the skips, partial conv, batch norm and
    leaky ReLU but for the last level."""
    h, m = conv(upsample_cat(h, skip), upsample_cat(m, skip_mask))
    return (h, m) if last else (F.leaky_relu(bn(h), 0.2), m)
