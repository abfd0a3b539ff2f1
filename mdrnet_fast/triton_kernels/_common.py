"""Helpers shared by the Triton kernels: accumulation dtype, launch sizes, interpreter detection."""
import torch
import triton
import triton.language as tl

from .._dispatch import triton_interpreter


def acc_tl(dtype: torch.dtype):
    """Triton accumulation dtype: fp64 stays fp64 (gradcheck, 1e-10 parity), everything else fp32."""
    return tl.float64 if dtype == torch.float64 else tl.float32


def pow2(n: int, lo: int = 1, hi: int = 1 << 30) -> int:
    return max(lo, min(hi, triton.next_power_of_2(max(int(n), 1))))


def num_warps(block_elems: int) -> int:
    # the interpreter ignores warps; on GPU about 256 elements per warp keeps registers in check
    return max(1, min(8, block_elems // 256))


def target_programs() -> int:
    """Roughly how many programs fill the machine; 1 under the interpreter, where every launch and every
    program costs milliseconds."""
    if triton_interpreter() or not torch.cuda.is_available():
        return 1
    return 4 * torch.cuda.get_device_properties(torch.cuda.current_device()).multi_processor_count



def out_buffer(shape, dtype, device, memory_format=torch.contiguous_format):
    """Where a kernel writes an output of `dtype`. The interpreter truncates fp32 -> bf16 on store (GPUs round
    to nearest even), so there bf16 outputs are written in fp32 and rounded by `finish`."""
    if dtype == torch.bfloat16 and triton_interpreter():
        dtype = torch.float32
    return torch.empty(shape, dtype=dtype, device=device, memory_format=memory_format)


def finish(buf, dtype):
    return buf if buf.dtype == dtype else buf.to(dtype)


@triton.jit
def gated_act(f, ACT: tl.constexpr, SLOPE: tl.constexpr, ACC: tl.constexpr):
    """(act(f), act'(f)) of the gated convs' feature half: ACT 0 none, 1 elu, 2 leaky_relu, 3 relu."""
    one = tl.full(f.shape, 1.0, ACC)
    if ACT == 1:  # elu; the min keeps the unused branch finite
        e = tl.exp(tl.minimum(f, 0.0))
        a = tl.where(f > 0, f, e - 1.0)
        da = tl.where(f > 0, one, e)
    elif ACT == 2:  # leaky_relu
        a = tl.where(f > 0, f, f * SLOPE)
        da = tl.where(f > 0, one, tl.full(f.shape, SLOPE, ACC))
    elif ACT == 3:  # relu
        a = tl.maximum(f, 0.0)
        da = tl.where(f > 0, one, 0.0 * one)
    else:
        a = f
        da = one
    return a, da
