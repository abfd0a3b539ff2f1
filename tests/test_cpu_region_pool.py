"""The cpu region pool / broadcast kernels against the reference (fp64, random shapes and label maps),
their determinism across thread counts, and their own argument checks."""
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

import mdrnet_fast
from mdrnet_fast import reference as R
from mdrnet_fast._dispatch import get_kernel

pytestmark = pytest.mark.skipif(not mdrnet_fast.backends()["cpu"]["available"], reason="C++ extension not built")

F64 = torch.float64


def kernels():
    return get_kernel("region_pool.forward", "cpu"), get_kernel("region_broadcast.forward", "cpu")


def make_seg(kind, b, n, h, w, gen):
    """labels (some classes absent), one-hot float (some pixels in no class), 0/1 multi-hot or soft weights."""
    if kind == "labels" or kind == "onehot":
        lab = torch.randint(0, n, (b, h, w), generator=gen)
        if n > 1:
            lab[lab == n - 1] = 0  # class n-1 absent everywhere
        if kind == "labels":
            return lab
        seg = F.one_hot(lab, n).permute(0, 3, 1, 2).to(F64).contiguous()
        seg[:, :, ::3, ::2] = 0  # pixels belonging to no class
        return seg
    if kind == "blobs":  # long runs of equal labels, like a real parsing map
        coarse = torch.randn(b, n, 3, 3, generator=gen, dtype=F64)
        return F.interpolate(coarse, size=(h, w), mode="bilinear", align_corners=False).argmax(1)
    if kind == "multihot":  # 0/1 values but overlapping regions: not one-hot, must take the soft path
        return (torch.rand(b, n, h, w, generator=gen, dtype=F64) < 0.4).to(F64)
    seg = torch.rand(b, n, h, w, generator=gen, dtype=F64)
    seg[:, n // 2] = 0  # absent region
    return seg


def check_against_reference(feat, seg, n):
    pool, broadcast = kernels()
    weights = R.region_pool.seg_weights(seg, n, feat.shape[-2:], F64)
    codes, area = pool(feat, seg, n, True)
    assert codes.dtype == feat.dtype and codes.shape == (feat.shape[0], n, feat.shape[1]) and codes.is_contiguous()
    assert area.dtype == F64 and area.shape == (feat.shape[0], n)
    torch.testing.assert_close(codes, R.region_avg_pool(feat, seg, n), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(area, weights.sum((2, 3)), rtol=1e-12, atol=1e-12)
    sums, area2 = pool(feat, seg, n, False)
    torch.testing.assert_close(sums, torch.einsum("bchw,bnhw->bnc", feat, weights), rtol=1e-12, atol=1e-12)
    assert torch.equal(area, area2)
    # broadcast, including the codes it is the transpose of
    codes_in = torch.randn(feat.shape[0], n, feat.shape[1], dtype=F64)
    out = broadcast(codes_in, seg, n)
    assert out.shape == feat.shape and out.is_contiguous()
    torch.testing.assert_close(out, R.region_broadcast(codes_in, seg, n), rtol=1e-12, atol=1e-12)


@settings(max_examples=40, deadline=None)
@given(b=st.integers(1, 3), c=st.integers(1, 11), h=st.integers(1, 13), w=st.integers(1, 13), n=st.integers(1, 20),
       kind=st.sampled_from(["labels", "blobs", "onehot", "multihot", "soft"]), channels_last=st.booleans(),
       seed=st.integers(0, 2**31 - 1))
def test_matches_reference_fp64(b, c, h, w, n, kind, channels_last, seed):
    gen = torch.Generator().manual_seed(seed)
    feat = torch.randn(b, c, h, w, generator=gen, dtype=F64)
    if channels_last:
        feat = feat.contiguous(memory_format=torch.channels_last)
    check_against_reference(feat, make_seg(kind, b, n, h, w, gen), n)


@pytest.mark.parametrize("kind", ["labels", "blobs", "onehot", "soft"])
@pytest.mark.parametrize("layout", ["contiguous", "channels_last", "strided"])
def test_large_shapes_many_chunks(kind, layout):
    """Several pixel chunks, channel groups plus a tail, several tasks per thread."""
    gen = torch.Generator().manual_seed(3)
    b, c, h, w, n = 3, 37, 71, 61, 19  # odd H*W: a lone last pixel after the pairs
    feat = torch.randn(b, c, h, 2 * w, generator=gen, dtype=F64)[..., ::2] if layout == "strided" else \
        torch.randn(b, c, h, w, generator=gen, dtype=F64)
    if layout == "channels_last":
        feat = feat.contiguous(memory_format=torch.channels_last)
    check_against_reference(feat, make_seg(kind, b, n, h, w, gen), n)


@pytest.mark.parametrize("kind", ["labels", "blobs", "onehot"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_bitwise_same_for_any_thread_count_and_onehot_equals_labels(kind, dtype):
    pool, broadcast = kernels()
    gen = torch.Generator().manual_seed(5)
    b, c, h, w, n = 2, 45, 67, 50, 14
    feat = torch.randn(b, c, h, w, generator=gen).to(dtype)
    seg = make_seg(kind, b, n, h, w, gen)
    if seg.is_floating_point():
        seg = seg.float()
    codes_in = torch.randn(b, n, c, generator=gen).to(dtype)
    threads = torch.get_num_threads()
    results = []
    try:
        for t in (1, 2, 3):
            torch.set_num_threads(t)
            results.append([*pool(feat, seg, n, True), pool(feat.contiguous(memory_format=torch.channels_last), seg, n, True)[0],
                            broadcast(codes_in, seg, n)])
    finally:
        torch.set_num_threads(threads)
    for other in results[1:]:
        for x, y in zip(results[0], other):
            assert torch.equal(x, y)
    want = R.region_avg_pool(feat.float(), seg, n)
    for got in results[0][0], results[0][2]:  # NCHW and channels_last codes, accumulated in fp32
        assert ((got.float() - want).abs().max() / want.abs().max()).item() <= (1e-5 if dtype == torch.float32 else 1e-2)
    if kind == "onehot":  # an exactly one-hot float seg takes the labels path: the very same numbers
        lab = torch.randint(0, n, (b, h, w), generator=gen)
        onehot = F.one_hot(lab, n).permute(0, 3, 1, 2).float()
        for x, y in zip(pool(feat, onehot, n, True), pool(feat, lab, n, True)):
            assert torch.equal(x, y)
        assert torch.equal(broadcast(codes_in, onehot, n), broadcast(codes_in, lab, n))


def test_absent_regions_are_zero_never_nan():
    pool, _ = kernels()
    feat = torch.full((2, 5, 4, 4), float("inf"))
    labels = torch.zeros(2, 4, 4, dtype=torch.long)
    codes, area = pool(feat, labels, 3, True)
    assert (codes[:, 1:] == 0).all() and (area[:, 1:] == 0).all()
    soft = torch.zeros(2, 3, 4, 4)
    soft[:, 0] = 0.5
    codes, area = pool(torch.randn(2, 5, 4, 4), soft, 3, True)
    assert (codes[:, 1:] == 0).all() and torch.isfinite(codes).all()


def test_empty_extents():
    pool, broadcast = kernels()
    for shape in [(0, 3, 4, 4), (2, 0, 4, 4), (2, 3, 0, 4)]:
        feat = torch.randn(shape, dtype=F64)
        labels = torch.zeros(shape[0], *shape[2:], dtype=torch.long)
        codes, area = pool(feat, labels, 4, True)
        torch.testing.assert_close(codes, R.region_avg_pool(feat, labels, 4))
        torch.testing.assert_close(area, R.region_pool.seg_weights(labels, 4, shape[2:], F64).sum((2, 3)))
        codes_in = torch.randn(shape[0], 4, shape[1], dtype=F64)
        torch.testing.assert_close(broadcast(codes_in, labels, 4), R.region_broadcast(codes_in, labels, 4))


def test_kernel_rejects_bad_arguments():
    from mdrnet_fast import _C

    feat, labels = torch.randn(2, 3, 5, 6), torch.randint(0, 4, (2, 5, 6))
    for bad in (labels + 1, labels - 1, labels.masked_fill(labels == 2, 1 << 40)):
        with pytest.raises(RuntimeError, match="seg labels must lie in"):
            _C.region_pool_forward(feat, bad, 4, True)
        with pytest.raises(RuntimeError, match="seg labels must lie in"):
            _C.region_broadcast_forward(torch.randn(2, 4, 3), bad, 4)
    cases = [
        ("feat", lambda: _C.region_pool_forward(feat[0], labels, 4, True)),
        ("feat", lambda: _C.region_pool_forward(feat.int(), labels, 4, True)),
        ("seg labels must have shape", lambda: _C.region_pool_forward(feat, labels[:1], 4, True)),
        ("seg labels must have shape", lambda: _C.region_pool_forward(feat, labels[:, :4], 4, True)),
        ("float seg must have shape", lambda: _C.region_pool_forward(feat, torch.rand(2, 3, 5, 6), 4, True)),
        ("seg must be float", lambda: _C.region_pool_forward(feat, labels.bool(), 4, True)),
        ("num_classes", lambda: _C.region_pool_forward(feat, labels, 0, True)),
        ("codes", lambda: _C.region_broadcast_forward(torch.randn(2, 3, 3), labels, 4)),
        ("codes", lambda: _C.region_broadcast_forward(torch.randn(2, 4), labels, 4)),
        ("seg", lambda: _C.region_broadcast_forward(torch.randn(2, 4, 3), labels[0], 4)),
    ]
    for what, fn in cases:
        with pytest.raises(RuntimeError, match=what):
            fn()
