// Tensor-core kernels for __half with Cqk padded to 32.
#include "kernels/cuda/mma/self_attn_mma.h"
#include "kernels/cuda/mma/self_attn_mma_kernels.cuh"

namespace sagan::kernels::cuda::mma {
template cudaError_t launch_fwd<__half, 32>(const FwdArgs&, cudaStream_t);
template cudaError_t launch_bwd<__half, 32>(const BwdArgs&, cudaStream_t);
}  // namespace sagan::kernels::cuda::mma
