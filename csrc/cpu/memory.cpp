// Disentangled cosine memory on CPU (SPEC §4): read forward, read backward, batch-mean EMA update.
//
// The reference builds (B,n,m) cosines from normalised copies of q and of the whole memory, then a
// softmax and a second einsum, with a dozen full-size temporaries; the update normalises the memory
// again and goes through a one-hot (B,n,m) matrix. Here the read takes the queries of one block
// together and walks mem[i] in L1-sized chunks of slots (dots + slot norms, softmax, weighted sum):
// two passes over the block per group of queries, nothing larger than a row buffer allocated. The
// update is one task per block: argmax over the slots normalised once, then the per-slot means.
#include "mdrnet_fast.h"
#include "cpu/common.h"

#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <vector>

namespace mdrnet_fast {
namespace {

constexpr double kEps = 1e-8;  // SPEC §4 cosine eps
// Slots per pass: one load of the query element feeds kSlots multiply-adds, and kSlots
// independent add chains hide the add latency.
constexpr int kSlots = 8;
// Partial sums per dot product, one 32-byte vector. Lanes never mix until the final fixed tree, so
// a row's dot is the same sequence of roundings whichever code path, ISA or thread computes it.
template <typename acc_t>
constexpr int kLanes = 32 / static_cast<int>(sizeof(acc_t));
// Queries of one block processed together: each L1-resident chunk of slots is reused by all of
// them instead of streaming the block from L2 once per query.
constexpr int64_t kMaxRun = 16;
// Bytes of memory slots per chunk (half of a 32 KiB L1d).
constexpr int64_t kChunkBytes = 16384;

#if defined(__GNUC__) && (defined(__x86_64__) || defined(__i386__))
#define MDR_MEMORY_AVX2 1
// The extension is built for baseline x86-64 (SSE2). The hot loops are compiled a second time with
// AVX2 enabled and picked at run time. No FMA on purpose: without contraction both versions do the
// same IEEE operations lane by lane, so they return bit-identical results.
#define MDR_TARGET_AVX2 __attribute__((target("avx2")))
// MDRNET_FAST_CPU_ISA=baseline forces the SSE2 build (tests check both give identical bits); read
// at every kernel call, outside the parallel region.
inline bool use_avx2() {
  static const bool cpu_has = __builtin_cpu_supports("avx2");
  const char* isa = std::getenv("MDRNET_FAST_CPU_ISA");
  return cpu_has && !(isa != nullptr && std::strcmp(isa, "baseline") == 0);
}
#else
#define MDR_MEMORY_AVX2 0
#endif

using cpu::grain_for;

// Everything below up to the *_rows bodies is always_inline: the bodies are instantiated once per
// ISA, and only inlined code is compiled (and vectorised) for the caller's ISA.

template <typename T>
MDR_INLINE T sum_lanes(const T* l) {
  // Fixed pairwise tree: the result does not depend on how the caller was vectorised.
  constexpr int L = kLanes<T>;
  T a[L];
  for (int k = 0; k < L; ++k) a[k] = l[k];
#pragma GCC unroll 8
  for (int w = L / 2; w >= 1; w /= 2)
    for (int k = 0; k < w; ++k) a[k] += a[k + w];
  return a[0];
}

// out[g] = <x, rows[g]> for G rows. Every row gets exactly the same rounding sequence for any G
// (lanes are independent accumulators, the tail goes to fixed lanes, then a fixed tree), which is
// what makes duplicated memory slots produce bit-identical cosines (exact ties stay exact).
template <int G, typename acc_t>
MDR_INLINE void dots(const acc_t* __restrict__ x, const acc_t* const* rows, int64_t C, acc_t* out) {
  constexpr int L = kLanes<acc_t>;
  acc_t s[G][L];
  int64_t c = 0;
  // Start from the first block rather than zero-filling (0 + x*r == x*r): the zero fill became a
  // memset per call, a third of the cost of a 256-long dot.
  if (C >= L) {
    for (int g = 0; g < G; ++g) {
      const acc_t* __restrict__ r = rows[g];
#pragma omp simd
      for (int l = 0; l < L; ++l) s[g][l] = x[l] * r[l];
    }
    c = L;
  } else {
    for (int g = 0; g < G; ++g)
      for (int l = 0; l < L; ++l) s[g][l] = acc_t(0);
  }
  for (; c + L <= C; c += L) {
    for (int g = 0; g < G; ++g) {
      const acc_t* __restrict__ r = rows[g] + c;
#pragma omp simd
      for (int l = 0; l < L; ++l) s[g][l] += x[c + l] * r[l];
    }
  }
  for (int l = 0; c < C; ++c, ++l)
    for (int g = 0; g < G; ++g) s[g][l] += x[c] * rows[g][c];
  for (int g = 0; g < G; ++g) out[g] = sum_lanes(s[g]);
}

// out[c] += sum_g w[g] * rows[g][c]
template <int G, typename acc_t>
MDR_INLINE void axpy_rows(const acc_t* w, const acc_t* const* rows, int64_t C, acc_t* __restrict__ out) {
  const acc_t* __restrict__ r[G];
  for (int g = 0; g < G; ++g) r[g] = rows[g];
#pragma omp simd
  for (int64_t c = 0; c < C; ++c) {
    acc_t t = w[0] * r[0][c];
    for (int g = 1; g < G; ++g) t += w[g] * r[g][c];
    out[c] += t;
  }
}

// out[j] = <x, mem[j]> for the m rows of one block, kSlots rows at a time.
template <typename acc_t>
MDR_INLINE void block_dots(const acc_t* x, const acc_t* mem, int64_t m, int64_t C, acc_t* out) {
  int64_t j = 0;
  for (; j + kSlots <= m; j += kSlots) {
    const acc_t* rows[kSlots];
    for (int g = 0; g < kSlots; ++g) rows[g] = mem + (j + g) * C;
    dots<kSlots>(x, rows, C, out + j);
  }
  for (; j < m; ++j) {
    const acc_t* row = mem + j * C;
    dots<1>(x, &row, C, out + j);
  }
}

// out += sum_j w[j] * mem[j] over m rows.
template <typename acc_t>
MDR_INLINE void block_combine(const acc_t* w, const acc_t* mem, int64_t m, int64_t C, acc_t* out) {
  int64_t j = 0;
  for (; j + kSlots <= m; j += kSlots) {
    const acc_t* rows[kSlots];
    for (int g = 0; g < kSlots; ++g) rows[g] = mem + (j + g) * C;
    axpy_rows<kSlots>(w + j, rows, C, out);
  }
  for (; j < m; ++j) {
    const acc_t* row = mem + j * C;
    axpy_rows<1>(w + j, &row, C, out);
  }
}

template <typename acc_t>
MDR_INLINE acc_t norm_of(const acc_t* x, int64_t C) {
  acc_t s;
  dots<1>(x, &x, C, &s);
  return std::sqrt(s);
}

template <typename scalar_t, typename acc_t>
MDR_INLINE void load_row(const scalar_t* __restrict__ src, int64_t C, acc_t* __restrict__ dst) {
  for (int64_t c = 0; c < C; ++c) dst[c] = static_cast<acc_t>(src[c]);
}

// ------------------------------------------------------------------ per-task bodies

template <typename scalar_t>
struct ReadArgs {
  using acc_t = at::opmath_type<scalar_t>;
  int64_t B, n, m, C;
  int64_t chunk;         // slots per L1 chunk, a multiple of kSlots
  const scalar_t* q;
  const scalar_t* grad;  // backward only
  const acc_t* mem;      // (n, m, C) in acc_t
  acc_t tau;
  const acc_t* attn_in;  // backward: the forward's softmax weights
  acc_t* attn_out;       // forward: written
  scalar_t* out;         // q_hat or grad_q
};

// For each query r of a run: w[r] = <x[r], mem_j> for all j, slot chunk by chunk; also the clamped
// slot norms max(|mem_j|, eps), taken while the chunk is in L1 (the same code for every run, so
// the same values wherever a block's queries are split between tasks).
template <typename acc_t>
MDR_INLINE void run_dots(const acc_t* x, int64_t run, const acc_t* mi, int64_t m, int64_t C, int64_t chunk,
                         acc_t* const* w, acc_t* norms) {
  for (int64_t j0 = 0; j0 < m; j0 += chunk) {
    const int64_t mj = std::min(chunk, m - j0);
    for (int64_t j = j0; j < j0 + mj; ++j)
      norms[j] = std::max(norm_of(mi + j * C, C), static_cast<acc_t>(kEps));
    for (int64_t r = 0; r < run; ++r) block_dots(x + r * C, mi + j0 * C, mj, C, w[r] + j0);
  }
}

// For each query r of a run: out[r] = sum_j w[r][j] mem_j. Chunks start at multiples of kSlots, so
// the grouping and order of the sum (and the result) do not depend on the chunk size.
template <typename acc_t>
MDR_INLINE void run_combine(const acc_t* const* w, int64_t run, const acc_t* mi, int64_t m, int64_t C,
                            int64_t chunk, acc_t* out) {
  std::fill(out, out + run * C, acc_t(0));
  for (int64_t j0 = 0; j0 < m; j0 += chunk) {
    const int64_t mj = std::min(chunk, m - j0);
    for (int64_t r = 0; r < run; ++r) block_combine(w[r] + j0, mi + j0 * C, mj, C, out + r * C);
  }
}

// Read forward for (i, b) pairs t in [begin, end), i-major: consecutive pairs of one block form a
// run (<= kMaxRun queries) that shares each chunk of mem[i]. Runs depend on the task split, the
// arithmetic of each query does not.
template <typename scalar_t>
MDR_INLINE void read_forward_rows(const ReadArgs<scalar_t>& A, int64_t begin, int64_t end) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t B = A.B, n = A.n, m = A.m, C = A.C;
  const acc_t eps = static_cast<acc_t>(kEps);
  const int64_t cap = std::min(kMaxRun, end - begin);
  std::vector<acc_t> xq(static_cast<size_t>(cap * C)), acc(static_cast<size_t>(cap * C));
  std::vector<acc_t> nbuf(static_cast<size_t>(m));
  const acc_t* ni = nbuf.data();
  acc_t* w[kMaxRun];
  for (int64_t t = begin; t < end;) {
    const int64_t i = t / B, b0 = t % B;
    const int64_t run = std::min({cap, B - b0, end - t});
    t += run;
    const acc_t* mi = A.mem + i * m * C;
    for (int64_t r = 0; r < run; ++r) {
      load_row(A.q + ((b0 + r) * n + i) * C, C, xq.data() + r * C);
      w[r] = A.attn_out + ((b0 + r) * n + i) * m;  // logits first, then the softmax in place
    }
    run_dots(xq.data(), run, mi, m, C, A.chunk, w, nbuf.data());
    for (int64_t r = 0; r < run; ++r) {
      acc_t* a = w[r];
      const acc_t nq = std::max(norm_of(xq.data() + r * C, C), eps);
      acc_t mx = -std::numeric_limits<acc_t>::infinity();
      for (int64_t j = 0; j < m; ++j) {
        a[j] = a[j] / (nq * ni[j]) / A.tau;
        mx = std::max(mx, a[j]);
      }
      acc_t sum = 0;
      for (int64_t j = 0; j < m; ++j) {
        a[j] = std::exp(a[j] - mx);
        sum += a[j];
      }
      const acc_t inv = acc_t(1) / sum;
      for (int64_t j = 0; j < m; ++j) a[j] *= inv;
    }
    run_combine(w, run, mi, m, C, A.chunk, acc.data());
    for (int64_t r = 0; r < run; ++r) {
      scalar_t* o = A.out + ((b0 + r) * n + i) * C;
      const acc_t* y = acc.data() + r * C;
      for (int64_t c = 0; c < C; ++c) o[c] = static_cast<scalar_t>(y[c]);
    }
  }
}

template <typename scalar_t>
MDR_INLINE void read_backward_rows(const ReadArgs<scalar_t>& A, int64_t begin, int64_t end) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t B = A.B, n = A.n, m = A.m, C = A.C;
  const acc_t eps = static_cast<acc_t>(kEps);
  const int64_t cap = std::min(kMaxRun, end - begin);
  std::vector<acc_t> xg(static_cast<size_t>(cap * C)), gqn(static_cast<size_t>(cap * C));
  std::vector<acc_t> xq(static_cast<size_t>(C)), wbuf(static_cast<size_t>(cap * m)), nbuf(static_cast<size_t>(m));
  const acc_t* ni = nbuf.data();
  acc_t* w[kMaxRun];
  for (int64_t r = 0; r < cap; ++r) w[r] = wbuf.data() + r * m;
  for (int64_t t = begin; t < end;) {
    const int64_t i = t / B, b0 = t % B;
    const int64_t run = std::min({cap, B - b0, end - t});
    t += run;
    const acc_t* mi = A.mem + i * m * C;
    for (int64_t r = 0; r < run; ++r) load_row(A.grad + ((b0 + r) * n + i) * C, C, xg.data() + r * C);
    run_dots(xg.data(), run, mi, m, C, A.chunk, w, nbuf.data());  // w = d loss / d attn
    for (int64_t r = 0; r < run; ++r) {
      const acc_t* a = A.attn_in + ((b0 + r) * n + i) * m;
      acc_t* wr = w[r];
      acc_t s = 0;
      for (int64_t j = 0; j < m; ++j) s += a[j] * wr[j];
      // d loss / d logit, folded with the slot normalisation: grad_qn = sum_j w_j mem_j.
      for (int64_t j = 0; j < m; ++j) wr[j] = a[j] * (wr[j] - s) / A.tau / ni[j];
    }
    run_combine(w, run, mi, m, C, A.chunk, gqn.data());
    for (int64_t r = 0; r < run; ++r) {
      const int64_t row = (b0 + r) * n + i;
      const acc_t* gr = gqn.data() + r * C;
      load_row(A.q + row * C, C, xq.data());
      const acc_t nq = norm_of(xq.data(), C);
      scalar_t* o = A.out + row * C;
      if (nq > eps) {
        // qn = q/|q|: remove the radial component, which the normalisation does not pass through.
        for (int64_t c = 0; c < C; ++c) xq[c] /= nq;
        acc_t rad;
        dots<1>(xq.data(), &gr, C, &rad);
        for (int64_t c = 0; c < C; ++c) o[c] = static_cast<scalar_t>((gr[c] - xq[c] * rad) / nq);
      } else {
        // |q| <= eps: q/max(|q|,eps) is q/eps, linear, with no radial term.
        for (int64_t c = 0; c < C; ++c) o[c] = static_cast<scalar_t>(gr[c] / eps);
      }
    }
  }
}

template <typename mem_t>
struct UpdateArgs {
  using acc_t = at::opmath_type<mem_t>;
  int64_t B, n, m, C;
  mem_t* mem;          // (n, m, C), in place
  const acc_t* q;      // (B, n, C) in acc_t, as the reference converts it
  const acc_t* v;
  const bool* present;
  acc_t a_old, a_new;  // alpha, 1 - alpha
  int64_t* slots;
};

// Update of blocks i in [begin, end). Block i's argmaxes and updates touch mem[i] only, so every
// cosine is taken from the memory before the update without a global barrier.
template <typename mem_t>
MDR_INLINE void update_blocks(const UpdateArgs<mem_t>& A, int64_t begin, int64_t end) {
  using acc_t = at::opmath_type<mem_t>;
  const int64_t B = A.B, n = A.n, m = A.m, C = A.C;
  const acc_t eps = static_cast<acc_t>(kEps);
  std::vector<acc_t> qn(static_cast<size_t>(std::max<int64_t>(B, 1) * C));
  std::vector<acc_t> mn(static_cast<size_t>(kSlots * C)), tot(static_cast<size_t>(C));
  std::vector<acc_t> best(static_cast<size_t>(B));
  std::vector<int64_t> arg(static_cast<size_t>(B));
  std::vector<char> done(static_cast<size_t>(B));
  for (int64_t i = begin; i < end; ++i) {
    mem_t* mi = A.mem + i * m * C;
    // Normalise exactly as reference.cosine does (element-wise division by the clamped norm, then
    // the dot of the normalised vectors), so the argmax sees the same values up to dot rounding.
    for (int64_t b = 0; b < B; ++b) {
      const acc_t* x = A.q + (b * n + i) * C;
      const acc_t d = std::max(norm_of(x, C), eps);
      acc_t* y = qn.data() + b * C;
      for (int64_t c = 0; c < C; ++c) y[c] = x[c] / d;
    }
    for (int64_t j0 = 0; j0 < m; j0 += kSlots) {
      const int G = static_cast<int>(std::min<int64_t>(kSlots, m - j0));
      const acc_t* rows[kSlots];
      for (int g = 0; g < G; ++g) {
        acc_t* y = mn.data() + g * C;
        load_row(mi + (j0 + g) * C, C, y);
        const acc_t d = std::max(norm_of(static_cast<const acc_t*>(y), C), eps);
        for (int64_t c = 0; c < C; ++c) y[c] /= d;
        rows[g] = y;
      }
      for (int64_t b = 0; b < B; ++b) {
        acc_t cs[kSlots];
        const acc_t* x = qn.data() + b * C;
        if (G == kSlots) {
          dots<kSlots>(x, rows, C, cs);
        } else {
          for (int g = 0; g < G; ++g) dots<1>(x, rows + g, C, cs + g);
        }
        for (int g = 0; g < G; ++g) {
          const int64_t j = j0 + g;
          // torch.argmax: first maximum; a NaN counts as the maximum (first NaN wins).
          if (j == 0 || (!std::isnan(best[b]) && !(cs[g] <= best[b]))) {
            best[b] = cs[g];
            arg[b] = j;
          }
        }
      }
    }
    // Apply: each chosen slot once, its samples summed in increasing b (deterministic).
    std::fill(done.begin(), done.end(), 0);
    for (int64_t b = 0; b < B; ++b) {
      const bool p = A.present[b * n + i];
      A.slots[b * n + i] = p ? arg[b] : -1;
      if (!p || done[b]) continue;
      const int64_t j = arg[b];
      std::copy(A.v + (b * n + i) * C, A.v + (b * n + i + 1) * C, tot.begin());
      int64_t cnt = 1;
      for (int64_t b2 = b + 1; b2 < B; ++b2) {
        if (done[b2] || !A.present[b2 * n + i] || arg[b2] != j) continue;
        done[b2] = 1;
        ++cnt;
        const acc_t* x = A.v + (b2 * n + i) * C;
        for (int64_t c = 0; c < C; ++c) tot[c] += x[c];
      }
      const acc_t cn = static_cast<acc_t>(cnt);
      mem_t* y = mi + j * C;
      for (int64_t c = 0; c < C; ++c)
        y[c] = static_cast<mem_t>(A.a_old * static_cast<acc_t>(y[c]) + A.a_new * (tot[c] / cn));
    }
  }
}

// One out-of-line instantiation of each body per ISA; parallel_for calls the one the CPU supports.
#if MDR_MEMORY_AVX2
#define MDR_ISA_VARIANTS(body, Args)                                                                \
  template <typename T>                                                                             \
  void body##_base(const Args<T>& a, int64_t begin, int64_t end) { body<T>(a, begin, end); }        \
  template <typename T>                                                                             \
  MDR_TARGET_AVX2 void body##_avx2(const Args<T>& a, int64_t begin, int64_t end) {                  \
    body<T>(a, begin, end);                                                                         \
  }                                                                                                 \
  template <typename T>                                                                             \
  void (*body##_pick())(const Args<T>&, int64_t, int64_t) {                                         \
    return use_avx2() ? &body##_avx2<T> : &body##_base<T>;                                          \
  }
#else
#define MDR_ISA_VARIANTS(body, Args)                                                                \
  template <typename T>                                                                             \
  void body##_base(const Args<T>& a, int64_t begin, int64_t end) { body<T>(a, begin, end); }        \
  template <typename T>                                                                             \
  void (*body##_pick())(const Args<T>&, int64_t, int64_t) {                                         \
    return &body##_base<T>;                                                                         \
  }
#endif

MDR_ISA_VARIANTS(read_forward_rows, ReadArgs)
MDR_ISA_VARIANTS(read_backward_rows, ReadArgs)
MDR_ISA_VARIANTS(update_blocks, UpdateArgs)

template <typename scalar_t>
void read_impl(bool forward, const at::Tensor* grad, const at::Tensor& q, const at::Tensor& mem, double tau,
               const at::Tensor& attn, at::Tensor& out) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t B = q.size(0), n = q.size(1), C = q.size(2), m = mem.size(1);
  const acc_t* mem_p = mem.const_data_ptr<acc_t>();
  const int64_t chunk = std::max<int64_t>(1, kChunkBytes / std::max<int64_t>(1, C * sizeof(acc_t)) / kSlots) * kSlots;
  const ReadArgs<scalar_t> a{B, n, m, C, chunk,
                             q.const_data_ptr<scalar_t>(),
                             grad ? grad->const_data_ptr<scalar_t>() : nullptr,
                             mem_p, static_cast<acc_t>(tau),
                             forward ? nullptr : attn.const_data_ptr<acc_t>(),
                             forward ? attn.mutable_data_ptr<acc_t>() : nullptr,
                             out.mutable_data_ptr<scalar_t>()};
  auto fn = forward ? read_forward_rows_pick<scalar_t>() : read_backward_rows_pick<scalar_t>();
  at::parallel_for(0, n * B, grain_for(2 * m * C + 3 * C), [&](int64_t begin, int64_t end) { fn(a, begin, end); });
}

template <typename mem_t>
void update_impl(at::Tensor& mem, const at::Tensor& q, const at::Tensor& v, const at::Tensor& present,
                 double alpha, at::Tensor& slots) {
  using acc_t = at::opmath_type<mem_t>;
  const int64_t B = q.size(0), n = q.size(1), C = q.size(2), m = mem.size(1);
  // As torch evaluates alpha * mem + (1 - alpha) * mean: both Python-float factors rounded to acc_t.
  const UpdateArgs<mem_t> a{B, n, m, C,
                            mem.mutable_data_ptr<mem_t>(),
                            q.const_data_ptr<acc_t>(),
                            v.const_data_ptr<acc_t>(),
                            present.const_data_ptr<bool>(),
                            static_cast<acc_t>(alpha), static_cast<acc_t>(1.0 - alpha),
                            slots.mutable_data_ptr<int64_t>()};
  auto fn = update_blocks_pick<mem_t>();
  at::parallel_for(0, n, grain_for((B + 1) * m * C), [&](int64_t begin, int64_t end) { fn(a, begin, end); });
}

void check_q_mem(const at::Tensor& q, const at::Tensor& mem) {
  checks::cpu_nd(q, "q", 3, "(B, n, C)");
  checks::floating(q, "q");
  checks::cpu_nd(mem, "mem", 3, "(n, m, C)");
  checks::floating(mem, "mem");
  TORCH_CHECK(q.size(1) == mem.size(0) && q.size(2) == mem.size(2), "q must have shape (B, n=", mem.size(0),
              ", C=", mem.size(2), ") to match mem (n, m, C)=", mem.sizes(), ", got ", q.sizes());
  TORCH_CHECK(mem.size(1) >= 1, "mem must have at least one slot (m >= 1), got shape ", mem.sizes());
}

void check_tau(double tau) {
  TORCH_CHECK(tau > 0 && std::isfinite(tau), "tau must be a finite number > 0, got ", tau);
}

// The read works on mem in q's accumulation dtype (as the composite does): a no-op for fp32/fp64.
at::Tensor mem_as_acc(const at::Tensor& mem, at::ScalarType acc) {
  return mem.to(acc).contiguous();
}

}  // namespace

std::vector<at::Tensor> memory_read_forward(const at::Tensor& q_in, const at::Tensor& mem_in, double tau) {
  check_q_mem(q_in, mem_in);
  check_tau(tau);
  const at::Tensor q = q_in.contiguous();
  const auto acc = acc_dtype(q.scalar_type());
  const at::Tensor mem = mem_as_acc(mem_in, acc);
  at::Tensor q_hat = at::empty(q.sizes(), q.options());
  at::Tensor attn = at::empty({q.size(0), q.size(1), mem.size(1)}, q.options().dtype(acc));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, q.scalar_type(), "memory_read_forward", [&] {
    read_impl<scalar_t>(true, nullptr, q, mem, tau, attn, q_hat);
  });
  return {q_hat, attn};
}

at::Tensor memory_read_backward(const at::Tensor& grad_in, const at::Tensor& q_in, const at::Tensor& mem_in,
                                const at::Tensor& attn_in, double tau) {
  check_q_mem(q_in, mem_in);
  check_tau(tau);
  checks::cpu_nd(grad_in, "grad", 3, "(B, n, C)");
  TORCH_CHECK(grad_in.sizes() == q_in.sizes(), "grad must have q's shape ", q_in.sizes(), ", got ",
              grad_in.sizes());
  checks::same_dtype(grad_in, "grad", q_in, "q");
  const auto acc = acc_dtype(q_in.scalar_type());
  checks::cpu_nd(attn_in, "attn", 3, "(B, n, m)");
  TORCH_CHECK(attn_in.size(0) == q_in.size(0) && attn_in.size(1) == q_in.size(1) &&
                  attn_in.size(2) == mem_in.size(1),
              "attn must have shape (B, n, m) = (", q_in.size(0), ", ", q_in.size(1), ", ", mem_in.size(1),
              "), got ", attn_in.sizes());
  TORCH_CHECK(attn_in.scalar_type() == acc, "attn must be ", acc, " for q of dtype ", q_in.scalar_type(),
              ", got ", attn_in.scalar_type());

  const at::Tensor grad = grad_in.contiguous(), q = q_in.contiguous(), attn = attn_in.contiguous();
  const at::Tensor mem = mem_as_acc(mem_in, acc);
  at::Tensor grad_q = at::empty(q.sizes(), q.options());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, q.scalar_type(), "memory_read_backward", [&] {
    read_impl<scalar_t>(false, &grad, q, mem, tau, attn, grad_q);
  });
  return grad_q;
}

at::Tensor memory_update_(at::Tensor& mem, const at::Tensor& q_in, const at::Tensor& v_in,
                          const at::Tensor& present_in, double alpha) {
  check_q_mem(q_in, mem);
  TORCH_CHECK(mem.is_contiguous(), "mem must be contiguous (it is updated in place)");
  checks::cpu_nd(v_in, "v", 3, "(B, n, C)");
  checks::floating(v_in, "v");
  TORCH_CHECK(v_in.sizes() == q_in.sizes(), "v must have q's shape ", q_in.sizes(), ", got ", v_in.sizes());
  checks::cpu_nd(present_in, "present", 2, "(B, n)");
  TORCH_CHECK(present_in.size(0) == q_in.size(0) && present_in.size(1) == q_in.size(1),
              "present must have shape (B, n) = (", q_in.size(0), ", ", q_in.size(1), "), got ",
              present_in.sizes());
  TORCH_CHECK(present_in.scalar_type() == at::kBool, "present must be bool, got ", present_in.scalar_type());
  TORCH_CHECK(alpha >= 0.0 && alpha <= 1.0, "alpha must lie in [0, 1], got ", alpha);

  // The reference takes cosines and means in mem's accumulation dtype: q and v are converted once.
  const auto acc = acc_dtype(mem.scalar_type());
  const at::Tensor q = q_in.to(acc).contiguous(), v = v_in.to(acc).contiguous();
  const at::Tensor present = present_in.contiguous();
  at::Tensor slots = at::empty({q.size(0), q.size(1)}, q.options().dtype(at::kLong));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, mem.scalar_type(), "memory_update_", [&] {
    update_impl<scalar_t>(mem, q, v, present, alpha, slots);
  });
  return slots;
}

}  // namespace mdrnet_fast
