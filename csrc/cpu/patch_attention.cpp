// Masked patch attention on CPU (SPEC §5, the core of Masked Correlation Mining), flash-style.
//
//   out = fold(softmax(scale * Theta Phi^T) G) * (1 - mask),  patches p x p, zero-padded maps.
//
// The N x N score matrix is never stored: tiles of Tq query patches x Tk key patches are scored
// with BLAS, soft-maxed online (running max / sum) and multiplied into a Tq x dv accumulator.
// Patches are gathered straight from the NCHW maps into small tile buffers (no unfold of a map).
// Query patches without a hole pixel have out == 0 by definition and are skipped entirely.
// The backward recomputes the probabilities from the saved log-sum-exp (flash-attention-2):
//   pass 1, parallel over query tiles:  D_i = rowsum(dO_i O_i) from the saved output, then dQ
//   pass 2, parallel over key tiles:    dK, dV
// so every output element has exactly one writer and a fixed summation order: the results do
// not depend on the thread count. Extra memory is O(threads * tile * d + N), never O(N^2).
#include "mdrnet_fast.h"
#include "cpu/common.h"

#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/from_blob.h>
#include <ATen/ops/zeros.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <memory>
#include <type_traits>
#include <vector>

// Fortran BLAS (MKL in the official torch wheels) exported by libtorch_cpu. Weak: a torch build
// without them still loads, and the tiles then go through at::addmm_ instead.
extern "C" {
void sgemm_(const char* ta, const char* tb, const int* m, const int* n, const int* k, const float* alpha,
            const float* a, const int* lda, const float* b, const int* ldb, const float* beta, float* c,
            const int* ldc) __attribute__((weak));
void dgemm_(const char* ta, const char* tb, const int* m, const int* n, const int* k, const double* alpha,
            const double* a, const int* lda, const double* b, const int* ldb, const double* beta, double* c,
            const int* ldc) __attribute__((weak));
}


namespace mdrnet_fast {
namespace {

// Query patches per tile, key patches per tile. A 64 x 128 score tile (32 KiB fp32) stays in L1/L2
// next to the operands, and the GEMMs (64 x d x 128) are large enough for BLAS to run near peak.
// (Measured: 32..128 x 64..256 are all within a few percent at d = 256; 64 x 128 is the middle.)
constexpr int64_t kTq = 64;
constexpr int64_t kTk = 128;
// A batch's query tiles get at least this many rows when their count is rounded up for balance.
constexpr int64_t kMinRows = 16;
// Backward pass 2 walks the active queries in fixed chunks of this many rows (its GEMMs reduce over
// them, so the chunk is fixed by the shape alone).
constexpr int64_t kQ2 = 128;
// Tiles a thread processes together (query tiles in the forward and backward pass 1, key tiles in
// pass 2): the other side's tiles are gathered once per group instead of once per tile, which
// would otherwise cost a sizeable fraction of the GEMMs for small p. Grouping only interleaves the
// per-tile work, it never changes a tile's arithmetic, so results stay thread-count independent.
constexpr int64_t kGroup = 8;
// ... as long as a group's buffers stay within this many bytes per thread.
constexpr int64_t kGroupBytes = 2 << 20;

inline int64_t group_size(int64_t range, int64_t bytes_per_tile) {
  return std::max<int64_t>(1, std::min({kGroup, range, kGroupBytes / std::max<int64_t>(1, bytes_per_tile)}));
}

// ------------------------------------------------------------------------------------------ GEMM

bool use_blas() {
  static const bool ok = [] {
    const char* env = std::getenv("MDRNET_FAST_TILE_GEMM");  // "aten" forces the fallback (tests, timing)
    return sgemm_ != nullptr && dgemm_ != nullptr && !(env && std::strcmp(env, "aten") == 0);
  }();
  return ok;
}

template <typename T>
void blas_call(char ta, char tb, int m, int n, int k, T alpha, const T* a, int lda, const T* b, int ldb, T beta,
               T* c, int ldc) {
  if constexpr (std::is_same_v<T, float>)
    sgemm_(&ta, &tb, &m, &n, &k, &alpha, a, &lda, b, &ldb, &beta, c, &ldc);
  else
    dgemm_(&ta, &tb, &m, &n, &k, &alpha, a, &lda, b, &ldb, &beta, c, &ldc);
}

// Row-major C (m x n, ldc) = alpha * op(A) op(B) + beta * C, op(A) m x k, op(B) k x n.
// A row-major matrix is the column-major transpose, so BLAS computes C^T = op(B)^T op(A)^T:
// operands swapped, transpose flags unchanged.
template <typename T>
void gemm(bool ta, bool tb, int64_t m, int64_t n, int64_t k, T alpha, const T* a, int64_t lda, const T* b,
          int64_t ldb, T beta, T* c, int64_t ldc) {
  if (m == 0 || n == 0) return;
  if (use_blas()) {
    blas_call<T>(tb ? 'T' : 'N', ta ? 'T' : 'N', static_cast<int>(n), static_cast<int>(m), static_cast<int>(k),
                 alpha, b, static_cast<int>(ldb), a, static_cast<int>(lda), beta, c, static_cast<int>(ldc));
    return;
  }
  const auto opt = at::TensorOptions().dtype(c10::CppTypeToScalarType<T>::value);
  auto view = [&](const T* p, bool t, int64_t rows, int64_t cols, int64_t ld) {
    // op(X) is rows x cols; X itself is stored row-major with leading dimension ld
    at::Tensor x = t ? at::from_blob(const_cast<T*>(p), {cols, rows}, {ld, 1}, opt).t()
                     : at::from_blob(const_cast<T*>(p), {rows, cols}, {ld, 1}, opt);
    return x;
  };
  at::Tensor cm = at::from_blob(c, {m, n}, {ldc, 1}, opt);
  cm.addmm_(view(a, ta, m, k, lda), view(b, tb, k, n, ldb), beta, alpha);  // beta == 0 ignores C's old values
}

// ------------------------------------------------------------------------------- row operations

// e^x for float, written so GCC vectorises it: x = n ln2 + r with |r| <= ln2/2 (ln2 split in two so
// r is exact), e^r by its Taylor series to r^7 (truncation < 6e-9 relative), 2^n built in the
// exponent bits. x < -87 (including -inf) gives 0; the callers only pass x <= ~0.
MDR_INLINE float exp_approx(float x) {
  const float xc = x < -87.f ? -87.f : (x > 88.f ? 88.f : x);
  const float shifter = 12582912.f;  // 1.5 * 2^23: adding it rounds to an integer
  const float nf = (xc * 1.44269504088896341f + shifter) - shifter;
  float r = xc - nf * 0.693359375f;
  r = r - nf * -2.12194440e-4f;
  float q = 1.f / 5040.f;
  q = q * r + 1.f / 720.f;
  q = q * r + 1.f / 120.f;
  q = q * r + 1.f / 24.f;
  q = q * r + 1.f / 6.f;
  q = q * r + 0.5f;
  q = q * r + 1.f;
  q = q * r + 1.f;
  const int32_t bits = (static_cast<int32_t>(nf) + 127) << 23;
  float two_n;
  std::memcpy(&two_n, &bits, sizeof(float));
  return x < -87.f ? 0.f : q * two_n;
}
MDR_INLINE double exp_approx(double x) { return std::exp(x); }  // fp64 is the accuracy path

// Online-softmax step for one (query tile, key tile): S (rows x n, ld) becomes P = exp(S - m_new),
// m / l are the running max / sum, and the accumulator rows (acc, dv wide) are rescaled by
// exp(m_old - m_new) so that acc += P V may follow.
template <typename T>
MDR_INLINE void softmax_step_impl(T* __restrict__ s, int64_t ld, int64_t rows, int64_t n, T* __restrict__ m,
                                  T* __restrict__ l, T* __restrict__ acc, int64_t dv) {
  for (int64_t r = 0; r < rows; ++r) {
    T* __restrict__ row = s + r * ld;
    T mx = -std::numeric_limits<T>::infinity();
#pragma omp simd reduction(max : mx)
    for (int64_t i = 0; i < n; ++i) mx = row[i] > mx ? row[i] : mx;
    const T m_new = std::max(m[r], mx);
    T sum = 0;
#pragma omp simd reduction(+ : sum)
    for (int64_t i = 0; i < n; ++i) {
      const T v = exp_approx(row[i] - m_new);
      row[i] = v;
      sum += v;
    }
    const T corr = std::exp(m[r] - m_new);  // 0 on the first key tile (m = -inf)
    if (corr != T(1)) {
      T* __restrict__ a = acc + r * dv;
#pragma omp simd
      for (int64_t i = 0; i < dv; ++i) a[i] *= corr;
    }
    l[r] = l[r] * corr + sum;
    m[r] = m_new;
  }
}

// P = exp(S - lse) in place (the probabilities of the forward, from the saved log-sum-exp).
template <typename T>
MDR_INLINE void probs_impl(T* __restrict__ s, int64_t ld, int64_t rows, int64_t n, const T* __restrict__ lse) {
  for (int64_t r = 0; r < rows; ++r) {
    T* __restrict__ row = s + r * ld;
    const T sub = lse[r];
#pragma omp simd
    for (int64_t i = 0; i < n; ++i) row[i] = exp_approx(row[i] - sub);
  }
}

// dS = P * (dP - D) * scale, written over dP
template <typename T>
MDR_INLINE void dscore_impl(const T* __restrict__ p, T* __restrict__ dp, int64_t ld, int64_t rows, int64_t n,
                            const T* __restrict__ d, T scale) {
  for (int64_t r = 0; r < rows; ++r) {
    const T* __restrict__ a = p + r * ld;
    T* __restrict__ b = dp + r * ld;
    const T dr = d[r];
#pragma omp simd
    for (int64_t i = 0; i < n; ++i) b[i] = a[i] * (b[i] - dr) * scale;
  }
}

// Non-template entry points: target_clones needs plain functions.
#define MDR_ROW_OPS(T)                                                                                        \
  MDR_CLONES void softmax_step(T* s, int64_t ld, int64_t rows, int64_t n, T* m, T* l, T* acc,                 \
                               int64_t dv) {                                                                  \
    softmax_step_impl<T>(s, ld, rows, n, m, l, acc, dv);                                                      \
  }                                                                                                           \
  MDR_CLONES void probs(T* s, int64_t ld, int64_t rows, int64_t n, const T* lse) {                            \
    probs_impl<T>(s, ld, rows, n, lse);                                                                       \
  }                                                                                                           \
  MDR_CLONES void dscore(const T* p, T* dp, int64_t ld, int64_t rows, int64_t n, const T* d, T scale) {       \
    dscore_impl<T>(p, dp, ld, rows, n, d, scale);                                                             \
  }
MDR_ROW_OPS(float)
MDR_ROW_OPS(double)
#undef MDR_ROW_OPS

// ------------------------------------------------------------------------------ patch geometry

struct Geo {
  int64_t H, W, HW, p, nph, npw, N;
};

// 64-byte aligned scratch: BLAS results may depend on operand alignment, so it is kept fixed.
template <typename T>
struct Scratch {
  struct Free {
    void operator()(T* q) const { std::free(q); }
  };
  std::unique_ptr<T, Free> buf;
  explicit Scratch(int64_t n) {
    const size_t bytes = (static_cast<size_t>(std::max<int64_t>(n, 1)) * sizeof(T) + 63) / 64 * 64;
    buf.reset(static_cast<T*>(std::aligned_alloc(64, bytes)));
    TORCH_CHECK(buf, "masked_patch_attention: out of memory for a ", bytes, "-byte tile buffer");
  }
  T* get() const { return buf.get(); }
};

// Query patches j (any list) -> rows of dst (rows x C*p*p, ld), vector order (c, ky, kx).
// With `keep` (the (1 - mask) plane) every pixel is multiplied by it: the masked output gradient.
// Patches inside the image take a path unrolled for a compile-time p; border ones are zero-padded.
template <int P, typename scalar_t, typename acc_t>
void gather_rows_p(const scalar_t* src, const acc_t* keep, int64_t C, const Geo& g, const int32_t* idx,
                   int64_t rows, acc_t* dst, int64_t ld) {
  const int64_t p = g.p;
  for (int64_t r = 0; r < rows; ++r) {
    const int64_t j = idx[r], y0 = j / g.npw * p, x0 = j % g.npw * p;
    const int64_t hy = std::min(p, g.H - y0), wx = std::min(p, g.W - x0);
    acc_t* __restrict__ d = dst + r * ld;
    const scalar_t* __restrict__ s0 = src + y0 * g.W + x0;
    if constexpr (P > 0) {
      if (hy == P && wx == P) {
        acc_t kv[P * P];
        for (int ky = 0; ky < P; ++ky)
          for (int kx = 0; kx < P; ++kx) kv[ky * P + kx] = keep ? keep[(y0 + ky) * g.W + x0 + kx] : acc_t(1);
        for (int64_t c = 0; c < C; ++c, d += P * P, s0 += g.HW)
          for (int ky = 0; ky < P; ++ky)
            for (int kx = 0; kx < P; ++kx)
              d[ky * P + kx] = static_cast<acc_t>(s0[ky * g.W + kx]) * kv[ky * P + kx];
        continue;
      }
    }
    for (int64_t c = 0; c < C; ++c) {
      for (int64_t ky = 0; ky < p; ++ky) {
        acc_t* dd = d + (c * p + ky) * p;
        if (ky >= hy) {
          std::fill(dd, dd + p, acc_t(0));
          continue;
        }
        const int64_t off = (y0 + ky) * g.W + x0;
        const scalar_t* s = src + c * g.HW + off;
        for (int64_t kx = 0; kx < wx; ++kx) dd[kx] = static_cast<acc_t>(s[kx]) * (keep ? keep[off + kx] : acc_t(1));
        std::fill(dd + wx, dd + p, acc_t(0));
      }
    }
  }
}

template <typename scalar_t, typename acc_t>
void gather_rows(const scalar_t* src, const acc_t* keep, int64_t C, const Geo& g, const int32_t* idx, int64_t rows,
                 acc_t* dst, int64_t ld) {
  switch (g.p) {
    case 1: return gather_rows_p<1>(src, keep, C, g, idx, rows, dst, ld);
    case 2: return gather_rows_p<2>(src, keep, C, g, idx, rows, dst, ld);
    case 3: return gather_rows_p<3>(src, keep, C, g, idx, rows, dst, ld);
    case 4: return gather_rows_p<4>(src, keep, C, g, idx, rows, dst, ld);
    default: return gather_rows_p<0>(src, keep, C, g, idx, rows, dst, ld);
  }
}

// Rows of src (rows x C*p*p, ld) -> their patches in dst (cropped), times `keep` if given.
template <typename scalar_t, typename acc_t>
void scatter_rows(const acc_t* src, int64_t ld, const acc_t* keep, int64_t C, const Geo& g, const int32_t* idx,
                  int64_t rows, scalar_t* dst) {
  const int64_t p = g.p;
  for (int64_t r = 0; r < rows; ++r) {
    const int64_t j = idx[r], y0 = j / g.npw * p, x0 = j % g.npw * p;
    const int64_t hy = std::min(p, g.H - y0), wx = std::min(p, g.W - x0);
    const acc_t* s = src + r * ld;
    for (int64_t c = 0; c < C; ++c) {
      for (int64_t ky = 0; ky < hy; ++ky) {
        const acc_t* ss = s + (c * p + ky) * p;
        const int64_t off = (y0 + ky) * g.W + x0;
        scalar_t* d = dst + c * g.HW + off;
        if (keep) {
          for (int64_t kx = 0; kx < wx; ++kx) d[kx] = static_cast<scalar_t>(ss[kx] * keep[off + kx]);
        } else {
          for (int64_t kx = 0; kx < wx; ++kx) d[kx] = static_cast<scalar_t>(ss[kx]);
        }
      }
    }
  }
}

// D_i = sum of grad_out * out over query patch i's pixels (inside the image) and channels. This is
// flash attention's rowsum(P * dP) = rowsum(dO' * O): out = O (1 - mask) and dO' = grad_out (1 - mask),
// and O's padded pixels meet a zero dO'. Reading the saved output saves a sweep over the keys.
template <typename scalar_t, typename acc_t>
void patch_dot(const scalar_t* a, const scalar_t* b, int64_t C, const Geo& g, const int32_t* idx, int64_t rows,
               acc_t* D) {
  const int64_t p = g.p;
  for (int64_t r = 0; r < rows; ++r) {
    const int64_t j = idx[r], y0 = j / g.npw * p, x0 = j % g.npw * p;
    const int64_t hy = std::min(p, g.H - y0), wx = std::min(p, g.W - x0);
    acc_t sum(0);
    for (int64_t c = 0; c < C; ++c)
      for (int64_t ky = 0; ky < hy; ++ky) {
        const int64_t off = c * g.HW + (y0 + ky) * g.W + x0;
        for (int64_t kx = 0; kx < wx; ++kx) sum += static_cast<acc_t>(a[off + kx]) * static_cast<acc_t>(b[off + kx]);
      }
    D[r] = sum;
  }
}

// A key tile is stored transposed (C*p*p rows x n columns, ld). Within one patch row, the p entries
// (c, ky, 0..p-1) of consecutive patches are one contiguous image-row run: a run of `len` patches,
// `npix` of its pixels inside the image, goes to (from) p tile rows, one per kx (a de-interleave;
// a compile-time p lets it vectorise).
template <int P, typename acc_t, typename scalar_t>
MDR_INLINE void load_run(acc_t* __restrict__ d, int64_t ld, const scalar_t* __restrict__ s, int64_t len,
                         int64_t npix, int64_t p_rt) {
  const int64_t p = P > 0 ? P : p_rt;
  const int64_t full = std::min(len, npix / p);
  if constexpr (P > 0) {
    // one pass over the run, kx unrolled: the source is read once, contiguously
    for (int64_t i = 0; i < full; ++i)
      for (int kx = 0; kx < P; ++kx) d[kx * ld + i] = static_cast<acc_t>(s[i * P + kx]);
  } else {
    for (int64_t kx = 0; kx < p; ++kx)
      for (int64_t i = 0; i < full; ++i) d[kx * ld + i] = static_cast<acc_t>(s[i * p + kx]);
  }
  for (int64_t kx = 0; kx < p; ++kx)
    for (int64_t i = full; i < len; ++i) d[kx * ld + i] = i * p + kx < npix ? static_cast<acc_t>(s[i * p + kx]) : acc_t(0);
}

template <int P, typename acc_t, typename scalar_t>
MDR_INLINE void store_run(const acc_t* __restrict__ d, int64_t ld, scalar_t* __restrict__ s, int64_t len,
                          int64_t npix, int64_t p_rt) {
  const int64_t p = P > 0 ? P : p_rt;
  const int64_t full = std::min(len, npix / p);
  if constexpr (P > 0) {
    for (int64_t i = 0; i < full; ++i)
      for (int kx = 0; kx < P; ++kx) s[i * P + kx] = static_cast<scalar_t>(d[kx * ld + i]);
  } else {
    for (int64_t kx = 0; kx < p; ++kx)
      for (int64_t i = 0; i < full; ++i) s[i * p + kx] = static_cast<scalar_t>(d[kx * ld + i]);
  }
  for (int64_t kx = 0; kx < p; ++kx)
    for (int64_t i = full; i < len; ++i)
      if (i * p + kx < npix) s[i * p + kx] = static_cast<scalar_t>(d[kx * ld + i]);  // the rest is padding: cropped
}

// Calls f(tile rows (c, ky, *), column, image row run or nullptr below the image, len, npix) for
// every run of the key patches [j0, j0 + n).
template <typename T, typename F>
MDR_INLINE void for_each_key_run(T* map, int64_t C, const Geo& g, int64_t j0, int64_t n, F&& f) {
  const int64_t p = g.p;
  for (int64_t j = j0; j < j0 + n;) {
    const int64_t py = j / g.npw, px0 = j % g.npw;
    const int64_t len = std::min(g.npw - px0, j0 + n - j);
    const int64_t npix = std::min(len * p, g.W - px0 * p);
    for (int64_t c = 0; c < C; ++c) {
      for (int64_t ky = 0; ky < p; ++ky) {
        const int64_t y = py * p + ky;
        f((c * p + ky) * p, j - j0, y < g.H ? map + c * g.HW + y * g.W + px0 * p : nullptr, len, npix);
      }
    }
    j += len;
  }
}

template <int P, typename scalar_t, typename acc_t>
void gather_keys_p(const scalar_t* src, int64_t C, const Geo& g, int64_t j0, int64_t n, acc_t* dst, int64_t ld) {
  for_each_key_run(src, C, g, j0, n, [&](int64_t e, int64_t col, const scalar_t* run, int64_t len, int64_t npix) {
    acc_t* d = dst + e * ld + col;
    if (run) {
      load_run<P>(d, ld, run, len, npix, g.p);
    } else {  // below the image: zero padding
      for (int64_t kx = 0; kx < g.p; ++kx) std::fill(d + kx * ld, d + kx * ld + len, acc_t(0));
    }
  });
}

template <int P, typename scalar_t, typename acc_t>
void scatter_keys_p(const acc_t* src, int64_t ld, int64_t C, const Geo& g, int64_t j0, int64_t n, scalar_t* dst) {
  for_each_key_run(dst, C, g, j0, n, [&](int64_t e, int64_t col, scalar_t* run, int64_t len, int64_t npix) {
    if (run) store_run<P>(src + e * ld + col, ld, run, len, npix, g.p);
  });
}

// Key patches [j0, j0 + n) of a (C, H, W) map -> transposed tile dst (C*p*p x n, ld), and back.
template <typename scalar_t, typename acc_t>
void gather_keys_t(const scalar_t* src, int64_t C, const Geo& g, int64_t j0, int64_t n, acc_t* dst, int64_t ld) {
  switch (g.p) {
    case 1: return gather_keys_p<1>(src, C, g, j0, n, dst, ld);
    case 2: return gather_keys_p<2>(src, C, g, j0, n, dst, ld);
    case 3: return gather_keys_p<3>(src, C, g, j0, n, dst, ld);
    case 4: return gather_keys_p<4>(src, C, g, j0, n, dst, ld);
    default: return gather_keys_p<0>(src, C, g, j0, n, dst, ld);
  }
}

template <typename scalar_t, typename acc_t>
void scatter_keys_t(const acc_t* src, int64_t ld, int64_t C, const Geo& g, int64_t j0, int64_t n, scalar_t* dst) {
  switch (g.p) {
    case 1: return scatter_keys_p<1>(src, ld, C, g, j0, n, dst);
    case 2: return scatter_keys_p<2>(src, ld, C, g, j0, n, dst);
    case 3: return scatter_keys_p<3>(src, ld, C, g, j0, n, dst);
    case 4: return scatter_keys_p<4>(src, ld, C, g, j0, n, dst);
    default: return scatter_keys_p<0>(src, ld, C, g, j0, n, dst);
  }
}

// Patches of batch b with a pixel where keep != 0 (and, with `grad`, a nonzero masked gradient).
// Padded pixels do not count: they are cropped from the output.
template <typename scalar_t, typename acc_t>
void active_patches(const acc_t* keep, const scalar_t* grad, int64_t C, const Geo& g, std::vector<int32_t>& out) {
  const int64_t p = g.p;
  out.clear();
  for (int64_t j = 0; j < g.N; ++j) {
    const int64_t y0 = j / g.npw * p, x0 = j % g.npw * p;
    const int64_t y1 = std::min(g.H, y0 + p), x1 = std::min(g.W, x0 + p);
    bool hit = false;
    for (int64_t y = y0; y < y1 && !hit; ++y) {
      for (int64_t x = x0; x < x1 && !hit; ++x) {
        const acc_t k = keep[y * g.W + x];
        if (k == acc_t(0)) continue;
        if (!grad) {
          hit = true;
          break;
        }
        for (int64_t c = 0; c < C; ++c) {
          if (static_cast<acc_t>(grad[c * g.HW + y * g.W + x]) * k != acc_t(0)) {
            hit = true;
            break;
          }
        }
      }
    }
    if (hit) out.push_back(static_cast<int32_t>(j));
  }
}

// Active query patches of every batch, flattened, cut into tiles of at most kTq rows. A batch's
// tiles are equal in size (within one row), so a thread's share does not hinge on a short last tile.
struct QueryTiles {
  std::vector<int32_t> idx;    // active patch indices, batch after batch
  std::vector<int64_t> start;  // start[b]: first entry of batch b in idx (size B + 1)
  std::vector<int64_t> tile0;  // tile0[b]: first tile of batch b (size B + 1)
  int64_t count(int64_t b) const { return start[b + 1] - start[b]; }
  // first row (index into idx) and row count of tile t of batch b
  int64_t first(int64_t b, int64_t t) const {
    const int64_t n = count(b), nt = tile0[b + 1] - tile0[b];
    return start[b] + t * (n / nt) + std::min(t, n % nt);
  }
  int64_t rows(int64_t b, int64_t t) const {
    const int64_t n = count(b), nt = tile0[b + 1] - tile0[b];
    return n / nt + (t < n % nt ? 1 : 0);
  }
};

// ceil(n / kTq) tiles, rounded up to a multiple of 4 (while tiles keep >= kMinRows rows) so that
// 2 or 4 threads get equal shares: with 5 tiles on 2 threads one thread would do 3.
inline int64_t query_tile_count(int64_t n) {
  const int64_t t = (n + kTq - 1) / kTq;
  return std::max<int64_t>(t, std::min((t + 3) / 4 * 4, n / kMinRows));
}

template <typename scalar_t, typename acc_t>
QueryTiles query_tiles(const acc_t* keep, const scalar_t* grad, int64_t B, int64_t C, const Geo& g) {
  std::vector<std::vector<int32_t>> per(static_cast<size_t>(B));
  at::parallel_for(0, B, 1, [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; ++b)
      active_patches<scalar_t, acc_t>(keep + b * g.HW, grad ? grad + b * C * g.HW : nullptr, C, g, per[b]);
  });
  QueryTiles q;
  q.start.assign(B + 1, 0);
  q.tile0.assign(B + 1, 0);
  for (int64_t b = 0; b < B; ++b) {
    const int64_t n = static_cast<int64_t>(per[b].size());
    q.start[b + 1] = q.start[b] + n;
    q.tile0[b + 1] = q.tile0[b] + query_tile_count(n);
    q.idx.insert(q.idx.end(), per[b].begin(), per[b].end());
  }
  return q;
}

// Splits the flattened tile range [begin, end) into runs of at most `group` tiles of one batch.
template <typename F>
void for_each_group(const std::vector<int64_t>& tile0, int64_t begin, int64_t end, int64_t group, F&& f) {
  for (int64_t t = begin; t < end;) {
    const int64_t b = std::upper_bound(tile0.begin(), tile0.end(), t) - tile0.begin() - 1;
    const int64_t stop = std::min({end, tile0[b + 1], t + group});
    f(b, t - tile0[b], stop - t);
    t = stop;
  }
}

// Keep = 1 - mask, per pixel, in the accumulation type.
template <typename acc_t>
std::vector<acc_t> keep_plane(const at::Tensor& mask_acc) {
  const acc_t* m = mask_acc.const_data_ptr<acc_t>();
  std::vector<acc_t> k(static_cast<size_t>(mask_acc.numel()));
  for (size_t i = 0; i < k.size(); ++i) k[i] = acc_t(1) - m[i];
  return k;
}

// --------------------------------------------------------------------------------- forward

template <typename scalar_t>
void forward_impl(const at::Tensor& theta, const at::Tensor& phi, const at::Tensor& gv, const at::Tensor& mask_acc,
                  const Geo& g, double scale_d, at::Tensor& out, at::Tensor& lse) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t B = theta.size(0), Ck = theta.size(1), Cv = gv.size(1), pp = g.p * g.p;
  const int64_t dk = Ck * pp, dv = Cv * pp;
  const acc_t scale = static_cast<acc_t>(scale_d);
  const std::vector<acc_t> keep = keep_plane<acc_t>(mask_acc);
  const QueryTiles qt = query_tiles<scalar_t, acc_t>(keep.data(), nullptr, B, 0, g);

  const scalar_t* th = theta.const_data_ptr<scalar_t>();
  const scalar_t* ph = phi.const_data_ptr<scalar_t>();
  const scalar_t* gp = gv.const_data_ptr<scalar_t>();
  scalar_t* op = out.mutable_data_ptr<scalar_t>();
  acc_t* lp = lse.mutable_data_ptr<acc_t>();
  // A skipped query (no hole pixel) keeps lse = +inf: its probabilities read back as exp(s - inf) = 0,
  // matching its zero output gradient, and the backward skips it anyway.
  std::fill(lp, lp + B * g.N, std::numeric_limits<acc_t>::infinity());
  const int64_t nkt = (g.N + kTk - 1) / kTk;

  at::parallel_for(0, qt.tile0[B], 1, [&](int64_t begin, int64_t end) {
    // Each tile of a group has its own fixed slot, so operand alignment never depends on grouping.
    const int64_t gq = group_size(end - begin, kTq * (dk + dv + 2) * sizeof(acc_t));
    Scratch<acc_t> q(gq * kTq * dk), acc(gq * kTq * dv), m(gq * kTq), l(gq * kTq);
    Scratch<acc_t> kt(dk * kTk), vt(dv * kTk), s(kTq * kTk);
    for_each_group(qt.tile0, begin, end, gq, [&](int64_t b, int64_t t0, int64_t nt) {
      for (int64_t i = 0; i < nt; ++i) {
        const int64_t rows = qt.rows(b, t0 + i);
        gather_rows<scalar_t, acc_t>(th + b * Ck * g.HW, nullptr, Ck, g, qt.idx.data() + qt.first(b, t0 + i), rows,
                                     q.get() + i * kTq * dk, dk);
      }
      std::fill(acc.get(), acc.get() + nt * kTq * dv, acc_t(0));
      std::fill(m.get(), m.get() + nt * kTq, -std::numeric_limits<acc_t>::infinity());
      std::fill(l.get(), l.get() + nt * kTq, acc_t(0));
      for (int64_t k = 0; k < nkt; ++k) {
        const int64_t j0 = k * kTk, nk = std::min(kTk, g.N - j0);
        gather_keys_t<scalar_t, acc_t>(ph + b * Ck * g.HW, Ck, g, j0, nk, kt.get(), kTk);
        gather_keys_t<scalar_t, acc_t>(gp + b * Cv * g.HW, Cv, g, j0, nk, vt.get(), kTk);
        for (int64_t i = 0; i < nt; ++i) {
          const int64_t r0 = i * kTq, rows = qt.rows(b, t0 + i);
          gemm<acc_t>(false, false, rows, nk, dk, scale, q.get() + r0 * dk, dk, kt.get(), kTk, acc_t(0), s.get(), kTk);
          softmax_step(s.get(), kTk, rows, nk, m.get() + r0, l.get() + r0, acc.get() + r0 * dv, dv);
          gemm<acc_t>(false, true, rows, dv, nk, acc_t(1), s.get(), kTk, vt.get(), kTk, acc_t(1),
                      acc.get() + r0 * dv, dv);
        }
      }
      for (int64_t i = 0; i < nt; ++i) {
        const int64_t r0 = i * kTq, rows = qt.rows(b, t0 + i);
        const int32_t* idx = qt.idx.data() + qt.first(b, t0 + i);
        for (int64_t r = r0; r < r0 + rows; ++r) {
          const acc_t inv = acc_t(1) / l.get()[r];
          acc_t* a = acc.get() + r * dv;
          for (int64_t e = 0; e < dv; ++e) a[e] *= inv;
          lp[b * g.N + idx[r - r0]] = m.get()[r] + std::log(l.get()[r]);
        }
        scatter_rows<scalar_t, acc_t>(acc.get() + r0 * dv, dv, keep.data() + b * g.HW, Cv, g, idx, rows,
                                      op + b * Cv * g.HW);
      }
    });
  });
}

// -------------------------------------------------------------------------------- backward

template <typename scalar_t>
void backward_impl(const at::Tensor& grad_out, const at::Tensor& theta, const at::Tensor& phi, const at::Tensor& gv,
                   const at::Tensor& mask_acc, const at::Tensor& out, const at::Tensor& lse, const Geo& g,
                   double scale_d,
                   at::Tensor& d_theta, at::Tensor& d_phi, at::Tensor& d_g) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t B = theta.size(0), Ck = theta.size(1), Cv = gv.size(1), pp = g.p * g.p;
  const int64_t dk = Ck * pp, dv = Cv * pp;
  const acc_t scale = static_cast<acc_t>(scale_d);
  const std::vector<acc_t> keep = keep_plane<acc_t>(mask_acc);
  const scalar_t* go = grad_out.const_data_ptr<scalar_t>();
  // Queries whose masked output gradient dO' is zero contribute nothing to any gradient.
  const QueryTiles qt = query_tiles<scalar_t, acc_t>(keep.data(), go, B, Cv, g);

  const scalar_t* th = theta.const_data_ptr<scalar_t>();
  const scalar_t* ph = phi.const_data_ptr<scalar_t>();
  const scalar_t* gp = gv.const_data_ptr<scalar_t>();
  const scalar_t* op = out.const_data_ptr<scalar_t>();
  const acc_t* lp = lse.const_data_ptr<acc_t>();
  scalar_t* dth = d_theta.mutable_data_ptr<scalar_t>();
  scalar_t* dph = d_phi.mutable_data_ptr<scalar_t>();
  scalar_t* dgp = d_g.mutable_data_ptr<scalar_t>();
  const int64_t nkt = (g.N + kTk - 1) / kTk;
  // lse and D of every active query, in qt.idx order: pass 2 reads them
  std::vector<acc_t> lse_a(qt.idx.size()), dsum(qt.idx.size(), acc_t(0));
  for (int64_t b = 0; b < B; ++b)
    for (int64_t a = qt.start[b]; a < qt.start[b + 1]; ++a) lse_a[a] = lp[b * g.N + qt.idx[a]];

  // Pass 1, parallel over query tiles: D_i = rowsum(dO' * O) from the saved output (patch_dot), then
  // dQ_i = sum_j dS_ij K_j in one sweep over the keys.
  at::parallel_for(0, qt.tile0[B], 1, [&](int64_t begin, int64_t end) {
    const int64_t gq = group_size(end - begin, kTq * (2 * dk + dv) * sizeof(acc_t));
    Scratch<acc_t> q(gq * kTq * dk), dq(gq * kTq * dk), dout(gq * kTq * dv);
    Scratch<acc_t> kt(dk * kTk), vt(dv * kTk), s(kTq * kTk), dp(kTq * kTk);
    for_each_group(qt.tile0, begin, end, gq, [&](int64_t b, int64_t t0, int64_t nt) {
      for (int64_t i = 0; i < nt; ++i) {
        const int64_t rows = qt.rows(b, t0 + i), a = qt.first(b, t0 + i);
        const int32_t* idx = qt.idx.data() + a;
        gather_rows<scalar_t, acc_t>(th + b * Ck * g.HW, nullptr, Ck, g, idx, rows, q.get() + i * kTq * dk, dk);
        gather_rows<scalar_t, acc_t>(go + b * Cv * g.HW, keep.data() + b * g.HW, Cv, g, idx, rows,
                                     dout.get() + i * kTq * dv, dv);
        patch_dot<scalar_t, acc_t>(go + b * Cv * g.HW, op + b * Cv * g.HW, Cv, g, idx, rows, dsum.data() + a);
      }
      std::fill(dq.get(), dq.get() + nt * kTq * dk, acc_t(0));
      for (int64_t k = 0; k < nkt; ++k) {
        const int64_t j0 = k * kTk, nk = std::min(kTk, g.N - j0);
        gather_keys_t<scalar_t, acc_t>(ph + b * Ck * g.HW, Ck, g, j0, nk, kt.get(), kTk);
        gather_keys_t<scalar_t, acc_t>(gp + b * Cv * g.HW, Cv, g, j0, nk, vt.get(), kTk);
        for (int64_t i = 0; i < nt; ++i) {
          const int64_t r0 = i * kTq, rows = qt.rows(b, t0 + i), a = qt.first(b, t0 + i);
          gemm<acc_t>(false, false, rows, nk, dk, scale, q.get() + r0 * dk, dk, kt.get(), kTk, acc_t(0), s.get(),
                      kTk);
          probs(s.get(), kTk, rows, nk, lse_a.data() + a);
          gemm<acc_t>(false, false, rows, nk, dv, acc_t(1), dout.get() + r0 * dv, dv, vt.get(), kTk, acc_t(0),
                      dp.get(), kTk);
          dscore(s.get(), dp.get(), kTk, rows, nk, dsum.data() + a, scale);
          // dQ (rows x dk) += dS (rows x nk) K (nk x dk); K is stored transposed (dk x nk)
          gemm<acc_t>(false, true, rows, dk, nk, acc_t(1), dp.get(), kTk, kt.get(), kTk, acc_t(1),
                      dq.get() + r0 * dk, dk);
        }
      }
      for (int64_t i = 0; i < nt; ++i)
        scatter_rows<scalar_t, acc_t>(dq.get() + i * kTq * dk, dk, nullptr, Ck, g,
                                      qt.idx.data() + qt.first(b, t0 + i), qt.rows(b, t0 + i), dth + b * Ck * g.HW);
    });
  });

  // Pass 2, parallel over key tiles: dV_j = sum_i P_ij dO'_i, dK_j = sum_i dS_ij Q_i, summed over the
  // active queries in fixed chunks of kQ2. Every key patch is written (zeros where no query is active).
  at::parallel_for(0, B * nkt, 1, [&](int64_t begin, int64_t end) {
    const int64_t gk = group_size(end - begin, kTk * 2 * (dk + dv) * sizeof(acc_t));
    Scratch<acc_t> kt(gk * kTk * dk), vt(gk * kTk * dv), dkt(gk * kTk * dk), dvt(gk * kTk * dv);
    Scratch<acc_t> q(kQ2 * dk), dout(kQ2 * dv), s(kQ2 * kTk), dp(kQ2 * kTk);
    std::vector<int64_t> tile0(B + 1);
    for (int64_t b = 0; b <= B; ++b) tile0[b] = b * nkt;
    for_each_group(tile0, begin, end, gk, [&](int64_t b, int64_t k0, int64_t nt) {
      const int64_t na = qt.count(b);
      auto nk_of = [&](int64_t i) { return std::min(kTk, g.N - (k0 + i) * kTk); };
      std::fill(dkt.get(), dkt.get() + nt * kTk * dk, acc_t(0));
      std::fill(dvt.get(), dvt.get() + nt * kTk * dv, acc_t(0));
      if (na > 0) {
        for (int64_t i = 0; i < nt; ++i) {
          gather_keys_t<scalar_t, acc_t>(ph + b * Ck * g.HW, Ck, g, (k0 + i) * kTk, nk_of(i), kt.get() + i * kTk * dk,
                                         kTk);
          gather_keys_t<scalar_t, acc_t>(gp + b * Cv * g.HW, Cv, g, (k0 + i) * kTk, nk_of(i), vt.get() + i * kTk * dv,
                                         kTk);
        }
      }
      for (int64_t a0 = 0; a0 < na; a0 += kQ2) {
        const int64_t rows = std::min(kQ2, na - a0);
        const int64_t a = qt.start[b] + a0;
        const int32_t* idx = qt.idx.data() + a;
        gather_rows<scalar_t, acc_t>(th + b * Ck * g.HW, nullptr, Ck, g, idx, rows, q.get(), dk);
        gather_rows<scalar_t, acc_t>(go + b * Cv * g.HW, keep.data() + b * g.HW, Cv, g, idx, rows, dout.get(), dv);
        for (int64_t i = 0; i < nt; ++i) {
          const int64_t nk = nk_of(i);
          const acc_t* kti = kt.get() + i * kTk * dk;
          const acc_t* vti = vt.get() + i * kTk * dv;
          gemm<acc_t>(false, false, rows, nk, dk, scale, q.get(), dk, kti, kTk, acc_t(0), s.get(), kTk);
          probs(s.get(), kTk, rows, nk, lse_a.data() + a);
          gemm<acc_t>(false, false, rows, nk, dv, acc_t(1), dout.get(), dv, vti, kTk, acc_t(0), dp.get(), kTk);
          // dV^T (dv x nk) += dO'^T (dv x rows) P (rows x nk)
          gemm<acc_t>(true, false, dv, nk, rows, acc_t(1), dout.get(), dv, s.get(), kTk, acc_t(1),
                      dvt.get() + i * kTk * dv, kTk);
          dscore(s.get(), dp.get(), kTk, rows, nk, dsum.data() + a, scale);
          // dK^T (dk x nk) += Q^T (dk x rows) dS (rows x nk)
          gemm<acc_t>(true, false, dk, nk, rows, acc_t(1), q.get(), dk, dp.get(), kTk, acc_t(1),
                      dkt.get() + i * kTk * dk, kTk);
        }
      }
      for (int64_t i = 0; i < nt; ++i) {
        scatter_keys_t<scalar_t, acc_t>(dkt.get() + i * kTk * dk, kTk, Ck, g, (k0 + i) * kTk, nk_of(i),
                                        dph + b * Ck * g.HW);
        scatter_keys_t<scalar_t, acc_t>(dvt.get() + i * kTk * dv, kTk, Cv, g, (k0 + i) * kTk, nk_of(i),
                                        dgp + b * Cv * g.HW);
      }
    });
  });
}

// ------------------------------------------------------------------------------- arguments

Geo check_inputs(const at::Tensor& theta, const at::Tensor& phi, const at::Tensor& g, const at::Tensor& mask,
                 int64_t patch_size) {
  checks::cpu_4d(theta, "theta", "(B, Ck, H, W)");
  checks::cpu_4d(phi, "phi", "(B, Ck, H, W)");
  checks::cpu_4d(g, "g", "(B, Cv, H, W)");
  checks::cpu_4d(mask, "mask", "(B, 1, H, W)");
  checks::floating(theta, "theta");
  checks::floating(mask, "mask");
  checks::same_dtype(phi, "phi", theta, "theta");
  checks::same_dtype(g, "g", theta, "theta");
  TORCH_CHECK(patch_size >= 1, "patch_size must be >= 1, got ", patch_size);
  TORCH_CHECK(theta.size(1) >= 1, "theta and phi need at least one channel, got shape ", theta.sizes());
  TORCH_CHECK(phi.sizes() == theta.sizes(), "phi must have theta's shape ", theta.sizes(), ", got ", phi.sizes());
  const int64_t B = theta.size(0), H = theta.size(2), W = theta.size(3);
  TORCH_CHECK(g.size(0) == B && g.size(2) == H && g.size(3) == W, "g must have shape (B, Cv, H, W) with (B, H, W) = (",
              B, ", ", H, ", ", W, ") from theta, got ", g.sizes());
  TORCH_CHECK(mask.size(0) == B && mask.size(1) == 1 && mask.size(2) == H && mask.size(3) == W,
              "mask must have shape (B, 1, H, W) = (", B, ", 1, ", H, ", ", W, "), got ", mask.sizes());
  const int64_t p = patch_size, nph = (H + p - 1) / p, npw = (W + p - 1) / p;
  TORCH_CHECK(nph * npw <= std::numeric_limits<int32_t>::max(), "too many patches: ", nph * npw);
  TORCH_CHECK(theta.size(1) * p * p <= std::numeric_limits<int32_t>::max() &&
                  g.size(1) * p * p <= std::numeric_limits<int32_t>::max(),
              "patch vectors too long for BLAS");
  return Geo{H, W, H * W, p, nph, npw, nph * npw};
}

}  // namespace

std::vector<at::Tensor> patch_attention_forward(const at::Tensor& theta_in, const at::Tensor& phi_in,
                                                const at::Tensor& g_in, const at::Tensor& mask_in, int64_t patch_size,
                                                double scale) {
  const Geo geo = check_inputs(theta_in, phi_in, g_in, mask_in, patch_size);
  const auto st = theta_in.scalar_type();
  const at::Tensor theta = theta_in.contiguous(), phi = phi_in.contiguous(), g = g_in.contiguous();
  const at::Tensor mask = mask_in.to(acc_dtype(st)).contiguous();
  at::Tensor out = at::zeros(g.sizes(), g.options());  // skipped (hole-free) patches stay 0
  at::Tensor lse = at::empty({theta.size(0), geo.N}, theta.options().dtype(acc_dtype(st)));
  if (out.numel() == 0 || lse.numel() == 0) {
    lse.fill_(std::numeric_limits<double>::infinity());
    return {out, lse};
  }
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, st, "patch_attention_forward", [&] {
    forward_impl<scalar_t>(theta, phi, g, mask, geo, scale, out, lse);
  });
  return {out, lse};
}

std::vector<at::Tensor> patch_attention_backward(const at::Tensor& grad_out_in, const at::Tensor& theta_in,
                                                 const at::Tensor& phi_in, const at::Tensor& g_in,
                                                 const at::Tensor& mask_in, const at::Tensor& out_in,
                                                 const at::Tensor& lse_in, int64_t patch_size, double scale) {
  const Geo geo = check_inputs(theta_in, phi_in, g_in, mask_in, patch_size);
  const auto st = theta_in.scalar_type();
  checks::cpu_4d(grad_out_in, "grad_out", "(B, Cv, H, W)");
  checks::same_dtype(grad_out_in, "grad_out", g_in, "g");
  TORCH_CHECK(grad_out_in.sizes() == g_in.sizes(), "grad_out must have g's shape ", g_in.sizes(), ", got ",
              grad_out_in.sizes());
  checks::cpu_4d(out_in, "out", "(B, Cv, H, W)");
  checks::same_dtype(out_in, "out", g_in, "g");
  TORCH_CHECK(out_in.sizes() == g_in.sizes(), "out must have g's shape ", g_in.sizes(), ", got ", out_in.sizes());
  TORCH_CHECK(lse_in.defined() && lse_in.device().is_cpu(), "lse must be a defined CPU tensor");
  TORCH_CHECK(lse_in.dim() == 2 && lse_in.size(0) == theta_in.size(0) && lse_in.size(1) == geo.N,
              "lse must have shape (B, N) = (", theta_in.size(0), ", ", geo.N, "), N = ceil(H/p)*ceil(W/p), got ",
              lse_in.sizes());
  TORCH_CHECK(lse_in.scalar_type() == acc_dtype(st), "lse must be ", acc_dtype(st), " for inputs of dtype ", st,
              ", got ", lse_in.scalar_type());
  const at::Tensor theta = theta_in.contiguous(), phi = phi_in.contiguous(), g = g_in.contiguous();
  const at::Tensor grad_out = grad_out_in.contiguous(), out = out_in.contiguous(), lse = lse_in.contiguous();
  const at::Tensor mask = mask_in.to(acc_dtype(st)).contiguous();
  at::Tensor d_theta = at::zeros(theta.sizes(), theta.options());  // rows of skipped queries stay 0
  at::Tensor d_phi = at::empty(phi.sizes(), phi.options());        // every key pixel is written
  at::Tensor d_g = at::empty(g.sizes(), g.options());
  if (d_theta.numel() == 0 && d_g.numel() == 0) return {d_theta, d_phi, d_g};
  if (geo.N == 0) return {d_theta, d_phi.zero_(), d_g.zero_()};
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, st, "patch_attention_backward", [&] {
    backward_impl<scalar_t>(grad_out, theta, phi, g, mask, out, lse, geo, scale, d_theta, d_phi, d_g);
  });
  return {d_theta, d_phi, d_g};
}

}  // namespace mdrnet_fast
