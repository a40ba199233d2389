// CUDA kernels of the sagan ops: check, unpack tensors into the kernels' args and launch on the
// current stream of the inputs' device. Nothing here synchronises or reads device memory on the host
// (gamma is read by the kernels), so the ops are CUDA-graph capturable.
//
// The kernel is chosen by kernels/cuda/self_attn_cuda_dispatch.cu (family, tile configuration, grid).
// Only c10/cuda headers here: ATen/cuda/CUDAContext.h pulls in cuBLAS/cuSPARSE headers that a
// minimal CUDA toolkit (nvcc + cudart, as on our CI machines) does not have.
#include <ATen/ATen.h>
#include <ATen/Context.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_runtime.h>
#include <torch/library.h>

#include <array>

#include "csrc/op_registration.h"
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

std::tuple<at::Tensor, at::Tensor, at::Tensor> self_attn_fwd_cuda(
    const at::Tensor& f_in, const at::Tensor& g_in, const at::Tensor& h_in,
    const std::optional<at::Tensor>& x_in, const at::Tensor& gamma_in, double scale) {
  check_self_attn_args(f_in, g_in, h_in, x_in, gamma_in, scale);
  const c10::cuda::CUDAGuard guard(f_in.device());
  const at::Tensor f = n_contiguous(f_in), g = n_contiguous(g_in), h = n_contiguous(h_in);
  const at::Tensor gamma = gamma_in.contiguous();
  at::Tensor x;
  if (x_in.has_value()) x = n_contiguous(*x_in);

  const int64_t B = f.size(0), Nq = f.size(2), Cv = h.size(1);
  at::Tensor y = at::empty({B, Cv, Nq}, f.options()), o = at::empty({B, Cv, Nq}, f.options()),
             lse = at::empty({B, Nq}, f.options().dtype(kSelfAttnLseDtype));

  const kernels::SelfAttnFwdParams p = fwd_params(f, g, h, x, gamma, y, o, lse, scale);
  C10_CUDA_CHECK(kc::self_attn_fwd(kernel_dtype(f.scalar_type()), p, c10::cuda::getCurrentCUDAStream()));
  return {y, o, lse};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> self_attn_backward_cuda(
    const at::Tensor& grad_y_in, const at::Tensor& f_in, const at::Tensor& g_in,
    const at::Tensor& h_in, const at::Tensor& o_in, const at::Tensor& lse_in,
    const at::Tensor& gamma_in, double scale, std::array<bool, 3> output_mask) {
  check_self_attn_backward_args(grad_y_in, f_in, g_in, h_in, o_in, lse_in, gamma_in, scale);
  const c10::cuda::CUDAGuard guard(f_in.device());
  const auto dtype = f_in.scalar_type();
  const auto acc = self_attn_accum_type(dtype);
  BackwardTensors t;
  t.in = backward_inputs(grad_y_in, f_in, g_in, h_in, o_in, lse_in, gamma_in, dtype);  // no copies of dtype

  const at::Tensor& f = t.in.f;
  const int64_t B = f.size(0), Cqk = f.size(1), Nq = f.size(2), Nk = t.in.g.size(2), Cv = t.in.h.size(1);
  // The kernels write delta (the row statistic) and dgamma (float64) themselves.
  t.delta = at::empty({B, Nq}, f.options().dtype(acc));
  at::Tensor dgamma = at::empty({}, f.options().dtype(at::kDouble));

  if (output_mask[0]) t.df = at::empty({B, Cqk, Nq}, f.options());
  if (output_mask[1]) t.dg = at::empty({B, Cqk, Nk}, f.options());
  if (output_mask[2]) t.dh = at::empty({B, Cv, Nk}, f.options());
  const bool deterministic = at::globalContext().deterministicAlgorithms();
  if (output_mask[0] && output_mask[1] && !deterministic) {
    t.df_accum = at::zeros({B, Cqk, Nq}, f.options().dtype(acc));
  }
  kernels::SelfAttnBackwardParams p = backward_params(t, scale, deterministic);
  p.dgamma = dgamma.mutable_data_ptr<double>();
  C10_CUDA_CHECK(kc::self_attn_backward(kernel_dtype(dtype), p, c10::cuda::getCurrentCUDAStream()));
  return {t.df, t.dg, t.dh, dgamma.to(dtype).reshape(gamma_in.sizes())};
}

// The fused double backward (kernels/cuda/simt/self_attn_simt_double_backward_kernel.cuh): O(B C N) memory,
// no (B, Nq, Nk) map; its SIMT kernels take every shape and dtype the checks allow, so there is no
// composite fallback here. gamma and ugamma are read by the kernels, so nothing synchronises.
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> self_attn_double_backward_cuda(
    const at::Tensor& uf_in, const at::Tensor& ug_in, const at::Tensor& uh_in,
    const at::Tensor& ugamma_in, const at::Tensor& grad_y_in, const at::Tensor& f_in,
    const at::Tensor& g_in, const at::Tensor& h_in, const at::Tensor& o_in, const at::Tensor& lse_in,
    const at::Tensor& gamma_in, double scale) {
  check_self_attn_double_backward_args(uf_in, ug_in, uh_in, ugamma_in, grad_y_in, f_in, g_in, h_in,
                                       o_in, lse_in, gamma_in, scale);
  const c10::cuda::CUDAGuard guard(f_in.device());
  const auto dtype = f_in.scalar_type();
  DoubleBackwardTensors t;
  t.in = backward_inputs(grad_y_in, f_in, g_in, h_in, o_in, lse_in, gamma_in, dtype);  // no copies of dtype
  // The cotangents are read contiguous (autograd's gradients mostly are).
  t.uf = uf_in.contiguous();
  t.ug = ug_in.contiguous();
  t.uh = uh_in.contiguous();
  t.ugamma = ugamma_in.contiguous();
  const at::Tensor& f = t.in.f;
  const int64_t B = f.size(0), Cqk = f.size(1), Nq = f.size(2), Nk = t.in.g.size(2), Cv = t.in.h.size(1);
  t.rowstats = at::empty({4, B, Nq}, f.options().dtype(self_attn_accum_type(dtype)));
  t.d_dy = at::empty({B, Cv, Nq}, f.options());
  t.d_f = at::empty({B, Cqk, Nq}, f.options());
  t.d_g = at::empty({B, Cqk, Nk}, f.options());
  t.d_h = at::empty({B, Cv, Nk}, f.options());
  at::Tensor d_gamma = at::empty({}, f.options().dtype(at::kDouble));

  kernels::SelfAttnDoubleBackwardParams p = double_backward_params(t, scale);
  p.d_gamma = d_gamma.mutable_data_ptr<double>();
  C10_CUDA_CHECK(kc::self_attn_double_backward(kernel_dtype(dtype), p, c10::cuda::getCurrentCUDAStream()));
  return {t.d_dy, t.d_f, t.d_g, t.d_h, d_gamma.to(dtype).reshape(gamma_in.sizes())};
}

}  // namespace

TORCH_LIBRARY_IMPL(sagan, CUDA, m) {
  if (!sagan::registers_ops()) return;  // a later copy of the library: csrc/op_registration.h
  m.impl("self_attn_fwd", &self_attn_fwd_cuda);
  m.impl("self_attn_backward", &self_attn_backward_cuda);
  m.impl("self_attn_double_backward", &self_attn_double_backward_cuda);
}

}  // namespace sagan
