// CUDA kernels of the sagan ops: check, unpack tensors into the kernels' args and launch on the
// current stream of the inputs' device. Nothing here synchronises or reads device memory on the host
// (gamma is read by the kernels), so the ops are CUDA-graph capturable.
//
// Kernel choice: float16/bfloat16 with Cqk <= kMmaMaxCqk on sm_80+ run on tensor cores (kernels/cuda/mma);
// everything else runs the exact SIMT kernels (kernels/cuda/simt). SAGAN_ATTN_CUDA_KERNELS=simt forces
// the SIMT kernels (the tests use it to check both families on the same inputs).
#include <ATen/ATen.h>
#include <ATen/Context.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_runtime.h>
#include <torch/library.h>

#include <cstdlib>
#include <cstring>

#include "csrc/self_attn_check.h"
#include "csrc/self_attn_kernel_args.h"
#include "kernels/cuda/self_attn_cuda.h"

namespace sagan {
namespace {

namespace kc = kernels::cuda;

kc::DType kernel_dtype(at::ScalarType t) {
  switch (t) {
    case at::kHalf: return kc::DType::kFloat16;
    case at::kBFloat16: return kc::DType::kBFloat16;
    case at::kFloat: return kc::DType::kFloat32;
    case at::kDouble: return kc::DType::kFloat64;
    default: TORCH_CHECK_TYPE(false, "self_attn: unsupported dtype ", t);
  }
}

// Only c10/cuda headers here: ATen/cuda/CUDAContext.h pulls in cuBLAS/cuSPARSE headers that a
// minimal CUDA toolkit (nvcc + cudart, as on our CI machines) does not have.
bool use_mma(kc::DType dtype, int64_t Cqk, int64_t B) {
  // The tensor-core kernels put the batch in a grid dimension (at most 65535); the SIMT ones loop.
  if (B > 65535) return false;
  const char* forced = std::getenv("SAGAN_ATTN_CUDA_KERNELS");
  if (forced != nullptr && std::strcmp(forced, "simt") == 0) return false;
  int major = 0;
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, c10::cuda::current_device()));
  return kc::mma_supported(dtype, Cqk, major);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> self_attn_fwd_cuda(
    const at::Tensor& f_in, const at::Tensor& g_in, const at::Tensor& h_in,
    const std::optional<at::Tensor>& x_in, const at::Tensor& gamma_in, double scale) {
  check_self_attn_args(f_in, g_in, h_in, x_in, gamma_in, scale);
  const c10::cuda::CUDAGuard guard(f_in.device());
  const at::Tensor f = n_contiguous(f_in), g = n_contiguous(g_in), h = n_contiguous(h_in);
  const at::Tensor gamma = gamma_in.contiguous();
  at::Tensor x;
  if (x_in.has_value()) x = n_contiguous(*x_in);

  const int64_t B = f.size(0), Cqk = f.size(1), Nq = f.size(2), Cv = h.size(1);
  at::Tensor y = at::empty({B, Cv, Nq}, f.options()), o = at::empty({B, Cv, Nq}, f.options()),
             lse = at::empty({B, Nq}, f.options().dtype(kSelfAttnLseDtype));

  kc::FwdArgs a;
  a.p = fwd_params(f, g, h, x, y, o, lse, scale);
  a.gamma = gamma.const_data_ptr();

  const kc::DType dtype = kernel_dtype(f.scalar_type());
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  C10_CUDA_CHECK(use_mma(dtype, Cqk, B) ? kc::self_attn_fwd_mma(dtype, a, stream)
                                     : kc::self_attn_fwd_simt(dtype, a, stream));
  return {y, o, lse};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> self_attn_backward_cuda(
    const at::Tensor& grad_y_in, const at::Tensor& f_in, const at::Tensor& g_in,
    const at::Tensor& h_in, const at::Tensor& o_in, const at::Tensor& lse_in,
    const at::Tensor& gamma_in, double scale) {
  check_self_attn_backward_args(grad_y_in, f_in, g_in, h_in, o_in, lse_in, gamma_in, scale);
  const c10::cuda::CUDAGuard guard(f_in.device());
  const at::Tensor dy = n_contiguous(grad_y_in), f = n_contiguous(f_in),
                   g = n_contiguous(g_in), h = n_contiguous(h_in);
  const at::Tensor lse = lse_in.contiguous(), gamma = gamma_in.contiguous();
  const auto dtype = f.scalar_type();
  const auto acc = self_attn_accum_type(dtype);

  const int64_t B = f.size(0), Cqk = f.size(1), Nq = f.size(2), Nk = g.size(2), Cv = h.size(1);
  // delta_i = sum_c dy[c, i] o[c, i] (FlashAttention-2's D, before gamma), and from it
  // dgamma = sum over everything of dy * o: O(B Cv Nq), against O(B Nq Nk (Cqk + Cv)) in the kernels.
  const at::Tensor delta = at::sum(dy.to(acc) * o_in.to(acc), {1}).contiguous();
  const at::Tensor grad_gamma = delta.sum().to(gamma.scalar_type()).reshape(gamma_in.sizes());

  at::Tensor df = at::empty({B, Cqk, Nq}, f.options()), dg = at::empty({B, Cqk, Nk}, f.options()),
             dh = at::empty({B, Cv, Nk}, f.options());
  const bool deterministic = at::globalContext().deterministicAlgorithms();
  at::Tensor df_accum;
  if (!deterministic) df_accum = at::zeros({B, Cqk, Nq}, f.options().dtype(acc));

  kc::BwdArgs a;
  a.p = bwd_params(dy, f, g, h, lse, df, dg, dh, scale);
  a.gamma = gamma.const_data_ptr();
  a.delta = delta.const_data_ptr();
  a.df_accum = df_accum.defined() ? df_accum.mutable_data_ptr() : nullptr;
  a.deterministic = deterministic;

  const kc::DType kdtype = kernel_dtype(dtype);
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  C10_CUDA_CHECK(use_mma(kdtype, Cqk, B) ? kc::self_attn_bwd_mma(kdtype, a, stream)
                                      : kc::self_attn_bwd_simt(kdtype, a, stream));
  if (df_accum.defined()) {
    df.copy_(df_accum.mul_(gamma.to(acc).reshape({}) * scale));
  }
  return {df, dg, dh, grad_gamma};
}

}  // namespace

TORCH_LIBRARY_IMPL(sagan, CUDA, m) {
  m.impl("self_attn_fwd", &self_attn_fwd_cuda);
  m.impl("self_attn_backward", &self_attn_backward_cuda);
}

}  // namespace sagan
