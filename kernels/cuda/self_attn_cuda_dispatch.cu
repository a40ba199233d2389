// The one place that chooses the CUDA kernels of a call: the family (tensor cores or SIMT) and the tile
// configuration (the padded Cqk of the tensor-core kernels), through the switches of
// self_attn_static_switch.h into the launchers declared by self_attn_cuda_instantiations.h; and the
// whole backward and double backward: their pre- and post-processing (self_attn_backward_rowstats.cuh)
// around the family's kernels. Grids and shared memory are each family's launch plans
// (self_attn_launch_plan.h).
#include <cstdlib>
#include <cstring>

#include "kernels/cuda/mma/self_attn_mma_traits.h"
#include "kernels/cuda/self_attn_backward_rowstats.cuh"
#include "kernels/cuda/self_attn_cuda.h"
#include "kernels/cuda/self_attn_cuda_instantiations.h"
#include "kernels/cuda/self_attn_static_switch.h"

namespace sagan::kernels::cuda {
namespace {

template <typename T>
inline constexpr bool kHasMma = std::is_same_v<T, __half> || std::is_same_v<T, __nv_bfloat16>;

// Tensor cores where they apply; SIMT for float32/float64, Cqk beyond the padded sizes, batches past
// the tensor-core grid, GPUs before sm_80, and when SAGAN_ATTN_CUDA_KERNELS=simt (the tests use it to
// check both families on the same inputs).
cudaError_t use_mma(DType dtype, int64_t B, int64_t Cqk, bool* mma) {
  *mma = false;
  if (dtype != DType::kFloat16 && dtype != DType::kBFloat16) return cudaSuccess;
  if (Cqk < 1 || Cqk > mma::kMaxCqk || B > mma::kMaxBatch) return cudaSuccess;
  const char* forced = std::getenv("SAGAN_ATTN_CUDA_KERNELS");
  if (forced != nullptr && std::strcmp(forced, "simt") == 0) return cudaSuccess;
  int device = 0, major = 0;
  if (cudaError_t e = cudaGetDevice(&device); e != cudaSuccess) return e;
  if (cudaError_t e = cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device);
      e != cudaSuccess)
    return e;
  *mma = major >= mma::kMinArchMajor;
  return cudaSuccess;
}

template <typename Params, typename Simt, typename Mma>
cudaError_t dispatch(DType dtype, const Params& p, Simt simt, Mma tensor_cores) {
  bool mma = false;
  if (cudaError_t e = use_mma(dtype, p.B, p.Cqk, &mma); e != cudaSuccess) return e;
  return with_dtype(dtype, [&](auto tag) -> cudaError_t {
    using T = typename decltype(tag)::type;
    if constexpr (kHasMma<T>) {
      if (mma) {
        return with_smallest_at_least(
            mma::PaddedCqks{}, p.Cqk, [&](auto cqk) { return tensor_cores(tag, cqk); },
            [] { return cudaErrorInvalidValue; });
      }
    }
    return simt(tag);
  });
}

}  // namespace

cudaError_t self_attn_fwd(DType dtype, const SelfAttnFwdParams& p, cudaStream_t stream) {
  return dispatch(
      dtype, p,
      [&](auto tag) { return simt::launch_fwd<typename decltype(tag)::type>(p, stream); },
      [&](auto tag, auto cqk) {
        return mma::launch_fwd<typename decltype(tag)::type, decltype(cqk)::value>(p, stream);
      });
}

// delta and dgamma, the family's kernels, then (atomic mode: launch_post's plan) df from df_accum.
cudaError_t self_attn_backward(DType dtype, const SelfAttnBackwardParams& p, cudaStream_t stream) {
  if (p.B <= 0 || p.Nq <= 0) return cudaSuccess;  // the checks forbid it; nothing to write
  cudaError_t e = with_dtype(dtype, [&](auto tag) {
    return rowstats::launch_pre<typename decltype(tag)::type>(p, stream);
  });
  if (e != cudaSuccess) return e;
  e = dispatch(
      dtype, p,
      [&](auto tag) { return simt::launch_backward<typename decltype(tag)::type>(p, stream); },
      [&](auto tag, auto cqk) {
        return mma::launch_backward<typename decltype(tag)::type, decltype(cqk)::value>(p, stream);
      });
  if (e != cudaSuccess) return e;
  return with_dtype(dtype, [&](auto tag) {
    return rowstats::launch_post<typename decltype(tag)::type>(p, stream);
  });
}

// D, the SIMT kernels (every dtype and shape: there is no tensor-core double backward yet), d_gamma.
cudaError_t self_attn_double_backward(DType dtype, const SelfAttnDoubleBackwardParams& p, cudaStream_t stream) {
  if (p.B <= 0 || p.Nq <= 0) return cudaSuccess;  // the checks forbid it; nothing to write
  return with_dtype(dtype, [&](auto tag) -> cudaError_t {
    using T = typename decltype(tag)::type;
    if (cudaError_t e = rowstats::launch_double_backward_pre<T>(p, stream); e != cudaSuccess) return e;
    if (cudaError_t e = simt::launch_double_backward<T>(p, stream); e != cudaSuccess) return e;
    return rowstats::launch_double_backward_post<T>(p, stream);
  });
}

}  // namespace sagan::kernels::cuda
