// Host emulation of the warp-level instructions of the tensor-core kernels (ldmatrix, mma.sync
// m16n8k16, cp.async), on top of the SIMT emulator's scheduler
// (tests/emulation/simt/simt_host_emulation.h: one OS thread per CUDA thread, one running
// at a time, random hand-offs at every barrier and warp operation). Included by
// kernels/cuda/mma/self_attn_mma_primitives.cuh when SAGAN_CUDA_HOST_EMULATION is defined; test-only,
// compiled by g++ (C++20), never by nvcc, never part of the library.
//
// The instructions follow the PTX ISA text, not the kernels' comments (the point is to catch a
// misreading of the layouts):
//  - ldmatrix.sync.aligned.m8n8.x4[.trans].shared.b16: the row addresses of matrix j come from lanes
//    8j .. 8j+7 (lane 8j + r: row r); lane i receives in register j the two 16-bit elements
//    (row i/4, columns 2(i%4) and 2(i%4)+1) of matrix j, the lower column in the low half; with .trans
//    the matrix is read column-major: (rows 2(i%4) and 2(i%4)+1, column i/4).
//  - mma.sync.aligned.m16n8k16.row.col.f32.{f16,bf16}.{f16,bf16}.f32, groupID = lane >> 2,
//    tig = lane % 4, elements numbered low to high over the registers:
//    A a0..a7: row groupID for i in {0,1,4,5} else groupID + 8; col 2 tig + (i & 1), + 8 for i >= 4.
//    B b0..b3: row 2 tig + (i & 1), + 8 for i >= 2; col groupID.
//    C/D c0..c3: row groupID for i < 2 else groupID + 8; col 2 tig + (i & 1).
//    D = A B + C, computed here in double from the exact f16/bf16 values and rounded once to float.
//  - cp.async.cg.shared.global 16 bytes with src-size 0 or 16 (0: zero-fill), commit_group and
//    wait_group N: the copies are deferred, queued per thread in their commit groups, and performed
//    when a wait_group leaves at most N groups pending; the destination reads as NaN from the issue to
//    that wait. A synchronous copy would hide a missing wait (the data would already be there), so the
//    emulation makes the asynchrony visible instead. Copies still pending when a thread ends are errors.
//
// ldmatrix and mma run as warp-synchronous exchanges (emu::warp_collective): every lane deposits its
// operands and waits, the last lane to arrive executes the instruction once for the warp, and lanes
// that reach different warp operations abort. mma_ptx_semantics_check.cu checks this reading of the
// PTX text against a GPU.
//
// Shared memory: the kernels declare `extern __shared__ unsigned char smem[]` in their namespace; here
// that is one static array (blocks run one at a time), filled with NaN bytes before each block and
// checked after it for writes past the block's dynamic size. ldmatrix and cp.async addresses must
// lie inside the block's dynamic shared memory and be 16-byte aligned, else the emulator reports
// an error (emu::g_errors).
//
// Schedules: each block draws its policy from its seed, uniform or warps in random priority order
// (see simt_host_emulation.h), so that both near-lockstep warps and one warp running a whole phase
// ahead of the others occur. emu::g_plant and emu::g_skip_barrier inject bugs, to test the emulation.
#pragma once

#if defined(__CUDACC__)
#error "the host emulation is compiled by a host compiler only"
#endif
#ifndef SAGAN_CUDA_HOST_EMULATION
#define SAGAN_CUDA_HOST_EMULATION 1
#endif
#ifndef __launch_bounds__
#define __launch_bounds__(...)
#endif

#include "tests/emulation/simt/simt_host_emulation.h"

#include <atomic>
#include <cstdarg>
#include <cstdint>
#include <cstring>
#include <deque>
#include <vector>

// The CUDA built-in variables, per emulated thread.
inline thread_local uint3 threadIdx;
inline thread_local uint3 blockIdx;
inline thread_local dim3 gridDim;
inline thread_local dim3 blockDim;

namespace sagan::kernels::cuda::mma {
// The kernels' dynamic shared memory (the largest a block may get on sm_90, 227 KiB).
inline constexpr size_t kEmuSmemCapacity = 227 * 1024;
alignas(128) inline unsigned char smem[kEmuSmemCapacity];
}  // namespace sagan::kernels::cuda::mma

namespace emu {

inline unsigned char* const g_smem = sagan::kernels::cuda::mma::smem;
inline size_t g_smem_bytes = 0;  // dynamic shared memory of the running block
inline std::atomic<int> g_errors{0};
inline std::atomic<int> g_error_reports{0};

inline void error(const char* fmt, ...) {
  ++g_errors;
  if (g_error_reports++ >= 20) return;  // the first few are enough to see what is wrong
  va_list ap;
  va_start(ap, fmt);
  fprintf(stderr, "EMULATION ERROR: ");
  vfprintf(stderr, fmt, ap);
  fprintf(stderr, "\n");
  va_end(ap);
}

// Fault injection, for the tests of the emulator itself (planted layout and synchronisation bugs
// that a correct kernel must fail with). 0: none.
enum Plant : int {
  kPlantNone = 0,
  kPlantLdmatrixSwapRegs = 1,    // ldmatrix (no .trans): registers 1 and 2 exchanged (matrix order)
  kPlantLdmatrixTransHalves = 2, // ldmatrix .trans: the two elements of each register exchanged
  kPlantMmaBTransposed = 3,      // mma: B fragment read with A's pattern (row groupID, col 2 tig)
  kPlantMmaCSwap = 4,            // mma: accumulator elements c1 and c2 exchanged
  kPlantCpAsyncNoWait = 5,       // cp.async.wait_group does nothing (a missing wait)
  kPlantSkipBarrier = 6,         // every thread skips one __syncthreads (set through g_skip_barrier)
};
inline int g_plant = kPlantNone;

inline bool in_smem(const void* p, size_t bytes) {
  const auto* c = static_cast<const unsigned char*>(p);
  return c >= g_smem && c + bytes <= g_smem + g_smem_bytes;
}

inline uint32_t smem_offset(const void* p) {
  if (!in_smem(p, 1)) error("shared address %p outside the block's %zu bytes of shared memory", p, g_smem_bytes);
  return static_cast<uint32_t>(static_cast<const unsigned char*>(p) - g_smem);
}

inline constexpr int kTagLdmatrix = 10, kTagLdmatrixTrans = 11, kTagMmaF16 = 12, kTagMmaBF16 = 13;

inline uint16_t load_b16(const void* p) {
  uint16_t v;
  std::memcpy(&v, p, 2);
  return v;
}

// ldmatrix.sync.aligned.m8n8.x4{.trans}.shared.b16 {r0, r1, r2, r3}, [p].
inline void ldmatrix_x4(uint32_t (&r)[4], const void* p, bool trans) {
  if (!in_smem(p, 16) || reinterpret_cast<uintptr_t>(p) % 16 != 0)
    error("ldmatrix row address %p (offset %td) not a 16-byte aligned row inside %zu bytes of shared memory", p,
          static_cast<const unsigned char*>(p) - g_smem, g_smem_bytes);
  WarpSlot mine;
  mine.ptr = p;
  const WarpSlot res = warp_collective(trans ? kTagLdmatrixTrans : kTagLdmatrix, mine, [trans](std::array<WarpSlot, 32>& s) {
    // Lanes that gave bad addresses were reported; read nothing through them.
    bool ok = true;
    for (int i = 0; i < 32; ++i) ok = ok && in_smem(s[i].ptr, 16);
    for (int i = 0; i < 32; ++i) {
      for (int j = 0; j < 4; ++j) {
        uint16_t e[2] = {0xFFFF, 0xFFFF};
        for (int k = 0; k < 2 && ok; ++k) {
          const int row = trans ? 2 * (i % 4) + k : i / 4;  // row of matrix j = address of lane 8j + row
          const int col = trans ? i / 4 : 2 * (i % 4) + k;
          e[k] = load_b16(static_cast<const unsigned char*>(s[8 * j + row].ptr) + 2 * col);
        }
        if (g_plant == kPlantLdmatrixTransHalves && trans) std::swap(e[0], e[1]);
        s[i].out[j] = static_cast<uint32_t>(e[0]) | (static_cast<uint32_t>(e[1]) << 16);
      }
      if (g_plant == kPlantLdmatrixSwapRegs && !trans) std::swap(s[i].out[1], s[i].out[2]);
    }
  });
  for (int j = 0; j < 4; ++j) r[j] = res.out[j];
}

inline float f16_bits_to_float(uint16_t v) {
  __half_raw raw;
  raw.x = v;
  return __half2float(__half(raw));
}
inline float bf16_bits_to_float(uint16_t v) {
  const uint32_t u = static_cast<uint32_t>(v) << 16;  // bfloat16 is the high half of a float
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

// mma.sync.aligned.m16n8k16.row.col.f32.{f16,bf16}.{f16,bf16}.f32 {d}, {a}, {b0, b1}, {d}.
inline void mma_m16n8k16(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1, bool bf16) {
  WarpSlot mine;
  for (int i = 0; i < 4; ++i) mine.in[i] = a[i];
  mine.in[4] = b0;
  mine.in[5] = b1;
  for (int i = 0; i < 4; ++i) std::memcpy(&mine.in[6 + i], &d[i], 4);
  const WarpSlot res = warp_collective(bf16 ? kTagMmaBF16 : kTagMmaF16, mine, [bf16](std::array<WarpSlot, 32>& s) {
    double A[16][16], B[16][8], C[16][8];
    int nA[16][16] = {}, nB[16][8] = {}, nC[16][8] = {};
    auto elem = [bf16](uint32_t reg, int half) {
      const uint16_t v = static_cast<uint16_t>(half ? reg >> 16 : reg & 0xFFFFu);
      return static_cast<double>(bf16 ? bf16_bits_to_float(v) : f16_bits_to_float(v));
    };
    for (int lane = 0; lane < 32; ++lane) {
      const int gid = lane >> 2, tig = lane % 4;
      for (int i = 0; i < 8; ++i) {  // a_i: register i / 2, half i % 2
        const int row = (i < 2 || (i >= 4 && i < 6)) ? gid : gid + 8;
        const int col = tig * 2 + (i & 1) + (i >= 4 ? 8 : 0);
        A[row][col] = elem(s[lane].in[i / 2], i % 2);
        nA[row][col]++;
      }
      for (int i = 0; i < 4; ++i) {  // b_i: register i / 2, half i % 2
        int row = tig * 2 + (i & 1) + (i >= 2 ? 8 : 0), col = gid;
        if (g_plant == kPlantMmaBTransposed) {  // B read like A: b_i = B[groupID (+8)][2 tig + (i & 1)]
          row = gid + (i >= 2 ? 8 : 0);
          col = tig * 2 + (i & 1);
        }
        B[row][col] = elem(s[lane].in[4 + i / 2], i % 2);
        nB[row][col]++;
      }
      for (int i = 0; i < 4; ++i) {
        const int row = i < 2 ? gid : gid + 8, col = tig * 2 + (i & 1);
        float c;
        std::memcpy(&c, &s[lane].in[6 + i], 4);
        C[row][col] = c;
        nC[row][col]++;
      }
    }
    for (int r = 0; r < 16; ++r)
      for (int c = 0; c < 16; ++c)
        if (nA[r][c] != 1 || (c < 8 && (nB[r][c] != 1 || nC[r][c] != 1))) {
          fprintf(stderr, "mma emulation: fragment decoding is not a bijection\n");
          std::abort();
        }
    for (int lane = 0; lane < 32; ++lane) {
      const int gid = lane >> 2, tig = lane % 4;
      float out[4];
      for (int i = 0; i < 4; ++i) {
        const int row = i < 2 ? gid : gid + 8, col = tig * 2 + (i & 1);
        double acc = C[row][col];
        for (int k = 0; k < 16; ++k) acc += A[row][k] * B[k][col];
        out[i] = static_cast<float>(acc);
      }
      if (g_plant == kPlantMmaCSwap) std::swap(out[1], out[2]);
      for (int i = 0; i < 4; ++i) std::memcpy(&s[lane].out[i], &out[i], 4);
    }
  });
  for (int i = 0; i < 4; ++i) std::memcpy(&d[i], &res.out[i], 4);
}

// cp.async: per-thread queues of deferred 16-byte copies.
struct PendingCopy {
  unsigned char* dst;
  const unsigned char* src;
  bool valid;
};
inline thread_local std::vector<PendingCopy> t_cp_open;                 // issued, not committed
inline thread_local std::deque<std::vector<PendingCopy>> t_cp_groups;   // committed, oldest first

inline void cp_async_16(void* s, const void* g, bool valid) {
  if (!in_smem(s, 16) || reinterpret_cast<uintptr_t>(s) % 16 != 0) {
    error("cp.async destination %p (offset %td) not 16-byte aligned inside %zu bytes of shared memory", s,
          static_cast<unsigned char*>(s) - g_smem, g_smem_bytes);
    return;
  }
  if (valid && reinterpret_cast<uintptr_t>(g) % 16 != 0) {
    error("cp.async source %p not 16-byte aligned", g);
    return;
  }
  std::memset(s, 0xFF, 16);  // undefined until the wait: NaN
  t_cp_open.push_back({static_cast<unsigned char*>(s), static_cast<const unsigned char*>(g), valid});
}

inline void cp_async_commit() {
  t_cp_groups.push_back(std::move(t_cp_open));
  t_cp_open.clear();
}

inline void cp_async_wait(int pending) {
  if (g_plant == kPlantCpAsyncNoWait) return;
  while (static_cast<int>(t_cp_groups.size()) > pending) {
    for (const PendingCopy& c : t_cp_groups.front()) {
      if (c.valid)
        std::memcpy(c.dst, c.src, 16);
      else
        std::memset(c.dst, 0, 16);
    }
    t_cp_groups.pop_front();
  }
}

// Runs every block of a grid of 1-D blocks of n_threads (the kernels' shape) under the scheduler:
// kernel() is the __global__ function bound to its arguments. Blocks run one after another, each with
// fresh NaN shared memory, its own schedule seed and a scheduling policy drawn from it (uniform, or
// warps in random priority order: the widest skews between warps).
template <typename Kernel>
inline void launch(dim3 grid, int n_threads, size_t smem_bytes, unsigned seed, Kernel&& kernel) {
  if (smem_bytes > sagan::kernels::cuda::mma::kEmuSmemCapacity) {
    error("dynamic shared memory %zu bytes exceeds %zu", smem_bytes, sagan::kernels::cuda::mma::kEmuSmemCapacity);
    return;
  }
  for (unsigned z = 0; z < grid.z; ++z)
    for (unsigned y = 0; y < grid.y; ++y)
      for (unsigned x = 0; x < grid.x; ++x) {
        std::memset(g_smem, 0xFF, sagan::kernels::cuda::mma::kEmuSmemCapacity);
        g_smem_bytes = smem_bytes;
        const unsigned block_seed = seed * 2654435761u + x * 7919u + y * 104729u + z * 1299709u;
        const Policy policy = (block_seed >> 11) % 2 ? Policy::kWarpPriority : Policy::kUniform;
        run_block(n_threads, block_seed, 0, [&](int tid, void*) {
          threadIdx = uint3{static_cast<unsigned>(tid), 0u, 0u};
          blockIdx = uint3{x, y, z};
          gridDim = grid;
          blockDim = dim3(n_threads, 1, 1);
          kernel();
          if (!t_cp_open.empty() || !t_cp_groups.empty())
            error("block (%u, %u, %u) thread %d ended with cp.async copies never waited for", x, y, z, tid);
          t_cp_open.clear();
          t_cp_groups.clear();
        }, policy);
        for (size_t i = smem_bytes; i < sagan::kernels::cuda::mma::kEmuSmemCapacity; ++i)
          if (g_smem[i] != 0xFF) {
            error("block (%u, %u, %u) wrote shared memory at byte %zu, past its %zu bytes", x, y, z, i, smem_bytes);
            break;
          }
      }
}

}  // namespace emu
