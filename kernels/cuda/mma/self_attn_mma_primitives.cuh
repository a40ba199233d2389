// Warp-level building blocks of the tensor-core kernels: mma.sync m16n8k16 (float16/bfloat16 in, float32
// accumulate), ldmatrix fragment loads for the four smem layouts the kernels use, cp.async tile loads.
//
// Fragment layouts of mma.m16n8k16 (g = lane / 4, t = lane % 4; each 32-bit register holds 2 elements,
// the lower index in the low half):
//   A (16 x 16, M x K): a0 = A[g][2t..2t+1], a1 = A[g+8][2t..], a2 = A[g][2t+8..], a3 = A[g+8][2t+8..]
//   B (16 x 8,  K x N): b0 = B[2t..2t+1][g], b1 = B[2t+8..2t+9][g]
//   C (16 x 8,  M x N): c0, c1 = C[g][2t..2t+1], c2, c3 = C[g+8][2t..2t+1]
// ldmatrix.x4 loads four 8x8 b16 matrices; lanes 8j..8j+7 give the row addresses of matrix j. Without
// .trans lane i receives M[i/4][2(i%4)..+1]; with .trans it receives M[2(i%4)..+1][i/4] (column pairs).
// Every smem tile is row-major with a row stride (ld) that is a multiple of 8 elements and 16 bytes
// more than a power of two, so the 8 rows of one ldmatrix matrix hit different bank groups.
//
// SAGAN_CUDA_HOST_EMULATION (tests only, g++): the PTX instructions below run on a CPU emulator
// instead; the device code is the other branch of each #if. The emulator is test code: its header,
// mma_host_emulation.h, is found through the include path of the emulation test target
// (tests/emulation/mma), which also defines SAGAN_CUDA_HOST_EMULATION.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>
#include <cstring>

#if defined(SAGAN_CUDA_HOST_EMULATION)
#include "mma_host_emulation.h"  // on the emulation test target's include path only
#endif
#include "kernels/cuda/self_attn_cuda_numerics.cuh"

namespace sagan::kernels::cuda::mma {

template <typename T>
struct Elem;

template <>
struct Elem<__half> {
  static __device__ __forceinline__ uint32_t pack(float lo, float hi) {
    const __half2 v = __floats2half2_rn(lo, hi);
    uint32_t r;
    memcpy(&r, &v, sizeof(r));
    return r;
  }
  // d += a * b on tensor cores.
  static __device__ __forceinline__ void mma(float (&d)[4], const uint32_t (&a)[4], uint32_t b0,
                                             uint32_t b1) {
#if defined(SAGAN_CUDA_HOST_EMULATION)
    ::emu::mma_m16n8k16(d, a, b0, b1, /*bf16=*/false);
#elif !defined(__CUDA_ARCH__) || __CUDA_ARCH__ >= 800
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
        "{%0,%1,%2,%3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
#else
    __trap();
#endif
  }
};

template <>
struct Elem<__nv_bfloat16> {
  static __device__ __forceinline__ uint32_t pack(float lo, float hi) {
    const __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
    uint32_t r;
    memcpy(&r, &v, sizeof(r));
    return r;
  }
  static __device__ __forceinline__ void mma(float (&d)[4], const uint32_t (&a)[4], uint32_t b0,
                                             uint32_t b1) {
#if defined(SAGAN_CUDA_HOST_EMULATION)
    ::emu::mma_m16n8k16(d, a, b0, b1, /*bf16=*/true);
#elif !defined(__CUDA_ARCH__) || __CUDA_ARCH__ >= 800
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
        "{%0,%1,%2,%3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
#else
    __trap();
#endif
  }
};

__device__ __forceinline__ uint32_t smem_addr(const void* p) {
#if defined(SAGAN_CUDA_HOST_EMULATION)
  return ::emu::smem_offset(p);
#else
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
#endif
}

__device__ __forceinline__ void ldmatrix_x4(uint32_t (&r)[4], const void* p) {
#if defined(SAGAN_CUDA_HOST_EMULATION)
  ::emu::ldmatrix_x4(r, p, /*trans=*/false);
#else
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(smem_addr(p)));
#endif
}

__device__ __forceinline__ void ldmatrix_x4_trans(uint32_t (&r)[4], const void* p) {
#if defined(SAGAN_CUDA_HOST_EMULATION)
  ::emu::ldmatrix_x4(r, p, /*trans=*/true);
#else
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(smem_addr(p)));
#endif
}

// A fragment of the 16x16 block (rows m0.., cols k0..) of A, from a tile stored s[k][m] (A^T row-major,
// m contiguous). Matrix j = (k0 + 8 (j / 2), m0 + 8 (j % 2)), loaded transposed.
template <typename T>
__device__ __forceinline__ void load_a_kmajor(uint32_t (&a)[4], const T* s, int ld, int m0, int k0) {
  const int lane = threadIdx.x % 32, j = lane / 8, r = lane % 8;
  ldmatrix_x4_trans(a, s + (k0 + r + (j / 2) * 8) * ld + m0 + (j % 2) * 8);
}

// A fragment from a tile stored s[m][k] (A row-major). Matrix j = (m0 + 8 (j % 2), k0 + 8 (j / 2)).
template <typename T>
__device__ __forceinline__ void load_a_mmajor(uint32_t (&a)[4], const T* s, int ld, int m0, int k0) {
  const int lane = threadIdx.x % 32, j = lane / 8, r = lane % 8;
  ldmatrix_x4(a, s + (m0 + r + (j % 2) * 8) * ld + k0 + (j / 2) * 8);
}

// B fragments of two n-tiles (cols n0.. and n0+8..) of the 16-deep block k0.., from a tile stored
// s[k][n] (B row-major, n contiguous): b[0], b[1] for n-tile n0, b[2], b[3] for n0 + 8.
// Matrix j = (k0 + 8 (j % 2), n0 + 8 (j / 2)), loaded transposed.
template <typename T>
__device__ __forceinline__ void load_b_kmajor(uint32_t (&b)[4], const T* s, int ld, int k0, int n0) {
  const int lane = threadIdx.x % 32, j = lane / 8, r = lane % 8;
  ldmatrix_x4_trans(b, s + (k0 + r + (j % 2) * 8) * ld + n0 + (j / 2) * 8);
}

// Same from a tile stored s[n][k] (B^T row-major, k contiguous). Matrix j = (n0 + 8 (j / 2), k0 + 8 (j % 2)).
template <typename T>
__device__ __forceinline__ void load_b_nmajor(uint32_t (&b)[4], const T* s, int ld, int k0, int n0) {
  const int lane = threadIdx.x % 32, j = lane / 8, r = lane % 8;
  ldmatrix_x4(b, s + (n0 + r + (j / 2) * 8) * ld + k0 + (j % 2) * 8);
}

// The A fragment of k-block kk (16 columns) of a 16 x N float accumulator in C layout, rounded to T:
// the C layout of n-tiles 2kk and 2kk+1 is the A layout of one 16x16 block.
template <typename T, int kNTiles>
__device__ __forceinline__ void acc_to_a(uint32_t (&a)[4], const float (&c)[kNTiles][4], int kk) {
  a[0] = Elem<T>::pack(c[2 * kk][0], c[2 * kk][1]);
  a[1] = Elem<T>::pack(c[2 * kk][2], c[2 * kk][3]);
  a[2] = Elem<T>::pack(c[2 * kk + 1][0], c[2 * kk + 1][1]);
  a[3] = Elem<T>::pack(c[2 * kk + 1][2], c[2 * kk + 1][3]);
}

__device__ __forceinline__ void cp_async_16(void* s, const void* g, bool valid) {
  // src-size 0 reads nothing and zero-fills the 16 bytes; g is then any valid address.
#if defined(SAGAN_CUDA_HOST_EMULATION)
  ::emu::cp_async_16(s, g, valid);
#else
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(smem_addr(s)), "l"(g),
               "r"(valid ? 16 : 0)
               : "memory");
#endif
}

__device__ __forceinline__ void cp_async_commit() {
#if defined(SAGAN_CUDA_HOST_EMULATION)
  ::emu::cp_async_commit();
#else
  asm volatile("cp.async.commit_group;\n" ::: "memory");
#endif
}

template <int kPending>
__device__ __forceinline__ void cp_async_wait() {
#if defined(SAGAN_CUDA_HOST_EMULATION)
  ::emu::cp_async_wait(kPending);
#else
  asm volatile("cp.async.wait_group %0;\n" ::"n"(kPending) : "memory");
#endif
}

// Loads rows [0, kRows) x cols [0, kCols) of a global matrix (row stride `stride`, columns contiguous,
// `src` at row 0 col 0) into s[r * kLd + c], zero-filling rows >= rows_valid and cols >= cols_valid
// (masking instead of padding copies). All threads of the block call it.
// aligned: src and stride are 16-byte multiples and cols_valid is a multiple of 8 or >= kCols, so each
// 8-element chunk is wholly in or out: cp.async (asynchronous: commit and wait). Otherwise element
// loads (synchronous). src must point at a valid element even when nothing of the tile is in range.
template <typename T, int kRows, int kCols, int kLd, int kThreads>
__device__ __forceinline__ void load_tile(T* s, const T* src, int64_t stride, int rows_valid,
                                          int cols_valid, bool aligned) {
  static_assert(kCols % 8 == 0, "tile columns come in 16-byte chunks");
  if (aligned) {
    constexpr int kChunksPerRow = kCols / 8, kChunks = kRows * kChunksPerRow;
#pragma unroll
    for (int it = 0; it < (kChunks + kThreads - 1) / kThreads; ++it) {
      const int i = it * kThreads + static_cast<int>(threadIdx.x);
      if (kChunks % kThreads != 0 && i >= kChunks) break;
      const int r = i / kChunksPerRow, c = (i % kChunksPerRow) * 8;
      const bool ok = r < rows_valid && c < cols_valid;
      cp_async_16(s + r * kLd + c, ok ? src + r * stride + c : src, ok);
    }
  } else {
    constexpr int kElems = kRows * kCols;
#pragma unroll 4
    for (int it = 0; it < (kElems + kThreads - 1) / kThreads; ++it) {
      const int i = it * kThreads + static_cast<int>(threadIdx.x);
      if (kElems % kThreads != 0 && i >= kElems) break;
      const int r = i / kCols, c = i % kCols;
      s[r * kLd + c] = (r < rows_valid && c < cols_valid) ? src[r * stride + c] : convert<T>(0.f);
    }
  }
}

// Scores of one warp: c (16 x kN) = A (16 x 16 kKBlocks, fragments in registers) times B, stored
// s[k][n] (kmajor).
template <typename T, int kKBlocks, int kN>
__device__ __forceinline__ void warp_gemm_regs_a(float (&c)[kN / 8][4], const uint32_t (&a)[kKBlocks][4],
                                                 const T* sB, int ld) {
#pragma unroll
  for (int kb = 0; kb < kKBlocks; ++kb) {
#pragma unroll
    for (int np = 0; np < kN / 16; ++np) {
      uint32_t b[4];
      load_b_kmajor(b, sB, ld, kb * 16, np * 16);
      Elem<T>::mma(c[2 * np], a[kb], b[0], b[1]);
      Elem<T>::mma(c[2 * np + 1], a[kb], b[2], b[3]);
    }
  }
}

// c (16 x kN) += P (16 x kK, a float accumulator in C layout, rounded to T) times B stored s[n][k]
// (nmajor).
template <typename T, int kK, int kN>
__device__ __forceinline__ void warp_gemm_acc_a(float (&c)[kN / 8][4], const float (&p)[kK / 8][4],
                                                const T* sB, int ld) {
#pragma unroll
  for (int kk = 0; kk < kK / 16; ++kk) {
    uint32_t a[4];
    acc_to_a<T, kK / 8>(a, p, kk);
#pragma unroll
    for (int np = 0; np < kN / 16; ++np) {
      uint32_t b[4];
      load_b_nmajor(b, sB, ld, kk * 16, np * 16);
      Elem<T>::mma(c[2 * np], a, b[0], b[1]);
      Elem<T>::mma(c[2 * np + 1], a, b[2], b[3]);
    }
  }
}

// Writes a warp's 16 x kN float accumulator (rows row0.., C layout) transposed, times mul, into a float
// smem tile s[col][row] of row stride ld (ld = 4 mod 32 words keeps the stores conflict-free).
template <int kN>
__device__ __forceinline__ void stage_transposed(float* s, int ld, const float (&c)[kN / 8][4], int row0,
                                                 float mul0, float mul1) {
  const int lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;
#pragma unroll
  for (int nt = 0; nt < kN / 8; ++nt) {
    const int col = nt * 8 + 2 * t, row = row0 + g;
    s[col * ld + row] = c[nt][0] * mul0;
    s[(col + 1) * ld + row] = c[nt][1] * mul0;
    s[col * ld + row + 8] = c[nt][2] * mul1;
    s[(col + 1) * ld + row + 8] = c[nt][3] * mul1;
  }
}

}  // namespace sagan::kernels::cuda::mma
