// Shared by the CUDA kernels of mdrnet_fast._C_cuda: argument checks that name the argument, launch
// checks, the dtype dispatch and the accumulation type. Kernels include this header only (ATen + c10::cuda),
// never torch/extension.h: that is register_cuda.cpp's job, and it keeps nvcc's work small.
#pragma once

#include <ATen/core/Tensor.h>
#include <ATen/Dispatch.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAException.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <cstdint>

// acc_dtype and the argument checks shared with the CPU kernels (checks::floating, ...): same messages
#include "mdrnet_fast.h"

namespace mdrnet_fast {
namespace cuda {

// fp32 accumulation for fp32/fp16/bf16, fp64 for fp64 (gradcheck and the 1e-10 parity).
template <typename T> struct Acc { using type = float; };
template <> struct Acc<double> { using type = double; };
template <typename T> using acc_t = typename Acc<T>::type;

// Every tensor argument: defined, on a CUDA device, the expected rank; the message names it.
inline void check_cuda(const at::Tensor& t, const char* name, int64_t dim) {
  TORCH_CHECK(t.defined(), name, " must be a tensor, got None");
  TORCH_CHECK(t.is_cuda(), name, " must be a CUDA tensor, got one on ", t.device());
  TORCH_CHECK(dim < 0 || t.dim() == dim, name, " must have ", dim, " dimensions, got shape ", t.sizes());
}

inline void check_same_device(const at::Tensor& a, const char* na, const at::Tensor& b, const char* nb) {
  TORCH_CHECK(a.device() == b.device(), nb, " must be on ", na, "'s device ", a.device(), ", got ", b.device());
}

inline void check_same_dtype(const at::Tensor& a, const char* na, const at::Tensor& b, const char* nb) {
  TORCH_CHECK(a.scalar_type() == b.scalar_type(), nb, " must have ", na, "'s dtype ", a.scalar_type(), ", got ",
              b.scalar_type());
}

// Blocks for n elements at `threads` per block, capped (grid-stride loops cover the rest).
inline unsigned int blocks_for(int64_t n, int threads, int64_t cap = 65535LL * 8) {
  int64_t b = (n + threads - 1) / threads;
  if (b < 1) b = 1;
  return static_cast<unsigned int>(b < cap ? b : cap);
}

}  // namespace cuda
}  // namespace mdrnet_fast

// float, double, half, bfloat16 -> scalar_t
#define MDR_DISPATCH_FLOATS(TYPE, NAME, ...) \
  AT_DISPATCH_FLOATING_TYPES_AND2(at::ScalarType::Half, at::ScalarType::BFloat16, TYPE, NAME, __VA_ARGS__)

// after every <<<...>>>: turns a bad launch into a Python RuntimeError naming the kernel's file and line
#define MDR_LAUNCH_CHECK() C10_CUDA_KERNEL_LAUNCH_CHECK()
