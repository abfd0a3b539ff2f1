// Region-wise average pooling and region broadcast on CPU (SPEC §3; SEAN, Zhu et al. 2020).
//
// Integer labels, and float seg that is exactly one-hot, never become a (B, n, H, W) one-hot
// tensor: pooling is a per-class sum over each class's pixels (one read of feat, no n-fold
// multiply by zeros), broadcast a per-pixel table lookup. Soft seg is a small GEMM per batch
// item, left to at::bmm; the area sums and the normalisation around it are done here.
//
// Every reduction has a fixed order that depends on the shape and the labels only, never on
// the number of threads, so results are bitwise reproducible across thread counts.
#include "mdrnet_fast.h"
#include "region_seg.h"
#include "cpu/common.h"

#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/ops/bmm.h>
#include <ATen/ops/empty.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <limits>
#include <memory>
#include <vector>

// GCC's SLP pass packs the independent per-channel sums of the label gather into one vector
// register, paying three shuffles per four scalar loads; plain scalar adds measured ~10% faster.
#if defined(__GNUC__) && !defined(__clang__)
#define MDRNET_NO_SLP __attribute__((noinline, optimize("no-tree-slp-vectorize")))
#else
#define MDRNET_NO_SLP
#endif

namespace mdrnet_fast {
namespace {

// Pixels per label chunk. The pixels of a chunk are visited class by class, i.e. out of order:
// the chunk's slice of the G planes read together (G * 4 KiB for float) then stays in L1.
constexpr int64_t kPixChunk = 1024;
// Channels summed together by the NCHW gather: each pixel index loaded is used G times.
constexpr int64_t kGroup = 4;
// channels_last pooling: tasks are (b, pixel chunk, channel block), each with private partial
// sums that are then added in chunk order; the (n+1) x block accumulators stay in L1.
constexpr int64_t kNhwcChunk = 1024;
constexpr int64_t kNhwcBlock = 64;

using cpu::grain_for;

inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

template <typename T>
std::unique_ptr<T[]> uninit(int64_t n) {
  // Every element is written before it is read; value-initialising would be a wasted pass.
  return std::unique_ptr<T[]>(new T[static_cast<size_t>(std::max<int64_t>(n, 1))]);
}

using cpu::Layout;
using cpu::normalise_layout;

// ---------------------------------------------------------------------------
// Labels: int32 per pixel in [0, n], where n stands for "no class" (an all-zero one-hot pixel).
// ---------------------------------------------------------------------------

// int64 labels -> int32. Returns false if any label is outside [0, n); `lab` must then not be
// used (out-of-range entries are clamped anyway, so nothing could ever index out of bounds).
bool labels_from_int64(const int64_t* src, int64_t total, int64_t n, int32_t* lab) {
  std::atomic<bool> bad{false};
  at::parallel_for(0, ceil_div(total, kPixChunk), grain_for(kPixChunk), [&](int64_t begin, int64_t end) {
    for (int64_t ch = begin; ch < end; ++ch) {
      const int64_t p0 = ch * kPixChunk, p1 = std::min(total, p0 + kPixChunk);
      const int64_t* __restrict__ s = src;
      int32_t* __restrict__ d = lab;
      int64_t out = 0;
      for (int64_t p = p0; p < p1; ++p) {
        const int64_t v = s[p];
        out |= static_cast<int64_t>(v < 0) | static_cast<int64_t>(v >= n);
        d[p] = static_cast<int32_t>(std::min<int64_t>(std::max<int64_t>(v, 0), n));
      }
      if (out) bad.store(true, std::memory_order_relaxed);
    }
  });
  return !bad.load();
}

// Float seg (B, n, HW) -> labels, if every value is 0 or 1 and no pixel has two 1s. Returns
// false otherwise; soft seg fails in its first chunk, so there the probe costs next to nothing.
template <typename acc_t>
bool labels_from_onehot(const acc_t* seg, int64_t B, int64_t n, int64_t HW, int32_t* lab) {
  std::atomic<bool> bad{false};
  const int64_t nchunk = ceil_div(HW, kPixChunk);
  at::parallel_for(0, B * nchunk, grain_for(n * kPixChunk), [&](int64_t begin, int64_t end) {
    // Float arithmetic only, so that the loops vectorise: cnt counts a pixel's 1s, idx sums
    // their class indices (small integers: exact), dev is 0 iff every value is 0 or 1 (NaN and
    // Inf make it non-zero as well).
    auto buf = uninit<acc_t>(3 * kPixChunk);
    for (int64_t t = begin; t < end; ++t) {
      if (bad.load(std::memory_order_relaxed)) return;
      const int64_t b = t / nchunk, p0 = (t % nchunk) * kPixChunk;
      const int64_t len = std::min(HW, p0 + kPixChunk) - p0;
      acc_t* __restrict__ cnt = buf.get();
      acc_t* __restrict__ idx = cnt + kPixChunk;
      acc_t* __restrict__ dev = idx + kPixChunk;
      std::fill(cnt, cnt + 3 * kPixChunk, acc_t(0));
      for (int64_t i = 0; i < n; ++i) {
        const acc_t* __restrict__ row = seg + (b * n + i) * HW + p0;
        const acc_t fi = static_cast<acc_t>(i);
        for (int64_t p = 0; p < len; ++p) {
          const acc_t v = row[p];
          cnt[p] += v;
          idx[p] += v * fi;
          dev[p] += std::abs(v * (v - acc_t(1)));
        }
      }
      int32_t wrong = 0;
      for (int64_t p = 0; p < len; ++p) wrong |= static_cast<int32_t>(!(dev[p] == acc_t(0) && cnt[p] <= acc_t(1)));
      if (wrong) {
        bad.store(true, std::memory_order_relaxed);
        return;
      }
      int32_t* __restrict__ d = lab + b * HW + p0;
      const int32_t none = static_cast<int32_t>(n);
      for (int64_t p = 0; p < len; ++p) d[p] = cnt[p] == acc_t(0) ? none : static_cast<int32_t>(idx[p]);
    }
  });
  return !bad.load();
}

// Histograms and counting sorts index their counters by (label, pixel % kSub): a run of equal
// labels (the normal case in a label map) then cycles through kSub counters instead of making
// every increment wait for the previous one to leave the store buffer.
constexpr int64_t kSub = 4;

// counts[b, i] = number of pixels with label i (i < n).
void count_labels(const int32_t* lab, int64_t B, int64_t HW, int64_t n, int64_t* counts) {
  at::parallel_for(0, B, grain_for(HW), [&](int64_t begin, int64_t end) {
    std::vector<int64_t> h(static_cast<size_t>((n + 1) * kSub));
    for (int64_t b = begin; b < end; ++b) {
      std::fill(h.begin(), h.end(), int64_t(0));
      const int32_t* l = lab + b * HW;
      for (int64_t p = 0; p < HW; ++p) ++h[l[p] * kSub + (p & (kSub - 1))];
      for (int64_t i = 0; i < n; ++i) {
        int64_t c = 0;
        for (int64_t j = 0; j < kSub; ++j) c += h[i * kSub + j];
        counts[b * n + i] = c;
      }
    }
  });
}

// codes[b, i, c] = sum / count when normalize (zero for an absent class), else the sum.
template <typename scalar_t, typename acc_t>
inline scalar_t finish_code(acc_t sum, int64_t count, bool normalize) {
  if (!normalize) return static_cast<scalar_t>(sum);
  return static_cast<scalar_t>(count > 0 ? sum / static_cast<acc_t>(count) : acc_t(0));
}

// ---------------------------------------------------------------------------
// Pooling with labels, NCHW. Label maps are made of blobs, so most aligned quads of pixels
// carry a single label. Per chunk of pixels, once per batch item:
//  - uniform quads are listed with their label; a plane is then summed with one 4-wide
//    vector add per quad into an 8-lane accumulator row of that class (lanes = pixel % 8,
//    so consecutive quads of one run alternate between two halves of the row);
//  - the other ("mixed") pixels are counting-sorted by class, and each plane is summed class
//    by class through that permutation: independent loads and register adds.
// Both orders depend on the labels only, so the result does not depend on the thread count.
// ---------------------------------------------------------------------------
constexpr int64_t kQuad = 4;
constexpr int64_t kRow = 2 * kQuad;  // accumulator lanes per (class, channel)
static_assert(kRow == 8, "pool_labels_nchw sums the 8 lanes of a row written out");

struct ChunkPlan {
  std::unique_ptr<int32_t[]> perm;   // (B, HW): mixed pixels of each chunk, grouped by class, from the chunk start
  std::unique_ptr<int32_t[]> offs;   // (B, nchunk, nb): bucket starts; class i is [offs[i*kSub], offs[(i+1)*kSub])
  std::unique_ptr<int32_t[]> quads;  // (B, HW / kQuad): per chunk from its first quad: pixel index of each uniform quad
  std::unique_ptr<int32_t[]> qlab;   // same layout: its label
  std::unique_ptr<int32_t[]> nquad;  // (B, nchunk): uniform quads of the chunk
  int64_t nchunk, nb;
};

ChunkPlan plan_chunks(const int32_t* lab, int64_t B, int64_t HW, int64_t n) {
  static_assert(kPixChunk % kRow == 0, "chunks must start on a row boundary");
  ChunkPlan cp;
  cp.nchunk = ceil_div(HW, kPixChunk);
  cp.nb = (n + 1) * kSub + 1;  // sub-buckets (class, pixel % kSub) of classes 0..n, then the end
  const int64_t qcap = HW / kQuad + 1;
  cp.perm = uninit<int32_t>(B * HW);
  cp.offs = uninit<int32_t>(B * cp.nchunk * cp.nb);
  cp.quads = uninit<int32_t>(B * qcap);
  cp.qlab = uninit<int32_t>(B * qcap);
  cp.nquad = uninit<int32_t>(B * cp.nchunk);
  const int64_t nchunk = cp.nchunk, nb = cp.nb;
  at::parallel_for(0, B * nchunk, grain_for(4 * kPixChunk), [&](int64_t begin, int64_t end) {
    std::vector<int32_t> pos_buf(static_cast<size_t>(nb - 1));
    std::vector<int32_t> mixed_buf(static_cast<size_t>(kPixChunk));
    for (int64_t t = begin; t < end; ++t) {
      const int64_t b = t / nchunk, p0 = (t % nchunk) * kPixChunk;
      const int64_t p1 = std::min(HW, p0 + kPixChunk);
      const int32_t* __restrict__ l = lab + b * HW;
      int32_t* __restrict__ uq = cp.quads.get() + b * qcap + p0 / kQuad;
      int32_t* __restrict__ ul = cp.qlab.get() + b * qcap + p0 / kQuad;
      int32_t* __restrict__ mixed = mixed_buf.data();
      int64_t nu = 0, nm = 0;
      int64_t p = p0;
      for (; p + kQuad <= p1; p += kQuad) {
        const int32_t l0 = l[p];
        if (l[p + 1] == l0 && l[p + 2] == l0 && l[p + 3] == l0) {
          if (l0 < n) {  // a quad with no class adds nothing anywhere
            uq[nu] = static_cast<int32_t>(p);
            ul[nu] = l0;
            ++nu;
          }
        } else {
          for (int64_t j = 0; j < kQuad; ++j) mixed[nm++] = static_cast<int32_t>(p + j);
        }
      }
      for (; p < p1; ++p) mixed[nm++] = static_cast<int32_t>(p);
      cp.nquad[t] = static_cast<int32_t>(nu);

      int32_t* __restrict__ o = cp.offs.get() + t * nb;
      int32_t* __restrict__ pos = pos_buf.data();
      std::fill(pos, pos + nb - 1, 0);
      for (int64_t k = 0; k < nm; ++k) ++pos[l[mixed[k]] * kSub + (k & (kSub - 1))];
      int32_t start = static_cast<int32_t>(p0);  // a chunk's buckets lie inside its pixel range
      for (int64_t k = 0; k < nb - 1; ++k) {
        o[k] = start;
        start += pos[k];
        pos[k] = o[k];
      }
      o[nb - 1] = start;
      int32_t* __restrict__ pm = cp.perm.get() + b * HW;
      for (int64_t k = 0; k < nm; ++k) pm[pos[l[mixed[k]] * kSub + (k & (kSub - 1))]++] = mixed[k];
    }
  });
  return cp;
}

// Uniform quads of one chunk, kGroup planes (HW apart): rows[(label * kGroup + g) * kRow + p % kRow + j]
// += x_g[p + j]. Kept apart from the gather below because this loop wants SLP vectorisation.
template <typename scalar_t, typename acc_t>
void add_quads(const scalar_t* __restrict__ x0, int64_t HW, const int32_t* __restrict__ uq,
               const int32_t* __restrict__ ul, int64_t nu, acc_t* __restrict__ rows) {
  const scalar_t* __restrict__ x1 = x0 + HW;
  const scalar_t* __restrict__ x2 = x1 + HW;
  const scalar_t* __restrict__ x3 = x2 + HW;
  for (int64_t k = 0; k < nu; ++k) {
    const int64_t p = uq[k];
    acc_t* __restrict__ a = rows + ul[k] * (kGroup * kRow) + (p & (kRow - 1));
    for (int j = 0; j < kQuad; ++j) a[j] += static_cast<acc_t>(x0[p + j]);
    for (int j = 0; j < kQuad; ++j) a[kRow + j] += static_cast<acc_t>(x1[p + j]);
    for (int j = 0; j < kQuad; ++j) a[2 * kRow + j] += static_cast<acc_t>(x2[p + j]);
    for (int j = 0; j < kQuad; ++j) a[3 * kRow + j] += static_cast<acc_t>(x3[p + j]);
  }
}

// Mixed pixels of one chunk, kGroup planes: sums[i * kGroup + g] += their class sums.
template <typename scalar_t, typename acc_t>
MDRNET_NO_SLP void gather_group(const scalar_t* __restrict__ x0, int64_t HW, const int32_t* __restrict__ pm,
                                const int32_t* o, int64_t n, acc_t* __restrict__ sums) {
  static_assert(kGroup == 4, "gather_group is written out for 4 channels");
  const scalar_t* __restrict__ x1 = x0 + HW;
  const scalar_t* __restrict__ x2 = x1 + HW;
  const scalar_t* __restrict__ x3 = x2 + HW;
  for (int64_t i = 0; i < n; ++i) {
    // two pixels per step, eight independent add chains
    acc_t s00 = 0, s01 = 0, s10 = 0, s11 = 0, s20 = 0, s21 = 0, s30 = 0, s31 = 0;
    int64_t k = o[i * kSub];
    const int64_t k1 = o[(i + 1) * kSub];
    for (; k + 2 <= k1; k += 2) {
      const int32_t p = pm[k], q = pm[k + 1];
      s00 += static_cast<acc_t>(x0[p]);
      s01 += static_cast<acc_t>(x0[q]);
      s10 += static_cast<acc_t>(x1[p]);
      s11 += static_cast<acc_t>(x1[q]);
      s20 += static_cast<acc_t>(x2[p]);
      s21 += static_cast<acc_t>(x2[q]);
      s30 += static_cast<acc_t>(x3[p]);
      s31 += static_cast<acc_t>(x3[q]);
    }
    if (k < k1) {
      const int32_t p = pm[k];
      s00 += static_cast<acc_t>(x0[p]);
      s10 += static_cast<acc_t>(x1[p]);
      s20 += static_cast<acc_t>(x2[p]);
      s30 += static_cast<acc_t>(x3[p]);
    }
    acc_t* s = sums + i * kGroup;
    s[0] += s00 + s01;
    s[1] += s10 + s11;
    s[2] += s20 + s21;
    s[3] += s30 + s31;
  }
}

// The tail channels (C % kGroup), one plane at a time, into the same slots as above (g = slot).
template <typename scalar_t, typename acc_t>
void one_plane(const scalar_t* __restrict__ x, int64_t slot, const int32_t* __restrict__ uq,
               const int32_t* __restrict__ ul, int64_t nu, const int32_t* __restrict__ pm, const int32_t* o,
               int64_t n, acc_t* __restrict__ rows, acc_t* __restrict__ sums) {
  for (int64_t k = 0; k < nu; ++k) {
    const int64_t p = uq[k];
    acc_t* __restrict__ a = rows + (ul[k] * kGroup + slot) * kRow + (p & (kRow - 1));
    for (int j = 0; j < kQuad; ++j) a[j] += static_cast<acc_t>(x[p + j]);
  }
  for (int64_t i = 0; i < n; ++i) {
    acc_t s0 = 0, s1 = 0, s2 = 0, s3 = 0;
    int64_t k = o[i * kSub];
    const int64_t k1 = o[(i + 1) * kSub];
    for (; k + 4 <= k1; k += 4) {
      s0 += static_cast<acc_t>(x[pm[k]]);
      s1 += static_cast<acc_t>(x[pm[k + 1]]);
      s2 += static_cast<acc_t>(x[pm[k + 2]]);
      s3 += static_cast<acc_t>(x[pm[k + 3]]);
    }
    if (k < k1) s0 += static_cast<acc_t>(x[pm[k++]]);
    if (k < k1) s1 += static_cast<acc_t>(x[pm[k++]]);
    if (k < k1) s2 += static_cast<acc_t>(x[pm[k++]]);
    sums[i * kGroup + slot] += (s0 + s1) + (s2 + s3);
  }
}

// Tasks = (b, group of kGroup channels); each owns its outputs, so there is no cross-task reduction.
template <typename scalar_t>
void pool_labels_nchw(const scalar_t* feat, const int32_t* lab, int64_t B, int64_t C, int64_t HW, int64_t n,
                      bool normalize, const int64_t* counts, scalar_t* codes) {
  using acc_t = at::opmath_type<scalar_t>;
  const ChunkPlan cp = plan_chunks(lab, B, HW, n);
  const int64_t ngroup = ceil_div(C, kGroup);
  const int64_t qcap = HW / kQuad + 1;
  at::parallel_for(0, B * ngroup, grain_for(kGroup * HW), [&](int64_t begin, int64_t end) {
    std::vector<acc_t> sums(static_cast<size_t>(n * kGroup));
    std::vector<acc_t> rows(static_cast<size_t>(n * kGroup * kRow));
    for (int64_t t = begin; t < end; ++t) {
      const int64_t b = t / ngroup, c0 = (t % ngroup) * kGroup;
      const int64_t g = std::min(kGroup, C - c0);
      const scalar_t* x0 = feat + (b * C + c0) * HW;
      std::fill(sums.begin(), sums.end(), acc_t(0));
      std::fill(rows.begin(), rows.end(), acc_t(0));
      for (int64_t ch = 0; ch < cp.nchunk; ++ch) {
        const int64_t q0 = b * qcap + ch * (kPixChunk / kQuad);
        const int32_t* uq = cp.quads.get() + q0;
        const int32_t* ul = cp.qlab.get() + q0;
        const int64_t nu = cp.nquad[b * cp.nchunk + ch];
        const int32_t* pm = cp.perm.get() + b * HW;
        const int32_t* o = cp.offs.get() + (b * cp.nchunk + ch) * cp.nb;
        if (g == kGroup) {
          add_quads<scalar_t, acc_t>(x0, HW, uq, ul, nu, rows.data());
          gather_group<scalar_t, acc_t>(x0, HW, pm, o, n, sums.data());
        } else {
          for (int64_t cc = 0; cc < g; ++cc)
            one_plane<scalar_t, acc_t>(x0 + cc * HW, cc, uq, ul, nu, pm, o, n, rows.data(), sums.data());
        }
      }
      for (int64_t i = 0; i < n; ++i)
        for (int64_t cc = 0; cc < g; ++cc) {
          const acc_t* r = rows.data() + (i * kGroup + cc) * kRow;
          const acc_t quads = ((r[0] + r[1]) + (r[2] + r[3])) + ((r[4] + r[5]) + (r[6] + r[7]));
          codes[(b * n + i) * C + c0 + cc] =
              finish_code<scalar_t, acc_t>(quads + sums[i * kGroup + cc], counts[b * n + i], normalize);
        }
    }
  });
}

// ---------------------------------------------------------------------------
// Pooling with labels, channels_last: a pixel's C channels are contiguous, so each pixel adds
// one contiguous (vectorised) row into its class's accumulator row.
// ---------------------------------------------------------------------------
template <typename scalar_t>
void pool_labels_nhwc(const scalar_t* feat, const int32_t* lab, int64_t B, int64_t C, int64_t HW, int64_t n,
                      bool normalize, const int64_t* counts, scalar_t* codes) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t nchunk = ceil_div(HW, kNhwcChunk);
  const int64_t nblk = ceil_div(C, kNhwcBlock);
  auto part_buf = uninit<acc_t>(B * nchunk * n * C);
  acc_t* part = part_buf.get();

  at::parallel_for(0, B * nchunk * nblk, grain_for(kNhwcChunk * kNhwcBlock), [&](int64_t begin, int64_t end) {
    // row n collects the "no class" pixels, so the pixel loop needs no branch
    std::vector<acc_t> acc_buf(static_cast<size_t>((n + 1) * kNhwcBlock));
    for (int64_t t = begin; t < end; ++t) {
      const int64_t blk = t % nblk, bc = t / nblk;
      const int64_t b = bc / nchunk, ch = bc % nchunk;
      const int64_t c0 = blk * kNhwcBlock, cb = std::min(kNhwcBlock, C - c0);
      const int64_t p0 = ch * kNhwcChunk, p1 = std::min(HW, p0 + kNhwcChunk);
      acc_t* __restrict__ acc = acc_buf.data();
      std::fill(acc, acc + (n + 1) * cb, acc_t(0));
      const int32_t* __restrict__ l = lab + b * HW;
      for (int64_t p = p0; p < p1; ++p) {
        const scalar_t* __restrict__ x = feat + (b * HW + p) * C + c0;
        acc_t* __restrict__ row = acc + l[p] * cb;
        for (int64_t c = 0; c < cb; ++c) row[c] += static_cast<acc_t>(x[c]);
      }
      acc_t* __restrict__ dst = part + (b * nchunk + ch) * n * C + c0;
      for (int64_t i = 0; i < n; ++i)
        for (int64_t c = 0; c < cb; ++c) dst[i * C + c] = acc[i * cb + c];
    }
  });

  at::parallel_for(0, B * n, grain_for(nchunk * C), [&](int64_t begin, int64_t end) {
    std::vector<acc_t> sum(static_cast<size_t>(C));
    for (int64_t bi = begin; bi < end; ++bi) {
      const int64_t b = bi / n, i = bi % n;
      acc_t* __restrict__ s = sum.data();
      std::fill(s, s + C, acc_t(0));
      for (int64_t ch = 0; ch < nchunk; ++ch) {
        const acc_t* __restrict__ src = part + ((b * nchunk + ch) * n + i) * C;
        for (int64_t c = 0; c < C; ++c) s[c] += src[c];
      }
      for (int64_t c = 0; c < C; ++c) codes[bi * C + c] = finish_code<scalar_t, acc_t>(s[c], counts[bi], normalize);
    }
  });
}

// ---------------------------------------------------------------------------
// Broadcast with labels: out[b, c, p] = codes[b, lab[p], c] (zero for "no class"), a lookup
// in a per-(b, c) table of the n + 1 values. Where the table of all (n+1)^2 label pairs is
// cheap next to a plane, pixels go two at a time: one index load, one paired load and one
// paired store per two pixels, half the instructions of single lookups.
// ---------------------------------------------------------------------------
template <typename scalar_t>
struct Pair {
  scalar_t a, b;
};

template <typename scalar_t>
void broadcast_labels(const scalar_t* codes, const int32_t* lab, int64_t B, int64_t C, int64_t HW, int64_t n,
                      scalar_t* out) {
  const int64_t m = n + 1;
  const int64_t half = HW / 2;
  const bool paired = m * m * 4 <= HW;
  std::unique_ptr<int32_t[]> pidx;
  if (paired) {
    // pidx[b, k] = lab[2k] * m + lab[2k + 1], shared by all channels of b
    pidx = uninit<int32_t>(B * half);
    at::parallel_for(0, B * half, grain_for(4), [&](int64_t begin, int64_t end) {
      int32_t* __restrict__ d = pidx.get();
      for (int64_t k = begin; k < end; ++k) {
        const int64_t b = k / half, j = k % half;
        const int32_t* l = lab + b * HW + 2 * j;
        d[k] = l[0] * static_cast<int32_t>(m) + l[1];
      }
    });
  }
  at::parallel_for(0, B * C, grain_for(HW), [&](int64_t begin, int64_t end) {
    std::vector<scalar_t> table(static_cast<size_t>(m));
    std::vector<Pair<scalar_t>> pairs(static_cast<size_t>(paired ? m * m : 0));
    for (int64_t bc = begin; bc < end; ++bc) {
      const int64_t b = bc / C, c = bc % C;
      for (int64_t i = 0; i < n; ++i) table[i] = codes[(b * n + i) * C + c];
      table[n] = scalar_t(0);
      const scalar_t* __restrict__ tab = table.data();
      const int32_t* __restrict__ l = lab + b * HW;
      scalar_t* __restrict__ o = out + bc * HW;
      int64_t p = 0;
      if (paired) {
        Pair<scalar_t>* __restrict__ pt = pairs.data();
        for (int64_t i = 0; i < m; ++i)
          for (int64_t j = 0; j < m; ++j) pt[i * m + j] = Pair<scalar_t>{tab[i], tab[j]};
        const int32_t* __restrict__ pi = pidx.get() + b * half;
        for (int64_t k = 0; k < half; ++k) {
          const Pair<scalar_t> v = pt[pi[k]];
          o[2 * k] = v.a;
          o[2 * k + 1] = v.b;
        }
        p = 2 * half;
      }
      for (; p < HW; ++p) o[p] = tab[l[p]];
    }
  });
}

// ---------------------------------------------------------------------------
// Soft seg.
// ---------------------------------------------------------------------------

// area[r] = sum_hw seg[r, hw] over rows r = (b, i), fixed-order lane sums.
template <typename acc_t>
void seg_area(const acc_t* seg, int64_t rows, int64_t HW, acc_t* area) {
  at::parallel_for(0, rows, grain_for(HW), [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const acc_t* __restrict__ s = seg + r * HW;
      acc_t lanes[8] = {};
      int64_t p = 0;
      for (; p + 8 <= HW; p += 8)
        for (int l = 0; l < 8; ++l) lanes[l] += s[p + l];
      for (int l = 0; p < HW; ++p, ++l) lanes[l] += s[p];
      area[r] = ((lanes[0] + lanes[1]) + (lanes[2] + lanes[3])) + ((lanes[4] + lanes[5]) + (lanes[6] + lanes[7]));
    }
  });
}

// Checks seg against (B, n, H, W) and returns it in the form the kernels read.
SegArg check_seg(const at::Tensor& seg, int64_t B, int64_t H, int64_t W, int64_t n, at::ScalarType acc,
                 const char* ref_name) {
  TORCH_CHECK(seg.defined(), "seg must be a defined tensor");
  TORCH_CHECK(seg.device().is_cpu(), "seg must be a CPU tensor, got device ", seg.device());
  // labels and pixel indices are held as int32
  TORCH_CHECK(n < std::numeric_limits<int32_t>::max(), "num_classes must be < 2^31 - 1, got ", n);
  return seg_arg(seg, B, H, W, n, acc, ref_name);
}

// int32 labels (B, HW) from int64 seg (range-checked) or from exactly one-hot float seg;
// null when the float seg is soft.
std::unique_ptr<int32_t[]> labels_of(const SegArg& seg, int64_t B, int64_t HW, int64_t n) {
  auto lab = uninit<int32_t>(B * HW);
  if (seg.labels.defined()) {
    const bool ok = labels_from_int64(seg.labels.const_data_ptr<int64_t>(), B * HW, n, lab.get());
    TORCH_CHECK(ok, "seg labels must lie in [0, num_classes=", n, ")");
    return lab;
  }
  bool onehot = false;
  AT_DISPATCH_FLOATING_TYPES(seg.weights.scalar_type(), "region_onehot_probe", [&] {
    onehot = labels_from_onehot<scalar_t>(seg.weights.const_data_ptr<scalar_t>(), B, n, HW, lab.get());
  });
  if (!onehot) lab.reset();
  return lab;
}

}  // namespace

std::vector<at::Tensor> region_pool_forward(const at::Tensor& feat_in, const at::Tensor& seg_in,
                                            int64_t num_classes, bool normalize) {
  checks::cpu_4d(feat_in, "feat", "(B, C, H, W)");
  checks::floating(feat_in, "feat");
  const int64_t B = feat_in.size(0), C = feat_in.size(1), H = feat_in.size(2), W = feat_in.size(3);
  const int64_t n = num_classes, HW = H * W;
  const auto acc = acc_dtype(feat_in.scalar_type());
  const SegArg seg = check_seg(seg_in, B, H, W, n, acc, "feat");

  at::Tensor feat = feat_in;
  const Layout layout = normalise_layout(feat);
  at::Tensor codes = at::empty({B, n, C}, feat.options().memory_format(at::MemoryFormat::Contiguous));
  at::Tensor area = at::empty({B, n}, feat.options().dtype(acc).memory_format(at::MemoryFormat::Contiguous));
  if (B == 0) return {codes, area};

  const auto lab = labels_of(seg, B, HW, n);
  if (lab) {
    std::vector<int64_t> counts(static_cast<size_t>(B * n));
    count_labels(lab.get(), B, HW, n, counts.data());
    if (C > 0) {
      AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, feat.scalar_type(), "region_pool_forward", [&] {
        const scalar_t* x = feat.const_data_ptr<scalar_t>();
        scalar_t* o = codes.mutable_data_ptr<scalar_t>();
        if (layout == Layout::NHWC)
          pool_labels_nhwc<scalar_t>(x, lab.get(), B, C, HW, n, normalize, counts.data(), o);
        else
          pool_labels_nchw<scalar_t>(x, lab.get(), B, C, HW, n, normalize, counts.data(), o);
      });
    }
    AT_DISPATCH_FLOATING_TYPES(acc, "region_pool_area", [&] {
      scalar_t* a = area.mutable_data_ptr<scalar_t>();
      for (int64_t k = 0; k < B * n; ++k) a[k] = static_cast<scalar_t>(counts[k]);
    });
    return {codes, area};
  }

  // Soft seg: sums = seg (B, n, HW) @ feat^T (B, HW, C), in the accumulation dtype (bmm takes
  // either layout of feat as a transposed operand, without a copy).
  const at::Tensor fa = feat.to(acc);
  const at::Tensor feat_t = layout == Layout::NHWC ? fa.permute({0, 2, 3, 1}).reshape({B, HW, C})
                                                   : fa.view({B, C, HW}).transpose(1, 2);
  const at::Tensor sums = at::bmm(seg.weights, feat_t).contiguous();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, feat.scalar_type(), "region_pool_forward_soft", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    acc_t* a = area.mutable_data_ptr<acc_t>();
    seg_area<acc_t>(seg.weights.const_data_ptr<acc_t>(), B * n, HW, a);
    const acc_t* s = sums.const_data_ptr<acc_t>();
    scalar_t* o = codes.mutable_data_ptr<scalar_t>();
    at::parallel_for(0, B * n, grain_for(C), [&](int64_t begin, int64_t end) {
      for (int64_t r = begin; r < end; ++r) {
        const acc_t ar = a[r];
        const acc_t* __restrict__ src = s + r * C;
        scalar_t* __restrict__ dst = o + r * C;
        if (!normalize) {
          for (int64_t c = 0; c < C; ++c) dst[c] = static_cast<scalar_t>(src[c]);
        } else if (ar > acc_t(0)) {
          for (int64_t c = 0; c < C; ++c) dst[c] = static_cast<scalar_t>(src[c] / ar);
        } else {
          // like the reference: a region is present only for a positive area
          std::fill(dst, dst + C, scalar_t(0));
        }
      }
    });
  });
  return {codes, area};
}

at::Tensor region_broadcast_forward(const at::Tensor& codes_in, const at::Tensor& seg_in, int64_t num_classes) {
  TORCH_CHECK(codes_in.defined(), "codes must be a defined tensor");
  TORCH_CHECK(codes_in.device().is_cpu(), "codes must be a CPU tensor, got device ", codes_in.device());
  TORCH_CHECK(codes_in.dim() == 3, "codes must be 3-D (B, num_classes, C), got shape ", codes_in.sizes());
  checks::floating(codes_in, "codes");
  const int64_t B = codes_in.size(0), n = num_classes, C = codes_in.size(2);
  check_broadcast_shapes(codes_in, seg_in, n);
  const int64_t H = seg_in.size(-2), W = seg_in.size(-1), HW = H * W;
  const auto acc = acc_dtype(codes_in.scalar_type());
  const SegArg seg = check_seg(seg_in, B, H, W, n, acc, "codes");
  const at::Tensor codes = codes_in.contiguous();

  at::Tensor out = at::empty({B, C, H, W}, codes.options().memory_format(at::MemoryFormat::Contiguous));
  if (out.numel() == 0) return out;

  const auto lab = labels_of(seg, B, HW, n);
  if (lab) {
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, codes.scalar_type(), "region_broadcast_forward", [&] {
      broadcast_labels<scalar_t>(codes.const_data_ptr<scalar_t>(), lab.get(), B, C, HW, n,
                                 out.mutable_data_ptr<scalar_t>());
    });
    return out;
  }

  // Soft seg: out = codes^T (B, C, n) @ seg (B, n, HW), in the accumulation dtype.
  const at::Tensor ct = codes.to(acc).transpose(1, 2);
  at::Tensor out_flat = out.view({B, C, HW});
  if (codes.scalar_type() == acc) {
    at::bmm_out(out_flat, ct, seg.weights);
  } else {
    out_flat.copy_(at::bmm(ct, seg.weights));
  }
  return out;
}

}  // namespace mdrnet_fast
