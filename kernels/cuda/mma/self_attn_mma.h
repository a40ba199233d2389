// Launchers of the tensor-core kernels, one per (dtype, padded Cqk); defined in
// self_attn_mma_kernels.cuh and instantiated in instantiations/ (one file per dtype x kCqk, so that the
// build compiles them in parallel).
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include "kernels/cuda/self_attn_cuda.h"

namespace sagan::kernels::cuda::mma {

template <typename T, int kCqk>
cudaError_t launch_fwd(const FwdArgs& args, cudaStream_t stream);
template <typename T, int kCqk>
cudaError_t launch_bwd(const BwdArgs& args, cudaStream_t stream);

#define SAGAN_MMA_FOR_EACH_CQK(X, T) X(T, 16) X(T, 32) X(T, 64) X(T, 128)

#define SAGAN_MMA_DECLARE(T, CQK)                                                 \
  extern template cudaError_t launch_fwd<T, CQK>(const FwdArgs&, cudaStream_t); \
  extern template cudaError_t launch_bwd<T, CQK>(const BwdArgs&, cudaStream_t);
SAGAN_MMA_FOR_EACH_CQK(SAGAN_MMA_DECLARE, __half)
SAGAN_MMA_FOR_EACH_CQK(SAGAN_MMA_DECLARE, __nv_bfloat16)
#undef SAGAN_MMA_DECLARE

}  // namespace sagan::kernels::cuda::mma
