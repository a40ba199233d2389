// Host launchers of the SIMT kernels, templated on the storage type; instantiated once per dtype by
// kernels/cuda/simt/instantiations/self_attn_simt_<dtype>.cu. The one place that picks a kernel's
// channel tile, grid and shared memory for a shape.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "kernels/cuda/self_attn_cuda.h"
#include "kernels/cuda/simt/self_attn_simt_double_bwd_kernel.cuh"
#include "kernels/cuda/simt/self_attn_simt_kernel.cuh"

namespace sagan::kernels::cuda::simt {

// Opts a kernel in to more than the default 48 KB of dynamic shared memory (cheap; per device).
template <typename Kernel>
inline cudaError_t set_smem(Kernel kernel, size_t bytes) {
  if (bytes <= 48 * 1024) return cudaSuccess;
  return cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                              static_cast<int>(bytes));
}

// Grid of (tiles, chunks, batch): y and z capped at 65535 (the kernels loop over the rest).
inline bool make_grid(int64_t tiles, int64_t chunks, int64_t batch, dim3* grid) {
  if (tiles <= 0 || chunks <= 0 || batch <= 0 || tiles > kMaxGridX) return false;
  *grid = dim3(static_cast<unsigned>(tiles),
               static_cast<unsigned>(chunks < kMaxGridYZ ? chunks : kMaxGridYZ),
               static_cast<unsigned>(batch < kMaxGridYZ ? batch : kMaxGridYZ));
  return true;
}

// The wide channel tile (128 channels for float accumulation) when the channel count needs it.
template <typename Acc>
inline bool use_wide(int64_t channels) {
  return SimtChannelTiles<Acc>::kWide != SimtChannelTiles<Acc>::kNarrow &&
         channels > SimtChannelTiles<Acc>::kNarrow * kTx;
}

template <typename T, int VC>
cudaError_t launch_fwd_vc(const SelfAttnFwdParams& p, cudaStream_t stream) {
  using Acc = acc_t<T>;
  using S = FwdSmem<Acc, VC>;
  dim3 grid;
  const int64_t n_cv = p.Cv > 0 ? ceil_div(p.Cv, S::kBCV) : 1;  // chunk 0 writes lse
  if (!make_grid(ceil_div(p.Nq, kBlockQ), n_cv, p.B, &grid)) return cudaErrorInvalidConfiguration;
  const Acc scale_exp = static_cast<Acc>(p.scale * ExpBase<Acc>::kFromNatural);
  auto kernel = self_attn_simt_fwd_kernel<T, Acc, VC>;
  cudaError_t err = set_smem(kernel, S::kBytes);
  if (err != cudaSuccess) return err;
  kernel<<<grid, kThreads, S::kBytes, stream>>>(p, static_cast<const T*>(p.gamma), scale_exp);
  return cudaGetLastError();
}

template <typename T>
cudaError_t launch_fwd(const SelfAttnFwdParams& p, cudaStream_t stream) {
  using Acc = acc_t<T>;
  if (p.B <= 0 || p.Nq <= 0) return cudaSuccess;  // no output element
  if (use_wide<Acc>(p.Cv)) return launch_fwd_vc<T, SimtChannelTiles<Acc>::kWide>(p, stream);
  return launch_fwd_vc<T, SimtChannelTiles<Acc>::kNarrow>(p, stream);
}

template <typename T, int VC>
cudaError_t launch_bwd_dh(const SelfAttnBwdParams& p, typename AccumulateType<T>::type scale_exp,
                          cudaStream_t stream) {
  using Acc = acc_t<T>;
  using S = DhSmem<Acc, VC>;
  dim3 grid;
  if (!make_grid(ceil_div(p.Nk, kBlockK), ceil_div(p.Cv, S::kBCV), p.B, &grid))
    return cudaErrorInvalidConfiguration;
  auto kernel = self_attn_simt_bwd_dh_kernel<T, Acc, VC>;
  cudaError_t err = set_smem(kernel, S::kBytes);
  if (err != cudaSuccess) return err;
  kernel<<<grid, kThreads, S::kBytes, stream>>>(p, static_cast<const T*>(p.gamma), scale_exp);
  return cudaGetLastError();
}

template <typename T, int VC>
cudaError_t launch_bwd_dg(const SelfAttnBwdParams& p, typename AccumulateType<T>::type scale_exp,
                          bool atomic_df, cudaStream_t stream) {
  using Acc = acc_t<T>;
  using S = DgSmem<Acc, VC>;
  dim3 grid;
  if (!make_grid(ceil_div(p.Nk, kBlockK), ceil_div(p.Cqk, S::kBCQ), p.B, &grid))
    return cudaErrorInvalidConfiguration;
  const size_t bytes = atomic_df ? S::kBytesAtomic : S::kBytes;
  auto kernel = self_attn_simt_bwd_dg_kernel<T, Acc, VC>;
  cudaError_t err = set_smem(kernel, S::kBytesAtomic);  // the larger of the two, once for both
  if (err != cudaSuccess) return err;
  kernel<<<grid, kThreads, bytes, stream>>>(p, static_cast<const T*>(p.gamma),
                                            static_cast<const Acc*>(p.delta),
                                            atomic_df ? static_cast<Acc*>(p.df_accum) : nullptr,
                                            scale_exp);
  return cudaGetLastError();
}

template <typename T, int VC>
cudaError_t launch_bwd_df(const SelfAttnBwdParams& p, typename AccumulateType<T>::type scale_exp,
                          cudaStream_t stream) {
  using Acc = acc_t<T>;
  using S = DfSmem<Acc, VC>;
  dim3 grid;
  if (!make_grid(ceil_div(p.Nq, kBlockQ), ceil_div(p.Cqk, S::kBCQ), p.B, &grid))
    return cudaErrorInvalidConfiguration;
  auto kernel = self_attn_simt_bwd_df_kernel<T, Acc, VC>;
  cudaError_t err = set_smem(kernel, S::kBytes);
  if (err != cudaSuccess) return err;
  kernel<<<grid, kThreads, S::kBytes, stream>>>(p, static_cast<const T*>(p.gamma),
                                                static_cast<const Acc*>(p.delta), scale_exp);
  return cudaGetLastError();
}

// dh, then dg (with the atomic df when df_accum is given, determinism is not asked for and dg is
// wanted anyway), then the deterministic df. Only the wanted gradients are launched. A kernel whose
// output is empty is not launched; one whose contraction is empty (Nq == 0 for dh and dg, Nk == 0 for
// df) still writes its zeros.
template <typename T>
cudaError_t launch_bwd(const SelfAttnBwdParams& p, cudaStream_t stream) {
  using Acc = acc_t<T>;
  constexpr int kWide = SimtChannelTiles<Acc>::kWide;
  constexpr int kNarrow = SimtChannelTiles<Acc>::kNarrow;
  if (p.B <= 0) return cudaSuccess;
  const Acc scale_exp = static_cast<Acc>(p.scale * ExpBase<Acc>::kFromNatural);
  const bool atomic_df = atomic_df_in_dg(p);
  cudaError_t err = cudaSuccess;
  if (p.want_dh && p.Cv > 0 && p.Nk > 0) {
    err = use_wide<Acc>(p.Cv) ? launch_bwd_dh<T, kWide>(p, scale_exp, stream)
                              : launch_bwd_dh<T, kNarrow>(p, scale_exp, stream);
    if (err != cudaSuccess) return err;
  }
  if (p.want_dg && p.Cqk > 0 && p.Nk > 0) {
    err = use_wide<Acc>(p.Cqk) ? launch_bwd_dg<T, kWide>(p, scale_exp, atomic_df, stream)
                               : launch_bwd_dg<T, kNarrow>(p, scale_exp, atomic_df, stream);
    if (err != cudaSuccess) return err;
  }
  if (p.want_df && !atomic_df && p.Cqk > 0 && p.Nq > 0) {
    err = use_wide<Acc>(p.Cqk) ? launch_bwd_df<T, kWide>(p, scale_exp, stream)
                               : launch_bwd_df<T, kNarrow>(p, scale_exp, stream);
    if (err != cudaSuccess) return err;
  }
  return cudaSuccess;
}

// One kernel of the double backward over a grid of (tiles, chunks of VC * 16 channels, B).
template <typename T, int VC, DoubleBwdPart kPart>
cudaError_t launch_double_bwd_part(const SelfAttnDoubleBwdParams& p, int64_t tiles, int64_t channels,
                                   size_t smem_bytes, typename AccumulateType<T>::type ugamma,
                                   typename AccumulateType<T>::type scale_exp, cudaStream_t stream) {
  using Acc = acc_t<T>;
  dim3 grid;
  const int64_t chunks = channels > 0 ? ceil_div(channels, DoubleBwdSmem<Acc, VC>::kBC) : 1;
  if (!make_grid(tiles, chunks, p.B, &grid)) return cudaErrorInvalidConfiguration;
  auto kernel = self_attn_simt_double_bwd_kernel<T, Acc, VC, kPart>;
  cudaError_t err = set_smem(kernel, smem_bytes);
  if (err != cudaSuccess) return err;
  kernel<<<grid, kThreads, smem_bytes, stream>>>(p, ugamma, scale_exp);
  return cudaGetLastError();
}

// The query-side (d_f, d_dy) or key-side (d_g, d_h) kernel with the channel tile that C channels need.
template <typename T, DoubleBwdPart kPart>
cudaError_t launch_double_bwd_output(const SelfAttnDoubleBwdParams& p, int64_t tiles, int64_t C,
                                     typename AccumulateType<T>::type ugamma,
                                     typename AccumulateType<T>::type scale_exp, cudaStream_t stream) {
  using Acc = acc_t<T>;
  constexpr int kWide = SimtChannelTiles<Acc>::kWide;
  constexpr int kNarrow = SimtChannelTiles<Acc>::kNarrow;
  if (use_wide<Acc>(C))
    return launch_double_bwd_part<T, kWide, kPart>(p, tiles, C, DoubleBwdSmem<Acc, kWide>::kBytes, ugamma,
                                                   scale_exp, stream);
  return launch_double_bwd_part<T, kNarrow, kPart>(p, tiles, C, DoubleBwdSmem<Acc, kNarrow>::kBytes,
                                                   ugamma, scale_exp, stream);
}

// The double backward between D and d_gamma (self_attn_bwd_rowstats.cuh, run by the dispatch): the row
// statistics R, P, Q, then d_f, d_dy (query tiles) and d_g, d_h (key tiles), in stream order. A kernel
// whose output is empty is not launched; one whose loop is empty (Nk == 0 for d_f and d_dy, Nq == 0
// for d_g and d_h) still writes its output (zeros, or a o for d_dy).
template <typename T>
cudaError_t launch_double_bwd(const SelfAttnDoubleBwdParams& p, cudaStream_t stream) {
  using Acc = acc_t<T>;
  constexpr int kNarrow = SimtChannelTiles<Acc>::kNarrow;
  if (p.B <= 0) return cudaSuccess;
  const Acc scale_exp = static_cast<Acc>(p.scale * ExpBase<Acc>::kFromNatural);
  const Acc ugamma = static_cast<Acc>(p.ugamma);
  const int64_t q_tiles = ceil_div(p.Nq, kBlockQ), k_tiles = ceil_div(p.Nk, kBlockK);
  cudaError_t err = cudaSuccess;
  if (p.Nq > 0) {
    err = launch_double_bwd_part<T, kNarrow, DoubleBwdPart::kStats>(
        p, q_tiles, 0, DoubleBwdSmem<Acc, kNarrow>::kStatsBytes, ugamma, scale_exp, stream);
    if (err != cudaSuccess) return err;
  }
  if (p.Nq > 0 && p.Cqk > 0) {
    err = launch_double_bwd_output<T, DoubleBwdPart::kDf>(p, q_tiles, p.Cqk, ugamma, scale_exp, stream);
    if (err != cudaSuccess) return err;
  }
  if (p.Nq > 0 && p.Cv > 0) {
    err = launch_double_bwd_output<T, DoubleBwdPart::kDdy>(p, q_tiles, p.Cv, ugamma, scale_exp, stream);
    if (err != cudaSuccess) return err;
  }
  if (p.Nk > 0 && p.Cqk > 0) {
    err = launch_double_bwd_output<T, DoubleBwdPart::kDg>(p, k_tiles, p.Cqk, ugamma, scale_exp, stream);
    if (err != cudaSuccess) return err;
  }
  if (p.Nk > 0 && p.Cv > 0) {
    err = launch_double_bwd_output<T, DoubleBwdPart::kDh>(p, k_tiles, p.Cv, ugamma, scale_exp, stream);
    if (err != cudaSuccess) return err;
  }
  return cudaSuccess;
}

}  // namespace sagan::kernels::cuda::simt
