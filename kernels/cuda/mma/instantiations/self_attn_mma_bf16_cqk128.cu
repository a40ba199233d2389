// Tensor-core kernels for __nv_bfloat16 with Cqk padded to 128.
#include "kernels/cuda/mma/self_attn_mma.h"
#include "kernels/cuda/mma/self_attn_mma_kernels.cuh"

namespace sagan::kernels::cuda::mma {
template cudaError_t launch_fwd<__nv_bfloat16, 128>(const FwdArgs&, cudaStream_t);
template cudaError_t launch_bwd<__nv_bfloat16, 128>(const BwdArgs&, cudaStream_t);
}  // namespace sagan::kernels::cuda::mma
