// Tile sizes and thread layout of the SIMT kernels of sagan::self_attn: the one place that decides them.
#pragma once

#include <cstdint>

namespace sagan::kernels::cuda::simt {

// Every kernel runs kThreads = 256 threads as a 16 x 16 grid: tx = tid % 16 (consecutive lanes),
// ty = tid / 16. A score tile is kBlockQ x kBlockK (queries x keys); thread (ty, tx) owns rows
// ty*4 .. ty*4+3 and columns tx*4 .. tx*4+3, so the 16 threads of a row group are 16 consecutive
// lanes of one warp (warp shuffles with width 16 reduce a row).
constexpr int kThreads = 256;
constexpr int kTx = 16;
constexpr int kTy = 16;
constexpr int kRowsPerThread = 4;  // rows and columns of a thread's score tile; also the vector width
constexpr int kBlockQ = kTy * kRowsPerThread;  // 64 queries
constexpr int kBlockK = kTx * kRowsPerThread;  // 64 keys
static_assert(kBlockQ == kBlockK, "the output staging buffers alias tiles of either shape");
static_assert(kTx * kTy == kThreads, "16 x 16 threads");

// Depth of one staged chunk of a contraction over channels (Cqk for the scores, Cv for dp).
constexpr int kChunk = 32;

// Shared-memory rows that are read four at a time along the row are padded by kPad elements:
// with row length 64 + 4 = 68 (17 16-byte slots, odd), 16 consecutive rows read at one column hit
// 16 different slots modulo 8, and a transposed store of 8 positions x 4 channels with a row length
// of C + 4 (C a multiple of 32) hits 32 different banks.
constexpr int kPad = 4;

// Output channels of a block (Cv for o and dh, Cqk for dg and df) are kChannelsPerThread * 16: each
// thread accumulates kChannelsPerThread channels x 4 rows. 8 (128 channels, 32 accumulators) for
// float accumulation when the channel count is above 64, else 4 (64 channels); float64 always 4.
template <typename Acc>
struct SimtChannelTiles {
  static constexpr int kWide = 8;
  static constexpr int kNarrow = 4;
};
template <>
struct SimtChannelTiles<double> {
  static constexpr int kWide = 4;
  static constexpr int kNarrow = 4;
};

// Blocks per SM the register allocation is bounded for (__launch_bounds__): two 256-thread blocks
// (<= 128 registers) for float accumulation, one for float64.
template <typename Acc>
struct SimtMinBlocks {
  static constexpr int value = 2;
};
template <>
struct SimtMinBlocks<double> {
  static constexpr int value = 1;
};

// Grids (self_attn_simt_launch_plan.cuh): y and z (channel chunks, batch) are capped at the device
// limits of self_attn_launch_plan.h and looped over inside the kernels.

}  // namespace sagan::kernels::cuda::simt
