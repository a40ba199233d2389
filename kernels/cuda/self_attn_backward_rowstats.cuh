// Pre- and post-processing of the CUDA backward, shared by both kernel families (FlashAttention's
// compute_dot_do_o and convert_dQ):
//   before: delta_i = sum_c dy[c,i] o[c,i] (accumulate dtype), and dgamma = sum over b, i of delta
//           (float64), each summed by one thread or one block in a fixed order: deterministic;
//   after, in the atomic mode only: df = gamma * scale * df_accum, rounded to the storage dtype.
// And of the double backward (kernels/cuda/simt/self_attn_simt_double_backward_kernel.cuh):
//   before: its row statistic D_i = sum_c dy[c,i] o[c,i] (the same row dot as delta);
//   after: d_gamma = sum over b, i of (P_i - D_i R_i + Q_i), float64, by one block in a fixed order.
// Block bodies take (tid, block indices) so the host emulation runs them as the GPU does, on the grids
// of the plans below (kernels/cuda/self_attn_launch_plan.h), which the launchers launch.
#pragma once

#include <cstdint>

#include "kernels/cuda/self_attn_cuda.h"
#include "kernels/cuda/self_attn_cuda_numerics.cuh"
#include "kernels/cuda/self_attn_launch_plan.h"
#include "kernels/self_attn_params.h"

namespace sagan::kernels::cuda::rowstats {

inline constexpr int kThreads = 256;
// Blocks of the df finish's grid-stride loop: enough to fill any GPU.
inline constexpr int64_t kMaxFinishBlocks = 65535;

// The row dots (delta, D): grid (query blocks of kThreads, batches capped: the kernel loops).
inline LaunchPlan plan_row_dot(int64_t B, int64_t Nq, const GridCaps& caps = {}) {
  return looped_grid_plan(B > 0 && Nq > 0, ceil_div(Nq, kThreads), B, 1, kThreads, 0,
                          GridCaps{caps.x, caps.y, 1});
}

// dgamma and d_gamma: one block summing in a fixed order, with kThreads doubles of shared memory.
inline LaunchPlan plan_block_sum() {
  return exact_grid_plan(true, 1, 1, 1, kThreads, kThreads * sizeof(double));
}

// df = gamma * scale * df_accum after the main kernels, in the atomic mode only: a flat grid-stride
// loop over B * Cqk * Nq elements.
inline LaunchPlan plan_df_finish(const SelfAttnBackwardParams& p, const GridCaps& caps = {}) {
  const int64_t n = p.B * p.Cqk * p.Nq;
  return looped_grid_plan(atomic_df_in_dg(p) && n > 0,
                          min_i64(ceil_div(n, kThreads), min_i64(kMaxFinishBlocks, caps.x)), 1, 1, kThreads,
                          0, caps);
}

// out[b, i] = sum_c dy[b,c,i] o[b,c,i] (accumulate dtype) of queries i = bx * kThreads + tid, for
// batches by, by + gy, ... (grid y is capped): summed over c in order, one thread per element.
template <typename T>
__device__ void row_dot_dy_o_block(int64_t B, int64_t Cv, int64_t Nq, const T* dy, int64_t dy_sb,
                                   int64_t dy_sc, const T* o, int64_t o_sb, int64_t o_sc,
                                   acc_t<T>* out, int tid, int64_t bx, int64_t by, int64_t gy) {
  using Acc = acc_t<T>;
  const int64_t i = bx * kThreads + tid;
  if (i >= Nq) return;
  for (int64_t b = by; b < B; b += gy) {
    Acc d = Acc(0);
    for (int64_t c = 0; c < Cv; ++c)
      d += convert<Acc>(dy[b * dy_sb + c * dy_sc + i]) * convert<Acc>(o[b * o_sb + c * o_sc + i]);
    out[b * Nq + i] = d;
  }
}

// delta of the backward.
template <typename T>
__device__ void delta_block(const SelfAttnBackwardParams& p, int tid, int64_t bx, int64_t by, int64_t gy) {
  row_dot_dy_o_block<T>(p.B, p.Cv, p.Nq, static_cast<const T*>(p.dy), p.dy_sb, p.dy_sc,
                        static_cast<const T*>(p.o), p.o_sb, p.o_sc, static_cast<acc_t<T>*>(p.delta),
                        tid, bx, by, gy);
}

// D of the double backward: the first of its four row statistics.
template <typename T>
__device__ void double_backward_d_block(const SelfAttnDoubleBackwardParams& p, int tid, int64_t bx, int64_t by,
                                   int64_t gy) {
  row_dot_dy_o_block<T>(p.B, p.Cv, p.Nq, static_cast<const T*>(p.dy), p.dy_sb, p.dy_sc,
                        static_cast<const T*>(p.o), p.o_sb, p.o_sc, static_cast<acc_t<T>*>(p.rowstats),
                        tid, bx, by, gy);
}

// Sum over the block of each thread's float64 partial s, by a tree in shared memory (kThreads
// doubles) in a fixed order; thread 0 writes it to *out.
__device__ __forceinline__ void block_sum_f64(double s, double* smem, int tid, double* out) {
  smem[tid] = s;
  __syncthreads();
  for (int half = kThreads / 2; half > 0; half /= 2) {
    if (tid < half) smem[tid] += smem[tid + half];
    __syncthreads();
  }
  if (tid == 0) *out = smem[0];
}

// dgamma = sum of all B * Nq deltas, by one block: thread tid sums elements tid, tid + kThreads, ...
// in float64, then the tree.
template <typename T>
__device__ void dgamma_block(const SelfAttnBackwardParams& p, double* smem, int tid) {
  using Acc = acc_t<T>;
  const Acc* delta = static_cast<const Acc*>(p.delta);
  const int64_t n = p.B * p.Nq;
  double s = 0.0;
  for (int64_t k = tid; k < n; k += kThreads) s += static_cast<double>(delta[k]);
  block_sum_f64(s, smem, tid, p.dgamma);
}

// d_gamma = sum over b, i of (P_i - D_i R_i + Q_i) (rowstats = D, R, P, Q, each (B, Nq)), by one
// block as dgamma_block.
template <typename T>
__device__ void double_backward_dgamma_block(const SelfAttnDoubleBackwardParams& p, double* smem, int tid) {
  using Acc = acc_t<T>;
  const int64_t n = p.B * p.Nq;
  const Acc* D = static_cast<const Acc*>(p.rowstats);
  const Acc* R = D + n;
  const Acc* P = D + 2 * n;
  const Acc* Q = D + 3 * n;
  double s = 0.0;
  for (int64_t k = tid; k < n; k += kThreads)
    s += static_cast<double>(P[k]) - static_cast<double>(D[k]) * static_cast<double>(R[k]) +
         static_cast<double>(Q[k]);
  block_sum_f64(s, smem, tid, p.d_gamma);
}

// df[k] = gamma * scale * df_accum[k] for k = bx * kThreads + tid, + gx * kThreads, ...: a flat
// grid-stride loop.
template <typename T>
__device__ void df_finish_block(const SelfAttnBackwardParams& p, int tid, int64_t bx, int64_t gx) {
  using Acc = acc_t<T>;
  const Acc mul = convert<Acc>(*static_cast<const T*>(p.gamma)) * static_cast<Acc>(p.scale);
  const Acc* acc = static_cast<const Acc*>(p.df_accum);
  T* df = static_cast<T*>(p.df);
  const int64_t n = p.B * p.Cqk * p.Nq;
  for (int64_t k = bx * kThreads + tid; k < n; k += gx * kThreads) df[k] = convert<T>(acc[k] * mul);
}

#if defined(__CUDACC__)
// The block sums' shared memory is dynamic (the plan's), declared once as bytes.
#define SAGAN_ROWSTATS_SMEM(name)                                       \
  extern __shared__ __align__(16) unsigned char sagan_rowstats_smem[]; \
  double* name = reinterpret_cast<double*>(sagan_rowstats_smem)

template <typename T>
__global__ void __launch_bounds__(kThreads) delta_kernel(const SelfAttnBackwardParams p) {
  delta_block<T>(p, threadIdx.x, blockIdx.x, blockIdx.y, gridDim.y);
}

template <typename T>
__global__ void __launch_bounds__(kThreads) dgamma_kernel(const SelfAttnBackwardParams p) {
  SAGAN_ROWSTATS_SMEM(smem);
  dgamma_block<T>(p, smem, threadIdx.x);
}

template <typename T>
__global__ void __launch_bounds__(kThreads) df_finish_kernel(const SelfAttnBackwardParams p) {
  df_finish_block<T>(p, threadIdx.x, blockIdx.x, gridDim.x);
}

template <typename T>
__global__ void __launch_bounds__(kThreads) double_backward_d_kernel(const SelfAttnDoubleBackwardParams p) {
  double_backward_d_block<T>(p, threadIdx.x, blockIdx.x, blockIdx.y, gridDim.y);
}

template <typename T>
__global__ void __launch_bounds__(kThreads) double_backward_dgamma_kernel(const SelfAttnDoubleBackwardParams p) {
  SAGAN_ROWSTATS_SMEM(smem);
  double_backward_dgamma_block<T>(p, smem, threadIdx.x);
}
#undef SAGAN_ROWSTATS_SMEM

// delta and dgamma (before the main kernels).
template <typename T>
cudaError_t launch_pre(const SelfAttnBackwardParams& p, cudaStream_t stream) {
  if (cudaError_t e = launch_plan(plan_row_dot(p.B, p.Nq), delta_kernel<T>, stream, p); e != cudaSuccess)
    return e;
  return launch_plan(plan_block_sum(), dgamma_kernel<T>, stream, p);
}

// df from df_accum (after the main kernels; its plan runs in the atomic mode only).
template <typename T>
cudaError_t launch_post(const SelfAttnBackwardParams& p, cudaStream_t stream) {
  return launch_plan(plan_df_finish(p), df_finish_kernel<T>, stream, p);
}

// Double backward: D (before its kernels) and d_gamma (after them).
template <typename T>
cudaError_t launch_double_backward_pre(const SelfAttnDoubleBackwardParams& p, cudaStream_t stream) {
  return launch_plan(plan_row_dot(p.B, p.Nq), double_backward_d_kernel<T>, stream, p);
}

template <typename T>
cudaError_t launch_double_backward_post(const SelfAttnDoubleBackwardParams& p, cudaStream_t stream) {
  return launch_plan(plan_block_sum(), double_backward_dgamma_kernel<T>, stream, p);
}
#endif  // __CUDACC__

}  // namespace sagan::kernels::cuda::rowstats
