// SIMT kernels of the double backward of sagan::self_attn (the backward's VJP, for gradient penalties:
// R1, WGAN-GP), every dtype; T is the storage type, Acc the compute type (float for float/half/bfloat16,
// double for double). The math and its derivation are at the top of
// kernels/cpu/self_attn_cpu_double_backward_kernel.h; per batch, with x_i column i of a (C, N) tensor,
// p_ij = exp(s_ij - lse_i) recomputed from the forward's float64 lse, and the cotangents uf, ug, uh,
// ugamma of the backward's df, dg, dh, dgamma:
//   dp_ij = dy_i . h_j,   B_ij = scale (uf_i . g_j + f_i . ug_j),   E_ij = dy_i . uh_j,
//   row statistics D_i = dy_i . o_i,  R_i = sum_j p_ij B_ij,  P_i = sum_j p_ij dp_ij B_ij,  Q_i = sum_j p_ij E_ij,
//   a_i = ugamma - gamma R_i,   c_i = gamma (P_i + Q_i - 2 D_i R_i) + ugamma D_i,
//   W_ij = gamma p_ij (dp_ij - D_i)  (gamma ds),   G_ij = p_ij (gamma (dp_ij - D_i) B_ij + gamma E_ij + a_i dp_ij - c_i),
//   d_f_i  = scale sum_j (W_ij ug_j + G_ij g_j),       d_g_j = scale sum_i (W_ij uf_i + G_ij f_i),
//   d_dy_i = sum_j gamma p_ij (B_ij h_j + uh_j) + a_i o_i,   d_h_j = sum_i p_ij (gamma B_ij + a_i) dy_i,
//   d_gamma = sum_i (P_i - D_i R_i + Q_i).
//
// Kernels (256 threads, 64 x 64 score tiles and the tile helpers of self_attn_simt_kernel.cuh), launched
// in this order by self_attn_simt_launch.cuh, between D and d_gamma (self_attn_backward_rowstats.cuh):
//   stats: grid (query tiles, 1, B): R, P, Q over the key tiles, each thread summing its 4 keys of every
//          tile, then the 16 threads of a row in a fixed shuffle tree.
//   d_f:   grid (query tiles, Cqk chunks, B) and d_dy: grid (query tiles, Cv chunks, B): loop over key tiles.
//   d_g:   grid (key tiles, Cqk chunks, B) and d_h: grid (key tiles, Cv chunks, B): loop over query tiles.
// Each output element is owned by one block and summed in a fixed order: no atomics, bitwise identical
// run to run. No Nq x Nk buffer: each kernel recomputes the tiles it needs (p and B, Cqk-deep, for all;
// dp and E, Cv-deep, only for stats, d_f and d_g). p comes from lse exactly as in the backward
// (probs_from_lse: base 2 for float, hi + lo split of the float64 lse), so it is the forward's.
// The two products of d_f, d_dy and d_g run one after the other through one operand buffer V and one
// weight tile W, which keeps the shared memory at 35 KB (float, 64 channels), 52 KB (float, 128) and
// 70 KB (double, 64) for every kernel.
//
// Masking: positions past Nq or Nk and channels past Cqk or Cv are staged as zeros, and every weight
// (W, G and the products' other weights) of a position out of range is set to 0 by index, as the
// backward's ds. A -inf logit (masked, or overflowing in the kernel's precision) has p = 0, so its
// weights are 0 whatever its B and dp (as long as they are finite).
//
// Each kernel body is a __device__ function of (params, shared memory, thread and block indices), run
// on the CPU by the host emulation (tests/emulation/simt); the __global__ kernel is a thin wrapper.
#pragma once

#include <cstdint>

#include "kernels/cuda/self_attn_cuda_numerics.cuh"
#include "kernels/cuda/simt/self_attn_simt_kernel.cuh"
#include "kernels/cuda/simt/self_attn_simt_traits.h"
#include "kernels/self_attn_params.h"

namespace sagan::kernels::cuda::simt {

// The five kernels of the double backward, one template (self_attn_simt_double_backward_kernel).
enum class DoubleBackwardPart { kStats, kDf, kDdy, kDg, kDh };

constexpr int max_of(int a, int b) { return a > b ? a : b; }

// Shared memory of the output kernels (offsets in Acc elements): a region U that holds, in turn, the
// score chunks As, Bs of dot_tile, the operand tile V of a product ([BC][64 + pad] channels x positions,
// or transposed [64][BC + pad]) and the output staging os ([BC][64 + pad]); and the weight tile W
// [64 queries][64 keys + pad] (row-major like a score tile). The stats kernel uses As, Bs only.
template <typename Acc, int VC>
struct DoubleBackwardSmem {
  static constexpr int kBC = VC * kTx;
  static constexpr int kLdW = kBlockK + kPad;
  static constexpr int kLdV = kBlockK + kPad;   // channels x positions (product_nt)
  static constexpr int kLdVT = kBC + kPad;      // positions x channels (product_tn)
  static constexpr int kLdO = kBlockK + kPad;
  static constexpr int kA = 0;
  static constexpr int kB = kA + kChunk * kBlockQ;
  static constexpr int kDots = kB + kChunk * kBlockK;
  static constexpr int kU = 0;
  static constexpr int kUElems = max_of(max_of(kDots, kBC * kLdV), max_of(kBlockQ * kLdVT, kBC * kLdO));
  static constexpr int kW = kUElems;
  static constexpr int kElems = kW + kBlockQ * kLdW;
  static constexpr size_t kBytes = sizeof(Acc) * kElems;
  static constexpr size_t kStatsBytes = sizeof(Acc) * kDots;
};

// The per-row constants of one query q (0 past Nq): D, c and a of the formulas above, from the row
// statistics rowstats = D, R, P, Q (each (B, Nq), accumulate dtype).
template <typename Acc>
struct SecondOrderRow {
  Acc d = Acc(0), c = Acc(0), a = Acc(0);
  __device__ __forceinline__ void load(const Acc* __restrict__ stats, int64_t BNq, int64_t row,
                                       bool valid, Acc gamma, Acc ugamma) {
    if (!valid) return;
    const Acc D = stats[row], R = stats[BNq + row], P = stats[2 * BNq + row], Q = stats[3 * BNq + row];
    d = D;
    c = gamma * (P + Q - Acc(2) * D * R) + ugamma * D;
    a = ugamma - gamma * R;
  }
};

// The tiles p (from lse) and B = scale (uf^T g + f^T ug) of queries q0 + ty*4 + i, keys k0 + tx*4 + j
// (0 out of range): three Cqk-deep dot_tiles (barriers inside; see dot_tile).
template <typename T, typename Acc>
__device__ __forceinline__ void probs_and_b(Acc (&pr)[4][4], Acc (&bm)[4][4],
                                            const SelfAttnDoubleBackwardParams& p, int64_t b, int64_t q0,
                                            int64_t k0, Acc scale_exp, Acc scale, Acc* As, Acc* Bs,
                                            int tid) {
  const int tx = tid % kTx, ty = tid / kTx;
  const T* fb = static_cast<const T*>(p.f) + b * p.f_sb;
  const T* gb = static_cast<const T*>(p.g) + b * p.g_sb;
  const T* ufb = static_cast<const T*>(p.uf) + b * p.Cqk * p.Nq;  // contiguous cotangents
  const T* ugb = static_cast<const T*>(p.ug) + b * p.Cqk * p.Nk;
  // B first: its two halves are live together, p not yet (fewer live registers).
  dot_tile(bm, ufb, p.Nq, q0, p.Nq, gb, p.g_sc, k0, p.Nk, p.Cqk, As, Bs, tid);
  dot_tile(pr, fb, p.f_sc, q0, p.Nq, ugb, p.Nk, k0, p.Nk, p.Cqk, As, Bs, tid);
#pragma unroll
  for (int i = 0; i < 4; ++i)
#pragma unroll
    for (int j = 0; j < 4; ++j) bm[i][j] = scale * (bm[i][j] + pr[i][j]);
  dot_tile(pr, fb, p.f_sc, q0, p.Nq, gb, p.g_sc, k0, p.Nk, p.Cqk, As, Bs, tid);
  probs_from_lse(pr, p.lse + b * p.Nq, q0, p.Nq, k0, p.Nk, scale_exp, ty, tx);
}

// The Cv-deep tile dy^T v (v = h: dp; v = uh: E), queries q0 + ty*4 + i, keys k0 + tx*4 + j.
template <typename T, typename Acc>
__device__ __forceinline__ void dy_dot(Acc (&out)[4][4], const SelfAttnDoubleBackwardParams& p, int64_t b,
                                       int64_t q0, int64_t k0, const T* vb, int64_t v_sc, Acc* As,
                                       Acc* Bs, int tid) {
  dot_tile(out, static_cast<const T*>(p.dy) + b * p.dy_sb, p.dy_sc, q0, p.Nq, vb, v_sc, k0, p.Nk, p.Cv,
           As, Bs, tid);
}

// The weights of d_f and d_g for one (query tile, key tile): W = gamma ds into the shared tile w (the
// thread's own slots, no barrier needed before it reads them back), G returned in pr. rows[i] are the
// constants of query q0 + ty*4 + i. Uses As, Bs (dp and E) and bm as scratch.
template <typename T, typename Acc>
__device__ __forceinline__ void ds_weights(Acc (&pr)[4][4], Acc (&bm)[4][4], Acc* w,
                                           const SecondOrderRow<Acc> (&rows)[4],
                                           const SelfAttnDoubleBackwardParams& p, int64_t b, int64_t q0,
                                           int64_t k0, Acc gamma, Acc* As, Acc* Bs, int tid) {
  constexpr int LDW = kBlockK + kPad;
  const int tx = tid % kTx, ty = tid / kTx;
  {
    Acc dp[4][4];
    dy_dot<T, Acc>(dp, p, b, q0, k0, static_cast<const T*>(p.h) + b * p.h_sb, p.h_sc, As, Bs, tid);
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      const bool qv = q0 + ty * 4 + i < p.Nq;
      Acc wv[4];
#pragma unroll
      for (int j = 0; j < 4; ++j) {
        const bool kv = k0 + tx * 4 + j < p.Nk;
        const Acc ddp = dp[i][j] - rows[i].d;
        wv[j] = (qv && kv) ? gamma * pr[i][j] * ddp : Acc(0);
        bm[i][j] = gamma * ddp * bm[i][j] + rows[i].a * dp[i][j];  // G's terms but E and c
      }
      sts4(w + (ty * 4 + i) * LDW + tx * 4, wv[0], wv[1], wv[2], wv[3]);
    }
  }
  Acc e[4][4];
  dy_dot<T, Acc>(e, p, b, q0, k0, static_cast<const T*>(p.uh) + b * p.Cv * p.Nk, p.Nk, As, Bs, tid);
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const bool qv = q0 + ty * 4 + i < p.Nq;
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      const bool kv = k0 + tx * 4 + j < p.Nk;
      pr[i][j] = (qv && kv) ? pr[i][j] * (bm[i][j] + gamma * e[i][j] - rows[i].c) : Acc(0);
    }
  }
}

// Writes a 4 x 4 register tile (rows ty*4 + i, columns tx*4 + j) into the weight tile w.
template <typename Acc>
__device__ __forceinline__ void store_weights(Acc* w, const Acc (&v)[4][4], int ty, int tx) {
  constexpr int LDW = kBlockK + kPad;
#pragma unroll
  for (int i = 0; i < 4; ++i) sts4(w + (ty * 4 + i) * LDW + tx * 4, v[i][0], v[i][1], v[i][2], v[i][3]);
}

// ---------------------------------------------------------------------------------------------------
// stats block: queries q0 = bx * 64 .. +63 of batches bz, bz + gz, ...: R, P, Q into rowstats.
template <typename T, typename Acc>
__device__ void double_backward_stats_block(const SelfAttnDoubleBackwardParams& p, Acc scale_exp, Acc* smem,
                                       int tid, int64_t bx, int64_t bz, int64_t gz) {
  using S = DoubleBackwardSmem<Acc, SimtChannelTiles<Acc>::kNarrow>;
  const int tx = tid % kTx, ty = tid / kTx;
  const int64_t Nq = p.Nq, Nk = p.Nk, BNq = p.B * p.Nq;
  const int64_t q0 = bx * kBlockQ;
  const Acc scale = static_cast<Acc>(p.scale);
  Acc* As = smem + S::kA;
  Acc* Bs = smem + S::kB;
  Acc* stats = static_cast<Acc*>(p.rowstats);

  for (int64_t b = bz; b < p.B; b += gz) {
    Acc r[4], pp[4], q[4];
#pragma unroll
    for (int i = 0; i < 4; ++i) r[i] = pp[i] = q[i] = Acc(0);
    for (int64_t k0 = 0; k0 < Nk; k0 += kBlockK) {
      Acc pr[4][4], pb[4][4];
      probs_and_b<T, Acc>(pr, pb, p, b, q0, k0, scale_exp, scale, As, Bs, tid);
#pragma unroll
      for (int i = 0; i < 4; ++i)
#pragma unroll
        for (int j = 0; j < 4; ++j) {
          pb[i][j] *= pr[i][j];  // p B: 0 out of range, where p is
          r[i] += pb[i][j];
        }
      {
        Acc dp[4][4];
        dy_dot<T, Acc>(dp, p, b, q0, k0, static_cast<const T*>(p.h) + b * p.h_sb, p.h_sc, As, Bs, tid);
#pragma unroll
        for (int i = 0; i < 4; ++i)
#pragma unroll
          for (int j = 0; j < 4; ++j) pp[i] = fma_acc(pb[i][j], dp[i][j], pp[i]);
      }
      Acc e[4][4];
      dy_dot<T, Acc>(e, p, b, q0, k0, static_cast<const T*>(p.uh) + b * p.Cv * Nk, Nk, As, Bs, tid);
#pragma unroll
      for (int i = 0; i < 4; ++i)
#pragma unroll
        for (int j = 0; j < 4; ++j) q[i] = fma_acc(pr[i][j], e[i][j], q[i]);
    }
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      const Acc rt = warp_allreduce_sum<kTx>(r[i]);
      const Acc pt = warp_allreduce_sum<kTx>(pp[i]);
      const Acc qt = warp_allreduce_sum<kTx>(q[i]);
      const int64_t row = q0 + ty * 4 + i;
      if (tx == 0 && row < Nq) {
        stats[BNq + b * Nq + row] = rt;
        stats[2 * BNq + b * Nq + row] = pt;
        stats[3 * BNq + b * Nq + row] = qt;
      }
    }
  }
}

// ---------------------------------------------------------------------------------------------------
// Query-side blocks: queries q0 = bx * 64 .. +63, channels ch0 .. ch0 + BC - 1 of chunk by, by + gy,
// ..., batches bz, bz + gz, ...; loop over key tiles. Accumulator: channels nt_channel(u, tx) x queries
// ty*4 + i (product_nt with V = [BC][keys], W = [queries][keys]).
//   d_f (kDf):   acc += ug W + g G,           d_f = scale acc
//   d_dy (kDdy): acc += h (gamma p B) + uh (gamma p),   d_dy = acc + a o
template <typename T, typename Acc, int VC, DoubleBackwardPart kPart>
__device__ void double_backward_query_block(const SelfAttnDoubleBackwardParams& p, Acc gamma, Acc ugamma,
                                       Acc scale_exp, Acc* smem, int tid, int64_t bx, int64_t by,
                                       int64_t bz, int64_t gy, int64_t gz) {
  static_assert(kPart == DoubleBackwardPart::kDf || kPart == DoubleBackwardPart::kDdy, "query-side parts");
  constexpr bool kDf = kPart == DoubleBackwardPart::kDf;
  using S = DoubleBackwardSmem<Acc, VC>;
  constexpr int BC = S::kBC;
  const int tx = tid % kTx, ty = tid / kTx;
  const int64_t Nq = p.Nq, Nk = p.Nk, BNq = p.B * p.Nq;
  const int64_t C = kDf ? p.Cqk : p.Cv;
  const int64_t q0 = bx * kBlockQ;
  const int64_t n_chunks = ceil_div(C, BC);
  const Acc scale = static_cast<Acc>(p.scale);
  Acc* As = smem + S::kA;
  Acc* Bs = smem + S::kB;
  Acc* V = smem + S::kU;
  Acc* os = smem + S::kU;
  Acc* W = smem + S::kW;
  const Acc* stats = static_cast<const Acc*>(p.rowstats);

  for (int64_t b = bz; b < p.B; b += gz) {
    // The two operands of the products, (B, C, Nk) each: (ug, g) for d_f, (h, uh) for d_dy.
    const T* v1;
    const T* v2;
    int64_t v1_sc, v2_sc;
    if constexpr (kDf) {
      v1 = static_cast<const T*>(p.ug) + b * p.Cqk * Nk;
      v1_sc = Nk;
      v2 = static_cast<const T*>(p.g) + b * p.g_sb;
      v2_sc = p.g_sc;
    } else {
      v1 = static_cast<const T*>(p.h) + b * p.h_sb;
      v1_sc = p.h_sc;
      v2 = static_cast<const T*>(p.uh) + b * p.Cv * Nk;
      v2_sc = Nk;
    }
    SecondOrderRow<Acc> rows[4];
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      const int64_t q = q0 + ty * 4 + i;
      rows[i].load(stats, BNq, b * Nq + q, q < Nq, gamma, ugamma);
    }
    for (int64_t cb = by; cb < n_chunks; cb += gy) {
      const int64_t ch0 = cb * BC;
      Acc acc[VC][4];
      zero_acc(acc);
      for (int64_t k0 = 0; k0 < Nk; k0 += kBlockK) {
        __syncthreads();  // (A) the previous tile's (or item's) readers of U and W are done
        Acc pr[4][4], bm[4][4];
        probs_and_b<T, Acc>(pr, bm, p, b, q0, k0, scale_exp, scale, As, Bs, tid);
        if constexpr (kDf) {
          ds_weights<T, Acc>(pr, bm, W, rows, p, b, q0, k0, gamma, As, Bs, tid);  // W; G in pr
        } else {
#pragma unroll
          for (int i = 0; i < 4; ++i)
#pragma unroll
            for (int j = 0; j < 4; ++j) {
              pr[i][j] *= gamma;                 // gamma p: 0 out of range, where p is
              bm[i][j] = pr[i][j] * bm[i][j];    // gamma p B
            }
          store_weights(W, bm, ty, tx);
        }
        __syncthreads();  // (B) the dot_tiles' reads of As, Bs are done (V aliases them); W complete
        {
          TileRows<T, Acc, BC, kBlockK, S::kLdV> vt;
          vt.load(v1, v1_sc, ch0, C, k0, Nk, tid);
          vt.store(V, tid);
        }
        __syncthreads();  // (C) V complete
        product_nt<Acc, VC, S::kLdV, S::kLdW>(acc, V, W, ty, tx);
        __syncthreads();  // (D) every read of V and W is done
        store_weights(W, pr, ty, tx);  // G (d_f) or gamma p (d_dy)
        {
          TileRows<T, Acc, BC, kBlockK, S::kLdV> vt;
          vt.load(v2, v2_sc, ch0, C, k0, Nk, tid);
          vt.store(V, tid);
        }
        __syncthreads();  // (E) V and W complete
        product_nt<Acc, VC, S::kLdV, S::kLdW>(acc, V, W, ty, tx);
      }

      __syncthreads();  // (F) every read of U is done: os aliases it
      const Acc mul = kDf ? scale : Acc(1);
#pragma unroll
      for (int u = 0; u < VC; ++u)
        sts4(os + nt_channel(u, tx) * S::kLdO + ty * 4, mul * acc[u][0], mul * acc[u][1],
             mul * acc[u][2], mul * acc[u][3]);
      __syncthreads();  // (G) os complete
      T* out = static_cast<T*>(kDf ? p.d_f : p.d_dy) + b * C * Nq;
      const T* ob = static_cast<const T*>(p.o) + b * p.o_sb;
      for (int e = tid; e < BC * kBlockQ; e += kThreads) {
        const int64_t c = ch0 + e / kBlockQ;
        const int64_t q = q0 + e % kBlockQ;
        if (c < C && q < Nq) {
          Acc v = os[(e / kBlockQ) * S::kLdO + e % kBlockQ];
          if constexpr (!kDf) {  // + a_q o[c, q]
            const Acc a = ugamma - gamma * stats[BNq + b * Nq + q];
            v += a * convert<Acc>(ob[c * p.o_sc + q]);
          }
          out[c * Nq + q] = convert<T>(v);
        }
      }
    }
  }
}

// ---------------------------------------------------------------------------------------------------
// Key-side blocks: keys k0 = bx * 64 .. +63, channels ch0 .. ch0 + BC - 1; loop over query tiles.
// Accumulator: channels tn_channel(u, tx) x keys ty*4 + i (product_tn with VT = [queries][BC],
// W = [queries][keys]).
//   d_g (kDg): acc += uf W + f G,   d_g = scale acc
//   d_h (kDh): acc += dy (p (gamma B + a)),   d_h = acc
template <typename T, typename Acc, int VC, DoubleBackwardPart kPart>
__device__ void double_backward_key_block(const SelfAttnDoubleBackwardParams& p, Acc gamma, Acc ugamma,
                                     Acc scale_exp, Acc* smem, int tid, int64_t bx, int64_t by,
                                     int64_t bz, int64_t gy, int64_t gz) {
  static_assert(kPart == DoubleBackwardPart::kDg || kPart == DoubleBackwardPart::kDh, "key-side parts");
  constexpr bool kDg = kPart == DoubleBackwardPart::kDg;
  using S = DoubleBackwardSmem<Acc, VC>;
  constexpr int BC = S::kBC;
  const int tx = tid % kTx, ty = tid / kTx;
  const int64_t Nq = p.Nq, Nk = p.Nk, BNq = p.B * p.Nq;
  const int64_t C = kDg ? p.Cqk : p.Cv;
  const int64_t k0 = bx * kBlockK;
  const int64_t n_chunks = ceil_div(C, BC);
  const Acc scale = static_cast<Acc>(p.scale);
  Acc* As = smem + S::kA;
  Acc* Bs = smem + S::kB;
  Acc* VT = smem + S::kU;
  Acc* os = smem + S::kU;
  Acc* W = smem + S::kW;
  const Acc* stats = static_cast<const Acc*>(p.rowstats);

  for (int64_t b = bz; b < p.B; b += gz) {
    // The operands of the products, (B, C, Nq) each: (uf, f) for d_g, dy for d_h.
    const T* v1;
    const T* v2 = nullptr;
    int64_t v1_sc, v2_sc = 0;
    if constexpr (kDg) {
      v1 = static_cast<const T*>(p.uf) + b * p.Cqk * Nq;
      v1_sc = Nq;
      v2 = static_cast<const T*>(p.f) + b * p.f_sb;
      v2_sc = p.f_sc;
    } else {
      v1 = static_cast<const T*>(p.dy) + b * p.dy_sb;
      v1_sc = p.dy_sc;
    }
    for (int64_t cb = by; cb < n_chunks; cb += gy) {
      const int64_t ch0 = cb * BC;
      Acc acc[VC][4];
      zero_acc(acc);
      for (int64_t q0 = 0; q0 < Nq; q0 += kBlockQ) {
        __syncthreads();  // (A) the previous tile's (or item's) readers of U and W are done
        SecondOrderRow<Acc> rows[4];
#pragma unroll
        for (int i = 0; i < 4; ++i) {
          const int64_t q = q0 + ty * 4 + i;
          rows[i].load(stats, BNq, b * Nq + q, q < Nq, gamma, ugamma);
        }
        Acc pr[4][4], bm[4][4];
        probs_and_b<T, Acc>(pr, bm, p, b, q0, k0, scale_exp, scale, As, Bs, tid);
        if constexpr (kDg) {
          ds_weights<T, Acc>(pr, bm, W, rows, p, b, q0, k0, gamma, As, Bs, tid);  // W; G in pr
        } else {
#pragma unroll
          for (int i = 0; i < 4; ++i)
#pragma unroll
            for (int j = 0; j < 4; ++j) bm[i][j] = pr[i][j] * (gamma * bm[i][j] + rows[i].a);
          store_weights(W, bm, ty, tx);
        }
        __syncthreads();  // (B) the dot_tiles' reads of As, Bs are done (VT aliases them); W complete
        {
          TileRowsTransposed<T, Acc, BC, kBlockQ, S::kLdVT> vt;
          vt.load(v1, v1_sc, ch0, C, q0, Nq, tid);
          vt.store(VT, tid);
        }
        __syncthreads();  // (C) VT complete
        product_tn<Acc, VC, S::kLdVT, S::kLdW>(acc, VT, W, ty, tx);
        if constexpr (kDg) {
          __syncthreads();  // (D) every read of VT and W is done
          store_weights(W, pr, ty, tx);  // G
          {
            TileRowsTransposed<T, Acc, BC, kBlockQ, S::kLdVT> vt;
            vt.load(v2, v2_sc, ch0, C, q0, Nq, tid);
            vt.store(VT, tid);
          }
          __syncthreads();  // (E) VT and W complete
          product_tn<Acc, VC, S::kLdVT, S::kLdW>(acc, VT, W, ty, tx);
        }
      }

      __syncthreads();  // (F) every read of U is done: os aliases it
      const Acc mul = kDg ? scale : Acc(1);
#pragma unroll
      for (int u = 0; u < VC; ++u)
        sts4(os + tn_channel(u, tx) * S::kLdO + ty * 4, mul * acc[u][0], mul * acc[u][1],
             mul * acc[u][2], mul * acc[u][3]);
      __syncthreads();  // (G) os complete
      T* out = static_cast<T*>(kDg ? p.d_g : p.d_h) + b * C * Nk;
      for (int e = tid; e < BC * kBlockK; e += kThreads) {
        const int64_t c = ch0 + e / kBlockK;
        const int64_t k = k0 + e % kBlockK;
        if (c < C && k < Nk) out[c * Nk + k] = convert<T>(os[(e / kBlockK) * S::kLdO + e % kBlockK]);
      }
    }
  }
}

// Every part through one entry, for the kernel template and the host emulation alike. gamma and
// ugamma are read from the device here (never on the host: no synchronisation, graph capturable).
template <typename T, typename Acc, int VC, DoubleBackwardPart kPart>
__device__ void double_backward_block(const SelfAttnDoubleBackwardParams& p, Acc scale_exp, Acc* smem, int tid,
                                 int64_t bx, int64_t by, int64_t bz, int64_t gy, int64_t gz) {
  if constexpr (kPart == DoubleBackwardPart::kStats) {
    double_backward_stats_block<T, Acc>(p, scale_exp, smem, tid, bx, bz, gz);
  } else {
    const Acc gamma = convert<Acc>(static_cast<const T*>(p.gamma)[0]);
    const Acc ugamma = convert<Acc>(static_cast<const T*>(p.ugamma)[0]);
    if constexpr (kPart == DoubleBackwardPart::kDf || kPart == DoubleBackwardPart::kDdy) {
      double_backward_query_block<T, Acc, VC, kPart>(p, gamma, ugamma, scale_exp, smem, tid, bx, by, bz, gy, gz);
    } else {
      double_backward_key_block<T, Acc, VC, kPart>(p, gamma, ugamma, scale_exp, smem, tid, bx, by, bz, gy, gz);
    }
  }
}

#if defined(__CUDACC__)
template <typename T, typename Acc, int VC, DoubleBackwardPart kPart>
__global__ void __launch_bounds__(kThreads, SimtMinBlocks<Acc>::value)
    self_attn_simt_double_backward_kernel(const SelfAttnDoubleBackwardParams p, Acc scale_exp) {
  extern __shared__ __align__(16) unsigned char sagan_simt_double_backward_smem[];
  double_backward_block<T, Acc, VC, kPart>(p, scale_exp,
                                      reinterpret_cast<Acc*>(sagan_simt_double_backward_smem), threadIdx.x,
                                      blockIdx.x, blockIdx.y, blockIdx.z, gridDim.y, gridDim.z);
}
#endif  // __CUDACC__

}  // namespace sagan::kernels::cuda::simt
