"""SPEC §7: the InCo² loss of ShowFace (eqs. 6-8)."""
import torch

from .region_pool import region_avg_pool, seg_weights


def inco2_loss(feat_hat, feat_gt, seg, mask, num_classes=None, pool=region_avg_pool):
    """Returns (L_intra, L_inter), each a mean absolute difference of (n x n) similarity matrices.

    feat_* (B,C,h,w) encoder features of the inpainted and the real face; seg (B,n,H,W) or labels;
    mask (B,1,H,W), 1 = valid. M(.) pools over the hole area, M_hat(.) over the valid area. `pool` is
    the region pooling to use (the training loss passes mdrnet_fast.ops.region_avg_pool).
    """
    size = feat_hat.shape[-2:]
    w = seg_weights(seg, num_classes, size, feat_hat.dtype)
    valid = torch.nn.functional.interpolate(mask.to(feat_hat.dtype), size=tuple(size), mode="nearest")
    hole_seg, valid_seg = w * (1 - valid), w * valid

    def sims(f):
        m = pool(f, hole_seg)
        m_hat = pool(f, valid_seg)
        return m @ m.transpose(1, 2), m @ m_hat.transpose(1, 2)

    intra_hat, inter_hat = sims(feat_hat)
    intra_gt, inter_gt = sims(feat_gt)
    return (intra_hat - intra_gt).abs().mean(), (inter_hat - inter_gt).abs().mean()
