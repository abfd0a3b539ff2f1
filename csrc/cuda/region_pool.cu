// Region-wise average pooling and region broadcast on CUDA (SPEC §3; SEAN, Zhu et al. 2020), with the
// contract of the CPU kernels (csrc/mdrnet_fast.h, region_pool_forward / region_broadcast_forward):
//   region_pool_forward(feat (B,C,H,W), seg, n, normalize) -> {codes (B,n,C) feat's dtype, area (B,n) fp32|fp64}
//   region_broadcast_forward(codes (B,n,C), seg, n)        -> out (B,C,H,W) contiguous, codes' dtype
// seg is int labels (B,H,W) or float weights (B,n,H,W); each op is the other's backward (ops/region_pool.py).
//
// Pooling is a deterministic two-stage segmented reduction, with no atomics anywhere:
//  stage 1: one block per (sample, split of kSplitPixels pixels, tile of kCT channels, chunk of classes).
//    The block walks its pixels in shared-memory tiles of feat [kCT channels x kTile pixels], loaded
//    coalesced along whichever of pixel / channel has stride 1 (NCHW or channels_last), plus the tile's
//    labels (or soft weights). Lane c of warp g owns channel c and an eighth of each tile's pixels, and
//    the per-(g, class, c) accumulators in shared memory: with labels it adds a register run sum over
//    consecutive pixels of one class (label maps are blobs) and flushes the run into its accumulator
//    when the class changes; with soft weights it adds w[k,p] * f[c,p] class by class. Each accumulator
//    has one owner, so the order of additions is fixed. The 8 groups are then summed in group order
//    into a partials buffer part[b, split, class, c]; blocks of channel tile 0 also write the split's
//    label counts (int32) or soft areas.
//  stage 2: codes = sum over splits (split order), divided by the area when normalize (0 where it is 0).
// Every split, tile and group boundary depends on the shape only, so the result is bitwise the same on
// every run and every device.
//
// Broadcast is a gather: one thread per pixel, for a chunk of channels; out[b,c,p] = codes[b,label,c],
// or sum_k w[b,k,p] codes[b,k,c] in k order for soft seg (accumulated in fp32, fp64 for fp64).
//
// feat is addressed through (channel stride, pixel stride): the host takes it as it is when it is NCHW-
// or channels_last-contiguous and makes any other layout NCHW-contiguous first. codes, labels (int64)
// and weights (accumulation dtype) are made contiguous by the host. Labels outside [0, n) are not
// refused here (that would need a host sync; the public ops check them): pooling ignores such pixels and
// broadcast writes 0 there, so nothing is ever read or written out of bounds.
#include "cuda/cuda_common.cuh"
#include "cuda/ops_cuda.h"
#include "region_seg.h"

#include <ATen/ops/empty.h>

#include <algorithm>
#include <cstdint>
#include <limits>

namespace mdrnet_fast {
namespace cuda {
namespace {

constexpr int kCT = 32;                    // channels per block tile: one per lane
constexpr int kGroups = 8;                 // warps per block; each takes an eighth of every pixel tile
constexpr int kPoolThreads = kCT * kGroups;
constexpr int64_t kSplitPixels = 1024;     // pixels per stage-1 block (fixed: the sum order depends on the shape only)
constexpr size_t kSmemBudget = 48 * 1024;  // dynamic shared memory per block, no opt-in needed
// pixels per shared-memory tile: 128 for fp32 accumulation, 64 for fp64 (16 KiB of features either way)
template <typename acc_t>
constexpr int tile_pixels() { return static_cast<int>(512 / sizeof(acc_t)); }
static_assert(kSplitPixels % 128 == 0 && kSplitPixels % 64 == 0, "a split must be a whole number of tiles");

constexpr int kBcastThreads = 256;         // pixels per broadcast block
constexpr int64_t kBcastChannels = 64;     // channels per broadcast block (grid z)

// Shared memory of stage 1 for nk classes per block: fixed part and per-class part (bytes). Layout
// (see pool_partial_kernel): acc_t s_f[kCT][PT+1], s_acc[kGroups][nk][kCT], then
//   labels: int s_cnt[kGroups][nk], int s_lab[PT]
//   soft:   acc_t s_area[kGroups][nk], acc_t s_w[nk][PT]
template <typename acc_t, bool kLabels>
size_t pool_smem_fixed() {
  constexpr int PT = tile_pixels<acc_t>();
  return sizeof(acc_t) * kCT * (PT + 1) + (kLabels ? sizeof(int) * PT : 0);
}
template <typename acc_t, bool kLabels>
size_t pool_smem_per_class() {
  constexpr int PT = tile_pixels<acc_t>();
  return kLabels ? sizeof(acc_t) * kGroups * kCT + sizeof(int) * kGroups
                 : sizeof(acc_t) * (kGroups * kCT + kGroups + PT);
}

template <typename scalar_t, typename acc_t, bool kLabels>
__global__ void __launch_bounds__(kPoolThreads)
pool_partial_kernel(const scalar_t* __restrict__ feat, int64_t s_c, int64_t s_p,
                    const int64_t* __restrict__ labels,   // (B, HW) when kLabels
                    const acc_t* __restrict__ weights,    // (B, n, HW) otherwise
                    int64_t C, int64_t HW, int64_t n, int64_t nsplit, int nk_max,
                    acc_t* __restrict__ part,             // (B, nsplit, n, C)
                    acc_t* __restrict__ apart,            // (B, nsplit, n): soft areas
                    int32_t* __restrict__ cpart) {        // (B, nsplit, n): label counts
  constexpr int PT = tile_pixels<acc_t>();
  constexpr int PG = PT / kGroups;  // pixels of a tile per group
  extern __shared__ __align__(16) unsigned char smem_raw[];

  const int64_t bs = blockIdx.x;  // b * nsplit + split
  const int64_t b = bs / nsplit, split = bs % nsplit;
  const int64_t c0 = static_cast<int64_t>(blockIdx.y) * kCT;
  const int64_t k0 = static_cast<int64_t>(blockIdx.z) * nk_max;
  const int nk = static_cast<int>(std::min<int64_t>(nk_max, n - k0));
  const int tid = threadIdx.x, c = tid % kCT, g = tid / kCT;
  const int64_t p_begin = split * kSplitPixels, p_end = std::min<int64_t>(HW, p_begin + kSplitPixels);

  acc_t* s_f = reinterpret_cast<acc_t*>(smem_raw);  // [kCT][PT + 1]: +1 keeps column reads conflict-free
  acc_t* s_acc = s_f + kCT * (PT + 1);              // [kGroups][nk_max][kCT]
  acc_t* s_area = s_acc + kGroups * nk_max * kCT;   // soft: [kGroups][nk_max]
  acc_t* s_w = s_area + kGroups * nk_max;           // soft: [nk_max][PT]
  int* s_cnt = reinterpret_cast<int*>(s_area);      // labels: [kGroups][nk_max]
  int* s_lab = s_cnt + kGroups * nk_max;            // labels: [PT], class - k0, or -1 outside the chunk

  for (int t = tid; t < kGroups * nk_max * kCT; t += kPoolThreads) s_acc[t] = acc_t(0);
  for (int t = tid; t < kGroups * nk_max; t += kPoolThreads) {
    if constexpr (kLabels) s_cnt[t] = 0; else s_area[t] = acc_t(0);
  }

  const scalar_t* fb = feat + b * C * HW;
  const acc_t* fr = s_f + c * (PT + 1);
  // labels: the run of equal classes this thread is adding up (cur = -1: none)
  int cur = -1, cnt = 0;
  acc_t run = acc_t(0);

  for (int64_t t0 = p_begin; t0 < p_end; t0 += PT) {
    const int len = static_cast<int>(std::min<int64_t>(PT, p_end - t0));
    __syncthreads();  // the previous tile (and the zeroing above) is done with
    for (int t = tid; t < kCT * PT; t += kPoolThreads) {
      int cc, pp;
      if (s_p == 1) {  // NCHW: consecutive threads read consecutive pixels
        cc = t / PT;
        pp = t % PT;
      } else {  // channels_last: consecutive threads read consecutive channels
        cc = t % kCT;
        pp = t / kCT;
      }
      acc_t x = acc_t(0);
      if (pp < len && c0 + cc < C) x = static_cast<acc_t>(fb[(c0 + cc) * s_c + (t0 + pp) * s_p]);
      s_f[cc * (PT + 1) + pp] = x;
    }
    if constexpr (kLabels) {
      for (int t = tid; t < PT; t += kPoolThreads) {
        int l = -1;
        if (t < len) {
          const int64_t v = labels[b * HW + t0 + t];
          if (v >= k0 && v < k0 + nk) l = static_cast<int>(v - k0);
        }
        s_lab[t] = l;
      }
    } else {
      for (int t = tid; t < nk * PT; t += kPoolThreads) {
        const int k = t / PT, pp = t % PT;
        s_w[k * PT + pp] = pp < len ? weights[(b * n + k0 + k) * HW + t0 + pp] : acc_t(0);
      }
    }
    __syncthreads();

    const int lo = g * PG, hi = min(lo + PG, len);
    if constexpr (kLabels) {
      // every lane of a warp has the same g, so the same labels: no divergence
      for (int pp = lo; pp < hi; ++pp) {
        const int l = s_lab[pp];
        if (l != cur) {
          if (cur >= 0) {
            s_acc[(g * nk_max + cur) * kCT + c] += run;
            if (c == 0) s_cnt[g * nk_max + cur] += cnt;
          }
          cur = l;
          run = acc_t(0);
          cnt = 0;
        }
        run += fr[pp];
        ++cnt;
      }
    } else {
      for (int k = 0; k < nk; ++k) {
        const acc_t* wr = s_w + k * PT;
        acc_t a = acc_t(0), ar = acc_t(0);
        for (int pp = lo; pp < hi; ++pp) {
          const acc_t w = wr[pp];
          a += w * fr[pp];
          ar += w;
        }
        s_acc[(g * nk_max + k) * kCT + c] += a;
        if (c == 0) s_area[g * nk_max + k] += ar;
      }
    }
  }
  if constexpr (kLabels) {
    if (cur >= 0) {
      s_acc[(g * nk_max + cur) * kCT + c] += run;
      if (c == 0) s_cnt[g * nk_max + cur] += cnt;
    }
  }
  __syncthreads();

  // groups summed in group order
  const int64_t prow = (b * nsplit + split) * n + k0;  // first (b, split, class) row of this block
  for (int t = tid; t < nk * kCT; t += kPoolThreads) {
    const int k = t / kCT, cc = t % kCT;
    if (c0 + cc < C) {
      acc_t s = acc_t(0);
      for (int gg = 0; gg < kGroups; ++gg) s += s_acc[(gg * nk_max + k) * kCT + cc];
      part[(prow + k) * C + c0 + cc] = s;
    }
  }
  if (blockIdx.y == 0) {
    for (int k = tid; k < nk; k += kPoolThreads) {
      if constexpr (kLabels) {
        int s = 0;
        for (int gg = 0; gg < kGroups; ++gg) s += s_cnt[gg * nk_max + k];
        cpart[prow + k] = s;
      } else {
        acc_t s = acc_t(0);
        for (int gg = 0; gg < kGroups; ++gg) s += s_area[gg * nk_max + k];
        apart[prow + k] = s;
      }
    }
  }
}

// codes[b,k,c] = sum_split part (split order), / area when normalize (0 for a zero area); area[b,k].
// One thread per (b, k, c); with C == 0 one per (b, k), for the area.
template <typename scalar_t, typename acc_t, bool kLabels>
__global__ void pool_finish_kernel(const acc_t* __restrict__ part, const acc_t* __restrict__ apart,
                                   const int32_t* __restrict__ cpart, int64_t B, int64_t n, int64_t C,
                                   int64_t nsplit, bool normalize, scalar_t* __restrict__ codes,
                                   acc_t* __restrict__ area) {
  const int64_t Cx = C > 0 ? C : 1;
  const int64_t total = B * n * Cx;
  for (int64_t idx = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; idx < total;
       idx += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t r = idx / Cx, c = idx % Cx;  // r = b * n + k
    const int64_t b = r / n, k = r % n;
    acc_t ar;
    if constexpr (kLabels) {
      int64_t cnt = 0;
      for (int64_t s = 0; s < nsplit; ++s) cnt += cpart[(b * nsplit + s) * n + k];
      ar = static_cast<acc_t>(cnt);
    } else {
      ar = acc_t(0);
      for (int64_t s = 0; s < nsplit; ++s) ar += apart[(b * nsplit + s) * n + k];
    }
    if (c < C) {
      acc_t sum = acc_t(0);
      for (int64_t s = 0; s < nsplit; ++s) sum += part[((b * nsplit + s) * n + k) * C + c];
      acc_t out = sum;
      if (normalize) out = ar > acc_t(0) ? sum / ar : acc_t(0);
      codes[r * C + c] = static_cast<scalar_t>(out);
    }
    if (c == 0) area[r] = ar;
  }
}

// out[b, c, p] for p = this thread's pixel, every b (grid y stride) and channel chunk (grid z stride).
template <typename scalar_t, typename acc_t, bool kLabels>
__global__ void __launch_bounds__(kBcastThreads)
broadcast_kernel(const scalar_t* __restrict__ codes, const int64_t* __restrict__ labels,
                 const acc_t* __restrict__ weights, int64_t B, int64_t n, int64_t C, int64_t HW,
                 scalar_t* __restrict__ out) {
  const int64_t p = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (p >= HW) return;  // no barrier below
  for (int64_t b = blockIdx.y; b < B; b += gridDim.y) {
    const scalar_t* cb = codes + b * n * C;
    scalar_t* ob = out + b * C * HW + p;
    int64_t l = 0;
    bool ok = false;
    if constexpr (kLabels) {
      l = labels[b * HW + p];
      ok = l >= 0 && l < n;
    }
    for (int64_t cz = static_cast<int64_t>(blockIdx.z) * kBcastChannels; cz < C;
         cz += static_cast<int64_t>(gridDim.z) * kBcastChannels) {
      const int64_t ce = std::min<int64_t>(C, cz + kBcastChannels);
      for (int64_t c = cz; c < ce; ++c) {
        if constexpr (kLabels) {
          ob[c * HW] = ok ? cb[l * C + c] : static_cast<scalar_t>(0.0f);
        } else {
          acc_t s = acc_t(0);
          for (int64_t k = 0; k < n; ++k) s += weights[(b * n + k) * HW + p] * static_cast<acc_t>(cb[k * C + c]);
          ob[c * HW] = static_cast<scalar_t>(s);
        }
      }
    }
  }
}

// Checks seg against (B, n, H, W) and ref (the other argument, for its device) and returns it in the
// form the kernels read. Call under the device guard (it may convert on the device).
SegArg check_seg(const at::Tensor& seg, const at::Tensor& ref, const char* ref_name, int64_t B, int64_t H,
                 int64_t W, int64_t n, at::ScalarType acc) {
  check_cuda(seg, "seg", -1);
  check_same_device(ref, ref_name, seg, "seg");
  return seg_arg(seg, B, H, W, n, acc, ref_name);
}

template <typename scalar_t, bool kLabels>
void launch_pool(const at::Tensor& feat, int64_t s_c, int64_t s_p, const SegArg& seg, int64_t B, int64_t C,
                 int64_t HW, int64_t n, bool normalize, at::Tensor& codes, at::Tensor& area) {
  using acc_type = typename Acc<scalar_t>::type;
  const auto acc = acc_dtype(feat.scalar_type());
  const int64_t nsplit = (HW + kSplitPixels - 1) / kSplitPixels;
  at::Tensor part = at::empty({B, nsplit, n, C}, feat.options().dtype(acc));
  at::Tensor apart, cpart;
  if (kLabels)
    cpart = at::empty({B, nsplit, n}, feat.options().dtype(at::kInt));
  else
    apart = at::empty({B, nsplit, n}, feat.options().dtype(acc));
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();

  if (nsplit > 0) {
    const size_t fixed = pool_smem_fixed<acc_type, kLabels>(), per = pool_smem_per_class<acc_type, kLabels>();
    const int64_t nk_max = std::min<int64_t>(n, static_cast<int64_t>((kSmemBudget - fixed) / per));
    TORCH_INTERNAL_ASSERT(nk_max >= 1);
    const size_t smem = fixed + static_cast<size_t>(nk_max) * per;
    const int64_t gx = B * nsplit;
    const int64_t gy = std::max<int64_t>(1, (C + kCT - 1) / kCT);  // one tile even for C == 0: the areas
    const int64_t gz = (n + nk_max - 1) / nk_max;
    TORCH_CHECK(gx <= std::numeric_limits<int32_t>::max(), "region_pool (cuda): B * ceil(H*W / ", kSplitPixels,
                ") = ", gx, " blocks is too many");
    TORCH_CHECK(gy <= 65535, "region_pool (cuda): C = ", C, " is too large (at most ", 65535 * kCT, ")");
    TORCH_CHECK(gz <= 65535, "region_pool (cuda): num_classes = ", n, " is too large");
    const dim3 grid(static_cast<unsigned>(gx), static_cast<unsigned>(gy), static_cast<unsigned>(gz));
    pool_partial_kernel<scalar_t, acc_type, kLabels><<<grid, kPoolThreads, smem, stream>>>(
        feat.const_data_ptr<scalar_t>(), s_c, s_p,
        kLabels ? seg.labels.const_data_ptr<int64_t>() : nullptr,
        kLabels ? nullptr : seg.weights.const_data_ptr<acc_type>(),
        C, HW, n, nsplit, static_cast<int>(nk_max), part.mutable_data_ptr<acc_type>(),
        kLabels ? nullptr : apart.mutable_data_ptr<acc_type>(), kLabels ? cpart.mutable_data_ptr<int32_t>() : nullptr);
    MDR_LAUNCH_CHECK();
  }
  const int threads = 256;
  pool_finish_kernel<scalar_t, acc_type, kLabels><<<blocks_for(B * n * std::max<int64_t>(C, 1), threads), threads, 0,
                                                stream>>>(
      part.const_data_ptr<acc_type>(), kLabels ? nullptr : apart.const_data_ptr<acc_type>(),
      kLabels ? cpart.const_data_ptr<int32_t>() : nullptr, B, n, C, nsplit, normalize,
      codes.mutable_data_ptr<scalar_t>(), area.mutable_data_ptr<acc_type>());
  MDR_LAUNCH_CHECK();
}

}  // namespace

std::vector<at::Tensor> region_pool_forward(const at::Tensor& feat_in, const at::Tensor& seg_in, int64_t num_classes,
                                            bool normalize) {
  check_cuda(feat_in, "feat", 4);
  checks::floating(feat_in, "feat");
  c10::cuda::CUDAGuard guard(feat_in.device());
  const int64_t B = feat_in.size(0), C = feat_in.size(1), H = feat_in.size(2), W = feat_in.size(3);
  const int64_t n = num_classes, HW = H * W;
  const auto acc = acc_dtype(feat_in.scalar_type());
  const SegArg seg = check_seg(seg_in, feat_in, "feat", B, H, W, n, acc);

  // NCHW- or channels_last-contiguous feat is read in place; any other layout is made NCHW-contiguous.
  at::Tensor feat = feat_in;
  bool nhwc = false;
  if (!feat.is_contiguous()) {
    if (feat.is_contiguous(at::MemoryFormat::ChannelsLast))
      nhwc = true;
    else
      feat = feat.contiguous();
  }
  const int64_t s_c = nhwc ? 1 : HW, s_p = nhwc ? C : 1;

  at::Tensor codes = at::empty({B, n, C}, feat.options().memory_format(at::MemoryFormat::Contiguous));
  at::Tensor area = at::empty({B, n}, feat.options().dtype(acc).memory_format(at::MemoryFormat::Contiguous));
  if (B == 0) return {codes, area};

  MDR_DISPATCH_FLOATS(feat.scalar_type(), "region_pool_forward_cuda", [&] {
    if (seg.labels.defined())
      launch_pool<scalar_t, true>(feat, s_c, s_p, seg, B, C, HW, n, normalize, codes, area);
    else
      launch_pool<scalar_t, false>(feat, s_c, s_p, seg, B, C, HW, n, normalize, codes, area);
  });
  return {codes, area};
}

at::Tensor region_broadcast_forward(const at::Tensor& codes_in, const at::Tensor& seg_in, int64_t num_classes) {
  check_cuda(codes_in, "codes", 3);
  checks::floating(codes_in, "codes");
  c10::cuda::CUDAGuard guard(codes_in.device());
  const int64_t B = codes_in.size(0), n = num_classes, C = codes_in.size(2);
  check_broadcast_shapes(codes_in, seg_in, n);
  const int64_t H = seg_in.size(-2), W = seg_in.size(-1), HW = H * W;
  const auto acc = acc_dtype(codes_in.scalar_type());
  const SegArg seg = check_seg(seg_in, codes_in, "codes", B, H, W, n, acc);
  const at::Tensor codes = codes_in.contiguous();

  at::Tensor out = at::empty({B, C, H, W}, codes.options().memory_format(at::MemoryFormat::Contiguous));
  if (out.numel() == 0) return out;

  const int64_t gx = (HW + kBcastThreads - 1) / kBcastThreads;
  TORCH_CHECK(gx <= std::numeric_limits<int32_t>::max(), "region_broadcast (cuda): H*W = ", HW, " is too large");
  const dim3 grid(static_cast<unsigned>(gx), static_cast<unsigned>(std::min<int64_t>(B, 65535)),
                  static_cast<unsigned>(std::min<int64_t>((C + kBcastChannels - 1) / kBcastChannels, 65535)));
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  MDR_DISPATCH_FLOATS(codes.scalar_type(), "region_broadcast_forward_cuda", [&] {
    using acc_type = typename Acc<scalar_t>::type;
    if (seg.labels.defined()) {
      broadcast_kernel<scalar_t, acc_type, true><<<grid, kBcastThreads, 0, stream>>>(
          codes.const_data_ptr<scalar_t>(), seg.labels.const_data_ptr<int64_t>(), nullptr, B, n, C, HW,
          out.mutable_data_ptr<scalar_t>());
    } else {
      broadcast_kernel<scalar_t, acc_type, false><<<grid, kBcastThreads, 0, stream>>>(
          codes.const_data_ptr<scalar_t>(), nullptr, seg.weights.const_data_ptr<acc_type>(), B, n, C, HW,
          out.mutable_data_ptr<scalar_t>());
    }
    MDR_LAUNCH_CHECK();
  });
  return out;
}

}  // namespace cuda
}  // namespace mdrnet_fast
