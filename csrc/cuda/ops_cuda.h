// Declarations of the CUDA kernels' host entry points (mdrnet_fast._C_cuda). One block per op, defined in
// the op's own .cu file; register_cuda.cpp binds them. Each takes and returns at::Tensor only, checks
// every argument (naming it) and runs on the tensors' device and current stream.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <vector>

namespace mdrnet_fast {
namespace cuda {

// ---- region pool (region_pool.cu) ----
// The contract of csrc/mdrnet_fast.h's region_pool_forward / region_broadcast_forward, on CUDA tensors.
// feat (B, C, H, W) NCHW or channels_last (other layouts are copied to NCHW); seg int labels (B, H, W) in
// [0, num_classes) or float weights (B, num_classes, H, W). Returns {codes (B, n, C) feat's dtype, area (B, n)
// fp32 (fp64 for fp64)}; codes = sums / area when normalize, zero for an absent region. Deterministic.
std::vector<at::Tensor> region_pool_forward(const at::Tensor& feat, const at::Tensor& seg, int64_t num_classes,
                                            bool normalize);
// out[b, :, h, w] = sum_i seg[b, i, h, w] codes[b, i, :]: (B, C, H, W) contiguous in codes' dtype.
at::Tensor region_broadcast_forward(const at::Tensor& codes, const at::Tensor& seg, int64_t num_classes);

// ---- memory (memory.cu) ----
// The contract of csrc/mdrnet_fast.h's memory kernels, on CUDA tensors. Read: {q_hat (B, n, C) q's dtype,
// attn (B, n, m) fp32/fp64}; backward: grad_q; update: in place on mem (contiguous), returns the chosen
// slots (B, n) int64, -1 where absent (ties to the lowest slot, deterministic batch-mean EMA).
std::vector<at::Tensor> memory_read_forward(const at::Tensor& q, const at::Tensor& mem, double tau);
at::Tensor memory_read_backward(const at::Tensor& grad, const at::Tensor& q, const at::Tensor& mem,
                                const at::Tensor& attn, double tau);
at::Tensor memory_update_(at::Tensor& mem, const at::Tensor& q, const at::Tensor& v, const at::Tensor& present,
                          double alpha);

// (each op appends its block here)

}  // namespace cuda
}  // namespace mdrnet_fast
