// CPU kernels of the sagan ops: unpack tensors into the params struct and call kernels/cpu.
// float32 and float64 run in themselves. bfloat16 is read and written by the forward and backward
// kernels as it is and computed in float32 (kernels/cpu/self_attn_cpu_traits.h: BFloat16Storage), with
// results bitwise those of converting to float32 and back; the double backward, and float16 everywhere,
// convert to float32 first (O(B C N) copies and allocations) and back.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <array>

#include "csrc/op_registration.h"
#include "csrc/self_attn_check.h"
#include "csrc/self_attn_kernel_args.h"
#include "kernels/cpu/self_attn_cpu.h"

namespace sagan {
namespace {

// The dtype the forward and backward kernels read and write for inputs of dtype: itself for float32,
// float64 and bfloat16, float32 for float16.
at::ScalarType cpu_storage_type(at::ScalarType dtype) {
  return dtype == at::kBFloat16 ? dtype : self_attn_accum_type(dtype);
}

// Calls fn with a value of the kernels' storage type for storage (float, double, BFloat16Storage).
template <typename Fn>
void with_storage_type(at::ScalarType storage, Fn&& fn) {
  switch (storage) {
    case at::kDouble: fn(double{}); break;
    case at::kBFloat16: fn(kernels::cpu::BFloat16Storage{}); break;
    default: fn(float{}); break;
  }
}

kernels::ParallelFor aten_parallel_for() {
  return [](int64_t n, const std::function<void(int64_t, int64_t)>& body) {
    at::parallel_for(0, n, 1, body);
  };
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> self_attn_fwd_cpu(
    const at::Tensor& f_in, const at::Tensor& g_in, const at::Tensor& h_in,
    const std::optional<at::Tensor>& x_in, const at::Tensor& gamma_in, double scale) {
  check_self_attn_args(f_in, g_in, h_in, x_in, gamma_in, scale);
  const auto dtype = f_in.scalar_type();
  const auto storage = cpu_storage_type(dtype);
  const at::Tensor f = to_kernel_layout(f_in, storage), g = to_kernel_layout(g_in, storage),
                   h = to_kernel_layout(h_in, storage);
  const at::Tensor gamma = gamma_in.to(storage).contiguous();
  at::Tensor x;
  if (x_in.has_value()) x = to_kernel_layout(*x_in, storage);

  const int64_t B = f.size(0), Nq = f.size(2), Cv = h.size(1);
  auto opts = f.options().dtype(storage);
  at::Tensor y = at::empty({B, Cv, Nq}, opts), o = at::empty({B, Cv, Nq}, opts),
             lse = at::empty({B, Nq}, opts.dtype(kSelfAttnLseDtype));

  const kernels::SelfAttnFwdParams p = fwd_params(f, g, h, x, gamma, y, o, lse, scale);
  with_storage_type(storage, [&](auto s) { kernels::cpu::self_attn_fwd<decltype(s)>(p, aten_parallel_for()); });
  return {y.to(dtype), o.to(dtype), lse};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> self_attn_backward_cpu(
    const at::Tensor& grad_y_in, const at::Tensor& f_in, const at::Tensor& g_in,
    const at::Tensor& h_in, const at::Tensor& o_in, const at::Tensor& lse_in,
    const at::Tensor& gamma_in, double scale, std::array<bool, 3> output_mask) {
  check_self_attn_backward_args(grad_y_in, f_in, g_in, h_in, o_in, lse_in, gamma_in, scale);
  const auto dtype = f_in.scalar_type();
  const auto storage = cpu_storage_type(dtype);
  BackwardTensors t;
  t.in = backward_inputs(grad_y_in, f_in, g_in, h_in, o_in, lse_in, gamma_in, storage);

  const at::Tensor& f = t.in.f;
  const int64_t B = f.size(0), Cqk = f.size(1), Nq = f.size(2), Nk = t.in.g.size(2), Cv = t.in.h.size(1);
  auto opts = f.options().dtype(storage);
  t.delta = at::empty({B, Nq}, opts.dtype(self_attn_accum_type(dtype)));
  if (output_mask[0]) t.df = at::empty({B, Cqk, Nq}, opts);
  if (output_mask[1]) t.dg = at::empty({B, Cqk, Nk}, opts);
  if (output_mask[2]) t.dh = at::empty({B, Cv, Nk}, opts);
  double dgamma = 0.0;

  // The CPU kernels are deterministic for any thread count; they have no atomic mode.
  kernels::SelfAttnBackwardParams p = backward_params(t, scale, /*deterministic=*/true);
  p.dgamma = &dgamma;
  with_storage_type(storage, [&](auto s) { kernels::cpu::self_attn_backward<decltype(s)>(p, aten_parallel_for()); });
  auto back = [&](const at::Tensor& r) { return r.defined() ? r.to(dtype) : r; };
  at::Tensor grad_gamma = at::full(gamma_in.sizes(), dgamma, gamma_in.options());
  return {back(t.df), back(t.dg), back(t.dh), grad_gamma};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> self_attn_double_backward_cpu(
    const at::Tensor& uf_in, const at::Tensor& ug_in, const at::Tensor& uh_in,
    const at::Tensor& ugamma_in, const at::Tensor& grad_y_in, const at::Tensor& f_in,
    const at::Tensor& g_in, const at::Tensor& h_in, const at::Tensor& o_in, const at::Tensor& lse_in,
    const at::Tensor& gamma_in, double scale) {
  check_self_attn_double_backward_args(uf_in, ug_in, uh_in, ugamma_in, grad_y_in, f_in, g_in, h_in,
                                       o_in, lse_in, gamma_in, scale);
  const auto dtype = f_in.scalar_type();
  const auto compute = self_attn_accum_type(dtype);
  DoubleBackwardTensors t;
  t.in = backward_inputs(grad_y_in, f_in, g_in, h_in, o_in, lse_in, gamma_in, compute);
  // The cotangents are read contiguous (autograd's gradients mostly are).
  t.uf = uf_in.to(compute).contiguous();
  t.ug = ug_in.to(compute).contiguous();
  t.uh = uh_in.to(compute).contiguous();
  t.ugamma = ugamma_in.to(compute).contiguous();
  const at::Tensor& f = t.in.f;
  const int64_t B = f.size(0), Cqk = f.size(1), Nq = f.size(2), Nk = t.in.g.size(2), Cv = t.in.h.size(1);
  auto opts = f.options().dtype(compute);
  t.rowstats = at::empty({4, B, Nq}, opts);
  t.d_dy = at::empty({B, Cv, Nq}, opts);
  t.d_f = at::empty({B, Cqk, Nq}, opts);
  t.d_g = at::empty({B, Cqk, Nk}, opts);
  t.d_h = at::empty({B, Cv, Nk}, opts);
  double d_gamma = 0.0;

  kernels::SelfAttnDoubleBackwardParams p = double_backward_params(t, scale);
  p.d_gamma = &d_gamma;
  if (compute == at::kDouble) {
    kernels::cpu::self_attn_double_backward<double>(p, aten_parallel_for());
  } else {
    kernels::cpu::self_attn_double_backward<float>(p, aten_parallel_for());
  }
  return {t.d_dy.to(dtype), t.d_f.to(dtype), t.d_g.to(dtype), t.d_h.to(dtype),
          at::full(gamma_in.sizes(), d_gamma, gamma_in.options())};
}

}  // namespace

TORCH_LIBRARY_IMPL(sagan, CPU, m) {
  if (!sagan::registers_ops()) return;  // a later copy of the library: csrc/op_registration.h
  m.impl("self_attn_fwd", &self_attn_fwd_cpu);
  m.impl("self_attn_backward", &self_attn_backward_cpu);
  m.impl("self_attn_double_backward", &self_attn_double_backward_cpu);
}

}  // namespace sagan
