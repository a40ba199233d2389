// Tile sizes and register blocks of the CPU kernels: the one place that decides them.
#pragma once

#include <cstdint>

namespace sagan::kernels::cpu {

// The element types the kernels are instantiated for, by what they read and write (the storage type
// S): float and double, computed in themselves, and bfloat16, computed in float. A bfloat16 is its
// float's upper 16 bits (c10::BFloat16's layout); the kernels widen each element as they read it
// (exactly) and round each output to nearest even as they write it, as torch converts, so bfloat16
// results are bitwise those of converting the inputs to float32, running the float kernels and
// converting back, without the O(B C N) copies.
struct BFloat16Storage {
  uint16_t bits;
};
template <typename S>
struct CpuCompute {
  using type = S;
  static constexpr bool kConverts = false;  // whether S differs from the compute type
};
template <>
struct CpuCompute<BFloat16Storage> {
  using type = float;
  static constexpr bool kConverts = true;
};

// kBlockQ x kBlockK is the score tile: kBlockQ queries along the vector lanes, kBlockK keys. The
// forward and the backward hold it key-major (one row per key, queries contiguous), so the online
// softmax's per-query maximum and sum run down the rows, lane-wise, and the tile is the right-hand
// operand of the value product as it stands (the forward's in panels of one register block's width:
// ScorePanels in self_attn_cpu_kernel.h). The backward's tiles are kBackwardBlockK keys tall. Every
// size is a multiple of every register width, and the key sizes of the micro-kernel's 6 rows.
// Measured (bench/cpu_kernels.py's shapes, AVX-512, one thread, min of interleaved runs): the forward
// is fastest at 96 to 128 keys (192: 7% slower); the backward at 192 (4 to 7% faster than 128 at
// (Cqk, Cv) = (8, 64), (16, 128), (32, 256); 240 and 256: 8% slower again).
template <typename T>
struct CpuTileTraits;

template <>
struct CpuTileTraits<float> {
  static constexpr int64_t kBlockQ = 64;
  static constexpr int64_t kBlockK = 128;
  static constexpr int64_t kBackwardBlockK = 192;
};

template <>
struct CpuTileTraits<double> {
  static constexpr int64_t kBlockQ = 64;
  static constexpr int64_t kBlockK = 128;
  static constexpr int64_t kBackwardBlockK = 192;
};

// The micro-kernel's register block, per register width in bytes (16: the baseline x86-64 build,
// SSE2; 32: AVX2; 64: AVX-512): kMR rows x kNV vector registers of accumulators. AVX2 and SSE2 have
// 16 registers (12 accumulators, 2 of B, 1 broadcast); AVX-512 has 32 (24, 4, 1).
template <typename T, int VecBytes>
struct CpuRegisterBlock {
  static constexpr int kMR = 6;
  static constexpr int kNV = VecBytes == 64 ? 4 : 2;
};

// The forward's work items are groups of up to kForwardQueryGroup consecutive query tiles, which share
// each key tile of g and h while it is in the inner caches: h then streams from the outer caches a
// group's worth of times less often (measured, AVX-512, one thread, B = 1, N = 4096, interleaved with
// the ungrouped kernel: 9-15% faster at Cv >= 128, 3% at (Cqk, Cv) = (8, 64); more where the
// neighbours load the shared cache). Groups shrink (8, 4, 2, 1) where they would leave fewer than
// kForwardMinItems work items, so that small batches still spread over the cores. Results do not
// depend on the grouping: every query tile's arithmetic is the same in any group.
// Where the forward widens each h tile into a float copy (bfloat16 storage), once per key tile and group,
// groups of up to kForwardWideningGroup tiles share that copy, as long as the group's accumulators
// (group x Cv x kBlockQ floats) stay within a float group's at Cv = 512 (512 KiB), so up to Cv = 256.
// Measured (AVX-512, one thread, B = 4, N = 4096, interleaved, with the prefetch of TileLines):
// bfloat16 over float32 forward time at Cv = 256 1.00-1.03 in groups of 4 and 0.99-1.01 in groups of 8,
// at Cv = 64 1.01 and 1.00-1.02 (alike within the noise); float32's own time in groups of 8 was within
// 1% of 4's, so float32 keeps 4.
constexpr int64_t kForwardQueryGroup = 4;
constexpr int64_t kForwardWideningGroup = 8;
constexpr int64_t kForwardGroupCvBudget = kForwardQueryGroup * 512;
constexpr int64_t kForwardMinItems = 16;
inline int64_t forward_max_query_group(bool widens_h, int64_t Cv) {
  return widens_h && kForwardWideningGroup * Cv <= kForwardGroupCvBudget ? kForwardWideningGroup : kForwardQueryGroup;
}
inline int64_t forward_query_group(int64_t B, int64_t n_qtiles, int64_t max_group) {
  for (int64_t g = max_group; g > 1; g /= 2)
    if (B * ((n_qtiles + g - 1) / g) >= kForwardMinItems) return g;
  return 1;
}

// The backward pass splits the keys of each batch into key groups that run in parallel; each group
// owns a partial df buffer of Cqk x Nq, summed in a fixed order at the end. The number of groups
// depends on the shape only (never on the thread count), so results are bitwise reproducible for
// any number of threads. kBackwardTargetItems bounds the groups, and with them that workspace.
constexpr int64_t kBackwardTargetItems = 32;

}  // namespace sagan::kernels::cpu
