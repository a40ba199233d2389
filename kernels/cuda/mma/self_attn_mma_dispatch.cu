// Picks the tensor-core launcher for a dtype and Cqk (padded up to 16, 32, 64 or 128 in smem).
#include "kernels/cuda/mma/self_attn_mma.h"

namespace sagan::kernels::cuda {
namespace {

template <typename T>
cudaError_t fwd(const FwdArgs& a, cudaStream_t s) {
  const int64_t c = a.p.Cqk;
  if (c <= 16) return mma::launch_fwd<T, 16>(a, s);
  if (c <= 32) return mma::launch_fwd<T, 32>(a, s);
  if (c <= 64) return mma::launch_fwd<T, 64>(a, s);
  if (c <= 128) return mma::launch_fwd<T, 128>(a, s);
  return cudaErrorInvalidValue;
}

template <typename T>
cudaError_t bwd(const BwdArgs& a, cudaStream_t s) {
  const int64_t c = a.p.Cqk;
  if (c <= 16) return mma::launch_bwd<T, 16>(a, s);
  if (c <= 32) return mma::launch_bwd<T, 32>(a, s);
  if (c <= 64) return mma::launch_bwd<T, 64>(a, s);
  if (c <= 128) return mma::launch_bwd<T, 128>(a, s);
  return cudaErrorInvalidValue;
}

}  // namespace

bool mma_supported(DType dtype, int64_t Cqk, int device_major) {
  return (dtype == DType::kFloat16 || dtype == DType::kBFloat16) && Cqk >= 1 && Cqk <= kMmaMaxCqk &&
         device_major >= 8;
}

cudaError_t self_attn_fwd_mma(DType dtype, const FwdArgs& args, cudaStream_t stream) {
  switch (dtype) {
    case DType::kFloat16: return fwd<__half>(args, stream);
    case DType::kBFloat16: return fwd<__nv_bfloat16>(args, stream);
    default: return cudaErrorInvalidValue;
  }
}

cudaError_t self_attn_bwd_mma(DType dtype, const BwdArgs& args, cudaStream_t stream) {
  switch (dtype) {
    case DType::kFloat16: return bwd<__half>(args, stream);
    case DType::kBFloat16: return bwd<__nv_bfloat16>(args, stream);
    default: return cudaErrorInvalidValue;
  }
}

}  // namespace sagan::kernels::cuda
