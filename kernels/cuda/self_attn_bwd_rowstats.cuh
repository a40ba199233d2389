// Pre- and post-processing of the CUDA backward, shared by both kernel families (FlashAttention's
// compute_dot_do_o and convert_dQ):
//   before: delta_i = sum_c dy[c,i] o[c,i] (accumulate dtype), and dgamma = sum over b, i of delta
//           (float64), each summed by one thread or one block in a fixed order: deterministic;
//   after, in the atomic mode only: df = gamma * scale * df_accum, rounded to the storage dtype.
// Block bodies take (tid, block indices) so the host emulation runs them as the GPU does.
#pragma once

#include <cstdint>

#include "kernels/cuda/self_attn_cuda_common.cuh"
#include "kernels/self_attn_params.h"

namespace sagan::kernels::cuda::rowstats {

inline constexpr int kThreads = 256;

// delta of queries bx * kThreads + tid, for batches by, by + gy, ... (grid y is capped).
template <typename T>
__device__ void delta_block(const SelfAttnBwdParams& p, int tid, int64_t bx, int64_t by, int64_t gy) {
  using Acc = acc_t<T>;
  const int64_t i = bx * kThreads + tid;
  if (i >= p.Nq) return;
  const T* dy = static_cast<const T*>(p.dy);
  const T* o = static_cast<const T*>(p.o);
  Acc* delta = static_cast<Acc*>(p.delta);
  for (int64_t b = by; b < p.B; b += gy) {
    Acc d = Acc(0);
    for (int64_t c = 0; c < p.Cv; ++c)
      d += convert<Acc>(dy[b * p.dy_sb + c * p.dy_sc + i]) * convert<Acc>(o[b * p.o_sb + c * p.o_sc + i]);
    delta[b * p.Nq + i] = d;
  }
}

// dgamma = sum of all B * Nq deltas, by one block: thread tid sums elements tid, tid + kThreads, ...
// in float64, then a tree in shared memory (kThreads doubles) in a fixed order.
template <typename T>
__device__ void dgamma_block(const SelfAttnBwdParams& p, double* smem, int tid) {
  using Acc = acc_t<T>;
  const Acc* delta = static_cast<const Acc*>(p.delta);
  const int64_t n = p.B * p.Nq;
  double s = 0.0;
  for (int64_t k = tid; k < n; k += kThreads) s += static_cast<double>(delta[k]);
  smem[tid] = s;
  __syncthreads();
  for (int half = kThreads / 2; half > 0; half /= 2) {
    if (tid < half) smem[tid] += smem[tid + half];
    __syncthreads();
  }
  if (tid == 0) *p.dgamma = smem[0];
}

// df[k] = gamma * scale * df_accum[k] for k = (bx * gy_stride + ...) : a flat grid-stride loop.
template <typename T>
__device__ void df_finish_block(const SelfAttnBwdParams& p, int tid, int64_t bx, int64_t gx) {
  using Acc = acc_t<T>;
  const Acc mul = convert<Acc>(*static_cast<const T*>(p.gamma)) * static_cast<Acc>(p.scale);
  const Acc* acc = static_cast<const Acc*>(p.df_accum);
  T* df = static_cast<T*>(p.df);
  const int64_t n = p.B * p.Cqk * p.Nq;
  for (int64_t k = bx * kThreads + tid; k < n; k += gx * kThreads) df[k] = convert<T>(acc[k] * mul);
}

#if defined(__CUDACC__)
template <typename T>
__global__ void __launch_bounds__(kThreads) delta_kernel(const SelfAttnBwdParams p) {
  delta_block<T>(p, threadIdx.x, blockIdx.x, blockIdx.y, gridDim.y);
}

template <typename T>
__global__ void __launch_bounds__(kThreads) dgamma_kernel(const SelfAttnBwdParams p) {
  __shared__ double smem[kThreads];
  dgamma_block<T>(p, smem, threadIdx.x);
}

template <typename T>
__global__ void __launch_bounds__(kThreads) df_finish_kernel(const SelfAttnBwdParams p) {
  df_finish_block<T>(p, threadIdx.x, blockIdx.x, gridDim.x);
}

// delta and dgamma (before the main kernels).
template <typename T>
cudaError_t launch_pre(const SelfAttnBwdParams& p, cudaStream_t stream) {
  const int64_t tiles = ceil_div(p.Nq, kThreads);
  if (tiles > 2147483647LL) return cudaErrorInvalidConfiguration;
  const dim3 grid(static_cast<unsigned>(tiles), static_cast<unsigned>(p.B < 65535 ? p.B : 65535));
  delta_kernel<T><<<grid, kThreads, 0, stream>>>(p);
  if (cudaError_t e = cudaGetLastError(); e != cudaSuccess) return e;
  dgamma_kernel<T><<<1, kThreads, 0, stream>>>(p);
  return cudaGetLastError();
}

// df from df_accum (after the main kernels, atomic mode only).
template <typename T>
cudaError_t launch_post(const SelfAttnBwdParams& p, cudaStream_t stream) {
  const int64_t n = p.B * p.Cqk * p.Nq;
  const int64_t blocks = ceil_div(n, kThreads) < 65535 ? ceil_div(n, kThreads) : 65535;
  df_finish_kernel<T><<<static_cast<unsigned>(blocks), kThreads, 0, stream>>>(p);
  return cudaGetLastError();
}
#endif  // __CUDACC__

}  // namespace sagan::kernels::cuda::rowstats
