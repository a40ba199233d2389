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
//    float32 accumulation and softmax statistics, Cqk <= kMmaMaxCqk.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "kernels/self_attn_params.h"

namespace sagan::kernels::cuda {

enum class DType { kFloat16, kBFloat16, kFloat32, kFloat64 };

// Forward. p.f, p.g, p.h, p.x (optional), p.y, p.o are device pointers of dtype `dtype`; p.lse is a
// device float64 (B, Nq) buffer. p.gamma and p.scale: p.scale is used, p.gamma is NOT (the host must
// not read gamma: that would synchronise and break graph capture); `gamma` below is read on the device.
struct FwdArgs {
  SelfAttnFwdParams p;
  const void* gamma = nullptr;  // device pointer, one element of dtype `dtype`
};

// Backward. p.dy, p.f, p.g, p.h are inputs of dtype `dtype` (N stride 1, other strides free); p.o and
// p.dgamma are unused (the glue computes delta and dgamma); p.df, p.dg, p.dh are contiguous outputs of
// dtype `dtype`, fully written by the kernels (except p.df when df_accum is used, see below).
//   dh[c, j] = gamma * sum_i p_ij dy[c, i]
//   dg[c, j] = gamma * scale * sum_i ds_ij f[c, i]
//   df[c, i] = gamma * scale * sum_j ds_ij g[c, j]
//   with ds_ij = p_ij (dp_ij - delta_i), dp_ij = sum_c dy[c, i] h[c, j],
//   p_ij = exp(scale * s_ij - lse_i) recomputed from the saved float64 lse.
struct BwdArgs {
  SelfAttnBwdParams p;
  const void* gamma = nullptr;   // device pointer, one element of dtype `dtype`
  const void* delta = nullptr;   // (B, Nq) contiguous, accumulate type (float64 for float64 inputs,
                                 // else float32): delta_i = sum_c dy[c, i] o[c, i] (without gamma)
  // Either the kernels write p.df themselves (deterministic == true or df_accum == nullptr: each df
  // element is summed by one thread in a fixed order, so results are bit-identical run to run), or
  // they atomically add sum_j ds_ij g[c, j] (no gamma, no scale) into df_accum, a zeroed (B, Cqk, Nq)
  // contiguous buffer of the accumulate type, and the glue finishes df = gamma * scale * df_accum.
  void* df_accum = nullptr;
  bool deterministic = false;
};

// SIMT kernels: every dtype, every shape.
cudaError_t self_attn_fwd_simt(DType dtype, const FwdArgs& args, cudaStream_t stream);
cudaError_t self_attn_bwd_simt(DType dtype, const BwdArgs& args, cudaStream_t stream);

// Tensor-core kernels: float16 and bfloat16, Cqk <= kMmaMaxCqk, on sm_80 and newer.
inline constexpr int64_t kMmaMaxCqk = 128;
bool mma_supported(DType dtype, int64_t Cqk, int device_major);
cudaError_t self_attn_fwd_mma(DType dtype, const FwdArgs& args, cudaStream_t stream);
cudaError_t self_attn_bwd_mma(DType dtype, const BwdArgs& args, cudaStream_t stream);

}  // namespace sagan::kernels::cuda
