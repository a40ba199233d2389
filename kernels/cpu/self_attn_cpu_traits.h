// Tile sizes of the CPU kernels: the one place that decides them.
#pragma once

#include <cstdint>

namespace sagan::kernels::cpu {

template <typename T>
struct CpuTileTraits;

// kMR x kNR is the register block of the micro-kernel (6 x 16 floats = 12 AVX2 registers of
// accumulators). kBlockQ x kBlockK is the score tile: its rows are queries, its columns keys. Both
// blocks are multiples of kNR, so padded tile buffers always hold whole register blocks.
template <>
struct CpuTileTraits<float> {
  static constexpr int kMR = 6;
  static constexpr int kNR = 16;
  static constexpr int64_t kBlockQ = 64;
  static constexpr int64_t kBlockK = 128;
};

template <>
struct CpuTileTraits<double> {
  static constexpr int kMR = 6;
  static constexpr int kNR = 8;
  static constexpr int64_t kBlockQ = 64;
  static constexpr int64_t kBlockK = 128;
};

// The backward pass splits the keys of each batch into key groups that run in parallel; each group
// owns a partial df buffer of Cqk x Nq, summed in a fixed order at the end. The number of groups
// depends on the shape only (never on the thread count), so results are bitwise reproducible for
// any number of threads. kBwdTargetItems bounds the groups, and with them that workspace.
constexpr int64_t kBwdTargetItems = 32;

}  // namespace sagan::kernels::cpu
