// SIMT kernels of sagan::self_attn for storage type __nv_bfloat16 (see self_attn_simt_kernel.cuh).
#include "kernels/cuda/simt/self_attn_simt.h"
#include "kernels/cuda/simt/self_attn_simt_launch.cuh"

namespace sagan::kernels::cuda::simt {

cudaError_t self_attn_fwd_simt_bf16(const FwdArgs& args, cudaStream_t stream) {
  return launch_fwd<__nv_bfloat16>(args, stream);
}

cudaError_t self_attn_bwd_simt_bf16(const BwdArgs& args, cudaStream_t stream) {
  return launch_bwd<__nv_bfloat16>(args, stream);
}

}  // namespace sagan::kernels::cuda::simt
