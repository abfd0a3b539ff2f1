"""The cosine-memory C++ kernels of the `cpu` backend against the reference (SPEC §4): property tests on
random shapes with exact ties, zero rows and presence patterns; shapes that span several parallel
tasks; bit-identical results for any thread count and for both instruction-set builds; mixed dtypes;
argument checks."""
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import mdrnet_fast
from mdrnet_fast import ops
from mdrnet_fast.reference import memory as RM
from mdrnet_fast.composite import memory as composite

from _util import TOL, assert_close

pytestmark = pytest.mark.skipif(not mdrnet_fast.backends()["cpu"]["available"], reason="C++ extension not built")
F64 = torch.float64


def make_case(B, n, m, C, seed, n_dup, aligned, zero_q, zero_slot, p_present, dtype=F64):
    """Memory with duplicated slots (exact ties), optionally queries parallel to a duplicated slot
    (the tie is for the maximum), a zero query and a zero slot."""
    g = torch.Generator().manual_seed(seed)
    mem = torch.randn(n, m, C, generator=g, dtype=F64)
    src = dst = 0
    for _ in range(n_dup):
        src, dst = torch.randint(0, m, (2,), generator=g).tolist()
        mem[:, dst] = mem[:, src]
    q = torch.randn(B, n, C, generator=g, dtype=F64)
    if aligned:
        q[0] = mem[:, src] * torch.rand(n, 1, generator=g, dtype=F64).add(0.5)
    if zero_q:
        q[-1, torch.randint(0, n, (1,), generator=g).item()] = 0
    if zero_slot:
        mem[torch.randint(0, n, (1,), generator=g).item(), torch.randint(0, m, (1,), generator=g).item()] = 0
    v = torch.randn(B, n, C, generator=g, dtype=F64)
    present = torch.rand(B, n, generator=g) < p_present
    return q.to(dtype), mem.to(dtype), v.to(dtype), present


def read_and_grad(backend, q, mem, tau, w):
    q = q.detach().clone().requires_grad_()
    with mdrnet_fast.use_backend(backend):
        out = ops.memory_read(q, mem, tau)
    (grad,) = torch.autograd.grad((out * w).sum(), q)
    return out.detach(), grad


def update(backend, mem, q, v, present, alpha):
    mem = mem.clone()
    with mdrnet_fast.use_backend(backend):
        slots = ops.memory_update_(mem, q, v, present, alpha)
    return slots, mem


def grad_floor(w, q, mem, tau):
    """The size of the terms that cancel in d q_hat / d q, over max(|q|, eps): the softmax gradient's
    a_j (ga_j - sum_k a_k ga_k) and then the radial projection of grad_qn. Where the true gradient is ~0
    (e.g. C = 1, or ga nearly constant over the slots) both sides return rounding noise of this size, so
    it is the scale errors are measured against. Magnitudes, not signed sums: a bound before cancelling."""
    q, mem, w = q.double(), mem.double(), w.double()
    mn = mem / mem.norm(dim=-1, keepdim=True).clamp_min(RM.COS_EPS)
    a = torch.softmax(RM.cosine(q, mem) / tau, dim=-1)
    ga = torch.einsum("bic,ijc->bij", w, mem).abs()
    terms = torch.einsum("bij,ijc->bic", a * (ga + (a * ga).sum(-1, keepdim=True)) / tau, mn.abs())
    return (terms.norm(dim=-1) / q.norm(dim=-1).clamp_min(RM.COS_EPS)).max().item()


def batch_mean_update(mem, v, present, slots, alpha):
    """SPEC §4's update for given slots (the oracle where a near-tie lets the slots differ)."""
    acc = torch.float64 if mem.dtype == torch.float64 else torch.float32
    out = mem.to(acc).clone()
    for i in range(mem.shape[0]):
        for j in slots[:, i][present[:, i]].unique().tolist():
            chosen = present[:, i] & (slots[:, i] == j)
            out[i, j] = alpha * mem[i, j].to(acc) + (1 - alpha) * v[chosen, i].to(acc).mean(0)
    return out.to(mem.dtype)


def check_slots(slots, ref_slots, q, mem, present):
    """Identical to the reference wherever its maximum is clear. Where the reference's top cosines are
    within rounding of each other, its pick depends on BLAS rounding (it even splits exact duplicates
    of a slot, e.g. m=20, C=24), so there we require a near-maximum that obeys the tie rule exactly:
    no lower slot holds the same vector (equal vectors give bit-equal cosines, the first one wins)."""
    assert torch.equal(slots[~present], torch.full_like(slots[~present], -1))
    acc = torch.float64 if mem.dtype == torch.float64 else torch.float32
    cos = RM.cosine(q.to(acc), mem.to(acc)).double()
    tol = 8 * max(q.shape[-1], 1) * torch.finfo(acc).eps
    top2 = cos.topk(min(2, cos.shape[-1]), dim=-1).values
    clear = (top2[..., 0] - top2[..., -1] > tol) | (cos.shape[-1] == 1)
    assert torch.equal(slots[present & clear], ref_slots[present & clear]), "slots differ at a clear maximum"
    for b, i in (present & ~clear).nonzero().tolist():
        j = slots[b, i].item()
        assert cos[b, i, j] >= cos[b, i].max() - tol, (b, i, j)
        same = (mem[i, :j] == mem[i, j]).all(-1)
        assert not same.any(), f"slot {j} chosen over its lower duplicate {same.nonzero().flatten().tolist()}"


def check_against_reference(q, mem, v, present, tau, alpha, dtype=F64):
    w = torch.randn(q.shape, dtype=F64).to(q.dtype)
    out, grad = read_and_grad("cpu", q, mem, tau, w)
    ref_out, ref_grad = read_and_grad("reference", q, mem, tau, w)
    assert_close(out, ref_out, dtype, "q_hat")
    scale = max(ref_grad.abs().max().item(), grad_floor(w, q, mem, tau))
    err = (grad.double() - ref_grad.double()).abs().max().item() / max(scale, 1e-6)
    assert torch.isfinite(grad).all() and err <= TOL[dtype], f"grad q: relative error {err:.3g}"
    # attn (the softmax weights the backward uses) against the composite's
    _, attn = mdrnet_fast._C.memory_read_forward(q, mem, tau)
    _, ref_attn = composite.read(q, mem, tau)
    assert_close(attn, ref_attn, dtype, "attn")

    slots, new_mem = update("cpu", mem, q, v, present, alpha)
    ref_slots, ref_mem = update("reference", mem, q, v, present, alpha)
    check_slots(slots, ref_slots, q, mem, present)
    if torch.equal(slots, ref_slots):
        assert_close(new_mem, ref_mem, dtype, "mem")
    assert_close(new_mem, batch_mean_update(mem, v, present, slots, alpha), dtype, "mem (oracle)")


@settings(max_examples=40, deadline=None)
@given(
    B=st.integers(1, 6), n=st.integers(1, 16), m=st.integers(1, 200), C=st.integers(1, 300),
    seed=st.integers(0, 2 ** 31 - 1), n_dup=st.integers(0, 3), aligned=st.booleans(), zero_q=st.booleans(),
    zero_slot=st.booleans(), p_present=st.sampled_from([0.0, 0.5, 0.8, 1.0]),
    tau=st.sampled_from([1.0, 0.3, 2.5]), alpha=st.sampled_from([0.0, 0.5, 0.9, 1.0]),
)
def test_matches_reference_fp64(B, n, m, C, seed, n_dup, aligned, zero_q, zero_slot, p_present, tau, alpha):
    q, mem, v, present = make_case(B, n, m, C, seed, n_dup, aligned, zero_q, zero_slot, p_present)
    check_against_reference(q, mem, v, present, tau, alpha)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["fp64", "fp32"])
def test_large_shapes_many_tasks(dtype):
    # the model's shapes and a ragged one: several parallel tasks, runs split across blocks, chunk tails
    for shape in [(8, 14, 128, 256), (37, 5, 131, 77)]:
        q, mem, v, present = make_case(*shape, seed=sum(shape), n_dup=3, aligned=True, zero_q=True,
                                       zero_slot=True, p_present=0.8, dtype=dtype)
        check_against_reference(q, mem, v, present, 1.0, 0.9, dtype)


def _all_outputs(q, mem, v, present):
    from mdrnet_fast import _C

    out, attn = _C.memory_read_forward(q, mem, 0.7)
    grad = _C.memory_read_backward(torch.ones_like(q), q, mem, attn, 0.7)
    new_mem = mem.clone()
    slots = _C.memory_update_(new_mem, q, v, present, 0.8)
    return [out, attn, grad, slots, new_mem]


def test_bitwise_identical_for_any_thread_count():
    q, mem, v, present = make_case(13, 7, 45, 70, seed=3, n_dup=2, aligned=True, zero_q=True, zero_slot=True,
                                   p_present=0.7, dtype=torch.float32)
    threads = torch.get_num_threads()
    try:
        results = []
        for t in (1, 2, 3, 5):
            torch.set_num_threads(t)
            results.append(_all_outputs(q, mem, v, present))
    finally:
        torch.set_num_threads(threads)
    for other in results[1:]:
        for a, b in zip(results[0], other):
            assert torch.equal(a, b)


def test_baseline_and_avx2_builds_agree_bitwise(monkeypatch):
    """Both instruction-set builds of the kernels do the same IEEE operations lane by lane (the AVX2 one
    runs where the CPU has it; elsewhere this compares the baseline build with itself)."""
    q, mem, v, present = make_case(5, 3, 29, 37, seed=11, n_dup=2, aligned=True, zero_q=True, zero_slot=False,
                                   p_present=0.7, dtype=torch.float32)
    monkeypatch.setenv("MDRNET_FAST_CPU_ISA", "auto")
    auto = _all_outputs(q, mem, v, present) + _all_outputs(q.double(), mem.double(), v.double(), present)
    monkeypatch.setenv("MDRNET_FAST_CPU_ISA", "baseline")
    base = _all_outputs(q, mem, v, present) + _all_outputs(q.double(), mem.double(), v.double(), present)
    for a, b in zip(auto, base):
        assert torch.equal(a, b)


@pytest.mark.parametrize("q_dtype,mem_dtype", [(torch.float32, torch.float64), (torch.float32, torch.bfloat16),
                                               (torch.bfloat16, torch.float32), (torch.float16, torch.float16)])
def test_mixed_dtypes_match_composite(q_dtype, mem_dtype):
    q, mem, v, present = make_case(4, 3, 20, 24, seed=5, n_dup=1, aligned=True, zero_q=q_dtype != torch.float16,
                                   zero_slot=True, p_present=0.7)
    q, v, mem = q.to(q_dtype), v.to(q_dtype), mem.to(mem_dtype)
    tol = torch.float32 if q_dtype == torch.float32 else q_dtype
    out, attn = mdrnet_fast._C.memory_read_forward(q, mem, 0.5)
    ref_out, ref_attn = composite.read(q, mem, 0.5)
    assert out.dtype == q_dtype and attn.dtype == ref_attn.dtype
    assert_close(out, ref_out, tol, "q_hat")
    assert_close(attn, ref_attn, tol, "attn")
    g = torch.randn(q.shape).to(q_dtype)
    assert_close(mdrnet_fast._C.memory_read_backward(g, q, mem, attn, 0.5),
                 composite.read_backward(g, q, mem, ref_attn, 0.5), tol, "grad q")
    slots, new_mem = update("cpu", mem, q, v, present, 0.75)
    ref_slots, _ = update("reference", mem, q, v, present, 0.75)
    check_slots(slots, ref_slots, q, mem, present)
    assert new_mem.dtype == mem_dtype
    mem_tol = mem_dtype if mem_dtype in (torch.bfloat16, torch.float16) else torch.float32
    assert_close(new_mem, batch_mean_update(mem, v, present, slots, 0.75), mem_tol, "mem")


def test_kernels_check_their_arguments():
    from mdrnet_fast import _C

    q, mem, v = torch.randn(2, 3, 4), torch.randn(3, 5, 4), torch.randn(2, 3, 4)
    present = torch.ones(2, 3, dtype=torch.bool)
    attn = torch.rand(2, 3, 5)
    cases = [
        ("q", lambda: _C.memory_read_forward(q[0], mem, 1.0)),
        ("q", lambda: _C.memory_read_forward(torch.randn(2, 3, 5), mem, 1.0)),
        ("q", lambda: _C.memory_read_forward(q.int(), mem, 1.0)),
        ("mem", lambda: _C.memory_read_forward(q, mem[:, :0], 1.0)),
        ("tau", lambda: _C.memory_read_forward(q, mem, 0.0)),
        ("grad", lambda: _C.memory_read_backward(q.double(), q, mem, attn, 1.0)),
        ("attn", lambda: _C.memory_read_backward(q, q, mem, attn.double(), 1.0)),
        ("attn", lambda: _C.memory_read_backward(q, q, mem, attn[:, :, :4], 1.0)),
        ("contiguous", lambda: _C.memory_update_(mem.transpose(0, 1).contiguous().transpose(0, 1), q, v, present, 0.5)),
        ("v", lambda: _C.memory_update_(mem.clone(), q, v[:1], present, 0.5)),
        ("present", lambda: _C.memory_update_(mem.clone(), q, v, present.float(), 0.5)),
        ("present", lambda: _C.memory_update_(mem.clone(), q, v, present[:, :2], 0.5)),
        ("alpha", lambda: _C.memory_update_(mem.clone(), q, v, present, 1.5)),
    ]
    for name, call in cases:
        with pytest.raises(RuntimeError, match=name):
            call()
