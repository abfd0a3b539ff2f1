"""The reference ops against independent naive formulations of SPEC, its edge cases, fp64 gradcheck."""
import itertools

import pytest
import torch
import torch.nn.functional as F

from mdrnet_fast import reference as R


def naive_partial_conv(x, mask, w, b, s, p, d, multi):
    """SPEC §1 by explicit windows (zero padding), one output at a time."""
    bsz, cin, h, wd = x.shape
    cout, _, kh, kw = w.shape
    xp = F.pad(x * mask, (p, p, p, p))
    mp = F.pad(mask, (p, p, p, p))
    ho, wo = (h + 2 * p - d * (kh - 1) - 1) // s + 1, (wd + 2 * p - d * (kw - 1) - 1) // s + 1
    out = torch.zeros(bsz, cout, ho, wo, dtype=x.dtype)
    nm = torch.zeros(bsz, cout if multi else 1, ho, wo, dtype=x.dtype)
    win = kh * kw * (cin if multi else 1)
    for bi, i, j in itertools.product(range(bsz), range(ho), range(wo)):
        rows = slice(i * s, i * s + d * (kh - 1) + 1, d)
        cols = slice(j * s, j * s + d * (kw - 1) + 1, d)
        msum = mp[bi, :, rows, cols].sum()
        ratio = win / (msum + 1e-8) * msum.clamp(0, 1)
        raw = (w * xp[bi, :, rows, cols].unsqueeze(0)).sum(dim=(1, 2, 3))
        out[bi, :, i, j] = (raw * ratio + b) * msum.clamp(0, 1) if b is not None else raw * ratio
        nm[bi, :, i, j] = msum.clamp(0, 1)
    return out, nm


@pytest.mark.parametrize("multi", [False, True])
@pytest.mark.parametrize("s,p,d", [(1, 1, 1), (2, 0, 1), (1, 2, 2), (2, 1, 2)])
@pytest.mark.parametrize("bias", [True, False])
def test_partial_conv_matches_windows(multi, s, p, d, bias):
    x = torch.randn(2, 3, 7, 6, dtype=torch.float64)
    mask = torch.rand(2, 3 if multi else 1, 7, 6, dtype=torch.float64)  # soft
    mask[mask < 0.3] = 0
    w = torch.randn(4, 3, 3, 2, dtype=torch.float64)
    b = torch.randn(4, dtype=torch.float64) if bias else None
    out, nm = R.partial_conv2d(x, mask, w, b, s, p, d, 1, multi)
    want_out, want_nm = naive_partial_conv(x, mask, w, b, s, p, d, multi)
    torch.testing.assert_close(out, want_out, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(nm, want_nm, rtol=0, atol=1e-12)


def test_partial_conv_all_hole_window_is_zero_not_nan():
    x = torch.randn(1, 2, 9, 9, dtype=torch.float64, requires_grad=True)
    mask = torch.ones(1, 1, 9, 9, dtype=torch.float64)
    mask[..., 2:7, 2:7] = 0  # the 3x3 windows centred in 3..5 see no valid pixel
    w = torch.randn(3, 2, 3, 3, dtype=torch.float64, requires_grad=True)
    b = torch.randn(3, dtype=torch.float64, requires_grad=True)
    out, nm = R.partial_conv2d(x, mask, w, b, 1, 1)
    assert (out[..., 3:6, 3:6] == 0).all() and (nm[..., 3:6, 3:6] == 0).all()
    out.sum().backward()
    assert all(torch.isfinite(t.grad).all() for t in (x, w, b))


def test_partial_conv_none_mask_is_all_ones():
    x, w = torch.randn(2, 3, 5, 5), torch.randn(4, 3, 3, 3)
    a = R.partial_conv2d(x, None, w, None, 1, 1)
    b = R.partial_conv2d(x, torch.ones(2, 1, 5, 5), w, None, 1, 1)
    torch.testing.assert_close(a[0], b[0])


def test_gated_conv_is_act_times_sigmoid():
    x, w, b = torch.randn(2, 3, 6, 6), torch.randn(8, 3, 3, 3), torch.randn(8)
    y = F.conv2d(x, w, b, 1, 1)
    torch.testing.assert_close(R.gated_conv2d(x, w, b, 1, 1, activation="elu"), F.elu(y[:, :4]) * torch.sigmoid(y[:, 4:]))
    out, nm = R.gated_conv2d(x, w, b, 1, 1, mask=torch.ones(2, 1, 6, 6))
    inner = (..., slice(1, -1), slice(1, -1))  # away from the border, where partial conv rescales
    want = F.elu(y[:, :4]) * torch.sigmoid(y[:, 4:])
    torch.testing.assert_close(out[inner], want[inner], rtol=1e-5, atol=1e-5)


def loop_region_pool(feat, labels, n):
    """SEAN's way: one masked mean per class."""
    codes = torch.zeros(feat.shape[0], n, feat.shape[1], dtype=feat.dtype)
    for b in range(feat.shape[0]):
        for i in range(n):
            sel = labels[b] == i
            if sel.any():
                codes[b, i] = feat[b][:, sel].mean(dim=1)
    return codes


def test_region_pool_matches_loop_and_one_hot():
    feat = torch.randn(2, 5, 6, 7, dtype=torch.float64)
    labels = torch.randint(0, 4, (2, 6, 7))
    labels[labels == 3] = 2  # class 3 absent everywhere
    want = loop_region_pool(feat, labels, 4)
    torch.testing.assert_close(R.region_avg_pool(feat, labels, 4), want)
    onehot = F.one_hot(labels, 4).permute(0, 3, 1, 2).double()
    torch.testing.assert_close(R.region_avg_pool(feat, onehot), want)
    assert (R.region_avg_pool(feat, labels, 4)[:, 3] == 0).all()


def test_region_pool_soft_weights_and_absent_gradient():
    feat = torch.randn(2, 3, 5, 5, dtype=torch.float64, requires_grad=True)
    seg = torch.rand(2, 4, 5, 5, dtype=torch.float64)
    seg[:, 1] = 0
    codes = R.region_avg_pool(feat, seg)
    want = torch.einsum("bchw,bnhw->bnc", feat, seg) / seg.sum((2, 3)).clamp_min(1e-30)[..., None]
    torch.testing.assert_close(codes, want)
    codes.sum().backward()
    assert torch.isfinite(feat.grad).all()


def test_region_pool_resizes_seg_nearest():
    feat = torch.randn(1, 3, 4, 4, dtype=torch.float64)
    labels = torch.randint(0, 3, (1, 8, 8))
    small = F.interpolate(labels[:, None].double(), size=(4, 4), mode="nearest")[:, 0].long()
    torch.testing.assert_close(R.region_avg_pool(feat, labels, 3), R.region_avg_pool(feat, small, 3))


def test_region_broadcast_labels_equal_one_hot():
    codes = torch.randn(2, 4, 3, dtype=torch.float64)
    labels = torch.randint(0, 4, (2, 5, 6))
    out = R.region_broadcast(codes, labels, 4)
    want = codes[torch.arange(2)[:, None, None], labels].permute(0, 3, 1, 2)
    torch.testing.assert_close(out, want)


def test_memory_read_matches_loop():
    q, mem = torch.randn(2, 3, 5, dtype=torch.float64), torch.randn(3, 7, 5, dtype=torch.float64)
    out = R.memory_read(q, mem, tau=0.5)
    for b, i in itertools.product(range(2), range(3)):
        cos = F.cosine_similarity(q[b, i][None], mem[i], dim=-1, eps=1e-8)
        torch.testing.assert_close(out[b, i], (torch.softmax(cos / 0.5, 0)[:, None] * mem[i]).sum(0))


def test_memory_update_matches_per_slot_mean_and_breaks_ties_low():
    n, m, c = 3, 6, 4
    mem = torch.randn(n, m, c, dtype=torch.float64)
    mem[:, 4] = mem[:, 1]  # tied slots: 1 must win over 4
    q = torch.cat([mem[:, 1][None] * 2.0, torch.randn(4, n, c, dtype=torch.float64)])
    v = torch.randn(5, n, c, dtype=torch.float64)
    present = torch.rand(5, n) > 0.3
    present[0] = True
    before = mem.clone()
    slots = R.memory_update_(mem, q, v, present, 0.75)
    assert (slots[0] == 1).all()
    cos = torch.einsum("bic,ijc->bij", F.normalize(q, dim=-1), F.normalize(before, dim=-1))
    k = cos.argmax(-1)
    want = before.clone()
    for i, j in itertools.product(range(n), range(m)):
        chosen = [b for b in range(5) if k[b, i] == j and present[b, i]]
        if chosen:
            want[i, j] = 0.75 * before[i, j] + 0.25 * v[chosen, i].mean(0)
    torch.testing.assert_close(mem, want)
    assert ((slots == -1) == ~present).all()


def test_memory_zero_query_is_finite():
    q = torch.zeros(1, 2, 4, dtype=torch.float64, requires_grad=True)
    mem = torch.randn(2, 5, 4, dtype=torch.float64)
    R.memory_read(q, mem).sum().backward()
    assert torch.isfinite(q.grad).all()


def unfold_patch_attention(theta, phi, g, mask, p, scale):
    """SPEC §5 with F.unfold / F.fold (an independent patch formulation)."""
    h, w = theta.shape[-2:]
    ph, pw = (-h) % p, (-w) % p
    t, f, gg = (F.pad(a, (0, pw, 0, ph)) for a in (theta, phi, g))
    q, k, v = (F.unfold(a, p, stride=p).transpose(1, 2) for a in (t, f, gg))
    attn = torch.softmax(scale * q @ k.transpose(1, 2), dim=-1)
    out = F.fold((attn @ v).transpose(1, 2), (h + ph, w + pw), p, stride=p)[..., :h, :w]
    return out * (1 - mask)


@pytest.mark.parametrize("hw,p", [((8, 8), 2), ((7, 9), 2), ((10, 5), 3), ((6, 6), 1)])
def test_patch_attention_matches_unfold(hw, p):
    theta, phi = torch.randn(2, 3, *hw, dtype=torch.float64), torch.randn(2, 3, *hw, dtype=torch.float64)
    g = torch.randn(2, 4, *hw, dtype=torch.float64)
    mask = (torch.rand(2, 1, *hw) > 0.5).double()
    out = R.masked_patch_attention(theta, phi, g, mask, p)
    torch.testing.assert_close(out, unfold_patch_attention(theta, phi, g, mask, p, (3 * p * p) ** -0.5))
    assert (out[mask.expand_as(out) == 1] == 0).all()


def test_spade_matches_instance_norm():
    x, gamma, beta = (torch.randn(2, 3, 5, 6, dtype=torch.float64) for _ in range(3))
    want = F.instance_norm(x, eps=1e-5) * (1 + gamma) + beta
    torch.testing.assert_close(R.spade_modulate(x, gamma, beta), want)


def test_inco2_zero_for_identical_features_and_positive_otherwise():
    feat = torch.randn(2, 6, 8, 8, dtype=torch.float64)
    labels = torch.randint(0, 4, (2, 16, 16))
    mask = (torch.rand(2, 1, 16, 16) > 0.4).double()
    intra, inter = R.inco2_loss(feat, feat, labels, mask, 4)
    assert intra == 0 and inter == 0
    intra, inter = R.inco2_loss(feat + 0.1 * torch.randn_like(feat), feat, labels, mask, 4)
    assert intra > 0 and inter > 0


def _gc(fn, *inputs):
    assert torch.autograd.gradcheck(fn, inputs, eps=1e-6, atol=1e-7)


def test_gradcheck_reference_ops():
    d = dict(dtype=torch.float64, requires_grad=True)
    x, w, b = torch.randn(2, 3, 6, 5, **d), torch.randn(4, 3, 3, 3, **d), torch.randn(4, **d)
    mask = torch.rand(2, 1, 6, 5, dtype=torch.float64)
    _gc(lambda x, w, b: R.partial_conv2d(x, mask, w, b, 1, 1)[0], x, w, b)
    _gc(lambda x, w, b: R.gated_conv2d(x, w, b, 1, 1, mask=mask)[0], x, w, b)
    _gc(lambda x, w, b: R.gated_conv2d(x, w, b, 2, 1, activation="leaky_relu"), x, w, b)
    labels = torch.randint(0, 3, (2, 6, 5))
    _gc(lambda f: R.region_avg_pool(f, labels, 3), x)
    _gc(lambda c: R.region_broadcast(c, labels, 3), torch.randn(2, 3, 4, **d))
    mem = torch.randn(3, 5, 4, dtype=torch.float64)
    _gc(lambda q: R.memory_read(q, mem, 0.7), torch.randn(2, 3, 4, **d))
    theta, phi, g = (torch.randn(1, 2, 6, 5, **d) for _ in range(3))
    _gc(lambda a, b_, c: R.masked_patch_attention(a, b_, c, mask[:1], 2), theta, phi, g)
    _gc(lambda a, b_, c: R.spade_modulate(a, b_, c), x, torch.randn_like(x), torch.randn_like(x))
    target = x.detach() + 0.5  # not inside the lambda: gradcheck perturbs x in place
    _gc(lambda a: torch.stack(R.inco2_loss(a, target, labels, mask, 3)), x)
