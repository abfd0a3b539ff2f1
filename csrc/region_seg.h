// The segmentation argument of region pooling / broadcast as the kernels of both backends read it: integer
// labels, or soft (or one-hot) float weights. Shared by csrc/cpu/region_pool.cpp and csrc/cuda/region_pool.cu;
// each caller checks the device first.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <limits>

#include "mdrnet_fast.h"

namespace mdrnet_fast {

struct SegArg {
  at::Tensor labels;   // int64 (B, H, W) contiguous, or undefined
  at::Tensor weights;  // accumulation dtype (B, n, H*W) contiguous, or undefined
};

// Checks seg against (B, n, H, W), which come from the argument `ref_name`, and returns it in the form the
// kernels read. Conversions run on seg's device (a CUDA caller holds its device guard).
inline SegArg seg_arg(const at::Tensor& seg, int64_t B, int64_t H, int64_t W, int64_t n, at::ScalarType acc,
                      const char* ref_name) {
  TORCH_CHECK(n >= 1, "num_classes must be >= 1, got ", n);
  TORCH_CHECK(H * W < std::numeric_limits<int32_t>::max(), "seg must have H*W < 2^31 - 1, got H*W = ", H * W);
  SegArg out;
  if (seg.is_floating_point()) {
    checks::floating(seg, "seg");
    TORCH_CHECK(seg.dim() == 4 && seg.size(0) == B && seg.size(1) == n && seg.size(2) == H && seg.size(3) == W,
                "float seg must have shape (B, num_classes, H, W) = (", B, ", ", n, ", ", H, ", ", W,
                ") to match ", ref_name, ", got ", seg.sizes());
    out.weights = seg.to(acc).contiguous().view({B, n, H * W});
  } else {
    TORCH_CHECK(at::isIntegralType(seg.scalar_type(), /*includeBool=*/false),
                "seg must be float (B, n, H, W) weights or integer (B, H, W) labels, got ", seg.scalar_type());
    TORCH_CHECK(seg.dim() == 3 && seg.size(0) == B && seg.size(1) == H && seg.size(2) == W,
                "seg labels must have shape (B, H, W) = (", B, ", ", H, ", ", W, ") to match ", ref_name,
                ", got ", seg.sizes());
    out.labels = seg.to(at::kLong).contiguous();
  }
  return out;
}

// region_broadcast's codes (B, n, C) and seg ranks, after the caller's device and dtype checks of codes.
inline void check_broadcast_shapes(const at::Tensor& codes, const at::Tensor& seg, int64_t n) {
  TORCH_CHECK(codes.size(1) == n, "codes must have shape (B, num_classes=", n, ", C), got ", codes.sizes());
  TORCH_CHECK(seg.defined() && (seg.dim() == 3 || seg.dim() == 4),
              "seg must be (B, num_classes, H, W) float weights or (B, H, W) integer labels, got ",
              seg.defined() ? seg.sizes() : at::IntArrayRef{});
}

}  // namespace mdrnet_fast
