// Launch plans of the tensor-core kernels (kernels/cuda/self_attn_launch_plan.h): which kernels a call
// runs, their grids, shared memory and tile-load path. The one place that decides them: the launchers
// (self_attn_mma_launch.cuh) launch these plans, the host emulation (tests/emulation/mma) runs them.
// The grids are the whole problem (no loops over grid dimensions): the dispatch sends batches past
// kMaxBatch to the SIMT kernels.
#pragma once

#include <cstdint>

#include "kernels/cuda/mma/self_attn_mma_kernels.cuh"
#include "kernels/cuda/self_attn_cuda.h"
#include "kernels/cuda/self_attn_launch_plan.h"

namespace sagan::kernels::cuda::mma {

// Forward: grid (query tiles, value chunks, B); cp.async when the f, g and h tiles are aligned.
template <typename T, int kCqk>
LaunchPlan plan_fwd(const SelfAttnFwdParams& p) {
  LaunchPlan pl = exact_grid_plan(true, ceil_div(p.Nq, kTile), ceil_div(p.Cv, kTile), p.B, kThreads,
                                  FwdSmem<T, kCqk>::kBytes);
  pl.aligned = tiles_aligned(p.f, p.f_sb, p.f_sc, p.Nq) && tiles_aligned(p.g, p.g_sb, p.g_sc, p.Nk) &&
               tiles_aligned(p.h, p.h_sb, p.h_sc, p.Nk);
  return pl;
}

// The backward's tile-load path: cp.async when the f, g, h and dy tiles are aligned.
inline bool backward_tiles_aligned(const SelfAttnBackwardParams& p) {
  return tiles_aligned(p.f, p.f_sb, p.f_sc, p.Nq) && tiles_aligned(p.g, p.g_sb, p.g_sc, p.Nk) &&
         tiles_aligned(p.h, p.h_sb, p.h_sc, p.Nk) && tiles_aligned(p.dy, p.dy_sb, p.dy_sc, p.Nq);
}

// Backward, after delta and dgamma, only the wanted gradients: dh, grid (key tiles, value chunks, B).
template <typename T, int kCqk>
LaunchPlan plan_backward_dh(const SelfAttnBackwardParams& p) {
  LaunchPlan pl = exact_grid_plan(p.want_dh, ceil_div(p.Nk, kTile), ceil_div(p.Cv, kTile), p.B, kThreads,
                                  DhSmem<T, kCqk>::kBytes);
  pl.aligned = backward_tiles_aligned(p);
  return pl;
}

// dg, grid (key tiles, B), with df accumulated by atomics when atomic_df_in_dg.
template <typename T, int kCqk>
LaunchPlan plan_backward_dg(const SelfAttnBackwardParams& p) {
  LaunchPlan pl = exact_grid_plan(p.want_dg, ceil_div(p.Nk, kTile), p.B, 1, kThreads, DgSmem<T, kCqk>::kBytes);
  pl.aligned = backward_tiles_aligned(p);
  pl.atomic_df = atomic_df_in_dg(p);
  return pl;
}

// df (deterministic mode, or dg not wanted), grid (query tiles, B).
template <typename T, int kCqk>
LaunchPlan plan_backward_df(const SelfAttnBackwardParams& p) {
  LaunchPlan pl = exact_grid_plan(p.want_df && !atomic_df_in_dg(p), ceil_div(p.Nq, kTile), p.B, 1, kThreads,
                                  DfSmem<T, kCqk>::kBytes);
  pl.aligned = backward_tiles_aligned(p);
  return pl;
}

}  // namespace sagan::kernels::cuda::mma
