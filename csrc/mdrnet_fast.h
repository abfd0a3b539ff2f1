// Declarations of the mdrnet_fast CPU kernels, plus the argument checks they share.
//
// Kept to <ATen/core/Tensor.h> on purpose: this header is included by every kernel
// translation unit, and pulling in <torch/extension.h> here would multiply build time.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <string>
#include <vector>

namespace mdrnet_fast {

// ---------------------------------------------------------------------------
// Partial convolution epilogue (NVIDIA PartialConv2d semantics).
// ---------------------------------------------------------------------------

// raw:  conv2d(x * mask, weight) without bias, (B, Co, Ho, Wo), NCHW or channels_last.
// mask: (B, Cm, H, W), Cm == 1 unless multi_channel, same dtype as raw, values in [0, 1]; NCHW or
//       channels_last read in place (other layouts are copied).
// bias: optional (Co,), same dtype as raw.
// Returns {out, new_mask, grad_scale}:
//   out        raw's dtype and memory format,
//   new_mask   raw's dtype, (B, 1, Ho, Wo) NCHW, or (B, Co, Ho, Wo) if multi_channel, in raw's memory
//              format (NCHW or channels_last),
//   grad_scale float32 (float64 for float64 raw), (B, 1, Ho, Wo): d out / d raw.
std::vector<at::Tensor> partial_conv_epilogue_forward(
    const at::Tensor& raw, const at::Tensor& mask, const c10::optional<at::Tensor>& bias,
    int64_t kh, int64_t kw, int64_t sh, int64_t sw, int64_t ph, int64_t pw, int64_t dh, int64_t dw,
    double winsize, bool multi_channel);

// Returns {grad_raw, grad_bias}. grad_raw = grad_out * grad_scale (broadcast over Co), in
// grad_out's dtype and memory format. grad_bias[co] = sum grad_out * new_mask, in grad_out's
// dtype; it is an undefined tensor (None in Python) when need_bias_grad is false, and then
// new_mask is not read or checked (any tensor may be passed).
std::vector<at::Tensor> partial_conv_epilogue_backward(
    const at::Tensor& grad_out, const at::Tensor& grad_scale, const at::Tensor& new_mask,
    bool need_bias_grad);

// Window sums of the channel-summed mask: (B, 1, out_h, out_w), float32 (float64 for float64).
at::Tensor partial_conv_mask_sum(
    const at::Tensor& mask, int64_t kh, int64_t kw, int64_t sh, int64_t sw, int64_t ph, int64_t pw,
    int64_t dh, int64_t dw, int64_t out_h, int64_t out_w);

// ---------------------------------------------------------------------------
// Gated activation (SPEC §2): out = act(y[:, :C]) * sigmoid(y[:, C:]).
// ---------------------------------------------------------------------------

// y: (B, 2C, H, W), NCHW or channels_last (other strides are copied). activation: "elu",
// "leaky_relu", "relu" or "none". Returns out (B, C, H, W) in y's dtype, channels_last when y is
// channels_last (and not also plain contiguous), else contiguous.
at::Tensor gated_activation_forward(const at::Tensor& y, const std::string& activation, double negative_slope);

// grad_y (B, 2C, H, W) in y's dtype and output layout: [grad_out * sigmoid(g) * act'(f),
// grad_out * act(f) * sigmoid(g) * (1 - sigmoid(g))], one fused pass.
at::Tensor gated_activation_backward(const at::Tensor& grad_out, const at::Tensor& y, const std::string& activation,
                                     double negative_slope);

// ---------------------------------------------------------------------------
// SPADE modulation (SPEC §6): out = (x - mean) * rstd * (1 + gamma) + beta per (b, c) plane.
// ---------------------------------------------------------------------------

// x, gamma, beta: (B, C, H, W), one dtype. Returns {out (x's dtype, channels_last when x is),
// mean (B, C), rstd (B, C)}; the statistics are float32 (float64 for float64 x), biased variance.
std::vector<at::Tensor> spade_modulate_forward(const at::Tensor& x, const at::Tensor& gamma, const at::Tensor& beta,
                                               double eps);

// Returns {grad_x, grad_gamma, grad_beta}, each an undefined tensor (None) when not needed; each in
// the output format of x, gamma and grad_out respectively.
std::vector<at::Tensor> spade_modulate_backward(const at::Tensor& grad_out, const at::Tensor& x,
                                                const at::Tensor& gamma, const at::Tensor& mean,
                                                const at::Tensor& rstd, bool need_x, bool need_gamma,
                                                bool need_beta);

// Accumulation dtype of every kernel (CPU and CUDA): float64 stays float64 (gradcheck, 1e-10 parity),
// float32 / float16 / bfloat16 accumulate in float32.
inline at::ScalarType acc_dtype(at::ScalarType st) { return st == at::kDouble ? at::kDouble : at::kFloat; }

// ---------------------------------------------------------------------------
// Shared argument checks. Messages name the argument and what was expected so that a
// failure raised deep inside an autograd Function is still easy to trace to its caller.
// ---------------------------------------------------------------------------
namespace checks {

inline void cpu_4d(const at::Tensor& t, const char* name, const char* layout = "(B, C, H, W)") {
  TORCH_CHECK(t.defined(), name, " must be a defined tensor");
  TORCH_CHECK(t.device().is_cpu(), name, " must be a CPU tensor, got device ", t.device());
  TORCH_CHECK(t.dim() == 4, name, " must be 4-D ", layout, ", got shape ", t.sizes());
}

inline void floating(const at::Tensor& t, const char* name) {
  const auto st = t.scalar_type();
  TORCH_CHECK(st == at::kFloat || st == at::kDouble || st == at::kHalf || st == at::kBFloat16,
              name, " must be float32, float64, float16 or bfloat16, got ", st);
}

inline void same_dtype(const at::Tensor& t, const char* name, const at::Tensor& ref, const char* ref_name) {
  TORCH_CHECK(t.scalar_type() == ref.scalar_type(), name, " must have the dtype of ", ref_name, " (",
              ref.scalar_type(), "), got ", t.scalar_type());
}

// Kernel size, stride and dilation must be >= 1, padding >= 0.
inline void conv_params(int64_t kh, int64_t kw, int64_t sh, int64_t sw, int64_t ph, int64_t pw,
                        int64_t dh, int64_t dw) {
  TORCH_CHECK(kh >= 1 && kw >= 1, "kernel size (kh, kw) must be >= 1, got (", kh, ", ", kw, ")");
  TORCH_CHECK(sh >= 1 && sw >= 1, "stride (sh, sw) must be >= 1, got (", sh, ", ", sw, ")");
  TORCH_CHECK(ph >= 0 && pw >= 0, "padding (ph, pw) must be >= 0, got (", ph, ", ", pw, ")");
  TORCH_CHECK(dh >= 1 && dw >= 1, "dilation (dh, dw) must be >= 1, got (", dh, ", ", dw, ")");
}

// conv2d output extent: (in + 2p - d*(k-1) - 1) / s + 1; <= 0 when the kernel does not fit.
inline int64_t conv_out_size(int64_t in, int64_t k, int64_t s, int64_t p, int64_t d) {
  const int64_t span = in + 2 * p - d * (k - 1) - 1;
  return span < 0 ? 0 : span / s + 1;
}

// The output extent a caller claims (raw's Ho/Wo, or out_h/out_w) must be what conv2d gives.
inline void conv_out_matches(const char* what, int64_t got, const char* in_name, int64_t in, int64_t k,
                             int64_t s, int64_t p, int64_t d) {
  const int64_t want = conv_out_size(in, k, s, p, d);
  TORCH_CHECK(want >= 1, "the kernel (extent ", d * (k - 1) + 1, " with padding ", p,
              ") does not fit in mask ", in_name, "=", in);
  TORCH_CHECK(got == want, what, "=", got, " does not match conv2d's output size ", want, " for mask ",
              in_name, "=", in, ", kernel ", k, ", stride ", s, ", padding ", p, ", dilation ", d,
              " ((", in_name, " + 2p - d*(k-1) - 1)/s + 1)");
}

}  // namespace checks

// ---- patch attention ----
// Masked patch attention (SPEC §5), flash-style: the N x N score matrix is never stored.
// theta, phi (B, Ck, H, W), g (B, Cv, H, W), one dtype (f32/f64/f16/bf16), any strides;
// mask (B, 1, H, W) floating, 1 = valid, soft allowed. Maps are zero-padded to multiples of
// patch_size; N = ceil(H/p) * ceil(W/p) patches, vectors (c, ky, kx).
// Returns {out, lse}: out (B, Cv, H, W) contiguous, g's dtype, = fold(softmax(scale ThetaPhi^T) G)
// * (1 - mask); lse (B, N) float32 (float64 for float64 inputs), the log-sum-exp of each query's
// scaled scores, +inf for a query patch with no hole pixel (its output is 0 and it is skipped).
std::vector<at::Tensor> patch_attention_forward(
    const at::Tensor& theta, const at::Tensor& phi, const at::Tensor& g, const at::Tensor& mask,
    int64_t patch_size, double scale);

// Returns {d_theta, d_phi, d_g}, contiguous, in the inputs' dtype. grad_out has g's shape and
// dtype; out and lse are the forward's outputs (out gives rowsum(dO * O) without a sweep over keys).
std::vector<at::Tensor> patch_attention_backward(
    const at::Tensor& grad_out, const at::Tensor& theta, const at::Tensor& phi, const at::Tensor& g,
    const at::Tensor& mask, const at::Tensor& out, const at::Tensor& lse, int64_t patch_size, double scale);

}  // namespace mdrnet_fast

// ---- memory ----
namespace mdrnet_fast {
namespace checks {

inline void cpu_nd(const at::Tensor& t, const char* name, int64_t dim, const char* layout) {
  TORCH_CHECK(t.defined(), name, " must be a defined tensor");
  TORCH_CHECK(t.device().is_cpu(), name, " must be a CPU tensor, got device ", t.device());
  TORCH_CHECK(t.dim() == dim, name, " must be ", dim, "-D ", layout, ", got shape ", t.sizes());
}

}  // namespace checks

// Disentangled cosine memory (SPEC §4). q (B, n, C) and mem (n, m, C) may have different float
// dtypes; the read converts mem to q's accumulation dtype (float32, float64 for float64 q).
// Returns {q_hat (B, n, C) in q's dtype, attn (B, n, m) float32/float64 softmax weights}.
std::vector<at::Tensor> memory_read_forward(const at::Tensor& q, const at::Tensor& mem, double tau);

// grad (B, n, C) in q's dtype, attn as returned by the forward. Returns grad_q (B, n, C), q's dtype.
at::Tensor memory_read_backward(const at::Tensor& grad, const at::Tensor& q, const at::Tensor& mem,
                                const at::Tensor& attn, double tau);

// In place on mem (contiguous, any float dtype; q, v are taken in mem's accumulation dtype).
// present (B, n) bool, alpha in [0, 1]. Returns the chosen slots (B, n) int64, -1 where absent.
at::Tensor memory_update_(at::Tensor& mem, const at::Tensor& q, const at::Tensor& v, const at::Tensor& present,
                          double alpha);

}  // namespace mdrnet_fast

// ---- region pool ----
namespace mdrnet_fast {

// Region sums (SPEC §3). feat (B, C, H, W) float (NCHW or channels_last); seg either integer
// labels (B, H, W) in [0, num_classes) (checked) or float weights (B, num_classes, H, W) of any
// float dtype (an exactly one-hot seg is detected and takes the labels path).
// Returns {codes, area}: codes (B, n, C) in feat's dtype, contiguous, the per-region sums divided
// by the area when normalize (zero for an absent region); area (B, n) float32 (float64 for
// float64 feat) = sum_hw seg.
std::vector<at::Tensor> region_pool_forward(const at::Tensor& feat, const at::Tensor& seg,
                                            int64_t num_classes, bool normalize);

// out[b, :, h, w] = sum_i seg[b, i, h, w] * codes[b, i, :], (B, C, H, W) contiguous in codes'
// dtype; codes (B, n, C), seg as for region_pool_forward (at the output size).
at::Tensor region_broadcast_forward(const at::Tensor& codes, const at::Tensor& seg, int64_t num_classes);

}  // namespace mdrnet_fast
