"""The reconstruction network of the InCo² loss (ShowFace Fig. 4): an encoder-decoder trained to
reproduce whole faces; its encoder's middle features are what InCo² compares."""
import torch
import torch.nn as nn
import torch.nn.functional as F

from ..models.blocks import conv_block


class ReconstructionNet(nn.Module):
    def __init__(self, base_channels=64, down=3, feature_channels=256):
        super().__init__()
        enc, c = [conv_block(3, base_channels)], base_channels
        for _ in range(down):
            enc.append(conv_block(c, min(c * 2, feature_channels), stride=2))
            c = min(c * 2, feature_channels)
        self.encoder = nn.Sequential(*enc)
        dec = []
        for _ in range(down):
            dec += [nn.Upsample(scale_factor=2, mode="nearest"), conv_block(c, max(c // 2, base_channels))]
            c = max(c // 2, base_channels)
        self.decoder = nn.Sequential(*dec, nn.Conv2d(c, 3, 3, padding=1))

    def encode(self, image):
        return self.encoder(image)

    def forward(self, image):
        return torch.tanh(self.decoder(self.encoder(image)))

    def loss(self, image):
        return F.l1_loss(self(image), image)
