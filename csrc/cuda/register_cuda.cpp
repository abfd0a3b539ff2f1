// Python bindings of mdrnet_fast._C_cuda: the only CUDA-extension translation unit that includes
// torch/python.h; the kernels (.cu) include ATen and c10::cuda only.
#include <torch/python.h>
#include <pybind11/pybind11.h>

#include "cuda/ops_cuda.h"

namespace py = pybind11;
namespace C = mdrnet_fast::cuda;

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "mdrnet_fast CUDA kernels";
  // (each op appends its m.def block here)
}
