// Gated activation on CPU (SPEC §2): out = act(y[:, :C]) * sigmoid(y[:, C:]), and its backward
// grad_y = [grad_out * sigmoid(gate) * act'(feat), grad_out * act(feat) * sigmoid'(gate)], each one
// fused pass over y (and grad_out) instead of the ~10 full-size temporaries of the eager formula.
//
// NCHW: per sample the feature half and the gate half are two contiguous blocks of C*H*W values.
// channels_last: per pixel the 2C channels are contiguous, features first, then gates: rows of C.
// Either way the work is "rows of contiguous values", which is what the inner kernels take.
//
// float (and float16/bfloat16, computed in float) uses a branch-free exp that the compiler
// vectorises; the inner kernels are compiled for AVX-512, AVX2+FMA and baseline x86-64 and the
// best one the CPU has is picked at load time. float64 uses std::exp / std::expm1.
#include "mdrnet_fast.h"
#include "cpu/common.h"

#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <string>


namespace mdrnet_fast {
namespace {

enum Act : int { kElu = 0, kLeakyRelu = 1, kRelu = 2, kNone = 3 };

Act parse_activation(const std::string& name) {
  if (name == "elu") return kElu;
  if (name == "leaky_relu") return kLeakyRelu;
  if (name == "relu") return kRelu;
  if (name == "none") return kNone;
  TORCH_CHECK(false, "activation must be one of 'elu', 'leaky_relu', 'relu', 'none', got '", name, "'");
}

// Output values per parallel task: enough to amortise the task, small enough to balance.
constexpr int64_t kTaskWork = 16384;
// float16/bfloat16 are widened to float in chunks of this many values (stack buffers).
constexpr int64_t kChunk = 256;

// ---------------------------------------------------------------------------------------------
// float math. exp for x <= 0 only (every caller passes min(f, 0) or -|g|), branch-free so loops
// over it vectorise: x = n*ln2 + r, |r| <= ln2/2, exp(r) - 1 = r + r^2 P(r) (Cephes expf's
// minimax P, ~1 ulp), 2^n built in the exponent bits. Returned as two parts so that both
//   exp(x)   = scale * p + scale        and
//   expm1(x) = scale * p + (scale - 1)
// come out accurate: for |x| < ln2/2, scale == 1 and expm1 is p itself (no cancellation).
// Below ln(FLT_MIN) exp is flushed to 0 (instead of a denormal) and expm1 is -1.
// ---------------------------------------------------------------------------------------------
constexpr float kExpMin = -87.33654475f;  // ln(FLT_MIN)
constexpr float kLog2e = 1.44269504088896341f;
constexpr float kLn2Hi = 0.693359375f;  // few mantissa bits: n * kLn2Hi is exact
constexpr float kLn2Lo = -2.12194440e-4f;

MDR_INLINE void exp_parts(float x, float& scale, float& p) {
  const bool underflow = x < kExpMin;
  x = x >= kExpMin ? x : kExpMin;  // also maps NaN (callers propagate NaN themselves)
  // t in [0.5, 126.5]: truncation is floor, so k = round(x * log2e) + 126 in [0, 126].
  const float t = x * kLog2e + 126.5f;
  const int32_t k = static_cast<int32_t>(t);
  const float n = static_cast<float>(k - 126);
  const float r = (x - n * kLn2Hi) - n * kLn2Lo;
  float q = 1.9875691500e-4f;
  q = q * r + 1.3981999507e-3f;
  q = q * r + 8.3334519073e-3f;
  q = q * r + 4.1665795894e-2f;
  q = q * r + 1.6666665459e-1f;
  q = q * r + 5.0000001201e-1f;
  p = r + (r * r) * q;
  const int32_t bits = (k + 1) << 23;  // 2^n, n = k - 126: biased exponent n + 127 = k + 1 in [1, 127]
  std::memcpy(&scale, &bits, sizeof(float));
  scale = underflow ? 0.f : scale;  // exp -> 0, expm1 -> -1
}

// sigmoid(g) and sigmoid'(g) = s (1 - s), stable for any g: with e = exp(-|g|) in (0, 1],
//   s = 1 / (1 + e) for g >= 0, e / (1 + e) for g < 0;   s (1 - s) = e / (1 + e)^2.
MDR_INLINE void sigmoid_f(float g, float& s, float& ds) {
  float sc, p;
  exp_parts(g > 0.f ? -g : g, sc, p);
  const float e = sc * p + sc;
  const float q = 1.f / (1.f + e);
  const float eq = e * q;
  s = g < 0.f ? eq : q;
  ds = eq * q;
  s = g == g ? s : g;  // NaN in, NaN out
  ds = g == g ? ds : g;
}

MDR_INLINE float sigmoid_only(float g) {
  float sc, p;
  exp_parts(g > 0.f ? -g : g, sc, p);
  const float e = sc * p + sc;
  const float q = 1.f / (1.f + e);
  const float s = g < 0.f ? e * q : q;
  return g == g ? s : g;
}

// act(f) and act'(f). The derivative at f == 0 is the one of the composite kernel (f > 0 ? 1 : ...).
template <int ACT>
MDR_INLINE void act_f(float f, float slope, float& a, float& da) {
  if (ACT == kElu) {
    float sc, p;
    exp_parts(f < 0.f ? f : 0.f, sc, p);
    const float em1 = sc * p + (sc - 1.f);
    a = f <= 0.f ? em1 : f;  // NaN stays NaN
    da = f > 0.f ? 1.f : sc * p + sc;
  } else if (ACT == kLeakyRelu) {
    a = f > 0.f ? f : f * slope;
    da = f > 0.f ? 1.f : slope;
  } else if (ACT == kRelu) {
    a = f <= 0.f ? 0.f : f;  // NaN stays NaN, like torch.relu
    da = f > 0.f ? 1.f : 0.f;
  } else {
    a = f;
    da = 1.f;
  }
}

template <int ACT>
MDR_INLINE float act_only(float f, float slope) {
  if (ACT == kElu) {
    float sc, p;
    exp_parts(f < 0.f ? f : 0.f, sc, p);
    const float em1 = sc * p + (sc - 1.f);
    return f <= 0.f ? em1 : f;
  } else if (ACT == kLeakyRelu) {
    return f > 0.f ? f : f * slope;
  } else if (ACT == kRelu) {
    return f <= 0.f ? 0.f : f;
  } else {
    return f;
  }
}

// rows x n values; row r of the features starts at f + r*in_stride, its gates at g + r*in_stride,
// its outputs at o + r*out_stride.
template <int ACT>
MDR_INLINE void fwd_rows_f32(const float* f, const float* g, float* o, int64_t rows, int64_t n,
                             int64_t in_stride, int64_t out_stride, float slope) {
  for (int64_t r = 0; r < rows; ++r) {
    const float* __restrict__ fr = f + r * in_stride;
    const float* __restrict__ gr = g + r * in_stride;
    float* __restrict__ orow = o + r * out_stride;
#pragma GCC ivdep
    for (int64_t i = 0; i < n; ++i) orow[i] = act_only<ACT>(fr[i], slope) * sigmoid_only(gr[i]);
  }
}

// Same row structure; grad_out rows at go + r*out_stride, grad_f / grad_g rows at df / dg + r*in_stride.
template <int ACT>
MDR_INLINE void bwd_rows_f32(const float* go, const float* f, const float* g, float* df, float* dg,
                             int64_t rows, int64_t n, int64_t in_stride, int64_t out_stride, float slope) {
  for (int64_t r = 0; r < rows; ++r) {
    const float* __restrict__ gor = go + r * out_stride;
    const float* __restrict__ fr = f + r * in_stride;
    const float* __restrict__ gr = g + r * in_stride;
    float* __restrict__ dfr = df + r * in_stride;
    float* __restrict__ dgr = dg + r * in_stride;
#pragma GCC ivdep
    for (int64_t i = 0; i < n; ++i) {
      float a, da, s, ds;
      act_f<ACT>(fr[i], slope, a, da);
      sigmoid_f(gr[i], s, ds);
      const float gv = gor[i];
      dfr[i] = gv * s * da;
      dgr[i] = gv * a * ds;
    }
  }
}

MDR_CLONES void gated_fwd_f32(const float* f, const float* g, float* o, int64_t rows, int64_t n,
                              int64_t in_stride, int64_t out_stride, int act, float slope) {
  switch (act) {
    case kElu: fwd_rows_f32<kElu>(f, g, o, rows, n, in_stride, out_stride, slope); break;
    case kLeakyRelu: fwd_rows_f32<kLeakyRelu>(f, g, o, rows, n, in_stride, out_stride, slope); break;
    case kRelu: fwd_rows_f32<kRelu>(f, g, o, rows, n, in_stride, out_stride, slope); break;
    default: fwd_rows_f32<kNone>(f, g, o, rows, n, in_stride, out_stride, slope); break;
  }
}

MDR_CLONES void gated_bwd_f32(const float* go, const float* f, const float* g, float* df, float* dg,
                              int64_t rows, int64_t n, int64_t in_stride, int64_t out_stride, int act,
                              float slope) {
  switch (act) {
    case kElu: bwd_rows_f32<kElu>(go, f, g, df, dg, rows, n, in_stride, out_stride, slope); break;
    case kLeakyRelu: bwd_rows_f32<kLeakyRelu>(go, f, g, df, dg, rows, n, in_stride, out_stride, slope); break;
    case kRelu: bwd_rows_f32<kRelu>(go, f, g, df, dg, rows, n, in_stride, out_stride, slope); break;
    default: bwd_rows_f32<kNone>(go, f, g, df, dg, rows, n, in_stride, out_stride, slope); break;
  }
}

// float16/bfloat16 <-> float, vectorised (the loops over c10's conversions vectorise in every clone).
MDR_CLONES void widen_f16(const c10::Half* __restrict__ src, float* __restrict__ dst, int64_t n) {
  for (int64_t i = 0; i < n; ++i) dst[i] = static_cast<float>(src[i]);
}
MDR_CLONES void widen_bf16(const c10::BFloat16* __restrict__ src, float* __restrict__ dst, int64_t n) {
  for (int64_t i = 0; i < n; ++i) dst[i] = static_cast<float>(src[i]);
}
MDR_CLONES void narrow_f16(const float* __restrict__ src, c10::Half* __restrict__ dst, int64_t n) {
  for (int64_t i = 0; i < n; ++i) dst[i] = static_cast<c10::Half>(src[i]);
}
MDR_CLONES void narrow_bf16(const float* __restrict__ src, c10::BFloat16* __restrict__ dst, int64_t n) {
  for (int64_t i = 0; i < n; ++i) dst[i] = static_cast<c10::BFloat16>(src[i]);
}
inline void widen(const c10::Half* src, float* dst, int64_t n) { widen_f16(src, dst, n); }
inline void widen(const c10::BFloat16* src, float* dst, int64_t n) { widen_bf16(src, dst, n); }
inline void narrow(const float* src, c10::Half* dst, int64_t n) { narrow_f16(src, dst, n); }
inline void narrow(const float* src, c10::BFloat16* dst, int64_t n) { narrow_bf16(src, dst, n); }

// ---------------------------------------------------------------------------------------------
// Row kernels per storage type: float goes straight to the vectorised kernels, float16/bfloat16
// are widened to float in stack chunks, float64 is computed in double with the libm functions.
// ---------------------------------------------------------------------------------------------
template <typename T>
struct Rows {
  static void fwd(const T* f, const T* g, T* o, int64_t rows, int64_t n, int64_t in_stride, int64_t out_stride,
                  int act, float slope) {
    float fb[kChunk], gb[kChunk], ob[kChunk];
    for (int64_t r = 0; r < rows; ++r) {
      for (int64_t i0 = 0; i0 < n; i0 += kChunk) {
        const int64_t m = std::min(kChunk, n - i0);
        widen(f + r * in_stride + i0, fb, m);
        widen(g + r * in_stride + i0, gb, m);
        gated_fwd_f32(fb, gb, ob, 1, m, 0, 0, act, slope);
        narrow(ob, o + r * out_stride + i0, m);
      }
    }
  }
  static void bwd(const T* go, const T* f, const T* g, T* df, T* dg, int64_t rows, int64_t n, int64_t in_stride,
                  int64_t out_stride, int act, float slope) {
    float gob[kChunk], fb[kChunk], gb[kChunk], dfb[kChunk], dgb[kChunk];
    for (int64_t r = 0; r < rows; ++r) {
      for (int64_t i0 = 0; i0 < n; i0 += kChunk) {
        const int64_t m = std::min(kChunk, n - i0);
        widen(go + r * out_stride + i0, gob, m);
        widen(f + r * in_stride + i0, fb, m);
        widen(g + r * in_stride + i0, gb, m);
        gated_bwd_f32(gob, fb, gb, dfb, dgb, 1, m, 0, 0, act, slope);
        narrow(dfb, df + r * in_stride + i0, m);
        narrow(dgb, dg + r * in_stride + i0, m);
      }
    }
  }
};

template <>
struct Rows<float> {
  static void fwd(const float* f, const float* g, float* o, int64_t rows, int64_t n, int64_t in_stride,
                  int64_t out_stride, int act, float slope) {
    gated_fwd_f32(f, g, o, rows, n, in_stride, out_stride, act, slope);
  }
  static void bwd(const float* go, const float* f, const float* g, float* df, float* dg, int64_t rows, int64_t n,
                  int64_t in_stride, int64_t out_stride, int act, float slope) {
    gated_bwd_f32(go, f, g, df, dg, rows, n, in_stride, out_stride, act, slope);
  }
};

// float64: the definition, in double, with the libm functions.
inline double sigmoid_d(double g, double& ds) {
  const double e = std::exp(-std::fabs(g));
  const double q = 1.0 / (1.0 + e);
  ds = e * q * q;
  return g < 0 ? e * q : q;
}

inline void act_d(double f, int act, double slope, double& a, double& da) {
  switch (act) {
    case kElu:
      a = f > 0 ? f : std::expm1(f);
      da = f > 0 ? 1.0 : std::exp(f);
      break;
    case kLeakyRelu:
      a = f > 0 ? f : f * slope;
      da = f > 0 ? 1.0 : slope;
      break;
    case kRelu:
      a = f > 0 ? f : (f == f ? 0.0 : f);
      da = f > 0 ? 1.0 : 0.0;
      break;
    default:
      a = f;
      da = 1.0;
  }
}

template <>
struct Rows<double> {
  static void fwd(const double* f, const double* g, double* o, int64_t rows, int64_t n, int64_t in_stride,
                  int64_t out_stride, int act, double slope) {
    for (int64_t r = 0; r < rows; ++r) {
      for (int64_t i = 0; i < n; ++i) {
        double a, da, ds;
        act_d(f[r * in_stride + i], act, slope, a, da);
        o[r * out_stride + i] = a * sigmoid_d(g[r * in_stride + i], ds);
      }
    }
  }
  static void bwd(const double* go, const double* f, const double* g, double* df, double* dg, int64_t rows,
                  int64_t n, int64_t in_stride, int64_t out_stride, int act, double slope) {
    for (int64_t r = 0; r < rows; ++r) {
      for (int64_t i = 0; i < n; ++i) {
        double a, da, ds;
        act_d(f[r * in_stride + i], act, slope, a, da);
        const double s = sigmoid_d(g[r * in_stride + i], ds);
        const double gv = go[r * out_stride + i];
        df[r * in_stride + i] = gv * s * da;
        dg[r * in_stride + i] = gv * a * ds;
      }
    }
  }
};

using cpu::Layout;
using cpu::normalise_layout;

inline at::MemoryFormat format_of(Layout layout) {
  return layout == Layout::NHWC ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous;
}

// Calls body(rows, n, in_off, out_off) over the parallel tasks: each call covers `rows` rows of n
// contiguous values, features at y + in_off (gates C further in NHWC, C*H*W further in NCHW) and
// outputs (or grad_out) at out_off. in_stride / out_stride between rows: 2C / C (NHWC only).
template <typename F>
void for_each_rows(Layout layout, int64_t B, int64_t C, int64_t HW, const F& body) {
  if (layout == Layout::NCHW) {
    // Sample b: features [b*2C*HW, b*2C*HW + C*HW), gates C*HW further; outputs at b*C*HW.
    const int64_t per = C * HW;
    at::parallel_for(0, B * per, kTaskWork, [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end;) {
        const int64_t b = i / per, j = i % per;
        const int64_t m = std::min(per - j, end - i);
        body(int64_t(1), m, b * 2 * per + j, b * per + j);
        i += m;
      }
    });
  } else {
    // Pixel p: features at p*2C, gates at p*2C + C, outputs at p*C.
    at::parallel_for(0, B * HW, std::max<int64_t>(1, kTaskWork / std::max<int64_t>(C, 1)),
                     [&](int64_t begin, int64_t end) { body(end - begin, C, begin * 2 * C, begin * C); });
  }
}

}  // namespace

at::Tensor gated_activation_forward(const at::Tensor& y_in, const std::string& activation, double negative_slope) {
  checks::cpu_4d(y_in, "y", "(B, 2C, H, W)");
  checks::floating(y_in, "y");
  TORCH_CHECK(y_in.size(1) % 2 == 0, "y must have an even number of channels (features then gates), got shape ",
              y_in.sizes());
  const int act = parse_activation(activation);

  at::Tensor y = y_in;
  const Layout layout = normalise_layout(y);
  const int64_t B = y.size(0), C = y.size(1) / 2, H = y.size(2), W = y.size(3), HW = H * W;
  at::Tensor out = at::empty({B, C, H, W}, y.options().memory_format(format_of(layout)));
  if (out.numel() == 0) return out;

  const int64_t gate_off = layout == Layout::NCHW ? C * HW : C;
  const int64_t in_stride = layout == Layout::NCHW ? 0 : 2 * C;
  const int64_t out_stride = layout == Layout::NCHW ? 0 : C;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, y.scalar_type(), "gated_activation_forward", [&] {
    const scalar_t* yp = y.const_data_ptr<scalar_t>();
    scalar_t* op = out.mutable_data_ptr<scalar_t>();
    using slope_t = std::conditional_t<std::is_same_v<scalar_t, double>, double, float>;
    const slope_t slope = static_cast<slope_t>(negative_slope);
    for_each_rows(layout, B, C, HW, [&](int64_t rows, int64_t n, int64_t in_off, int64_t out_off) {
      Rows<scalar_t>::fwd(yp + in_off, yp + in_off + gate_off, op + out_off, rows, n, in_stride, out_stride, act,
                          slope);
    });
  });
  return out;
}

at::Tensor gated_activation_backward(const at::Tensor& grad_out_in, const at::Tensor& y_in,
                                     const std::string& activation, double negative_slope) {
  checks::cpu_4d(y_in, "y", "(B, 2C, H, W)");
  checks::floating(y_in, "y");
  TORCH_CHECK(y_in.size(1) % 2 == 0, "y must have an even number of channels (features then gates), got shape ",
              y_in.sizes());
  checks::cpu_4d(grad_out_in, "grad_out", "(B, C, H, W)");
  TORCH_CHECK(grad_out_in.size(0) == y_in.size(0) && grad_out_in.size(1) * 2 == y_in.size(1) &&
                  grad_out_in.size(2) == y_in.size(2) && grad_out_in.size(3) == y_in.size(3),
              "grad_out must have shape (B, C, H, W) = (", y_in.size(0), ", ", y_in.size(1) / 2, ", ", y_in.size(2),
              ", ", y_in.size(3), ") for y of shape ", y_in.sizes(), ", got ", grad_out_in.sizes());
  checks::floating(grad_out_in, "grad_out");
  const int act = parse_activation(activation);

  at::Tensor y = y_in;
  const Layout layout = normalise_layout(y);
  // grad_out in y's layout and dtype (a no-op in the usual case: autograd hands the output's own).
  const at::Tensor grad_out = grad_out_in.to(y.scalar_type()).contiguous(format_of(layout));
  const int64_t B = y.size(0), C = y.size(1) / 2, H = y.size(2), W = y.size(3), HW = H * W;
  at::Tensor grad_y = at::empty(y.sizes(), y.options().memory_format(format_of(layout)));
  if (grad_y.numel() == 0) return grad_y;

  const int64_t gate_off = layout == Layout::NCHW ? C * HW : C;
  const int64_t in_stride = layout == Layout::NCHW ? 0 : 2 * C;
  const int64_t out_stride = layout == Layout::NCHW ? 0 : C;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, y.scalar_type(), "gated_activation_backward", [&] {
    const scalar_t* yp = y.const_data_ptr<scalar_t>();
    const scalar_t* gp = grad_out.const_data_ptr<scalar_t>();
    scalar_t* dp = grad_y.mutable_data_ptr<scalar_t>();
    using slope_t = std::conditional_t<std::is_same_v<scalar_t, double>, double, float>;
    const slope_t slope = static_cast<slope_t>(negative_slope);
    for_each_rows(layout, B, C, HW, [&](int64_t rows, int64_t n, int64_t in_off, int64_t out_off) {
      Rows<scalar_t>::bwd(gp + out_off, yp + in_off, yp + in_off + gate_off, dp + in_off, dp + in_off + gate_off,
                          rows, n, in_stride, out_stride, act, slope);
    });
  });
  return grad_y;
}

}  // namespace mdrnet_fast
