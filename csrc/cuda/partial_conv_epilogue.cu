// Partial convolution epilogue on CUDA (SPEC §1, NVIDIA PartialConv2d semantics); the same contract as
// csrc/cpu/partial_conv_epilogue.cpp (see csrc/mdrnet_fast.h). raw = conv2d(x * mask, weight) comes from
// cuDNN; everything after it is done here.
//
// Forward, two kernels:
//   1. window kernel, one thread per output pixel (b, oh, ow): the channel-summed mask over the dilated
//      kh x kw window, by direct summation (Cm * kh * kw loads, read through the mask's own strides, so a
//      batch-expanded mask is not copied; adjacent threads read adjacent columns). From msum: new mask
//      (all Cn channels; channels_last when multi-channel and raw is, as on CPU), ratio, grad_scale, and
//      ratio / new mask in an fp32 (fp64) scratch for kernel 2.
//   2. element kernel over raw in its memory order (NCHW or channels_last; other strides are copied
//      first): out = (raw * ratio + bias) * new_mask, or raw * ratio without bias.
// Backward: grad_raw = grad_out * grad_scale (element kernel), and the bias gradient
// sum_{b,h,w} grad_out * new_mask as a deterministic two-pass reduction: fixed chunks of (b, pixel) per
// block, a fixed-order tree in shared memory, one partial per (channel, chunk); a second kernel adds
// each channel's partials in a fixed order. No atomics: the result depends on the shape only.
#include "cuda/cuda_common.cuh"
#include "cuda/ops_cuda.h"
#include "mdrnet_fast.h"  // checks::conv_params / conv_out_matches (host-only, shared with the CPU kernels)

#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>

namespace mdrnet_fast {
namespace cuda {
// Helpers in their own namespace: no clash with names other .cu files or cuda_common.cuh may add.
namespace pconv {
namespace {

constexpr int kThreads = 256;
// Bias-gradient reduction: values of the (b, pixel) axis per block.
constexpr int kNchwTP = 256;         // NCHW: 256 threads along the pixels, one channel per block
constexpr int64_t kNchwChunk = 4096;  //        16 values per thread
constexpr int kClTC = 32;            // channels_last: 32 channels x 8 pixel rows per block
constexpr int kClTP = 8;
constexpr int64_t kClChunk = 512;     //        64 pixels per thread

struct Geom {
  int64_t kh, kw, sh, sw, ph, pw, dh, dw;
};

// 0: NCHW contiguous, 1: channels_last contiguous; anything else is made contiguous (NCHW). A tensor that
// is both indexes identically either way and is taken as NCHW.
inline int normalise_layout(at::Tensor& t) {
  if (t.is_contiguous()) return 0;
  if (t.is_contiguous(at::MemoryFormat::ChannelsLast)) return 1;
  t = t.contiguous();
  return 0;
}

// Sum over the rows of a (TP x TC) block: thread (tx, ty) contributes v, every thread of column tx gets
// the column's sum. Fixed tree order; TP a power of two; every thread of the block must call it.
template <typename A, int TC, int TP>
__device__ __forceinline__ A column_sum(A v, A* sh) {
  const int tx = threadIdx.x, ty = threadIdx.y;
  sh[ty * TC + tx] = v;
  __syncthreads();
#pragma unroll
  for (int s = TP / 2; s > 0; s >>= 1) {
    if (ty < s) sh[ty * TC + tx] += sh[(ty + s) * TC + tx];
    __syncthreads();
  }
  const A r = sh[tx];
  __syncthreads();  // sh may be reused right after
  return r;
}

// Window sum of the channel-summed mask at output pixel (b, oh, ow); padding contributes zeros.
template <typename scalar_t, typename A>
__device__ __forceinline__ A window_sum(const scalar_t* __restrict__ mask, int64_t msb, int64_t msc, int64_t msh,
                                        int64_t msw, int64_t Cm, int64_t H, int64_t W, const Geom g, int64_t b,
                                        int64_t oh, int64_t ow) {
  const int64_t h0 = oh * g.sh - g.ph, w0 = ow * g.sw - g.pw;
  A s = A(0);
  for (int64_t c = 0; c < Cm; ++c) {
    const scalar_t* plane = mask + b * msb + c * msc;
    for (int64_t i = 0; i < g.kh; ++i) {
      const int64_t h = h0 + i * g.dh;
      if (h < 0 || h >= H) continue;
      const scalar_t* row = plane + h * msh;
      for (int64_t j = 0; j < g.kw; ++j) {
        const int64_t w = w0 + j * g.dw;
        if (w < 0 || w >= W) continue;
        s += static_cast<A>(row[w * msw]);
      }
    }
  }
  return s;
}

// Kernel 1 of the forward: per output pixel q = b * HoWo + p.
template <typename scalar_t>
__global__ void __launch_bounds__(kThreads) window_kernel(
    const scalar_t* __restrict__ mask, int64_t msb, int64_t msc, int64_t msh, int64_t msw, int64_t Cm, int64_t H,
    int64_t W, Geom g, int64_t B, int64_t Wo, int64_t HoWo, int64_t Cn, int64_t nsc, int64_t nsp,
    acc_t<scalar_t> wsz, bool has_bias, scalar_t* __restrict__ new_mask, acc_t<scalar_t>* __restrict__ grad_scale,
    acc_t<scalar_t>* __restrict__ ratio, acc_t<scalar_t>* __restrict__ nm) {
  using A = acc_t<scalar_t>;
  const int64_t n = B * HoWo;
  for (int64_t q = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; q < n;
       q += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t b = q / HoWo, p = q % HoWo;
    const A m = window_sum<scalar_t, A>(mask, msb, msc, msh, msw, Cm, H, W, g, b, p / Wo, p % Wo);
    const A v = m < A(0) ? A(0) : (m > A(1) ? A(1) : m);
    // msum == 0 gives winsize / 1e-8 * 0 == 0 by the definition; the select also covers msum <= -1e-8
    // (not a valid mask): never NaN / Inf.
    const A rt = v > A(0) ? wsz / (m + static_cast<A>(1e-8)) * v : A(0);
    ratio[q] = rt;
    nm[q] = v;
    grad_scale[q] = has_bias ? rt * v : rt;
    const scalar_t vs = static_cast<scalar_t>(v);
    scalar_t* dst = new_mask + b * Cn * HoWo + p * nsp;  // (nsc, nsp): (HoWo, 1) NCHW, (1, Cn) channels_last
    for (int64_t c = 0; c < Cn; ++c) dst[c * nsc] = vs;
  }
}

// Window sums only (partial_conv_mask_sum).
template <typename scalar_t>
__global__ void __launch_bounds__(kThreads) mask_sum_kernel(
    const scalar_t* __restrict__ mask, int64_t msb, int64_t msc, int64_t msh, int64_t msw, int64_t Cm, int64_t H,
    int64_t W, Geom g, int64_t B, int64_t Wo, int64_t HoWo, acc_t<scalar_t>* __restrict__ msum) {
  using A = acc_t<scalar_t>;
  const int64_t n = B * HoWo;
  for (int64_t q = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; q < n;
       q += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t b = q / HoWo, p = q % HoWo;
    msum[q] = window_sum<scalar_t, A>(mask, msb, msc, msh, msw, Cm, H, W, g, b, p / Wo, p % Wo);
  }
}

// Index i of a dense (B, Co, Ho, Wo) tensor in memory order -> its pixel q = b * HoWo + p (and channel).
template <bool CL>
__device__ __forceinline__ void pixel_of(int64_t i, int64_t Co, int64_t HoWo, int64_t& q, int64_t& co) {
  if (CL) {
    co = i % Co;
    q = i / Co;
  } else {
    const int64_t bc = i / HoWo;
    co = bc % Co;
    q = (bc / Co) * HoWo + i % HoWo;
  }
}

// Kernel 2 of the forward: raw and out share their (dense) layout.
template <typename scalar_t, bool CL>
__global__ void __launch_bounds__(kThreads) epilogue_kernel(
    const scalar_t* __restrict__ raw, const scalar_t* __restrict__ bias, const acc_t<scalar_t>* __restrict__ ratio,
    const acc_t<scalar_t>* __restrict__ nm, scalar_t* __restrict__ out, int64_t n, int64_t Co, int64_t HoWo) {
  using A = acc_t<scalar_t>;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    int64_t q, co;
    pixel_of<CL>(i, Co, HoWo, q, co);
    const A x = static_cast<A>(raw[i]);
    if (bias != nullptr) {
      out[i] = static_cast<scalar_t>((x * ratio[q] + static_cast<A>(bias[co])) * nm[q]);
    } else {
      out[i] = static_cast<scalar_t>(x * ratio[q]);
    }
  }
}

// grad_raw = grad_out * grad_scale (broadcast over the channels); both dense in the same layout.
template <typename scalar_t, bool CL>
__global__ void __launch_bounds__(kThreads) grad_raw_kernel(
    const scalar_t* __restrict__ go, const acc_t<scalar_t>* __restrict__ gs, scalar_t* __restrict__ gr, int64_t n,
    int64_t Co, int64_t HoWo) {
  using A = acc_t<scalar_t>;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    int64_t q, co;
    pixel_of<CL>(i, Co, HoWo, q, co);
    gr[i] = static_cast<scalar_t>(static_cast<A>(go[i]) * gs[q]);
  }
}

// Bias gradient, pass 1, NCHW grad_out. Block t = co * nchunks + ch reduces the values r in
// [ch * kNchwChunk, ...) of the flattened (b, pixel) axis (r = b * HoWo + p) of channel co.
// new_mask (B, Cn, Ho, Wo), Cn == 1 or Co, dense: element (b, c, p) at b * Cn * HoWo + c * nsc + p * nsp.
template <typename scalar_t>
__global__ void __launch_bounds__(kNchwTP) bias_partial_nchw_kernel(
    const scalar_t* __restrict__ go, const scalar_t* __restrict__ nmask, acc_t<scalar_t>* __restrict__ partial,
    int64_t Co, int64_t HoWo, int64_t Cn, int64_t nsc, int64_t nsp, int64_t R, int64_t nchunks) {
  using A = acc_t<scalar_t>;
  __shared__ A sh[kNchwTP];
  const int64_t t = blockIdx.x;
  const int64_t co = t / nchunks, ch = t % nchunks;
  const int64_t r0 = ch * kNchwChunk;
  const int64_t r1 = r0 + kNchwChunk < R ? r0 + kNchwChunk : R;
  const int64_t cm = Cn == 1 ? 0 : co;
  A s = A(0);
  for (int64_t r = r0 + threadIdx.y; r < r1; r += kNchwTP) {
    const int64_t b = r / HoWo, p = r % HoWo;
    s += static_cast<A>(go[(b * Co + co) * HoWo + p]) * static_cast<A>(nmask[b * Cn * HoWo + cm * nsc + p * nsp]);
  }
  s = column_sum<A, 1, kNchwTP>(s, sh);
  if (threadIdx.y == 0) partial[co * nchunks + ch] = s;
}

// Bias gradient, pass 1, channels_last grad_out (element (r, co) at r * Co + co). Block t = tile * nchunks
// + ch: channels [tile * kClTC, +kClTC) (threadIdx.x, coalesced), rows [ch * kClChunk, ...) (threadIdx.y).
template <typename scalar_t>
__global__ void __launch_bounds__(kClTC * kClTP) bias_partial_cl_kernel(
    const scalar_t* __restrict__ go, const scalar_t* __restrict__ nmask, acc_t<scalar_t>* __restrict__ partial,
    int64_t Co, int64_t HoWo, int64_t Cn, int64_t nsc, int64_t nsp, int64_t R, int64_t nchunks) {
  using A = acc_t<scalar_t>;
  __shared__ A sh[kClTC * kClTP];
  const int64_t t = blockIdx.x;
  const int64_t tile = t / nchunks, ch = t % nchunks;
  const int64_t co = tile * kClTC + threadIdx.x;
  const bool valid = co < Co;
  const int64_t r0 = ch * kClChunk;
  const int64_t r1 = r0 + kClChunk < R ? r0 + kClChunk : R;
  A s = A(0);
  if (valid) {
    for (int64_t r = r0 + threadIdx.y; r < r1; r += kClTP) {
      const int64_t nm_off = Cn == 1 ? r : (r / HoWo) * Cn * HoWo + co * nsc + (r % HoWo) * nsp;
      s += static_cast<A>(go[r * Co + co]) * static_cast<A>(nmask[nm_off]);
    }
  }
  s = column_sum<A, kClTC, kClTP>(s, sh);
  if (valid && threadIdx.y == 0) partial[co * nchunks + ch] = s;
}

// Bias gradient, pass 2: block co adds partial[co, 0..nchunks) in a fixed order.
template <typename scalar_t>
__global__ void __launch_bounds__(kThreads) bias_final_kernel(const acc_t<scalar_t>* __restrict__ partial,
                                                              scalar_t* __restrict__ grad_bias, int64_t nchunks) {
  using A = acc_t<scalar_t>;
  __shared__ A sh[kThreads];
  const int64_t co = blockIdx.x;
  A s = A(0);
  for (int64_t j = threadIdx.y; j < nchunks; j += kThreads) s += partial[co * nchunks + j];
  s = column_sum<A, 1, kThreads>(s, sh);
  if (threadIdx.y == 0) grad_bias[co] = static_cast<scalar_t>(s);
}

void check_geometry(const at::Tensor& mask, int64_t Ho, int64_t Wo, const char* ho_name, const char* wo_name,
                    const Geom& g) {
  ::mdrnet_fast::checks::conv_out_matches(ho_name, Ho, "H", mask.size(2), g.kh, g.sh, g.ph, g.dh);
  ::mdrnet_fast::checks::conv_out_matches(wo_name, Wo, "W", mask.size(3), g.kw, g.sw, g.pw, g.dw);
}

}  // namespace
}  // namespace pconv

std::vector<at::Tensor> partial_conv_epilogue_forward(const at::Tensor& raw_in, const at::Tensor& mask,
                                                      const c10::optional<at::Tensor>& bias_in, int64_t kh,
                                                      int64_t kw, int64_t sh, int64_t sw, int64_t ph, int64_t pw,
                                                      int64_t dh, int64_t dw, double winsize, bool multi_channel) {
  check_cuda(raw_in, "raw", 4);
  checks::floating(raw_in, "raw");
  check_cuda(mask, "mask", 4);
  check_same_device(raw_in, "raw", mask, "mask");
  check_same_dtype(raw_in, "raw", mask, "mask");
  ::mdrnet_fast::checks::conv_params(kh, kw, sh, sw, ph, pw, dh, dw);
  TORCH_CHECK(mask.size(0) == raw_in.size(0), "mask batch size (", mask.size(0), ") must equal raw batch size (",
              raw_in.size(0), ")");
  TORCH_CHECK(multi_channel ? mask.size(1) >= 1 : mask.size(1) == 1,
              "mask must have 1 channel when multi_channel is false (and >= 1 otherwise), got shape ", mask.sizes());
  TORCH_CHECK(winsize > 0, "winsize must be > 0 (kh*kw*C_in or kh*kw), got ", winsize);
  const pconv::Geom g{kh, kw, sh, sw, ph, pw, dh, dw};
  pconv::check_geometry(mask, raw_in.size(2), raw_in.size(3), "raw Ho", "raw Wo", g);

  const int64_t Co = raw_in.size(1);
  at::Tensor bias;  // undefined: no bias
  if (bias_in.has_value() && bias_in->defined()) {
    check_cuda(*bias_in, "bias", 1);
    check_same_device(raw_in, "raw", *bias_in, "bias");
    check_same_dtype(raw_in, "raw", *bias_in, "bias");
    TORCH_CHECK(bias_in->size(0) == Co, "bias must have shape (Co,) = (", Co, "), got ", bias_in->sizes());
    bias = bias_in->contiguous();
  }

  c10::cuda::CUDAGuard guard(raw_in.device());
  at::Tensor raw = raw_in;
  const int layout = pconv::normalise_layout(raw);
  const int64_t B = raw.size(0), Ho = raw.size(2), Wo = raw.size(3), HoWo = Ho * Wo;
  const int64_t Cm = mask.size(1), H = mask.size(2), W = mask.size(3);
  const int64_t Cn = multi_channel ? Co : 1;
  const auto acc = acc_dtype(raw.scalar_type());
  at::Tensor out = at::empty_like(raw);  // dense raw: same strides (NCHW or channels_last)
  // as the CPU kernel: a multi-channel new mask in raw's layout (NCHW or channels_last)
  const bool nm_cl = multi_channel && Co > 1 && layout == 1;
  at::Tensor new_mask = at::empty(
      {B, Cn, Ho, Wo},
      raw.options().memory_format(nm_cl ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous));
  const int64_t nsc = nm_cl ? 1 : HoWo, nsp = nm_cl ? Cn : 1;
  at::Tensor grad_scale = at::empty({B, 1, Ho, Wo}, raw.options().dtype(acc));
  if (B * HoWo == 0) return {out, new_mask, grad_scale};
  at::Tensor scratch = at::empty({2, B * HoWo}, raw.options().dtype(acc));  // ratio, new mask (acc dtype)

  cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  MDR_DISPATCH_FLOATS(raw.scalar_type(), "partial_conv_epilogue_forward_cuda", [&] {
    using A = acc_t<scalar_t>;
    A* ratio = scratch.mutable_data_ptr<A>();
    A* nm = ratio + B * HoWo;
    pconv::window_kernel<scalar_t><<<blocks_for(B * HoWo, pconv::kThreads), pconv::kThreads, 0, stream>>>(
        mask.const_data_ptr<scalar_t>(), mask.stride(0), mask.stride(1), mask.stride(2), mask.stride(3), Cm, H, W, g,
        B, Wo, HoWo, Cn, nsc, nsp, static_cast<A>(winsize), bias.defined(), new_mask.mutable_data_ptr<scalar_t>(),
        grad_scale.mutable_data_ptr<A>(), ratio, nm);
    MDR_LAUNCH_CHECK();
    const int64_t n = raw.numel();
    if (n > 0) {
      const scalar_t* bp = bias.defined() ? bias.const_data_ptr<scalar_t>() : nullptr;
      if (layout == 1) {
        pconv::epilogue_kernel<scalar_t, true><<<blocks_for(n, pconv::kThreads), pconv::kThreads, 0, stream>>>(
            raw.const_data_ptr<scalar_t>(), bp, ratio, nm, out.mutable_data_ptr<scalar_t>(), n, Co, HoWo);
      } else {
        pconv::epilogue_kernel<scalar_t, false><<<blocks_for(n, pconv::kThreads), pconv::kThreads, 0, stream>>>(
            raw.const_data_ptr<scalar_t>(), bp, ratio, nm, out.mutable_data_ptr<scalar_t>(), n, Co, HoWo);
      }
      MDR_LAUNCH_CHECK();
    }
  });
  return {out, new_mask, grad_scale};
}

std::vector<at::Tensor> partial_conv_epilogue_backward(const at::Tensor& grad_out_in, const at::Tensor& grad_scale_in,
                                                       const at::Tensor& new_mask_in, bool need_bias_grad) {
  check_cuda(grad_out_in, "grad_out", 4);
  checks::floating(grad_out_in, "grad_out");
  const int64_t B = grad_out_in.size(0), Co = grad_out_in.size(1), Ho = grad_out_in.size(2),
                Wo = grad_out_in.size(3), HoWo = Ho * Wo;
  check_cuda(grad_scale_in, "grad_scale", 4);
  check_same_device(grad_out_in, "grad_out", grad_scale_in, "grad_scale");
  TORCH_CHECK(grad_scale_in.size(0) == B && grad_scale_in.size(1) == 1 && grad_scale_in.size(2) == Ho &&
                  grad_scale_in.size(3) == Wo,
              "grad_scale must have shape (B, 1, Ho, Wo) = (", B, ", 1, ", Ho, ", ", Wo, "), got ",
              grad_scale_in.sizes());
  const auto acc = acc_dtype(grad_out_in.scalar_type());
  TORCH_CHECK(grad_scale_in.scalar_type() == acc, "grad_scale must be ", acc, " for grad_out of dtype ",
              grad_out_in.scalar_type(), ", got ", grad_scale_in.scalar_type());
  at::Tensor new_mask;
  if (need_bias_grad) {
    check_cuda(new_mask_in, "new_mask", 4);
    check_same_device(grad_out_in, "grad_out", new_mask_in, "new_mask");
    check_same_dtype(grad_out_in, "grad_out", new_mask_in, "new_mask");
    TORCH_CHECK(new_mask_in.size(0) == B && (new_mask_in.size(1) == 1 || new_mask_in.size(1) == Co) &&
                    new_mask_in.size(2) == Ho && new_mask_in.size(3) == Wo,
                "new_mask must have shape (B, 1 or Co, Ho, Wo) = (", B, ", 1 or ", Co, ", ", Ho, ", ", Wo,
                "), got ", new_mask_in.sizes());
    new_mask = new_mask_in;  // NCHW or channels_last read in place (other layouts are copied)
  }

  c10::cuda::CUDAGuard guard(grad_out_in.device());
  const bool nm_cl = need_bias_grad && pconv::normalise_layout(new_mask) == 1 && new_mask.size(1) > 1;
  at::Tensor grad_out = grad_out_in;
  const int layout = pconv::normalise_layout(grad_out);
  const at::Tensor grad_scale = grad_scale_in.contiguous();
  at::Tensor grad_raw = at::empty_like(grad_out);
  at::Tensor grad_bias;  // undefined => None when not needed
  if (need_bias_grad) grad_bias = at::empty({Co}, grad_out.options());
  const int64_t n = grad_out.numel();
  if (n == 0) {
    if (need_bias_grad) grad_bias.zero_();  // an empty sum
    return {grad_raw, grad_bias};
  }

  cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  MDR_DISPATCH_FLOATS(grad_out.scalar_type(), "partial_conv_epilogue_backward_cuda", [&] {
    using A = acc_t<scalar_t>;
    const scalar_t* go = grad_out.const_data_ptr<scalar_t>();
    const A* gs = grad_scale.const_data_ptr<A>();
    if (layout == 1) {
      pconv::grad_raw_kernel<scalar_t, true><<<blocks_for(n, pconv::kThreads), pconv::kThreads, 0, stream>>>(
          go, gs, grad_raw.mutable_data_ptr<scalar_t>(), n, Co, HoWo);
    } else {
      pconv::grad_raw_kernel<scalar_t, false><<<blocks_for(n, pconv::kThreads), pconv::kThreads, 0, stream>>>(
          go, gs, grad_raw.mutable_data_ptr<scalar_t>(), n, Co, HoWo);
    }
    MDR_LAUNCH_CHECK();
    if (!need_bias_grad) return;

    const int64_t R = B * HoWo;  // > 0 here
    const int64_t Cn = new_mask.size(1);
    const int64_t nsc = nm_cl ? 1 : HoWo, nsp = nm_cl ? Cn : 1;
    const scalar_t* nmp = new_mask.const_data_ptr<scalar_t>();
    const int64_t chunk = layout == 1 ? pconv::kClChunk : pconv::kNchwChunk;
    const int64_t nchunks = (R + chunk - 1) / chunk;
    at::Tensor partial = at::empty({Co, nchunks}, grad_scale.options());
    A* pp = partial.mutable_data_ptr<A>();
    if (layout == 1) {
      const int64_t tiles = (Co + pconv::kClTC - 1) / pconv::kClTC;
      const int64_t nblocks = tiles * nchunks;
      TORCH_CHECK(nblocks <= 0x7fffffffLL, "partial_conv_epilogue_backward: too many blocks (", nblocks, ")");
      pconv::bias_partial_cl_kernel<scalar_t><<<static_cast<unsigned int>(nblocks), dim3(pconv::kClTC, pconv::kClTP), 0, stream>>>(
          go, nmp, pp, Co, HoWo, Cn, nsc, nsp, R, nchunks);
    } else {
      const int64_t nblocks = Co * nchunks;
      TORCH_CHECK(nblocks <= 0x7fffffffLL, "partial_conv_epilogue_backward: too many blocks (", nblocks, ")");
      pconv::bias_partial_nchw_kernel<scalar_t><<<static_cast<unsigned int>(nblocks), dim3(1, pconv::kNchwTP), 0, stream>>>(
          go, nmp, pp, Co, HoWo, Cn, nsc, nsp, R, nchunks);
    }
    MDR_LAUNCH_CHECK();
    TORCH_CHECK(Co <= 0x7fffffffLL, "partial_conv_epilogue_backward: too many channels (", Co, ")");
    pconv::bias_final_kernel<scalar_t><<<static_cast<unsigned int>(Co), dim3(1, pconv::kThreads), 0, stream>>>(
        pp, grad_bias.mutable_data_ptr<scalar_t>(), nchunks);
    MDR_LAUNCH_CHECK();
  });
  return {grad_raw, grad_bias};
}

at::Tensor partial_conv_mask_sum(const at::Tensor& mask, int64_t kh, int64_t kw, int64_t sh, int64_t sw, int64_t ph,
                                 int64_t pw, int64_t dh, int64_t dw, int64_t out_h, int64_t out_w) {
  check_cuda(mask, "mask", 4);
  checks::floating(mask, "mask");
  ::mdrnet_fast::checks::conv_params(kh, kw, sh, sw, ph, pw, dh, dw);
  const pconv::Geom g{kh, kw, sh, sw, ph, pw, dh, dw};
  pconv::check_geometry(mask, out_h, out_w, "out_h", "out_w", g);
  c10::cuda::CUDAGuard guard(mask.device());
  const int64_t B = mask.size(0), HoWo = out_h * out_w;
  at::Tensor msum = at::empty({B, 1, out_h, out_w}, mask.options().dtype(acc_dtype(mask.scalar_type())));
  if (B * HoWo == 0) return msum;
  cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  MDR_DISPATCH_FLOATS(mask.scalar_type(), "partial_conv_mask_sum_cuda", [&] {
    using A = acc_t<scalar_t>;
    pconv::mask_sum_kernel<scalar_t><<<blocks_for(B * HoWo, pconv::kThreads), pconv::kThreads, 0, stream>>>(
        mask.const_data_ptr<scalar_t>(), mask.stride(0), mask.stride(1), mask.stride(2), mask.stride(3),
        mask.size(1), mask.size(2), mask.size(3), g, B, out_w, HoWo, msum.mutable_data_ptr<A>());
    MDR_LAUNCH_CHECK();
  });
  return msum;
}

}  // namespace cuda
}  // namespace mdrnet_fast
