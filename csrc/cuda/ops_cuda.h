// Declarations of the CUDA kernels' host entry points (mdrnet_fast._C_cuda). One block per op, defined in
// the op's own .cu file; register_cuda.cpp binds them. Each takes and returns at::Tensor only, checks
// every argument (naming it) and runs on the tensors' device and current stream.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <vector>

namespace mdrnet_fast {
namespace cuda {

// (each op appends its block here)

}  // namespace cuda
}  // namespace mdrnet_fast
