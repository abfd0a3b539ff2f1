"""The C++ gated-activation and SPADE kernels of the `cpu` backend, called directly: accuracy over the
whole input range, every layout the kernels take natively (and the output layout the op's fake
declares), broadcast gradients, the need_* combinations, numerical stability and determinism."""
import pytest
import torch
import torch.nn.functional as F

import mdrnet_fast
from mdrnet_fast.composite import gated_activation as comp_gated
from mdrnet_fast.composite import spade as comp_spade
from mdrnet_fast.composite._common import out_format

pytestmark = pytest.mark.skipif(not mdrnet_fast.backends()["cpu"]["available"], reason="C++ extension not built")

CL = torch.channels_last
ACTS = ["elu", "leaky_relu", "relu", "none"]


def _C():
    from mdrnet_fast import _C as ext

    return ext


def _rel(a, b):
    a, b = a.double(), b.double()
    return ((a - b).abs().max() / b.abs().max().clamp_min(1e-30)).item()


def _exact_gated(y, act, slope):
    """act(f) * sigmoid(g) and its gradient pieces in float64, in the stable forms."""
    f, g = y.double().chunk(2, dim=1)
    e = torch.exp(-g.abs())
    s = torch.where(g < 0, e / (1 + e), 1 / (1 + e))
    ds = e / (1 + e) ** 2
    if act == "elu":
        a, da = torch.where(f > 0, f, torch.expm1(f)), torch.where(f > 0, torch.ones_like(f), torch.exp(f))
    elif act == "leaky_relu":
        a, da = torch.where(f > 0, f, slope * f), torch.where(f > 0, 1.0, slope) + 0 * f
    elif act == "relu":
        a, da = f.clamp_min(0), (f > 0).double()
    else:
        a, da = f, torch.ones_like(f)
    return a, da, s, ds


# ---------------------------------------------------------------- gated activation

@pytest.mark.parametrize("act", ACTS)
def test_gated_fp32_relative_accuracy_over_the_whole_range(act):
    """Every element within a few ulp of the exact value, relatively: ELU near 0 (expm1), exp(f) for
    very negative f, sigmoid and sigmoid' for |g| up to 87 (no 1 - s cancellation)."""
    n = 1 << 16
    f = torch.cat([torch.linspace(-87, 20, n), torch.randn(n) * 1e-4, torch.randn(n)])
    g = torch.cat([torch.linspace(-87, 87, n), torch.randn(n) * 1e-4, torch.randn(n) * 5])
    y = torch.stack([f, g]).reshape(1, 2, 1, -1)
    go = torch.randn(1, 1, 1, y.shape[-1])
    a, da, s, ds = _exact_gated(y, act, 0.2)
    out = _C().gated_activation_forward(y, act, 0.2)
    gy = _C().gated_activation_backward(go, y, act, 0.2)
    for got, want in ((out, a * s), (gy[:, :1], go.double() * s * da), (gy[:, 1:], go.double() * a * ds)):
        m = want.abs() > 1e-35
        err = ((got.double() - want).abs() / want.abs())[m].max().item()
        assert err < 2e-6, err


def test_gated_special_values():
    """NaN, +-inf, +-0 and |g| far past the exp range give what torch gives in float32."""
    nan, inf = float("nan"), float("inf")
    f = torch.tensor([nan, 1.0, inf, -inf, 0.0, -0.0, 2.0, -100.0, -3.0])
    g = torch.tensor([1.0, nan, inf, -inf, 0.0, 200.0, -200.0, 3.0, -100.0])
    y = torch.stack([f, g]).reshape(1, 2, 1, -1)
    for act in ACTS:
        want = comp_gated.forward(y, act, 0.2)
        torch.testing.assert_close(_C().gated_activation_forward(y, act, 0.2), want, equal_nan=True, atol=1e-37, rtol=1e-6)
        go = torch.ones(1, 1, 1, y.shape[-1])
        fin = torch.isfinite(y).all(dim=1, keepdim=True).expand_as(y)  # the gradient at +-inf/NaN is a convention
        got, want = _C().gated_activation_backward(go, y, act, 0.2), comp_gated.backward(go, y, act, 0.2)
        torch.testing.assert_close(got[fin], want[fin], atol=1e-37, rtol=1e-6)


@pytest.mark.parametrize("act", ACTS)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("layout", ["contiguous", "channels_last", "noncontig"])
@pytest.mark.parametrize("shape", [(2, 6, 5, 7), (1, 2, 1, 1), (3, 130, 3, 2), (2, 10, 33, 17)])
def test_gated_matches_composite(act, dtype, layout, shape):
    y = torch.randn(*shape, dtype=torch.float64) * 3
    go = torch.randn(shape[0], shape[1] // 2, *shape[2:], dtype=torch.float64)
    if layout == "channels_last":
        y, go = y.contiguous(memory_format=CL), go.contiguous(memory_format=CL)
    elif layout == "noncontig":
        y, go = torch.cat([y, y], -1)[..., : shape[-1]], torch.cat([go, go], -1)[..., : shape[-1]]
    y, go = y.to(dtype), go.to(dtype)
    ref_dtype = torch.float64 if dtype == torch.float64 else torch.float32
    want = comp_gated.forward(y.to(ref_dtype), act, 0.2)
    want_g = comp_gated.backward(go.to(ref_dtype), y.to(ref_dtype), act, 0.2)
    out = _C().gated_activation_forward(y, act, 0.2)
    gy = _C().gated_activation_backward(go, y, act, 0.2)
    tol = {torch.float64: 1e-13, torch.float32: 2e-6, torch.bfloat16: 1e-2, torch.float16: 2e-3}[dtype]
    assert out.dtype == dtype and gy.dtype == dtype
    assert _rel(out, want) < tol and _rel(gy, want_g) < tol
    # the layout the op's fake declares
    assert out.stride() == torch.empty(out.shape, memory_format=out_format(y)).stride()
    assert gy.stride() == torch.empty(y.shape, memory_format=out_format(y)).stride()


def test_gated_grad_out_in_another_layout_or_broadcast():
    y = torch.randn(2, 8, 5, 6).contiguous(memory_format=CL)
    for go in (torch.randn(2, 4, 5, 6), torch.ones(1).expand(2, 4, 5, 6)):
        got = _C().gated_activation_backward(go, y, "elu", 0.2)
        want = comp_gated.backward(go, y, "elu", 0.2)
        assert got.is_contiguous(memory_format=CL)
        assert _rel(got, want) < 2e-6


def test_gated_checks_its_arguments():
    with pytest.raises(RuntimeError, match="even"):
        _C().gated_activation_forward(torch.randn(2, 3, 4, 4), "elu", 0.2)
    with pytest.raises(RuntimeError, match="activation"):
        _C().gated_activation_forward(torch.randn(2, 4, 4, 4), "gelu", 0.2)
    with pytest.raises(RuntimeError, match="grad_out"):
        _C().gated_activation_backward(torch.randn(2, 4, 4, 4), torch.randn(2, 4, 4, 4), "elu", 0.2)


# ---------------------------------------------------------------- SPADE

def _spade_inputs(shape, dtype, layout, offset=0.0, scale=1.0):
    x = torch.randn(*shape, dtype=torch.float64) * scale + offset
    g, b = torch.randn(*shape, dtype=torch.float64), torch.randn(*shape, dtype=torch.float64)
    ts = [x, g, b]
    if layout == "channels_last":
        ts = [t.contiguous(memory_format=CL) for t in ts]
    elif layout == "noncontig":
        ts = [torch.cat([t, t], -1)[..., : shape[-1]] for t in ts]
    return [t.to(dtype) for t in ts]


SPADE_SHAPES = [(2, 3, 7, 6), (1, 5, 1, 1), (2, 4, 40, 40), (1, 3, 130, 67), (2, 200, 9, 11)]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("layout", ["contiguous", "channels_last", "noncontig"])
@pytest.mark.parametrize("shape", SPADE_SHAPES)
def test_spade_matches_composite(dtype, layout, shape):
    x, g, b = _spade_inputs(shape, dtype, layout)
    acc = torch.float64 if dtype == torch.float64 else torch.float32
    out, mean, rstd = _C().spade_modulate_forward(x, g, b, 1e-5)
    w_out, w_mean, w_rstd = comp_spade.forward(x.to(acc), g.to(acc), b.to(acc), 1e-5)
    tol = {torch.float64: 1e-12, torch.float32: 5e-6, torch.bfloat16: 1e-2, torch.float16: 2e-3}[dtype]
    assert out.dtype == dtype and mean.dtype == acc and rstd.dtype == acc
    assert mean.shape == rstd.shape == shape[:2]
    assert _rel(out, w_out) < tol
    assert _rel(mean, w_mean) < tol and _rel(rstd, w_rstd) < tol
    assert out.stride() == torch.empty(shape, memory_format=out_format(x)).stride()
    go = torch.randn(*shape, dtype=torch.float64)
    if layout == "channels_last":
        go = go.contiguous(memory_format=CL)
    go = go.to(dtype)
    got = _C().spade_modulate_backward(go, x, g, mean, rstd, True, True, True)
    want = comp_spade.backward(go.to(acc), x.to(acc), g.to(acc), mean, rstd, True, True, True)
    for name, gr, w, like in zip(("gx", "ggamma", "gbeta"), got, want, (x, g, go)):
        assert gr.dtype == dtype, name
        assert _rel(gr, w) < tol, (name, _rel(gr, w))
        assert gr.stride() == torch.empty(shape, memory_format=out_format(like)).stride(), name


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("go_kind", ["dense", "other_layout", "ones_expanded", "bc11_expanded"])
@pytest.mark.parametrize("needs", [(True, True, True), (True, False, False), (False, True, False),
                                   (False, False, True), (True, False, True), (False, True, True)])
def test_spade_backward_grad_out_forms_and_needs(layout, go_kind, needs):
    shape = (2, 5, 9, 13)
    x, g, b = _spade_inputs(shape, torch.float64, layout)
    _, mean, rstd = _C().spade_modulate_forward(x, g, b, 1e-5)
    if go_kind == "dense":
        go = torch.randn(shape, dtype=torch.float64).contiguous(memory_format=out_format(x))
    elif go_kind == "other_layout":
        fmt = torch.contiguous_format if layout == "channels_last" else CL
        go = torch.randn(shape, dtype=torch.float64).contiguous(memory_format=fmt)
    elif go_kind == "ones_expanded":
        go = torch.ones((), dtype=torch.float64).expand(shape)
    else:
        go = torch.randn(2, 5, 1, 1, dtype=torch.float64).expand(shape)
    got = _C().spade_modulate_backward(go, x, g, mean, rstd, *needs)
    want = comp_spade.backward(go, x, g, mean, rstd, *needs)
    for need, gr, w, like in zip(needs, got, want, (x, g, go)):
        if not need:
            assert gr is None
            continue
        assert _rel(gr, w) < 1e-12
        assert gr.stride() == torch.empty(shape, memory_format=out_format(like)).stride()


def test_spade_gamma_beta_in_another_layout_than_x():
    shape = (2, 6, 8, 5)
    x = torch.randn(shape).contiguous(memory_format=CL)
    g, b = torch.randn(shape), torch.randn(shape)
    out, mean, rstd = _C().spade_modulate_forward(x, g, b, 1e-5)
    w_out, _, _ = comp_spade.forward(x, g, b, 1e-5)
    assert out.is_contiguous(memory_format=CL) and _rel(out, w_out) < 5e-6
    go = torch.randn(shape).contiguous(memory_format=CL)
    gx, gg, gb = _C().spade_modulate_backward(go, x, g, mean, rstd, True, True, True)
    w = comp_spade.backward(go, x, g, mean, rstd, True, True, True)
    assert gx.is_contiguous(memory_format=CL) and gg.is_contiguous() and gb.is_contiguous(memory_format=CL)
    assert max(_rel(a, c) for a, c in zip((gx, gg, gb), w)) < 5e-6


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_spade_statistics_are_stable_for_a_large_mean(layout):
    """x = 1e4 + N(0, 1): a one-pass sum of squares in float32 would lose every digit of the variance."""
    x, g, b = _spade_inputs((2, 4, 64, 64), torch.float32, layout, offset=1e4)
    out, mean, rstd = _C().spade_modulate_forward(x, g, b, 1e-5)
    xd = x.double()
    var, m = torch.var_mean(xd, dim=(2, 3), unbiased=False)
    assert _rel(mean, m) < 1e-7
    assert _rel(rstd, torch.rsqrt(var + 1e-5)) < 1e-5
    want = (xd - m[..., None, None]) * torch.rsqrt(var + 1e-5)[..., None, None] * (1 + g.double()) + b.double()
    assert _rel(out, want) < 1e-3  # x itself carries float32 rounding of 1e4 * 2^-24 ~ 1e-3 relative to std


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_spade_results_do_not_depend_on_the_thread_count(layout):
    x, g, b = _spade_inputs((2, 32, 48, 40), torch.float32, layout)
    go = torch.randn(x.shape).contiguous(memory_format=out_format(x))
    threads = torch.get_num_threads()
    runs = []
    try:
        for t in (1, 3):
            torch.set_num_threads(t)
            out, mean, rstd = _C().spade_modulate_forward(x, g, b, 1e-5)
            runs.append((out, mean, rstd, *_C().spade_modulate_backward(go, x, g, mean, rstd, True, True, True)))
    finally:
        torch.set_num_threads(threads)
    for a, c in zip(*runs):
        assert torch.equal(a, c)


def test_spade_checks_its_arguments():
    x = torch.randn(2, 3, 4, 4)
    with pytest.raises(RuntimeError, match="gamma"):
        _C().spade_modulate_forward(x, x[:, :2], x, 1e-5)
    with pytest.raises(RuntimeError, match="beta"):
        _C().spade_modulate_forward(x, x, x.double(), 1e-5)
    with pytest.raises(RuntimeError, match="eps"):
        _C().spade_modulate_forward(x, x, x, 0.0)
    with pytest.raises(RuntimeError, match="mean"):
        _C().spade_modulate_backward(x, x, x, torch.zeros(2, 4), torch.ones(2, 3), True, True, True)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_spade_low_precision_conversions_are_exact(dtype, layout):
    """float16/bfloat16 are widened and narrowed (round to nearest even) exactly as torch does: the
    output equals the same float32 arithmetic done by torch, then cast. Values span the whole range
    of the type (subnormals, overflow to inf)."""
    shape = (2, 3, 19, 21)
    big = 6e4 if dtype == torch.float16 else 1e38
    x = (torch.randn(shape) * torch.logspace(-8, 0, shape[-1])).to(dtype)
    g = (torch.randn(shape) * 3).to(dtype)
    b = (torch.randn(shape) * torch.logspace(-9, 0, shape[-1]) * big).to(dtype)
    if layout == "channels_last":
        x, g, b = (t.contiguous(memory_format=CL) for t in (x, g, b))
    out, mean, rstd = _C().spade_modulate_forward(x, g, b, 1e-5)
    xh = (x.float() - mean[..., None, None]) * rstd[..., None, None]
    want = (xh * (1 + g.float()) + b.float()).to(dtype)
    assert torch.equal(out, want)
    # grad_beta is grad_out itself: every bit pattern survives the widening and narrowing
    bits = torch.arange(-32768, 32768, dtype=torch.int32).to(torch.int16).view(dtype)
    go = bits.reshape(4, 2, 64, 128)
    xs = torch.randn(go.shape).to(dtype)
    _, m, r = _C().spade_modulate_forward(xs, xs, xs, 1e-5)
    gb = _C().spade_modulate_backward(go, xs, xs, m, r, False, False, True)[2]
    nan = go.isnan()
    assert torch.equal(gb.isnan(), nan) and torch.equal(gb[~nan].view(torch.int16), go[~nan].view(torch.int16))
