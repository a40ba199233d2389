// SIMT kernels of sagan::self_attn for storage type float (see self_attn_simt_kernel.cuh).
#include "kernels/cuda/simt/self_attn_simt.h"
#include "kernels/cuda/simt/self_attn_simt_launch.cuh"

namespace sagan::kernels::cuda::simt {

cudaError_t self_attn_fwd_simt_f32(const FwdArgs& args, cudaStream_t stream) {
  return launch_fwd<float>(args, stream);
}

cudaError_t self_attn_bwd_simt_f32(const BwdArgs& args, cudaStream_t stream) {
  return launch_bwd<float>(args, stream);
}

}  // namespace sagan::kernels::cuda::simt
