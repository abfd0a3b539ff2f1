"""The fused CPU masked-patch-attention kernels (csrc/cpu/patch_attention.cpp) against the reference:
random shapes and masks (hypothesis), shapes spanning many tiles, thread-count independence, and the
peak memory (the N x N matrix must never exist)."""
import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch
from hypothesis import example, given, settings
from hypothesis import strategies as st

import mdrnet_fast
from mdrnet_fast import ops

from mdrnet_fast.reference.patch_attention import default_scale

from _util import assert_close

pytestmark = pytest.mark.skipif(not mdrnet_fast.backends()["cpu"]["available"], reason="C++ extension not built")


def _mask(b, h, w, kind, gen):
    if kind == "none":  # no hole: every query patch is skipped, output and gradients are zero
        return torch.ones(b, 1, h, w, dtype=torch.float64)
    if kind == "all":
        return torch.zeros(b, 1, h, w, dtype=torch.float64)
    if kind == "quarter":
        return (torch.rand(b, 1, h, w, generator=gen) >= 0.25).double()
    # soft: values in [0, 1] with exact ones, so some patches are skippable and some only partly valid
    m = torch.rand(b, 1, h, w, generator=gen, dtype=torch.float64)
    return torch.where(m > 0.6, torch.ones_like(m), m)


def _run(backend, theta, phi, g, mask, p, scale, w_dtype):
    ins = [t.detach().clone().requires_grad_(True) for t in (theta, phi, g)]
    with mdrnet_fast.use_backend(backend):
        out = ops.masked_patch_attention(*ins, mask, p, scale)
    # the same (rounded) output weights for the fast dtype and its reference
    w = torch.randn(out.shape, generator=torch.Generator().manual_seed(3), dtype=torch.float64).to(w_dtype)
    w = w.to(out.dtype)
    grads = torch.autograd.grad((out * w).sum(), ins)
    return [out.detach(), *grads]


def _term_scale(theta, phi, g, p, scale):
    """A bound on one term of d_theta / d_phi = sum_j dS_ij K_j, dS = P (dP - D) scale, dP = dO V^T: where the
    true gradient is ~0 (e.g. a single key patch: dP - D = 0 exactly) two fp64 implementations differ by
    rounding noise of about eps times this."""
    scale = default_scale(theta.shape[1], p) if scale is None else scale
    d = g.shape[1] * p * p
    return scale * d * g.abs().max().item() * max(theta.abs().max().item(), phi.abs().max().item())


def _compare(theta, phi, g, mask, p, scale=None, dtype=torch.float64):
    args = [t.to(dtype) for t in (theta, phi, g)]
    fast = _run("cpu", *args, mask.to(dtype), p, scale, dtype)
    ref_dtype = torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype
    ref = _run("reference", *[a.to(ref_dtype) for a in args], mask.to(dtype).to(ref_dtype), p, scale, dtype)
    # d_theta / d_phi: the floor of the relative error's denominator (1e-6 by default) scaled by the size of
    # the cancelling terms (D from the saved output, as in flash attention)
    floor = 1e-6 * max(_term_scale(theta, phi, g, p, scale), 1.0)
    for name, f, r in zip(("out", "d_theta", "d_phi", "d_g"), fast, ref):
        assert f.dtype == dtype
        assert_close(f, r, dtype, name, floor=floor if name in ("d_theta", "d_phi") else 1e-6)


# The scale is a multiple of the default 1/sqrt(Ck p^2), which keeps the scores O(1). With scores in
# the tens the softmax saturates and the gradients vanish (to ~1e-8 of the inputs); any two fp64
# implementations then agree only to a few ulps absolute, not 1e-10 relative (see test_saturated).
@settings(max_examples=30, deadline=None)
@given(b=st.integers(1, 2), h=st.integers(1, 20), w=st.integers(1, 20), p=st.integers(1, 4),
       ck=st.integers(1, 8), cv=st.integers(1, 8), kind=st.sampled_from(["none", "quarter", "all", "soft"]),
       factor=st.sampled_from([None, 0.3, 3.0]), seed=st.integers(0, 2**16))
# one key patch: the true d_theta / d_phi are 0 and both sides return rounding noise (found by exploring)
@example(b=1, h=1, w=1, p=2, ck=1, cv=5, kind="all", factor=None, seed=0)
def test_matches_reference_fp64(b, h, w, p, ck, cv, kind, factor, seed):
    gen = torch.Generator().manual_seed(seed)
    theta, phi = (torch.randn(b, ck, h, w, generator=gen, dtype=torch.float64) for _ in range(2))
    g = torch.randn(b, cv, h, w, generator=gen, dtype=torch.float64)
    scale = None if factor is None else factor / (ck * p * p) ** 0.5
    _compare(theta, phi, g, _mask(b, h, w, kind, gen), p, scale)


def test_saturated():
    """Scores in the tens (scale 2, d = 96): finite, and equal to the reference to ~ulps of the inputs."""
    gen = torch.Generator().manual_seed(1)
    theta, phi = (torch.randn(2, 6, 9, 12, generator=gen, dtype=torch.float64) for _ in range(2))
    g = torch.randn(2, 3, 9, 12, generator=gen, dtype=torch.float64)
    mask = _mask(2, 9, 12, "quarter", gen)
    fast = _run("cpu", theta, phi, g, mask, 4, 2.0, torch.float64)
    ref = _run("reference", theta, phi, g, mask, 4, 2.0, torch.float64)
    for f, r in zip(fast, ref):
        assert torch.isfinite(f).all()
        assert (f - r).abs().max() < 1e-12


# N = 19 * 21 = 399 and 13 * 10 = 130 patches: several query and key tiles, none of them full-size
# multiples, with bottom/right padding (p = 3); batch 1 of the first case has no hole at all.
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16, torch.float16],
                         ids=["fp64", "fp32", "bf16", "fp16"])
@pytest.mark.parametrize("shape", [(2, 4, 5, 37, 41, 2), (1, 3, 2, 38, 29, 3)], ids=["399-patches", "130-patches"])
def test_many_tiles(shape, dtype):
    b, ck, cv, h, w, p = shape
    gen = torch.Generator().manual_seed(11)
    theta, phi = (torch.randn(b, ck, h, w, generator=gen, dtype=torch.float64) for _ in range(2))
    g = torch.randn(b, cv, h, w, generator=gen, dtype=torch.float64)
    mask = (torch.rand(b, 1, h, w, generator=gen) > 0.3).double()
    mask[:, :, 5:20, 3:30] = 0  # a large hole: a run of active query patches
    if b > 1:
        mask[1] = 1
    _compare(theta, phi, g, mask, p, dtype=dtype)


def test_lse_and_skipped_queries():
    from mdrnet_fast import _C

    gen = torch.Generator().manual_seed(5)
    b, c, h, w, p = 2, 3, 23, 17, 2
    theta, phi, g = (torch.randn(b, c, h, w, generator=gen, dtype=torch.float64) for _ in range(3))
    mask = (torch.rand(b, 1, h, w, generator=gen) > 0.5).double()
    mask[:, :, :8] = 1  # top rows: patches with no hole
    out, lse = _C.patch_attention_forward(theta, phi, g, mask, p, 0.4)
    from mdrnet_fast.reference.patch_attention import pad_to_multiple, to_patches

    q, k = (to_patches(pad_to_multiple(t, p), p) for t in (theta, phi))
    want = torch.logsumexp(0.4 * q @ k.transpose(1, 2), -1)
    hole = to_patches(pad_to_multiple(1 - mask, p), p).ne(0).any(-1)
    assert torch.allclose(lse[hole], want[hole], rtol=1e-12, atol=1e-12)
    assert torch.isinf(lse[~hole]).all() and (lse[~hole] > 0).all()
    assert (~hole).any() and hole.any()


def test_thread_count_independent():
    """Fixed tiles and one writer per output element: identical bits for any thread count."""
    from mdrnet_fast import _C

    gen = torch.Generator().manual_seed(2)
    theta, phi, g = (torch.randn(2, 8, 45, 39, generator=gen) for _ in range(3))
    mask = (torch.rand(2, 1, 45, 39, generator=gen) > 0.25).float()
    go = torch.randn(2, 8, 45, 39, generator=gen)
    threads = torch.get_num_threads()
    results = []
    try:
        for n in (1, 2, 3):
            torch.set_num_threads(n)
            out, lse = _C.patch_attention_forward(theta, phi, g, mask, 2, 0.2)
            results.append([out, lse, *_C.patch_attention_backward(go, theta, phi, g, mask, out, lse, 2, 0.2)])
    finally:
        torch.set_num_threads(threads)
    for other in results[1:]:
        for a, b in zip(results[0], other):
            assert torch.equal(a, b)


def test_layouts_and_mask_dtype():
    """channels_last / strided inputs and a mask of another dtype give the same values."""
    from mdrnet_fast import _C

    gen = torch.Generator().manual_seed(4)
    theta, phi, g = (torch.randn(1, 4, 21, 18, generator=gen) for _ in range(3))
    mask = (torch.rand(1, 1, 21, 18, generator=gen) > 0.4).float()
    want = _C.patch_attention_forward(theta, phi, g, mask, 3, 0.5)
    cl = [t.contiguous(memory_format=torch.channels_last) for t in (theta, phi, g)]
    got = _C.patch_attention_forward(*cl, mask.double(), 3, 0.5)
    for a, b in zip(want, got):
        assert torch.equal(a, b)
    assert want[0].is_contiguous()


def test_checks_arguments():
    from mdrnet_fast import _C

    t, m = torch.randn(2, 3, 8, 8), torch.ones(2, 1, 8, 8)
    lse = torch.zeros(2, 16)
    bad = [
        ("patch_size", lambda: _C.patch_attention_forward(t, t, t, m, 0, 1.0)),
        ("phi", lambda: _C.patch_attention_forward(t, t[:, :2], t, m, 2, 1.0)),
        ("g", lambda: _C.patch_attention_forward(t, t, t.double(), m, 2, 1.0)),
        ("g", lambda: _C.patch_attention_forward(t, t, t[..., :4], m, 2, 1.0)),
        ("mask", lambda: _C.patch_attention_forward(t, t, t, torch.ones(2, 2, 8, 8), 2, 1.0)),
        ("theta", lambda: _C.patch_attention_forward(t[0], t, t, m, 2, 1.0)),
        ("lse", lambda: _C.patch_attention_backward(t, t, t, t, m, t, torch.zeros(2, 15), 2, 1.0)),
        ("lse", lambda: _C.patch_attention_backward(t, t, t, t, m, t, lse.double(), 2, 1.0)),
        ("grad_out", lambda: _C.patch_attention_backward(t[:, :2], t, t, t, m, t, lse, 2, 1.0)),
        ("grad_out", lambda: _C.patch_attention_backward(t.double(), t, t, t, m, t, lse, 2, 1.0)),
        ("out", lambda: _C.patch_attention_backward(t, t, t, t, m, t[:, :2], lse, 2, 1.0)),
        ("out", lambda: _C.patch_attention_backward(t, t, t, t, m, t.double(), lse, 2, 1.0)),
    ]
    for what, call in bad:
        with pytest.raises(RuntimeError, match=what):
            call()


_MEMORY_SCRIPT = textwrap.dedent("""
    import json, torch
    from mdrnet_fast import _C

    def hwm_reset():
        open("/proc/self/clear_refs", "w").write("5")  # resets VmHWM to the current RSS

    def status(field):
        for line in open("/proc/self/status"):
            if line.startswith(field):
                return int(line.split()[1]) * 1024

    def peak_extra(fn):
        hwm_reset()
        base = status("VmRSS")
        res = fn()
        return res, status("VmHWM") - base

    torch.manual_seed(0)
    torch.set_num_threads(2)
    h = w = 128
    theta, phi, g, go = (torch.randn(1, 16, h, w) for _ in range(4))
    mask = torch.zeros(1, 1, h, w)  # all holes: every query is active, the worst case
    scale = 1 / 8.0
    small = [t[..., :32, :32].contiguous() for t in (theta, phi, g, go, mask)]  # warm-up: threads, BLAS buffers
    out, lse = _C.patch_attention_forward(*small[:3], small[4], 2, scale)
    _C.patch_attention_backward(small[3], *small[:3], small[4], out, lse, 2, scale)
    del out, lse
    _, probe = peak_extra(lambda: torch.ones(4 << 20))                        # self-check: 16 MiB
    (out, lse), fwd = peak_extra(lambda: _C.patch_attention_forward(theta, phi, g, mask, 2, scale))
    grads, bwd = peak_extra(lambda: _C.patch_attention_backward(go, theta, phi, g, mask, out, lse, 2, scale))
    outputs_fwd = out.numel() * 4 + lse.numel() * 4
    outputs_bwd = sum(t.numel() * 4 for t in grads)
    print(json.dumps(dict(probe=probe, fwd=fwd, bwd=bwd, outputs_fwd=outputs_fwd, outputs_bwd=outputs_bwd)))
""")


@pytest.mark.slow
@pytest.mark.skipif(not os.path.exists("/proc/self/clear_refs"), reason="needs Linux /proc/self/clear_refs")
def test_peak_memory_far_below_the_score_matrix():
    """128 x 128 maps, p = 2 (N = 4096), Ck = Cv = 16: the N x N fp32 matrix would be 64 MiB. The
    kernels' whole extra resident memory (outputs included) must stay under a tenth of it."""
    # A fixed mmap threshold makes every large buffer a fresh mapping, so it shows up in the RSS
    # instead of reusing pages the process already holds.
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536", PYTHONPATH=os.pathsep.join(sys.path))
    res = subprocess.run([sys.executable, "-c", _MEMORY_SCRIPT], env=env, capture_output=True, text=True,
                         timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    m = json.loads(res.stdout.strip().splitlines()[-1])
    nn = 4096 * 4096 * 4
    assert m["probe"] >= 15 << 20, f"RSS measurement does not see allocations: {m}"
    assert m["fwd"] < nn / 10, f"forward peak extra memory {m['fwd'] / 2**20:.2f} MiB: {m}"
    assert m["bwd"] < nn / 10, f"backward peak extra memory {m['bwd'] / 2**20:.2f} MiB: {m}"


@pytest.mark.slow
def test_gemm_fallback_without_blas_symbols():
    """Where torch exports no sgemm_/dgemm_, the tile GEMMs go through at::addmm_ (forced here)."""
    script = textwrap.dedent("""
        import torch, mdrnet_fast
        from mdrnet_fast import ops
        gen = torch.Generator().manual_seed(0)
        x = [torch.randn(2, 3, 19, 22, generator=gen, dtype=torch.float64, requires_grad=True) for _ in range(3)]
        mask = (torch.rand(2, 1, 19, 22, generator=gen) > 0.3).double()
        res = []
        for backend in ("cpu", "reference"):
            with mdrnet_fast.use_backend(backend):
                out = ops.masked_patch_attention(*x, mask, 3)
            res.append([out, *torch.autograd.grad(out.sin().sum(), x)])
        err = max(((a - b).abs().max() / b.abs().max()).item() for a, b in zip(*res))
        assert err < 1e-10, err
        print("ok")
    """)
    env = dict(os.environ, MDRNET_FAST_TILE_GEMM="aten", PYTHONPATH=os.pathsep.join(sys.path))
    res = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0 and res.stdout.strip().endswith("ok"), res.stdout[-2000:] + res.stderr[-3000:]
