// Shared by the csrc/cpu kernels: function attributes, the parallel grain size, layout handling.
#pragma once

#include <ATen/core/Tensor.h>

#include <algorithm>
#include <cstdint>

// GCC on x86-64 Linux: compile the marked function for AVX-512 (x86-64-v4), AVX2 (v3) and baseline,
// the best picked at load time (the extension itself targets baseline x86-64; the arch= names need GCC 11).
// Define MDRNET_FAST_NO_CLONES to build the baseline only.
#if defined(__GNUC__) && !defined(__clang__) && __GNUC__ >= 11 && defined(__x86_64__) && defined(__linux__) && \
    !defined(MDRNET_FAST_NO_CLONES)
#define MDR_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define MDR_CLONES
#endif
#if defined(__GNUC__)
#define MDR_INLINE inline __attribute__((always_inline))
#else
#define MDR_INLINE inline
#endif

namespace mdrnet_fast {
namespace cpu {

// Work (elements touched) we want per parallel task, same order as at::internal::GRAIN_SIZE.
constexpr int64_t kTaskWork = 32768;

// The at::parallel_for grain for items of `work_per_item` elements each.
inline int64_t grain_for(int64_t work_per_item) {
  return std::max<int64_t>(1, kTaskWork / std::max<int64_t>(1, work_per_item));
}

enum class Layout { NCHW, NHWC };

// NCHW and channels_last inputs both get a native loop order. Anything else (sliced, expanded, ...)
// is made contiguous once. A tensor that is both (one channel or a single pixel) indexes
// identically either way, so NCHW is picked.
inline Layout normalise_layout(at::Tensor& t) {
  if (t.is_contiguous()) return Layout::NCHW;
  if (t.is_contiguous(at::MemoryFormat::ChannelsLast)) return Layout::NHWC;
  t = t.contiguous();
  return Layout::NCHW;
}

}  // namespace cpu
}  // namespace mdrnet_fast
