// Host launchers of the SIMT kernels, templated on the storage type; instantiated once per dtype by
// kernels/cuda/simt/instantiations/self_attn_simt_<dtype>.cu. Each picks a kernel's channel tile and
// launches its plan (self_attn_simt_launch_plan.cuh: grid, shared memory, whether it runs).
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "kernels/cuda/self_attn_cuda.h"
#include "kernels/cuda/self_attn_launch_plan.h"
#include "kernels/cuda/simt/self_attn_simt_launch_plan.cuh"

namespace sagan::kernels::cuda::simt {

template <typename T, int VC>
cudaError_t launch_fwd_vc(const SelfAttnFwdParams& p, cudaStream_t stream) {
  using Acc = acc_t<T>;
  const Acc scale_exp = static_cast<Acc>(p.scale * ExpBase<Acc>::kFromNatural);
  return launch_plan(plan_fwd<T, VC>(p), self_attn_simt_fwd_kernel<T, Acc, VC>, stream, p,
                     static_cast<const T*>(p.gamma), scale_exp);
}

template <typename T>
cudaError_t launch_fwd(const SelfAttnFwdParams& p, cudaStream_t stream) {
  using Acc = acc_t<T>;
  if (use_wide<Acc>(p.Cv)) return launch_fwd_vc<T, SimtChannelTiles<Acc>::kWide>(p, stream);
  return launch_fwd_vc<T, SimtChannelTiles<Acc>::kNarrow>(p, stream);
}

template <typename T, int VC>
cudaError_t launch_backward_dh(const SelfAttnBackwardParams& p, typename AccumulateType<T>::type scale_exp,
                          cudaStream_t stream) {
  using Acc = acc_t<T>;
  return launch_plan(plan_backward_dh<T, VC>(p), self_attn_simt_backward_dh_kernel<T, Acc, VC>, stream, p,
                     static_cast<const T*>(p.gamma), scale_exp);
}

// dg (with the atomic df when its plan says so), then the deterministic df.
template <typename T, int VC>
cudaError_t launch_backward_dg_df(const SelfAttnBackwardParams& p, typename AccumulateType<T>::type scale_exp,
                             cudaStream_t stream) {
  using Acc = acc_t<T>;
  const T* gamma = static_cast<const T*>(p.gamma);
  const Acc* delta = static_cast<const Acc*>(p.delta);
  const LaunchPlan dg = plan_backward_dg<T, VC>(p);
  Acc* df_accum = dg.atomic_df ? static_cast<Acc*>(p.df_accum) : nullptr;
  cudaError_t err =
      launch_plan(dg, self_attn_simt_backward_dg_kernel<T, Acc, VC>, stream, p, gamma, delta, df_accum, scale_exp);
  if (err != cudaSuccess) return err;
  return launch_plan(plan_backward_df<T, VC>(p), self_attn_simt_backward_df_kernel<T, Acc, VC>, stream, p, gamma, delta,
                     scale_exp);
}

// dh (channel tile of Cv), then dg and df (channel tile of Cqk), in stream order; the plans say which
// of them run.
template <typename T>
cudaError_t launch_backward(const SelfAttnBackwardParams& p, cudaStream_t stream) {
  using Acc = acc_t<T>;
  constexpr int kWide = SimtChannelTiles<Acc>::kWide;
  constexpr int kNarrow = SimtChannelTiles<Acc>::kNarrow;
  const Acc scale_exp = static_cast<Acc>(p.scale * ExpBase<Acc>::kFromNatural);
  const cudaError_t err = use_wide<Acc>(p.Cv) ? launch_backward_dh<T, kWide>(p, scale_exp, stream)
                                              : launch_backward_dh<T, kNarrow>(p, scale_exp, stream);
  if (err != cudaSuccess) return err;
  return use_wide<Acc>(p.Cqk) ? launch_backward_dg_df<T, kWide>(p, scale_exp, stream)
                              : launch_backward_dg_df<T, kNarrow>(p, scale_exp, stream);
}

// One part of the double backward with the channel tile its channels need (the statistics: narrow).
template <typename T, DoubleBackwardPart kPart>
cudaError_t launch_double_backward_part(const SelfAttnDoubleBackwardParams& p, typename AccumulateType<T>::type scale_exp,
                                   cudaStream_t stream) {
  using Acc = acc_t<T>;
  constexpr int kWide = SimtChannelTiles<Acc>::kWide;
  constexpr int kNarrow = SimtChannelTiles<Acc>::kNarrow;
  if constexpr (kPart != DoubleBackwardPart::kStats) {
    if (use_wide<Acc>(double_backward_channels<kPart>(p)))
      return launch_plan(plan_double_backward<T, kWide, kPart>(p), self_attn_simt_double_backward_kernel<T, Acc, kWide, kPart>,
                         stream, p, scale_exp);
  }
  return launch_plan(plan_double_backward<T, kNarrow, kPart>(p), self_attn_simt_double_backward_kernel<T, Acc, kNarrow, kPart>,
                     stream, p, scale_exp);
}

// The double backward between D and d_gamma (self_attn_backward_rowstats.cuh, run by the dispatch): the row
// statistics R, P, Q, then d_f, d_dy (query tiles) and d_g, d_h (key tiles), in stream order.
template <typename T>
cudaError_t launch_double_backward(const SelfAttnDoubleBackwardParams& p, cudaStream_t stream) {
  using Acc = acc_t<T>;
  const Acc scale_exp = static_cast<Acc>(p.scale * ExpBase<Acc>::kFromNatural);
  cudaError_t err = launch_double_backward_part<T, DoubleBackwardPart::kStats>(p, scale_exp, stream);
  if (err == cudaSuccess) err = launch_double_backward_part<T, DoubleBackwardPart::kDf>(p, scale_exp, stream);
  if (err == cudaSuccess) err = launch_double_backward_part<T, DoubleBackwardPart::kDdy>(p, scale_exp, stream);
  if (err == cudaSuccess) err = launch_double_backward_part<T, DoubleBackwardPart::kDg>(p, scale_exp, stream);
  if (err == cudaSuccess) err = launch_double_backward_part<T, DoubleBackwardPart::kDh>(p, scale_exp, stream);
  return err;
}

}  // namespace sagan::kernels::cuda::simt
