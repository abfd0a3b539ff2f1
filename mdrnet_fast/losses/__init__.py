"""Losses of ShowFace (eq. 15): InCo², semantic, L1, perceptual, style, adversarial, TV."""
from . import terms
from .criterion import LossWeights, MDRNetLoss
from .recon import ReconstructionNet
from .vgg import VGG19Features

__all__ = ["terms", "LossWeights", "MDRNetLoss", "ReconstructionNet", "VGG19Features"]
