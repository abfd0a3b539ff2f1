"""MDRNetLoss: the weighted objective of ShowFace eq. 15.

The paper does not give the weights lambda_1..7; the defaults below are the usual ones of the
inpainting work it builds on (PConv, EdgeConnect) and are all arguments.
"""
import logging
from dataclasses import dataclass

import torch
import torch.nn as nn

from . import terms

log = logging.getLogger("mdrnet_fast")


@dataclass
class LossWeights:
    inco2: float = 1.0
    semantic: float = 0.1
    rec: float = 1.0
    perceptual: float = 0.1
    style: float = 250.0
    adversarial: float = 0.1
    tv: float = 0.1
    coarse: float = 1.0  # L1 of the coarse face, so the coarse net keeps learning in the full stage


class MDRNetLoss(nn.Module):
    """generator(out, image, mask, target_labels, critic) -> (total, {term: detached 0-d tensor}).

    `vgg` (VGG19Features) enables perceptual and style terms; without it they are off (one warning).
    `recon` (a trained ReconstructionNet) enables InCo²; without it InCo² is off (one warning).
    """

    def __init__(self, weights: LossWeights = None, vgg=None, recon=None, num_classes=14):
        super().__init__()
        self.w = weights or LossWeights()
        self.vgg, self.recon, self.num_classes = vgg, recon, num_classes
        if recon is not None:
            recon.requires_grad_(False).eval()
        if vgg is None:
            log.warning("mdrnet_fast: no VGG-19 weights given (--vgg-weights): perceptual and style losses are off")
        if recon is None:
            log.warning("mdrnet_fast: no reconstruction network given (--recon-checkpoint): InCo² loss is off")

    def generator(self, out, image, mask, target_labels, parser=None, critic=None):
        w, parts = self.w, {}
        parts["rec"] = terms.l1(out.output, image) * w.rec
        parts["coarse"] = terms.l1(out.coarse, image) * w.coarse
        parts["tv"] = terms.total_variation(out.output) * w.tv
        if parser is not None and w.semantic:
            parts["semantic"] = terms.semantic(parser(out.output), target_labels) * w.semantic
        if self.vgg is not None and (w.perceptual or w.style):
            fh, fg = self.vgg(out.output), self.vgg(image)
            parts["perceptual"] = terms.perceptual(fh, fg) * w.perceptual
            parts["style"] = terms.style(fh, fg) * w.style
        if self.recon is not None and w.inco2:
            with torch.no_grad():
                feat_gt = self.recon.encode(image)
            parts["inco2"] = terms.inco2(self.recon.encode(out.output), feat_gt, target_labels, mask,
                                         self.num_classes) * w.inco2
        if critic is not None and w.adversarial:
            parts["adversarial"] = terms.adversarial_generator(critic(out.output)) * w.adversarial
        # the terms stay detached tensors: float() here would be a host sync per term on a GPU
        return sum(parts.values()), {k: v.detach() for k, v in parts.items()}

    @staticmethod
    def critic(critic, image, fake):
        return terms.adversarial_discriminator(critic(image), critic(fake.detach()))
