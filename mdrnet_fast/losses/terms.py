"""The loss terms of ShowFace eq. 15 (and of the coarse and reconstruction stages)."""
import torch
import torch.nn.functional as F

from .. import ops
from ..reference.inco2 import inco2_loss


def l1(a, b):
    return (a - b).abs().mean()


def gram(f):
    b, c, h, w = f.shape
    f = f.reshape(b, c, h * w)
    return f @ f.transpose(1, 2) / (c * h * w)


def perceptual(feats_hat, feats_gt):
    """Eq. 11: sum over VGG layers of the L1 distance of activations."""
    return sum(l1(a, b) for a, b in zip(feats_hat, feats_gt))


def style(feats_hat, feats_gt):
    """Eq. 12: sum over VGG layers of the L1 distance of Gram matrices."""
    return sum(l1(gram(a), gram(b)) for a, b in zip(feats_hat, feats_gt))


def total_variation(image):
    """Eq. 14: mean absolute difference of neighbouring pixels."""
    return (image[..., 1:, :] - image[..., :-1, :]).abs().mean() + (image[..., :, 1:] - image[..., :, :-1]).abs().mean()


def adversarial_generator(fake_logits):
    """Eq. 13, generator side (non-saturating): -log D(I_hat)."""
    return F.binary_cross_entropy_with_logits(fake_logits, torch.ones_like(fake_logits))


def adversarial_discriminator(real_logits, fake_logits):
    """Eq. 13, critic side: -log D(I_gt) - log(1 - D(I_hat))."""
    return (F.binary_cross_entropy_with_logits(real_logits, torch.ones_like(real_logits))
            + F.binary_cross_entropy_with_logits(fake_logits, torch.zeros_like(fake_logits)))


def semantic(logits_hat, target_labels):
    """Eq. 9: cross-entropy of the parser's logits on I_hat against the parsing of I_gt."""
    return F.cross_entropy(logits_hat, target_labels)


def inco2(feat_hat, feat_gt, labels, mask, num_classes):
    """Eqs. 6-8: L_intra + L_inter on the reconstruction encoder's features (fast region pooling)."""
    intra, inter = inco2_loss(feat_hat, feat_gt, labels, mask, num_classes, pool=ops.region_avg_pool)
    return intra + inter
