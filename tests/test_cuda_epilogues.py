"""The CUDA C++ epilogue kernels of the `cuda` backend (csrc/cuda/{partial_conv_epilogue,gated_activation,
spade_modulate}.cu): called directly and through the public ops, against float64 definitions computed on the
same GPU. Every dtype, odd shapes (ragged blocks and tiles, several reduction chunks), NCHW, channels_last
and strided inputs, stride / padding / dilation / multi_channel, soft masks and all-hole windows.
Needs a CUDA device and the built extension mdrnet_fast._C_cuda: `pytest -m gpu tests/test_cuda_epilogues.py`."""
import pytest
import torch
import torch.nn.functional as F

import mdrnet_fast
from mdrnet_fast import reference as R
from mdrnet_fast._dispatch import backend_available

from _util import TOL, assert_close

CUDA_OK = torch.cuda.is_available() and backend_available("cuda")[0]
pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not CUDA_OK, reason="needs a CUDA device and mdrnet_fast._C_cuda: "
                       + ("" if CUDA_OK else backend_available("cuda")[1])),
]

if CUDA_OK:
    from mdrnet_fast import _C_cuda as CC

DEV = "cuda"
DTYPES = [torch.float64, torch.float32, torch.float16, torch.bfloat16]
DT_IDS = ["fp64", "fp32", "fp16", "bf16"]
LAYOUTS = ["nchw", "channels_last", "strided"]
# public ops run cuDNN convolutions: fp32 gets the SPEC's GPU bound
OP_TOL = {**TOL, torch.float32: 5e-4}


@pytest.fixture(autouse=True)
def _no_tf32():
    conv, mm = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = conv, mm


def close(fast, ref, dtype, what, tol=TOL):
    assert fast.device.type == "cuda", f"{what}: on {fast.device}"
    assert_close(fast, ref, dtype, what, tol)


def layout(t, kind):
    """t's values in another memory layout (strided: a view with a padded last dimension)."""
    if kind == "channels_last":
        return t.contiguous(memory_format=torch.channels_last)
    if kind == "strided":
        return torch.cat([t, t], dim=-1)[..., : t.shape[-1]]
    return t.contiguous()


def fmt_of(t):
    if t.dim() == 4 and not t.is_contiguous() and t.is_contiguous(memory_format=torch.channels_last):
        return torch.channels_last
    return torch.contiguous_format


def rnd(*shape, dtype, scale=1.0, offset=0.0):
    return (torch.randn(*shape, device=DEV, dtype=torch.float64) * scale + offset).to(dtype)


def holey_mask(b, c, h, w, dtype, soft):
    """1 = valid; a fully-hole block so that some windows see no valid pixel; soft values optionally."""
    m = (torch.rand(b, c, h, w, device=DEV) > 0.3).double()
    m[:, :, : h // 2, : w // 2] = 0
    if soft:
        # values in [0.25, 1): ratio stays within fp16's range (a 1e-5 pixel alone in a window would not)
        m = m * (0.25 + 0.75 * torch.rand(b, c, h, w, device=DEV, dtype=torch.float64))
    return m.to(dtype)


def proj_grads(out, inputs, seed=5):
    """Gradients of <out, w> for a fixed random w (float64 on the GPU, cast to out's dtype)."""
    gen = torch.Generator(device=DEV).manual_seed(seed)
    w = torch.randn(out.shape, generator=gen, device=DEV, dtype=torch.float64).to(out.dtype)
    return torch.autograd.grad(out, inputs, w)


# ------------------------------------------------------------------ partial conv: direct kernel calls

def ref_epilogue(raw, mask, bias, k, s, p, d, winsize, multi_channel):
    plane = mask.double().sum(1, keepdim=True)
    msum = F.conv2d(plane, plane.new_ones(1, 1, k[0], k[1]), None, s, p, d)
    nm = msum.clamp(0, 1)
    ratio = winsize / (msum + 1e-8) * nm
    raw = raw.double()
    if bias is not None:
        out = (raw * ratio + bias.double().view(1, -1, 1, 1)) * nm
        gs = ratio * nm
    else:
        out, gs = raw * ratio, ratio
    new_mask = nm.expand(-1, raw.shape[1], -1, -1) if multi_channel else nm
    return out, new_mask, gs, msum


GEOMS = [((3, 3), (1, 1), (1, 1), (1, 1)), ((5, 3), (2, 1), (2, 0), (1, 2)), ((4, 4), (1, 2), (3, 3), (2, 2)),
         ((1, 1), (1, 1), (0, 0), (1, 1)), ((7, 7), (3, 3), (3, 3), (2, 2))]


@pytest.mark.parametrize("geom", GEOMS, ids=lambda g: "k{}s{}p{}d{}".format(*[x[0] for x in g]))
@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("mask_layout", ["nchw", "channels_last", "expanded"])
def test_mask_window_sum(geom, channels, mask_layout):
    k, s, p, d = geom
    mask = torch.rand(1 if mask_layout == "expanded" else 2, channels, 13, 11, device=DEV, dtype=torch.float64)
    mask = mask.expand(2, -1, -1, -1) if mask_layout == "expanded" else layout(mask, mask_layout)
    want = F.conv2d(mask.sum(1, keepdim=True), mask.new_ones(1, 1, *k), None, s, p, d)
    got = CC.partial_conv_mask_sum(mask, k[0], k[1], s[0], s[1], p[0], p[1], d[0], d[1], want.shape[2], want.shape[3])
    assert got.dtype == torch.float64 and got.shape == want.shape
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("dtype", DTYPES, ids=DT_IDS)
@pytest.mark.parametrize("raw_layout", LAYOUTS)
@pytest.mark.parametrize("geom", GEOMS[:3], ids=["k3", "k53s21d12", "k4s12p3d2"])
@pytest.mark.parametrize("multi_channel", [False, True], ids=["single", "multi"])
@pytest.mark.parametrize("with_bias", [False, True], ids=["nobias", "bias"])
@pytest.mark.parametrize("soft", [False, True], ids=["hard", "soft"])
def test_epilogue_forward(dtype, raw_layout, geom, multi_channel, with_bias, soft):
    k, s, p, d = geom
    B, cin, co, H, W = 3, 5, 37, 19, 23
    mask = holey_mask(B, cin if multi_channel else 1, H, W, dtype, soft)
    ho = (H + 2 * p[0] - d[0] * (k[0] - 1) - 1) // s[0] + 1
    wo = (W + 2 * p[1] - d[1] * (k[1] - 1) - 1) // s[1] + 1
    raw = layout(rnd(B, co, ho, wo, dtype=dtype), raw_layout)
    bias = rnd(co, dtype=dtype) if with_bias else None
    winsize = float(k[0] * k[1] * (cin if multi_channel else 1))
    out, nm, gs = CC.partial_conv_epilogue_forward(raw, mask, bias, k[0], k[1], s[0], s[1], p[0], p[1], d[0], d[1],
                                                   winsize, multi_channel)
    r_out, r_nm, r_gs, msum = ref_epilogue(raw, mask, bias, k, s, p, d, winsize, multi_channel)
    assert (msum == 0).any(), "the test must contain all-hole windows"
    acc = torch.float64 if dtype == torch.float64 else torch.float32
    assert out.dtype == dtype and nm.dtype == dtype and gs.dtype == acc
    assert gs.is_contiguous() and gs.shape == (B, 1, ho, wo)
    # the cpu kernel's contract: a multi-channel new mask in raw's layout, else NCHW
    nm_cl = multi_channel and raw_layout == "channels_last"
    assert nm.is_contiguous(memory_format=torch.channels_last if nm_cl else torch.contiguous_format)
    if raw_layout == "channels_last":
        assert out.is_contiguous(memory_format=torch.channels_last)
    else:
        assert out.is_contiguous()
    close(out, r_out, dtype, "out")
    close(nm, r_nm, dtype, "new_mask")
    close(gs, r_gs, dtype if dtype == torch.float64 else torch.float32, "grad_scale")
    hole = (msum == 0).expand_as(out)
    assert (out[hole] == 0).all() and (nm[(msum == 0).expand_as(nm)] == 0).all()


@pytest.mark.parametrize("dtype", DTYPES, ids=DT_IDS)
@pytest.mark.parametrize("go_layout", LAYOUTS)
@pytest.mark.parametrize("cn", ["one", "co"])
@pytest.mark.parametrize("shape", [(3, 37, 41, 53), (2, 5, 1, 1), (1, 64, 70, 70)], ids=["odd", "1x1", "chunks"])
def test_epilogue_backward(dtype, go_layout, cn, shape):
    B, co, ho, wo = shape
    acc = torch.float64 if dtype == torch.float64 else torch.float32
    go = layout(rnd(B, co, ho, wo, dtype=dtype), go_layout)
    gs = (torch.rand(B, 1, ho, wo, device=DEV, dtype=torch.float64) * 3).to(acc)
    nm = torch.rand(B, co if cn == "co" else 1, ho, wo, device=DEV, dtype=torch.float64)
    nm = torch.where(nm > 0.3, nm, torch.zeros_like(nm)).to(dtype)
    gr, gb = CC.partial_conv_epilogue_backward(go, gs, nm, True)
    assert gr.dtype == dtype and gb.dtype == dtype and gb.shape == (co,)
    if go_layout == "channels_last" and not go.is_contiguous():
        assert gr.is_contiguous(memory_format=torch.channels_last)
    close(gr, go.double() * gs.double(), dtype, "grad_raw")
    close(gb, (go.double() * nm.double()).sum(dim=(0, 2, 3)), dtype, "grad_bias")
    # deterministic: the same bits every run
    gr2, gb2 = CC.partial_conv_epilogue_backward(go, gs, nm, True)
    assert torch.equal(gb, gb2) and torch.equal(gr, gr2)
    # a channels_last new mask (the forward's for channels_last raw) is read in place: the same bits
    _, gb4 = CC.partial_conv_epilogue_backward(go, gs, nm.contiguous(memory_format=torch.channels_last), True)
    assert torch.equal(gb4, gb)
    gr3, gb3 = CC.partial_conv_epilogue_backward(go, gs, torch.empty(0, device=DEV), False)
    assert gb3 is None and torch.equal(gr3, gr)


def test_epilogue_empty_and_errors():
    raw, mask = torch.randn(0, 4, 6, 6, device=DEV), torch.ones(0, 1, 6, 6, device=DEV)
    out, nm, gs = CC.partial_conv_epilogue_forward(raw, mask, None, 3, 3, 1, 1, 1, 1, 1, 1, 9.0, False)
    assert out.shape == raw.shape and nm.shape == (0, 1, 6, 6) and gs.shape == (0, 1, 6, 6)
    gr, gb = CC.partial_conv_epilogue_backward(torch.randn(2, 3, 0, 4, device=DEV),
                                               torch.ones(2, 1, 0, 4, device=DEV),
                                               torch.ones(2, 1, 0, 4, device=DEV), True)
    assert gr.shape == (2, 3, 0, 4) and torch.equal(gb, torch.zeros(3, device=DEV))
    raw, mask = torch.randn(2, 4, 6, 6, device=DEV), torch.ones(2, 1, 6, 6, device=DEV)
    with pytest.raises(RuntimeError, match="bias"):
        CC.partial_conv_epilogue_forward(raw, mask, torch.randn(5, device=DEV), 3, 3, 1, 1, 1, 1, 1, 1, 9.0, False)
    with pytest.raises(RuntimeError, match="raw"):
        CC.partial_conv_epilogue_forward(raw[0], mask, None, 3, 3, 1, 1, 1, 1, 1, 1, 9.0, False)
    with pytest.raises(RuntimeError, match="mask"):
        CC.partial_conv_epilogue_forward(raw, mask.cpu(), None, 3, 3, 1, 1, 1, 1, 1, 1, 9.0, False)
    with pytest.raises(RuntimeError, match="raw Ho"):
        CC.partial_conv_epilogue_forward(raw, mask, None, 3, 3, 1, 1, 0, 0, 1, 1, 9.0, False)
    with pytest.raises(RuntimeError, match="grad_scale"):
        CC.partial_conv_epilogue_backward(raw, torch.ones(2, 1, 6, 6, device=DEV, dtype=torch.float64), mask, False)


# ------------------------------------------------------------------ partial conv: the public op

@pytest.mark.parametrize("dtype", DTYPES, ids=DT_IDS)
@pytest.mark.parametrize("x_layout", ["nchw", "channels_last"])
@pytest.mark.parametrize("cfg", [
    dict(stride=1, padding=1, dilation=1, groups=1, multi_channel=False, bias=True, soft=False, k=3),
    dict(stride=2, padding=2, dilation=1, groups=1, multi_channel=False, bias=True, soft=True, k=5),
    dict(stride=1, padding=2, dilation=2, groups=2, multi_channel=True, bias=True, soft=True, k=3),
    dict(stride=(2, 1), padding=(3, 1), dilation=(1, 2), groups=1, multi_channel=True, bias=False, soft=False, k=7),
], ids=["k3", "k5s2soft", "dil2grp2multi", "k7mixed"])
def test_partial_conv_op(dtype, x_layout, cfg):
    B, cin, co, H, W = 2, 6, 10, 21, 18
    k = cfg["k"]
    x = layout(rnd(B, cin, H, W, dtype=dtype), x_layout)
    mask = holey_mask(B, cin if cfg["multi_channel"] else 1, H, W, dtype, cfg["soft"])
    weight = rnd(co, cin // cfg["groups"], k, k, dtype=dtype, scale=0.3)
    bias = rnd(co, dtype=dtype) if cfg["bias"] else None
    kw = {n: cfg[n] for n in ("stride", "padding", "dilation", "groups", "multi_channel")}

    leaves = [t.detach().requires_grad_(True) for t in ((x, weight, bias) if bias is not None else (x, weight))]
    with mdrnet_fast.use_backend("cuda"):
        out, nm = mdrnet_fast.ops.partial_conv2d(leaves[0], mask, leaves[1], leaves[2] if bias is not None else None,
                                                 **kw)
        grads = proj_grads(out, leaves)
    rleaves = [t.detach().double().requires_grad_(True) for t in leaves]
    r_out, r_nm = R.partial_conv2d(rleaves[0], mask.double(), rleaves[1], rleaves[2] if bias is not None else None,
                                   **kw)
    r_grads = proj_grads(r_out, rleaves)
    assert out.dtype == dtype and fmt_of(out) == fmt_of(x)
    close(out, r_out, dtype, "out", OP_TOL)
    close(nm, r_nm, dtype, "new_mask", OP_TOL)
    for name, g, rg in zip(("x", "weight", "bias"), grads, r_grads):
        close(g, rg, dtype, f"grad {name}", OP_TOL)


def test_gated_conv_with_mask_op():
    """gated_conv2d with a mask: the partial-conv epilogue followed by the gated activation, both cuda."""
    x, w, b = rnd(2, 4, 15, 17, dtype=torch.float32), rnd(12, 4, 3, 3, dtype=torch.float32), rnd(12, dtype=torch.float32)
    mask = holey_mask(2, 1, 15, 17, torch.float32, soft=True)
    leaves = [t.detach().requires_grad_(True) for t in (x, w, b)]
    with mdrnet_fast.use_backend("cuda"):
        out, nm = mdrnet_fast.ops.gated_conv2d(*leaves, 1, 1, 1, 1, "elu", 0.2, mask)
        grads = proj_grads(out, leaves)
    rleaves = [t.detach().double().requires_grad_(True) for t in leaves]
    r_out, r_nm = R.gated_conv2d(*rleaves, 1, 1, 1, 1, "elu", 0.2, mask.double())
    r_grads = proj_grads(r_out, rleaves)
    close(out, r_out, torch.float32, "out", OP_TOL)
    close(nm, r_nm, torch.float32, "new_mask", OP_TOL)
    for g, rg in zip(grads, r_grads):
        close(g, rg, torch.float32, "grad", OP_TOL)


# ------------------------------------------------------------------ gated activation

ACTS = ["elu", "leaky_relu", "relu", "none"]
# (B, C, H, W) of the output: C*H*W and C both odd (no vector path), both multiples of 8 (vector path)
GATED_SHAPES = [(2, 3, 7, 5), (2, 8, 4, 8), (1, 1, 1, 1), (3, 40, 9, 11)]


def misaligned(t):
    """t's values, contiguous, but starting one element into its storage (no 16-byte alignment)."""
    flat = torch.empty(t.numel() + 1, device=t.device, dtype=t.dtype)
    v = flat[1:].view(t.shape)
    v.copy_(t)
    return v


@pytest.mark.parametrize("dtype", DTYPES, ids=DT_IDS)
@pytest.mark.parametrize("act", ACTS)
@pytest.mark.parametrize("y_layout", LAYOUTS + ["misaligned"])
@pytest.mark.parametrize("shape", GATED_SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_gated_activation(dtype, act, y_layout, shape):
    B, C, H, W = shape
    y = rnd(B, 2 * C, H, W, dtype=dtype, scale=3.0)
    y = misaligned(y) if y_layout == "misaligned" else layout(y, y_layout)
    slope = 0.13
    leaf = y.detach().requires_grad_(True)
    out = torch.ops.mdrnet_fast.gated_activation(leaf, act, slope, "cuda")
    (gy,) = proj_grads(out, [leaf])
    rleaf = y.detach().double().requires_grad_(True)
    r_out = R.gated_activation(rleaf, act, slope)
    (r_gy,) = proj_grads(r_out, [rleaf])
    assert out.dtype == dtype and gy.dtype == dtype
    assert fmt_of(out) == fmt_of(y) and fmt_of(gy) == fmt_of(y)
    close(out, r_out, dtype, "out")
    close(gy, r_gy, dtype, "grad_y")


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.float16], ids=["fp64", "fp32", "fp16"])
@pytest.mark.parametrize("go_layout", LAYOUTS)
@pytest.mark.parametrize("y_layout", ["nchw", "channels_last"])
def test_gated_activation_backward_mixed_layouts(dtype, go_layout, y_layout):
    """grad_out in another layout than y (and another dtype): the strided path, output in y's format."""
    B, C, H, W = 2, 6, 5, 7
    y = layout(rnd(B, 2 * C, H, W, dtype=dtype, scale=3.0), y_layout)
    go = layout(rnd(B, C, H, W, dtype=torch.float32), go_layout)
    gy = CC.gated_activation_backward(go, y, "elu", 0.2)
    rleaf = y.detach().double().requires_grad_(True)
    (r_gy,) = torch.autograd.grad(R.gated_activation(rleaf, "elu", 0.2), [rleaf], go.to(dtype).double())
    assert gy.dtype == dtype and fmt_of(gy) == fmt_of(y)
    close(gy, r_gy, dtype, "grad_y")


def test_gated_activation_special_values_and_errors():
    y = torch.tensor([0.0, -0.0, float("nan"), -200.0, 200.0, 1.0, -1.0, 0.5], device=DEV).view(1, 8, 1, 1)
    for act in ACTS:
        out = CC.gated_activation_forward(y, act, 0.2)
        ref = R.gated_activation(y.double(), act, 0.2)
        assert torch.equal(torch.isnan(out), torch.isnan(ref)), act
        m = ~torch.isnan(ref)
        torch.testing.assert_close(out[m].double(), ref[m], rtol=1e-6, atol=1e-7)
    assert CC.gated_activation_forward(torch.randn(0, 4, 3, 3, device=DEV), "elu", 0.2).shape == (0, 2, 3, 3)
    with pytest.raises(RuntimeError, match="activation"):
        CC.gated_activation_forward(torch.randn(1, 4, 3, 3, device=DEV), "gelu", 0.2)
    with pytest.raises(RuntimeError, match="even"):
        CC.gated_activation_forward(torch.randn(1, 3, 3, 3, device=DEV), "elu", 0.2)
    with pytest.raises(RuntimeError, match="grad_out"):
        CC.gated_activation_backward(torch.randn(1, 3, 3, 3, device=DEV), torch.randn(1, 4, 3, 3, device=DEV),
                                     "elu", 0.2)
    with pytest.raises(RuntimeError, match="y must be a CUDA tensor"):
        CC.gated_activation_forward(torch.randn(1, 4, 3, 3), "elu", 0.2)


# ------------------------------------------------------------------ SPADE

SPADE_SHAPES = [(2, 37, 13, 11), (3, 5, 1, 1), (1, 64, 33, 40), (2, 3, 70, 70)]


@pytest.mark.parametrize("dtype", DTYPES, ids=DT_IDS)
@pytest.mark.parametrize("x_layout", LAYOUTS)
@pytest.mark.parametrize("shape", SPADE_SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_spade(dtype, x_layout, shape):
    x = layout(rnd(*shape, dtype=dtype, scale=2.0, offset=3.0), x_layout)
    gamma = layout(rnd(*shape, dtype=dtype, scale=0.5), x_layout)
    beta = layout(rnd(*shape, dtype=dtype), x_layout)
    leaves = [t.detach().requires_grad_(True) for t in (x, gamma, beta)]
    with mdrnet_fast.use_backend("cuda"):
        out = mdrnet_fast.ops.spade_modulate(*leaves, eps=1e-5)
        grads = proj_grads(out, leaves)
    rleaves = [t.detach().double().requires_grad_(True) for t in (x, gamma, beta)]
    r_out = R.spade_modulate(*rleaves, eps=1e-5)
    r_grads = proj_grads(r_out, rleaves)
    assert out.dtype == dtype and fmt_of(out) == fmt_of(x)
    close(out, r_out, dtype, "out")
    for name, g, rg in zip(("x", "gamma", "beta"), grads, r_grads):
        if name == "x" and shape[2] * shape[3] == 1:
            # a 1x1 plane: xhat = 0 whatever x is, so grad x is exactly 0; the reference's is rounding noise
            # amplified by rstd = 1/sqrt(eps), which no relative bound can follow (an fma in the kernel once
            # gave such noise too: dxhat must round the same way in both of its passes)
            assert torch.equal(g, torch.zeros_like(g)), "grad x of a 1x1 plane must be exactly 0"
            continue
        close(g, rg, dtype, f"grad {name}")


@pytest.mark.parametrize("dtype", DTYPES, ids=DT_IDS)
@pytest.mark.parametrize("x_layout", ["nchw", "channels_last"])
def test_spade_statistics(dtype, x_layout):
    """mean / rstd against var_mean in float64, with |mean| >> std (the two-pass variance)."""
    x = layout(rnd(2, 37, 20, 30, dtype=dtype, scale=0.5, offset=100.0), x_layout)
    g, b = torch.zeros_like(x), torch.zeros_like(x)
    out, mean, rstd = CC.spade_modulate_forward(x, g, b, 1e-5)
    var, mu = torch.var_mean(x.double(), dim=(2, 3), unbiased=False)
    acc = torch.float64 if dtype == torch.float64 else torch.float32
    assert mean.dtype == acc and rstd.dtype == acc and mean.shape == (2, 37)
    close(mean, mu, dtype, "mean")
    close(rstd, 1 / torch.sqrt(var + 1e-5), dtype if dtype == torch.float64 else torch.float32, "rstd",
          {**TOL, torch.float32: 1e-4})  # fp16/bf16 inputs are exact in fp32; rstd of a std-0.5 plane at 100


@pytest.mark.parametrize("needs", [(True, False, False), (False, True, False), (False, False, True),
                                   (True, True, True), (False, True, True)])
@pytest.mark.parametrize("layouts", [("nchw", "nchw", "nchw"), ("channels_last", "nchw", "strided"),
                                     ("nchw", "channels_last", "channels_last"), ("strided", "strided", "nchw")])
def test_spade_backward_needs_and_layouts(needs, layouts):
    """Only the wanted gradients (None otherwise), each in its tensor's output format; mixed layouts."""
    shape = (2, 7, 9, 10)
    x = layout(rnd(*shape, dtype=torch.float32), layouts[0])
    gamma = layout(rnd(*shape, dtype=torch.float32), layouts[1])
    go = layout(rnd(*shape, dtype=torch.float32), layouts[2])
    beta = torch.zeros(shape, device=DEV)
    _, mean, rstd = CC.spade_modulate_forward(x, gamma, beta, 1e-5)
    gx, gg, gb = CC.spade_modulate_backward(go, x, gamma, mean, rstd, *needs)
    rleaves = [t.detach().double().requires_grad_(True) for t in (x, gamma, beta)]
    r_grads = torch.autograd.grad(R.spade_modulate(*rleaves, eps=1e-5), rleaves, go.double())
    for name, got, ref, need, like in zip(("x", "gamma", "beta"), (gx, gg, gb), r_grads, needs, (x, gamma, go)):
        if not need:
            assert got is None, name
            continue
        assert fmt_of(got) == fmt_of(like), name
        close(got, ref, torch.float32, f"grad {name}")
    assert CC.spade_modulate_backward(go, x, gamma, mean, rstd, False, False, False) == [None, None, None]


def test_spade_broadcast_grad_and_empty_and_errors():
    x = rnd(2, 5, 6, 7, dtype=torch.float32)
    gamma, beta = rnd(2, 5, 6, 7, dtype=torch.float32), rnd(2, 5, 6, 7, dtype=torch.float32)
    _, mean, rstd = CC.spade_modulate_forward(x, gamma, beta, 1e-5)
    go = torch.ones((), device=DEV).expand(2, 5, 6, 7)  # what out.sum() hands back
    gx, gg, gb = CC.spade_modulate_backward(go, x, gamma, mean, rstd, True, True, True)
    rleaves = [t.detach().double().requires_grad_(True) for t in (x, gamma, beta)]
    r = torch.autograd.grad(R.spade_modulate(*rleaves, eps=1e-5).sum(), rleaves)
    close(gg, r[1], torch.float32, "grad gamma")
    close(gb, r[2], torch.float32, "grad beta")
    assert (gx.double() - r[0]).abs().max() < 1e-4  # ~0 up to rounding: compared absolutely
    out, mean, rstd = CC.spade_modulate_forward(*(torch.randn(0, 3, 4, 4, device=DEV) for _ in range(3)), 1e-5)
    assert out.shape == (0, 3, 4, 4) and mean.shape == (0, 3)
    with pytest.raises(RuntimeError, match="gamma"):
        CC.spade_modulate_forward(x, gamma[:, :3], beta, 1e-5)
    with pytest.raises(RuntimeError, match="beta"):
        CC.spade_modulate_forward(x, gamma, beta.cpu(), 1e-5)
    with pytest.raises(RuntimeError, match="eps"):
        CC.spade_modulate_forward(x, gamma, beta, 0.0)
    with pytest.raises(RuntimeError, match="mean"):
        CC.spade_modulate_backward(x, x, gamma, mean[:1], rstd, True, False, False)
