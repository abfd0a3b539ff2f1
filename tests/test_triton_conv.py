"""The Triton partial-conv kernels (implicit GEMMs) called directly, against the reference (SPEC §1):
out, new_mask and the x / weight / bias gradients, every geometry flag and layout, tiny shapes (the
interpreter pays per program and per loop trip). The `gpu` class runs them compiled at a training size:
`TRITON_INTERPRET=0 pytest -m gpu tests/test_triton_conv.py` on a CUDA machine."""
import pytest
import torch

from mdrnet_fast import reference as R
from mdrnet_fast._dispatch import backend_available, triton_interpreter

from _util import assert_close, layouts

INTERP = triton_interpreter()
pytestmark = pytest.mark.skipif(not backend_available("triton")[0],
                                reason=f"triton backend unavailable: {backend_available('triton')[1]}")
interp = pytest.mark.skipif(not INTERP, reason="these run CPU tensors through TRITON_INTERPRET=1")

if backend_available("triton")[0]:
    from mdrnet_fast.triton_kernels import partial_conv as TC

# (id, B, C_in, C_out, H, W, kh, kw, stride, padding, dilation, groups, multi_channel, bias, mask kind)
GEOMETRIES = {
    "3x3-pad1-bias-soft": (2, 3, 4, 7, 9, 3, 3, (1, 1), (1, 1), (1, 1), 1, False, True, "soft"),
    "s2-d2-nobias-hard": (2, 3, 5, 9, 10, 3, 3, (2, 2), (2, 2), (2, 2), 1, False, False, "hard"),
    "groups2-multichannel-soft": (2, 4, 6, 8, 7, 3, 3, (1, 1), (1, 1), (1, 1), 2, True, True, "soft"),
    "groups2-multichannel-s2-d2-nobias": (2, 4, 6, 9, 7, 3, 3, (2, 1), (0, 1), (1, 2), 2, True, False, "hard"),
    "all-hole-windows": (2, 3, 4, 10, 11, 3, 3, (1, 1), (1, 1), (1, 1), 1, False, True, "hole"),
    "4x3-s2x1-pad1x2-ragged": (2, 5, 6, 7, 9, 4, 3, (2, 1), (1, 2), (1, 1), 1, False, True, "hard"),
    "1x1-nobias": (2, 5, 3, 6, 7, 1, 1, (1, 1), (0, 0), (1, 1), 1, False, False, "soft"),
    "wide-cout-multichannel": (2, 3, 34, 5, 6, 3, 3, (1, 1), (1, 1), (1, 1), 1, True, True, "soft"),
}


def _inputs(geom, seed=0):
    b, ci, co, h, w, kh, kw, stride, padding, dilation, groups, mc, bias, kind = geom
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(b, ci, h, w, generator=gen, dtype=torch.float64)
    mshape = (b, ci if mc else 1, h, w)
    if kind == "soft":
        mask = torch.rand(mshape, generator=gen, dtype=torch.float64)
        mask[mask < 0.25] = 0
    elif kind == "hard":
        mask = (torch.rand(mshape, generator=gen) < 0.6).double()
    else:  # a hole larger than the kernel: windows with no valid pixel
        mask = torch.ones(mshape, dtype=torch.float64)
        mask[:, :, 2:8, 3:9] = 0
    weight = torch.randn(co, ci // groups, kh, kw, generator=gen, dtype=torch.float64)
    bias_t = torch.randn(co, generator=gen, dtype=torch.float64) if bias else None
    return x, mask, weight, bias_t, [*stride], [*padding], [*dilation], groups, mc


def _reference(x, mask, weight, bias, stride, padding, dilation, groups, mc, seed=5):
    """Reference out, new_mask, the upstream gradient and the (x, weight, bias) gradients."""
    x, weight = x.detach().requires_grad_(True), weight.detach().requires_grad_(True)
    leaves = [x, weight]
    if bias is not None:
        bias = bias.detach().requires_grad_(True)
        leaves.append(bias)
    out, new_mask = R.partial_conv2d(x, mask, weight, bias, stride, padding, dilation, groups, mc)
    gen = torch.Generator().manual_seed(seed)
    go = torch.randn(out.shape, generator=gen, dtype=torch.float64).to(out.dtype)
    grads = torch.autograd.grad(out, leaves, go)
    return out.detach(), new_mask, go, grads


def _check(geom, dtype, layout, needs=((True, True, True),)):
    x, mask, weight, bias, stride, padding, dilation, groups, mc = _inputs(geom)
    ref_dtype = torch.float64 if dtype == torch.float64 else torch.float32
    # the low-precision kernels are compared with the fp32 reference on the same (rounded) inputs
    cast = [t.to(dtype) if t is not None else None for t in (x, mask, weight, bias)]
    ref_in = [t.to(ref_dtype) if t is not None else None for t in cast]
    ref_out, ref_nm, go, ref_grads = _reference(*ref_in, stride, padding, dilation, groups, mc)
    xd, md, wd, bd = cast
    xd = layouts(xd, layout)
    out, new_mask, grad_scale = TC.forward(xd, md, wd, bd, stride, padding, dilation, groups, mc)
    assert out.dtype == dtype and new_mask.dtype == dtype
    assert grad_scale.dtype == ref_dtype and grad_scale.shape == (x.shape[0], 1, *out.shape[2:])
    cl = layout == "channels_last"
    assert out.is_contiguous(memory_format=torch.channels_last if cl else torch.contiguous_format)
    assert_close(out, ref_out, dtype, "out")
    assert_close(new_mask, ref_nm, dtype, "new_mask")
    god = layouts(go.to(dtype), layout)
    for need_x, need_w, need_b in needs:
        need_b = need_b and bias is not None
        gx, gw, gb = TC.backward(god, xd, md, wd, grad_scale, new_mask, stride, padding, dilation, groups,
                                 need_x, need_w, need_b)
        for name, need, got, want in zip(("x", "weight", "bias"), (need_x, need_w, need_b), (gx, gw, gb),
                                         (*ref_grads, None)):
            if need:
                assert got.dtype == dtype
                assert_close(got, want, dtype, f"grad {name}")
            else:
                assert got is None
        if need_x:
            assert gx.is_contiguous(memory_format=torch.channels_last if cl else torch.contiguous_format)
    return out, new_mask, mask


@pytest.mark.triton_interp
@interp
class TestInterpreter:
    @pytest.mark.parametrize("geom", list(GEOMETRIES), ids=list(GEOMETRIES))
    @pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["fp64", "fp32"])
    def test_parity(self, geom, dtype):
        _check(GEOMETRIES[geom], dtype, "contiguous")

    @pytest.mark.parametrize("layout", ["channels_last", "noncontig"])
    @pytest.mark.parametrize("geom", ["3x3-pad1-bias-soft", "groups2-multichannel-s2-d2-nobias"])
    def test_layouts(self, layout, geom):
        _check(GEOMETRIES[geom], torch.float64, layout)

    @pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
    def test_low_precision(self, dtype):
        _check(GEOMETRIES["groups2-multichannel-soft"], dtype, "contiguous")
        _check(GEOMETRIES["s2-d2-nobias-hard"], dtype, "channels_last")

    def test_needs_subsets(self):
        _check(GEOMETRIES["3x3-pad1-bias-soft"], torch.float64, "contiguous",
               needs=((True, False, False), (False, True, False), (False, False, True), (False, True, True)))

    def test_all_hole_windows_give_zero(self):
        out, new_mask, mask = _check(GEOMETRIES["all-hole-windows"], torch.float32, "contiguous")
        # the window of output (4, 5) (padding 1) lies inside the hole rows 2..7, cols 3..8
        assert (new_mask[:, :, 3:7, 4:8] == 0).all() and (out[:, :, 3:7, 4:8] == 0).all()
        assert torch.isfinite(out).all()

    @pytest.mark.parametrize("geom", ["4x3-s2x1-pad1x2-ragged", "groups2-multichannel-s2-d2-nobias",
                                      "wide-cout-multichannel"])
    def test_many_programs_and_loop_trips(self, geom, monkeypatch):
        """16-wide blocks: several M programs, several (ragged) N tiles per group, several K trips and mask-sum
        tap trips."""
        monkeypatch.setattr(TC, "INTERP_CAPS", (16, 16, 16))
        _check(GEOMETRIES[geom], torch.float64, "channels_last")

    def test_weight_gradient_split_is_deterministic(self, monkeypatch):
        """On GPU the weight gradient's M loop is split over programs and the partial sums reduced in a
        fixed order: force that path here (1 program per split chunk) and check values and bits."""
        monkeypatch.setattr(TC, "target_programs", lambda: 64)
        monkeypatch.setattr(TC, "_dw_blocks", lambda m, n, k, dtype: (16, 16, 16))
        geom = GEOMETRIES["groups2-multichannel-soft"]
        _check(geom, torch.float64, "contiguous")
        x, mask, weight, bias, *rest = _inputs(geom)
        out, nm, gs = TC.forward(x, mask, weight, bias, *rest)
        go = torch.randn(out.shape, dtype=torch.float64)
        first = TC.backward(go, x, mask, weight, gs, nm, *rest[:4], False, True, True)
        again = TC.backward(go, x, mask, weight, gs, nm, *rest[:4], False, True, True)
        assert torch.equal(first[1], again[1]) and torch.equal(first[2], again[2])

    def test_through_the_op(self):
        """The public op on the triton backend, mask=None and a batch-1 mask, fp64 gradcheck (fast mode)."""
        import mdrnet_fast
        from mdrnet_fast import ops

        x = torch.randn(3, 4, 6, 7, dtype=torch.float64, requires_grad=True)
        w = torch.randn(6, 2, 3, 3, dtype=torch.float64, requires_grad=True)
        b = torch.randn(6, dtype=torch.float64, requires_grad=True)
        mask = (torch.rand(1, 1, 6, 7) < 0.7).double()
        with mdrnet_fast.use_backend("triton"):
            for m in (None, mask):
                out, nm = ops.partial_conv2d(x, m, w, b, 1, 1, 1, 2)
                full = None if m is None else m.expand(3, -1, -1, -1)   # the op broadcasts a batch-1 mask
                want, want_nm = R.partial_conv2d(x, full, w, b, 1, 1, 1, 2)
                assert_close(out.detach(), want.detach(), torch.float64, "out")
                assert_close(nm, want_nm, torch.float64, "new_mask")
            assert torch.autograd.gradcheck(lambda x, w, b: ops.partial_conv2d(x, mask, w, b, 2, 1, 1, 2)[0],
                                             (x, w, b), eps=1e-6, atol=1e-7, fast_mode=True)

    @pytest.mark.parametrize("act", ["elu", "leaky_relu", "relu", "none"])
    def test_gated_fused_epilogue(self, act):
        """gated_partial_conv2d: the gating fused into the partial conv's epilogue (y kept for the backward),
        against the reference gated conv with a mask; gradients through the public op."""
        import mdrnet_fast
        from mdrnet_fast import ops

        x, mask, weight, bias, stride, padding, dilation, _, _ = _inputs(GEOMETRIES["4x3-s2x1-pad1x2-ragged"])
        weight = torch.cat([weight, -weight.flip(0)])      # 2*C_out = 12 rows: feature, gate
        bias = torch.cat([bias, bias.flip(0) * 0.5])
        for dtype, layout in ((torch.float64, "contiguous"), (torch.float32, "channels_last")):
            ins = [layouts(x.to(dtype), layout), mask.to(dtype), weight.to(dtype), bias.to(dtype)]
            out, nm, y, gs = TC.gated_forward(*ins, stride, padding, dilation, 1, act, 0.1)
            want, want_nm = R.gated_conv2d(x, weight, bias, stride, padding, dilation, 1, act, 0.1, mask)
            want_y, _ = R.partial_conv2d(x, mask, weight, bias, stride, padding, dilation)
            assert_close(out, want, dtype, "out")
            assert_close(nm, want_nm, dtype, "new_mask")
            assert_close(y, want_y, dtype, "y")
            cl = layout == "channels_last"
            assert out.is_contiguous(memory_format=torch.channels_last if cl else torch.contiguous_format)
        leaves = [t.detach().requires_grad_(True) for t in (x, weight, bias)]
        with mdrnet_fast.use_backend("triton"):
            out, _ = ops.gated_conv2d(leaves[0], leaves[1], leaves[2], stride, padding, dilation, 1, act, 0.1, mask)
        go = torch.randn(out.shape, dtype=torch.float64)
        got = torch.autograd.grad(out, leaves, go)
        want = torch.autograd.grad(R.gated_conv2d(*leaves, stride, padding, dilation, 1, act, 0.1, mask)[0], leaves, go)
        for name, a, b in zip(("x", "weight", "bias"), got, want):
            assert_close(a, b, torch.float64, f"grad {name}")

    def test_gated_groups_runs_unfused(self):
        x, mask, weight, bias, stride, padding, dilation, groups, _ = _inputs(GEOMETRIES["groups2-multichannel-soft"])
        mask = mask[:, :1]
        out, nm, y, gs = TC.gated_forward(x, mask, weight, bias, stride, padding, dilation, groups, "elu", 0.2)
        want, want_nm = R.gated_conv2d(x, weight, bias, stride, padding, dilation, groups, "elu", 0.2, mask)
        assert_close(out, want, torch.float64, "out")
        assert_close(nm, want_nm, torch.float64, "new_mask")


    @pytest.mark.parametrize("act", ["elu", "leaky_relu", "relu", "none"])
    def test_gated_backward_fused_into_the_loads(self, act):
        """gated_partial_conv2d's backward: the gating's gradient formed inside the dx / dW loads, against the
        composite (gating backward, then partial conv backward), with subsets of the gradients and layouts."""
        from mdrnet_fast.composite import gated_activation as CG

        x, mask, weight, bias, stride, padding, dilation, _, _ = _inputs(GEOMETRIES["4x3-s2x1-pad1x2-ragged"])
        weight = torch.cat([weight, -weight.flip(0)])
        bias = torch.cat([bias, bias.flip(0) * 0.5])
        _, nm, y, gs = TC.gated_forward(x, mask, weight, bias, stride, padding, dilation, 1, act, 0.1)
        go = torch.randn(y.shape[0], y.shape[1] // 2, *y.shape[2:], dtype=torch.float64)
        args = (stride, padding, dilation, 1, act, 0.1)
        for need in ((True, True, True), (True, False, False), (False, True, True)):
            for dtype, layout in ((torch.float64, "contiguous"), (torch.float32, "channels_last"),
                                  (torch.float32, "noncontig")):
                ins = [layouts(t.to(dtype), layout) for t in (go, x)] + [mask.to(dtype), weight.to(dtype), gs,
                                                                          nm.to(dtype), layouts(y.to(dtype), layout)]
                got = TC.gated_backward(*ins, *args, *need)
                want = CG.gated_partial_backward(*[t.to(torch.float64) for t in ins], *args, *need)
                for name, a, b, n in zip(("x", "weight", "bias"), got, want, need):
                    if n:
                        assert_close(a, b, dtype, f"grad {name} ({layout})")
                    else:
                        assert a is None, f"grad {name} was not asked for"


# ------------------------------------------------------------------ GPU: compiled, training size

GPU_TOL = {torch.float32: 5e-4, torch.bfloat16: 1e-2}  # SPEC: tf32 matmuls on GPU


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available() or INTERP,
                    reason="needs a CUDA device and TRITON_INTERPRET=0 (compiled kernels)")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
class TestGPU:
    @pytest.mark.parametrize("case", ["3x3-bias", "s2-multichannel-groups", "channels_last-nobias"])
    def test_training_size(self, dtype, case):
        import mdrnet_fast
        from mdrnet_fast import ops

        b, c, h, w = 4, 64, 64, 64
        stride, groups, mc, has_bias = {"3x3-bias": (1, 1, False, True), "s2-multichannel-groups": (2, 2, True, True),
                                        "channels_last-nobias": (1, 1, False, False)}[case]
        x = torch.randn(b, c, h, w, device="cuda")
        mask = (torch.rand(b, c if mc else 1, h, w, device="cuda") < 0.7).float()
        mask[:, :, 10:30, 20:40] = 0   # all-hole windows too
        weight = torch.randn(c, c // groups, 3, 3, device="cuda") / (3 * (c // groups) ** 0.5)
        bias = torch.randn(c, device="cuda") if has_bias else None
        if case == "channels_last-nobias":
            x = x.contiguous(memory_format=torch.channels_last)
        inputs = [t.to(dtype) for t in (x, weight)] + ([bias.to(dtype)] if has_bias else [])

        def run(fn, ins):
            ins = [t.detach().requires_grad_(True) for t in ins]
            out, nm = fn(ins[0], mask.to(ins[0].dtype), ins[1], ins[2] if has_bias else None, stride, 1, 1, groups, mc)
            go = torch.randn(out.shape, device="cuda", generator=torch.Generator("cuda").manual_seed(3)).to(out.dtype)
            return [out.detach(), nm] + list(torch.autograd.grad(out, ins, go))

        with mdrnet_fast.use_backend("triton"):
            fast = run(ops.partial_conv2d, inputs)
        ref = run(R.partial_conv2d, [t.double() for t in inputs])
        for what, a, r in zip(("out", "new_mask", "grad x", "grad weight", "grad bias"), fast, ref):
            a, r = a.double(), r.double()
            assert torch.isfinite(a).all(), what
            err = ((a - r).abs().max() / r.abs().max().clamp_min(1e-6)).item()
            assert err <= GPU_TOL[dtype], f"{what}: relative error {err:.3g} > {GPU_TOL[dtype]} ({dtype})"

    def test_gated_training_size(self, dtype):
        import mdrnet_fast
        from mdrnet_fast import ops

        b, c, h, w = 4, 64, 64, 64
        x = torch.randn(b, c, h, w, device="cuda").to(dtype)
        mask = (torch.rand(b, 1, h, w, device="cuda") < 0.7).to(dtype)
        weight = (torch.randn(2 * c, c, 3, 3, device="cuda") / (3 * c ** 0.5)).to(dtype)
        bias = torch.randn(2 * c, device="cuda").to(dtype)

        def run(fn, ins):
            ins = [t.detach().requires_grad_(True) for t in ins]
            out, nm = fn(ins[0], ins[1], ins[2], 1, 1, 1, 1, "elu", 0.2, mask.to(ins[0].dtype))
            go = torch.randn(out.shape, device="cuda", generator=torch.Generator("cuda").manual_seed(3)).to(out.dtype)
            return [out.detach(), nm] + list(torch.autograd.grad(out, ins, go))

        with mdrnet_fast.use_backend("triton"):
            fast = run(ops.gated_conv2d, [x, weight, bias])
        ref = run(R.gated_conv2d, [t.double() for t in (x, weight, bias)])
        for what, a, r in zip(("out", "new_mask", "grad x", "grad weight", "grad bias"), fast, ref):
            a, r = a.double(), r.double()
            err = ((a - r).abs().max() / r.abs().max().clamp_min(1e-6)).item()
            assert torch.isfinite(a).all() and err <= GPU_TOL[dtype], f"{what}: relative error {err:.3g} ({dtype})"
