// SIMT kernels of sagan::self_attn: exact FFMA arithmetic on CUDA cores, any Cqk, Cv, Nq, Nk.
// T is the storage type, Acc the compute type (float for float/half/bfloat16, double for double).
//
// Math, per batch b (tensors channel-first, N contiguous; never more than a 64 x 64 tile of scores):
//   s_ij = scale sum_c f[c,i] g[c,j],  lse_i = log sum_j exp(s_ij),  p_ij = exp(s_ij - lse_i)
//   o[c,i] = sum_j p_ij h[c,j],  y = gamma o + x
//   forward: online softmax over key tiles (running max m, running sum l, rescaled accumulator);
//   backward, recomputing p from the float64 lse (split hi + lo in the kernel's precision):
//   dh[c,j] = gamma sum_i p_ij dy[c,i],  dp_ij = sum_c dy[c,i] h[c,j],  ds_ij = p_ij (dp_ij - delta_i)
//   dg[c,j] = gamma scale sum_i ds_ij f[c,i],  df[c,i] = gamma scale sum_j ds_ij g[c,j].
// Float kernels work in base 2 (scores times scale * log2 e, exp2f), float64 in base e (ExpBase).
//
// Kernels (256 threads; block tiles of 64 queries x 64 keys; traits in self_attn_simt_traits.h):
//   fwd: grid (query tiles, Cv chunks, B): loop over key tiles, o chunk in registers; the cheap
//        Cqk-deep scores are recomputed by each Cv chunk's block. lse written by chunk 0's blocks.
//   dh:  grid (key tiles, Cv chunks, B): loop over query tiles, dh chunk in registers.
//   dg:  grid (key tiles, Cqk chunks, B): loop over query tiles, dp over all of Cv, dg chunk in
//        registers; optionally atomically adds sum_j ds_ij g[c,j] into a float/double df buffer.
//   df:  grid (query tiles, Cqk chunks, B): loop over key tiles, df chunk in registers (deterministic).
//
// Scores are recomputed bitwise identically by every kernel: an fma chain over c = 0 .. Cqk-1 in
// order, from 0, then one multiply by the scale (zero-padded channels add exact zeros), so the
// backward's p uses exactly the logits the forward normalised.
//
// Masking: positions past Nq or Nk and channels past Cqk or Cv are staged as zeros; probabilities and
// ds of positions out of range are set to 0 by index (never computed from data), so no NaN or inf of
// a real input leaks into them, and zero operand times zero never makes a NaN.
// Softmax specials as the reference softmax: a row whose logits are all -inf gives NaN (0 / 0), a
// +inf or NaN logit gives a NaN row; a row with some -inf logits is exact (the running max used as
// the shift is replaced by 0 while it is -inf, so exp(-inf - -inf) never happens).
//
// Each kernel body is a __device__ function of (params, shared memory, thread and block indices) so
// that the whole block logic can be run by a host emulation; the __global__ kernels are thin wrappers.
#pragma once

#include <cstdint>

#include "kernels/cuda/self_attn_cuda_numerics.cuh"
#include "kernels/cuda/simt/self_attn_simt_traits.h"
#include "kernels/self_attn_params.h"

namespace sagan::kernels::cuda::simt {

// ---------------------------------------------------------------------------------------------------
// Shared memory: 4 consecutive elements, 16-byte aligned (every offset used is a multiple of 4
// elements and every row length a multiple of 4; the dynamic shared memory base is 16-byte aligned).

__device__ __forceinline__ void lds4(const float* p, float (&r)[4]) {
  const float4 v = *reinterpret_cast<const float4*>(p);
  r[0] = v.x;
  r[1] = v.y;
  r[2] = v.z;
  r[3] = v.w;
}
__device__ __forceinline__ void lds4(const double* p, double (&r)[4]) {
  const double2 a = *reinterpret_cast<const double2*>(p);
  const double2 b = *reinterpret_cast<const double2*>(p + 2);
  r[0] = a.x;
  r[1] = a.y;
  r[2] = b.x;
  r[3] = b.y;
}
__device__ __forceinline__ void sts4(float* p, float a, float b, float c, float d) {
  *reinterpret_cast<float4*>(p) = make_float4(a, b, c, d);
}
__device__ __forceinline__ void sts4(double* p, double a, double b, double c, double d) {
  *reinterpret_cast<double2*>(p) = make_double2(a, b);
  *reinterpret_cast<double2*>(p + 2) = make_double2(c, d);
}

// ---------------------------------------------------------------------------------------------------
// Tile copies global -> registers -> shared memory, split so that the global loads of a tile can be
// issued early and stored once the shared buffer is free. src points at batch b; element (r, n) of
// the tile is src[(row0 + r) * sc + n0 + n] (rows are channels, n positions, n contiguous), zero where
// row0 + r >= nrows or n0 + n >= N. Every thread holds ROWS * COLS / kThreads elements.

// Natural layout: dst[r * LD + n]. Consecutive threads take consecutive n (coalesced loads,
// conflict-free stores): thread tid always has column tid % COLS and rows tid / COLS + t * kStep.
template <typename T, typename Acc, int ROWS, int COLS, int LD>
struct TileRows {
  static_assert(kThreads % COLS == 0 && ROWS % (kThreads / COLS) == 0, "whole tile per pass");
  static_assert(COLS % 32 == 0 && LD >= COLS, "tile shape");
  static constexpr int kStep = kThreads / COLS;
  static constexpr int kPer = ROWS / kStep;
  Acc v[kPer];

  __device__ __forceinline__ void load(const T* __restrict__ src, int64_t sc, int64_t row0,
                                       int64_t nrows, int64_t n0, int64_t N, int tid) {
    const int64_t r = row0 + tid / COLS;
    const int64_t n = n0 + tid % COLS;
    const T* ptr = src + r * sc + n;
    const int64_t step = kStep * sc;
    const bool nv = n < N;
#pragma unroll
    for (int t = 0; t < kPer; ++t)
      v[t] = (nv && r + t * kStep < nrows) ? convert<Acc>(ptr[t * step]) : Acc(0);
  }
  __device__ __forceinline__ void store(Acc* dst, int tid) const {
    Acc* d = dst + (tid / COLS) * LD + tid % COLS;
#pragma unroll
    for (int t = 0; t < kPer; ++t) d[t * kStep * LD] = v[t];
  }
};

// Transposed layout: dst[n * LD + r] (positions x channels). Each group of 8 consecutive lanes reads
// 8 consecutive positions of one channel (32-byte sectors for float), a warp covers 8 positions x 4
// channels; with LD = 4 (mod 32) the warp's 32 stores hit 32 different banks. Thread tid has
// positions n = (t / kRowPasses) * 8 + tid % 8 and channels r = tid / 8 + 32 * (t % kRowPasses).
template <typename T, typename Acc, int ROWS, int COLS, int LD>
struct TileRowsTransposed {
  static_assert(kThreads == 256 && ROWS % 32 == 0 && COLS % 8 == 0 && LD >= ROWS, "tile shape");
  static constexpr int kRowPasses = ROWS / 32;
  static constexpr int kPer = kRowPasses * (COLS / 8);
  Acc v[kPer];

  __device__ __forceinline__ void load(const T* __restrict__ src, int64_t sc, int64_t row0,
                                       int64_t nrows, int64_t n0, int64_t N, int tid) {
    const int64_t r = row0 + tid / 8;
    const int64_t n = n0 + tid % 8;
    const T* ptr = src + r * sc + n;
    const int64_t rstep = 32 * sc;
#pragma unroll
    for (int t = 0; t < kPer; ++t) {
      const int rp = t % kRowPasses, np = t / kRowPasses;
      v[t] = (r + 32 * rp < nrows && n + 8 * np < N) ? convert<Acc>(ptr[rp * rstep + 8 * np])
                                                     : Acc(0);
    }
  }
  __device__ __forceinline__ void store(Acc* dst, int tid) const {
    Acc* d = dst + (tid % 8) * LD + tid / 8;
#pragma unroll
    for (int t = 0; t < kPer; ++t) {
      const int rp = t % kRowPasses, np = t / kRowPasses;
      d[np * 8 * LD + rp * 32] = v[t];
    }
  }
};

// ---------------------------------------------------------------------------------------------------
// Score tile: s[i][j] = sum_{c < depth} A[c][a_n0 + ty*4 + i] * B[c][b_n0 + tx*4 + j], an fma chain
// in channel order from 0 (raw dot products, unscaled). A[c][n] = a[c * a_sc + n] for n < a_N, else 0;
// likewise B. Chunks of kChunk channels are staged in As ([kChunk][kBlockQ]) and Bs
// ([kChunk][kBlockK]); the next chunk's global loads are in flight while this chunk is multiplied.
// Barriers: each chunk starts with __syncthreads (earlier readers of As / Bs are done) and another
// after the stores; the caller's next writer of As / Bs must pass a barrier first (the next dot_tile
// does). With depth == 0 the tile is zero and no barrier is executed (callers keep their own).
template <typename T, typename Acc>
__device__ __forceinline__ void dot_tile(Acc (&s)[4][4], const T* __restrict__ a, int64_t a_sc,
                                         int64_t a_n0, int64_t a_N, const T* __restrict__ b,
                                         int64_t b_sc, int64_t b_n0, int64_t b_N, int64_t depth,
                                         Acc* As, Acc* Bs, int tid) {
  using TileA = TileRows<T, Acc, kChunk, kBlockQ, kBlockQ>;
  using TileB = TileRows<T, Acc, kChunk, kBlockK, kBlockK>;
  const int tx = tid % kTx, ty = tid / kTx;
#pragma unroll
  for (int i = 0; i < 4; ++i)
#pragma unroll
    for (int j = 0; j < 4; ++j) s[i][j] = Acc(0);
  if (depth <= 0) return;
  TileA ta;
  TileB tb;
  ta.load(a, a_sc, 0, depth, a_n0, a_N, tid);
  tb.load(b, b_sc, 0, depth, b_n0, b_N, tid);
  for (int64_t c0 = 0; c0 < depth; c0 += kChunk) {
    __syncthreads();  // every thread is done reading the previous chunk (or the caller's use)
    ta.store(As, tid);
    tb.store(Bs, tid);
    __syncthreads();  // the chunk is complete
    const int dc = static_cast<int>(depth - c0 < kChunk ? depth - c0 : kChunk);
    if (c0 + kChunk < depth) {  // prefetch the next chunk into registers
      ta.load(a, a_sc, c0 + kChunk, depth, a_n0, a_N, tid);
      tb.load(b, b_sc, c0 + kChunk, depth, b_n0, b_N, tid);
    }
    const Acc* ap = As + ty * 4;
    const Acc* bp = Bs + tx * 4;
#pragma unroll 2
    for (int c = 0; c < dc; ++c) {
      Acc av[4], bv[4];
      lds4(ap + c * kBlockQ, av);
      lds4(bp + c * kBlockK, bv);
#pragma unroll
      for (int i = 0; i < 4; ++i)
#pragma unroll
        for (int j = 0; j < 4; ++j) s[i][j] = fma_acc(av[i], bv[j], s[i][j]);
    }
  }
}

// ---------------------------------------------------------------------------------------------------
// Value products of a 64-deep tile (x runs over the 64 positions of the tile), VC channels x 4 rows
// per thread, operands in shared memory. Rows are ty*4 + i. Channel ownership differs between the two
// forms (each one's choice makes its shared reads conflict-free):
//   product_nt: acc[u][i] += sum_x V[c][x] P[r][x],   channel c = nt_channel(u, tx) = u*16 + tx
//               (V row-major channels x positions, P row-major rows x positions; LDV / 4 odd)
//   product_tn: acc[u][i] += sum_x VT[x][c] PT[x][r], channel c = tn_channel(u, tx)
//               = (u/4)*64 + tx*4 + u%4 (both stored position-major)
__device__ __forceinline__ int nt_channel(int u, int tx) { return u * kTx + tx; }
__device__ __forceinline__ int tn_channel(int u, int tx) { return (u / 4) * 64 + tx * 4 + (u % 4); }

template <typename Acc, int VC, int LDV, int LDP>
__device__ __forceinline__ void product_nt(Acc (&acc)[VC][4], const Acc* V, const Acc* P, int ty,
                                           int tx) {
  static_assert(LDV % 4 == 0 && (LDV / 4) % 2 == 1, "conflict-free V reads need LDV / 4 odd");
  static_assert(LDP % 4 == 0, "aligned P rows");
  const Acc* vp = V + tx * LDV;
  const Acc* pp = P + ty * 4 * LDP;
#pragma unroll 1
  for (int x = 0; x < kBlockK; x += 4) {
    Acc pv[4][4];
#pragma unroll
    for (int i = 0; i < 4; ++i) lds4(pp + i * LDP + x, pv[i]);
#pragma unroll
    for (int u = 0; u < VC; ++u) {
      Acc vv[4];
      lds4(vp + u * kTx * LDV + x, vv);
#pragma unroll
      for (int i = 0; i < 4; ++i)
#pragma unroll
        for (int k = 0; k < 4; ++k) acc[u][i] = fma_acc(vv[k], pv[i][k], acc[u][i]);
    }
  }
}

template <typename Acc, int VC, int LDV, int LDP>
__device__ __forceinline__ void product_tn(Acc (&acc)[VC][4], const Acc* VT, const Acc* PT, int ty,
                                           int tx) {
  static_assert(VC % 4 == 0, "channels in groups of 4");
  static_assert(LDV % 4 == 0 && LDP % 4 == 0, "aligned rows");
  const Acc* vp = VT + tx * 4;
  const Acc* pp = PT + ty * 4;
#pragma unroll 4
  for (int x = 0; x < kBlockQ; ++x) {
    Acc pv[4];
    lds4(pp + x * LDP, pv);
#pragma unroll
    for (int gi = 0; gi < VC / 4; ++gi) {
      Acc vv[4];
      lds4(vp + x * LDV + gi * 64, vv);
#pragma unroll
      for (int u = 0; u < 4; ++u)
#pragma unroll
        for (int i = 0; i < 4; ++i) acc[gi * 4 + u][i] = fma_acc(vv[u], pv[i], acc[gi * 4 + u][i]);
    }
  }
}

template <typename Acc, int VC>
__device__ __forceinline__ void zero_acc(Acc (&acc)[VC][4]) {
#pragma unroll
  for (int u = 0; u < VC; ++u)
#pragma unroll
    for (int i = 0; i < 4; ++i) acc[u][i] = Acc(0);
}

// ---------------------------------------------------------------------------------------------------
// Backward probabilities: s (raw dot products of rows q0 + ty*4 + i, columns k0 + tx*4 + j) becomes
// p = exp((s * scale_exp - hi_i) - lo_i) with hi + lo the row's lse in the kernel's base; 0 outside
// q < Nq, k < Nk.
template <typename Acc>
__device__ __forceinline__ void probs_from_lse(Acc (&s)[4][4], const double* __restrict__ lse_b,
                                               int64_t q0, int64_t Nq, int64_t k0, int64_t Nk,
                                               Acc scale_exp, int ty, int tx) {
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const int64_t q = q0 + ty * 4 + i;
    const bool qv = q < Nq;
    Acc hi = Acc(0), lo = Acc(0);
    if (qv) split_lse(lse_b[q], hi, lo);
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      const bool kv = k0 + tx * 4 + j < Nk;
      s[i][j] = (qv && kv) ? ExpBase<Acc>::exp((s[i][j] * scale_exp - hi) - lo) : Acc(0);
    }
  }
}

// ds_ij = p_ij (dp_ij - delta_i) for the tile (rows q0 + ty*4 + i, columns k0 + tx*4 + j), without
// gamma and scale, 0 outside q < Nq, k < Nk, written to dss[q][k] (row length LDS): two dot_tiles
// (Cqk-deep scores, Cv-deep dp). p is parked in dss while dp is computed (fewer live registers); each
// thread reads back only what it wrote, so that needs no barrier. The caller makes dss free before
// (no other thread may still read it) and passes a barrier before others read the result.
template <typename T, typename Acc, int LDS>
__device__ __forceinline__ void ds_tile(Acc* dss, const SelfAttnBackwardParams& p,
                                        const Acc* __restrict__ delta, Acc scale_exp, int64_t b,
                                        int64_t q0, int64_t k0, Acc* As, Acc* Bs, int tid) {
  const int tx = tid % kTx, ty = tid / kTx;
  Acc* mine = dss + ty * 4 * LDS + tx * 4;
  {
    Acc s[4][4];
    dot_tile(s, static_cast<const T*>(p.f) + b * p.f_sb, p.f_sc, q0, p.Nq,
             static_cast<const T*>(p.g) + b * p.g_sb, p.g_sc, k0, p.Nk, p.Cqk, As, Bs, tid);
    probs_from_lse(s, p.lse + b * p.Nq, q0, p.Nq, k0, p.Nk, scale_exp, ty, tx);
#pragma unroll
    for (int i = 0; i < 4; ++i) sts4(mine + i * LDS, s[i][0], s[i][1], s[i][2], s[i][3]);
  }
  Acc dp[4][4];
  dot_tile(dp, static_cast<const T*>(p.dy) + b * p.dy_sb, p.dy_sc, q0, p.Nq,
           static_cast<const T*>(p.h) + b * p.h_sb, p.h_sc, k0, p.Nk, p.Cv, As, Bs, tid);
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const int64_t q = q0 + ty * 4 + i;
    const bool qv = q < p.Nq;
    const Acc d = qv ? delta[b * p.Nq + q] : Acc(0);
    Acc pv[4], ds[4];
    lds4(mine + i * LDS, pv);
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      const bool kv = k0 + tx * 4 + j < p.Nk;
      ds[j] = (qv && kv) ? pv[j] * (dp[i][j] - d) : Acc(0);
    }
    sts4(mine + i * LDS, ds[0], ds[1], ds[2], ds[3]);
  }
}

// ---------------------------------------------------------------------------------------------------
// Shared-memory layouts (offsets in Acc elements, all multiples of 4).

// Forward: As, Bs score chunks; hs = h tile [BCV][64 + pad] (channels x keys); ps = p tile
// [64 queries][64 + pad]; os = output staging [BCV][64 + pad] (channels x queries), aliasing hs.
template <typename Acc, int VC>
struct FwdSmem {
  static constexpr int kBCV = VC * kTx;
  static constexpr int kLdH = kBlockK + kPad;
  static constexpr int kLdP = kBlockK + kPad;
  static constexpr int kLdO = kBlockQ + kPad;
  static constexpr int kA = 0;
  static constexpr int kB = kA + kChunk * kBlockQ;
  static constexpr int kH = kB + kChunk * kBlockK;
  static constexpr int kP = kH + kBCV * kLdH;
  static constexpr int kO = kH;
  static constexpr int kElems = kP + kBlockQ * kLdP;
  static constexpr size_t kBytes = sizeof(Acc) * kElems;
  static_assert(kBCV * kLdO <= kP - kO, "os fits in hs");
};

// dh: As, Bs; dyT = dy tile transposed [64 queries][BCV + pad]; ps = p tile [64 queries][64 + pad];
// os = output staging [BCV][64 + pad] (channels x keys), aliasing dyT and ps.
template <typename Acc, int VC>
struct DhSmem {
  static constexpr int kBCV = VC * kTx;
  static constexpr int kLdDy = kBCV + kPad;
  static constexpr int kLdP = kBlockK + kPad;
  static constexpr int kLdO = kBlockK + kPad;
  static constexpr int kA = 0;
  static constexpr int kB = kA + kChunk * kBlockQ;
  static constexpr int kDy = kB + kChunk * kBlockK;
  static constexpr int kP = kDy + kBlockQ * kLdDy;
  static constexpr int kO = kDy;
  static constexpr int kElems = kP + kBlockQ * kLdP;
  static constexpr size_t kBytes = sizeof(Acc) * kElems;
  static_assert(kBCV * kLdO <= kElems - kO, "os fits in dyT + ps");
};

// dg: As, Bs; dss = ds tile [64 queries][64 + pad]; a union U of fT = f tile transposed [64 queries]
// [BCQ + pad], dfs = df staging [BCQ][64 + pad] (channels x queries) and os = dg staging [BCQ][64 +
// pad] (channels x keys); gN = g tile [BCQ][64 + pad] (channels x keys), only with the atomic df.
template <typename Acc, int VC>
struct DgSmem {
  static constexpr int kBCQ = VC * kTx;
  static constexpr int kLdP = kBlockK + kPad;
  static constexpr int kLdF = kBCQ + kPad;
  static constexpr int kLdDf = kBlockQ + kPad;
  static constexpr int kLdO = kBlockK + kPad;
  static constexpr int kLdG = kBlockK + kPad;
  static constexpr int kA = 0;
  static constexpr int kB = kA + kChunk * kBlockQ;
  static constexpr int kDs = kB + kChunk * kBlockK;
  static constexpr int kU = kDs + kBlockQ * kLdP;
  static constexpr int kUElems = (kBlockQ * kLdF > kBCQ * kLdDf ? kBlockQ * kLdF : kBCQ * kLdDf);
  static constexpr int kG = kU + kUElems;
  static constexpr int kElemsAtomic = kG + kBCQ * kLdG;
  static constexpr size_t kBytes = sizeof(Acc) * kG;
  static constexpr size_t kBytesAtomic = sizeof(Acc) * kElemsAtomic;
  static_assert(kBCQ * kLdO <= kUElems, "os fits in U");
};

// df: As, Bs; dss = ds tile [64 queries][64 + pad]; gN = g tile [BCQ][64 + pad] (channels x keys);
// os = df staging [BCQ][64 + pad] (channels x queries), aliasing gN.
template <typename Acc, int VC>
struct DfSmem {
  static constexpr int kBCQ = VC * kTx;
  static constexpr int kLdP = kBlockK + kPad;
  static constexpr int kLdG = kBlockK + kPad;
  static constexpr int kLdO = kBlockQ + kPad;
  static constexpr int kA = 0;
  static constexpr int kB = kA + kChunk * kBlockQ;
  static constexpr int kDs = kB + kChunk * kBlockK;
  static constexpr int kG = kDs + kBlockQ * kLdP;
  static constexpr int kO = kG;
  static constexpr int kElems = kG + kBCQ * kLdG;
  static constexpr size_t kBytes = sizeof(Acc) * kElems;
  static_assert(kBCQ * kLdO <= kElems - kO, "os fits in gN");
};

// ---------------------------------------------------------------------------------------------------
// Forward block: queries q0 = bx * 64 .. +63, Cv channels cv0 .. cv0 + BCV - 1, for the batches
// b = bz, bz + gz, ... and channel chunks by, by + gy, ... (grid y and z are capped at 65535).
// Thread (ty, tx) owns query rows ty*4 + i; in the score tile keys tx*4 + j; in the output channels
// nt_channel(u, tx). Its m, l are the running max and its partial sum (over its own 4 keys of each
// tile, in the same running-max frame as the 15 other threads of the row), reduced at the end.
template <typename T, typename Acc, int VC>
__device__ void fwd_block(const SelfAttnFwdParams& p, const T* __restrict__ gamma_ptr, Acc scale_exp,
                          Acc* smem, int tid, int64_t bx, int64_t by, int64_t bz, int64_t gy,
                          int64_t gz) {
  using S = FwdSmem<Acc, VC>;
  constexpr int BCV = S::kBCV;
  constexpr bool kPrefetch = VC <= 4;
  const int tx = tid % kTx, ty = tid / kTx;
  const int64_t Nq = p.Nq, Nk = p.Nk, Cv = p.Cv, Cqk = p.Cqk;
  const int64_t q0 = bx * kBlockQ;
  const int64_t n_cv = Cv > 0 ? ceil_div(Cv, BCV) : 1;  // chunk 0 also writes lse, even for Cv == 0
  Acc* As = smem + S::kA;
  Acc* Bs = smem + S::kB;
  Acc* hs = smem + S::kH;
  Acc* ps = smem + S::kP;
  Acc* os = smem + S::kO;
  const Acc gamma = convert<Acc>(gamma_ptr[0]);
  const Acc ninf = neg_inf<Acc>();

  for (int64_t b = bz; b < p.B; b += gz) {
    const T* fb = static_cast<const T*>(p.f) + b * p.f_sb;
    const T* gb = static_cast<const T*>(p.g) + b * p.g_sb;
    const T* hb = static_cast<const T*>(p.h) + b * p.h_sb;
    for (int64_t cb = by; cb < n_cv; cb += gy) {
      const int64_t cv0 = cb * BCV;
      Acc m[4], l[4], acc[VC][4];
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        m[i] = ninf;
        l[i] = Acc(0);
      }
      zero_acc(acc);
      __syncthreads();  // the previous item's readers of os are done

      for (int64_t k0 = 0; k0 < Nk; k0 += kBlockK) {
        __syncthreads();  // (A) the previous key tile's readers of hs and ps are done
        // h tile: with few channels per thread its loads are issued now and stored to hs after the
        // scores (their latency overlaps them); with many, stored at once (registers are short).
        TileRows<T, Acc, BCV, kBlockK, S::kLdH> ht;
        ht.load(hb, p.h_sc, cv0, Cv, k0, Nk, tid);
        if constexpr (!kPrefetch) ht.store(hs, tid);
        Acc s[4][4];
        dot_tile(s, fb, p.f_sc, q0, Nq, gb, p.g_sc, k0, Nk, Cqk, As, Bs, tid);

        // Online softmax of the tile's rows (16 lanes per row, all lanes take part in the shuffles).
        bool kv[4];
#pragma unroll
        for (int j = 0; j < 4; ++j) kv[j] = k0 + tx * 4 + j < Nk;
#pragma unroll
        for (int i = 0; i < 4; ++i) {
          Acc mx = ninf;
#pragma unroll
          for (int j = 0; j < 4; ++j) {
            s[i][j] = kv[j] ? s[i][j] * scale_exp : ninf;
            mx = max_acc(mx, s[i][j]);
          }
          mx = warp_allreduce_max<kTx>(mx);
          const Acc m_new = max_acc(m[i], mx);
          // Shift by 0 while the row's max is -inf: exp(-inf - 0) = 0, never exp(-inf - -inf).
          const Acc shift = m_new == ninf ? Acc(0) : m_new;
          const Acc alpha = ExpBase<Acc>::exp(m[i] - shift);  // 0 on the first tile (m = -inf)
          m[i] = m_new;
          Acc rs = Acc(0);
#pragma unroll
          for (int j = 0; j < 4; ++j) {
            s[i][j] = kv[j] ? ExpBase<Acc>::exp(s[i][j] - shift) : Acc(0);
            rs += s[i][j];
          }
          l[i] = l[i] * alpha + rs;
#pragma unroll
          for (int u = 0; u < VC; ++u) acc[u][i] *= alpha;
        }

        if constexpr (kPrefetch) ht.store(hs, tid);
#pragma unroll
        for (int i = 0; i < 4; ++i) sts4(ps + (ty * 4 + i) * S::kLdP + tx * 4, s[i][0], s[i][1], s[i][2], s[i][3]);
        __syncthreads();  // (C) hs and ps complete
        product_nt<Acc, VC, S::kLdH, S::kLdP>(acc, hs, ps, ty, tx);
      }

      // o = acc / l; lse = shift + log l (natural units, float64) by chunk 0's blocks.
      Acc inv[4];
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        const Acc lt = warp_allreduce_sum<kTx>(l[i]);
        const Acc shift = m[i] == ninf ? Acc(0) : m[i];
        // Nk == 0: o = 0 (an empty sum, as the reference's matmul gives), lse = -inf.
        inv[i] = Nk > 0 ? Acc(1) / lt : Acc(0);
        const int64_t q = q0 + ty * 4 + i;
        if (cb == 0 && tx == 0 && q < Nq) {
          p.lse[b * Nq + q] =
              (static_cast<double>(shift) + ExpBase<Acc>::log(static_cast<double>(lt))) *
              ExpBase<Acc>::kToNatural;
        }
      }
      __syncthreads();  // (D) every product_nt read of hs is done: os aliases it
#pragma unroll
      for (int u = 0; u < VC; ++u)
        sts4(os + nt_channel(u, tx) * S::kLdO + ty * 4, acc[u][0] * inv[0], acc[u][1] * inv[1],
             acc[u][2] * inv[2], acc[u][3] * inv[3]);
      __syncthreads();  // (E) os complete
      T* ob = static_cast<T*>(p.o) + b * Cv * Nq;
      T* yb = static_cast<T*>(p.y) + b * Cv * Nq;
      const T* xb = p.x != nullptr ? static_cast<const T*>(p.x) + b * p.x_sb : nullptr;
      for (int e = tid; e < BCV * kBlockQ; e += kThreads) {
        const int64_t c = cv0 + e / kBlockQ;
        const int64_t q = q0 + e % kBlockQ;
        if (c < Cv && q < Nq) {
          const Acc ov = os[(e / kBlockQ) * S::kLdO + e % kBlockQ];
          Acc yv = gamma * ov;
          if (xb != nullptr) yv += convert<Acc>(xb[c * p.x_sc + q]);
          ob[c * Nq + q] = convert<T>(ov);
          yb[c * Nq + q] = convert<T>(yv);
        }
      }
    }
  }
}

// ---------------------------------------------------------------------------------------------------
// dh block: keys k0 = bx * 64 .. +63, Cv channels cv0 .. cv0 + BCV - 1; loops over query tiles.
// Thread (ty, tx): score rows (queries) ty*4 + i, columns (keys) tx*4 + j; accumulator channels
// tn_channel(u, tx) x keys ty*4 + i.
template <typename T, typename Acc, int VC>
__device__ void backward_dh_block(const SelfAttnBackwardParams& p, const T* __restrict__ gamma_ptr,
                             Acc scale_exp, Acc* smem, int tid, int64_t bx, int64_t by, int64_t bz,
                             int64_t gy, int64_t gz) {
  using S = DhSmem<Acc, VC>;
  constexpr int BCV = S::kBCV;
  constexpr bool kPrefetch = VC <= 4;
  const int tx = tid % kTx, ty = tid / kTx;
  const int64_t Nq = p.Nq, Nk = p.Nk, Cv = p.Cv;
  const int64_t k0 = bx * kBlockK;
  const int64_t n_cv = ceil_div(Cv, BCV);
  Acc* As = smem + S::kA;
  Acc* Bs = smem + S::kB;
  Acc* dyT = smem + S::kDy;
  Acc* ps = smem + S::kP;
  Acc* os = smem + S::kO;
  const Acc gamma = convert<Acc>(gamma_ptr[0]);

  for (int64_t b = bz; b < p.B; b += gz) {
    const T* fb = static_cast<const T*>(p.f) + b * p.f_sb;
    const T* gb = static_cast<const T*>(p.g) + b * p.g_sb;
    const T* dyb = static_cast<const T*>(p.dy) + b * p.dy_sb;
    for (int64_t cb = by; cb < n_cv; cb += gy) {
      const int64_t cv0 = cb * BCV;
      Acc acc[VC][4];
      zero_acc(acc);
      __syncthreads();  // the previous item's readers of os are done

      for (int64_t q0 = 0; q0 < Nq; q0 += kBlockQ) {
        __syncthreads();  // (A) the previous query tile's readers of dyT and ps are done
        // dy tile: prefetched across the scores like h in the forward, when registers allow.
        TileRowsTransposed<T, Acc, BCV, kBlockQ, S::kLdDy> dyt;
        dyt.load(dyb, p.dy_sc, cv0, Cv, q0, Nq, tid);
        if constexpr (!kPrefetch) dyt.store(dyT, tid);
        Acc s[4][4];
        dot_tile(s, fb, p.f_sc, q0, Nq, gb, p.g_sc, k0, Nk, p.Cqk, As, Bs, tid);
        probs_from_lse(s, p.lse + b * Nq, q0, Nq, k0, Nk, scale_exp, ty, tx);
        if constexpr (kPrefetch) dyt.store(dyT, tid);
#pragma unroll
        for (int i = 0; i < 4; ++i) sts4(ps + (ty * 4 + i) * S::kLdP + tx * 4, s[i][0], s[i][1], s[i][2], s[i][3]);
        __syncthreads();  // (C) dyT and ps complete
        // dh[c][k] += sum_q dyT[q][c] p[q][k]
        product_tn<Acc, VC, S::kLdDy, S::kLdP>(acc, dyT, ps, ty, tx);
      }

      __syncthreads();  // (D) every product_tn read is done: os aliases dyT and ps
#pragma unroll
      for (int u = 0; u < VC; ++u)
        sts4(os + tn_channel(u, tx) * S::kLdO + ty * 4, gamma * acc[u][0], gamma * acc[u][1],
             gamma * acc[u][2], gamma * acc[u][3]);
      __syncthreads();  // (E) os complete
      T* dhb = static_cast<T*>(p.dh) + b * Cv * Nk;
      for (int e = tid; e < BCV * kBlockK; e += kThreads) {
        const int64_t c = cv0 + e / kBlockK;
        const int64_t k = k0 + e % kBlockK;
        if (c < Cv && k < Nk) dhb[c * Nk + k] = convert<T>(os[(e / kBlockK) * S::kLdO + e % kBlockK]);
      }
    }
  }
}

// ---------------------------------------------------------------------------------------------------
// dg block: keys k0 = bx * 64 .. +63, Cqk channels cq0 .. cq0 + BCQ - 1; loops over query tiles.
// Accumulator: channels tn_channel(u, tx) x keys ty*4 + i. With df_accum != nullptr it also adds
// df_accum[c][q] += sum_{j in tile} ds_qj g[c][j] (channels nt_channel(u, tx) x queries ty*4 + i,
// staged so that the atomics of a warp hit consecutive addresses).
template <typename T, typename Acc, int VC>
__device__ void backward_dg_block(const SelfAttnBackwardParams& p, const T* __restrict__ gamma_ptr,
                             const Acc* __restrict__ delta, Acc* df_accum, Acc scale_exp, Acc* smem,
                             int tid, int64_t bx, int64_t by, int64_t bz, int64_t gy, int64_t gz) {
  using S = DgSmem<Acc, VC>;
  constexpr int BCQ = S::kBCQ;
  const int tx = tid % kTx, ty = tid / kTx;
  const int64_t Nq = p.Nq, Nk = p.Nk, Cqk = p.Cqk;
  const int64_t k0 = bx * kBlockK;
  const int64_t n_cq = ceil_div(Cqk, BCQ);
  const bool atomic_df = df_accum != nullptr;
  Acc* As = smem + S::kA;
  Acc* Bs = smem + S::kB;
  Acc* dss = smem + S::kDs;
  Acc* fT = smem + S::kU;
  Acc* dfs = smem + S::kU;
  Acc* os = smem + S::kU;
  Acc* gN = smem + S::kG;  // allocated only when atomic_df
  const Acc out_scale = convert<Acc>(gamma_ptr[0]) * static_cast<Acc>(p.scale);

  for (int64_t b = bz; b < p.B; b += gz) {
    const T* fb = static_cast<const T*>(p.f) + b * p.f_sb;
    const T* gb = static_cast<const T*>(p.g) + b * p.g_sb;
    for (int64_t cb = by; cb < n_cq; cb += gy) {
      const int64_t cq0 = cb * BCQ;
      Acc acc[VC][4];
      zero_acc(acc);
      __syncthreads();  // the previous item's readers of os and gN are done
      if (atomic_df) {  // the key tile's g, read by every query tile (visible after barrier (A))
        TileRows<T, Acc, BCQ, kBlockK, S::kLdG> gt;
        gt.load(gb, p.g_sc, cq0, Cqk, k0, Nk, tid);
        gt.store(gN, tid);
      }

      for (int64_t q0 = 0; q0 < Nq; q0 += kBlockQ) {
        __syncthreads();  // (A) the previous query tile's readers of dss, fT and dfs are done
        ds_tile<T, Acc, S::kLdP>(dss, p, delta, scale_exp, b, q0, k0, As, Bs, tid);
        {
          TileRowsTransposed<T, Acc, BCQ, kBlockQ, S::kLdF> ft;
          ft.load(fb, p.f_sc, cq0, Cqk, q0, Nq, tid);
          ft.store(fT, tid);
        }
        __syncthreads();  // (B) dss and fT complete
        // dg[c][k] += sum_q fT[q][c] ds[q][k]
        product_tn<Acc, VC, S::kLdF, S::kLdP>(acc, fT, dss, ty, tx);
        if (atomic_df) {
          Acc dfa[VC][4];
          zero_acc(dfa);
          // df[c][q] += sum_k g[c][k] ds[q][k]
          product_nt<Acc, VC, S::kLdG, S::kLdP>(dfa, gN, dss, ty, tx);
          __syncthreads();  // (F) every product_tn read of fT is done: dfs aliases it
#pragma unroll
          for (int u = 0; u < VC; ++u)
            sts4(dfs + nt_channel(u, tx) * S::kLdDf + ty * 4, dfa[u][0], dfa[u][1], dfa[u][2], dfa[u][3]);
          __syncthreads();  // (G) dfs complete
          Acc* dfb = df_accum + b * Cqk * Nq;
          for (int e = tid; e < BCQ * kBlockQ; e += kThreads) {
            const int64_t c = cq0 + e / kBlockQ;
            const int64_t q = q0 + e % kBlockQ;
            if (c < Cqk && q < Nq) atomicAdd(dfb + c * Nq + q, dfs[(e / kBlockQ) * S::kLdDf + e % kBlockQ]);
          }
        }
      }

      __syncthreads();  // (D) every read of fT, dss and dfs is done: os aliases U
#pragma unroll
      for (int u = 0; u < VC; ++u)
        sts4(os + tn_channel(u, tx) * S::kLdO + ty * 4, out_scale * acc[u][0], out_scale * acc[u][1],
             out_scale * acc[u][2], out_scale * acc[u][3]);
      __syncthreads();  // (E) os complete
      T* dgb = static_cast<T*>(p.dg) + b * Cqk * Nk;
      for (int e = tid; e < BCQ * kBlockK; e += kThreads) {
        const int64_t c = cq0 + e / kBlockK;
        const int64_t k = k0 + e % kBlockK;
        if (c < Cqk && k < Nk) dgb[c * Nk + k] = convert<T>(os[(e / kBlockK) * S::kLdO + e % kBlockK]);
      }
    }
  }
}

// ---------------------------------------------------------------------------------------------------
// df block (deterministic): queries q0 = bx * 64 .. +63, Cqk channels cq0 .. cq0 + BCQ - 1; loops
// over key tiles in order. Accumulator: channels nt_channel(u, tx) x queries ty*4 + i.
template <typename T, typename Acc, int VC>
__device__ void backward_df_block(const SelfAttnBackwardParams& p, const T* __restrict__ gamma_ptr,
                             const Acc* __restrict__ delta, Acc scale_exp, Acc* smem, int tid,
                             int64_t bx, int64_t by, int64_t bz, int64_t gy, int64_t gz) {
  using S = DfSmem<Acc, VC>;
  constexpr int BCQ = S::kBCQ;
  const int tx = tid % kTx, ty = tid / kTx;
  const int64_t Nq = p.Nq, Nk = p.Nk, Cqk = p.Cqk;
  const int64_t q0 = bx * kBlockQ;
  const int64_t n_cq = ceil_div(Cqk, BCQ);
  Acc* As = smem + S::kA;
  Acc* Bs = smem + S::kB;
  Acc* dss = smem + S::kDs;
  Acc* gN = smem + S::kG;
  Acc* os = smem + S::kO;
  const Acc out_scale = convert<Acc>(gamma_ptr[0]) * static_cast<Acc>(p.scale);

  for (int64_t b = bz; b < p.B; b += gz) {
    const T* gb = static_cast<const T*>(p.g) + b * p.g_sb;
    for (int64_t cb = by; cb < n_cq; cb += gy) {
      const int64_t cq0 = cb * BCQ;
      Acc acc[VC][4];
      zero_acc(acc);
      __syncthreads();  // the previous item's readers of os are done

      for (int64_t k0 = 0; k0 < Nk; k0 += kBlockK) {
        __syncthreads();  // (A) the previous key tile's readers of dss and gN are done
        ds_tile<T, Acc, S::kLdP>(dss, p, delta, scale_exp, b, q0, k0, As, Bs, tid);
        {
          TileRows<T, Acc, BCQ, kBlockK, S::kLdG> gt;
          gt.load(gb, p.g_sc, cq0, Cqk, k0, Nk, tid);
          gt.store(gN, tid);
        }
        __syncthreads();  // (B) dss and gN complete
        // df[c][q] += sum_k g[c][k] ds[q][k]
        product_nt<Acc, VC, S::kLdG, S::kLdP>(acc, gN, dss, ty, tx);
      }

      __syncthreads();  // (D) every product_nt read of gN is done: os aliases it
#pragma unroll
      for (int u = 0; u < VC; ++u)
        sts4(os + nt_channel(u, tx) * S::kLdO + ty * 4, out_scale * acc[u][0], out_scale * acc[u][1],
             out_scale * acc[u][2], out_scale * acc[u][3]);
      __syncthreads();  // (E) os complete
      T* dfb = static_cast<T*>(p.df) + b * Cqk * Nq;
      for (int e = tid; e < BCQ * kBlockQ; e += kThreads) {
        const int64_t c = cq0 + e / kBlockQ;
        const int64_t q = q0 + e % kBlockQ;
        if (c < Cqk && q < Nq) dfb[c * Nq + q] = convert<T>(os[(e / kBlockQ) * S::kLdO + e % kBlockQ]);
      }
    }
  }
}

// ---------------------------------------------------------------------------------------------------
// __global__ wrappers. The dynamic shared memory is declared once, as bytes, 16-byte aligned.
#if defined(__CUDACC__)
#define SAGAN_SIMT_SMEM(Acc, name)                                  \
  extern __shared__ __align__(16) unsigned char sagan_simt_smem[]; \
  Acc* name = reinterpret_cast<Acc*>(sagan_simt_smem)

template <typename T, typename Acc, int VC>
__global__ void __launch_bounds__(kThreads, SimtMinBlocks<Acc>::value)
    self_attn_simt_fwd_kernel(const SelfAttnFwdParams p, const T* __restrict__ gamma, Acc scale_exp) {
  SAGAN_SIMT_SMEM(Acc, smem);
  fwd_block<T, Acc, VC>(p, gamma, scale_exp, smem, threadIdx.x, blockIdx.x, blockIdx.y, blockIdx.z,
                        gridDim.y, gridDim.z);
}

template <typename T, typename Acc, int VC>
__global__ void __launch_bounds__(kThreads, SimtMinBlocks<Acc>::value)
    self_attn_simt_backward_dh_kernel(const SelfAttnBackwardParams p, const T* __restrict__ gamma, Acc scale_exp) {
  SAGAN_SIMT_SMEM(Acc, smem);
  backward_dh_block<T, Acc, VC>(p, gamma, scale_exp, smem, threadIdx.x, blockIdx.x, blockIdx.y,
                           blockIdx.z, gridDim.y, gridDim.z);
}

template <typename T, typename Acc, int VC>
__global__ void __launch_bounds__(kThreads, SimtMinBlocks<Acc>::value)
    self_attn_simt_backward_dg_kernel(const SelfAttnBackwardParams p, const T* __restrict__ gamma,
                                 const Acc* __restrict__ delta, Acc* df_accum, Acc scale_exp) {
  SAGAN_SIMT_SMEM(Acc, smem);
  backward_dg_block<T, Acc, VC>(p, gamma, delta, df_accum, scale_exp, smem, threadIdx.x, blockIdx.x,
                           blockIdx.y, blockIdx.z, gridDim.y, gridDim.z);
}

template <typename T, typename Acc, int VC>
__global__ void __launch_bounds__(kThreads, SimtMinBlocks<Acc>::value)
    self_attn_simt_backward_df_kernel(const SelfAttnBackwardParams p, const T* __restrict__ gamma,
                                 const Acc* __restrict__ delta, Acc scale_exp) {
  SAGAN_SIMT_SMEM(Acc, smem);
  backward_df_block<T, Acc, VC>(p, gamma, delta, scale_exp, smem, threadIdx.x, blockIdx.x, blockIdx.y,
                           blockIdx.z, gridDim.y, gridDim.z);
}
#undef SAGAN_SIMT_SMEM
#endif  // __CUDACC__

}  // namespace sagan::kernels::cuda::simt
