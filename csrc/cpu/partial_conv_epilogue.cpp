// Partial convolution epilogue on CPU (NVIDIA PartialConv2d semantics).
//
// torch computes raw = conv2d(x * mask, weight); everything after that (mask window sums,
// renormalisation ratio, bias, new mask, and the matching backward) is done here in one or
// two passes over the output, instead of the ~8 full-size temporaries the eager formula makes.
#include "mdrnet_fast.h"
#include "cpu/common.h"

#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>

#include <algorithm>
#include <cstring>
#include <memory>
#include <vector>

namespace mdrnet_fast {
namespace {

// Output pixels per sub-block of the forward epilogue: the ratio / new-mask rows of one block
// (2 x 2048 accumulators, 16 KiB for float) stay in L1 while they are re-read for every channel.
constexpr int64_t kBlockPixels = 2048;
// Fixed reduction chunk for grad_bias. It depends on the shape only, never on the thread
// count, so the summation order (and the result) is the same however many threads run.
constexpr int64_t kReduceChunk = 8192;
// Independent partial sums per chunk: breaks the serial add chain so the loop vectorises
// (and keeps partial sums small, which helps accuracy) while staying deterministic.
constexpr int kLanes = 16;

using cpu::grain_for;

struct Geom {
  int64_t kh, kw, sh, sw, ph, pw, dh, dw;
};

template <typename T>
std::unique_ptr<T[]> uninit(int64_t n) {
  // Every element is written before it is read; value-initialising would be a wasted pass.
  return std::unique_ptr<T[]>(new T[static_cast<size_t>(std::max<int64_t>(n, 1))]);
}

// Mask window sums with running (prefix) sums: the cost per output pixel does not depend on the kernel
// size. Prefix sums are kept in double, so the window sum P[hi] - P[lo - d] of a float mask is exact for
// binary masks and within a few ulps of a direct sum for soft ones (and fine for float64 masks too).
//
// The taps {s, s + d, ..., s + (k-1)d} of one window, clipped to the image [0, n): first and last tap
// inside (same residue mod d); lo > hi when the window lies entirely in the zero padding.
struct Taps {
  int64_t lo, hi;
};

inline Taps clip_taps(int64_t s, int64_t k, int64_t d, int64_t n) {
  const int64_t e = s + (k - 1) * d;
  const int64_t lo = s < 0 ? s + ((-s + d - 1) / d) * d : s;
  const int64_t hi = e >= n ? e - ((e - n + d) / d) * d : e;
  return {lo, hi};
}

// Window sum from a stride-d prefix P (P[i] = v[i] + P[i - d]); `step` is the distance between
// consecutive entries of P in memory.
MDR_INLINE double window_sum(const double* P, const Taps& t, int64_t d, int64_t step) {
  if (t.lo > t.hi) return 0.0;
  return P[t.hi * step] - (t.lo >= d ? P[(t.lo - d) * step] : 0.0);
}

// Pass 1, per input row (b, h): the channel-summed mask row, its stride-dw prefix, then every output
// column's window: hsum[b, h, ow]. Pass 2: hsum becomes a stride-dh prefix down each column, so any
// output row's window sum is one subtraction (vertical_rows).
template <typename scalar_t>
void window_prefix(const scalar_t* mask, bool mask_nhwc, int64_t B, int64_t Cm, int64_t H, int64_t W, int64_t Wo,
                   const Geom& g, double* hsum) {
  std::vector<Taps> cols(static_cast<size_t>(Wo));
  for (int64_t ow = 0; ow < Wo; ++ow) cols[ow] = clip_taps(ow * g.sw - g.pw, g.kw, g.dw, W);
  const int64_t dw = g.dw, dh = g.dh;
  at::parallel_for(0, B * H, grain_for(Cm * W + Wo), [&](int64_t begin, int64_t end) {
    std::vector<double> buf(static_cast<size_t>(W));
    double* __restrict__ row = buf.data();
    for (int64_t r = begin; r < end; ++r) {
      const int64_t b = r / H, h = r % H;
      if (mask_nhwc) {  // a (multi-channel) channels_last mask: a pixel's channels are contiguous
        const scalar_t* __restrict__ m0 = mask + (b * H + h) * W * Cm;
        for (int64_t w = 0; w < W; ++w) {
          double sum = 0.0;
          for (int64_t c = 0; c < Cm; ++c) sum += static_cast<double>(m0[w * Cm + c]);
          row[w] = sum;
        }
      } else {
        const scalar_t* __restrict__ m0 = mask + (b * Cm * H + h) * W;
        for (int64_t w = 0; w < W; ++w) row[w] = static_cast<double>(m0[w]);
        for (int64_t c = 1; c < Cm; ++c) {
          const scalar_t* __restrict__ mc = m0 + c * H * W;
          for (int64_t w = 0; w < W; ++w) row[w] += static_cast<double>(mc[w]);
        }
      }
      for (int64_t w = dw; w < W; ++w) row[w] += row[w - dw];
      double* __restrict__ out = hsum + r * Wo;
      for (int64_t ow = 0; ow < Wo; ++ow) out[ow] = window_sum(row, cols[ow], dw, 1);
    }
  });
  // column prefixes: sequential in h, so the tasks are (b, a chunk of columns)
  constexpr int64_t kCols = 256;
  const int64_t nchunk = (Wo + kCols - 1) / kCols;
  at::parallel_for(0, B * nchunk, grain_for(H * kCols), [&](int64_t begin, int64_t end) {
    for (int64_t t = begin; t < end; ++t) {
      const int64_t b = t / nchunk, c0 = (t % nchunk) * kCols, c1 = std::min(Wo, c0 + kCols);
      double* plane = hsum + b * H * Wo;
      for (int64_t h = dh; h < H; ++h) {
        double* __restrict__ dst = plane + h * Wo;
        const double* __restrict__ src = plane + (h - dh) * Wo;
        for (int64_t ow = c0; ow < c1; ++ow) dst[ow] += src[ow];
      }
    }
  });
}

// msum[oh, :] for oh in [oh0, oh1) of batch b, from the column prefixes of window_prefix.
template <typename acc_t>
inline void vertical_rows(const double* hsum, int64_t b, int64_t oh0, int64_t oh1, int64_t H, int64_t Wo,
                          const Geom& g, acc_t* __restrict__ msum) {
  const double* plane = hsum + b * H * Wo;
  for (int64_t oh = oh0; oh < oh1; ++oh) {
    acc_t* __restrict__ dst = msum + (oh - oh0) * Wo;
    const Taps t = clip_taps(oh * g.sh - g.ph, g.kh, g.dh, H);
    if (t.lo > t.hi) {  // window lies entirely in the padding
      std::fill(dst, dst + Wo, acc_t(0));
      continue;
    }
    const double* __restrict__ top = plane + t.hi * Wo;
    if (t.lo >= g.dh) {
      const double* __restrict__ sub = plane + (t.lo - g.dh) * Wo;
      for (int64_t ow = 0; ow < Wo; ++ow) dst[ow] = static_cast<acc_t>(top[ow] - sub[ow]);
    } else {
      for (int64_t ow = 0; ow < Wo; ++ow) dst[ow] = static_cast<acc_t>(top[ow]);
    }
  }
}

using cpu::Layout;
using cpu::normalise_layout;

void check_mask_geometry(const at::Tensor& mask, int64_t Ho, int64_t Wo, const char* ho_name,
                         const char* wo_name, const Geom& g) {
  checks::conv_out_matches(ho_name, Ho, "H", mask.size(2), g.kh, g.sh, g.ph, g.dh);
  checks::conv_out_matches(wo_name, Wo, "W", mask.size(3), g.kw, g.sw, g.pw, g.dw);
}

template <typename scalar_t>
void forward_impl(const at::Tensor& raw, Layout layout, const at::Tensor& mask, bool mask_nhwc, const at::Tensor* bias,
                  const Geom& g, double winsize, at::Tensor& out, at::Tensor& new_mask, at::Tensor& grad_scale) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t B = raw.size(0), Co = raw.size(1), Ho = raw.size(2), Wo = raw.size(3);
  const int64_t Cm = mask.size(1), H = mask.size(2), W = mask.size(3);
  const int64_t HoWo = Ho * Wo;
  const int64_t Cn = new_mask.size(1);  // 1, or Co when multi_channel

  auto hsum = uninit<double>(B * H * Wo);
  window_prefix<scalar_t>(mask.const_data_ptr<scalar_t>(), mask_nhwc, B, Cm, H, W, Wo, g, hsum.get());
  // multi_channel: every new-mask channel is the same plane, stored in raw's layout
  const bool nm_nhwc = Cn > 1 && layout == Layout::NHWC;

  const bool has_bias = bias != nullptr;
  std::vector<acc_t> bias_acc(static_cast<size_t>(has_bias ? Co : 0));
  if (has_bias) {
    const scalar_t* bp = bias->const_data_ptr<scalar_t>();
    for (int64_t c = 0; c < Co; ++c) bias_acc[c] = static_cast<acc_t>(bp[c]);
  }

  const scalar_t* raw_p = raw.const_data_ptr<scalar_t>();
  scalar_t* out_p = out.mutable_data_ptr<scalar_t>();
  scalar_t* nmask_p = new_mask.mutable_data_ptr<scalar_t>();
  acc_t* gs_p = grad_scale.mutable_data_ptr<acc_t>();
  const acc_t* bias_p = bias_acc.data();
  const acc_t wsz = static_cast<acc_t>(winsize);
  const acc_t eps = static_cast<acc_t>(1e-8);
  const int64_t block_rows = std::max<int64_t>(1, kBlockPixels / Wo);

  at::parallel_for(0, B * Ho, grain_for(Wo * (Co + Cn + g.kh)), [&](int64_t begin, int64_t end) {
    const int64_t cap = std::min(block_rows, end - begin) * Wo;
    auto ratio_buf = uninit<acc_t>(cap);
    auto nm_buf = uninit<acc_t>(cap);
    acc_t* __restrict__ ratio = ratio_buf.get();
    acc_t* __restrict__ nm = nm_buf.get();

    for (int64_t r = begin; r < end;) {
      // A block never crosses a batch boundary, so its pixels are contiguous in every plane.
      const int64_t b = r / Ho, oh0 = r % Ho;
      const int64_t oh1 = std::min({Ho, oh0 + block_rows, oh0 + (end - r)});
      const int64_t n = (oh1 - oh0) * Wo, p0 = oh0 * Wo;
      r += oh1 - oh0;

      vertical_rows<acc_t>(hsum.get(), b, oh0, oh1, H, Wo, g, ratio);  // ratio holds msum for now
      acc_t* __restrict__ gs = gs_p + b * HoWo + p0;
      scalar_t* __restrict__ nmask0 = nm_nhwc ? nullptr : nmask_p + b * Cn * HoWo + p0;
      for (int64_t q = 0; q < n; ++q) {
        const acc_t m = ratio[q];
        const acc_t v = std::min(std::max(m, acc_t(0)), acc_t(1));
        // The select only matters for msum <= -1e-8 (not a valid mask); for msum == 0 the
        // definition already gives winsize/1e-8 * 0 == 0. Either way: never NaN/Inf.
        const acc_t rt = v > acc_t(0) ? wsz / (m + eps) * v : acc_t(0);
        nm[q] = v;
        ratio[q] = rt;
        gs[q] = has_bias ? rt * v : rt;
        if (!nm_nhwc) nmask0[q] = static_cast<scalar_t>(v);
      }
      if (nm_nhwc) {
        for (int64_t q = 0; q < n; ++q) {
          scalar_t* __restrict__ px = nmask_p + (b * HoWo + p0 + q) * Cn;
          const scalar_t v = static_cast<scalar_t>(nm[q]);
          for (int64_t c = 0; c < Cn; ++c) px[c] = v;
        }
      } else {
        for (int64_t c = 1; c < Cn; ++c)  // multi_channel: every new-mask channel is the same
          std::memcpy(nmask0 + c * HoWo, nmask0, static_cast<size_t>(n) * sizeof(scalar_t));
      }

      if (layout == Layout::NCHW) {
        // Per channel the block is one contiguous run: inner loop over pixels, bias constant.
        for (int64_t co = 0; co < Co; ++co) {
          const scalar_t* __restrict__ x = raw_p + (b * Co + co) * HoWo + p0;
          scalar_t* __restrict__ y = out_p + (b * Co + co) * HoWo + p0;
          if (has_bias) {
            const acc_t bc = bias_p[co];
            for (int64_t q = 0; q < n; ++q)
              y[q] = static_cast<scalar_t>((static_cast<acc_t>(x[q]) * ratio[q] + bc) * nm[q]);
          } else {
            for (int64_t q = 0; q < n; ++q) y[q] = static_cast<scalar_t>(static_cast<acc_t>(x[q]) * ratio[q]);
          }
        }
      } else {
        // channels_last: a pixel's Co values are contiguous: inner loop over channels, ratio constant.
        for (int64_t q = 0; q < n; ++q) {
          const scalar_t* __restrict__ x = raw_p + (b * HoWo + p0 + q) * Co;
          scalar_t* __restrict__ y = out_p + (b * HoWo + p0 + q) * Co;
          const acc_t rq = ratio[q];
          if (has_bias) {
            const acc_t nq = nm[q];
            for (int64_t co = 0; co < Co; ++co)
              y[co] = static_cast<scalar_t>((static_cast<acc_t>(x[co]) * rq + bias_p[co]) * nq);
          } else {
            for (int64_t co = 0; co < Co; ++co) y[co] = static_cast<scalar_t>(static_cast<acc_t>(x[co]) * rq);
          }
        }
      }
    }
  });
}

template <typename scalar_t>
void mask_sum_impl(const at::Tensor& mask, const Geom& g, int64_t Ho, int64_t Wo, at::Tensor& msum) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t B = mask.size(0), Cm = mask.size(1), H = mask.size(2), W = mask.size(3);
  auto hsum = uninit<double>(B * H * Wo);
  window_prefix<scalar_t>(mask.const_data_ptr<scalar_t>(), false, B, Cm, H, W, Wo, g, hsum.get());
  acc_t* dst = msum.mutable_data_ptr<acc_t>();
  at::parallel_for(0, B * Ho, grain_for(Wo * g.kh), [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r)
      vertical_rows<acc_t>(hsum.get(), r / Ho, r % Ho, r % Ho + 1, H, Wo, g, dst + r * Wo);
  });
}

// Fixed-order sum of the lanes (pairwise), so results do not depend on anything but the data.
template <typename acc_t>
inline acc_t sum_lanes(acc_t* l) {
  for (int w = kLanes / 2; w >= 1; w /= 2)
    for (int i = 0; i < w; ++i) l[i] += l[i + w];
  return l[0];
}

template <typename scalar_t>
void backward_impl(const at::Tensor& go, Layout layout, const at::Tensor& gsc, const at::Tensor* nmask,
                   bool nm_nhwc, at::Tensor& grad_raw, at::Tensor* grad_bias) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t B = go.size(0), Co = go.size(1), HoWo = go.size(2) * go.size(3);
  const scalar_t* go_p = go.const_data_ptr<scalar_t>();
  const acc_t* gs_p = gsc.const_data_ptr<acc_t>();
  scalar_t* gr_p = grad_raw.mutable_data_ptr<scalar_t>();
  const bool want_bias = grad_bias != nullptr;
  const scalar_t* nm_p = want_bias ? nmask->const_data_ptr<scalar_t>() : nullptr;
  const int64_t Cn = want_bias ? nmask->size(1) : 1;

  std::vector<acc_t> bias_acc(static_cast<size_t>(want_bias ? Co : 0), acc_t(0));

  if (B * Co * HoWo == 0) {
    // Nothing to scale; the chunking below would divide by zero.
  } else if (layout == Layout::NCHW) {
    // Tasks = (b, co, fixed pixel chunk); each writes one partial sum, combined below in order.
    const int64_t chunk = std::min(HoWo, kReduceChunk);
    const int64_t nchunk = (HoWo + chunk - 1) / chunk;
    const int64_t ntask = B * Co * nchunk;
    std::vector<acc_t> partial(static_cast<size_t>(want_bias ? ntask : 0));
    acc_t* part_p = partial.data();
    at::parallel_for(0, ntask, grain_for(chunk), [&](int64_t begin, int64_t end) {
      for (int64_t t = begin; t < end; ++t) {
        const int64_t bc = t / nchunk, ch = t % nchunk;
        const int64_t b = bc / Co, co = bc % Co;
        const int64_t p0 = ch * chunk, p1 = std::min(HoWo, p0 + chunk);
        const scalar_t* __restrict__ x = go_p + bc * HoWo;
        const acc_t* __restrict__ s = gs_p + b * HoWo;
        scalar_t* __restrict__ y = gr_p + bc * HoWo;
        if (!want_bias) {
          for (int64_t p = p0; p < p1; ++p) y[p] = static_cast<scalar_t>(static_cast<acc_t>(x[p]) * s[p]);
          continue;
        }
        const scalar_t* __restrict__ m = nm_p + (b * Cn + (Cn == 1 ? 0 : co)) * HoWo;
        acc_t lanes[kLanes] = {};
        int64_t p = p0;
        for (; p + kLanes <= p1; p += kLanes) {
          // Lanes are independent, so this only asks for vectorisation GCC would otherwise
          // skip (it keeps `lanes` in memory); the summation order is fixed by the source.
#pragma omp simd
          for (int l = 0; l < kLanes; ++l) {
            const acc_t xv = static_cast<acc_t>(x[p + l]);
            y[p + l] = static_cast<scalar_t>(xv * s[p + l]);
            lanes[l] += xv * static_cast<acc_t>(m[p + l]);
          }
        }
        for (int l = 0; p < p1; ++p, ++l) {
          const acc_t xv = static_cast<acc_t>(x[p]);
          y[p] = static_cast<scalar_t>(xv * s[p]);
          lanes[l] += xv * static_cast<acc_t>(m[p]);
        }
        part_p[t] = sum_lanes(lanes);
      }
    });
    if (want_bias) {
      for (int64_t b = 0; b < B; ++b)
        for (int64_t co = 0; co < Co; ++co)
          for (int64_t ch = 0; ch < nchunk; ++ch) bias_acc[co] += part_p[(b * Co + co) * nchunk + ch];
    }
  } else {
    // channels_last: tasks = (b, fixed pixel chunk); each accumulates a Co-vector (inner loop
    // over channels, no carried dependency), and the vectors are summed in task order.
    const int64_t chunk = std::min(HoWo, std::max<int64_t>(1, kReduceChunk / std::max<int64_t>(1, Co)));
    const int64_t nchunk = (HoWo + chunk - 1) / chunk;
    const int64_t ntask = B * nchunk;
    std::vector<acc_t> partial(static_cast<size_t>(want_bias ? ntask * Co : 0));
    acc_t* part_p = partial.data();
    at::parallel_for(0, ntask, grain_for(chunk * Co), [&](int64_t begin, int64_t end) {
      for (int64_t t = begin; t < end; ++t) {
        const int64_t b = t / nchunk, ch = t % nchunk;
        const int64_t p0 = ch * chunk, p1 = std::min(HoWo, p0 + chunk);
        acc_t* __restrict__ acc = want_bias ? part_p + t * Co : nullptr;
        if (want_bias) std::fill(acc, acc + Co, acc_t(0));
        for (int64_t p = p0; p < p1; ++p) {
          const scalar_t* __restrict__ x = go_p + (b * HoWo + p) * Co;
          scalar_t* __restrict__ y = gr_p + (b * HoWo + p) * Co;
          const acc_t sp = gs_p[b * HoWo + p];
          for (int64_t co = 0; co < Co; ++co) y[co] = static_cast<scalar_t>(static_cast<acc_t>(x[co]) * sp);
          if (!want_bias) continue;
          if (Cn == 1) {
            const acc_t mp = static_cast<acc_t>(nm_p[b * HoWo + p]);
            for (int64_t co = 0; co < Co; ++co) acc[co] += static_cast<acc_t>(x[co]) * mp;
          } else if (nm_nhwc) {  // channels_last new mask: a contiguous Co-vector per pixel
            const scalar_t* __restrict__ m = nm_p + (b * HoWo + p) * Cn;
            for (int64_t co = 0; co < Co; ++co) acc[co] += static_cast<acc_t>(x[co]) * static_cast<acc_t>(m[co]);
          } else {
            // new_mask is NCHW: its channels are HoWo apart (a gather; multi_channel only).
            const scalar_t* __restrict__ m = nm_p + b * Cn * HoWo + p;
            for (int64_t co = 0; co < Co; ++co) acc[co] += static_cast<acc_t>(x[co]) * static_cast<acc_t>(m[co * HoWo]);
          }
        }
      }
    });
    if (want_bias) {
      for (int64_t t = 0; t < ntask; ++t)
        for (int64_t co = 0; co < Co; ++co) bias_acc[co] += part_p[t * Co + co];
    }
  }

  if (want_bias) {
    scalar_t* gb = grad_bias->mutable_data_ptr<scalar_t>();
    for (int64_t co = 0; co < Co; ++co) gb[co] = static_cast<scalar_t>(bias_acc[co]);
  }
}

}  // namespace

std::vector<at::Tensor> partial_conv_epilogue_forward(
    const at::Tensor& raw_in, const at::Tensor& mask_in, const c10::optional<at::Tensor>& bias_in,
    int64_t kh, int64_t kw, int64_t sh, int64_t sw, int64_t ph, int64_t pw, int64_t dh, int64_t dw,
    double winsize, bool multi_channel) {
  checks::cpu_4d(raw_in, "raw", "(B, Co, Ho, Wo)");
  checks::floating(raw_in, "raw");
  checks::cpu_4d(mask_in, "mask", "(B, Cm, H, W)");
  checks::same_dtype(mask_in, "mask", raw_in, "raw");
  checks::conv_params(kh, kw, sh, sw, ph, pw, dh, dw);
  TORCH_CHECK(mask_in.size(0) == raw_in.size(0), "mask batch size (", mask_in.size(0),
              ") must equal raw batch size (", raw_in.size(0), ")");
  TORCH_CHECK(multi_channel ? mask_in.size(1) >= 1 : mask_in.size(1) == 1,
              "mask must have 1 channel when multi_channel is false (and >= 1 otherwise), got shape ",
              mask_in.sizes());
  TORCH_CHECK(winsize > 0, "winsize must be > 0 (kh*kw*C_in or kh*kw), got ", winsize);
  const Geom g{kh, kw, sh, sw, ph, pw, dh, dw};
  check_mask_geometry(mask_in, raw_in.size(2), raw_in.size(3), "raw Ho", "raw Wo", g);

  const int64_t Co = raw_in.size(1);
  const at::Tensor* bias = nullptr;
  if (bias_in.has_value() && bias_in->defined()) {
    const at::Tensor& bt = *bias_in;
    TORCH_CHECK(bt.device().is_cpu(), "bias must be a CPU tensor, got device ", bt.device());
    TORCH_CHECK(bt.dim() == 1 && bt.size(0) == Co, "bias must have shape (Co,) = (", Co, "), got ",
                bt.sizes());
    checks::same_dtype(bt, "bias", raw_in, "raw");
    bias = &bt;
  }

  at::Tensor raw = raw_in;
  const Layout layout = normalise_layout(raw);
  at::Tensor mask = mask_in;
  const bool mask_nhwc = normalise_layout(mask) == Layout::NHWC;
  at::Tensor bias_c;
  if (bias != nullptr && !bias->is_contiguous()) {
    bias_c = bias->contiguous();
    bias = &bias_c;
  }

  const int64_t B = raw.size(0), Ho = raw.size(2), Wo = raw.size(3);
  at::Tensor out = at::empty_like(raw);  // dense input => same strides (NCHW or channels_last)
  const bool nm_nhwc = multi_channel && Co > 1 && layout == Layout::NHWC;
  at::Tensor new_mask = at::empty({B, multi_channel ? Co : 1, Ho, Wo},
                                  raw.options().memory_format(nm_nhwc ? at::MemoryFormat::ChannelsLast
                                                                      : at::MemoryFormat::Contiguous));
  at::Tensor grad_scale = at::empty({B, 1, Ho, Wo}, raw.options().dtype(acc_dtype(raw.scalar_type())));

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, raw.scalar_type(), "partial_conv_epilogue_forward", [&] {
    forward_impl<scalar_t>(raw, layout, mask, mask_nhwc, bias, g, winsize, out, new_mask, grad_scale);
  });
  return {out, new_mask, grad_scale};
}

std::vector<at::Tensor> partial_conv_epilogue_backward(
    const at::Tensor& grad_out_in, const at::Tensor& grad_scale_in, const at::Tensor& new_mask_in,
    bool need_bias_grad) {
  checks::cpu_4d(grad_out_in, "grad_out", "(B, Co, Ho, Wo)");
  checks::floating(grad_out_in, "grad_out");
  const int64_t B = grad_out_in.size(0), Co = grad_out_in.size(1);
  const int64_t Ho = grad_out_in.size(2), Wo = grad_out_in.size(3);

  checks::cpu_4d(grad_scale_in, "grad_scale", "(B, 1, Ho, Wo)");
  TORCH_CHECK(grad_scale_in.size(0) == B && grad_scale_in.size(1) == 1 && grad_scale_in.size(2) == Ho &&
                  grad_scale_in.size(3) == Wo,
              "grad_scale must have shape (B, 1, Ho, Wo) = (", B, ", 1, ", Ho, ", ", Wo, "), got ",
              grad_scale_in.sizes());
  const auto acc_st = acc_dtype(grad_out_in.scalar_type());
  TORCH_CHECK(grad_scale_in.scalar_type() == acc_st, "grad_scale must be ", acc_st, " for grad_out of dtype ",
              grad_out_in.scalar_type(), ", got ", grad_scale_in.scalar_type());

  at::Tensor new_mask;
  bool nm_nhwc = false;  // a multi-channel new mask in channels_last (else NCHW)
  if (need_bias_grad) {
    checks::cpu_4d(new_mask_in, "new_mask", "(B, 1 or Co, Ho, Wo)");
    TORCH_CHECK(new_mask_in.size(0) == B && (new_mask_in.size(1) == 1 || new_mask_in.size(1) == Co) &&
                    new_mask_in.size(2) == Ho && new_mask_in.size(3) == Wo,
                "new_mask must have shape (B, 1 or Co, Ho, Wo) = (", B, ", 1 or ", Co, ", ", Ho, ", ", Wo,
                "), got ", new_mask_in.sizes());
    checks::same_dtype(new_mask_in, "new_mask", grad_out_in, "grad_out");
    new_mask = new_mask_in;
    nm_nhwc = normalise_layout(new_mask) == Layout::NHWC && new_mask.size(1) > 1;
  }

  at::Tensor grad_out = grad_out_in;
  const Layout layout = normalise_layout(grad_out);
  if (nm_nhwc && layout != Layout::NHWC) {  // rare mix: read the new mask as NCHW planes
    new_mask = new_mask.contiguous();
    nm_nhwc = false;
  }
  const at::Tensor grad_scale = grad_scale_in.contiguous();
  at::Tensor grad_raw = at::empty_like(grad_out);
  at::Tensor grad_bias;  // undefined => None in Python when need_bias_grad is false
  if (need_bias_grad) grad_bias = at::empty({Co}, grad_out.options());

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, grad_out.scalar_type(), "partial_conv_epilogue_backward", [&] {
    backward_impl<scalar_t>(grad_out, layout, grad_scale, need_bias_grad ? &new_mask : nullptr, nm_nhwc, grad_raw,
                            need_bias_grad ? &grad_bias : nullptr);
  });
  return {grad_raw, grad_bias};
}

at::Tensor partial_conv_mask_sum(
    const at::Tensor& mask_in, int64_t kh, int64_t kw, int64_t sh, int64_t sw, int64_t ph, int64_t pw,
    int64_t dh, int64_t dw, int64_t out_h, int64_t out_w) {
  checks::cpu_4d(mask_in, "mask", "(B, Cm, H, W)");
  checks::floating(mask_in, "mask");
  checks::conv_params(kh, kw, sh, sw, ph, pw, dh, dw);
  const Geom g{kh, kw, sh, sw, ph, pw, dh, dw};
  check_mask_geometry(mask_in, out_h, out_w, "out_h", "out_w", g);
  const at::Tensor mask = mask_in.contiguous();
  at::Tensor msum = at::empty({mask.size(0), 1, out_h, out_w}, mask.options().dtype(acc_dtype(mask.scalar_type())));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, mask.scalar_type(), "partial_conv_mask_sum", [&] {
    mask_sum_impl<scalar_t>(mask, g, out_h, out_w, msum);
  });
  return msum;
}

}  // namespace mdrnet_fast
