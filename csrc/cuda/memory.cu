// Disentangled cosine memory on CUDA (SPEC §4), with the contract of the CPU kernels (csrc/mdrnet_fast.h):
//   memory_read_forward(q (B,n,C), mem (n,m,C), tau)        -> {q_hat (B,n,C) q's dtype, attn (B,n,m) fp32|fp64}
//   memory_read_backward(grad, q, mem, attn, tau)           -> grad_q (B,n,C) q's dtype
//   memory_update_(mem, q, v, present, alpha)  (in place)   -> slots (B,n) int64, -1 where absent
// Accumulation is fp32 (fp64 for fp64), with the values the CPU kernels use: the read takes mem in q's
// accumulation dtype, the update q and v in mem's. Tensors are read in their own dtype and converted in
// registers (exact) where mem has q's dtype (16-bit end to end) or already the accumulation dtype; only a
// mixed pair (e.g. fp32 q with a bf16 mem) converts the other operand once on the host.
//
// Read: one block (kThreads) per query row (b, i). The block sums |q|^2; then warp w takes slots
// j = w, w + 8, ..., its lanes striding over C, and reduces <q, mem_j> and |mem_j|^2 with a xor butterfly
// (every lane ends with the same bits); the logits cos_j / tau live in shared memory (m values), the
// softmax takes block max / sum reductions, and finally thread c computes q_hat[c] = sum_j a_j mem[j, c]
// in slot order (coalesced over c). The backward does the same walk with <grad, mem_j>, <q, mem_j> and
// |mem_j|^2 (3 m values in shared memory), then grad_q[c] in one more pass over the block's slots.
// Every reduction has a fixed shape, so results are bitwise reproducible.
//
// Update (deterministic, no atomics): kernel 1, one block per (b, i), takes the cosines as the reference
// does (q and mem_j divided element-wise by their clamped norms, then the dot) and thread 0 scans them in
// slot order with torch.argmax's rule (first maximum, a NaN counts as the maximum): slots[b, i], or -1 where
// present[b, i] is False. Kernel 2, one thread per (i, c): for each b in increasing order whose slot j is
// chosen for the first time, it sums v[b2, i, c] over the b2 >= b that chose j (increasing b2) and applies
// mem[i, j, c] = alpha mem + (1 - alpha) sum / count. It is O(B^2) slot comparisons per thread (B is the
// batch, small); each (i, j, c) is written by one thread exactly once.
//
// m slots need m (read, update) or 3 m (backward) accumulators of shared memory per block: past 48 KiB the
// kernel asks for the device's opt-in maximum, and refuses (naming m) past that.
#include "cuda/cuda_common.cuh"
#include "cuda/ops_cuda.h"

#include <ATen/ops/empty.h>

#include <cmath>
#include <cstdint>
#include <limits>

namespace mdrnet_fast {
namespace cuda {
namespace {

constexpr int kThreads = 256;  // 8 warps
constexpr double kEps = 1e-8;  // SPEC §4 cosine eps

// Each shared array of m slot values is allocated for m rounded up to 4 values: nvcc turns the slot loops
// into 16-byte shared loads (LDS.128) whose last one may read up to 3 values past m (compute-sanitizer's
// memcheck flagged it on an H100); the padding keeps those reads inside the block's allocation.
__host__ __device__ __forceinline__ int64_t padded_slots(int64_t m) { return (m + 3) / 4 * 4; }

__device__ __forceinline__ float dsqrt(float x) { return sqrtf(x); }
__device__ __forceinline__ double dsqrt(double x) { return sqrt(x); }
__device__ __forceinline__ float dexp(float x) { return expf(x); }
__device__ __forceinline__ double dexp(double x) { return exp(x); }
template <typename T>
__device__ __forceinline__ T dmax(T a, T b) { return a < b ? b : a; }

// xor butterfly: every lane ends with the same bits (a + b == b + a exactly)
template <typename T>
__device__ __forceinline__ T warp_sum(T v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}
template <typename T>
__device__ __forceinline__ T warp_max(T v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v = dmax(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}

// Block-wide sum / max, the same value in every thread, in a fixed order. Every thread of the block must
// call it (it has barriers); red holds 32 values. Writes to shared memory made before the call are
// visible to the whole block after it.
template <typename T>
__device__ __forceinline__ T block_sum(T v, T* red) {
  v = warp_sum(v);
  if ((threadIdx.x & 31) == 0) red[threadIdx.x >> 5] = v;
  __syncthreads();
  T t = T(0);
  for (int w = 0; w < static_cast<int>(blockDim.x >> 5); ++w) t += red[w];
  __syncthreads();  // red may be written again right after
  return t;
}
template <typename T>
__device__ __forceinline__ T block_max(T v, T* red) {
  v = warp_max(v);
  if ((threadIdx.x & 31) == 0) red[threadIdx.x >> 5] = v;
  __syncthreads();
  T t = red[0];
  for (int w = 1; w < static_cast<int>(blockDim.x >> 5); ++w) t = dmax(t, red[w]);
  __syncthreads();
  return t;
}

// attn[row, :] = softmax_j(cos(q[row], mem[i, j]) / tau), q_hat[row, :] = sum_j attn_j mem[i, j]; row = b n + i.
template <typename scalar_t, typename mem_t, typename acc_t>
__global__ void __launch_bounds__(kThreads)
read_forward_kernel(const scalar_t* __restrict__ q, const mem_t* __restrict__ mem, int64_t n, int64_t m,
                    int64_t C, acc_t tau, scalar_t* __restrict__ out, acc_t* __restrict__ attn) {
  __shared__ acc_t red[32];
  extern __shared__ __align__(16) unsigned char smem_raw[];
  acc_t* s_a = reinterpret_cast<acc_t*>(smem_raw);  // [m]: logits, then the weights
  const acc_t eps = static_cast<acc_t>(kEps);
  const int64_t row = blockIdx.x;
  const int64_t i = row % n;
  const scalar_t* qr = q + row * C;
  const mem_t* mi = mem + i * m * C;
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5, nwarps = blockDim.x >> 5;

  acc_t s = acc_t(0);
  for (int64_t c = tid; c < C; c += blockDim.x) {
    const acc_t x = static_cast<acc_t>(qr[c]);
    s += x * x;
  }
  const acc_t nq = dmax(dsqrt(block_sum(s, red)), eps);

  for (int64_t j = warp; j < m; j += nwarps) {
    const mem_t* mj = mi + j * C;
    acc_t d = acc_t(0), nn = acc_t(0);
    for (int64_t c = lane; c < C; c += 32) {
      const acc_t x = static_cast<acc_t>(mj[c]);
      d += static_cast<acc_t>(qr[c]) * x;
      nn += x * x;
    }
    d = warp_sum(d);
    nn = warp_sum(nn);
    if (lane == 0) s_a[j] = d / (nq * dmax(dsqrt(nn), eps)) / tau;
  }
  __syncthreads();

  acc_t mx = -std::numeric_limits<acc_t>::infinity();
  for (int64_t j = tid; j < m; j += blockDim.x) mx = dmax(mx, s_a[j]);
  mx = block_max(mx, red);
  acc_t se = acc_t(0);
  for (int64_t j = tid; j < m; j += blockDim.x) {
    const acc_t e = dexp(s_a[j] - mx);
    s_a[j] = e;
    se += e;
  }
  se = block_sum(se, red);
  const acc_t inv = acc_t(1) / se;
  for (int64_t j = tid; j < m; j += blockDim.x) {
    const acc_t a = s_a[j] * inv;
    s_a[j] = a;
    attn[row * m + j] = a;
  }
  __syncthreads();

  for (int64_t c = tid; c < C; c += blockDim.x) {
    acc_t y = acc_t(0);
    for (int64_t j = 0; j < m; ++j) y += s_a[j] * static_cast<acc_t>(mi[j * C + c]);
    out[row * C + c] = static_cast<scalar_t>(y);
  }
}

// grad_q[row] = (gqn - [|q| > eps] <q, gqn> q / |q|^2) / max(|q|, eps), with
// gqn = sum_j w_j mem_j, w_j = a_j (<grad, mem_j> - sum_k a_k <grad, mem_k>) / tau / max(|mem_j|, eps).
template <typename scalar_t, typename mem_t, typename acc_t>
__global__ void __launch_bounds__(kThreads)
read_backward_kernel(const scalar_t* __restrict__ grad, const scalar_t* __restrict__ q,
                     const mem_t* __restrict__ mem, const acc_t* __restrict__ attn, int64_t n, int64_t m,
                     int64_t C, acc_t tau, scalar_t* __restrict__ gq) {
  __shared__ acc_t red[32];
  extern __shared__ __align__(16) unsigned char smem_raw[];
  acc_t* s_g = reinterpret_cast<acc_t*>(smem_raw);  // [m]: <grad, mem_j>, then w_j
  acc_t* s_d = s_g + padded_slots(m);               // [m]: <q, mem_j>
  acc_t* s_n = s_d + padded_slots(m);               // [m]: max(|mem_j|, eps)
  const acc_t eps = static_cast<acc_t>(kEps);
  const int64_t row = blockIdx.x;
  const int64_t i = row % n;
  const scalar_t* qr = q + row * C;
  const scalar_t* gr = grad + row * C;
  const mem_t* mi = mem + i * m * C;
  const acc_t* ar = attn + row * m;
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5, nwarps = blockDim.x >> 5;

  acc_t s = acc_t(0);
  for (int64_t c = tid; c < C; c += blockDim.x) {
    const acc_t x = static_cast<acc_t>(qr[c]);
    s += x * x;
  }
  const acc_t norm = dsqrt(block_sum(s, red));
  const bool big = norm > eps;
  const acc_t safe = big ? norm : eps;

  for (int64_t j = warp; j < m; j += nwarps) {
    const mem_t* mj = mi + j * C;
    acc_t g = acc_t(0), d = acc_t(0), nn = acc_t(0);
    for (int64_t c = lane; c < C; c += 32) {
      const acc_t x = static_cast<acc_t>(mj[c]);
      g += static_cast<acc_t>(gr[c]) * x;
      d += static_cast<acc_t>(qr[c]) * x;
      nn += x * x;
    }
    g = warp_sum(g);
    d = warp_sum(d);
    nn = warp_sum(nn);
    if (lane == 0) {
      s_g[j] = g;
      s_d[j] = d;
      s_n[j] = dmax(dsqrt(nn), eps);
    }
  }
  __syncthreads();

  acc_t ag = acc_t(0);
  for (int64_t j = tid; j < m; j += blockDim.x) ag += ar[j] * s_g[j];
  ag = block_sum(ag, red);  // sum_k a_k <grad, mem_k>
  acc_t rad = acc_t(0);
  for (int64_t j = tid; j < m; j += blockDim.x) {
    const acc_t w = ar[j] * (s_g[j] - ag) / tau / s_n[j];
    s_g[j] = w;
    rad += w * s_d[j];
  }
  rad = block_sum(rad, red);  // <q, gqn>; its barriers also publish s_g
  const acc_t radial = big ? rad / (safe * safe) : acc_t(0);

  for (int64_t c = tid; c < C; c += blockDim.x) {
    acc_t y = acc_t(0);
    for (int64_t j = 0; j < m; ++j) y += s_g[j] * static_cast<acc_t>(mi[j * C + c]);
    gq[row * C + c] = static_cast<scalar_t>((y - radial * static_cast<acc_t>(qr[c])) / safe);
  }
}

// slots[row] = argmax_j cos(q[row], mem[i, j]) (first maximum; a NaN counts as the maximum), -1 if absent.
template <typename mem_t, typename in_t, typename acc_t>
__global__ void __launch_bounds__(kThreads)
update_argmax_kernel(const mem_t* __restrict__ mem, const in_t* __restrict__ q, const bool* __restrict__ present,
                     int64_t n, int64_t m, int64_t C, int64_t* __restrict__ slots) {
  __shared__ acc_t red[32];
  extern __shared__ __align__(16) unsigned char smem_raw[];
  acc_t* s_cos = reinterpret_cast<acc_t*>(smem_raw);  // [m]
  const acc_t eps = static_cast<acc_t>(kEps);
  const int64_t row = blockIdx.x;
  const int64_t i = row % n;
  const in_t* qr = q + row * C;
  const mem_t* mi = mem + i * m * C;
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5, nwarps = blockDim.x >> 5;

  acc_t s = acc_t(0);
  for (int64_t c = tid; c < C; c += blockDim.x) {
    const acc_t x = static_cast<acc_t>(qr[c]);
    s += x * x;
  }
  const acc_t dq = dmax(dsqrt(block_sum(s, red)), eps);

  for (int64_t j = warp; j < m; j += nwarps) {
    const mem_t* mj = mi + j * C;
    acc_t nn = acc_t(0);
    for (int64_t c = lane; c < C; c += 32) {
      const acc_t x = static_cast<acc_t>(mj[c]);
      nn += x * x;
    }
    const acc_t dm = dmax(dsqrt(warp_sum(nn)), eps);
    acc_t d = acc_t(0);
    for (int64_t c = lane; c < C; c += 32) d += (static_cast<acc_t>(qr[c]) / dq) * (static_cast<acc_t>(mj[c]) / dm);
    d = warp_sum(d);
    if (lane == 0) s_cos[j] = d;
  }
  __syncthreads();

  if (tid == 0) {
    acc_t best = s_cos[0];
    int64_t arg = 0;
    for (int64_t j = 1; j < m; ++j) {
      const acc_t v = s_cos[j];
      const bool best_nan = best != best;
      if (!best_nan && !(v <= best)) {  // greater, or v is the first NaN
        best = v;
        arg = j;
      }
    }
    slots[row] = present[row] ? arg : int64_t(-1);
  }
}

// mem[i, j, c] = alpha mem[i, j, c] + (1 - alpha) mean_{b: slots[b, i] = j} v[b, i, c] for every chosen j.
template <typename mem_t, typename in_t, typename acc_t>
__global__ void update_apply_kernel(mem_t* __restrict__ mem, const in_t* __restrict__ v,
                                    const int64_t* __restrict__ slots, int64_t B, int64_t n, int64_t m, int64_t C,
                                    acc_t a_old, acc_t a_new) {
  const int64_t i = blockIdx.x;
  const int64_t c = static_cast<int64_t>(blockIdx.y) * blockDim.x + threadIdx.x;
  if (c >= C) return;  // no barrier in this kernel
  for (int64_t b = 0; b < B; ++b) {
    const int64_t j = slots[b * n + i];
    if (j < 0) continue;
    bool first = true;
    for (int64_t b0 = 0; b0 < b; ++b0) {
      if (slots[b0 * n + i] == j) {
        first = false;
        break;
      }
    }
    if (!first) continue;
    acc_t tot = static_cast<acc_t>(v[(b * n + i) * C + c]);
    int64_t cnt = 1;
    for (int64_t b2 = b + 1; b2 < B; ++b2) {
      if (slots[b2 * n + i] != j) continue;
      tot += static_cast<acc_t>(v[(b2 * n + i) * C + c]);
      ++cnt;
    }
    mem_t* y = mem + (i * m + j) * C + c;
    *y = static_cast<mem_t>(a_old * static_cast<acc_t>(*y) + a_new * (tot / static_cast<acc_t>(cnt)));
  }
}

void check_q_mem(const at::Tensor& q, const at::Tensor& mem) {
  check_cuda(q, "q", 3);
  checks::floating(q, "q");
  check_cuda(mem, "mem", 3);
  checks::floating(mem, "mem");
  check_same_device(q, "q", mem, "mem");
  TORCH_CHECK(q.size(1) == mem.size(0) && q.size(2) == mem.size(2), "q must have shape (B, n=", mem.size(0),
              ", C=", mem.size(2), ") to match mem (n, m, C)=", mem.sizes(), ", got ", q.sizes());
  TORCH_CHECK(mem.size(1) >= 1, "mem must have at least one slot (m >= 1), got shape ", mem.sizes());
  TORCH_CHECK(q.size(0) * q.size(1) <= std::numeric_limits<int32_t>::max(),
              "q has too many rows for the cuda kernels: B * n = ", q.size(0) * q.size(1));
}

void check_tau(double tau) {
  TORCH_CHECK(tau > 0 && std::isfinite(tau), "tau must be a finite number > 0, got ", tau);
}

// Dynamic shared memory of `bytes` for `kernel`, whose static shared memory (red[32]) is at most
// kStaticSmem: past the default 48 KiB in all, it needs the device's opt-in.
constexpr size_t kStaticSmem = 32 * sizeof(double);
template <typename Kernel>
void ensure_smem(Kernel kernel, size_t bytes, int64_t m, const char* what) {
  if (bytes + kStaticSmem <= 48 * 1024) return;
  const auto* prop = at::cuda::getCurrentDeviceProperties();
  TORCH_CHECK(bytes + kStaticSmem <= prop->sharedMemPerBlockOptin, what, " (cuda): m = ", m, " slots need ", bytes,
              " bytes of shared memory per block, more than this device allows (", prop->sharedMemPerBlockOptin,
              "); use the triton or cpu backend");
  C10_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(bytes)));
}

}  // namespace

std::vector<at::Tensor> memory_read_forward(const at::Tensor& q_in, const at::Tensor& mem_in, double tau) {
  check_q_mem(q_in, mem_in);
  check_tau(tau);
  c10::cuda::CUDAGuard guard(q_in.device());
  const at::Tensor q = q_in.contiguous();
  const auto acc = acc_dtype(q.scalar_type());
  const bool mem_native = mem_in.scalar_type() == q.scalar_type();  // else read in acc (converted if need be)
  const at::Tensor mem = (mem_native ? mem_in : mem_in.to(acc)).contiguous();
  const int64_t B = q.size(0), n = q.size(1), C = q.size(2), m = mem.size(1);
  at::Tensor q_hat = at::empty(q.sizes(), q.options());
  at::Tensor attn = at::empty({B, n, m}, q.options().dtype(acc));
  if (B * n == 0) return {q_hat, attn};
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  MDR_DISPATCH_FLOATS(q.scalar_type(), "memory_read_forward_cuda", [&] {
    using acc_type = typename Acc<scalar_t>::type;
    const size_t smem = static_cast<size_t>(padded_slots(m)) * sizeof(acc_type);
    auto launch = [&](auto kernel, const auto* mem_ptr) {
      ensure_smem(kernel, smem, m, "memory_read");
      kernel<<<static_cast<unsigned>(B * n), kThreads, smem, stream>>>(
          q.const_data_ptr<scalar_t>(), mem_ptr, n, m, C, static_cast<acc_type>(tau),
          q_hat.mutable_data_ptr<scalar_t>(), attn.mutable_data_ptr<acc_type>());
      MDR_LAUNCH_CHECK();
    };
    if (mem_native)
      launch(read_forward_kernel<scalar_t, scalar_t, acc_type>, mem.const_data_ptr<scalar_t>());
    else
      launch(read_forward_kernel<scalar_t, acc_type, acc_type>, mem.const_data_ptr<acc_type>());
  });
  return {q_hat, attn};
}

at::Tensor memory_read_backward(const at::Tensor& grad_in, const at::Tensor& q_in, const at::Tensor& mem_in,
                                const at::Tensor& attn_in, double tau) {
  check_q_mem(q_in, mem_in);
  check_tau(tau);
  check_cuda(grad_in, "grad", 3);
  check_same_device(q_in, "q", grad_in, "grad");
  TORCH_CHECK(grad_in.sizes() == q_in.sizes(), "grad must have q's shape ", q_in.sizes(), ", got ", grad_in.sizes());
  check_same_dtype(q_in, "q", grad_in, "grad");
  const auto acc = acc_dtype(q_in.scalar_type());
  check_cuda(attn_in, "attn", 3);
  check_same_device(q_in, "q", attn_in, "attn");
  TORCH_CHECK(attn_in.size(0) == q_in.size(0) && attn_in.size(1) == q_in.size(1) && attn_in.size(2) == mem_in.size(1),
              "attn must have shape (B, n, m) = (", q_in.size(0), ", ", q_in.size(1), ", ", mem_in.size(1),
              "), got ", attn_in.sizes());
  TORCH_CHECK(attn_in.scalar_type() == acc, "attn must be ", acc, " for q of dtype ", q_in.scalar_type(), ", got ",
              attn_in.scalar_type());

  c10::cuda::CUDAGuard guard(q_in.device());
  const at::Tensor grad = grad_in.contiguous(), q = q_in.contiguous(), attn = attn_in.contiguous();
  const bool mem_native = mem_in.scalar_type() == q.scalar_type();  // else read in acc (converted if need be)
  const at::Tensor mem = (mem_native ? mem_in : mem_in.to(acc)).contiguous();
  const int64_t B = q.size(0), n = q.size(1), C = q.size(2), m = mem.size(1);
  at::Tensor grad_q = at::empty(q.sizes(), q.options());
  if (B * n == 0) return grad_q;
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  MDR_DISPATCH_FLOATS(q.scalar_type(), "memory_read_backward_cuda", [&] {
    using acc_type = typename Acc<scalar_t>::type;
    const size_t smem = 3 * static_cast<size_t>(padded_slots(m)) * sizeof(acc_type);
    auto launch = [&](auto kernel, const auto* mem_ptr) {
      ensure_smem(kernel, smem, m, "memory_read_backward");
      kernel<<<static_cast<unsigned>(B * n), kThreads, smem, stream>>>(
          grad.const_data_ptr<scalar_t>(), q.const_data_ptr<scalar_t>(), mem_ptr, attn.const_data_ptr<acc_type>(),
          n, m, C, static_cast<acc_type>(tau), grad_q.mutable_data_ptr<scalar_t>());
      MDR_LAUNCH_CHECK();
    };
    if (mem_native)
      launch(read_backward_kernel<scalar_t, scalar_t, acc_type>, mem.const_data_ptr<scalar_t>());
    else
      launch(read_backward_kernel<scalar_t, acc_type, acc_type>, mem.const_data_ptr<acc_type>());
  });
  return grad_q;
}

at::Tensor memory_update_(at::Tensor& mem, const at::Tensor& q_in, const at::Tensor& v_in, const at::Tensor& present_in,
                          double alpha) {
  check_q_mem(q_in, mem);
  TORCH_CHECK(mem.is_contiguous(), "mem must be contiguous (it is updated in place)");
  check_cuda(v_in, "v", 3);
  checks::floating(v_in, "v");
  check_same_device(mem, "mem", v_in, "v");
  TORCH_CHECK(v_in.sizes() == q_in.sizes(), "v must have q's shape ", q_in.sizes(), ", got ", v_in.sizes());
  check_cuda(present_in, "present", 2);
  check_same_device(mem, "mem", present_in, "present");
  TORCH_CHECK(present_in.size(0) == q_in.size(0) && present_in.size(1) == q_in.size(1),
              "present must have shape (B, n) = (", q_in.size(0), ", ", q_in.size(1), "), got ", present_in.sizes());
  TORCH_CHECK(present_in.scalar_type() == at::kBool, "present must be bool, got ", present_in.scalar_type());
  TORCH_CHECK(alpha >= 0.0 && alpha <= 1.0, "alpha must lie in [0, 1], got ", alpha);

  c10::cuda::CUDAGuard guard(mem.device());
  // The reference takes cosines and means in mem's accumulation dtype: q and v are read in mem's dtype (and
  // converted in registers) when they have it, else converted to the accumulation dtype once.
  const auto acc = acc_dtype(mem.scalar_type());
  const bool native = q_in.scalar_type() == mem.scalar_type() && v_in.scalar_type() == mem.scalar_type();
  const at::Tensor q = (native ? q_in : q_in.to(acc)).contiguous(), v = (native ? v_in : v_in.to(acc)).contiguous();
  const at::Tensor present = present_in.contiguous();
  const int64_t B = q.size(0), n = q.size(1), C = q.size(2), m = mem.size(1);
  at::Tensor slots = at::empty({B, n}, q.options().dtype(at::kLong));
  if (B * n == 0) return slots;
  const int64_t cblocks = (C + kThreads - 1) / kThreads;
  TORCH_CHECK(cblocks <= 65535, "memory_update_ (cuda): C = ", C, " is too large");
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  MDR_DISPATCH_FLOATS(mem.scalar_type(), "memory_update_cuda", [&] {
    using acc_type = typename Acc<scalar_t>::type;
    const size_t smem = static_cast<size_t>(padded_slots(m)) * sizeof(acc_type);
    auto launch = [&](auto argmax, auto apply, const auto* q_ptr, const auto* v_ptr) {
      ensure_smem(argmax, smem, m, "memory_update_");
      argmax<<<static_cast<unsigned>(B * n), kThreads, smem, stream>>>(
          mem.const_data_ptr<scalar_t>(), q_ptr, present.const_data_ptr<bool>(), n, m, C,
          slots.mutable_data_ptr<int64_t>());
      MDR_LAUNCH_CHECK();
      if (cblocks > 0) {
        // As torch evaluates alpha * mem + (1 - alpha) * mean: both Python-float factors rounded to acc.
        const dim3 grid(static_cast<unsigned>(n), static_cast<unsigned>(cblocks));
        apply<<<grid, kThreads, 0, stream>>>(mem.mutable_data_ptr<scalar_t>(), v_ptr, slots.const_data_ptr<int64_t>(),
                                             B, n, m, C, static_cast<acc_type>(alpha),
                                             static_cast<acc_type>(1.0 - alpha));
        MDR_LAUNCH_CHECK();
      }
    };
    if (native)
      launch(update_argmax_kernel<scalar_t, scalar_t, acc_type>, update_apply_kernel<scalar_t, scalar_t, acc_type>,
             q.const_data_ptr<scalar_t>(), v.const_data_ptr<scalar_t>());
    else
      launch(update_argmax_kernel<scalar_t, acc_type, acc_type>, update_apply_kernel<scalar_t, acc_type, acc_type>,
             q.const_data_ptr<acc_type>(), v.const_data_ptr<acc_type>());
  });
  return slots;
}

}  // namespace cuda
}  // namespace mdrnet_fast
