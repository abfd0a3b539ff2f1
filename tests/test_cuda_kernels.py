"""The `cuda` backend's CUDA C++ kernels (extension mdrnet_fast._C_cuda, csrc/cuda).

* Module section (runs everywhere): every `_C_cuda.NAME(` call of the Python wrappers is declared in
  csrc/cuda/ops_cuda.h and bound in csrc/cuda/register_cuda.cpp, every wrapper module is imported by
  mdrnet_fast/cuda_kernels/__init__.py; and, where mdrnet_fast._C_cuda is importable, it has every function.
* One GPU section per op (`pytest.mark.gpu`, skipped without a CUDA device and a built _C_cuda): parity
  with the reference in fp32/fp16/bf16/fp64 (SPEC tolerances), odd shapes, absent regions, channels_last,
  determinism, gradients through the ops with backend "cuda".

Sections: region pool / broadcast, memory read / update. (The partial-conv epilogue, gated activation and
SPADE kernels are tested in tests/test_cuda_epilogues.py.)
"""
import glob
import importlib
import os
import re

import pytest
import torch
import torch.nn.functional as F

import mdrnet_fast
from mdrnet_fast import ops
from mdrnet_fast import reference as R
from mdrnet_fast._dispatch import backend_available, get_kernel

from _util import assert_close as close

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
KERNEL_DIR = os.path.join(ROOT, "mdrnet_fast", "cuda_kernels")
F64 = torch.float64
DTYPES = [torch.float32, torch.float16, torch.bfloat16, torch.float64]
DTYPE_IDS = ["fp32", "fp16", "bf16", "fp64"]

CUDA_OK, CUDA_WHY = backend_available("cuda")


# ======================================================================= module (runs without a GPU)

def _wrapper_calls():
    """{function name: wrapper file} for every `_C_cuda.NAME(` call in mdrnet_fast/cuda_kernels/*.py."""
    calls = {}
    for path in sorted(glob.glob(os.path.join(KERNEL_DIR, "*.py"))):
        with open(path) as f:
            for name in re.findall(r"\b_C_cuda\.([A-Za-z_]\w*)\(", f.read()):
                calls[name] = os.path.basename(path)
    return calls


def _read(*parts):
    with open(os.path.join(ROOT, *parts)) as f:
        return f.read()


def test_wrappers_call_declared_and_bound_functions():
    calls = _wrapper_calls()
    assert {"region_pool_forward", "region_broadcast_forward", "memory_read_forward", "memory_read_backward",
            "memory_update_"} <= set(calls)
    header, bindings = _read("csrc", "cuda", "ops_cuda.h"), _read("csrc", "cuda", "register_cuda.cpp")
    for name, where in calls.items():
        assert re.search(rf"\b{name}\(", header), f"{where} calls _C_cuda.{name}, not declared in ops_cuda.h"
        assert f'm.def("{name}"' in bindings, f"{where} calls _C_cuda.{name}, not bound in register_cuda.cpp"


def test_every_wrapper_module_is_imported():
    init = _read("mdrnet_fast", "cuda_kernels", "__init__.py")
    for path in glob.glob(os.path.join(KERNEL_DIR, "*.py")):
        mod = os.path.splitext(os.path.basename(path))[0]
        if mod != "__init__":
            assert re.search(rf"\bimport\b.*\b{mod}\b", init), f"cuda_kernels/__init__.py does not import {mod}"


def test_built_module_has_every_function():
    try:
        mod = importlib.import_module("mdrnet_fast._C_cuda")
    except ImportError as exc:
        pytest.skip(f"mdrnet_fast._C_cuda not built here ({exc}); .ci/build_cuda builds and checks it")
    missing = [n for n in _wrapper_calls() if not hasattr(mod, n)]
    assert not missing, f"mdrnet_fast._C_cuda lacks {missing}"


# ======================================================================= GPU helpers

def layout(t, name):
    if name == "channels_last":
        return t.contiguous(memory_format=torch.channels_last)
    if name == "noncontig":
        return torch.cat([t, t], dim=-1)[..., : t.shape[-1]]
    return t.contiguous()


# ======================================================================= region pool / broadcast

def make_seg(kind, b, n, h, w, gen, device="cuda"):
    """Int labels (class n-1 absent), exactly one-hot float (some pixels in no class), soft weights
    (region n//2 absent); on CPU in fp64 for the reference, moved by the caller."""
    if kind in ("labels", "onehot", "blobs"):
        if kind == "blobs":  # long runs of one class, like a parsing map
            coarse = torch.randn(b, n, 3, 3, generator=gen, dtype=F64)
            lab = F.interpolate(coarse, size=(h, w), mode="bilinear", align_corners=False).argmax(1)
        else:
            lab = torch.randint(0, n, (b, h, w), generator=gen)
        if n > 1:
            lab[lab == n - 1] = 0
        if kind != "onehot":
            return lab.to(device)
        seg = F.one_hot(lab, n).permute(0, 3, 1, 2).to(F64).contiguous()
        seg[:, :, ::3, ::2] = 0
        return seg.to(device)
    seg = torch.rand(b, n, h, w, generator=gen, dtype=F64)
    seg[:, n // 2] = 0
    return seg.to(device)


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("seg_kind", ["labels", "blobs", "onehot", "soft"])
@pytest.mark.parametrize("fmt", ["contiguous", "channels_last", "noncontig"])
@pytest.mark.parametrize("shape", [(2, 37, 13, 29, 19), (1, 70, 45, 50, 14), (3, 5, 1, 1, 3)],
                         ids=["odd", "3splits", "1px"])
@pytest.mark.gpu
@pytest.mark.skipif(not CUDA_OK, reason=f"cuda backend unavailable: {CUDA_WHY}")
class TestRegionPoolGPU:

    def test_pool_and_broadcast_kernels(self, dtype, seg_kind, fmt, shape):
        b, c, h, w, n = shape
        gen = torch.Generator().manual_seed(sum(shape) * 10 + len(seg_kind))
        feat64 = torch.randn(b, c, h, w, generator=gen, dtype=F64)
        seg = make_seg(seg_kind, b, n, h, w, gen)
        seg_k = seg if not seg.is_floating_point() else seg.to(dtype)  # kernels take seg in any float dtype
        seg_ref = seg.cpu() if not seg.is_floating_point() else seg_k.cpu().double()
        feat = layout(feat64.to(dtype).cuda(), fmt)
        pool = get_kernel("region_pool.forward", "cuda")
        broadcast = get_kernel("region_broadcast.forward", "cuda")

        codes, area = pool(feat, seg_k, n, True)
        assert codes.dtype == dtype and codes.shape == (b, n, c) and codes.is_contiguous()
        assert area.dtype == (F64 if dtype == F64 else torch.float32) and area.shape == (b, n)
        fin = feat.cpu().double()
        weights = R.region_pool.seg_weights(seg_ref, n, (h, w), F64)
        close(codes.cpu(), R.region_avg_pool(fin, seg_ref, n), dtype, "codes")
        close(area.cpu(), weights.sum((2, 3)), dtype, "area")
        sums, area2 = pool(feat, seg_k, n, False)
        close(sums.cpu(), torch.einsum("bchw,bnhw->bnc", fin, weights), dtype, "sums")
        assert torch.equal(area, area2)
        # deterministic: bitwise the same on a second run
        codes2, _ = pool(feat, seg_k, n, True)
        assert torch.equal(codes, codes2)

        codes_in = torch.randn(b, n, c, generator=gen, dtype=F64).to(dtype).cuda()
        out = broadcast(codes_in, seg_k, n)
        assert out.dtype == dtype and out.shape == (b, c, h, w) and out.is_contiguous()
        close(out.cpu(), R.region_broadcast(codes_in.cpu().double(), seg_ref, n), dtype, "broadcast")

    def test_through_ops_with_gradients(self, dtype, seg_kind, fmt, shape):
        if fmt == "noncontig" or seg_kind == "blobs":
            pytest.skip("covered by the kernel test")
        b, c, h, w, n = shape
        gen = torch.Generator().manual_seed(7)
        feat64 = torch.randn(b, c, h, w, generator=gen, dtype=F64)
        seg = make_seg(seg_kind, b, n, h, w, gen)
        seg_in = seg if not seg.is_floating_point() else seg.to(dtype)
        feat = layout(feat64.to(dtype).cuda(), fmt).requires_grad_()
        codes_in = torch.randn(b, n, c, generator=gen, dtype=F64).to(dtype).cuda().requires_grad_()
        with mdrnet_fast.use_backend("cuda"):
            codes = ops.region_avg_pool(feat, seg_in, n)
            out = ops.region_broadcast(codes_in, seg_in, n)
        g1 = torch.randn(codes.shape, generator=gen, dtype=F64)
        g2 = torch.randn(out.shape, generator=gen, dtype=F64)
        gf, = torch.autograd.grad(codes, feat, g1.to(dtype).cuda())
        gc, = torch.autograd.grad(out, codes_in, g2.to(dtype).cuda())

        seg_r = seg_in.cpu() if not seg_in.is_floating_point() else seg_in.cpu().double()
        rf = feat.detach().cpu().double().requires_grad_()
        rc = codes_in.detach().cpu().double().requires_grad_()
        ref_codes = R.region_avg_pool(rf, seg_r, n)
        ref_out = R.region_broadcast(rc, seg_r, n)
        rgf, = torch.autograd.grad(ref_codes, rf, g1.to(dtype).double())
        rgc, = torch.autograd.grad(ref_out, rc, g2.to(dtype).double())
        close(codes.detach().cpu(), ref_codes.detach(), dtype, "codes")
        close(out.detach().cpu(), ref_out.detach(), dtype, "broadcast")
        close(gf.cpu(), rgf, dtype, "grad feat")
        close(gc.cpu(), rgc, dtype, "grad codes")


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA_OK, reason=f"cuda backend unavailable: {CUDA_WHY}")
class TestRegionPoolEdgesGPU:
    def kernels(self):
        return get_kernel("region_pool.forward", "cuda"), get_kernel("region_broadcast.forward", "cuda")

    @pytest.mark.parametrize("dtype", [torch.float32, F64], ids=["fp32", "fp64"])
    @pytest.mark.parametrize("seg_kind", ["labels", "soft"])
    def test_many_classes_take_several_class_chunks(self, dtype, seg_kind):
        # more classes than one block's shared memory holds (30 labels / 20 soft in fp32, fewer in fp64)
        b, c, h, w, n = 2, 33, 40, 31, 70
        gen = torch.Generator().manual_seed(3)
        feat = torch.randn(b, c, h, w, generator=gen, dtype=F64).to(dtype)
        seg = make_seg(seg_kind, b, n, h, w, gen, device="cpu")
        if seg.is_floating_point():
            seg = seg.to(dtype)
        pool, broadcast = self.kernels()
        seg_ref = seg.double() if seg.is_floating_point() else seg
        codes, area = pool(feat.cuda(), seg.cuda(), n, True)
        close(codes.cpu(), R.region_avg_pool(feat.double(), seg_ref, n), dtype, "codes")
        codes_in = torch.randn(b, n, c, generator=gen, dtype=F64).to(dtype)
        out = broadcast(codes_in.cuda(), seg.cuda(), n)
        close(out.cpu(), R.region_broadcast(codes_in.double(), seg_ref, n), dtype, "broadcast")

    def test_empty_inputs(self):
        pool, broadcast = self.kernels()
        lab = torch.zeros(0, 4, 5, dtype=torch.long, device="cuda")
        codes, area = pool(torch.randn(0, 3, 4, 5, device="cuda"), lab, 2, True)
        assert codes.shape == (0, 2, 3) and area.shape == (0, 2)
        lab = torch.randint(0, 2, (2, 4, 5), device="cuda")
        codes, area = pool(torch.randn(2, 0, 4, 5, device="cuda"), lab, 2, True)  # no channels: areas only
        assert codes.shape == (2, 2, 0)
        assert torch.equal(area.cpu(), F.one_hot(lab.cpu(), 2).sum((1, 2)).float())
        codes, area = pool(torch.randn(2, 3, 0, 5, device="cuda"), torch.zeros(2, 0, 5, dtype=torch.long,
                                                                               device="cuda"), 2, True)
        assert torch.equal(codes.cpu(), torch.zeros(2, 2, 3)) and torch.equal(area.cpu(), torch.zeros(2, 2))
        out = broadcast(torch.randn(2, 2, 0, device="cuda"), lab, 2)
        assert out.shape == (2, 0, 4, 5)

    def test_absent_region_is_zero_and_area_counts(self):
        pool, _ = self.kernels()
        lab = torch.zeros(1, 8, 8, dtype=torch.long, device="cuda")
        lab[:, :2] = 2  # class 1 absent
        codes, area = pool(torch.randn(1, 4, 8, 8, device="cuda"), lab, 3, True)
        assert torch.equal(codes[0, 1].cpu(), torch.zeros(4))
        assert area.cpu().tolist() == [[48.0, 0.0, 16.0]]

    def test_int32_labels_and_argument_checks(self):
        pool, broadcast = self.kernels()
        feat = torch.randn(2, 3, 4, 5, device="cuda")
        lab = torch.randint(0, 3, (2, 4, 5), device="cuda")
        a, _ = pool(feat, lab, 3, True)
        b, _ = pool(feat, lab.int(), 3, True)
        assert torch.equal(a, b)
        with pytest.raises(RuntimeError, match="feat must be a CUDA tensor"):
            pool(feat.cpu(), lab, 3, True)
        with pytest.raises(RuntimeError, match="seg labels must have shape"):
            pool(feat, lab[:, :2], 3, True)
        with pytest.raises(RuntimeError, match="float seg must have shape"):
            pool(feat, torch.rand(2, 2, 4, 5, device="cuda"), 3, True)
        with pytest.raises(RuntimeError, match="codes must have shape"):
            broadcast(torch.randn(2, 4, 3, device="cuda"), lab, 3)


# ======================================================================= memory read / update

def make_memory_case(B, n, m, C, seed, dtype=F64, n_dup=2, zero_q=True):
    """Memory with duplicated slots (exact ties), a query parallel to a duplicated slot, a zero query (its
    gradient is grad_qn / eps, ~1e8: it overflows fp16, so the low-precision read tests leave it out)."""
    g = torch.Generator().manual_seed(seed)
    mem = torch.randn(n, m, C, generator=g, dtype=F64)
    src = dst = 0
    for _ in range(n_dup):
        src, dst = torch.randint(0, m, (2,), generator=g).tolist()
        mem[:, dst] = mem[:, src]
    q = torch.randn(B, n, C, generator=g, dtype=F64)
    q[0] = mem[:, src] * torch.rand(n, 1, generator=g, dtype=F64).add(0.5)
    if zero_q:
        q[-1, 0] = 0
    v = torch.randn(B, n, C, generator=g, dtype=F64)
    present = torch.rand(B, n, generator=g) < 0.7
    return q.to(dtype), mem.to(dtype), v.to(dtype), present


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA_OK, reason=f"cuda backend unavailable: {CUDA_WHY}")
class TestMemoryGPU:
    @pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
    @pytest.mark.parametrize("shape", [(3, 5, 7, 33), (8, 14, 128, 256), (2, 3, 1, 5), (1, 2, 300, 70)],
                             ids=["odd", "paper", "one_slot", "many_slots"])
    @pytest.mark.parametrize("tau", [1.0, 0.3])
    def test_read_forward_backward(self, dtype, shape, tau):
        B, n, m, C = shape
        q, mem, _, _ = make_memory_case(B, n, m, C, seed=sum(shape), dtype=dtype, zero_q=False)
        qc = q.cuda().requires_grad_()
        with mdrnet_fast.use_backend("cuda"):
            out = ops.memory_read(qc, mem.cuda(), tau)
        g = torch.randn(out.shape, generator=torch.Generator().manual_seed(1), dtype=F64)
        gq, = torch.autograd.grad(out, qc, g.to(dtype).cuda())
        qr = q.double().requires_grad_()
        ref = R.memory_read(qr, mem.double(), tau)
        rgq, = torch.autograd.grad(ref, qr, g.to(dtype).double())
        assert out.dtype == dtype and gq.dtype == dtype
        close(out.detach().cpu(), ref.detach(), dtype, "q_hat")
        close(gq.cpu(), rgq, dtype, "grad q")
        # the kernels' own outputs: attn in the accumulation dtype, deterministic
        read = get_kernel("memory_read.forward", "cuda")
        q_hat, attn = read(q.cuda(), mem.cuda(), tau)
        q_hat2, attn2 = read(q.cuda(), mem.cuda(), tau)
        assert attn.dtype == (F64 if dtype == F64 else torch.float32) and attn.shape == (B, n, m)
        assert torch.equal(q_hat, q_hat2) and torch.equal(attn, attn2)

    def test_read_zero_query(self):
        # |q| <= eps: q / max(|q|, eps) is q / eps, so the gradient is grad_qn / eps with no radial term
        q, mem, _, _ = make_memory_case(3, 4, 5, 9, seed=4)  # q[-1, 0] = 0
        qc = q.cuda().requires_grad_()
        with mdrnet_fast.use_backend("cuda"):
            out = ops.memory_read(qc, mem.cuda(), 1.0)
        g = torch.randn(out.shape, generator=torch.Generator().manual_seed(2), dtype=F64)
        gq, = torch.autograd.grad(out, qc, g.cuda())
        qr = q.requires_grad_()
        ref = R.memory_read(qr, mem, 1.0)
        rgq, = torch.autograd.grad(ref, qr, g)
        close(out.detach().cpu(), ref.detach(), F64, "q_hat")
        close(gq[-1, 0].cpu(), rgq[-1, 0], F64, "grad of the zero query")
        close(gq[:-1].cpu(), rgq[:-1], F64, "grad of the other queries")

    def test_many_slots_use_opt_in_shared_memory(self):
        # 3 * m fp64 accumulators of the backward = 144 KB > 48 KB: the kernels ask for the opt-in maximum
        B, n, m, C = 2, 2, 6000, 4
        q, mem, v, present = make_memory_case(B, n, m, C, seed=9, zero_q=False)
        qc = q.cuda().requires_grad_()
        with mdrnet_fast.use_backend("cuda"):
            out = ops.memory_read(qc, mem.cuda(), 1.0)
        gq, = torch.autograd.grad(out, qc, torch.ones_like(out))
        qr = q.clone().requires_grad_()
        ref = R.memory_read(qr, mem, 1.0)
        rgq, = torch.autograd.grad(ref, qr, torch.ones_like(ref))
        close(out.detach().cpu(), ref.detach(), F64, "q_hat")
        close(gq.cpu(), rgq, F64, "grad q")
        fast_mem, ref_mem = mem.cuda(), mem.clone()
        slots = get_kernel("memory_update.forward", "cuda")(fast_mem, q.cuda(), v.cuda(), present.cuda(), 0.8)
        assert torch.equal(slots.cpu(), R.memory_update_(ref_mem, q, v, present, 0.8))
        close(fast_mem.cpu(), ref_mem, F64, "mem")

    def test_read_gradcheck_fp64(self):
        q, mem, _, _ = make_memory_case(2, 3, 6, 9, seed=5, zero_q=False)
        mem = mem.cuda()
        with mdrnet_fast.use_backend("cuda"):
            assert torch.autograd.gradcheck(lambda t: ops.memory_read(t, mem, 0.7),
                                            (q.cuda().requires_grad_(),))

    def test_read_mixed_dtypes(self):
        # fp16 queries against an fp32 memory (and the other way round), as the cpu kernels accept
        q, mem, _, _ = make_memory_case(2, 3, 9, 16, seed=2, dtype=torch.float32)
        read = get_kernel("memory_read.forward", "cuda")
        for qd, md in ((torch.float16, torch.float32), (torch.float32, torch.bfloat16)):
            out, _ = read(q.to(qd).cuda(), mem.to(md).cuda(), 1.0)
            ref = R.memory_read(q.to(qd).double(), mem.to(md).double(), 1.0)
            close(out.cpu(), ref, torch.float16 if qd == torch.float16 else torch.bfloat16, f"{qd}/{md}")

    @pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
    @pytest.mark.parametrize("shape", [(5, 3, 7, 33), (16, 14, 128, 64), (4, 2, 1, 3), (6, 2, 300, 17)],
                             ids=["odd", "paper", "one_slot", "many_slots"])
    def test_update(self, dtype, shape):
        B, n, m, C = shape
        q, mem, v, present = make_memory_case(B, n, m, C, seed=11 + sum(shape), dtype=dtype)
        # several samples choosing one slot: the batch mean
        q[1] = q[0]
        present[:2] = True
        fast_mem, ref_mem = mem.cuda(), mem.clone()
        with mdrnet_fast.use_backend("cuda"):
            slots = ops.memory_update_(fast_mem, q.cuda(), v.cuda(), present.cuda(), 0.9)
        ref_slots = R.memory_update_(ref_mem, q, v, present, 0.9)
        assert torch.equal(slots.cpu(), ref_slots), "chosen slots differ from the reference"
        assert fast_mem.dtype == dtype
        close(fast_mem.cpu(), ref_mem, dtype, "mem")
        # deterministic: the same update twice gives the same bits
        again = mem.cuda()
        with mdrnet_fast.use_backend("cuda"):
            slots2 = ops.memory_update_(again, q.cuda(), v.cuda(), present.cuda(), 0.9)
        assert torch.equal(slots, slots2) and torch.equal(fast_mem, again)

    def test_update_ties_go_to_the_lowest_slot(self):
        n, m, C = 2, 6, 8
        mem = torch.randn(n, m, C, dtype=torch.float32)
        mem[:, 4] = mem[:, 1]  # an exact duplicate: the same cosine, bit for bit
        q = mem[:, 1].unsqueeze(0).repeat(3, 1, 1) * 2.0
        v = torch.randn(3, n, C)
        present = torch.tensor([[True, True], [True, False], [False, True]])
        fast_mem = mem.cuda()
        update = get_kernel("memory_update.forward", "cuda")
        slots = update(fast_mem, q.cuda(), v.cuda(), present.cuda(), 0.5)
        ref_mem = mem.clone()
        ref = R.memory_update_(ref_mem, q, v, present, 0.5)
        assert torch.equal(slots.cpu(), ref)
        assert slots.cpu().tolist() == [[1, 1], [1, -1], [-1, 1]]
        close(fast_mem.cpu(), ref_mem, torch.float32, "mem")

    def test_empty_and_checks(self):
        read = get_kernel("memory_read.forward", "cuda")
        update = get_kernel("memory_update.forward", "cuda")
        mem = torch.randn(3, 4, 5, device="cuda")
        q_hat, attn = read(torch.randn(0, 3, 5, device="cuda"), mem, 1.0)
        assert q_hat.shape == (0, 3, 5) and attn.shape == (0, 3, 4)
        slots = update(mem, torch.randn(0, 3, 5, device="cuda"), torch.randn(0, 3, 5, device="cuda"),
                       torch.zeros(0, 3, dtype=torch.bool, device="cuda"), 0.9)
        assert slots.shape == (0, 3)
        with pytest.raises(RuntimeError, match="q must be a CUDA tensor"):
            read(torch.randn(2, 3, 5), mem, 1.0)
        with pytest.raises(RuntimeError, match="q must have shape"):
            read(torch.randn(2, 3, 6, device="cuda"), mem, 1.0)
        with pytest.raises(RuntimeError, match="tau must be"):
            read(torch.randn(2, 3, 5, device="cuda"), mem, 0.0)
        with pytest.raises(RuntimeError, match="present must be bool"):
            update(mem, torch.randn(2, 3, 5, device="cuda"), torch.randn(2, 3, 5, device="cuda"),
                   torch.ones(2, 3, device="cuda"), 0.9)
