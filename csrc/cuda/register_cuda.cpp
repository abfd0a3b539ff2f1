// Python bindings of mdrnet_fast._C_cuda: the only CUDA-extension translation unit that includes
// torch/python.h; the kernels (.cu) include ATen and c10::cuda only.
#include <torch/python.h>
#include <pybind11/pybind11.h>

#include "cuda/ops_cuda.h"

namespace py = pybind11;
namespace C = mdrnet_fast::cuda;

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "mdrnet_fast CUDA kernels";
  // ---- region pool (region_pool.cu) ----
  m.def("region_pool_forward", &C::region_pool_forward,
        "Region sums / averages: (feat, seg labels|weights, num_classes, normalize) -> [codes (B,n,C), area (B,n)]",
        py::arg("feat"), py::arg("seg"), py::arg("num_classes"), py::arg("normalize"));
  m.def("region_broadcast_forward", &C::region_broadcast_forward,
        "Region broadcast: (codes (B,n,C), seg labels|weights, num_classes) -> (B,C,H,W)", py::arg("codes"),
        py::arg("seg"), py::arg("num_classes"));
  // ---- memory (memory.cu) ----
  m.def("memory_read_forward", &C::memory_read_forward,
        "Cosine memory read: (q (B,n,C), mem (n,m,C), tau) -> [q_hat (B,n,C), attn (B,n,m) fp32/fp64]",
        py::arg("q"), py::arg("mem"), py::arg("tau"));
  m.def("memory_read_backward", &C::memory_read_backward,
        "Cosine memory read backward: (grad, q, mem, attn, tau) -> grad_q (B,n,C)", py::arg("grad"), py::arg("q"),
        py::arg("mem"), py::arg("attn"), py::arg("tau"));
  m.def("memory_update_", &C::memory_update_,
        "Batch-mean EMA memory update in place: (mem, q, v, present, alpha) -> slots (B,n) int64, -1 absent",
        py::arg("mem"), py::arg("q"), py::arg("v"), py::arg("present"), py::arg("alpha"));
  // (each op appends its m.def block here)
}
