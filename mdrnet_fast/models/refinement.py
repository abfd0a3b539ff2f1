"""Style encoder and the guided refinement network of ShowFace (§3.2, §3.4)."""
import torch
import torch.nn as nn
import torch.nn.functional as F

from ..nn import GatedConv2d
from .blocks import GatedResBlock, SPADEResBlock, checkpointed, conv_block
from .lean import conv_in_row_bands, upsampled_rows, wants_bands


class StyleEncoder(nn.Module):
    """Coarse face P -> style feature maps F_s (B, style_channels, H/2**down, W/2**down)."""

    def __init__(self, style_channels=256, base_channels=64, down=2, in_channels=3):
        super().__init__()
        layers = [conv_block(in_channels, base_channels, k=3)]
        c = base_channels
        for _ in range(down):
            layers.append(conv_block(c, min(c * 2, style_channels), stride=2))
            c = min(c * 2, style_channels)
        layers.append(nn.Conv2d(c, style_channels, 3, padding=1))
        self.net = nn.Sequential(*layers)

    def forward(self, image):
        return self.net(image)


class GuidedRefinementNetwork(nn.Module):
    """Gated-conv encoder on P (+ mask channel), gated residual blocks, SPADE residual blocks fed by the
    MREM features F_f, gated-conv decoder -> the refined face (tanh).

    `checkpoint_activations = True` recomputes each block's activations (every encoder and decoder conv, every
    residual block) in the backward instead of keeping them; a runtime switch, off by default and in no state_dict.
    """

    checkpoint_activations = False

    def __init__(self, base_channels=64, down=2, gated_blocks=4, spade_blocks=2, cond_channels=256,
                 spade_hidden=128, in_channels=4, out_channels=3):
        super().__init__()
        enc = [GatedConv2d(in_channels, base_channels, 5, padding=2)]
        c = base_channels
        for _ in range(down):
            enc.append(GatedConv2d(c, c * 2, 3, stride=2, padding=1))
            c *= 2
        self.encoder = nn.ModuleList(enc)
        self.gated = nn.Sequential(*(GatedResBlock(c, dilation=2 ** (i % 3)) for i in range(gated_blocks)))
        self.spade = nn.ModuleList(SPADEResBlock(c, c, cond_channels, spade_hidden) for _ in range(spade_blocks))
        dec = []
        for _ in range(down):
            dec.append(GatedConv2d(c, c // 2, 3, padding=1))
            c //= 2
        self.decoder = nn.ModuleList(dec)
        self.out = nn.Conv2d(c, out_channels, 3, padding=1)

    def forward(self, coarse, mask, cond):
        # no buffers anywhere here (SPADE's instance norm keeps no statistics): nothing to restore after a recompute
        run = checkpointed if self.checkpoint_activations and torch.is_grad_enabled() else _call
        h = torch.cat([coarse, mask.to(coarse.dtype)], 1)
        for conv in self.encoder:
            h = run(_gated, conv, h)
        for block in self.gated:
            h = run(block, h)
        for block in self.spade:
            h = run(block, h, cond)
        for conv in self.decoder:
            h = run(_gated, conv, h, 2)
        return torch.tanh(self.out(h))


def _call(fn, *args):
    return fn(*args)


def _gated(conv: GatedConv2d, x, upsample=1):
    """conv(F.interpolate(x, scale_factor=upsample)); in an inference, in bands of rows (models/lean.py), so
    neither the upsampled input nor the 2*C_out conv output exists at full size."""
    if not wants_bands(x):
        return conv(F.interpolate(x, scale_factor=upsample, mode="nearest") if upsample > 1 else x)
    size = (x.shape[2] * upsample, x.shape[3] * upsample)
    return conv_in_row_bands(conv, [upsampled_rows(x, upsample)], x, size, 2 * conv.out_channels)


class PatchGAN(nn.Module):
    """PatchGAN discriminator (Isola et al. 2017): a map of real/fake logits over overlapping patches."""

    def __init__(self, in_channels=3, base_channels=64, layers=3):
        super().__init__()
        seq = [nn.utils.spectral_norm(nn.Conv2d(in_channels, base_channels, 4, 2, 1)), nn.LeakyReLU(0.2, True)]
        c = base_channels
        for i in range(1, layers + 1):
            stride = 2 if i < layers else 1
            seq += [nn.utils.spectral_norm(nn.Conv2d(c, min(c * 2, 512), 4, stride, 1)), nn.LeakyReLU(0.2, True)]
            c = min(c * 2, 512)
        seq.append(nn.Conv2d(c, 1, 4, 1, 1))
        self.net = nn.Sequential(*seq)

    def forward(self, image):
        return self.net(image)
