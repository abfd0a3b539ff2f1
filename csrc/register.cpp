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

  m.def("gated_activation_forward", &mdrnet_fast::gated_activation_forward,
        "Gated activation: act(y[:, :C]) * sigmoid(y[:, C:]) -> (B, C, H, W)", py::arg("y"),
        py::arg("activation"), py::arg("negative_slope"));

  m.def("gated_activation_backward", &mdrnet_fast::gated_activation_backward,
        "Gated activation backward -> grad_y (B, 2C, H, W)", py::arg("grad_out"), py::arg("y"),
        py::arg("activation"), py::arg("negative_slope"));

  m.def("spade_modulate_forward", &mdrnet_fast::spade_modulate_forward,
        "SPADE modulation: (x, gamma, beta, eps) -> [out, mean (B, C), rstd (B, C)]", py::arg("x"),
        py::arg("gamma"), py::arg("beta"), py::arg("eps"));

  // each gradient comes back as None when not needed (undefined tensor)
  m.def("spade_modulate_backward", &mdrnet_fast::spade_modulate_backward,
        "SPADE modulation backward -> [grad_x|None, grad_gamma|None, grad_beta|None]", py::arg("grad_out"),
        py::arg("x"), py::arg("gamma"), py::arg("mean"), py::arg("rstd"), py::arg("need_x"),
        py::arg("need_gamma"), py::arg("need_beta"));

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
}
