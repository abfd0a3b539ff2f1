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

  // ---- memory ----
  m.def("memory_read_forward", &mdrnet_fast::memory_read_forward,
        "Cosine memory read: (q (B,n,C), mem (n,m,C), tau) -> [q_hat (B,n,C), attn (B,n,m) fp32/fp64]",
        py::arg("q"), py::arg("mem"), py::arg("tau"));
  m.def("memory_read_backward", &mdrnet_fast::memory_read_backward,
        "Cosine memory read backward: (grad, q, mem, attn, tau) -> grad_q (B,n,C)", py::arg("grad"),
        py::arg("q"), py::arg("mem"), py::arg("attn"), py::arg("tau"));
  m.def("memory_update_", &mdrnet_fast::memory_update_,
        "Batch-mean EMA memory update in place: (mem, q, v, present, alpha) -> slots (B,n) int64, -1 absent",
        py::arg("mem"), py::arg("q"), py::arg("v"), py::arg("present"), py::arg("alpha"));
  // ---- region pool ----
  m.def("region_pool_forward", &mdrnet_fast::region_pool_forward,
        "Region sums / averages: (feat, seg labels|weights, num_classes, normalize) -> [codes (B,n,C), area (B,n)]",
        py::arg("feat"), py::arg("seg"), py::arg("num_classes"), py::arg("normalize"));
  m.def("region_broadcast_forward", &mdrnet_fast::region_broadcast_forward,
        "Region broadcast: (codes (B,n,C), seg labels|weights, num_classes) -> (B,C,H,W)", py::arg("codes"),
        py::arg("seg"), py::arg("num_classes"));
  // ---- patch attention ----
  m.def("patch_attention_forward", &mdrnet_fast::patch_attention_forward,
        "Masked patch attention, flash-style: (theta, phi, g, mask, patch_size, scale) -> [out, lse]",
        py::arg("theta"), py::arg("phi"), py::arg("g"), py::arg("mask"), py::arg("patch_size"), py::arg("scale"));

  m.def("patch_attention_backward", &mdrnet_fast::patch_attention_backward,
        "Masked patch attention backward by recomputation -> [d_theta, d_phi, d_g]", py::arg("grad_out"),
        py::arg("theta"), py::arg("phi"), py::arg("g"), py::arg("mask"), py::arg("out"), py::arg("lse"),
        py::arg("patch_size"), py::arg("scale"));
}
