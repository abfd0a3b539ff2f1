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
