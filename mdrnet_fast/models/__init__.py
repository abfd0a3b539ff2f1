"""The MDRNet model of ShowFace: coarse partial-conv U-Net, parser, style encoder, disentangled memory,
MREM (fusion + masked correlation mining), guided refinement network, and the PatchGAN critic."""
from .coarse import PartialConvUNet
from .graphed import GraphedInference
from .graphed_train import GraphedTrainStep
from .mdrnet import MDRNet, MDRNetOutput
from .parser import FaceParser
from .refinement import GuidedRefinementNetwork, PatchGAN, StyleEncoder

__all__ = ["MDRNet", "MDRNetOutput", "PartialConvUNet", "FaceParser", "StyleEncoder", "GuidedRefinementNetwork",
           "PatchGAN", "GraphedInference", "GraphedTrainStep"]
