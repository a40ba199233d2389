// Per-dtype entry points of the SIMT kernels, defined one per file in instantiations/ and switched
// on by self_attn_simt_dispatch.cu. Free of device code, so the dispatch compiles in a moment.
#pragma once

#include <cuda_runtime.h>

#include "kernels/cuda/self_attn_cuda.h"

namespace sagan::kernels::cuda::simt {

cudaError_t self_attn_fwd_simt_f32(const FwdArgs& args, cudaStream_t stream);
cudaError_t self_attn_bwd_simt_f32(const BwdArgs& args, cudaStream_t stream);
cudaError_t self_attn_fwd_simt_f64(const FwdArgs& args, cudaStream_t stream);
cudaError_t self_attn_bwd_simt_f64(const BwdArgs& args, cudaStream_t stream);
cudaError_t self_attn_fwd_simt_f16(const FwdArgs& args, cudaStream_t stream);
cudaError_t self_attn_bwd_simt_f16(const BwdArgs& args, cudaStream_t stream);
cudaError_t self_attn_fwd_simt_bf16(const FwdArgs& args, cudaStream_t stream);
cudaError_t self_attn_bwd_simt_bf16(const BwdArgs& args, cudaStream_t stream);

}  // namespace sagan::kernels::cuda::simt
