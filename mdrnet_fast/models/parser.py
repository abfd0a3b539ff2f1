"""A light face parser: n-class logits at full resolution (replaceable by the user's own module)."""
import torch.nn as nn

from .blocks import conv_block
from .lean import upsample_cat


class FaceParser(nn.Module):
    """Small encoder-decoder (stride 2 down `depth` times, nearest up with skips) -> (B, n, H, W) logits."""

    def __init__(self, num_classes=14, base_channels=32, depth=3, in_channels=3):
        super().__init__()
        widths = [base_channels * 2 ** i for i in range(depth + 1)]
        self.stem = conv_block(in_channels, widths[0])
        self.down = nn.ModuleList(conv_block(widths[i], widths[i + 1], stride=2) for i in range(depth))
        self.up = nn.ModuleList(conv_block(widths[i + 1] + widths[i], widths[i]) for i in reversed(range(depth)))
        self.head = nn.Conv2d(widths[0], num_classes, 1)

    def forward(self, image):
        h = self.stem(image)
        skips = []
        for down in self.down:
            skips.append(h)
            h = down(h)
        for up in self.up:
            h = up(upsample_cat(h, skips.pop()))
        return self.head(h)
