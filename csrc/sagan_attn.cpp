#include "csrc/sagan_attn.h"

#include "csrc/build_info.h"

#include <ATen/Functions.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/version.h>

#include <sstream>

#include "kernels/cpu/self_attn_cpu.h"

#ifndef SAGAN_ATTN_VERSION
#error "SAGAN_ATTN_VERSION must be defined by the build (from version.txt)"
#endif
#ifndef SAGAN_ATTN_CUDA_ARCHS
#define SAGAN_ATTN_CUDA_ARCHS ""
#endif

namespace sagan {

namespace {

using SelfAttnFn = at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&,
                              const std::optional<at::Tensor>&, const at::Tensor&, double);
using SelfAttnFwdFn = decltype(self_attn_fwd);
using SelfAttnBackwardFn = decltype(self_attn_backward);
using SelfAttnDoubleBackwardFn = decltype(self_attn_double_backward);

}  // namespace

at::Tensor self_attn(const at::Tensor& f, const at::Tensor& g, const at::Tensor& h,
                     const std::optional<at::Tensor>& x, const at::Tensor& gamma, double scale) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("sagan::self_attn", "")
                       .typed<SelfAttnFn>();
  return op.call(f, g, h, x, gamma, scale);
}

at::Tensor self_attn(const at::Tensor& f, const at::Tensor& g, const at::Tensor& h,
                     const std::optional<at::Tensor>& x, double gamma, double scale) {
  return self_attn(f, g, h, x, at::scalar_tensor(gamma, f.options().requires_grad(false)), scale);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> self_attn_fwd(
    const at::Tensor& f, const at::Tensor& g, const at::Tensor& h,
    const std::optional<at::Tensor>& x, const at::Tensor& gamma, double scale) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("sagan::self_attn_fwd", "")
                       .typed<SelfAttnFwdFn>();
  return op.call(f, g, h, x, gamma, scale);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> self_attn_backward(
    const at::Tensor& grad_y, const at::Tensor& f, const at::Tensor& g, const at::Tensor& h,
    const at::Tensor& o, const at::Tensor& lse, const at::Tensor& gamma, double scale,
    std::array<bool, 3> output_mask) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("sagan::self_attn_backward", "")
                       .typed<SelfAttnBackwardFn>();
  return op.call(grad_y, f, g, h, o, lse, gamma, scale, output_mask);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> self_attn_double_backward(
    const at::Tensor& grad_grad_f, const at::Tensor& grad_grad_g, const at::Tensor& grad_grad_h,
    const at::Tensor& grad_grad_gamma, const at::Tensor& grad_y, const at::Tensor& f,
    const at::Tensor& g, const at::Tensor& h, const at::Tensor& o, const at::Tensor& lse,
    const at::Tensor& gamma, double scale) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("sagan::self_attn_double_backward", "")
                       .typed<SelfAttnDoubleBackwardFn>();
  return op.call(grad_grad_f, grad_grad_g, grad_grad_h, grad_grad_gamma, grad_y, f, g, h, o, lse,
                 gamma, scale);
}

std::string build_info() {
  std::ostringstream s;
  s << "version=" << SAGAN_ATTN_VERSION << "\n"
    << "torch=" << TORCH_VERSION << "\n"
    << "cuda=" << (SAGAN_ATTN_WITH_CUDA ? "true" : "false") << "\n"
    << "cuda_archs=" << SAGAN_ATTN_CUDA_ARCHS << "\n"
    << "cpu_isa=" << kernels::cpu::isa_name() << "\n";
  return s.str();
}

}  // namespace sagan
