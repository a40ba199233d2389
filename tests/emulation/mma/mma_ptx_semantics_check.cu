// GPU check of the host emulation's reading of the PTX ISA (mma_host_emulation.h): runs the kernels'
// own wrappers (self_attn_mma_primitives.cuh: ldmatrix_x4, ldmatrix_x4_trans, Elem<T>::mma) on one warp
// with exactly representable inputs and compares every lane's registers with what the emulation
// computes from the same text: ldmatrix lane i, register j = matrix j's (row i/4, columns 2(i%4),
// 2(i%4)+1), .trans (rows 2(i%4), 2(i%4)+1, column i/4), addresses of matrix j from lanes 8j..8j+7;
// mma A/B/C fragments by groupID / threadID_in_group. If this passes on a GPU, a pass of the emulation
// test means the kernels' layouts are right on the hardware too. Needs sm_80 or newer; not part of
// the build (from the repository root):
//   nvcc -std=c++17 -arch=sm_90 -I. tests/emulation/mma/mma_ptx_semantics_check.cu -o /tmp/mma_ptx_check
//   /tmp/mma_ptx_check
#include <cstdio>
#include <cstdlib>
#include <random>

#include "kernels/cuda/mma/self_attn_mma_primitives.cuh"

using sagan::kernels::cuda::mma::Elem;

constexpr int kLdS = 24;  // smem row stride in elements (48 bytes: rows stay 16-byte aligned)

template <typename T>
__global__ void warp_check(const uint16_t* tile, uint32_t* ld_out, const uint32_t* a_frag, const uint32_t* b_frag,
                           const float* c_frag, float* d_out) {
  __shared__ __align__(16) uint16_t s[16 * kLdS];
  const int lane = threadIdx.x;
  for (int i = lane; i < 256; i += 32) s[(i / 16) * kLdS + i % 16] = tile[i];
  __syncwarp();
  // Matrix j = rows 8 (j % 2) .., columns 8 (j / 2) .. of the 16 x 16 tile; lane 8j + r: its row r.
  const int j = lane / 8, r = lane % 8;
  const uint16_t* p = s + (8 * (j % 2) + r) * kLdS + 8 * (j / 2);
  uint32_t v[4];
  sagan::kernels::cuda::mma::ldmatrix_x4(v, p);
  for (int k = 0; k < 4; ++k) ld_out[lane * 4 + k] = v[k];
  sagan::kernels::cuda::mma::ldmatrix_x4_trans(v, p);
  for (int k = 0; k < 4; ++k) ld_out[128 + lane * 4 + k] = v[k];
  float d[4];
  uint32_t a[4];
  for (int k = 0; k < 4; ++k) { d[k] = c_frag[lane * 4 + k]; a[k] = a_frag[lane * 4 + k]; }
  Elem<T>::mma(d, a, b_frag[lane * 2], b_frag[lane * 2 + 1]);
  for (int k = 0; k < 4; ++k) d_out[lane * 4 + k] = d[k];
}

template <typename T>
uint16_t bits_of(float v);
template <>
uint16_t bits_of<__half>(float v) { return __half_as_ushort(__float2half_rn(v)); }
template <>
uint16_t bits_of<__nv_bfloat16>(float v) { return __bfloat16_as_ushort(__float2bfloat16_rn(v)); }

#define CHECK_CUDA(x)                                                              \
  do {                                                                             \
    cudaError_t e_ = (x);                                                          \
    if (e_ != cudaSuccess) {                                                       \
      fprintf(stderr, "%s: %s\n", #x, cudaGetErrorString(e_));                     \
      std::exit(2);                                                                \
    }                                                                              \
  } while (0)

template <typename T>
int run(const char* name) {
  std::mt19937 rng(7);
  std::uniform_int_distribution<int> small(-8, 8);
  // Tile of distinct integers (exact in float16 and bfloat16), A, B, C small integers: every
  // product and sum is exact, so the comparison is bitwise.
  uint16_t tile[256];
  float tile_v[256];
  for (int i = 0; i < 256; ++i) { tile_v[i] = static_cast<float>(i - 128); tile[i] = bits_of<T>(tile_v[i]); }
  float A[16][16], B[16][8], C[16][8];
  for (auto& row : A) for (float& v : row) v = static_cast<float>(small(rng));
  for (auto& row : B) for (float& v : row) v = static_cast<float>(small(rng));
  for (auto& row : C) for (float& v : row) v = static_cast<float>(small(rng) * 16);
  uint32_t a_frag[32 * 4] = {}, b_frag[32 * 2] = {};
  float c_frag[32 * 4];
  for (int lane = 0; lane < 32; ++lane) {
    const int gid = lane >> 2, tig = lane % 4;
    for (int i = 0; i < 8; ++i) {
      const int row = (i < 2 || (i >= 4 && i < 6)) ? gid : gid + 8, col = tig * 2 + (i & 1) + (i >= 4 ? 8 : 0);
      a_frag[lane * 4 + i / 2] |= static_cast<uint32_t>(bits_of<T>(A[row][col])) << (16 * (i % 2));
    }
    for (int i = 0; i < 4; ++i) {
      const int row = tig * 2 + (i & 1) + (i >= 2 ? 8 : 0), col = gid;
      b_frag[lane * 2 + i / 2] |= static_cast<uint32_t>(bits_of<T>(B[row][col])) << (16 * (i % 2));
    }
    for (int i = 0; i < 4; ++i) c_frag[lane * 4 + i] = C[i < 2 ? gid : gid + 8][tig * 2 + (i & 1)];
  }

  uint16_t* d_tile;
  uint32_t *d_ld, *d_a, *d_b;
  float *d_c, *d_d;
  CHECK_CUDA(cudaMalloc(&d_tile, sizeof(tile)));
  CHECK_CUDA(cudaMalloc(&d_ld, 256 * sizeof(uint32_t)));
  CHECK_CUDA(cudaMalloc(&d_a, sizeof(a_frag)));
  CHECK_CUDA(cudaMalloc(&d_b, sizeof(b_frag)));
  CHECK_CUDA(cudaMalloc(&d_c, sizeof(c_frag)));
  CHECK_CUDA(cudaMalloc(&d_d, sizeof(c_frag)));
  CHECK_CUDA(cudaMemcpy(d_tile, tile, sizeof(tile), cudaMemcpyHostToDevice));
  CHECK_CUDA(cudaMemcpy(d_a, a_frag, sizeof(a_frag), cudaMemcpyHostToDevice));
  CHECK_CUDA(cudaMemcpy(d_b, b_frag, sizeof(b_frag), cudaMemcpyHostToDevice));
  CHECK_CUDA(cudaMemcpy(d_c, c_frag, sizeof(c_frag), cudaMemcpyHostToDevice));
  warp_check<T><<<1, 32>>>(d_tile, d_ld, d_a, d_b, d_c, d_d);
  CHECK_CUDA(cudaGetLastError());
  uint32_t ld[256];
  float d[32 * 4];
  CHECK_CUDA(cudaMemcpy(ld, d_ld, sizeof(ld), cudaMemcpyDeviceToHost));
  CHECK_CUDA(cudaMemcpy(d, d_d, sizeof(d), cudaMemcpyDeviceToHost));

  int bad = 0;
  for (int trans = 0; trans < 2; ++trans)
    for (int lane = 0; lane < 32; ++lane)
      for (int j = 0; j < 4; ++j) {
        uint32_t want = 0;
        for (int k = 0; k < 2; ++k) {
          const int row = trans ? 2 * (lane % 4) + k : lane / 4, col = trans ? lane / 4 : 2 * (lane % 4) + k;
          want |= static_cast<uint32_t>(tile[(8 * (j % 2) + row) * 16 + 8 * (j / 2) + col]) << (16 * k);
        }
        if (ld[trans * 128 + lane * 4 + j] != want && bad++ < 10)
          printf("  %s ldmatrix%s lane %d reg %d: got %08x, want %08x\n", name, trans ? ".trans" : "", lane, j,
                 ld[trans * 128 + lane * 4 + j], want);
      }
  for (int lane = 0; lane < 32; ++lane) {
    const int gid = lane >> 2, tig = lane % 4;
    for (int i = 0; i < 4; ++i) {
      const int row = i < 2 ? gid : gid + 8, col = tig * 2 + (i & 1);
      float want = C[row][col];
      for (int k = 0; k < 16; ++k) want += A[row][k] * B[k][col];
      if (d[lane * 4 + i] != want && bad++ < 10)
        printf("  %s mma lane %d c%d: got %g, want %g\n", name, lane, i, d[lane * 4 + i], want);
    }
  }
  printf("%s %s: ldmatrix, ldmatrix.trans and mma.m16n8k16 as the host emulation models them\n", bad ? "FAIL" : "OK  ",
         name);
  cudaFree(d_tile); cudaFree(d_ld); cudaFree(d_a); cudaFree(d_b); cudaFree(d_c); cudaFree(d_d);
  return bad;
}

int main() {
  const int bad = run<__half>("f16") + run<__nv_bfloat16>("bf16");
  return bad != 0;
}
