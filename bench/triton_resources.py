"""Registers, spills and shared memory of the Triton patch-attention kernels at a tile config, for sm_90,
without a GPU: compiles with Triton (no TRITON_INTERPRET) and reads ptxas's resource report.

    python bench/triton_resources.py                     # the configs _config picks, per dtype and d = C p^2
    python bench/triton_resources.py fp32:256:32:32:8:1  # dtype:d:BLOCK_M:BLOCK_N:warps:stages[:precision]

The dot precision (tf32x3, tf32, ieee) defaults to the one _config picks for that dtype and d.

Spilled registers go to local memory (slow); a config that spills kilobytes in the inner loop is a bad
start for tuning on the GPU. A guide for choosing configs to time there, not a measurement of speed.
"""
import os
import re
import subprocess
import sys
import tempfile

os.environ.pop("TRITON_INTERPRET", None)
ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
sys.path[:0] = [ROOT, os.path.join(ROOT, "tests")]

import torch  # noqa: E402
import triton.backends.nvidia  # noqa: E402
import triton.language as tl  # noqa: E402
from _triton_aot import compile_sm90  # noqa: E402  (tests/_triton_aot.py: the offline sm_90 compile)

from mdrnet_fast.triton_kernels import patch_attention as PA  # noqa: E402

PTXAS = os.path.join(os.path.dirname(triton.backends.nvidia.__file__), "bin", "ptxas")
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32, "fp64": torch.float64}


def resources(kernel, ptrs, consts, warps, stages):
    """(shared bytes, registers, spill-store bytes) of one compiled variant."""
    compiled = compile_sm90(kernel, ptrs, consts, warps, stages)
    with tempfile.NamedTemporaryFile("w", suffix=".ptx", delete=False) as f:
        f.write(compiled.asm["ptx"])
    try:
        report = subprocess.run([PTXAS, "-arch=sm_90a", "-v", f.name, "-o", os.devnull], capture_output=True,
                                text=True, check=True).stderr
    finally:
        os.unlink(f.name)
    regs = re.search(r"Used (\d+) registers", report)
    spills = re.search(r"(\d+) bytes spill stores", report)
    return compiled.metadata.shared, int(regs.group(1)) if regs else -1, int(spills.group(1)) if spills else 0


def patch_attention(dtype, d, bm, bn, warps, stages, prec=None):
    io = dtype
    acc = tl.float64 if dtype == "fp64" else tl.float32
    a = "fp64" if dtype == "fp64" else "fp32"
    prec = prec or PA._config(d, d, DTYPES[dtype])[4]
    consts = dict(SCALE=0.125, P=2, ACC=acc, PREC=prec, DK=d, DV=d, BLOCK_M=bm, BLOCK_N=bn)
    rows = dict(qp_ptr=io, kp_ptr=io, vp_ptr=io, idx_ptr="i32", cnt_ptr="i32", lse_ptr=a)
    kernels = {"fwd": (PA._fwd_kernel, dict(rows, mask_ptr=io, out_ptr=io)),
               "dq": (PA._bwd_dq_kernel, dict(rows, dop_ptr=io, dsum_ptr=a, dq_ptr=io)),
               "dkdv": (PA._bwd_dkdv_kernel, dict(rows, dop_ptr=io, dsum_ptr=a, dk_ptr=io, dv_ptr=io))}
    cells = []
    for name, (kernel, ptrs) in kernels.items():
        shared, regs, spills = resources(kernel, ptrs, consts, warps, stages)
        cells.append(f"{name} {regs} regs, {spills} B spilled, {shared // 1024} KiB shared")
    print(f"{dtype} d={d} {bm}x{bn} {warps} warps {stages} stages {prec}: " + "; ".join(cells), flush=True)


def main(argv):
    if argv:
        configs = []
        for arg in argv:
            t, d, bm, bn, w, s, *prec = arg.split(":")
            configs.append((t, int(d), int(bm), int(bn), int(w), int(s), *prec))
    else:
        os.environ.pop("TRITON_INTERPRET", None)
        configs = []
        for t in ("bf16", "fp32"):
            for d in (128, 256, 512):
                bm, bn, w, s, _ = PA._config(d, d, DTYPES[t])
                configs.append((t, d, bm, bn, w, s))
    for config in configs:
        patch_attention(*config)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
