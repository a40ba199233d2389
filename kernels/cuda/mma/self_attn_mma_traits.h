// Tile configuration and limits of the tensor-core kernels (kernels/cuda/mma): the one place that
// decides them. The padded Cqk values are the table of kernels/cuda/generate_instantiations.py.
#pragma once

#include <cstdint>

#include "kernels/cuda/self_attn_cuda_instantiations.h"
#include "kernels/cuda/self_attn_launch_plan.h"
#include "kernels/cuda/self_attn_static_switch.h"

namespace sagan::kernels::cuda::mma {

inline constexpr int kThreads = 128;     // 4 warps, each owning 16 rows of a tile
inline constexpr int kTile = 64;         // queries and keys per tile, value channels per chunk
inline constexpr int kLd = kTile + 8;    // smem row stride of T tiles (144 bytes)
inline constexpr int kLdF = kTile + 4;   // smem row stride of float staging tiles

// Cqk is padded (zero rows in shared memory) to the smallest of these that holds it.
using PaddedCqks = IntList<SAGAN_ATTN_MMA_PADDED_CQKS>;
template <int... Cs>
constexpr int last_of(IntList<Cs...>) { int v = 0; ((v = Cs), ...); return v; }
inline constexpr int64_t kMaxCqk = last_of(PaddedCqks{});

inline constexpr int kMinArchMajor = 8;         // mma.sync m16n8k16 with bf16, ldmatrix, cp.async
inline constexpr int64_t kMaxBatch = kMaxGridYZ;  // the batch is grid dimension y or z, not looped over

}  // namespace sagan::kernels::cuda::mma
