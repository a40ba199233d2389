// self_attn_fwd_simt / self_attn_bwd_simt (kernels/cuda/self_attn_cuda.h): switch on the dtype to
// the per-dtype launchers of instantiations/.
#include "kernels/cuda/self_attn_cuda.h"
#include "kernels/cuda/simt/self_attn_simt.h"

namespace sagan::kernels::cuda {

cudaError_t self_attn_fwd_simt(DType dtype, const FwdArgs& args, cudaStream_t stream) {
  switch (dtype) {
    case DType::kFloat32: return simt::self_attn_fwd_simt_f32(args, stream);
    case DType::kFloat64: return simt::self_attn_fwd_simt_f64(args, stream);
    case DType::kFloat16: return simt::self_attn_fwd_simt_f16(args, stream);
    case DType::kBFloat16: return simt::self_attn_fwd_simt_bf16(args, stream);
  }
  return cudaErrorInvalidValue;
}

cudaError_t self_attn_bwd_simt(DType dtype, const BwdArgs& args, cudaStream_t stream) {
  switch (dtype) {
    case DType::kFloat32: return simt::self_attn_bwd_simt_f32(args, stream);
    case DType::kFloat64: return simt::self_attn_bwd_simt_f64(args, stream);
    case DType::kFloat16: return simt::self_attn_bwd_simt_f16(args, stream);
    case DType::kBFloat16: return simt::self_attn_bwd_simt_bf16(args, stream);
  }
  return cudaErrorInvalidValue;
}

}  // namespace sagan::kernels::cuda
