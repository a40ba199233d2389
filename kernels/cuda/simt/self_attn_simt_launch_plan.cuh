// Launch plans of the SIMT kernels (kernels/cuda/self_attn_launch_plan.h): which kernels a call runs,
// the channel tile, grid and shared memory of each. The one place that decides them: the launchers
// (self_attn_simt_launch.cuh) launch these plans, the host emulation (tests/emulation/simt) runs them.
// Grids: x = query or key tiles (must fit), y = channel chunks and z = batches, capped (the kernels
// loop over the rest).
#pragma once

#include <cstdint>

#include "kernels/cuda/self_attn_cuda.h"
#include "kernels/cuda/self_attn_launch_plan.h"
#include "kernels/cuda/simt/self_attn_simt_double_backward_kernel.cuh"
#include "kernels/cuda/simt/self_attn_simt_kernel.cuh"

namespace sagan::kernels::cuda::simt {

// The channel tile of a kernel whose blocks cover `channels` output channels: the wide one (128
// channels for float accumulation) when the count needs it, else the narrow one.
template <typename Acc>
constexpr bool use_wide(int64_t channels) {
  return SimtChannelTiles<Acc>::kWide != SimtChannelTiles<Acc>::kNarrow &&
         channels > SimtChannelTiles<Acc>::kNarrow * kTx;
}

// Forward: grid (query tiles, Cv chunks, B); chunk 0 writes lse, so Cv = 0 still runs one chunk.
// Channel tile: use_wide(Cv).
template <typename T, int VC>
LaunchPlan plan_fwd(const SelfAttnFwdParams& p, const GridCaps& caps = {}) {
  using S = FwdSmem<acc_t<T>, VC>;
  const int64_t n_cv = p.Cv > 0 ? ceil_div(p.Cv, S::kBCV) : 1;
  return looped_grid_plan(p.B > 0 && p.Nq > 0, ceil_div(p.Nq, kBlockQ), n_cv, p.B, kThreads, S::kBytes,
                          caps);
}

// Backward, after delta and dgamma: dh, then dg (with the atomic df when atomic_df_in_dg), then the
// deterministic df, only the wanted ones. A kernel whose output is empty does not run; one whose
// contraction is empty (Nq == 0 for dh and dg, Nk == 0 for df) still writes its zeros.
// Channel tiles: use_wide(Cv) for dh, use_wide(Cqk) for dg and df.
template <typename T, int VC>
LaunchPlan plan_backward_dh(const SelfAttnBackwardParams& p, const GridCaps& caps = {}) {
  using S = DhSmem<acc_t<T>, VC>;
  return looped_grid_plan(p.B > 0 && p.want_dh && p.Cv > 0 && p.Nk > 0, ceil_div(p.Nk, kBlockK),
                          ceil_div(p.Cv, S::kBCV), p.B, kThreads, S::kBytes, caps);
}

// dg: launched with the atomic df's larger shared memory or without it; the opt-in is the larger of
// the two, once for both.
template <typename T, int VC>
LaunchPlan plan_backward_dg(const SelfAttnBackwardParams& p, const GridCaps& caps = {}) {
  using S = DgSmem<acc_t<T>, VC>;
  const bool atomic_df = atomic_df_in_dg(p);
  LaunchPlan pl = looped_grid_plan(p.B > 0 && p.want_dg && p.Cqk > 0 && p.Nk > 0, ceil_div(p.Nk, kBlockK),
                                   ceil_div(p.Cqk, S::kBCQ), p.B, kThreads,
                                   atomic_df ? S::kBytesAtomic : S::kBytes, caps);
  pl.smem_opt_in = S::kBytesAtomic;
  pl.atomic_df = atomic_df;
  return pl;
}

template <typename T, int VC>
LaunchPlan plan_backward_df(const SelfAttnBackwardParams& p, const GridCaps& caps = {}) {
  using S = DfSmem<acc_t<T>, VC>;
  return looped_grid_plan(p.B > 0 && p.want_df && !atomic_df_in_dg(p) && p.Cqk > 0 && p.Nq > 0,
                          ceil_div(p.Nq, kBlockQ), ceil_div(p.Cqk, S::kBCQ), p.B, kThreads, S::kBytes, caps);
}

// Double backward, between D and d_gamma (self_attn_backward_rowstats.cuh), in this order: the row
// statistics R, P, Q (grid (query tiles, 1, B), the narrow tile's dot buffers only), then d_f, d_dy
// (query tiles) and d_g, d_h (key tiles) over chunks of their channels. A kernel whose output is empty
// does not run; one whose loop is empty (Nk == 0 for d_f and d_dy, Nq == 0 for d_g and d_h) still
// writes its output (zeros, or a o for d_dy).
constexpr bool double_backward_query_side(DoubleBackwardPart part) {
  return part == DoubleBackwardPart::kStats || part == DoubleBackwardPart::kDf || part == DoubleBackwardPart::kDdy;
}

// The output channels of a part (0 for the statistics): its channel tile is use_wide of them.
template <DoubleBackwardPart kPart>
int64_t double_backward_channels(const SelfAttnDoubleBackwardParams& p) {
  if constexpr (kPart == DoubleBackwardPart::kStats) return 0;
  else if constexpr (kPart == DoubleBackwardPart::kDf || kPart == DoubleBackwardPart::kDg) return p.Cqk;
  else return p.Cv;
}

template <typename T, int VC, DoubleBackwardPart kPart>
LaunchPlan plan_double_backward(const SelfAttnDoubleBackwardParams& p, const GridCaps& caps = {}) {
  using S = DoubleBackwardSmem<acc_t<T>, VC>;
  static_assert(kPart != DoubleBackwardPart::kStats || VC == SimtChannelTiles<acc_t<T>>::kNarrow,
                "the statistics kernel is instantiated with the narrow tile");
  constexpr bool kQuery = double_backward_query_side(kPart);
  const int64_t C = double_backward_channels<kPart>(p);
  const int64_t positions = kQuery ? p.Nq : p.Nk;
  const int64_t tiles = kQuery ? ceil_div(p.Nq, kBlockQ) : ceil_div(p.Nk, kBlockK);
  const bool launch = p.B > 0 && positions > 0 && (kPart == DoubleBackwardPart::kStats || C > 0);
  const int64_t chunks = C > 0 ? ceil_div(C, S::kBC) : 1;
  return looped_grid_plan(launch, tiles, chunks, p.B, kThreads,
                          kPart == DoubleBackwardPart::kStats ? S::kStatsBytes : S::kBytes, caps);
}

}  // namespace sagan::kernels::cuda::simt
