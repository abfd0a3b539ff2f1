"""16-bit end to end (issue 15, item 2): every kernel family's triton and cuda path takes bf16 / fp16 inputs,
returns outputs and gradients in that dtype (no silent fp32 outputs), accumulates in fp32 inside, and meets
flash-attention's error bound against an fp64 reference:

    err(fast, 16-bit inputs)  <=  2 * err(reference run in the same 16-bit dtype)  +  FLOOR[dtype]

err(t) = max|t - ref64| / max|ref64| per tensor (SPEC's relative measure), for every forward output and every
gradient. ref64 is the reference computed in fp64 on the *same* 16-bit-rounded inputs and upstream gradients, so
only the computation's error is measured, not the rounding of the inputs. The 16-bit baseline is what PyTorch
itself gives in that dtype: the public op with backend "reference" on the 16-bit tensors.

FLOOR is the dtype's unit roundoff u (bf16 2^-8, fp16 2^-11): the error of rounding the largest output once.
Every 16-bit output must be rounded, and where the reference's own error happens to be below a rounding (its
result exactly representable, lucky roundings, or a reference that computes in fp32 inside and rounds once at
the end, as region pooling, the memory, SPADE and the patch-attention reference do), 2x that error is less than
the last bit a correctly rounded but differently ordered computation may flip. Where the 16-bit reference is
not finite (the fp16 reference partial conv at windows with no valid pixel, see _check) there is no baseline and
SPEC's 16-bit bound (1e-2) applies; the fast outputs must be finite everywhere.

Classes:
* TestInterpreter (CPU tensors, TRITON_INTERPRET=1): backend "triton". fp16 runs the same 16-bit tl.dot path
  the GPU runs (partial conv, patch attention); bf16 is converted to fp32 in the kernels there (the interpreter
  has no bf16 arithmetic), but its host code, output dtypes and roundings are the GPU's.
* TestAutocast: under torch.autocast("cpu", bfloat16) the conv-like ops (partial / gated conv, patch attention)
  compute in bf16 and return bf16; region pooling / broadcast, the memory and SPADE follow their inputs' dtype.
* TestGPU (`gpu`): the same checks on CUDA tensors for the compiled triton kernels (TRITON_INTERPRET=0) and the
  cuda backend, plus larger sizes where the 16-bit tiles are full size:
  `TRITON_INTERPRET=0 pytest -m gpu tests/test_low_precision.py`.
"""
import pytest
import torch

import mdrnet_fast
from mdrnet_fast import ops
from mdrnet_fast._dispatch import backend_available, triton_interpreter

LOW = (torch.bfloat16, torch.float16)
LOW_IDS = ["bf16", "fp16"]
FLOOR = {torch.bfloat16: 2.0 ** -8, torch.float16: 2.0 ** -11}
INTERP = triton_interpreter()
TRITON_OK, TRITON_WHY = backend_available("triton")
CUDA_OK, CUDA_WHY = backend_available("cuda")


# ------------------------------------------------------------------ the cases: (inputs in fp64, fn, grad names)

def _pconv(gen, b=2, ci=4, co=6, h=7, w=9, mc=False, groups=1, stride=1, bias=True, soft=True, hole=False):
    x = torch.randn(b, ci, h, w, generator=gen, dtype=torch.float64)
    m = torch.rand(b, ci if mc else 1, h, w, generator=gen, dtype=torch.float64)
    mask = torch.where(m < 0.3, torch.zeros_like(m), m if soft else torch.ones_like(m))
    if hole:  # larger than the kernel: windows with no valid pixel give 0, never NaN (SPEC §1)
        mask[:, :, 1:6, 2:7] = 0
    weight = torch.randn(co, ci // groups, 3, 3, generator=gen, dtype=torch.float64) / (ci // groups * 3)
    inputs = dict(x=x, mask=mask, weight=weight)
    if bias:
        inputs["bias"] = torch.randn(co, generator=gen, dtype=torch.float64)

    def fn(x, mask, weight, bias=None):
        return ops.partial_conv2d(x, mask, weight, bias, stride, 1, 1, groups, mc)

    return inputs, fn, [k for k in ("x", "weight", "bias") if k in inputs]


def _gated(gen, masked, b=2, ci=3, co=4, h=6, w=7):
    x = torch.randn(b, ci, h, w, generator=gen, dtype=torch.float64)
    weight = torch.randn(2 * co, ci, 3, 3, generator=gen, dtype=torch.float64) / (ci * 3)
    bias = torch.randn(2 * co, generator=gen, dtype=torch.float64) * 0.5
    inputs = dict(x=x, weight=weight, bias=bias)
    if masked:
        inputs["mask"] = (torch.rand(b, 1, h, w, generator=gen) > 0.3).double()

    def fn(x, weight, bias, mask=None):
        out = ops.gated_conv2d(x, weight, bias, 1, 1, 1, 1, "elu", 0.2, mask=mask)
        return out if isinstance(out, tuple) else (out,)

    return inputs, fn, ["x", "weight", "bias"]


def _seg(gen, kind, b, n, h, w):
    if kind == "labels":
        lab = torch.randint(0, n, (b, h, w), generator=gen)
        lab[lab == n - 1] = 0  # an absent class: zero codes, never NaN
        return lab
    seg = torch.rand(b, n, h, w, generator=gen, dtype=torch.float64)
    seg[:, n // 2] = 0
    return seg


def _pool(gen, kind, b=2, c=5, h=6, w=7, n=4):
    inputs = dict(feat=torch.randn(b, c, h, w, generator=gen, dtype=torch.float64), seg=_seg(gen, kind, b, n, h, w))
    return inputs, (lambda feat, seg: (ops.region_avg_pool(feat, seg, n),)), ["feat"]


def _broadcast(gen, kind, b=2, c=5, h=6, w=7, n=4):
    inputs = dict(codes=torch.randn(b, n, c, generator=gen, dtype=torch.float64), seg=_seg(gen, kind, b, n, h, w))
    return inputs, (lambda codes, seg: (ops.region_broadcast(codes, seg, n),)), ["codes"]


def _read(gen, b=2, n=3, m=7, c=10):
    inputs = dict(q=torch.randn(b, n, c, generator=gen, dtype=torch.float64),
                  mem=torch.randn(n, m, c, generator=gen, dtype=torch.float64))
    return inputs, (lambda q, mem: (ops.memory_read(q, mem, 0.5),)), ["q"]


def _update(gen, b=5, n=3, m=7, c=10):
    inputs = dict(mem=torch.randn(n, m, c, generator=gen, dtype=torch.float64),
                  q=torch.randn(b, n, c, generator=gen, dtype=torch.float64),
                  v=torch.randn(b, n, c, generator=gen, dtype=torch.float64),
                  present=torch.rand(b, n, generator=gen) > 0.2)

    def fn(mem, q, v, present):
        mem = mem.clone()
        slots = ops.memory_update_(mem, q, v, present, 0.75)
        return mem, slots

    return inputs, fn, []


def _attention(gen, p, kind, b=2, ck=3, cv=4, h=9, w=11):
    theta, phi = (torch.randn(b, ck, h, w, generator=gen, dtype=torch.float64) for _ in range(2))
    g = torch.randn(b, cv, h, w, generator=gen, dtype=torch.float64)
    m = torch.rand(b, 1, h, w, generator=gen, dtype=torch.float64)
    mask = (m >= 0.3).double() if kind == "hard" else torch.where(m > 0.6, torch.ones_like(m), m)
    inputs = dict(theta=theta, phi=phi, g=g, mask=mask)
    return inputs, (lambda theta, phi, g, mask: (ops.masked_patch_attention(theta, phi, g, mask, p),)), \
        ["theta", "phi", "g"]


def _spade(gen, b=2, c=5, h=6, w=7):
    x = torch.randn(b, c, h, w, generator=gen, dtype=torch.float64) * 2 + 3  # |mean| > std
    gamma, beta = (torch.randn(b, c, h, w, generator=gen, dtype=torch.float64) * 0.5 for _ in range(2))
    return dict(x=x, gamma=gamma, beta=beta), (lambda x, gamma, beta: (ops.spade_modulate(x, gamma, beta),)), \
        ["x", "gamma", "beta"]


CASES = {
    "partial_conv2d": lambda g: _pconv(g),
    "partial_conv2d-hole": lambda g: _pconv(g, hole=True),
    "partial_conv2d-multichannel-groups-s2": lambda g: _pconv(g, mc=True, groups=2, stride=2, bias=False, soft=False),
    "gated_conv2d": lambda g: _gated(g, masked=False),
    "gated_partial_conv2d": lambda g: _gated(g, masked=True),
    "region_pool-labels": lambda g: _pool(g, "labels"),
    "region_pool-soft": lambda g: _pool(g, "soft"),
    "region_broadcast-labels": lambda g: _broadcast(g, "labels"),
    "region_broadcast-soft": lambda g: _broadcast(g, "soft"),
    "memory_read": lambda g: _read(g),
    "memory_update": lambda g: _update(g),
    "patch_attention-p2": lambda g: _attention(g, 2, "hard"),
    "patch_attention-p1": lambda g: _attention(g, 1, "hard"),
    "patch_attention-p3-soft": lambda g: _attention(g, 3, "soft"),
    "spade_modulate": lambda g: _spade(g),
}

# larger, for the GPU only: full-size 16-bit tiles (patch attention: d = 32 * 2^2 = 128, N = 16 * 16 = 256)
GPU_CASES = {
    "partial_conv2d-32x64": lambda g: _pconv(g, b=2, ci=32, co=64, h=24, w=24),
    "gated_partial_conv2d-32x32": lambda g: _gated(g, masked=True, b=2, ci=32, co=32, h=24, w=24),
    "region_pool-labels-big": lambda g: _pool(g, "labels", b=2, c=64, h=48, w=48, n=14),
    "memory_read-big": lambda g: _read(g, b=4, n=14, m=128, c=256),
    "patch_attention-d128": lambda g: _attention(g, 2, "hard", b=2, ck=32, cv=32, h=32, w=32),
    "spade_modulate-big": lambda g: _spade(g, b=2, c=32, h=32, w=32),
}


# ------------------------------------------------------------------ running and comparing

def _run(case, backend, dtype, device, seed):
    """(outputs, gradients, leaves) of one case run with `backend` on inputs rounded to `dtype` (then converted to
    fp64 when dtype is fp64: the reference's inputs are the 16-bit values). The upstream gradients are fixed
    random values, rounded to the low dtype too."""
    low, inputs_fn = case
    inputs, fn, grad_names = inputs_fn(torch.Generator().manual_seed(seed))
    leaves = {}
    for k, v in inputs.items():
        if v.is_floating_point():
            v = v.to(low).to(dtype)
        leaves[k] = v.to(device).requires_grad_(k in grad_names)
    with mdrnet_fast.use_backend(backend):
        outs = fn(**leaves)
        diff = [o for o in outs if o.requires_grad]
        gen = torch.Generator().manual_seed(seed + 1)
        gos = [torch.randn(o.shape, generator=gen, dtype=torch.float64).to(low).to(device=device, dtype=o.dtype)
               for o in diff]
        grads = torch.autograd.grad(diff, [leaves[k] for k in grad_names], gos) if diff else ()
    return [o.detach() for o in outs], list(grads), leaves


def _err(t, ref):
    t, ref = t.double(), ref.double()
    return ((t - ref).abs().max() / ref.abs().max().clamp_min(1e-6)).item() if t.numel() else 0.0


def _check(name, maker, backend, dtype, device="cpu", seed=0):
    case = (dtype, maker)
    fast_out, fast_grads, leaves = _run(case, backend, dtype, device, seed)
    ref_out, ref_grads, _ = _run(case, "reference", dtype, device, seed)
    r64_out, r64_grads, _ = _run(case, "reference", torch.float64, device, seed)
    report = []
    for what, fast, ref16, ref64 in ([(f"out{i}", *t) for i, t in enumerate(zip(fast_out, ref_out, r64_out))]
                                     + [(f"grad{i}", *t) for i, t in enumerate(zip(fast_grads, ref_grads, r64_grads))]):
        if not ref64.is_floating_point():  # the memory update's chosen slots: identical to the reference's
            assert torch.equal(fast.cpu(), ref16.cpu()), f"{name} {what}: slots differ from the reference's"
            continue
        # no silent fp32: outputs in the inputs' dtype, gradients in their leaves' dtype
        assert fast.dtype == dtype, f"{name} {what}: dtype {fast.dtype}, expected {dtype}"
        assert fast.shape == ref64.shape and torch.isfinite(fast).all(), f"{name} {what}: shape or non-finite"
        e_fast, e_ref = _err(fast, ref64), _err(ref16, ref64)
        report.append(f"{what} {e_fast:.2e} (ref {e_ref:.2e})")
        bound = 2 * e_ref + FLOOR[dtype]
        assert e_fast <= bound, (f"{name} {backend} {dtype} {what}: error {e_fast:.3g} > 2 x {e_ref:.3g} + "
                                 f"{FLOOR[dtype]:.3g} (the {dtype} reference's error, the rounding floor)")
    assert all(gr.dtype == dtype for gr in fast_grads)
    return report


# ------------------------------------------------------------------ interpreter (CPU tensors)

@pytest.mark.triton_interp
@pytest.mark.skipif(not (TRITON_OK and INTERP), reason=f"needs the triton backend under TRITON_INTERPRET=1 "
                                                       f"({TRITON_WHY or 'TRITON_INTERPRET is off'})")
class TestInterpreter:
    @pytest.mark.parametrize("dtype", LOW, ids=LOW_IDS)
    @pytest.mark.parametrize("name", list(CASES))
    def test_within_twice_torch_low_precision_error(self, name, dtype):
        _check(name, CASES[name], "triton", dtype)


# ------------------------------------------------------------------ autocast

def _check_autocast(backend, device, dtype):
    """Under torch.autocast(device, bfloat16), with `dtype` inputs: each op's output dtype, and gradients in their
    leaves' dtypes. Conv-like ops follow autocast (ops/_checks.autocast_dtype): operands cast to bf16, output
    bf16. Region pooling / broadcast, the memory and SPADE compute in their inputs' dtype (fp32 statistics and
    accumulation inside either way)."""
    gen = torch.Generator().manual_seed(3)

    def leaf(*shape, scale=1.0):
        return (torch.randn(*shape, generator=gen) * scale).to(device=device, dtype=dtype).requires_grad_(True)

    mask = (torch.rand(2, 1, 6, 7, generator=gen) > 0.3).to(device=device, dtype=dtype)
    labels = torch.randint(0, 3, (2, 6, 7), generator=gen).to(device)
    mem = torch.randn(3, 4, 5, generator=gen).to(device=device, dtype=dtype)
    low = torch.bfloat16
    calls = [
        ("partial_conv2d", lambda x, w, b: ops.partial_conv2d(x, mask, w, b, 1, 1)[0],
         (leaf(2, 3, 6, 7), leaf(4, 3, 3, 3, scale=0.3), leaf(4)), low),
        ("gated_conv2d", lambda x, w, b: ops.gated_conv2d(x, w, b, 1, 1),
         (leaf(2, 3, 6, 7), leaf(4, 3, 3, 3, scale=0.3), leaf(4)), low),
        ("gated_partial_conv2d", lambda x, w, b: ops.gated_conv2d(x, w, b, 1, 1, mask=mask)[0],
         (leaf(2, 3, 6, 7), leaf(4, 3, 3, 3, scale=0.3), leaf(4)), low),
        ("masked_patch_attention", lambda t, p, g: ops.masked_patch_attention(t, p, g, mask, 2),
         (leaf(2, 3, 6, 7), leaf(2, 3, 6, 7), leaf(2, 4, 6, 7)), low),
        ("region_avg_pool", lambda f: ops.region_avg_pool(f, labels, 3), (leaf(2, 5, 6, 7),), dtype),
        ("region_broadcast", lambda c: ops.region_broadcast(c, labels, 3), (leaf(2, 3, 5),), dtype),
        ("memory_read", lambda q: ops.memory_read(q, mem), (leaf(2, 3, 5),), dtype),
        ("spade_modulate", lambda x, g, b: ops.spade_modulate(x, g, b),
         (leaf(2, 5, 6, 7), leaf(2, 5, 6, 7, scale=0.3), leaf(2, 5, 6, 7, scale=0.3)), dtype),
    ]
    for name, fn, leaves, want in calls:
        with mdrnet_fast.use_backend(backend), torch.autocast(device, dtype=torch.bfloat16):
            out = fn(*leaves)
            assert out.dtype == want, f"{name} under autocast with {dtype} inputs: {out.dtype}, expected {want}"
            grads = torch.autograd.grad(out.float().square().sum(), leaves)
        for t, gr in zip(leaves, grads):
            assert gr.dtype == t.dtype and torch.isfinite(gr).all(), f"{name}: gradient {gr.dtype} for {t.dtype}"


@pytest.mark.triton_interp
@pytest.mark.skipif(not (TRITON_OK and INTERP), reason="needs the triton backend under TRITON_INTERPRET=1")
class TestAutocast:
    @pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
    def test_output_dtypes(self, dtype):
        _check_autocast("triton", "cpu", dtype)


# ------------------------------------------------------------------ GPU: compiled triton and the cuda backend

def _gpu_skip(backend):
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    if backend == "triton" and (INTERP or not TRITON_OK):
        pytest.skip(f"needs the compiled triton backend (TRITON_INTERPRET=0): {TRITON_WHY or 'interpreter on'}")
    if backend == "cuda" and not CUDA_OK:
        pytest.skip(f"cuda backend unavailable: {CUDA_WHY}")


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["triton", "cuda"])
class TestGPU:
    @pytest.mark.parametrize("dtype", LOW, ids=LOW_IDS)
    @pytest.mark.parametrize("name", list(CASES) + list(GPU_CASES))
    def test_within_twice_torch_low_precision_error(self, backend, name, dtype):
        _gpu_skip(backend)
        _check(name, {**CASES, **GPU_CASES}[name], backend, dtype, device="cuda")

    @pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=["fp32", "bf16", "fp16"])
    def test_autocast_output_dtypes(self, backend, dtype):
        _gpu_skip(backend)
        _check_autocast(backend, "cuda", dtype)
