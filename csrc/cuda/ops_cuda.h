// Declarations of the CUDA kernels' host entry points (mdrnet_fast._C_cuda). One block per op, defined in
// the op's own .cu file; register_cuda.cpp binds them. Each takes and returns at::Tensor only, checks
// every argument (naming it) and runs on the tensors' device and current stream.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <string>
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

// ---- partial conv epilogue / gated activation / SPADE modulate ----
// Same contracts as the CPU kernels of the same names (csrc/mdrnet_fast.h), on CUDA tensors.
// partial_conv_epilogue.cu
std::vector<at::Tensor> partial_conv_epilogue_forward(const at::Tensor& raw, const at::Tensor& mask,
                                                      const c10::optional<at::Tensor>& bias, int64_t kh,
                                                      int64_t kw, int64_t sh, int64_t sw, int64_t ph, int64_t pw,
                                                      int64_t dh, int64_t dw, double winsize, bool multi_channel);
std::vector<at::Tensor> partial_conv_epilogue_backward(const at::Tensor& grad_out, const at::Tensor& grad_scale,
                                                       const at::Tensor& new_mask, bool need_bias_grad);
at::Tensor partial_conv_mask_sum(const at::Tensor& mask, int64_t kh, int64_t kw, int64_t sh, int64_t sw, int64_t ph,
                                 int64_t pw, int64_t dh, int64_t dw, int64_t out_h, int64_t out_w);
// gated_activation.cu
at::Tensor gated_activation_forward(const at::Tensor& y, const std::string& activation, double negative_slope);
at::Tensor gated_activation_backward(const at::Tensor& grad_out, const at::Tensor& y, const std::string& activation,
                                     double negative_slope);
// spade_modulate.cu
std::vector<at::Tensor> spade_modulate_forward(const at::Tensor& x, const at::Tensor& gamma, const at::Tensor& beta,
                                               double eps);
std::vector<at::Tensor> spade_modulate_backward(const at::Tensor& grad_out, const at::Tensor& x,
                                                const at::Tensor& gamma, const at::Tensor& mean,
                                                const at::Tensor& rstd, bool need_x, bool need_gamma,
                                                bool need_beta);

}  // namespace cuda
}  // namespace mdrnet_fast
