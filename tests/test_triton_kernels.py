"""The Triton kernels called directly: odd sizes (ragged blocks, several programs, several loop trips),
every layout path and flag, against the reference. Under TRITON_INTERPRET=1 on CPU tensors (the default in
conftest); the `gpu` class runs them compiled on CUDA tensors at training sizes, which needs
`TRITON_INTERPRET=0 pytest -m gpu tests/test_triton_kernels.py` on a GPU machine."""
import os

import pytest
import torch

from mdrnet_fast import reference as R
from mdrnet_fast._dispatch import backend_available, triton_interpreter

from _util import assert_close

INTERP = triton_interpreter()
pytestmark = pytest.mark.skipif(not backend_available("triton")[0],
                                reason=f"triton backend unavailable: {backend_available('triton')[1]}")
interp = pytest.mark.skipif(not INTERP, reason="these run CPU tensors through TRITON_INTERPRET=1")

if backend_available("triton")[0]:
    from mdrnet_fast.triton_kernels import gated_activation as TG
    from mdrnet_fast.triton_kernels import memory as TM
    from mdrnet_fast.triton_kernels import region_pool as TR
    from mdrnet_fast.triton_kernels import spade as TS


def _grads(fn, inputs, seed=3):
    """Outputs of fn(*inputs) and the gradients of a fixed random projection of its first output."""
    inputs = [t.detach().requires_grad_(True) for t in inputs]
    out = fn(*inputs)
    gen = torch.Generator().manual_seed(seed)
    go = torch.randn(out.shape, generator=gen, dtype=torch.float64).to(out)
    return out.detach(), go, torch.autograd.grad(out, inputs, go)


def _strided(t):
    return torch.cat([t, t], dim=-1)[..., : t.shape[-1]]


# ------------------------------------------------------------------ interpreter: odd sizes

@pytest.mark.triton_interp
@interp
class TestInterpreter:
    @pytest.mark.parametrize("act", ["elu", "leaky_relu", "relu", "none"])
    @pytest.mark.parametrize("layout", ["contiguous", "channels_last", "strided"])
    def test_gated_activation(self, act, layout):
        y = torch.randn(3, 14, 11, 13, dtype=torch.float64) * 2  # 3003 outputs: 3 programs, the last ragged
        y = {"contiguous": y, "channels_last": y.contiguous(memory_format=torch.channels_last),
             "strided": _strided(y)}[layout]
        for dtype in (torch.float64, torch.float32):
            yd = y.to(dtype)
            ref, go, (ref_gy,) = _grads(lambda t: R.gated_activation(t, act, 0.1), [yd])
            out = TG.forward(yd, act, 0.1)
            gy = TG.backward(go, yd, act, 0.1)
            assert_close(out, ref, dtype, "out")
            assert_close(gy, ref_gy, dtype, "grad y")
            cl = layout == "channels_last"
            assert out.is_contiguous(memory_format=torch.channels_last if cl else torch.contiguous_format)
            assert gy.is_contiguous(memory_format=torch.channels_last if cl else torch.contiguous_format)

    def test_gated_activation_bf16_rounds_like_torch(self):
        y = torch.randn(2, 6, 5, 7).bfloat16()
        want = R.gated_activation(y.float(), "elu").bfloat16()
        assert torch.equal(TG.forward(y, "elu", 0.2), want)

    @pytest.mark.parametrize("layouts", [("contiguous",) * 3, ("channels_last",) * 3,
                                         ("contiguous", "channels_last", "strided")])
    def test_spade(self, layouts):
        # H*W = 1073: several trips of the H*W loop; C = 5: a ragged channel block; mean 30 >> std
        shape = (2, 5, 37, 29)
        x, gamma, beta = (torch.randn(shape, dtype=torch.float64) for _ in range(3))
        x = x + 30.0
        conv = {"contiguous": lambda t: t.contiguous(), "strided": _strided,
                "channels_last": lambda t: t.contiguous(memory_format=torch.channels_last)}
        x, gamma, beta = (conv[lay](t) for lay, t in zip(layouts, (x, gamma, beta)))
        for dtype in (torch.float64, torch.float32):
            ins = [t.to(dtype) for t in (x, gamma, beta)]
            ref, go, ref_grads = _grads(lambda a, g, b: R.spade_modulate(a.double(), g.double(), b.double()), ins)
            out, mean, rstd = TS.forward(*ins, 1e-5)
            assert_close(out, ref, dtype, "out")
            assert mean.dtype == rstd.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
            for needs in ((True, True, True), (True, False, False), (False, True, True)):
                grads = TS.backward(go.to(dtype), ins[0], ins[1], mean, rstd, *needs)
                for name, need, gr, r in zip("x gamma beta".split(), needs, grads, ref_grads):
                    if need:
                        assert_close(gr, r, dtype, f"grad {name} {needs}")
                        assert gr.dtype == dtype
                    else:
                        assert gr is None

    @pytest.mark.parametrize("seg_kind", ["labels", "soft"])
    @pytest.mark.parametrize("split", [None, 3])
    def test_region_pool(self, seg_kind, split):
        # C = 70: two channel blocks, the last ragged; H*W = 143: three pixel blocks; n = 19 pads to 32
        b, c, h, w, n = 2, 70, 11, 13, 19
        feat = torch.randn(b, c, h, w, dtype=torch.float64)
        if seg_kind == "labels":
            seg = torch.randint(0, n, (b, h, w))
            seg[seg == 4] = 5  # class 4 absent: zero codes, never NaN
        else:
            seg = torch.rand(b, n, h, w, dtype=torch.float64)
            seg[:, 4] = 0
        for dtype, layout in ((torch.float64, torch.contiguous_format), (torch.float32, torch.channels_last)):
            f = feat.to(dtype).contiguous(memory_format=layout)
            s = seg.to(dtype) if seg_kind == "soft" else seg
            for normalize in (True, False):
                codes, area = TR.pool(f, s, n, normalize, split=split)
                ref = (R.region_avg_pool(feat, seg, n) if normalize
                       else torch.einsum("bchw,bnhw->bnc", feat, _weights(seg, n)))
                assert_close(codes, ref, dtype, f"codes normalize={normalize}")
                assert_close(area, _weights(seg, n).sum(dim=(2, 3)), dtype, "area")
                assert codes.dtype == dtype and area.dtype in (torch.float32, torch.float64)
                assert codes[:, 4].eq(0).all()
            # deterministic: the same bits every time
            assert torch.equal(TR.pool(f, s, n, True, split=split)[0], TR.pool(f, s, n, True, split=split)[0])

    @pytest.mark.parametrize("seg_kind", ["labels", "soft"])
    def test_region_broadcast(self, seg_kind):
        b, c, h, w, n = 2, 37, 17, 19, 6  # H*W = 323: two pixel blocks, ragged; C ragged
        codes = torch.randn(b, n, c, dtype=torch.float64)
        seg = torch.randint(0, n, (b, h, w)) if seg_kind == "labels" else torch.rand(b, n, h, w, dtype=torch.float64)
        for dtype in (torch.float64, torch.float32):
            s = seg.to(dtype) if seg_kind == "soft" else seg
            out = TR.broadcast(codes.to(dtype), s, n)
            assert_close(out, R.region_broadcast(codes, seg, n), dtype, "out")
            assert out.is_contiguous() and out.dtype == dtype

    def test_memory_read(self):
        # C = 70 with m = 37 (padded to 64): two channel blocks, the last ragged; one zero query
        q = torch.randn(3, 4, 70, dtype=torch.float64)
        q[1, 2] = 0
        mem = torch.randn(4, 37, 70, dtype=torch.float64)
        for dtype in (torch.float64, torch.float32):
            qd, md = q.to(dtype), mem.to(dtype)
            ref, go, (ref_gq,) = _grads(lambda t: R.memory_read(t.double(), md.double(), 0.7), [qd])
            out, attn = TM.read(qd, md, 0.7)
            assert_close(out, ref, dtype, "q_hat")
            assert torch.allclose(attn.sum(-1), torch.ones((), dtype=attn.dtype))
            gq = TM.read_backward(go.to(dtype), qd, md, attn, 0.7)
            assert_close(gq, ref_gq, dtype, "grad q")

    @pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16])
    def test_memory_update(self, dtype):
        n, m, c, b = 3, 37, 70, 9
        mem = torch.randn(n, m, c).to(dtype)
        mem[:, 20] = mem[:, 2]  # exact ties: slot 2 must win
        q = torch.randn(b, n, c).to(dtype)
        q[:3] = mem[:, 2][None] * 1.5
        v = torch.randn(b, n, c).to(dtype)
        present = torch.rand(b, n) > 0.3
        present[:3] = True
        ref_mem, fast_mem = mem.clone(), mem.clone()
        ref_slots = R.memory_update_(ref_mem, q, v, present, 0.8)
        slots = TM.update_(fast_mem, q, v, present, 0.8)
        assert torch.equal(slots, ref_slots)
        assert (slots[:3] == 2).all()
        tol = {torch.float64: 1e-10, torch.float32: 1e-5, torch.bfloat16: 0.0}[dtype]
        assert (fast_mem.double() - ref_mem.double()).abs().max() <= tol * ref_mem.double().abs().max()

    def test_ops_chain_under_compile(self):
        """The triton ops as a model chains them, eager against torch.compile(fullgraph=True)."""
        import mdrnet_fast
        from mdrnet_fast import ops

        def chain(y, gamma, labels, mem):
            f = torch.ops.mdrnet_fast.gated_activation(y, "elu", 0.2, "triton")
            q_hat = ops.memory_read(ops.region_avg_pool(f, labels, 4), mem, 1.0)
            return ops.spade_modulate(f + ops.region_broadcast(q_hat, labels, 4), gamma, gamma)

        y = torch.randn(2, 8, 6, 5, requires_grad=True)
        gamma = torch.randn(2, 4, 6, 5, requires_grad=True)
        labels, mem = torch.randint(0, 4, (2, 6, 5)), torch.randn(4, 8, 4)
        with mdrnet_fast.use_backend("triton"):
            eager = chain(y, gamma, labels, mem)
            grads = torch.autograd.grad(eager.square().sum(), (y, gamma))
            torch._dynamo.reset()
            out = torch.compile(chain, fullgraph=True, backend="aot_eager")(y, gamma, labels, mem)
            cgrads = torch.autograd.grad(out.square().sum(), (y, gamma))
        torch.testing.assert_close(out, eager, rtol=1e-5, atol=1e-5)
        for a, b in zip(cgrads, grads):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


def _can_compile_offline():
    try:
        from triton.backends.compiler import GPUTarget  # noqa: F401
        from triton.compiler import ASTSource  # noqa: F401
        import triton.backends.nvidia  # noqa: F401
    except Exception:
        return False
    return True


@pytest.mark.triton_interp
@pytest.mark.skipif(not _can_compile_offline(), reason="this triton cannot compile for CUDA offline")
def test_kernels_compile_for_sm90():
    """The interpreter accepts code the compiler rejects: compile a representative variant of every kernel
    (bf16 with fp32 accumulation, and fp64) for sm_90 in a process without TRITON_INTERPRET."""
    import subprocess
    import sys

    script = os.path.join(os.path.dirname(__file__), "_triton_aot.py")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    res = subprocess.run([sys.executable, script], env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stdout[-4000:] + res.stderr[-4000:]


def _weights(seg, n):
    if seg.is_floating_point():
        return seg.double()
    return torch.nn.functional.one_hot(seg, n).permute(0, 3, 1, 2).double()


# ------------------------------------------------------------------ GPU: compiled, training sizes

GPU_TOL = {torch.float32: 5e-4, torch.bfloat16: 1e-2}


def _gpu_close(fast, ref, dtype, what):
    fast, ref = fast.double(), ref.double()
    err = ((fast - ref).abs().max() / ref.abs().max().clamp_min(1e-6)).item()
    assert torch.isfinite(fast).all(), f"{what}: non-finite"
    assert err <= GPU_TOL[dtype], f"{what}: relative error {err:.3g} > {GPU_TOL[dtype]} ({dtype})"


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available() or INTERP,
                    reason="needs a CUDA device and TRITON_INTERPRET=0 (compiled kernels)")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
class TestGPU:
    B, C, H, W = 8, 128, 128, 128

    def _rand(self, *shape, dtype):
        return torch.randn(*shape, device="cuda").to(dtype)

    def _compare(self, fast_fn, ref_fn, inputs, dtype):
        fast, go, fast_grads = _grads(fast_fn, inputs)
        ref, _, ref_grads = _grads(ref_fn, [t.float() for t in inputs])
        _gpu_close(fast, ref, dtype, "out")
        for i, (gr, r) in enumerate(zip(fast_grads, ref_grads)):
            _gpu_close(gr, r, dtype, f"grad {i}")

    @pytest.mark.parametrize("act", ["elu", "leaky_relu"])
    @pytest.mark.parametrize("channels_last", [False, True])
    def test_gated_activation(self, dtype, act, channels_last):
        y = self._rand(self.B, 2 * self.C, self.H, self.W, dtype=dtype)
        if channels_last:
            y = y.contiguous(memory_format=torch.channels_last)
        op = torch.ops.mdrnet_fast.gated_activation
        self._compare(lambda t: op(t, act, 0.2, "triton"), lambda t: R.gated_activation(t, act, 0.2), [y], dtype)

    @pytest.mark.parametrize("channels_last", [False, True])
    def test_spade(self, dtype, channels_last):
        from mdrnet_fast import ops, use_backend

        ins = [self._rand(self.B, self.C, self.H, self.W, dtype=dtype) for _ in range(3)]
        if channels_last:
            ins = [t.contiguous(memory_format=torch.channels_last) for t in ins]
        with use_backend("triton"):
            self._compare(ops.spade_modulate, R.spade_modulate, ins, dtype)

    @pytest.mark.parametrize("seg_kind", ["labels", "soft"])
    def test_region_pool_and_broadcast(self, dtype, seg_kind):
        from mdrnet_fast import ops, use_backend

        n = 19
        feat = self._rand(self.B, self.C, self.H, self.W, dtype=dtype)
        labels = torch.randint(0, n, (self.B, self.H, self.W), device="cuda")
        seg = labels if seg_kind == "labels" else torch.rand(self.B, n, self.H, self.W, device="cuda").to(dtype)
        ref_seg = seg if seg_kind == "labels" else seg.float()
        codes = self._rand(self.B, n, self.C, dtype=dtype)
        with use_backend("triton"):
            fast, go, (gf,) = _grads(lambda f: ops.region_avg_pool(f, seg, n), [feat])
            fast_b, go_b, (gc,) = _grads(lambda c: ops.region_broadcast(c, seg, n), [codes])
        ref, _, (rf,) = _grads(lambda f: R.region_avg_pool(f, ref_seg, n), [feat.float()])
        ref_b, _, (rc,) = _grads(lambda c: R.region_broadcast(c, ref_seg, n), [codes.float()])
        for what, a, b in (("codes", fast, ref), ("grad feat", gf, rf), ("broadcast", fast_b, ref_b), ("grad codes", gc, rc)):
            _gpu_close(a, b, dtype, what)

    def test_memory(self, dtype):
        from mdrnet_fast import ops, use_backend

        n, m, c = 14, 128, 256
        q = self._rand(self.B, n, c, dtype=dtype)
        mem = self._rand(n, m, c, dtype=dtype)
        with use_backend("triton"):
            self._compare(lambda t: ops.memory_read(t, mem, 1.0), lambda t: R.memory_read(t, mem.float(), 1.0), [q], dtype)
            if dtype == torch.float32:
                v, present = self._rand(self.B, n, c, dtype=dtype), torch.rand(self.B, n, device="cuda") > 0.2
                fast_mem, ref_mem = mem.clone(), mem.clone()
                slots = ops.memory_update_(fast_mem, q, v, present, 0.9)
                assert torch.equal(slots, R.memory_update_(ref_mem, q, v, present, 0.9))
                _gpu_close(fast_mem, ref_mem, dtype, "mem")
