// Entry points of the CUDA kernels of sagan::self_attn, as the torch glue (csrc/cuda) calls them.
// Free of torch headers: the kernels see raw pointers, sizes and strides (kernels/self_attn_params.h)
// and launch on the stream they are given. Every launcher returns the cudaError_t of its launches
// (cudaGetLastError), so that the glue reports it; none synchronises, allocates or reads device memory
// on the host, so every call is CUDA-graph capturable.
//
// Two families of kernels share this contract:
//  - SIMT (kernels/cuda/simt): exact FFMA arithmetic, any Cqk, Cv, Nq, Nk; float32 and float64 compute in
//    their own precision, float16/bfloat16 compute in float32 (the fallback for shapes the tensor-core
//    kernels do not take);
//  - MMA (kernels/cuda/mma): float16/bfloat16 on tensor cores (mma.sync m16n8k16, ldmatrix, cp.async),
//    float32 accumulation and softmax statistics, Cqk <= mma::kMaxCqk.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "kernels/self_attn_params.h"

namespace sagan::kernels::cuda {

enum class DType { kFloat16, kBFloat16, kFloat32, kFloat64 };

// Forward and backward take the params struct of kernels/self_attn_params.h, the whole contract of a
// launch: all pointers are device pointers of dtype `dtype` (lse float64; delta, df_accum the
// accumulate type; dgamma float64), gamma is read on the device. The backward writes p.delta and
// p.dgamma (from p.dy and p.o), then the wanted ones of p.df, p.dg, p.dh (contiguous, fully).
//   dh[c, j] = gamma * sum_i p_ij dy[c, i]
//   dg[c, j] = gamma * scale * sum_i ds_ij f[c, i]
//   df[c, i] = gamma * scale * sum_j ds_ij g[c, j]
//   with ds_ij = p_ij (dp_ij - delta_i), dp_ij = sum_c dy[c, i] h[c, j],
//   p_ij = exp(scale * s_ij - lse_i) recomputed from the saved float64 lse.

// Whether the dg kernels also accumulate df with atomics (a last kernel then writes df = gamma *
// scale * df_accum): only when dg is computed anyway, df is wanted, determinism is not asked for and a buffer
// is given. Otherwise a separate df kernel sums each element in a fixed order.
inline bool atomic_df_in_dg(const SelfAttnBackwardParams& p) {
  return p.want_df && p.want_dg && !p.deterministic && p.df_accum != nullptr;
}

// The entry points: self_attn_cuda_dispatch.cu picks the kernel family (tensor cores for
// float16/bfloat16 with Cqk <= mma::kMaxCqk on sm_80+ and B <= mma::kMaxBatch, SIMT otherwise, or SIMT
// always when the environment variable SAGAN_ATTN_CUDA_KERNELS=simt is set) and the tile configuration,
// for the current CUDA device; each family's launch plans (self_attn_launch_plan.h) the grids.
cudaError_t self_attn_fwd(DType dtype, const SelfAttnFwdParams& p, cudaStream_t stream);
cudaError_t self_attn_backward(DType dtype, const SelfAttnBackwardParams& p, cudaStream_t stream);

// The double backward (kernels/self_attn_params.h, SelfAttnDoubleBackwardParams): device pointers of dtype
// `dtype` (lse float64, rowstats the accumulate type, d_gamma float64), gamma and ugamma read on the
// device. Writes the row statistics p.rowstats (D, R, P, Q), then p.d_f, p.d_g, p.d_h, p.d_dy
// (contiguous, fully) and p.d_gamma; no atomics: bitwise identical run to run. SIMT kernels for every
// dtype and shape (kernels/cuda/simt/self_attn_simt_double_backward_kernel.cuh); no tensor-core variant yet.
cudaError_t self_attn_double_backward(DType dtype, const SelfAttnDoubleBackwardParams& p, cudaStream_t stream);

}  // namespace sagan::kernels::cuda
