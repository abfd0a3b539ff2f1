// Gated activation on CUDA (SPEC §2): out = act(y[:, :C]) * sigmoid(y[:, C:]) and its backward
// grad_y = [grad_out * sigmoid(g) * act'(f), grad_out * act(f) * sigmoid(g) * (1 - sigmoid(g))]; the
// same contract as csrc/cpu/gated_activation.cpp (activations elu / leaky_relu / relu / none, the
// derivative at f == 0 is the one for f <= 0, NaN in gives NaN out).
//
// Dense path (y, and grad_out in the backward, contiguous in the output's format: NCHW, or channels_last
// when y is): output element i (memory order) has its feature at y[i + (i / half) * half] and its gate
// `half` further, half = C*H*W (NCHW) or C (channels_last). With half a multiple of the vector width and
// 16-byte-aligned pointers, each thread moves 16 bytes per load / store (4 float, 8 half, 2 double);
// otherwise one element per thread. Any other strides: one element per thread in NCHW order, every
// tensor addressed through its own strides (no copies).
// Math in float (double for double); sigmoid as 1/(1+e), e = exp(-|g|), stable for any g.
#include "cuda/cuda_common.cuh"
#include "cuda/ops_cuda.h"

#include <ATen/ops/empty.h>

#include <string>

namespace mdrnet_fast {
namespace cuda {
// Helpers in their own namespace: no clash with names other .cu files or cuda_common.cuh may add.
namespace gated {
namespace {

enum Act : int { kElu = 0, kLeakyRelu = 1, kRelu = 2, kNone = 3 };

int parse_activation(const std::string& name) {
  if (name == "elu") return kElu;
  if (name == "leaky_relu") return kLeakyRelu;
  if (name == "relu") return kRelu;
  if (name == "none") return kNone;
  TORCH_CHECK(false, "activation must be one of 'elu', 'leaky_relu', 'relu', 'none', got '", name, "'");
  return kNone;
}

constexpr int kThreads = 256;

__device__ __forceinline__ float dev_exp(float v) { return expf(v); }
__device__ __forceinline__ double dev_exp(double v) { return exp(v); }
__device__ __forceinline__ float dev_expm1(float v) { return expm1f(v); }
__device__ __forceinline__ double dev_expm1(double v) { return expm1(v); }

// a = act(f), da = act'(f). `act` is the same for the whole launch (a uniform branch).
template <typename A>
__device__ __forceinline__ void act_eval(A f, int act, A slope, A& a, A& da) {
  if (act == kElu) {
    const A fm = f < A(0) ? f : A(0);  // keeps the unused branch finite
    a = f <= A(0) ? dev_expm1(fm) : f;  // NaN: f (NaN)
    da = f > A(0) ? A(1) : dev_exp(fm);
  } else if (act == kLeakyRelu) {
    a = f > A(0) ? f : f * slope;
    da = f > A(0) ? A(1) : slope;
  } else if (act == kRelu) {
    a = f <= A(0) ? A(0) : f;  // NaN stays NaN, like torch.relu
    da = f > A(0) ? A(1) : A(0);
  } else {
    a = f;
    da = A(1);
  }
}

// s = sigmoid(g), ds = s (1 - s), stable for any g: e = exp(-|g|) in (0, 1].
template <typename A>
__device__ __forceinline__ void sigmoid_eval(A g, A& s, A& ds) {
  const A e = dev_exp(g < A(0) ? g : -g);
  const A q = A(1) / (A(1) + e);
  s = g < A(0) ? e * q : q;
  ds = e * q * q;
}

template <typename A>
__device__ __forceinline__ A gated_value(A f, A g, int act, A slope) {
  A a, da, s, ds;
  act_eval(f, act, slope, a, da);
  sigmoid_eval(g, s, ds);
  return a * s;
}

template <typename A>
__device__ __forceinline__ void gated_grads(A go, A f, A g, int act, A slope, A& df, A& dg) {
  A a, da, s, ds;
  act_eval(f, act, slope, a, da);
  sigmoid_eval(g, s, ds);
  df = go * s * da;
  dg = go * a * ds;
}

// N values of T moved as one aligned access.
template <typename T, int N>
struct alignas(sizeof(T) * N) Pack {
  T v[N];
};

// Dense forward; VEC values per thread. nvec = total / VEC; half % VEC == 0 and the pointers are
// aligned to VEC * sizeof(T) (checked by the host), so a pack never straddles the feature / gate boundary.
template <typename T, int VEC>
__global__ void __launch_bounds__(kThreads) fwd_dense_kernel(const T* __restrict__ y, T* __restrict__ out,
                                                             int64_t nvec, int64_t half, int act, acc_t<T> slope) {
  using A = acc_t<T>;
  using P = Pack<T, VEC>;
  for (int64_t v = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; v < nvec;
       v += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t i = v * VEC;
    const int64_t fo = i + (i / half) * half;
    const P fp = *reinterpret_cast<const P*>(y + fo);
    const P gp = *reinterpret_cast<const P*>(y + fo + half);
    P op;
#pragma unroll
    for (int k = 0; k < VEC; ++k)
      op.v[k] = static_cast<T>(gated_value<A>(static_cast<A>(fp.v[k]), static_cast<A>(gp.v[k]), act, slope));
    *reinterpret_cast<P*>(out + i) = op;
  }
}

// Dense backward: grad_out (like out) at i, grad_y (like y) at fo and fo + half.
template <typename T, int VEC>
__global__ void __launch_bounds__(kThreads) bwd_dense_kernel(const T* __restrict__ go, const T* __restrict__ y,
                                                             T* __restrict__ gy, int64_t nvec, int64_t half, int act,
                                                             acc_t<T> slope) {
  using A = acc_t<T>;
  using P = Pack<T, VEC>;
  for (int64_t v = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; v < nvec;
       v += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t i = v * VEC;
    const int64_t fo = i + (i / half) * half;
    const P gop = *reinterpret_cast<const P*>(go + i);
    const P fp = *reinterpret_cast<const P*>(y + fo);
    const P gp = *reinterpret_cast<const P*>(y + fo + half);
    P dfp, dgp;
#pragma unroll
    for (int k = 0; k < VEC; ++k) {
      A df, dg;
      gated_grads<A>(static_cast<A>(gop.v[k]), static_cast<A>(fp.v[k]), static_cast<A>(gp.v[k]), act, slope, df,
                     dg);
      dfp.v[k] = static_cast<T>(df);
      dgp.v[k] = static_cast<T>(dg);
    }
    *reinterpret_cast<P*>(gy + fo) = dfp;
    *reinterpret_cast<P*>(gy + fo + half) = dgp;
  }
}

// (b, c, h, w) of element i of a (B, C, H, W) tensor in NCHW order
struct Index4 {
  int64_t b, c, h, w;
};

__device__ __forceinline__ Index4 nchw_index(int64_t i, int64_t C, int64_t H, int64_t W) {
  const int64_t w = i % W;
  int64_t t = i / W;
  const int64_t h = t % H;
  t /= H;
  return {t / C, t % C, h, w};
}

struct Strides4 {
  int64_t b, c, h, w;
  __device__ __forceinline__ int64_t at(const Index4& k) const { return k.b * b + k.c * c + k.h * h + k.w * w; }
};

inline Strides4 strides_of(const at::Tensor& t) { return {t.stride(0), t.stride(1), t.stride(2), t.stride(3)}; }

// Any strides: element i of the (B, C, H, W) output in NCHW order; y's gate channels are C * ys.c further.
template <typename T>
__global__ void __launch_bounds__(kThreads) fwd_strided_kernel(const T* __restrict__ y, T* __restrict__ out,
                                                               int64_t total, int64_t C, int64_t H, int64_t W,
                                                               Strides4 ys, Strides4 os, int act, acc_t<T> slope) {
  using A = acc_t<T>;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < total;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const Index4 k = nchw_index(i, C, H, W);
    const int64_t fo = ys.at(k);
    const A f = static_cast<A>(y[fo]);
    const A g = static_cast<A>(y[fo + C * ys.c]);
    out[os.at(k)] = static_cast<T>(gated_value<A>(f, g, act, slope));
  }
}

template <typename T>
__global__ void __launch_bounds__(kThreads) bwd_strided_kernel(const T* __restrict__ go, const T* __restrict__ y,
                                                               T* __restrict__ gy, int64_t total, int64_t C,
                                                               int64_t H, int64_t W, Strides4 gos, Strides4 ys,
                                                               Strides4 gys, int act, acc_t<T> slope) {
  using A = acc_t<T>;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < total;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const Index4 k = nchw_index(i, C, H, W);
    const int64_t fo = ys.at(k);
    const A f = static_cast<A>(y[fo]);
    const A g = static_cast<A>(y[fo + C * ys.c]);
    const A gv = static_cast<A>(go[gos.at(k)]);
    A df, dg;
    gated_grads<A>(gv, f, g, act, slope, df, dg);
    const int64_t d = gys.at(k);
    gy[d] = static_cast<T>(df);
    gy[d + C * gys.c] = static_cast<T>(dg);
  }
}

// The memory format the op's outputs take for y (composite/_common.py out_format).
inline at::MemoryFormat out_format(const at::Tensor& t) {
  if (!t.is_contiguous() && t.is_contiguous(at::MemoryFormat::ChannelsLast)) return at::MemoryFormat::ChannelsLast;
  return at::MemoryFormat::Contiguous;
}

inline bool aligned(const void* p, int64_t bytes) { return reinterpret_cast<uintptr_t>(p) % bytes == 0; }

void check_y(const at::Tensor& y) {
  check_cuda(y, "y", 4);
  const auto st = y.scalar_type();
  TORCH_CHECK(st == at::kFloat || st == at::kDouble || st == at::kHalf || st == at::kBFloat16,
              "y must be float32, float64, float16 or bfloat16, got ", st);
  TORCH_CHECK(y.size(1) % 2 == 0, "y must have an even number of channels (features then gates), got shape ",
              y.sizes());
}

}  // namespace
}  // namespace gated

at::Tensor gated_activation_forward(const at::Tensor& y, const std::string& activation, double negative_slope) {
  gated::check_y(y);
  const int act = gated::parse_activation(activation);
  c10::cuda::CUDAGuard guard(y.device());
  const int64_t B = y.size(0), C = y.size(1) / 2, H = y.size(2), W = y.size(3);
  const at::MemoryFormat fmt = gated::out_format(y);
  at::Tensor out = at::empty({B, C, H, W}, y.options().memory_format(fmt));
  const int64_t total = out.numel();
  if (total == 0) return out;

  cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  const bool cl = fmt == at::MemoryFormat::ChannelsLast;
  const bool dense = y.is_contiguous(fmt);
  const int64_t half = cl ? C : C * H * W;
  const int threads = gated::kThreads;
  MDR_DISPATCH_FLOATS(y.scalar_type(), "gated_activation_forward_cuda", [&] {
    using A = acc_t<scalar_t>;
    constexpr int V = 16 / sizeof(scalar_t);
    const A slope = static_cast<A>(negative_slope);
    const scalar_t* yp = y.const_data_ptr<scalar_t>();
    scalar_t* op = out.mutable_data_ptr<scalar_t>();
    if (dense) {
      if (half % V == 0 && gated::aligned(yp, V * sizeof(scalar_t)) && gated::aligned(op, V * sizeof(scalar_t))) {
        gated::fwd_dense_kernel<scalar_t, V><<<blocks_for(total / V, threads), threads, 0, stream>>>(
            yp, op, total / V, half, act, slope);
      } else {
        gated::fwd_dense_kernel<scalar_t, 1><<<blocks_for(total, threads), threads, 0, stream>>>(yp, op, total, half,
                                                                                               act, slope);
      }
    } else {
      gated::fwd_strided_kernel<scalar_t><<<blocks_for(total, threads), threads, 0, stream>>>(
          yp, op, total, C, H, W, gated::strides_of(y), gated::strides_of(out), act, slope);
    }
    MDR_LAUNCH_CHECK();
  });
  return out;
}

at::Tensor gated_activation_backward(const at::Tensor& grad_out_in, const at::Tensor& y, const std::string& activation,
                                     double negative_slope) {
  gated::check_y(y);
  check_cuda(grad_out_in, "grad_out", 4);
  check_same_device(y, "y", grad_out_in, "grad_out");
  TORCH_CHECK(grad_out_in.size(0) == y.size(0) && grad_out_in.size(1) * 2 == y.size(1) &&
                  grad_out_in.size(2) == y.size(2) && grad_out_in.size(3) == y.size(3),
              "grad_out must have shape (B, C, H, W) = (", y.size(0), ", ", y.size(1) / 2, ", ", y.size(2), ", ",
              y.size(3), ") for y of shape ", y.sizes(), ", got ", grad_out_in.sizes());
  TORCH_CHECK(at::isFloatingType(grad_out_in.scalar_type()), "grad_out must be a floating tensor, got ",
              grad_out_in.scalar_type());
  const int act = gated::parse_activation(activation);
  c10::cuda::CUDAGuard guard(y.device());
  // in y's dtype (a no-op in the usual case: autograd hands the output's own)
  const at::Tensor grad_out = grad_out_in.scalar_type() == y.scalar_type() ? grad_out_in : grad_out_in.to(y.scalar_type());
  const int64_t C = y.size(1) / 2, H = y.size(2), W = y.size(3);
  const at::MemoryFormat fmt = gated::out_format(y);
  at::Tensor grad_y = at::empty(y.sizes(), y.options().memory_format(fmt));
  const int64_t total = grad_out.numel();
  if (total == 0) return grad_y;

  cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  const bool cl = fmt == at::MemoryFormat::ChannelsLast;
  const bool dense = y.is_contiguous(fmt) && grad_out.is_contiguous(fmt);
  const int64_t half = cl ? C : C * H * W;
  const int threads = gated::kThreads;
  MDR_DISPATCH_FLOATS(y.scalar_type(), "gated_activation_backward_cuda", [&] {
    using A = acc_t<scalar_t>;
    constexpr int V = 16 / sizeof(scalar_t);
    const A slope = static_cast<A>(negative_slope);
    const scalar_t* yp = y.const_data_ptr<scalar_t>();
    const scalar_t* gop = grad_out.const_data_ptr<scalar_t>();
    scalar_t* gyp = grad_y.mutable_data_ptr<scalar_t>();
    if (dense) {
      const int64_t vb = V * sizeof(scalar_t);
      if (half % V == 0 && gated::aligned(yp, vb) && gated::aligned(gop, vb) && gated::aligned(gyp, vb)) {
        gated::bwd_dense_kernel<scalar_t, V><<<blocks_for(total / V, threads), threads, 0, stream>>>(
            gop, yp, gyp, total / V, half, act, slope);
      } else {
        gated::bwd_dense_kernel<scalar_t, 1><<<blocks_for(total, threads), threads, 0, stream>>>(
            gop, yp, gyp, total, half, act, slope);
      }
    } else {
      gated::bwd_strided_kernel<scalar_t><<<blocks_for(total, threads), threads, 0, stream>>>(
          gop, yp, gyp, total, C, H, W, gated::strides_of(grad_out), gated::strides_of(y), gated::strides_of(grad_y),
          act, slope);
    }
    MDR_LAUNCH_CHECK();
  });
  return grad_y;
}

}  // namespace cuda
}  // namespace mdrnet_fast
