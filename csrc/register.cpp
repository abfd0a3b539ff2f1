// Python bindings of mdrnet_fast._C. The only translation unit that includes
// torch/python.h (the tensor type casters; lighter than torch/extension.h); kernels include ATen only.
#include <torch/python.h>
#include <pybind11/pybind11.h>

#ifdef _OPENMP
#include <omp.h>
#endif

#include "mdrnet_fast.h"

namespace py = pybind11;

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "mdrnet_fast CPU kernels";

  m.def("partial_conv_epilogue_forward", &mdrnet_fast::partial_conv_epilogue_forward,
        "Partial-conv epilogue: (raw, mask, bias|None, conv params, winsize, multi_channel) -> "
        "[out, new_mask, grad_scale]",
        py::arg("raw"), py::arg("mask"), py::arg("bias"), py::arg("kh"), py::arg("kw"), py::arg("sh"),
        py::arg("sw"), py::arg("ph"), py::arg("pw"), py::arg("dh"), py::arg("dw"), py::arg("winsize"),
        py::arg("multi_channel"));

  // grad_bias comes back as None when need_bias_grad is false (undefined tensor).
  m.def("partial_conv_epilogue_backward", &mdrnet_fast::partial_conv_epilogue_backward,
        "Partial-conv epilogue backward -> [grad_raw, grad_bias|None]", py::arg("grad_out"),
        py::arg("grad_scale"), py::arg("new_mask"), py::arg("need_bias_grad"));

  m.def("partial_conv_mask_sum", &mdrnet_fast::partial_conv_mask_sum,
        "Window sums of the channel-summed mask -> (B, 1, out_h, out_w) float32/float64",
        py::arg("mask"), py::arg("kh"), py::arg("kw"), py::arg("sh"), py::arg("sw"), py::arg("ph"),
        py::arg("pw"), py::arg("dh"), py::arg("dw"), py::arg("out_h"), py::arg("out_w"));

  m.def("openmp_threads", []() -> int {
#ifdef _OPENMP
    return omp_get_max_threads();
#else
    return 1;
#endif
  }, "omp_get_max_threads() as seen by the extension (1 without OpenMP)");

  m.def("has_openmp", []() -> bool {
#ifdef _OPENMP
    return true;
#else
    return false;
#endif
  }, "Whether the extension was compiled with OpenMP");

  // ---- patch attention ----
  m.def("patch_attention_forward", &mdrnet_fast::patch_attention_forward,
        "Masked patch attention, flash-style: (theta, phi, g, mask, patch_size, scale) -> [out, lse]",
        py::arg("theta"), py::arg("phi"), py::arg("g"), py::arg("mask"), py::arg("patch_size"), py::arg("scale"));

  m.def("patch_attention_backward", &mdrnet_fast::patch_attention_backward,
        "Masked patch attention backward by recomputation -> [d_theta, d_phi, d_g]", py::arg("grad_out"),
        py::arg("theta"), py::arg("phi"), py::arg("g"), py::arg("mask"), py::arg("lse"), py::arg("patch_size"),
        py::arg("scale"));
}
