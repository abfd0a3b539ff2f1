// SPADE modulation on CPU (SPEC §6): out = (x - mean) * rstd * (1 + gamma) + beta, with the
// instance statistics of every (b, c) plane over H*W (biased variance, eps inside the rsqrt).
//
// NCHW, parallel over (b, c) planes. Forward, per plane: the mean, then the centred sums of squares
// (two passes: numerically stable however large the mean is next to the spread; the second reads
// the plane from cache), then the modulation. Backward, per plane: one pass for the two reductions
// sum(dxhat) and sum(dxhat * xhat), one pass writing grad_x, grad_gamma and grad_beta; the
// reduction pass of plane p+1 runs in the same loop as the writing pass of plane p.
// Statistics in float32 (float64 for float64): 2 x 32 bytes of independent partial sums per block
// of kBlock values (vectorised, each partial sum short), the block sums added in double.
//
// channels_last natively, parallel over chunks of pixels of one sample, loops along the channels:
// per chunk its mean and M2 (two passes, the second from cache), combined over the chunks with
// Chan et al.'s formula; then the modulation pass. Backward: per-chunk sums, then the writing pass.
// Chunks depend on the shape only: the results do not depend on the thread count.
//
// grad_out may also be one value broadcast over each plane (the expanded ones of out.sum()): read
// as such, never materialised. float16/bfloat16 are computed in float (vectorised conversions,
// bit-exact with c10's).
#include "mdrnet_fast.h"
#include "cpu/common.h"

#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <type_traits>
#include <vector>

#if defined(__GNUC__)
#define MDR_LAMBDA_INLINE __attribute__((always_inline))  // the per-vector bodies passed to sweep()
#else
#define MDR_LAMBDA_INLINE
#endif

// The vector helpers below return 32-byte vectors by value; they are always inlined, so the ABI
// note GCC gives for the baseline (non-AVX) clone does not apply.
#pragma GCC diagnostic ignored "-Wpsabi"

namespace mdrnet_fast {
namespace {

constexpr int64_t kBlock = 1024;
// Values touched per parallel task (a task is a run of whole planes).
constexpr int64_t kTaskWork = 32768;

// 32-byte vectors of the accumulation type (GCC vector extensions: AVX registers in the AVX2 and
// AVX-512 clones, pairs of SSE registers in the baseline one). Left to itself the vectoriser keeps
// the partial sums of the reductions below in scalar registers.
template <typename A>
struct Vec {
  typedef A type __attribute__((vector_size(32)));
  static constexpr int N = 32 / sizeof(A);
};

struct ScalarTag {};
struct VectorTag {};
struct NoReduce {};  // a sweep that only writes

template <typename A>
MDR_INLINE A bcast(ScalarTag, A v) {
  return v;
}
template <typename A>
MDR_INLINE typename Vec<A>::type bcast(VectorTag, A v) {
  typename Vec<A>::type r = {};
  return r + v;
}

// float16 / bfloat16 <-> float on 8 lanes with integer vector operations, bit-exact with c10's
// scalar conversions (round to nearest even; NaN stays NaN) and vectorised on every instruction set.
typedef uint16_t u16x8 __attribute__((vector_size(16)));
typedef uint32_t u32x8 __attribute__((vector_size(32)));
typedef int32_t i32x8 __attribute__((vector_size(32)));
typedef float f32x8 __attribute__((vector_size(32)));

MDR_INLINE u32x8 select_u32(i32x8 mask, u32x8 a, u32x8 b) {  // mask lanes are -1 or 0
  return (a & (u32x8)mask) | (b & ~(u32x8)mask);
}

MDR_INLINE f32x8 widen8(const c10::BFloat16* p) {
  u16x8 h;
  std::memcpy(&h, p, sizeof(h));
  return (f32x8)(__builtin_convertvector(h, u32x8) << 16);
}

MDR_INLINE void narrow8(c10::BFloat16* p, f32x8 f) {
  const u32x8 u = (u32x8)f;
  const u32x8 r = (u + (((u >> 16) & 1u) + 0x7FFFu)) >> 16;
  const u16x8 h = __builtin_convertvector(select_u32(f != f, u32x8{} + 0x7FC0u, r), u16x8);
  std::memcpy(p, &h, sizeof(h));
}

// c10::detail::fp16_ieee_to_fp32_value, 8 lanes at once.
MDR_INLINE f32x8 widen8(const c10::Half* p) {
  u16x8 h;
  std::memcpy(&h, p, sizeof(h));
  const u32x8 w = __builtin_convertvector(h, u32x8) << 16;
  const u32x8 sign = w & 0x80000000u;
  const u32x8 two_w = w + w;
  const f32x8 normalized = (f32x8)((two_w >> 4) + (0xE0u << 23)) * 0x1.0p-112f;
  const f32x8 denormalized = (f32x8)((two_w >> 17) | (126u << 23)) - 0.5f;
  return (f32x8)(sign | select_u32(two_w < (1u << 27), (u32x8)denormalized, (u32x8)normalized));
}

// c10::detail::fp16_ieee_from_fp32_value, 8 lanes at once.
MDR_INLINE void narrow8(c10::Half* p, f32x8 f) {
  const u32x8 w = (u32x8)f;
  const f32x8 absf = (f32x8)(w & 0x7FFFFFFFu);
  f32x8 base = (absf * 0x1.0p+112f) * 0x1.0p-110f;
  const u32x8 shl1_w = w + w;
  const u32x8 sign = w & 0x80000000u;
  u32x8 bias = shl1_w & 0xFF000000u;
  bias = select_u32(bias < 0x71000000u, u32x8{} + 0x71000000u, bias);
  base = (f32x8)((bias >> 1) + 0x07800000u) + base;
  const u32x8 bits = (u32x8)base;
  const u32x8 nonsign = ((bits >> 13) & 0x00007C00u) + (bits & 0x00000FFFu);
  const u32x8 r = (sign >> 16) | select_u32(shl1_w > 0xFF000000u, u32x8{} + 0x7E00u, nonsign);
  const u16x8 h = __builtin_convertvector(r, u16x8);
  std::memcpy(p, &h, sizeof(h));
}

// N values at p widened to A: a vector (VectorTag) or the single value p[0] (ScalarTag).
template <typename A, typename T>
MDR_INLINE A load(ScalarTag, const T* p) {
  return static_cast<A>(*p);
}
template <typename A, typename T>
MDR_INLINE typename Vec<A>::type load(VectorTag, const T* p) {
  typename Vec<A>::type v;
  if constexpr (std::is_same_v<T, A>) {
    std::memcpy(&v, p, sizeof(v));
  } else {
    static_assert(std::is_same_v<A, float>, "float16/bfloat16 widen to float");
    v = widen8(p);
  }
  return v;
}

template <typename T, typename A>
MDR_INLINE void store(ScalarTag, T* p, A v) {
  *p = static_cast<T>(v);
}
template <typename T, typename V>
MDR_INLINE void store(VectorTag, T* p, V v) {
  using A = std::remove_reference_t<decltype(v[0])>;
  if constexpr (std::is_same_v<T, A>) {
    std::memcpy(p, &v, sizeof(v));
  } else {
    static_assert(std::is_same_v<A, float>, "float16/bfloat16 narrow from float");
    narrow8(p, v);
  }
}

// One sweep over [0, n): side(tag, i) for every i (a vector of values at i..i+N-1 for VectorTag,
// one value for ScalarTag), and, unless Term is NoReduce, su = sum_i u_i and sv = sum_i v_i where
// term(tag, i, u, v) gives the terms at i. The sums: per block of kBlock values 2N independent
// partial sums in A (float: 16 lanes of 64 terms each), then lanes and blocks added in double.
//
// In the backward, side writes the outputs of one plane while term reads the next plane, so that the
// next plane's inputs stream in while this plane's outputs stream out (measured ~10% faster than a
// reduction sweep, then a writing sweep).
template <typename A, typename Term, typename Side>
MDR_INLINE void sweep(int64_t n, const Term& term, const Side& side, double& su, double& sv) {
  using V = typename Vec<A>::type;
  constexpr int N = Vec<A>::N;
  constexpr bool kReduce = !std::is_same_v<Term, NoReduce>;
  su = 0;
  sv = 0;
  for (int64_t b0 = 0; b0 < n; b0 += kBlock) {
    const int64_t b1 = std::min(n, b0 + kBlock);
    V u0 = {}, u1 = {}, v0 = {}, v1 = {};
    int64_t i = b0;
    for (; i + 2 * N <= b1; i += 2 * N) {
      if constexpr (kReduce) {
        V a, b;
        term(VectorTag{}, i, a, b);
        u0 += a;
        v0 += b;
        term(VectorTag{}, i + N, a, b);
        u1 += a;
        v1 += b;
      }
      side(VectorTag{}, i);
      side(VectorTag{}, i + N);
    }
    A tu = 0, tv = 0;
    for (; i < b1; ++i) {
      if constexpr (kReduce) {
        A a, b;
        term(ScalarTag{}, i, a, b);
        tu += a;
        tv += b;
      }
      side(ScalarTag{}, i);
    }
    if constexpr (kReduce) {
      const V u = u0 + u1, v = v0 + v1;
      double bu = static_cast<double>(tu), bv = static_cast<double>(tv);
      for (int l = 0; l < N; ++l) {
        bu += static_cast<double>(u[l]);
        bv += static_cast<double>(v[l]);
      }
      su += bu;
      sv += bv;
    }
  }
}

struct NoSide {
  template <typename Tag>
  MDR_INLINE void operator()(Tag, int64_t) const {}
};

// ---------------------------------------------------------------------------------------------
// Forward over planes [p0, p1) of n values each (plane p at offset p*n of x, gamma, beta, out).
// Per plane: the sum (from memory) -> mean; the centred sums (from cache) -> rstd; out.
// (Overlapping the sum of plane p+1 with the writes of plane p, as the backward does, measured
// slower here.)
// ---------------------------------------------------------------------------------------------
template <typename T>
struct FwdArgs {
  const T* x;
  const T* g;
  const T* b;
  T* o;
  at::opmath_type<T>* mean;
  at::opmath_type<T>* rstd;
  int64_t n;
  double eps;
};

template <typename T>
MDR_INLINE void fwd_planes(const FwdArgs<T>& a, int64_t p0, int64_t p1) {
  using A = at::opmath_type<T>;
  const int64_t n = a.n;
  const double dn = static_cast<double>(n);
  for (int64_t p = p0; p < p1; ++p) {
    const int64_t off = p * n;
    const T* x = a.x + off;
    const T* g = a.g + off;
    const T* b = a.b + off;
    T* o = a.o + off;
    double sum, unused;
    sweep<A>(n, [&](auto tag, int64_t i, auto& u, auto& v) MDR_LAMBDA_INLINE {
      u = load<A>(tag, x + i);
      v = u;
    }, NoSide{}, sum, unused);
    const A mean = static_cast<A>(sum / dn);
    // sum((x - mean)^2) - (sum(x - mean))^2 / n: the second term corrects for the rounding of mean.
    double s1, s2;
    sweep<A>(n, [&](auto tag, int64_t i, auto& u, auto& v) MDR_LAMBDA_INLINE {
      const auto d = load<A>(tag, x + i) - mean;
      u = d;
      v = d * d;
    }, NoSide{}, s1, s2);
    double var = (s2 - s1 * s1 / dn) / dn;
    var = var > 0 ? var : 0;
    const A rstd = static_cast<A>(1.0 / std::sqrt(var + a.eps));
    a.mean[p] = mean;
    a.rstd[p] = rstd;
    sweep<A>(n, NoReduce{}, [&](auto tag, int64_t i) MDR_LAMBDA_INLINE {
      const auto xh = (load<A>(tag, x + i) - mean) * rstd;
      store(tag, o + i, xh * (A(1) + load<A>(tag, g + i)) + load<A>(tag, b + i));
    }, sum, unused);
  }
}

// ---------------------------------------------------------------------------------------------
// Backward over planes [p0, p1):
//   dxhat = go (1 + gamma), xhat = (x - mean) rstd,
//   gx = rstd (dxhat - mean(dxhat) - xhat mean(dxhat xhat)),  ggamma = go xhat,  gbeta = go.
// The two sums of plane p+1 share their sweep with the writes of plane p. grad_out planes are
// dense (go + plane offset) or one value broadcast over the plane (go_const).
// ---------------------------------------------------------------------------------------------
template <typename T>
struct BwdArgs {
  const T* go;
  int64_t go_sb, go_sc;  // plane (b, c) of grad_out starts at go + b*go_sb + c*go_sc
  bool go_const;
  const T* x;
  const T* g;
  const at::opmath_type<T>* mean;
  const at::opmath_type<T>* rstd;
  T* gx;  // nullptr: not wanted (likewise gg, gb)
  T* gg;
  T* gb;
  int64_t C, n;
};

template <typename T>
MDR_INLINE void bwd_planes(const BwdArgs<T>& a, int64_t p0, int64_t p1) {
  using A = at::opmath_type<T>;
  const int64_t n = a.n;
  const double dn = static_cast<double>(n);
  struct In {
    const T* go;
    A goc;
    const T* x;
    const T* g;
    A mean, rstd;
  };
  auto plane_in = [&](int64_t p) {
    const T* go = a.go + (p / a.C) * a.go_sb + (p % a.C) * a.go_sc;
    return In{go, static_cast<A>(*go), a.x + p * n, a.g + p * n, a.mean[p], a.rstd[p]};
  };
  const bool gc = a.go_const;
  auto reduce_term = [gc](const In& q) {
    return [q, gc](auto tag, int64_t i, auto& u, auto& v) MDR_LAMBDA_INLINE {
      const auto gov = gc ? bcast(tag, q.goc) : load<A>(tag, q.go + i);
      const auto dxh = gov * (A(1) + load<A>(tag, q.g + i));
      const auto xh = (load<A>(tag, q.x + i) - q.mean) * q.rstd;
      u = dxh;
      v = dxh * xh;
    };
  };
  const bool nx = a.gx != nullptr;
  double sa = 0, sb = 0;
  In cur = plane_in(p0);
  if (nx) sweep<A>(n, reduce_term(cur), NoSide{}, sa, sb);
  for (int64_t p = p0; p < p1; ++p) {
    const int64_t off = p * n;
    const A c1 = static_cast<A>(sa / dn), c2 = static_cast<A>(sb / dn);
    T* gx = a.gx ? a.gx + off : nullptr;
    T* gg = a.gg ? a.gg + off : nullptr;
    T* gb = a.gb ? a.gb + off : nullptr;
    const In q = cur;
    auto write = [&](auto tag, int64_t i) MDR_LAMBDA_INLINE {
      const auto gov = gc ? bcast(tag, q.goc) : load<A>(tag, q.go + i);
      const auto xh = (load<A>(tag, q.x + i) - q.mean) * q.rstd;
      if (gx) {
        const auto dxh = gov * (A(1) + load<A>(tag, q.g + i));
        store(tag, gx + i, q.rstd * (dxh - c1 - xh * c2));
      }
      if (gg) store(tag, gg + i, gov * xh);
      if (gb) store(tag, gb + i, gov);  // exact: widened and back
    };
    if (p + 1 < p1) cur = plane_in(p + 1);
    if (nx && p + 1 < p1) {
      sweep<A>(n, reduce_term(cur), write, sa, sb);
    } else {
      sweep<A>(n, NoReduce{}, write, sa, sb);
    }
  }
}

// float, float16, bfloat16: compiled for AVX-512, AVX2+FMA and baseline x86-64; the best the CPU
// has runs. float64 (tests, gradcheck) stays with the baseline build.
MDR_CLONES void fwd_planes_f32(const FwdArgs<float>& a, int64_t p0, int64_t p1) { fwd_planes<float>(a, p0, p1); }
MDR_CLONES void bwd_planes_f32(const BwdArgs<float>& a, int64_t p0, int64_t p1) { bwd_planes<float>(a, p0, p1); }
MDR_CLONES void fwd_planes_f16(const FwdArgs<c10::Half>& a, int64_t p0, int64_t p1) { fwd_planes<c10::Half>(a, p0, p1); }
MDR_CLONES void bwd_planes_f16(const BwdArgs<c10::Half>& a, int64_t p0, int64_t p1) { bwd_planes<c10::Half>(a, p0, p1); }
MDR_CLONES void fwd_planes_bf16(const FwdArgs<c10::BFloat16>& a, int64_t p0, int64_t p1) {
  fwd_planes<c10::BFloat16>(a, p0, p1);
}
MDR_CLONES void bwd_planes_bf16(const BwdArgs<c10::BFloat16>& a, int64_t p0, int64_t p1) {
  bwd_planes<c10::BFloat16>(a, p0, p1);
}
inline void fwd_planes_any(const FwdArgs<float>& a, int64_t p0, int64_t p1) { fwd_planes_f32(a, p0, p1); }
inline void fwd_planes_any(const FwdArgs<c10::Half>& a, int64_t p0, int64_t p1) { fwd_planes_f16(a, p0, p1); }
inline void fwd_planes_any(const FwdArgs<c10::BFloat16>& a, int64_t p0, int64_t p1) { fwd_planes_bf16(a, p0, p1); }
inline void fwd_planes_any(const FwdArgs<double>& a, int64_t p0, int64_t p1) { fwd_planes<double>(a, p0, p1); }
inline void bwd_planes_any(const BwdArgs<float>& a, int64_t p0, int64_t p1) { bwd_planes_f32(a, p0, p1); }
inline void bwd_planes_any(const BwdArgs<c10::Half>& a, int64_t p0, int64_t p1) { bwd_planes_f16(a, p0, p1); }
inline void bwd_planes_any(const BwdArgs<c10::BFloat16>& a, int64_t p0, int64_t p1) { bwd_planes_bf16(a, p0, p1); }
inline void bwd_planes_any(const BwdArgs<double>& a, int64_t p0, int64_t p1) { bwd_planes<double>(a, p0, p1); }

// ---------------------------------------------------------------------------------------------
// channels_last: sample b is H*W rows (pixels) of C contiguous values. The work unit is a chunk of
// `chunk` pixels of one sample, loops run along the channels (vectorised). Statistics come as
// per-chunk partials (double) combined in chunk order afterwards: the result depends on the shape
// only, never on the thread count.
// ---------------------------------------------------------------------------------------------
template <typename T>
struct NhwcArgs {
  using A = at::opmath_type<T>;
  const T* x;
  const T* g;
  const T* b;   // forward only
  T* o;         // forward only
  const T* go;  // backward: grad_out row of pixel px of sample b at go + b*go_bs + px*go_ps (go_ps 0: broadcast)
  int64_t go_bs, go_ps;
  T* gx;  // backward outputs, nullptr where not wanted
  T* gg;
  T* gb;
  const A* mean;  // (B, C)
  const A* rstd;
  const A* c1;  // backward: mean(dxhat), mean(dxhat * xhat) per (b, c)
  const A* c2;
  double* pa;  // partials (B * nchunks, C)
  double* pb;
  int64_t C, HW, chunk, nchunks;
};

enum NhwcStep : int { kStats = 0, kModulate = 1, kBwdReduce = 2, kBwdWrite = 3 };
// Pixels per run of partial sums in A (float for float16/bfloat16/float): short enough that a
// float partial sum stays accurate, long enough that the per-run flush to double is cheap.
constexpr int64_t kSubPx = 64;

template <typename T>
MDR_INLINE void nhwc_chunks(int step, const NhwcArgs<T>& a, int64_t t0, int64_t t1, double* s0, double* s1,
                            double* s2, at::opmath_type<T>* cm) {
  at::opmath_type<T>* f0 = cm + a.C;  // cm has room for 3 C
  at::opmath_type<T>* f1 = cm + 2 * a.C;
  using A = at::opmath_type<T>;
  const int64_t C = a.C;
  for (int64_t t = t0; t < t1; ++t) {
    const int64_t b = t / a.nchunks, k = t % a.nchunks;
    const int64_t px0 = k * a.chunk, m = std::min(a.HW, px0 + a.chunk) - px0;
    const int64_t row0 = (b * a.HW + px0) * C;
    const T* __restrict__ x = a.x + row0;
    const T* __restrict__ g = a.g + row0;
    const A* __restrict__ mean = a.mean ? a.mean + b * C : nullptr;
    const A* __restrict__ rstd = a.rstd ? a.rstd + b * C : nullptr;
    if (step == kStats) {
      // chunk mean, then the sums about it (the chunk is in cache): its mean and M2. Partial sums in
      // A over runs of kSubPx pixels, added in double.
      for (int64_t c = 0; c < C; ++c) s0[c] = 0;
      for (int64_t p0 = 0; p0 < m; p0 += kSubPx) {
        for (int64_t c = 0; c < C; ++c) f0[c] = 0;
        for (int64_t px = p0; px < std::min(m, p0 + kSubPx); ++px) {
          const T* __restrict__ r = x + px * C;
#pragma GCC ivdep
          for (int64_t c = 0; c < C; ++c) f0[c] += static_cast<A>(r[c]);
        }
        for (int64_t c = 0; c < C; ++c) s0[c] += static_cast<double>(f0[c]);
      }
      for (int64_t c = 0; c < C; ++c) {
        cm[c] = static_cast<A>(s0[c] / static_cast<double>(m));
        s1[c] = 0;
        s2[c] = 0;
      }
      for (int64_t p0 = 0; p0 < m; p0 += kSubPx) {
        for (int64_t c = 0; c < C; ++c) f0[c] = f1[c] = 0;
        for (int64_t px = p0; px < std::min(m, p0 + kSubPx); ++px) {
          const T* __restrict__ r = x + px * C;
#pragma GCC ivdep
          for (int64_t c = 0; c < C; ++c) {
            const A d = static_cast<A>(r[c]) - cm[c];
            f0[c] += d;
            f1[c] += d * d;
          }
        }
        for (int64_t c = 0; c < C; ++c) {
          s1[c] += static_cast<double>(f0[c]);
          s2[c] += static_cast<double>(f1[c]);
        }
      }
      double* __restrict__ pa = a.pa + t * C;
      double* __restrict__ pb = a.pb + t * C;
      for (int64_t c = 0; c < C; ++c) {
        pa[c] = static_cast<double>(cm[c]) + s1[c] / static_cast<double>(m);
        pb[c] = s2[c] - s1[c] * s1[c] / static_cast<double>(m);
      }
    } else if (step == kModulate) {
      const T* __restrict__ bb = a.b + row0;
      T* __restrict__ o = a.o + row0;
      for (int64_t px = 0; px < m; ++px) {
        const int64_t q = px * C;
#pragma GCC ivdep
        for (int64_t c = 0; c < C; ++c) {
          const A xh = (static_cast<A>(x[q + c]) - mean[c]) * rstd[c];
          o[q + c] = static_cast<T>(xh * (A(1) + static_cast<A>(g[q + c])) + static_cast<A>(bb[q + c]));
        }
      }
    } else if (step == kBwdReduce) {
      for (int64_t c = 0; c < C; ++c) s0[c] = s1[c] = 0;
      for (int64_t p0 = 0; p0 < m; p0 += kSubPx) {
        for (int64_t c = 0; c < C; ++c) f0[c] = f1[c] = 0;
        for (int64_t px = p0; px < std::min(m, p0 + kSubPx); ++px) {
          const int64_t q = px * C;
          const T* __restrict__ go = a.go + b * a.go_bs + (px0 + px) * a.go_ps;
#pragma GCC ivdep
          for (int64_t c = 0; c < C; ++c) {
            const A dxh = static_cast<A>(go[c]) * (A(1) + static_cast<A>(g[q + c]));
            const A xh = (static_cast<A>(x[q + c]) - mean[c]) * rstd[c];
            f0[c] += dxh;
            f1[c] += dxh * xh;
          }
        }
        for (int64_t c = 0; c < C; ++c) {
          s0[c] += static_cast<double>(f0[c]);
          s1[c] += static_cast<double>(f1[c]);
        }
      }
      for (int64_t c = 0; c < C; ++c) {
        a.pa[t * C + c] = s0[c];
        a.pb[t * C + c] = s1[c];
      }
    } else {  // kBwdWrite
      const A* __restrict__ c1 = a.c1 + b * C;
      const A* __restrict__ c2 = a.c2 + b * C;
      for (int64_t px = 0; px < m; ++px) {
        const int64_t q = px * C;
        const T* __restrict__ go = a.go + b * a.go_bs + (px0 + px) * a.go_ps;
        if (a.gx) {
          T* __restrict__ gx = a.gx + row0 + q;
#pragma GCC ivdep
          for (int64_t c = 0; c < C; ++c) {
            const A dxh = static_cast<A>(go[c]) * (A(1) + static_cast<A>(g[q + c]));
            const A xh = (static_cast<A>(x[q + c]) - mean[c]) * rstd[c];
            gx[c] = static_cast<T>(rstd[c] * (dxh - c1[c] - xh * c2[c]));
          }
        }
        if (a.gg) {
          T* __restrict__ gg = a.gg + row0 + q;
#pragma GCC ivdep
          for (int64_t c = 0; c < C; ++c) {
            const A xh = (static_cast<A>(x[q + c]) - mean[c]) * rstd[c];
            gg[c] = static_cast<T>(static_cast<A>(go[c]) * xh);
          }
        }
        if (a.gb) {
          T* __restrict__ gb = a.gb + row0 + q;
#pragma GCC ivdep
          for (int64_t c = 0; c < C; ++c) gb[c] = go[c];
        }
      }
    }
  }
}

MDR_CLONES void nhwc_chunks_f32(int step, const NhwcArgs<float>& a, int64_t t0, int64_t t1, double* s0, double* s1,
                                double* s2, float* cm) {
  nhwc_chunks<float>(step, a, t0, t1, s0, s1, s2, cm);
}
MDR_CLONES void nhwc_chunks_f16(int step, const NhwcArgs<c10::Half>& a, int64_t t0, int64_t t1, double* s0,
                                double* s1, double* s2, float* cm) {
  nhwc_chunks<c10::Half>(step, a, t0, t1, s0, s1, s2, cm);
}
MDR_CLONES void nhwc_chunks_bf16(int step, const NhwcArgs<c10::BFloat16>& a, int64_t t0, int64_t t1, double* s0,
                                 double* s1, double* s2, float* cm) {
  nhwc_chunks<c10::BFloat16>(step, a, t0, t1, s0, s1, s2, cm);
}
inline void nhwc_chunks_any(int step, const NhwcArgs<float>& a, int64_t t0, int64_t t1, double* s0, double* s1,
                            double* s2, float* cm) {
  nhwc_chunks_f32(step, a, t0, t1, s0, s1, s2, cm);
}
inline void nhwc_chunks_any(int step, const NhwcArgs<c10::Half>& a, int64_t t0, int64_t t1, double* s0, double* s1,
                            double* s2, float* cm) {
  nhwc_chunks_f16(step, a, t0, t1, s0, s1, s2, cm);
}
inline void nhwc_chunks_any(int step, const NhwcArgs<c10::BFloat16>& a, int64_t t0, int64_t t1, double* s0,
                            double* s1, double* s2, float* cm) {
  nhwc_chunks_bf16(step, a, t0, t1, s0, s1, s2, cm);
}
inline void nhwc_chunks_any(int step, const NhwcArgs<double>& a, int64_t t0, int64_t t1, double* s0, double* s1,
                            double* s2, double* cm) {
  nhwc_chunks<double>(step, a, t0, t1, s0, s1, s2, cm);
}

// Runs `step` over every chunk of every sample, in parallel.
template <typename T>
void nhwc_run(int step, const NhwcArgs<T>& a, int64_t B) {
  using A = at::opmath_type<T>;
  at::parallel_for(0, B * a.nchunks, 1, [&](int64_t t0, int64_t t1) {
    std::vector<double> scratch(static_cast<size_t>(3 * a.C));
    std::vector<A> cm(static_cast<size_t>(3 * a.C));  // chunk means, then two runs of partial sums
    double* s = scratch.data();
    nhwc_chunks_any(step, a, t0, t1, s, s + a.C, s + 2 * a.C, cm.data());
  });
}

// Pixels per chunk: about kTaskWork / 2 values, fixed by the shape.
inline int64_t nhwc_chunk(int64_t C) {
  return std::min<int64_t>(4096, std::max<int64_t>(8, kTaskWork / 2 / std::max<int64_t>(C, 1)));
}

// The memory format the op's outputs take for an input t (composite/_common.py out_format):
// channels_last when t is channels_last and not also plain contiguous.
inline at::MemoryFormat out_format(const at::Tensor& t) {
  if (t.dim() == 4 && !t.is_contiguous() && t.is_contiguous(at::MemoryFormat::ChannelsLast))
    return at::MemoryFormat::ChannelsLast;
  return at::MemoryFormat::Contiguous;
}

inline at::Tensor in_format(const at::Tensor& t, at::MemoryFormat fmt) {
  return t.contiguous(fmt);  // t itself when it is in that format already
}

void check_like_x(const at::Tensor& t, const char* name, const at::Tensor& x) {
  checks::cpu_4d(t, name);
  TORCH_CHECK(t.sizes() == x.sizes(), name, " must have x's shape ", x.sizes(), ", got ", t.sizes());
}

}  // namespace

std::vector<at::Tensor> spade_modulate_forward(const at::Tensor& x_in, const at::Tensor& gamma_in,
                                               const at::Tensor& beta_in, double eps) {
  checks::cpu_4d(x_in, "x");
  checks::floating(x_in, "x");
  check_like_x(gamma_in, "gamma", x_in);
  check_like_x(beta_in, "beta", x_in);
  checks::same_dtype(gamma_in, "gamma", x_in, "x");
  checks::same_dtype(beta_in, "beta", x_in, "x");
  TORCH_CHECK(eps > 0, "eps must be > 0, got ", eps);

  const int64_t B = x_in.size(0), C = x_in.size(1), n = x_in.size(2) * x_in.size(3), P = B * C;
  const auto acc = acc_dtype(x_in.scalar_type());
  at::Tensor mean = at::empty({B, C}, x_in.options().dtype(acc));
  at::Tensor rstd = at::empty({B, C}, mean.options());

  if (out_format(x_in) == at::MemoryFormat::ChannelsLast) {
    // channels_last natively (x is channels_last-contiguous here; gamma/beta are brought to it).
    const at::Tensor& x = x_in;
    const at::Tensor gamma = gamma_in.contiguous(at::MemoryFormat::ChannelsLast);
    const at::Tensor beta = beta_in.contiguous(at::MemoryFormat::ChannelsLast);
    at::Tensor out = at::empty(x.sizes(), x.options().memory_format(at::MemoryFormat::ChannelsLast));
    const int64_t chunk = nhwc_chunk(C), nchunks = (n + chunk - 1) / chunk;
    at::Tensor part = at::empty({2, B * nchunks, C}, x.options().dtype(at::kDouble));
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "spade_modulate_forward", [&] {
      using A = at::opmath_type<scalar_t>;
      NhwcArgs<scalar_t> args{};
      args.x = x.const_data_ptr<scalar_t>();
      args.g = gamma.const_data_ptr<scalar_t>();
      args.b = beta.const_data_ptr<scalar_t>();
      args.o = out.mutable_data_ptr<scalar_t>();
      args.pa = part.mutable_data_ptr<double>();
      args.pb = args.pa + B * nchunks * C;
      args.C = C;
      args.HW = n;
      args.chunk = chunk;
      args.nchunks = nchunks;
      nhwc_run<scalar_t>(kStats, args, B);
      // Chan et al.'s pairwise combination of the chunks' (count, mean, M2), in chunk order.
      A* mp = mean.mutable_data_ptr<A>();
      A* rp = rstd.mutable_data_ptr<A>();
      at::parallel_for(0, B * C, 256, [&](int64_t q0, int64_t q1) {
        for (int64_t q = q0; q < q1; ++q) {
          const int64_t b = q / C, c = q % C;
          double cnt = 0, mu = 0, m2 = 0;
          for (int64_t k = 0; k < nchunks; ++k) {
            const double nk = static_cast<double>(std::min(n, (k + 1) * chunk) - k * chunk);
            const double mk = args.pa[(b * nchunks + k) * C + c], m2k = args.pb[(b * nchunks + k) * C + c];
            const double tot = cnt + nk, delta = mk - mu;
            mu += delta * nk / tot;
            m2 += m2k + delta * delta * cnt * nk / tot;
            cnt = tot;
          }
          const double var = std::max(m2 / static_cast<double>(n), 0.0);
          mp[q] = static_cast<A>(mu);
          rp[q] = static_cast<A>(1.0 / std::sqrt(var + eps));
        }
      });
      args.mean = mp;
      args.rstd = rp;
      nhwc_run<scalar_t>(kModulate, args, B);
    });
    return {out, mean, rstd};
  }

  const at::Tensor x = x_in.contiguous(), gamma = gamma_in.contiguous(), beta = beta_in.contiguous();
  at::Tensor out = at::empty(x.sizes(), x.options());
  if (P > 0 && n > 0) {
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "spade_modulate_forward", [&] {
      using A = at::opmath_type<scalar_t>;
      const FwdArgs<scalar_t> args{x.const_data_ptr<scalar_t>(), gamma.const_data_ptr<scalar_t>(),
                                   beta.const_data_ptr<scalar_t>(), out.mutable_data_ptr<scalar_t>(),
                                   mean.mutable_data_ptr<A>(), rstd.mutable_data_ptr<A>(), n, eps};
      at::parallel_for(0, P, std::max<int64_t>(1, kTaskWork / n),
                       [&](int64_t p0, int64_t p1) { fwd_planes_any(args, p0, p1); });
    });
  } else if (P > 0) {
    mean.fill_(std::numeric_limits<double>::quiet_NaN());  // empty planes: what var_mean gives
    rstd.fill_(std::numeric_limits<double>::quiet_NaN());
  }
  return {out, mean, rstd};
}

std::vector<at::Tensor> spade_modulate_backward(const at::Tensor& grad_out_in, const at::Tensor& x_in,
                                                const at::Tensor& gamma_in, const at::Tensor& mean_in,
                                                const at::Tensor& rstd_in, bool need_x, bool need_gamma,
                                                bool need_beta) {
  checks::cpu_4d(x_in, "x");
  checks::floating(x_in, "x");
  check_like_x(grad_out_in, "grad_out", x_in);
  checks::floating(grad_out_in, "grad_out");
  check_like_x(gamma_in, "gamma", x_in);
  checks::same_dtype(gamma_in, "gamma", x_in, "x");
  const int64_t B = x_in.size(0), C = x_in.size(1), n = x_in.size(2) * x_in.size(3), P = B * C;
  auto check_stat = [&](const at::Tensor& t, const char* name) {
    TORCH_CHECK(t.defined() && t.device().is_cpu(), name, " must be a defined CPU tensor");
    TORCH_CHECK(t.dim() == 2 && t.size(0) == B && t.size(1) == C, name, " must have shape (B, C) = (", B, ", ", C,
                "), got ", t.sizes());
    checks::floating(t, name);
  };
  check_stat(mean_in, "mean");
  check_stat(rstd_in, "rstd");
  const auto acc = acc_dtype(x_in.scalar_type());

  at::Tensor gx, ggamma, gbeta;  // undefined (None in Python) where not needed
  if (!need_x && !need_gamma && !need_beta) return {gx, ggamma, gbeta};

  at::Tensor grad_out = grad_out_in.scalar_type() == x_in.scalar_type() ? grad_out_in : grad_out_in.to(x_in.scalar_type());
  const int64_t H = x_in.size(2), W = x_in.size(3);
  // one value broadcast over each (b, c) plane: the expanded ones of out.sum(), or a (B, C, 1, 1) expand
  const bool go_planes_const = (W == 1 || grad_out.stride(3) == 0) && (H == 1 || grad_out.stride(2) == 0);
  // grad_beta is grad_out itself: written by the kernel (which reads grad_out anyway) when grad_out
  // is in the layout the kernel runs in, else one copy in grad_out's output format.
  const at::MemoryFormat go_fmt = out_format(grad_out_in);

  if (out_format(x_in) == at::MemoryFormat::ChannelsLast && P > 0 && n > 0) {
    // channels_last natively. grad_out: channels_last rows, or the (B, C) values of broadcast planes.
    const at::Tensor& x = x_in;
    const at::Tensor gamma = gamma_in.contiguous(at::MemoryFormat::ChannelsLast);
    int64_t go_bs, go_ps;
    if (grad_out.is_contiguous(at::MemoryFormat::ChannelsLast)) {
      go_bs = n * C;
      go_ps = C;
    } else if (go_planes_const) {
      grad_out = grad_out.select(3, 0).select(2, 0).contiguous();  // (B, C)
      go_bs = C;
      go_ps = 0;
    } else {
      grad_out = grad_out.contiguous(at::MemoryFormat::ChannelsLast);
      go_bs = n * C;
      go_ps = C;
    }
    // (grad_out_in channels_last-contiguous: its output format is channels_last, or it is also plain
    // contiguous and then both orders are the same)
    const bool beta_in_kernel = need_beta && grad_out_in.is_contiguous(at::MemoryFormat::ChannelsLast) &&
                                grad_out.is_contiguous(at::MemoryFormat::ChannelsLast) && go_ps != 0;
    if (need_beta && !beta_in_kernel) gbeta = grad_out_in.clone(go_fmt);
    if (!need_x && !need_gamma && !beta_in_kernel) return {gx, ggamma, gbeta};
    const auto cl = x.options().memory_format(at::MemoryFormat::ChannelsLast);
    if (need_x) gx = at::empty(x.sizes(), cl);
    if (need_gamma) ggamma = at::empty(x.sizes(), cl);
    if (beta_in_kernel) gbeta = at::empty(x.sizes(), x.options().memory_format(go_fmt));
    const at::Tensor mean = mean_in.to(acc).contiguous(), rstd = rstd_in.to(acc).contiguous();
    const int64_t chunk = nhwc_chunk(C), nchunks = (n + chunk - 1) / chunk;
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "spade_modulate_backward", [&] {
      using A = at::opmath_type<scalar_t>;
      NhwcArgs<scalar_t> args{};
      args.x = x.const_data_ptr<scalar_t>();
      args.g = gamma.const_data_ptr<scalar_t>();
      args.go = grad_out.const_data_ptr<scalar_t>();
      args.go_bs = go_bs;
      args.go_ps = go_ps;
      args.gx = need_x ? gx.mutable_data_ptr<scalar_t>() : nullptr;
      args.gg = need_gamma ? ggamma.mutable_data_ptr<scalar_t>() : nullptr;
      args.gb = beta_in_kernel ? gbeta.mutable_data_ptr<scalar_t>() : nullptr;
      args.mean = mean.const_data_ptr<A>();
      args.rstd = rstd.const_data_ptr<A>();
      args.C = C;
      args.HW = n;
      args.chunk = chunk;
      args.nchunks = nchunks;
      std::vector<A> cs(static_cast<size_t>(2 * B * C), A(0));
      if (need_x) {
        std::vector<double> part(static_cast<size_t>(2 * B * nchunks * C));
        args.pa = part.data();
        args.pb = part.data() + B * nchunks * C;
        nhwc_run<scalar_t>(kBwdReduce, args, B);
        for (int64_t q = 0; q < B * C; ++q) {  // chunk sums in chunk order
          const int64_t b = q / C, c = q % C;
          double sa = 0, sb = 0;
          for (int64_t k = 0; k < nchunks; ++k) {
            sa += args.pa[(b * nchunks + k) * C + c];
            sb += args.pb[(b * nchunks + k) * C + c];
          }
          cs[q] = static_cast<A>(sa / static_cast<double>(n));
          cs[B * C + q] = static_cast<A>(sb / static_cast<double>(n));
        }
      }
      args.c1 = cs.data();
      args.c2 = cs.data() + B * C;
      nhwc_run<scalar_t>(kBwdWrite, args, B);
    });
    if (need_gamma) ggamma = in_format(ggamma, out_format(gamma_in));
    return {gx, ggamma, gbeta};
  }

  // NCHW: grad_out is read plane by plane, each (b, c) plane dense (NCHW within the plane) or one
  // value broadcast over it; neither is copied. Any other layout is made contiguous first.
  const bool go_dense = (W == 1 || grad_out.stride(3) == 1) && (H == 1 || grad_out.stride(2) == W);
  if (!go_dense && !go_planes_const) grad_out = grad_out.contiguous();
  const bool go_const = !go_dense && go_planes_const;
  const int64_t go_sb = grad_out.stride(0), go_sc = grad_out.stride(1);
  const bool beta_in_kernel = need_beta && go_fmt == at::MemoryFormat::Contiguous;
  if (need_beta && !beta_in_kernel) gbeta = grad_out_in.clone(go_fmt);
  if (!need_x && !need_gamma && !beta_in_kernel) return {gx, ggamma, gbeta};

  const at::Tensor x = x_in.contiguous(), gamma = gamma_in.contiguous();
  const at::Tensor mean = mean_in.to(acc).contiguous(), rstd = rstd_in.to(acc).contiguous();
  if (need_x) gx = at::empty(x.sizes(), x.options());
  if (need_gamma) ggamma = at::empty(x.sizes(), x.options());
  if (beta_in_kernel) gbeta = at::empty(x.sizes(), x.options());

  if (P > 0 && n > 0) {
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "spade_modulate_backward", [&] {
      using A = at::opmath_type<scalar_t>;
      const BwdArgs<scalar_t> args{grad_out.const_data_ptr<scalar_t>(), go_sb, go_sc, go_const,
                                   x.const_data_ptr<scalar_t>(), gamma.const_data_ptr<scalar_t>(),
                                   mean.const_data_ptr<A>(), rstd.const_data_ptr<A>(),
                                   need_x ? gx.mutable_data_ptr<scalar_t>() : nullptr,
                                   need_gamma ? ggamma.mutable_data_ptr<scalar_t>() : nullptr,
                                   beta_in_kernel ? gbeta.mutable_data_ptr<scalar_t>() : nullptr, C, n};
      at::parallel_for(0, P, std::max<int64_t>(1, kTaskWork / n),
                       [&](int64_t p0, int64_t p1) { bwd_planes_any(args, p0, p1); });
    });
  }
  if (need_x) gx = in_format(gx, out_format(x_in));
  if (need_gamma) ggamma = in_format(ggamma, out_format(gamma_in));
  return {gx, ggamma, gbeta};
}

}  // namespace mdrnet_fast
