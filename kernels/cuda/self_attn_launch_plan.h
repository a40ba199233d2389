// The launch plan of one CUDA kernel: whether it runs, its grid, block and dynamic shared memory, and
// the host-side choices its launcher makes for a shape (the tile-load path, the atomic mode; the
// channel tile is a template constant, picked next to the plans). Each family computes its plans in one
// header (simt/self_attn_simt_launch_plan.cuh, mma/self_attn_mma_launch_plan.cuh; the pre- and
// post-passes in self_attn_backward_rowstats.cuh); the launchers launch exactly the plan, and the host
// emulation (tests/emulation) runs every block of the same grid with the same shared memory.
// Plain C++ but for launch_plan at the end (nvcc only): g++ compiles it for the emulation.
#pragma once

#include <cstddef>
#include <cstdint>

#if defined(__CUDACC__)
#include <cuda_runtime.h>
#endif

namespace sagan::kernels::cuda {

// Grid limits of every CUDA device we build for: x up to 2^31 - 1, y and z up to 65535.
inline constexpr int64_t kMaxGridX = 2147483647;
inline constexpr int64_t kMaxGridYZ = 65535;

// The largest grid a launch may use. A kernel that loops over a grid dimension (the SIMT kernels over
// channel chunks (y) and batches (z), the row statistics over batches (y), the df finish over x)
// takes the capped size; the emulation tests pass smaller caps to exercise those loops.
struct GridCaps {
  int64_t x = kMaxGridX, y = kMaxGridYZ, z = kMaxGridYZ;
};

struct LaunchPlan {
  bool launch = false;     // false: nothing to compute (an empty output), not an error
  bool fits = true;        // false: the grid is beyond the device's limits (cudaErrorInvalidConfiguration)
  int64_t grid_x = 0, grid_y = 1, grid_z = 1;
  int threads = 0;
  size_t smem_bytes = 0;   // dynamic shared memory of this launch
  size_t smem_opt_in = 0;  // the kernel's opt-in (>= smem_bytes: a kernel launched with two sizes sets
                           // the larger one once)
  bool aligned = false;    // tensor cores: 16-byte cp.async tile loads, else element loads
  bool atomic_df = false;  // the dg kernels: df accumulated with atomics into df_accum
};

inline constexpr int64_t min_i64(int64_t a, int64_t b) { return a < b ? a : b; }

// The plan of a kernel that loops over grid y and z: y and z are capped, x must fit.
inline LaunchPlan looped_grid_plan(bool launch, int64_t x, int64_t y, int64_t z, int threads, size_t smem,
                                   const GridCaps& caps) {
  LaunchPlan pl;
  pl.launch = launch;
  if (!launch) return pl;
  pl.fits = x > 0 && y > 0 && z > 0 && x <= min_i64(caps.x, kMaxGridX);
  pl.grid_x = x;
  pl.grid_y = min_i64(y, min_i64(caps.y, kMaxGridYZ));
  pl.grid_z = min_i64(z, min_i64(caps.z, kMaxGridYZ));
  pl.threads = threads;
  pl.smem_bytes = pl.smem_opt_in = smem;
  return pl;
}

// The plan of a kernel whose grid is its whole problem (no loops): every dimension must fit.
inline LaunchPlan exact_grid_plan(bool launch, int64_t x, int64_t y, int64_t z, int threads, size_t smem) {
  LaunchPlan pl;
  pl.launch = launch;
  if (!launch) return pl;
  pl.fits = x > 0 && y > 0 && z > 0 && x <= kMaxGridX && y <= kMaxGridYZ && z <= kMaxGridYZ;
  pl.grid_x = x;
  pl.grid_y = y;
  pl.grid_z = z;
  pl.threads = threads;
  pl.smem_bytes = pl.smem_opt_in = smem;
  return pl;
}

#if defined(__CUDACC__)
// Launches kernel<<<plan>>>(args...) on the stream: nothing when the plan does not launch, an error
// when its grid does not fit; opts the kernel in to more than the default 48 KB of dynamic shared
// memory when it needs it (cheap; per device).
template <typename Kernel, typename... Args>
cudaError_t launch_plan(const LaunchPlan& pl, Kernel kernel, cudaStream_t stream, const Args&... args) {
  if (!pl.launch) return cudaSuccess;
  if (!pl.fits) return cudaErrorInvalidConfiguration;
  if (pl.smem_opt_in > 48 * 1024) {
    const cudaError_t e = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                               static_cast<int>(pl.smem_opt_in));
    if (e != cudaSuccess) return e;
  }
  const dim3 grid(static_cast<unsigned>(pl.grid_x), static_cast<unsigned>(pl.grid_y),
                  static_cast<unsigned>(pl.grid_z));
  kernel<<<grid, pl.threads, pl.smem_bytes, stream>>>(args...);
  return cudaGetLastError();
}
#endif  // __CUDACC__

}  // namespace sagan::kernels::cuda
