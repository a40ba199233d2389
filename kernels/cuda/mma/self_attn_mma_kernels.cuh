// Tensor-core kernels of sagan::self_attn (float16/bfloat16 in, float32 accumulation and softmax
// statistics), FlashAttention-2 style, reading the channel-first (B, C, N) tensors directly.
//
// Tiles: 4 warps per block, each warp owns 16 rows (queries in the forward and the df kernel, keys in
// the dh and dg kernels) of a 64 x 64 (queries x keys) score tile. Cqk is padded to kCqk (one of the padded sizes
// of self_attn_mma_traits.h) inside shared memory (zero rows), never in a copy; value channels are split across blocks in
// chunks of kDv = 64 (the forward and dh kernels) or looped over in chunks of 64 (dp = dy^T h in the dg
// and df kernels), so Cv has no upper bound. Rows and columns past Nq, Nk, Cv are masked.
//
// Forward, grid (ceil(Nq/64), ceil(Cv/64), B): online softmax over key tiles, cp.async double buffering
//   of the g and h tiles; o = P h^T / l, y = gamma o + x, lse (float64) by the blocks of value chunk 0.
// Backward (p recomputed from the saved lse, split hi + lo as in the CPU kernels):
//   dh kernel, grid (ceil(Nk/64), ceil(Cv/64), B): dh = gamma P^T dy over query tiles;
//   dg kernel, grid (ceil(Nk/64), B): dp over value chunks, ds = p (dp - delta), dg = gamma scale ds^T f,
//     and, unless deterministic, df_accum += ds g with float32 atomics;
//   df kernel, grid (ceil(Nq/64), B) (deterministic mode): df = gamma scale ds g over key tiles, each
//     element summed by one thread in a fixed order.
#pragma once

#include <cuda_runtime.h>

#include <cmath>
#include <cstdint>

#include "kernels/cuda/mma/self_attn_mma_primitives.cuh"
#include "kernels/cuda/mma/self_attn_mma_traits.h"
#include "kernels/cuda/self_attn_cuda.h"
#include "kernels/cuda/self_attn_cuda_numerics.cuh"

namespace sagan::kernels::cuda::mma {

// kThreads, kTile, kLd, kLdF: self_attn_mma_traits.h.
// Scores are handled in base 2 (exp2f), as in the SIMT kernels: see ExpBase in self_attn_cuda_numerics.cuh.
inline constexpr float kLog2e = static_cast<float>(ExpBase<float>::kFromNatural);

// Whether a (B, rows, N) tensor's tiles can be loaded with 16-byte cp.async (the launch plans'
// choice, self_attn_mma_launch_plan.cuh).
inline bool tiles_aligned(const void* ptr, int64_t sb, int64_t sc, int64_t n) {
  return reinterpret_cast<uintptr_t>(ptr) % 16 == 0 && sb % 8 == 0 && sc % 8 == 0 && n % 8 == 0;
}

// Dynamic smem of a kernel: its tiles, or the float output staging that reuses them after the main
// loop, whichever is larger.
constexpr size_t smem_bytes(size_t tiles, size_t staging) { return tiles > staging ? tiles : staging; }

template <typename T>
__device__ __forceinline__ float read_gamma(const void* gamma) {
  return convert<float>(*static_cast<const T*>(gamma));
}

// ---------------------------------------------------------------------------------------------------
// Forward.
template <typename T, int kCqk>
struct FwdSmem {
  static constexpr int kQ = 0;                           // [kCqk][kLd] f tile
  static constexpr int kK = kQ + kCqk * kLd;             // [2][kCqk][kLd] g tiles
  static constexpr int kV = kK + 2 * kCqk * kLd;         // [2][kTile][kLd] h tiles
  static constexpr int kElems = kV + 2 * kTile * kLd;
  // The float output staging (after the key loop) reuses the same memory.
  static constexpr size_t kBytes = smem_bytes(kElems * sizeof(T), kTile * kLdF * sizeof(float));
};

template <typename T, int kCqk>
__global__ void __launch_bounds__(kThreads) self_attn_fwd_mma_kernel(const SelfAttnFwdParams p, bool aligned) {
  using S = FwdSmem<T, kCqk>;
  extern __shared__ __align__(16) unsigned char smem[];
  T* sQ = reinterpret_cast<T*>(smem) + S::kQ;
  T* sK = reinterpret_cast<T*>(smem) + S::kK;
  T* sV = reinterpret_cast<T*>(smem) + S::kV;
  float* sO = reinterpret_cast<float*>(smem);  // [kTile channels][kLdF], after the key loop

  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, gr = lane / 4, tq = lane % 4;
  const int64_t b = blockIdx.z;
  const int q0 = blockIdx.x * kTile, c0 = blockIdx.y * kTile;
  const int Nq = static_cast<int>(p.Nq), Nk = static_cast<int>(p.Nk);
  const int Cqk = static_cast<int>(p.Cqk), Cv = static_cast<int>(p.Cv);

  const T* f = static_cast<const T*>(p.f) + b * p.f_sb + q0;
  const T* g = static_cast<const T*>(p.g) + b * p.g_sb;
  const T* h = static_cast<const T*>(p.h) + b * p.h_sb + c0 * p.h_sc;
  const float scale_log2 = static_cast<float>(p.scale) * kLog2e;
  const int n_kt = (Nk + kTile - 1) / kTile;

  load_tile<T, kCqk, kTile, kLd, kThreads>(sQ, f, p.f_sc, Cqk, Nq - q0, aligned);
  load_tile<T, kCqk, kTile, kLd, kThreads>(sK, g, p.g_sc, Cqk, Nk, aligned);
  load_tile<T, kTile, kTile, kLd, kThreads>(sV, h, p.h_sc, Cv - c0, Nk, aligned);
  cp_async_commit();

  uint32_t qf[kCqk / 16][4];
  float acc[kTile / 8][4];
#pragma unroll
  for (int nt = 0; nt < kTile / 8; ++nt) acc[nt][0] = acc[nt][1] = acc[nt][2] = acc[nt][3] = 0.f;
  // Row statistics of rows gr and gr + 8 of this warp, in log2 units of the scaled logits. m is the
  // running max; l is this thread's part of the running sum (the quad's parts are added at the end).
  float m[2] = {-INFINITY, -INFINITY}, l[2] = {0.f, 0.f};

  for (int kt = 0; kt < n_kt; ++kt) {
    const int cur = kt & 1;
    if (kt + 1 < n_kt) {
      // Buffer cur ^ 1 was last read in iteration kt - 1, which ended with __syncthreads.
      const int k1 = (kt + 1) * kTile;
      load_tile<T, kCqk, kTile, kLd, kThreads>(sK + (cur ^ 1) * kCqk * kLd, g + k1, p.g_sc, Cqk, Nk - k1,
                                               aligned);
      load_tile<T, kTile, kTile, kLd, kThreads>(sV + (cur ^ 1) * kTile * kLd, h + k1, p.h_sc, Cv - c0,
                                                Nk - k1, aligned);
      cp_async_commit();
      cp_async_wait<1>();
    } else {
      cp_async_wait<0>();
    }
    __syncthreads();
    if (kt == 0) {
#pragma unroll
      for (int kb = 0; kb < kCqk / 16; ++kb) load_a_kmajor(qf[kb], sQ, kLd, warp * 16, kb * 16);
    }

    float s[kTile / 8][4];
#pragma unroll
    for (int nt = 0; nt < kTile / 8; ++nt) s[nt][0] = s[nt][1] = s[nt][2] = s[nt][3] = 0.f;
    warp_gemm_regs_a<T, kCqk / 16, kTile>(s, qf, sK + cur * kCqk * kLd, kLd);

    // Online softmax. Keys past Nk get -inf. A row whose logits so far are all -inf keeps m = -inf and
    // uses 0 as its reference (so masked keys give exp2(-inf) = 0, not NaN); a row that is -inf
    // everywhere ends with l = 0 and o = 0 / 0 = NaN, as softmax gives. +inf or NaN logits give NaN.
    const int kbase = kt * kTile;
    float mx[2] = {-INFINITY, -INFINITY};
#pragma unroll
    for (int nt = 0; nt < kTile / 8; ++nt) {
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int key = kbase + nt * 8 + 2 * tq + (e & 1);
        const float v = key < Nk ? s[nt][e] * scale_log2 : -INFINITY;
        s[nt][e] = v;
        mx[e >> 1] = fmaxf(mx[e >> 1], v);
      }
    }
    float ref[2], alpha[2];
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      const float m_new = fmaxf(m[r], warp_allreduce_max<4>(mx[r]));
      ref[r] = m_new == -INFINITY ? 0.f : m_new;
      alpha[r] = exp2f(m[r] - ref[r]);
      m[r] = m_new;
    }
    float rowsum[2] = {0.f, 0.f};
#pragma unroll
    for (int nt = 0; nt < kTile / 8; ++nt) {
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        s[nt][e] = exp2f(s[nt][e] - ref[e >> 1]);
        rowsum[e >> 1] += s[nt][e];
      }
    }
#pragma unroll
    for (int r = 0; r < 2; ++r) l[r] = l[r] * alpha[r] + rowsum[r];
#pragma unroll
    for (int nt = 0; nt < kTile / 8; ++nt) {
      acc[nt][0] *= alpha[0];
      acc[nt][1] *= alpha[0];
      acc[nt][2] *= alpha[1];
      acc[nt][3] *= alpha[1];
    }
    // acc (16 queries x 64 channels) += P (16 x 64 keys) h^T; sV holds h as [channel][key].
    warp_gemm_acc_a<T, kTile, kTile>(acc, s, sV + cur * kTile * kLd, kLd);
    __syncthreads();
  }

  float inv[2];
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    l[r] = warp_allreduce_sum<4>(l[r]);
    inv[r] = 1.f / l[r];
  }
  if (blockIdx.y == 0 && tq == 0) {
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      const int q = q0 + warp * 16 + gr + 8 * r;
      if (q < Nq) {
        const double ref_r = m[r] == -INFINITY ? 0.0 : static_cast<double>(m[r]);
        p.lse[b * p.Nq + q] = (ref_r + ExpBase<float>::log(static_cast<double>(l[r]))) * ExpBase<float>::kToNatural;
      }
    }
  }
  // The last iteration ended with __syncthreads: the tiles are free for the output staging.
  stage_transposed<kTile>(sO, kLdF, acc, warp * 16, inv[0], inv[1]);
  __syncthreads();

  const float gamma = read_gamma<T>(p.gamma);
  T* o = static_cast<T*>(p.o);
  T* y = static_cast<T*>(p.y);
  const T* x = static_cast<const T*>(p.x);
  for (int i = threadIdx.x; i < kTile * kTile; i += kThreads) {
    const int c = i / kTile, q = i % kTile;
    if (c0 + c >= Cv || q0 + q >= Nq) continue;
    const float ov = sO[c * kLdF + q];
    const int64_t idx = (b * p.Cv + c0 + c) * p.Nq + q0 + q;
    float yv = gamma * ov;
    if (x != nullptr) yv += convert<float>(x[b * p.x_sb + (c0 + c) * p.x_sc + q0 + q]);
    o[idx] = convert<T>(ov);
    y[idx] = convert<T>(yv);
  }
}

// ---------------------------------------------------------------------------------------------------
// Backward, shared pieces.

// Stages lse (split hi + lo in float) and delta of queries [q0, q0 + kTile) into smem; 0 past Nq.
template <typename T>
__device__ __forceinline__ void stage_row_stats(float* s_lse_hi, float* s_lse_lo, float* s_delta,
                                                const SelfAttnBackwardParams& p, int64_t b, int q0) {
  for (int i = threadIdx.x; i < kTile; i += kThreads) {
    const int64_t q = q0 + i;
    float hi = 0.f, lo = 0.f, d = 0.f;
    if (q < p.Nq) {
      split_lse(p.lse[b * p.Nq + q], hi, lo);
      d = static_cast<const float*>(p.delta)[b * p.Nq + q];
    }
    s_lse_hi[i] = hi;
    s_lse_lo[i] = lo;
    s_delta[i] = d;
  }
}

// p = exp(scale s - lse) in base 2, with lse (log2 units) = hi + lo: the scaled score is computed as in
// the forward (s * scale log2 e), and (that - hi) is exact for large logits near lse.
__device__ __forceinline__ float prob(float s, float scale_log2, float hi, float lo) {
  return exp2f((s * scale_log2 - hi) - lo);
}

// ---------------------------------------------------------------------------------------------------
// dh kernel: grid (ceil(Nk/64), ceil(Cv/64), B); warp w owns keys k0 + 16w .. + 15.
template <typename T, int kCqk>
struct DhSmem {
  static constexpr int kK = 0;                       // [kCqk][kLd] g tile (fixed)
  static constexpr int kQ = kK + kCqk * kLd;         // [kCqk][kLd] f tile
  static constexpr int kDy = kQ + kCqk * kLd;        // [kTile][kLd] dy tile (channels x queries)
  static constexpr int kElems = kDy + kTile * kLd;
  static constexpr size_t kStats = (kElems * sizeof(T) + 15) / 16 * 16;  // 3 x kTile floats
  static constexpr size_t kBytes = smem_bytes(kStats + 3 * kTile * sizeof(float), kTile * kLdF * sizeof(float));
};

template <typename T, int kCqk>
__global__ void __launch_bounds__(kThreads) self_attn_backward_dh_mma_kernel(const SelfAttnBackwardParams p, bool aligned) {
  using S = DhSmem<T, kCqk>;
  extern __shared__ __align__(16) unsigned char smem[];
  T* sK = reinterpret_cast<T*>(smem) + S::kK;
  T* sQ = reinterpret_cast<T*>(smem) + S::kQ;
  T* sDy = reinterpret_cast<T*>(smem) + S::kDy;
  float* s_hi = reinterpret_cast<float*>(smem + S::kStats);
  float* s_lo = s_hi + kTile;
  float* s_delta = s_lo + kTile;
  float* sOut = reinterpret_cast<float*>(smem);

  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, gr = lane / 4, tq = lane % 4;
  const int64_t b = blockIdx.z;
  const int k0 = blockIdx.x * kTile, c0 = blockIdx.y * kTile;
  const int Nq = static_cast<int>(p.Nq), Nk = static_cast<int>(p.Nk);
  const int Cqk = static_cast<int>(p.Cqk), Cv = static_cast<int>(p.Cv);
  const float scale = static_cast<float>(p.scale), scale_log2 = scale * kLog2e;

  const T* f = static_cast<const T*>(p.f) + b * p.f_sb;
  const T* g = static_cast<const T*>(p.g) + b * p.g_sb + k0;
  const T* dy = static_cast<const T*>(p.dy) + b * p.dy_sb + c0 * p.dy_sc;

  load_tile<T, kCqk, kTile, kLd, kThreads>(sK, g, p.g_sc, Cqk, Nk - k0, aligned);

  uint32_t kf[kCqk / 16][4];
  float acc[kTile / 8][4];  // dh^T: 16 keys x 64 channels
#pragma unroll
  for (int nt = 0; nt < kTile / 8; ++nt) acc[nt][0] = acc[nt][1] = acc[nt][2] = acc[nt][3] = 0.f;

  const int n_qt = (Nq + kTile - 1) / kTile;
  for (int qt = 0; qt < n_qt; ++qt) {
    const int q0 = qt * kTile;
    load_tile<T, kCqk, kTile, kLd, kThreads>(sQ, f + q0, p.f_sc, Cqk, Nq - q0, aligned);
    load_tile<T, kTile, kTile, kLd, kThreads>(sDy, dy + q0, p.dy_sc, Cv - c0, Nq - q0, aligned);
    cp_async_commit();
    stage_row_stats<T>(s_hi, s_lo, s_delta, p, b, q0);
    cp_async_wait<0>();
    __syncthreads();
    if (qt == 0) {
#pragma unroll
      for (int kb = 0; kb < kCqk / 16; ++kb) load_a_kmajor(kf[kb], sK, kLd, warp * 16, kb * 16);
    }
    // s^T: 16 keys x 64 queries.
    float s[kTile / 8][4];
#pragma unroll
    for (int nt = 0; nt < kTile / 8; ++nt) s[nt][0] = s[nt][1] = s[nt][2] = s[nt][3] = 0.f;
    warp_gemm_regs_a<T, kCqk / 16, kTile>(s, kf, sQ, kLd);
#pragma unroll
    for (int nt = 0; nt < kTile / 8; ++nt) {
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int q = nt * 8 + 2 * tq + (e & 1), key = warp * 16 + gr + 8 * (e >> 1);
        s[nt][e] = (q0 + q < Nq && k0 + key < Nk) ? prob(s[nt][e], scale_log2, s_hi[q], s_lo[q]) : 0.f;
      }
    }
    // dh^T (16 keys x 64 channels) += P^T (16 x 64 queries) dy^T; sDy holds dy as [channel][query].
    warp_gemm_acc_a<T, kTile, kTile>(acc, s, sDy, kLd);
    __syncthreads();
  }

  const float gamma = read_gamma<T>(p.gamma);
  stage_transposed<kTile>(sOut, kLdF, acc, warp * 16, gamma, gamma);
  __syncthreads();
  T* dh = static_cast<T*>(p.dh);
  for (int i = threadIdx.x; i < kTile * kTile; i += kThreads) {
    const int c = i / kTile, key = i % kTile;
    if (c0 + c < Cv && k0 + key < Nk)
      dh[(b * p.Cv + c0 + c) * p.Nk + k0 + key] = convert<T>(sOut[c * kLdF + key]);
  }
}

// ---------------------------------------------------------------------------------------------------
// dg kernel (and df by atomics): grid (ceil(Nk/64), B); warp w owns keys k0 + 16w .. + 15.
template <typename T, int kCqk>
struct DgSmem {
  static constexpr int kK = 0;                       // [kCqk][kLd] g tile (fixed)
  static constexpr int kQ = kK + kCqk * kLd;         // [kCqk][kLd] f tile
  static constexpr int kH = kQ + kCqk * kLd;         // [kTile][kLd] h chunk (channels x keys)
  static constexpr int kDy = kH + kTile * kLd;       // [kTile][kLd] dy chunk (channels x queries)
  static constexpr int kDs = kDy + kTile * kLd;      // [kTile][kLd] ds^T (keys x queries)
  static constexpr int kElems = kDs + kTile * kLd;
  static constexpr size_t kStats = (kElems * sizeof(T) + 15) / 16 * 16;
  static constexpr size_t kBytes = smem_bytes(kStats + 3 * kTile * sizeof(float), kCqk * kLdF * sizeof(float));
};

template <typename T, int kCqk>
__global__ void __launch_bounds__(kThreads) self_attn_backward_dg_mma_kernel(const SelfAttnBackwardParams p, bool aligned,
                                                                         bool atomic_df) {
  using S = DgSmem<T, kCqk>;
  extern __shared__ __align__(16) unsigned char smem[];
  T* sK = reinterpret_cast<T*>(smem) + S::kK;
  T* sQ = reinterpret_cast<T*>(smem) + S::kQ;
  T* sH = reinterpret_cast<T*>(smem) + S::kH;
  T* sDy = reinterpret_cast<T*>(smem) + S::kDy;
  T* sDs = reinterpret_cast<T*>(smem) + S::kDs;
  float* s_hi = reinterpret_cast<float*>(smem + S::kStats);
  float* s_lo = s_hi + kTile;
  float* s_delta = s_lo + kTile;
  float* sOut = reinterpret_cast<float*>(smem);

  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, gr = lane / 4, tq = lane % 4;
  const int64_t b = blockIdx.y;
  const int k0 = blockIdx.x * kTile;
  const int Nq = static_cast<int>(p.Nq), Nk = static_cast<int>(p.Nk);
  const int Cqk = static_cast<int>(p.Cqk), Cv = static_cast<int>(p.Cv);
  const float scale = static_cast<float>(p.scale), scale_log2 = scale * kLog2e;

  const T* f = static_cast<const T*>(p.f) + b * p.f_sb;
  const T* g = static_cast<const T*>(p.g) + b * p.g_sb + k0;
  const T* h = static_cast<const T*>(p.h) + b * p.h_sb + k0;
  const T* dy = static_cast<const T*>(p.dy) + b * p.dy_sb;
  float* df_accum = static_cast<float*>(p.df_accum);

  load_tile<T, kCqk, kTile, kLd, kThreads>(sK, g, p.g_sc, Cqk, Nk - k0, aligned);

  uint32_t kf[kCqk / 16][4];
  float dk[kCqk / 8][4];  // dg^T: 16 keys x kCqk channels
#pragma unroll
  for (int nt = 0; nt < kCqk / 8; ++nt) dk[nt][0] = dk[nt][1] = dk[nt][2] = dk[nt][3] = 0.f;

  const int n_qt = (Nq + kTile - 1) / kTile, n_cc = (Cv + kTile - 1) / kTile;
  for (int qt = 0; qt < n_qt; ++qt) {
    const int q0 = qt * kTile;
    load_tile<T, kCqk, kTile, kLd, kThreads>(sQ, f + q0, p.f_sc, Cqk, Nq - q0, aligned);
    stage_row_stats<T>(s_hi, s_lo, s_delta, p, b, q0);

    // dp^T (16 keys x 64 queries) = h^T dy over value chunks.
    float dp[kTile / 8][4];
#pragma unroll
    for (int nt = 0; nt < kTile / 8; ++nt) dp[nt][0] = dp[nt][1] = dp[nt][2] = dp[nt][3] = 0.f;
    for (int cc = 0; cc < n_cc; ++cc) {
      const int c0 = cc * kTile;
      load_tile<T, kTile, kTile, kLd, kThreads>(sH, h + c0 * p.h_sc, p.h_sc, Cv - c0, Nk - k0, aligned);
      load_tile<T, kTile, kTile, kLd, kThreads>(sDy, dy + c0 * p.dy_sc + q0, p.dy_sc, Cv - c0, Nq - q0,
                                                aligned);
      cp_async_commit();
      cp_async_wait<0>();
      __syncthreads();
      if (qt == 0 && cc == 0) {
#pragma unroll
        for (int kb = 0; kb < kCqk / 16; ++kb) load_a_kmajor(kf[kb], sK, kLd, warp * 16, kb * 16);
      }
#pragma unroll
      for (int kb = 0; kb < kTile / 16; ++kb) {
        uint32_t a[4];
        load_a_kmajor(a, sH, kLd, warp * 16, kb * 16);  // A = h^T: [channel][key] is kmajor
#pragma unroll
        for (int np = 0; np < kTile / 16; ++np) {
          uint32_t bb[4];
          load_b_kmajor(bb, sDy, kLd, kb * 16, np * 16);  // B = dy: [channel][query]
          Elem<T>::mma(dp[2 * np], a, bb[0], bb[1]);
          Elem<T>::mma(dp[2 * np + 1], a, bb[2], bb[3]);
        }
      }
      __syncthreads();  // before the next chunk overwrites sH, sDy
    }

    // s^T, p^T, ds^T = p^T (dp^T - delta): 16 keys x 64 queries. Masked entries are 0.
    float ds[kTile / 8][4];
#pragma unroll
    for (int nt = 0; nt < kTile / 8; ++nt) ds[nt][0] = ds[nt][1] = ds[nt][2] = ds[nt][3] = 0.f;
    warp_gemm_regs_a<T, kCqk / 16, kTile>(ds, kf, sQ, kLd);
#pragma unroll
    for (int nt = 0; nt < kTile / 8; ++nt) {
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int q = nt * 8 + 2 * tq + (e & 1), key = warp * 16 + gr + 8 * (e >> 1);
        ds[nt][e] = (q0 + q < Nq && k0 + key < Nk)
                        ? prob(ds[nt][e], scale_log2, s_hi[q], s_lo[q]) * (dp[nt][e] - s_delta[q])
                        : 0.f;
      }
    }
    // dg^T (16 keys x kCqk) += ds^T (16 x 64 queries) f^T; sQ holds f as [channel][query].
    warp_gemm_acc_a<T, kTile, kCqk>(dk, ds, sQ, kLd);

    if (atomic_df) {
      // df_accum[c, q] += sum_key g[c, key] ds^T[key, q]: ds^T goes through smem (C layout -> B layout).
#pragma unroll
      for (int nt = 0; nt < kTile / 8; ++nt) {
        const int q = nt * 8 + 2 * tq, key = warp * 16 + gr;
        *reinterpret_cast<uint32_t*>(sDs + key * kLd + q) = Elem<T>::pack(ds[nt][0], ds[nt][1]);
        *reinterpret_cast<uint32_t*>(sDs + (key + 8) * kLd + q) = Elem<T>::pack(ds[nt][2], ds[nt][3]);
      }
      __syncthreads();
      // Warp w: df^T block kCqk channels x queries 16w .. 16w + 15.
      float dq[kCqk / 16][2][4];
#pragma unroll
      for (int mt = 0; mt < kCqk / 16; ++mt)
#pragma unroll
        for (int nt = 0; nt < 2; ++nt) dq[mt][nt][0] = dq[mt][nt][1] = dq[mt][nt][2] = dq[mt][nt][3] = 0.f;
#pragma unroll
      for (int kk = 0; kk < kTile / 16; ++kk) {
        uint32_t bb[4];
        load_b_kmajor(bb, sDs, kLd, kk * 16, warp * 16);  // B = ds^T: [key][query]
#pragma unroll
        for (int mt = 0; mt < kCqk / 16; ++mt) {
          uint32_t a[4];
          load_a_mmajor(a, sK, kLd, mt * 16, kk * 16);  // A = g: [channel][key]
          Elem<T>::mma(dq[mt][0], a, bb[0], bb[1]);
          Elem<T>::mma(dq[mt][1], a, bb[2], bb[3]);
        }
      }
#pragma unroll
      for (int mt = 0; mt < kCqk / 16; ++mt) {
#pragma unroll
        for (int nt = 0; nt < 2; ++nt) {
#pragma unroll
          for (int e = 0; e < 4; ++e) {
            const int c = mt * 16 + gr + 8 * (e >> 1), q = q0 + warp * 16 + nt * 8 + 2 * tq + (e & 1);
            if (c < Cqk && q < Nq) atomicAdd(df_accum + (b * p.Cqk + c) * p.Nq + q, dq[mt][nt][e]);
          }
        }
      }
    }
    __syncthreads();  // before the next query tile overwrites sQ, the stats and sDs
  }

  const float mul = read_gamma<T>(p.gamma) * scale;
  stage_transposed<kCqk>(sOut, kLdF, dk, warp * 16, mul, mul);
  __syncthreads();
  T* dg = static_cast<T*>(p.dg);
  for (int i = threadIdx.x; i < kCqk * kTile; i += kThreads) {
    const int c = i / kTile, key = i % kTile;
    if (c < Cqk && k0 + key < Nk)
      dg[(b * p.Cqk + c) * p.Nk + k0 + key] = convert<T>(sOut[c * kLdF + key]);
  }
}

// ---------------------------------------------------------------------------------------------------
// df kernel (deterministic mode): grid (ceil(Nq/64), B); warp w owns queries q0 + 16w .. + 15.
template <typename T, int kCqk>
struct DfSmem {
  static constexpr int kQ = 0;                       // [kCqk][kLd] f tile (fixed)
  static constexpr int kK = kQ + kCqk * kLd;         // [kCqk][kLd] g tile
  static constexpr int kH = kK + kCqk * kLd;         // [kTile][kLd] h chunk (channels x keys)
  static constexpr int kDy = kH + kTile * kLd;       // [kTile][kLd] dy chunk (channels x queries)
  static constexpr int kElems = kDy + kTile * kLd;
  static constexpr size_t kStats = (kElems * sizeof(T) + 15) / 16 * 16;
  static constexpr size_t kBytes = smem_bytes(kStats + 3 * kTile * sizeof(float), kCqk * kLdF * sizeof(float));
};

template <typename T, int kCqk>
__global__ void __launch_bounds__(kThreads) self_attn_backward_df_mma_kernel(const SelfAttnBackwardParams p, bool aligned) {
  using S = DfSmem<T, kCqk>;
  extern __shared__ __align__(16) unsigned char smem[];
  T* sQ = reinterpret_cast<T*>(smem) + S::kQ;
  T* sK = reinterpret_cast<T*>(smem) + S::kK;
  T* sH = reinterpret_cast<T*>(smem) + S::kH;
  T* sDy = reinterpret_cast<T*>(smem) + S::kDy;
  float* s_hi = reinterpret_cast<float*>(smem + S::kStats);
  float* s_lo = s_hi + kTile;
  float* s_delta = s_lo + kTile;
  float* sOut = reinterpret_cast<float*>(smem);

  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, gr = lane / 4, tq = lane % 4;
  const int64_t b = blockIdx.y;
  const int q0 = blockIdx.x * kTile;
  const int Nq = static_cast<int>(p.Nq), Nk = static_cast<int>(p.Nk);
  const int Cqk = static_cast<int>(p.Cqk), Cv = static_cast<int>(p.Cv);
  const float scale = static_cast<float>(p.scale), scale_log2 = scale * kLog2e;

  const T* f = static_cast<const T*>(p.f) + b * p.f_sb + q0;
  const T* g = static_cast<const T*>(p.g) + b * p.g_sb;
  const T* h = static_cast<const T*>(p.h) + b * p.h_sb;
  const T* dy = static_cast<const T*>(p.dy) + b * p.dy_sb + q0;

  load_tile<T, kCqk, kTile, kLd, kThreads>(sQ, f, p.f_sc, Cqk, Nq - q0, aligned);
  stage_row_stats<T>(s_hi, s_lo, s_delta, p, b, q0);

  uint32_t qf[kCqk / 16][4];
  float dq[kCqk / 8][4];  // df^T: 16 queries x kCqk channels
#pragma unroll
  for (int nt = 0; nt < kCqk / 8; ++nt) dq[nt][0] = dq[nt][1] = dq[nt][2] = dq[nt][3] = 0.f;

  const int n_kt = (Nk + kTile - 1) / kTile, n_cc = (Cv + kTile - 1) / kTile;
  for (int kt = 0; kt < n_kt; ++kt) {
    const int k0 = kt * kTile;
    load_tile<T, kCqk, kTile, kLd, kThreads>(sK, g + k0, p.g_sc, Cqk, Nk - k0, aligned);

    // dp (16 queries x 64 keys) = dy^T h over value chunks.
    float dp[kTile / 8][4];
#pragma unroll
    for (int nt = 0; nt < kTile / 8; ++nt) dp[nt][0] = dp[nt][1] = dp[nt][2] = dp[nt][3] = 0.f;
    for (int cc = 0; cc < n_cc; ++cc) {
      const int c0 = cc * kTile;
      load_tile<T, kTile, kTile, kLd, kThreads>(sH, h + c0 * p.h_sc + k0, p.h_sc, Cv - c0, Nk - k0, aligned);
      load_tile<T, kTile, kTile, kLd, kThreads>(sDy, dy + c0 * p.dy_sc, p.dy_sc, Cv - c0, Nq - q0, aligned);
      cp_async_commit();
      cp_async_wait<0>();
      __syncthreads();
      if (kt == 0 && cc == 0) {
#pragma unroll
        for (int kb = 0; kb < kCqk / 16; ++kb) load_a_kmajor(qf[kb], sQ, kLd, warp * 16, kb * 16);
      }
#pragma unroll
      for (int kb = 0; kb < kTile / 16; ++kb) {
        uint32_t a[4];
        load_a_kmajor(a, sDy, kLd, warp * 16, kb * 16);  // A = dy^T: [channel][query] is kmajor
#pragma unroll
        for (int np = 0; np < kTile / 16; ++np) {
          uint32_t bb[4];
          load_b_kmajor(bb, sH, kLd, kb * 16, np * 16);  // B = h: [channel][key]
          Elem<T>::mma(dp[2 * np], a, bb[0], bb[1]);
          Elem<T>::mma(dp[2 * np + 1], a, bb[2], bb[3]);
        }
      }
      __syncthreads();
    }

    // s, p, ds = p (dp - delta): 16 queries x 64 keys, rows are queries.
    float ds[kTile / 8][4];
#pragma unroll
    for (int nt = 0; nt < kTile / 8; ++nt) ds[nt][0] = ds[nt][1] = ds[nt][2] = ds[nt][3] = 0.f;
    warp_gemm_regs_a<T, kCqk / 16, kTile>(ds, qf, sK, kLd);
#pragma unroll
    for (int nt = 0; nt < kTile / 8; ++nt) {
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int q = warp * 16 + gr + 8 * (e >> 1), key = nt * 8 + 2 * tq + (e & 1);
        ds[nt][e] = (q0 + q < Nq && k0 + key < Nk)
                        ? prob(ds[nt][e], scale_log2, s_hi[q], s_lo[q]) * (dp[nt][e] - s_delta[q])
                        : 0.f;
      }
    }
    // df^T (16 queries x kCqk) += ds (16 x 64 keys) g^T; sK holds g as [channel][key].
    warp_gemm_acc_a<T, kTile, kCqk>(dq, ds, sK, kLd);
    __syncthreads();  // before the next key tile overwrites sK
  }

  const float mul = read_gamma<T>(p.gamma) * scale;
  stage_transposed<kCqk>(sOut, kLdF, dq, warp * 16, mul, mul);
  __syncthreads();
  T* df = static_cast<T*>(p.df);
  for (int i = threadIdx.x; i < kCqk * kTile; i += kThreads) {
    const int c = i / kTile, q = i % kTile;
    if (c < Cqk && q0 + q < Nq)
      df[(b * p.Cqk + c) * p.Nq + q0 + q] = convert<T>(sOut[c * kLdF + q]);
  }
}

}  // namespace sagan::kernels::cuda::mma
