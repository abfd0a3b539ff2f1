// SPADE modulation on CUDA (SPEC §6): out = (x - mean) * rstd * (1 + gamma) + beta with the instance
// statistics of every (b, c) plane over H*W (biased variance, eps inside the rsqrt); the same contract as
// csrc/cpu/spade_modulate.cpp (see csrc/mdrnet_fast.h).
//
// One block per (sample, tile of TC channels), TC x TP threads: thread (tx, ty) owns channel
// tile * TC + tx and walks the plane's pixels ty, ty + TP, ... Each reduction is per-thread partial sums
// in fp32 (fp64 for fp64), then a fixed-order tree over ty in shared memory (deterministic).
//   NCHW:          TC = 1,  TP = 256 (threads along the contiguous pixels of one plane)
//   channels_last: TC = 32, TP = 16  (threads along the contiguous channels of one pixel)
// so loads stay coalesced either way. Forward: sum -> mean; centred sums s1 = sum(d), s2 = sum(d^2)
// (two passes like the CPU kernel: accurate however large |mean| is next to the spread), var =
// (s2 - s1^2 / n) / n (the s1 term corrects the rounding of mean), clamped at 0; then the output pass.
// Backward: one pass for sum(dxhat) and sum(dxhat * xhat) (only when grad_x is wanted), one pass
// writing grad_x and grad_gamma; grad_beta is grad_out (one copy in its output format).
// gamma, beta, grad_out are brought to x's layout first (no-ops in the usual case).
#include "cuda/cuda_common.cuh"
#include "cuda/ops_cuda.h"

#include <ATen/ops/empty.h>

#include <limits>

namespace mdrnet_fast {
namespace cuda {
// Helpers in their own namespace: no clash with names other .cu files or cuda_common.cuh may add.
namespace spade {
namespace {

constexpr int kNchwTC = 1, kNchwTP = 256;
constexpr int kClTC = 32, kClTP = 16;

__device__ __forceinline__ float dev_sqrt(float v) { return sqrtf(v); }
__device__ __forceinline__ double dev_sqrt(double v) { return sqrt(v); }
// A product nvcc may not fuse into a following add (fma): dxhat must have the same bits in the pass that
// sums it and the pass that subtracts its mean, or a 1x1 plane (xhat = 0, true grad_x exactly 0) gives
// rstd times the fma's rounding residue (rstd = 1/sqrt(eps) there): seen on an H100. The CPU kernels get
// the same from -ffp-contract=off.
__device__ __forceinline__ float mul_rn(float a, float b) { return __fmul_rn(a, b); }
__device__ __forceinline__ double mul_rn(double a, double b) { return __dmul_rn(a, b); }

// Column sums of a (TP x TC) block, two values at once: thread (tx, ty) contributes (u, v); every thread
// of column tx gets the column's sums back in (u, v). Fixed tree order; all threads must call it.
template <typename A, int TC, int TP>
__device__ __forceinline__ void column_sum2(A& u, A& v, A* su, A* sv) {
  const int tx = threadIdx.x, ty = threadIdx.y;
  su[ty * TC + tx] = u;
  sv[ty * TC + tx] = v;
  __syncthreads();
#pragma unroll
  for (int s = TP / 2; s > 0; s >>= 1) {
    if (ty < s) {
      su[ty * TC + tx] += su[(ty + s) * TC + tx];
      sv[ty * TC + tx] += sv[(ty + s) * TC + tx];
    }
    __syncthreads();
  }
  u = su[tx];
  v = sv[tx];
  __syncthreads();  // su / sv may be reused right after
}

// Element (b, c, p) of every tensor here is at b * C * HW + c * sc + p * sp (x's dense layout).
template <typename T, int TC, int TP>
__global__ void __launch_bounds__(TC* TP) fwd_kernel(const T* __restrict__ x, const T* __restrict__ gamma,
                                                     const T* __restrict__ beta, T* __restrict__ out,
                                                     acc_t<T>* __restrict__ mean, acc_t<T>* __restrict__ rstd,
                                                     int64_t C, int64_t HW, int64_t sc, int64_t sp, int64_t ctiles,
                                                     acc_t<T> eps) {
  using A = acc_t<T>;
  __shared__ A su[TC * TP];
  __shared__ A sv[TC * TP];
  const int64_t blk = blockIdx.x;
  const int64_t b = blk / ctiles;
  const int64_t c = (blk % ctiles) * TC + threadIdx.x;
  const bool valid = c < C;
  const int64_t base = b * C * HW + (valid ? c : 0) * sc;
  const A n = static_cast<A>(HW);

  A s = A(0), unused = A(0);
  if (valid)
    for (int64_t p = threadIdx.y; p < HW; p += TP) s += static_cast<A>(x[base + p * sp]);
  column_sum2<A, TC, TP>(s, unused, su, sv);
  const A mu = s / n;

  A s1 = A(0), s2 = A(0);
  if (valid) {
    for (int64_t p = threadIdx.y; p < HW; p += TP) {
      const A d = static_cast<A>(x[base + p * sp]) - mu;
      s1 += d;
      s2 += d * d;
    }
  }
  column_sum2<A, TC, TP>(s1, s2, su, sv);
  A var = (s2 - s1 * s1 / n) / n;
  var = var > A(0) ? var : A(0);
  const A rs = A(1) / dev_sqrt(var + eps);
  if (!valid) return;  // no barrier below
  if (threadIdx.y == 0) {
    mean[b * C + c] = mu;
    rstd[b * C + c] = rs;
  }
  for (int64_t p = threadIdx.y; p < HW; p += TP) {
    const int64_t o = base + p * sp;
    const A xh = (static_cast<A>(x[o]) - mu) * rs;
    out[o] = static_cast<T>(xh * (A(1) + static_cast<A>(gamma[o])) + static_cast<A>(beta[o]));
  }
}

// dxhat = go (1 + gamma), xhat = (x - mean) rstd,
// gx = rstd (dxhat - mean(dxhat) - xhat mean(dxhat xhat)), ggamma = go xhat. gx / gg nullptr: not wanted.
template <typename T, int TC, int TP>
__global__ void __launch_bounds__(TC* TP) bwd_kernel(const T* __restrict__ go, const T* __restrict__ x,
                                                     const T* __restrict__ gamma, const acc_t<T>* __restrict__ mean,
                                                     const acc_t<T>* __restrict__ rstd, T* __restrict__ gx,
                                                     T* __restrict__ gg, int64_t C, int64_t HW, int64_t sc,
                                                     int64_t sp, int64_t ctiles) {
  using A = acc_t<T>;
  __shared__ A su[TC * TP];
  __shared__ A sv[TC * TP];
  const int64_t blk = blockIdx.x;
  const int64_t b = blk / ctiles;
  const int64_t c = (blk % ctiles) * TC + threadIdx.x;
  const bool valid = c < C;
  const int64_t base = b * C * HW + (valid ? c : 0) * sc;
  const A n = static_cast<A>(HW);
  const A mu = valid ? mean[b * C + c] : A(0);
  const A rs = valid ? rstd[b * C + c] : A(0);

  A c1 = A(0), c2 = A(0);
  if (gx != nullptr) {  // uniform over the block
    A u = A(0), v = A(0);
    if (valid) {
      for (int64_t p = threadIdx.y; p < HW; p += TP) {
        const int64_t o = base + p * sp;
        const A dxh = mul_rn(static_cast<A>(go[o]), A(1) + static_cast<A>(gamma[o]));
        const A xh = mul_rn(static_cast<A>(x[o]) - mu, rs);
        u += dxh;
        v += dxh * xh;
      }
    }
    column_sum2<A, TC, TP>(u, v, su, sv);
    c1 = u / n;
    c2 = v / n;
  }
  if (!valid) return;  // no barrier below
  for (int64_t p = threadIdx.y; p < HW; p += TP) {
    const int64_t o = base + p * sp;
    const A gov = static_cast<A>(go[o]);
    const A xh = mul_rn(static_cast<A>(x[o]) - mu, rs);
    if (gx != nullptr) {
      const A dxh = mul_rn(gov, A(1) + static_cast<A>(gamma[o]));
      gx[o] = static_cast<T>(rs * (dxh - c1 - xh * c2));
    }
    if (gg != nullptr) gg[o] = static_cast<T>(gov * xh);
  }
}

// The memory format the op's outputs take for t (composite/_common.py out_format).
inline at::MemoryFormat out_format(const at::Tensor& t) {
  if (!t.is_contiguous() && t.is_contiguous(at::MemoryFormat::ChannelsLast)) return at::MemoryFormat::ChannelsLast;
  return at::MemoryFormat::Contiguous;
}

void check_like_x(const at::Tensor& t, const char* name, const at::Tensor& x) {
  check_cuda(t, name, 4);
  check_same_device(x, "x", t, name);
  TORCH_CHECK(t.sizes() == x.sizes(), name, " must have x's shape ", x.sizes(), ", got ", t.sizes());
}

// Launch geometry for x's layout: (TC, TP) as above; element (b, c, p) at b*C*HW + c*sc + p*sp.
struct Launch {
  bool cl;
  int64_t sc, sp, ctiles, nblocks;
};

Launch launch_for(bool cl, int64_t B, int64_t C, int64_t HW) {
  Launch l;
  l.cl = cl;
  l.sc = cl ? 1 : HW;
  l.sp = cl ? C : 1;
  const int64_t tc = cl ? kClTC : kNchwTC;
  l.ctiles = (C + tc - 1) / tc;
  l.nblocks = B * l.ctiles;
  TORCH_CHECK(l.nblocks <= 0x7fffffffLL, "spade_modulate: too many (sample, channel) blocks (", l.nblocks, ")");
  return l;
}

}  // namespace
}  // namespace spade

std::vector<at::Tensor> spade_modulate_forward(const at::Tensor& x_in, const at::Tensor& gamma_in,
                                               const at::Tensor& beta_in, double eps) {
  check_cuda(x_in, "x", 4);
  checks::floating(x_in, "x");
  spade::check_like_x(gamma_in, "gamma", x_in);
  spade::check_like_x(beta_in, "beta", x_in);
  check_same_dtype(x_in, "x", gamma_in, "gamma");
  check_same_dtype(x_in, "x", beta_in, "beta");
  TORCH_CHECK(eps > 0, "eps must be > 0, got ", eps);

  c10::cuda::CUDAGuard guard(x_in.device());
  const int64_t B = x_in.size(0), C = x_in.size(1), HW = x_in.size(2) * x_in.size(3);
  const at::MemoryFormat fmt = spade::out_format(x_in);
  const auto acc = acc_dtype(x_in.scalar_type());
  at::Tensor mean = at::empty({B, C}, x_in.options().dtype(acc));
  at::Tensor rstd = at::empty({B, C}, mean.options());
  at::Tensor out = at::empty(x_in.sizes(), x_in.options().memory_format(fmt));
  if (B * C == 0) return {out, mean, rstd};
  if (HW == 0) {
    mean.fill_(std::numeric_limits<double>::quiet_NaN());  // empty planes: what var_mean gives
    rstd.fill_(std::numeric_limits<double>::quiet_NaN());
    return {out, mean, rstd};
  }
  const at::Tensor x = x_in.contiguous(fmt), gamma = gamma_in.contiguous(fmt), beta = beta_in.contiguous(fmt);
  const spade::Launch l = spade::launch_for(fmt == at::MemoryFormat::ChannelsLast, B, C, HW);

  cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  MDR_DISPATCH_FLOATS(x.scalar_type(), "spade_modulate_forward_cuda", [&] {
    using A = acc_t<scalar_t>;
    const unsigned int grid = static_cast<unsigned int>(l.nblocks);
    if (l.cl) {
      spade::fwd_kernel<scalar_t, spade::kClTC, spade::kClTP><<<grid, dim3(spade::kClTC, spade::kClTP), 0, stream>>>(
          x.const_data_ptr<scalar_t>(), gamma.const_data_ptr<scalar_t>(), beta.const_data_ptr<scalar_t>(),
          out.mutable_data_ptr<scalar_t>(), mean.mutable_data_ptr<A>(), rstd.mutable_data_ptr<A>(), C, HW, l.sc,
          l.sp, l.ctiles, static_cast<A>(eps));
    } else {
      spade::fwd_kernel<scalar_t, spade::kNchwTC, spade::kNchwTP>
          <<<grid, dim3(spade::kNchwTC, spade::kNchwTP), 0, stream>>>(
              x.const_data_ptr<scalar_t>(), gamma.const_data_ptr<scalar_t>(), beta.const_data_ptr<scalar_t>(),
              out.mutable_data_ptr<scalar_t>(), mean.mutable_data_ptr<A>(), rstd.mutable_data_ptr<A>(), C, HW, l.sc,
              l.sp, l.ctiles, static_cast<A>(eps));
    }
    MDR_LAUNCH_CHECK();
  });
  return {out, mean, rstd};
}

std::vector<at::Tensor> spade_modulate_backward(const at::Tensor& grad_out_in, const at::Tensor& x_in,
                                                const at::Tensor& gamma_in, const at::Tensor& mean_in,
                                                const at::Tensor& rstd_in, bool need_x, bool need_gamma,
                                                bool need_beta) {
  check_cuda(x_in, "x", 4);
  checks::floating(x_in, "x");
  spade::check_like_x(grad_out_in, "grad_out", x_in);
  checks::floating(grad_out_in, "grad_out");
  spade::check_like_x(gamma_in, "gamma", x_in);
  check_same_dtype(x_in, "x", gamma_in, "gamma");
  const int64_t B = x_in.size(0), C = x_in.size(1), HW = x_in.size(2) * x_in.size(3);
  auto check_stat = [&](const at::Tensor& t, const char* name) {
    check_cuda(t, name, 2);
    check_same_device(x_in, "x", t, name);
    TORCH_CHECK(t.size(0) == B && t.size(1) == C, name, " must have shape (B, C) = (", B, ", ", C, "), got ",
                t.sizes());
    checks::floating(t, name);
  };
  check_stat(mean_in, "mean");
  check_stat(rstd_in, "rstd");

  at::Tensor gx, ggamma, gbeta;  // undefined (None in Python) where not needed
  if (!need_x && !need_gamma && !need_beta) return {gx, ggamma, gbeta};
  c10::cuda::CUDAGuard guard(x_in.device());
  if (need_beta) gbeta = grad_out_in.clone(spade::out_format(grad_out_in));  // d out / d beta = 1
  if (!need_x && !need_gamma) return {gx, ggamma, gbeta};

  const at::MemoryFormat fmt = spade::out_format(x_in);
  if (need_x) gx = at::empty(x_in.sizes(), x_in.options().memory_format(fmt));
  if (need_gamma) ggamma = at::empty(x_in.sizes(), x_in.options().memory_format(fmt));
  if (B * C > 0 && HW > 0) {
    const auto acc = acc_dtype(x_in.scalar_type());
    const at::Tensor grad_out =
        (grad_out_in.scalar_type() == x_in.scalar_type() ? grad_out_in : grad_out_in.to(x_in.scalar_type()))
            .contiguous(fmt);
    const at::Tensor x = x_in.contiguous(fmt), gamma = gamma_in.contiguous(fmt);
    const at::Tensor mean = mean_in.to(acc).contiguous(), rstd = rstd_in.to(acc).contiguous();
    const spade::Launch l = spade::launch_for(fmt == at::MemoryFormat::ChannelsLast, B, C, HW);

    cudaStream_t stream = at::cuda::getCurrentCUDAStream();
    MDR_DISPATCH_FLOATS(x.scalar_type(), "spade_modulate_backward_cuda", [&] {
      using A = acc_t<scalar_t>;
      const unsigned int grid = static_cast<unsigned int>(l.nblocks);
      scalar_t* gxp = need_x ? gx.mutable_data_ptr<scalar_t>() : nullptr;
      scalar_t* ggp = need_gamma ? ggamma.mutable_data_ptr<scalar_t>() : nullptr;
      if (l.cl) {
        spade::bwd_kernel<scalar_t, spade::kClTC, spade::kClTP>
            <<<grid, dim3(spade::kClTC, spade::kClTP), 0, stream>>>(
                grad_out.const_data_ptr<scalar_t>(), x.const_data_ptr<scalar_t>(), gamma.const_data_ptr<scalar_t>(),
                mean.const_data_ptr<A>(), rstd.const_data_ptr<A>(), gxp, ggp, C, HW, l.sc, l.sp, l.ctiles);
      } else {
        spade::bwd_kernel<scalar_t, spade::kNchwTC, spade::kNchwTP>
            <<<grid, dim3(spade::kNchwTC, spade::kNchwTP), 0, stream>>>(
                grad_out.const_data_ptr<scalar_t>(), x.const_data_ptr<scalar_t>(), gamma.const_data_ptr<scalar_t>(),
                mean.const_data_ptr<A>(), rstd.const_data_ptr<A>(), gxp, ggp, C, HW, l.sc, l.sp, l.ctiles);
      }
      MDR_LAUNCH_CHECK();
    });
  }
  if (need_gamma) ggamma = ggamma.contiguous(spade::out_format(gamma_in));  // no-op unless gamma's format differs
  return {gx, ggamma, gbeta};
}

}  // namespace cuda
}  // namespace mdrnet_fast
