// Tile sizes of the CPU kernels: the one place that decides them.
#pragma once

#include <cstdint>

namespace sagan::kernels::cpu {

template <typename T>
struct CpuTileTraits;

// The micro-kernel's register block is kMR rows x 2 vector registers (the register width is the
// instruction set's: 32 bytes for AVX2, 16 for the baseline build; see self_attn_cpu_isa.h), so
// 12 accumulator registers. kBlockQ x kBlockK is the score tile: rows are queries, columns keys;
// both are multiples of every register block width, so padded tile buffers hold whole blocks.
template <>
struct CpuTileTraits<float> {
  static constexpr int kMR = 6;
  static constexpr int64_t kBlockQ = 64;
  static constexpr int64_t kBlockK = 128;
};

template <>
struct CpuTileTraits<double> {
  static constexpr int kMR = 6;
  static constexpr int64_t kBlockQ = 64;
  static constexpr int64_t kBlockK = 128;
};

// The backward pass splits the keys of each batch into key groups that run in parallel; each group
// owns a partial df buffer of Cqk x Nq, summed in a fixed order at the end. The number of groups
// depends on the shape only (never on the thread count), so results are bitwise reproducible for
// any number of threads. kBwdTargetItems bounds the groups, and with them that workspace.
constexpr int64_t kBwdTargetItems = 32;

}  // namespace sagan::kernels::cpu
