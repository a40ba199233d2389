// Host launchers of the tensor-core kernels, one instantiation per dtype x padded Cqk
// (kernels/cuda/mma/instantiations/): each launches its plans (self_attn_mma_launch_plan.cuh). nvcc
// only: the host emulation (tests/emulation/mma) runs the same plans block by block itself.
#pragma once

#include <cuda_runtime.h>

#include "kernels/cuda/mma/self_attn_mma_launch_plan.cuh"
#include "kernels/cuda/self_attn_launch_plan.h"

namespace sagan::kernels::cuda::mma {

template <typename T, int kCqk>
cudaError_t launch_fwd(const SelfAttnFwdParams& p, cudaStream_t stream) {
  const LaunchPlan pl = plan_fwd<T, kCqk>(p);
  return launch_plan(pl, self_attn_fwd_mma_kernel<T, kCqk>, stream, p, pl.aligned);
}

// dh, dg (with the atomic df when its plan says so), then the deterministic df, in stream order.
template <typename T, int kCqk>
cudaError_t launch_backward(const SelfAttnBackwardParams& p, cudaStream_t stream) {
  const LaunchPlan dh = plan_backward_dh<T, kCqk>(p);
  if (cudaError_t e = launch_plan(dh, self_attn_backward_dh_mma_kernel<T, kCqk>, stream, p, dh.aligned); e != cudaSuccess)
    return e;
  const LaunchPlan dg = plan_backward_dg<T, kCqk>(p);
  if (cudaError_t e = launch_plan(dg, self_attn_backward_dg_mma_kernel<T, kCqk>, stream, p, dg.aligned, dg.atomic_df);
      e != cudaSuccess)
    return e;
  const LaunchPlan df = plan_backward_df<T, kCqk>(p);
  return launch_plan(df, self_attn_backward_df_mma_kernel<T, kCqk>, stream, p, df.aligned);
}

}  // namespace sagan::kernels::cuda::mma
