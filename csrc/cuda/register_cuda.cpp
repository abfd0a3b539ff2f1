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
  // ---- partial conv epilogue / gated activation / SPADE modulate ----
  m.def("partial_conv_epilogue_forward", &C::partial_conv_epilogue_forward, py::arg("raw"), py::arg("mask"),
        py::arg("bias"), py::arg("kh"), py::arg("kw"), py::arg("sh"), py::arg("sw"), py::arg("ph"), py::arg("pw"),
        py::arg("dh"), py::arg("dw"), py::arg("winsize"), py::arg("multi_channel"),
        "partial conv epilogue: (raw, mask, bias, geometry, winsize, multi_channel) -> [out, new_mask, grad_scale]");
  m.def("partial_conv_epilogue_backward", &C::partial_conv_epilogue_backward, py::arg("grad_out"),
        py::arg("grad_scale"), py::arg("new_mask"), py::arg("need_bias_grad"),
        "partial conv epilogue backward -> [grad_raw, grad_bias or None]");
  m.def("partial_conv_mask_sum", &C::partial_conv_mask_sum, py::arg("mask"), py::arg("kh"), py::arg("kw"),
        py::arg("sh"), py::arg("sw"), py::arg("ph"), py::arg("pw"), py::arg("dh"), py::arg("dw"), py::arg("out_h"),
        py::arg("out_w"), "window sums of the channel-summed mask, (B, 1, out_h, out_w) fp32 (fp64)");
  m.def("gated_activation_forward", &C::gated_activation_forward, py::arg("y"), py::arg("activation"),
        py::arg("negative_slope"), "act(y[:, :C]) * sigmoid(y[:, C:])");
  m.def("gated_activation_backward", &C::gated_activation_backward, py::arg("grad_out"), py::arg("y"),
        py::arg("activation"), py::arg("negative_slope"), "grad_y (B, 2C, H, W) of the gated activation");
  m.def("spade_modulate_forward", &C::spade_modulate_forward, py::arg("x"), py::arg("gamma"), py::arg("beta"),
        py::arg("eps"), "SPADE modulation -> [out, mean (B, C), rstd (B, C)]");
  m.def("spade_modulate_backward", &C::spade_modulate_backward, py::arg("grad_out"), py::arg("x"), py::arg("gamma"),
        py::arg("mean"), py::arg("rstd"), py::arg("need_x"), py::arg("need_gamma"), py::arg("need_beta"),
        "SPADE modulation backward -> [grad_x, grad_gamma, grad_beta], None where not needed");
  }
