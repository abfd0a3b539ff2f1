"""The Triton masked-patch-attention kernels (mdrnet_fast/triton_kernels/patch_attention.py) called directly,
against the reference: out and the three gradients, p in {1, 2, 3}, H and W not multiples of p, several query
and key blocks with ragged last blocks (the interpreter runs 16 x 16 tiles), soft masks, masks with no hole and
all hole, B > 1. Under TRITON_INTERPRET=1 on CPU tensors (conftest); the `gpu` class runs the compiled kernels
at a training size and needs `TRITON_INTERPRET=0 pytest -m gpu tests/test_triton_patch_attention.py`."""
import pytest
import torch

from mdrnet_fast import reference as R
from mdrnet_fast._dispatch import backend_available, triton_interpreter
from mdrnet_fast.reference.patch_attention import default_scale, pad_to_multiple, to_patches

from _util import assert_close

INTERP = triton_interpreter()
pytestmark = pytest.mark.skipif(not backend_available("triton")[0],
                                reason=f"triton backend unavailable: {backend_available('triton')[1]}")
interp = pytest.mark.skipif(not INTERP, reason="these run CPU tensors through TRITON_INTERPRET=1")

if backend_available("triton")[0]:
    from mdrnet_fast.triton_kernels import patch_attention as TPA


def _mask(b, h, w, kind, gen, device="cpu"):
    if kind == "none":   # no hole: every query patch skipped
        return torch.ones(b, 1, h, w, dtype=torch.float64, device=device)
    if kind == "all":
        return torch.zeros(b, 1, h, w, dtype=torch.float64, device=device)
    if kind == "quarter":
        return (torch.rand(b, 1, h, w, generator=gen) >= 0.25).double().to(device)
    m = torch.rand(b, 1, h, w, generator=gen, dtype=torch.float64)   # soft, with exact ones
    return torch.where(m > 0.6, torch.ones_like(m), m).to(device)


def _inputs(b, ck, cv, h, w, kind, seed=0, device="cpu"):
    gen = torch.Generator().manual_seed(seed)
    theta, phi = (torch.randn(b, ck, h, w, generator=gen, dtype=torch.float64).to(device) for _ in range(2))
    g = torch.randn(b, cv, h, w, generator=gen, dtype=torch.float64).to(device)
    go = torch.randn(b, cv, h, w, generator=gen, dtype=torch.float64).to(device)
    return theta, phi, g, _mask(b, h, w, kind, gen, device), go


def _reference(theta, phi, g, mask, go, p, scale):
    ins = [t.detach().clone().requires_grad_(True) for t in (theta, phi, g)]
    out = R.masked_patch_attention(*ins, mask, p, scale)
    return (out.detach(), *torch.autograd.grad(out, ins, go))


def _fast(theta, phi, g, mask, go, p, scale):
    out, lse = TPA.forward(theta, phi, g, mask, p, scale)
    return (out, *TPA.backward(go, theta, phi, g, mask, out, lse, p, scale)), lse


def _compare(inputs, p, scale, dtype, tol=None):
    theta, phi, g, mask, go = (t.to(dtype) for t in inputs)
    fast, lse = _fast(theta, phi, g, mask, go, p, scale)
    ref_dtype = torch.float32 if dtype in (torch.bfloat16, torch.float16) else dtype
    ref = _reference(*(t.to(ref_dtype) for t in (theta, phi, g, mask, go)), p, scale)
    for name, f, r in zip(("out", "d_theta", "d_phi", "d_g"), fast, ref):
        assert f.dtype == dtype and f.shape == r.shape, name
        if tol is None:
            assert_close(f, r, dtype, name)
        else:
            err = ((f.double() - r.double()).abs().max() / r.double().abs().max().clamp_min(1e-6)).item()
            assert torch.isfinite(f).all() and err <= tol, f"{name}: relative error {err:.3g} > {tol} ({dtype})"
    return fast, lse


def _hole_patches(mask, p):
    return to_patches(pad_to_multiple(1 - mask.double(), p), p).ne(0).any(-1)


# ------------------------------------------------------------------ interpreter: odd sizes

# (B, Ck, Cv, H, W, p, mask kind): N = 5 * 6 = 30 (2 blocks), 5 * 4 = 20 with p = 3 padding on both sides,
# 5 * 7 = 35 with p = 1 (3 blocks); the last blocks are ragged, batch 1 of the first case has no hole.
CASES = {
    "p2-quarter-b2": (2, 3, 4, 9, 11, 2, "quarter"),
    "p3-soft": (1, 2, 3, 13, 10, 3, "soft"),
    "p1-quarter": (1, 2, 2, 5, 7, 1, "quarter"),
}


@pytest.mark.triton_interp
@interp
class TestInterpreter:
    @pytest.mark.parametrize("case", sorted(CASES))
    def test_matches_reference_fp64(self, case):
        b, ck, cv, h, w, p, kind = CASES[case]
        inputs = list(_inputs(b, ck, cv, h, w, kind, seed=len(case)))
        if b > 1:
            inputs[3][1] = 1  # batch 1: no hole at all, its output and gradients from it are zero
        scale = 0.7 / (ck * p * p) ** 0.5 if kind == "soft" else None
        fast, lse = _compare(inputs, p, default_scale(ck, p) if scale is None else scale, torch.float64)
        hole = _hole_patches(inputs[3], p)
        assert hole.any() and ((~hole).any() or b == 1)
        assert torch.isinf(lse[~hole]).all() and (lse[~hole] > 0).all() and torch.isfinite(lse[hole]).all()
        assert lse.dtype == torch.float64

    @pytest.mark.parametrize("case", ["p2-quarter-b2", "p3-soft"])
    @pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
    def test_matches_reference_low_precision(self, dtype, case):
        b, ck, cv, h, w, p, kind = CASES[case]
        _, lse = _compare(_inputs(b, ck, cv, h, w, kind, seed=4), p, 0.4, dtype)
        assert lse.dtype == torch.float32

    def test_lse_matches_cpu_kernel(self):
        """Same lse as the CPU kernel (log-sum-exp of the active queries' scores, +inf where skipped)."""
        if not backend_available("cpu")[0]:
            pytest.skip("C++ extension not built")
        from mdrnet_fast.cpu_kernels import patch_attention as CPA

        theta, phi, g, mask, _ = _inputs(2, 3, 2, 11, 8, "quarter", seed=5)
        mask[:, :, :4] = 1  # top rows: patches with no hole
        _, lse = TPA.forward(theta, phi, g, mask, 2, 0.4)
        _, want = CPA.forward(theta, phi, g, mask, 2, 0.4)
        fin = torch.isfinite(want)
        assert torch.equal(fin, torch.isfinite(lse)) and (~fin).any()
        assert (lse[fin] - want[fin]).abs().max() < 1e-12

    def test_no_hole(self):
        theta, phi, g, mask, go = _inputs(2, 2, 3, 7, 5, "none")
        (out, *grads), lse = _fast(theta, phi, g, mask, go, 2, 0.5)
        for t in (out, *grads):
            assert t.shape in (theta.shape, g.shape) and not t.any()
        assert torch.isinf(lse).all()

    def test_all_hole(self):
        b, ck, cv, h, w = 1, 2, 3, 6, 9
        _, lse = _compare(_inputs(b, ck, cv, h, w, "all", seed=2), 2, 0.6, torch.float64)
        assert torch.isfinite(lse).all()

    def test_op_autograd(self):
        """Through the public op (custom op + autograd) with the triton backend."""
        from mdrnet_fast import ops, use_backend

        theta, phi, g, mask, go = _inputs(1, 2, 2, 6, 7, "soft", seed=6)
        ins = [t.clone().requires_grad_(True) for t in (theta, phi, g)]
        with use_backend("triton"):
            out = ops.masked_patch_attention(*ins, mask, 2)
        grads = torch.autograd.grad(out, ins, go)
        ref = _reference(theta, phi, g, mask, go, 2, default_scale(2, 2))
        for name, f, r in zip(("out", "d_theta", "d_phi", "d_g"), (out.detach(), *grads), ref):
            assert_close(f, r, torch.float64, name)


# ------------------------------------------------------------------ GPU: compiled, training size

GPU_TOL = {torch.float32: 5e-4, torch.bfloat16: 1e-2}


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available() or INTERP,
                    reason="needs a CUDA device and TRITON_INTERPRET=0 (compiled kernels)")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
class TestGPU:
    @pytest.mark.parametrize("channels", [32, 128], ids=["d128", "d512"])
    def test_training_size(self, dtype, channels):
        """64 x 64 features, p = 2 (N = 1024 patches), a quarter of the pixels holes, B = 4."""
        inputs = _inputs(4, channels, channels, 64, 64, "quarter", seed=7, device="cuda")
        _compare(inputs, 2, default_scale(channels, 2), dtype, tol=GPU_TOL[dtype])

    def test_ragged_p3(self, dtype):
        inputs = _inputs(2, 16, 24, 61, 50, "soft", seed=8, device="cuda")
        _compare(inputs, 3, 0.1, dtype, tol=GPU_TOL[dtype])
