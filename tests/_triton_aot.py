"""Compile the Triton kernels for sm_90 without a GPU: the interpreter is lenient about things the compiler
rejects (loop-carried dtypes, tl.dot shapes, fp64 math), so CPU-only CI checks the compiled path here too.

`python tests/_triton_aot.py` compiles a representative variant set (what tests/test_triton_kernels.py runs);
`--all` every combination of the constexpr flags (a few minutes). Must run without TRITON_INTERPRET.
"""
import itertools
import os
import sys

os.environ.pop("TRITON_INTERPRET", None)
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import torch  # noqa: E402
import triton  # noqa: E402
import triton.language as tl  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402

from mdrnet_fast.triton_kernels import gated_activation as G  # noqa: E402
from mdrnet_fast.triton_kernels import memory as M  # noqa: E402
from mdrnet_fast.triton_kernels import patch_attention as PA  # noqa: E402
from mdrnet_fast.triton_kernels import partial_conv as P  # noqa: E402
from mdrnet_fast.triton_kernels import region_pool as R  # noqa: E402
from mdrnet_fast.triton_kernels import spade as S  # noqa: E402

TARGET = GPUTarget("cuda", 90, 32)
SHARED_LIMIT = 227 * 1024  # dynamic shared memory per block on sm_90


def compile_sm90(kernel, ptrs, consts, num_warps=4, num_stages=None):
    """The kernel compiled for sm_90: ptrs name -> pointee dtype, consts name -> constexpr, other args i32.
    (bench/triton_resources.py uses it too.)"""
    sig, cx = {}, {}
    for name in kernel.arg_names:
        if name in consts:
            sig[name], cx[name] = "constexpr", consts[name]
        else:
            sig[name] = "*" + ptrs[name] if name in ptrs else "i32"
    options = {"num_warps": num_warps} if num_stages is None else {"num_warps": num_warps, "num_stages": num_stages}
    compiled = triton.compile(ASTSource(kernel, sig, cx), target=TARGET, options=options)
    # the compiler accepts more shared memory than a block may have; the launch would fail on the GPU
    shared = compiled.metadata.shared
    if shared > SHARED_LIMIT:
        raise RuntimeError(f"needs {shared} bytes of shared memory, sm_90 allows {SHARED_LIMIT} per block")
    return compiled


def variants(full):
    """(kernel, pointer dtypes, constexprs, num_warps[, num_stages]) to compile."""
    dtypes = (("bf16", tl.float32), ("fp16", tl.float32), ("fp32", tl.float32), ("fp64", tl.float64))
    if not full:
        dtypes = (("bf16", tl.float32), ("fp64", tl.float64))
    flags = (False, True)
    for io, acc in dtypes:
        a = "fp64" if acc == tl.float64 else "fp32"
        gated = itertools.product(flags, flags, range(4), flags) if full else ((True, False, 1, True), (False, True, 2, False))
        for bwd, dense, act, cl in gated:
            yield (G._gated_kernel, dict(go_ptr=io, y_ptr=io, out_ptr=io),
                   dict(BACKWARD=bwd, DENSE=dense, ACT=act, SLOPE=0.2, ACC=acc, CHANNELS_LAST=cl, BLOCK=1024), 4)
        for bc, bh in ((2, 1024), (64, 32)) if full else ((64, 32),):
            yield (S._spade_fwd_kernel, dict(x_ptr=io, g_ptr=io, be_ptr=io, out_ptr=io, mean_ptr=a, rstd_ptr=a),
                   dict(EPS=1e-5, ACC=acc, BLOCK_C=bc, BLOCK_HW=bh), 8)
            for nx, ng, nb in itertools.product(flags, repeat=3) if full else ((True, True, True),):
                yield (S._spade_bwd_kernel, dict(go_ptr=io, x_ptr=io, g_ptr=io, mean_ptr=a, rstd_ptr=a, gx_ptr=io,
                                                 gg_ptr=io, gbe_ptr=io),
                       dict(NEED_X=nx, NEED_GAMMA=ng, NEED_BETA=nb, ACC=acc, BLOCK_C=bc, BLOCK_HW=bh), 8)
        use_dot = acc == tl.float32
        npad, bhw, bc = (32, 64, 64) if use_dot else (4, 32, 16)
        pool = itertools.product(flags, repeat=3) if full else ((True, False, True), (False, True, True))
        for labels, final, norm in pool:
            yield (R._pool_partial_kernel, dict(feat_ptr=io, seg_ptr="i64" if labels else io,
                                                part_ptr=io if final else a, apart_ptr=a),
                   dict(LABELS=labels, FINAL=final, NORMALIZE=norm, USE_DOT=use_dot, ACC=acc, N_PAD=npad,
                        BLOCK_HW=bhw, BLOCK_C=bc), 4)
        yield (R._pool_reduce_kernel, dict(part_ptr=a, apart_ptr=a, codes_ptr=io, area_ptr=a),
               dict(NORMALIZE=True, ACC=acc, BLOCK_C=128), 4)
        for labels in flags:
            yield (R._broadcast_kernel, dict(codes_ptr=io, seg_ptr="i64" if labels else io, out_ptr=io),
                   dict(LABELS=labels, ACC=acc, BLOCK_C=16, BLOCK_HW=256), 8)
        for argmax in flags:
            yield (M._read_fwd_kernel, dict(q_ptr=io, mem_ptr=io, out_ptr=io, attn_ptr=a, slot_ptr="i64" if argmax else a),
                   dict(ARGMAX=argmax, TAU=1.0, EPS=1e-8, ACC=acc, M_PAD=128, BLOCK_C=32), 8)
        yield (M._read_bwd_kernel, dict(g_ptr=io, q_ptr=io, mem_ptr=io, attn_ptr=a, gq_ptr=io),
               dict(TAU=0.5, EPS=1e-8, ACC=acc, M_PAD=128, BLOCK_C=32), 8)
        yield (M._update_kernel, dict(mem_ptr=io, v_ptr=io, slot_ptr="i64"),
               dict(ALPHA=0.9, ACC=acc, BLOCK_M=64, BLOCK_C=64), 8)
        # patch attention at the GPU configs PA._config picks for d = C p^2, with p = 2 and an odd p = 3
        tdt = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32, "fp64": torch.float64}[io]
        for d in (128, 512) if full else (128,):
            if PA._too_wide(d, d, tdt):
                continue
            bm, bn, warps, stages, prec = PA._config(d, d, tdt)
            for p in (2, 3) if full else (2,):
                pa = dict(SCALE=0.125, P=p, ACC=acc, PREC=prec, DK=d, DV=d, BLOCK_M=bm, BLOCK_N=bn)
                maps = dict(qp_ptr=io, kp_ptr=io, vp_ptr=io, idx_ptr="i32", cnt_ptr="i32", lse_ptr=a)
                yield PA._fwd_kernel, dict(maps, mask_ptr=io, out_ptr=io), pa, warps, stages
                # dO' rows are packed in the input dtype, D in the accumulation dtype
                yield (PA._bwd_dq_kernel, dict(maps, dop_ptr=io, dsum_ptr=a, dq_ptr=io), pa, warps, stages)
                yield (PA._bwd_dkdv_kernel, dict(maps, dop_ptr=io, dsum_ptr=a, dk_ptr=io, dv_ptr=io), pa, warps, stages)
                yield (PA._dsum_kernel, dict(go_ptr=io, o_ptr=io, dsum_ptr=a),
                       dict(P=p, ACC=acc, DV=d, BLOCK_M=max(1, 4096 // d)), 4)
        # partial conv: on GPU bf16/fp16 feed tl.dot in their own dtype (LOWP), fp32/fp64 in theirs
        lowp = io in ("bf16", "fp16")
        cprec = {"fp64": "ieee", "fp32": "tf32x3"}.get(io, "tf32")  # partial_conv._dot_precision
        gemm = dict(BLOCK_M=32, BLOCK_N=32, BLOCK_K=16) if acc == tl.float64 else dict(BLOCK_M=128, BLOCK_N=64, BLOCK_K=32)
        yield (P._msum_kernel, dict(m_ptr=io, msum_ptr=a), dict(ACC=acc, BLOCK_P=128, BLOCK_T=16), 4)
        fwd = itertools.product(flags, flags, (False, True)) if full else ((True, False, True), (False, True, False))
        for bias, mc, gated in fwd:
            for act in (range(4) if full and gated else (1 if gated else 0,)):
                yield (P._fwd_kernel, dict(x_ptr=io, m_ptr=io, w_ptr=io, bias_ptr=io, msum_ptr=a, out_ptr=io, nm_ptr=io,
                                           gs_ptr=a, y_ptr=io),
                       dict(HAS_BIAS=bias, MC=mc and not gated, LOWP=lowp, ACC=acc, PREC=cprec, GATED=gated, ACT=act, SLOPE=0.2, EPS=1e-8,
                            **gemm), 4)
        for mc, gated in ((False, False), (True, False), (False, True)):
            yield (P._dx_kernel, dict(go_ptr=io, gs_ptr=a, w_ptr=io, m_ptr=io, gx_ptr=io, y_ptr=io),
                   dict(MC=mc, LOWP=lowp, ACC=acc, PREC=cprec, GATED=gated, ACT=1 if gated else 0, SLOPE=0.2, **gemm), 4)
        dw = dict(BLOCK_M=32, BLOCK_N=32, BLOCK_K=16) if acc == tl.float64 else dict(BLOCK_M=64, BLOCK_N=64, BLOCK_K=64)
        for nw, nb, mc in itertools.product(flags, repeat=3) if full else ((True, True, False), (False, True, True)):
            yield (P._dw_kernel, dict(go_ptr=io, gs_ptr=a, nm_ptr=io, x_ptr=io, m_ptr=io, gw_ptr=a, gb_ptr=a, y_ptr=io),
                   dict(NEED_W=nw, NEED_B=nb, MC=mc, NM_MC=mc, LOWP=lowp, ACC=acc, PREC=cprec, GATED=False, ACT=0, SLOPE=0.0,
                        **dw), 4)
        yield (P._dw_kernel, dict(go_ptr=io, gs_ptr=a, nm_ptr=io, x_ptr=io, m_ptr=io, gw_ptr=a, gb_ptr=a, y_ptr=io),
               dict(NEED_W=True, NEED_B=True, MC=False, NM_MC=False, LOWP=lowp, ACC=acc, PREC=cprec, GATED=True, ACT=1,
                    SLOPE=0.2, **dw), 4)


def main(full=False):
    failures = []
    count = 0
    for kernel, ptrs, consts, warps, *stages in variants(full):
        count += 1
        try:
            compile_sm90(kernel, ptrs, consts, warps, *stages)
        except Exception as exc:  # report every failing variant, not just the first
            failures.append(f"{kernel.__name__} {ptrs} {consts}: {str(exc)[-2000:]}")
    print(f"compiled {count - len(failures)}/{count} kernel variants for sm_90")
    for f in failures:
        print("FAILED", f)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main("--all" in sys.argv))
