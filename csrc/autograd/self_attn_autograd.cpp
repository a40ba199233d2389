// Autograd of sagan::self_attn, registered on the Autograd key so C++ (GoogleTest, LibTorch
// programs) and Python get the same backward.
//
// Forward saves f, g, h, gamma, the attention output o (before gamma) and the row log-sum-exp: O(N),
// never the Nq x Nk map. o is needed even at gamma = 0 (SAGAN's initial value): d gamma = sum dy o.
// Backward runs the fused sagan::self_attn_backward kernel. When the backward itself must be
// differentiable (create_graph=True: WGAN-GP, R1 penalties) it instead uses the closed-form
// gradients of csrc/reference in ATen ops, which autograd differentiates again. That composite path
// materialises the (B, Nq, Nk) map: memory O(B Nq Nk) like the notebook module, only in that case.
#include <ATen/ATen.h>
#include <torch/autograd.h>
#include <torch/library.h>

#include "csrc/reference/self_attn_reference.h"
#include "csrc/sagan_attn.h"
#include "csrc/self_attn_check.h"

namespace sagan {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

class SelfAttnFunction : public torch::autograd::Function<SelfAttnFunction> {
 public:
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& f, const at::Tensor& g,
                            const at::Tensor& h, const std::optional<at::Tensor>& x,
                            const at::Tensor& gamma, double scale) {
    at::AutoDispatchBelowADInplaceOrView guard;
    auto [y, o, lse] = sagan::self_attn_fwd(f, g, h, x, gamma, scale);
    ctx->save_for_backward({f, g, h, gamma, o, lse});
    ctx->saved_data["scale"] = scale;
    ctx->saved_data["has_x"] = x.has_value();
    return y;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grad_outputs) {
    const auto saved = ctx->get_saved_variables();
    const at::Tensor &f = saved[0], &g = saved[1], &h = saved[2], &gamma = saved[3];
    const at::Tensor &o = saved[4], &lse = saved[5];
    const double scale = ctx->saved_data["scale"].toDouble();
    const bool has_x = ctx->saved_data["has_x"].toBool();
    const at::Tensor& grad_y = grad_outputs[0];
    if (!grad_y.defined()) return {at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor()};

    at::Tensor grad_f, grad_g, grad_h, grad_gamma;
    if (at::GradMode::is_enabled()) {
      std::tie(grad_f, grad_g, grad_h, grad_gamma) =
          reference::self_attn_backward(grad_y, f, g, h, gamma, scale);
    } else {
      // Only the gradients autograd needs: the backward of h alone skips the logits' gradients.
      const std::array<bool, 3> mask = {ctx->needs_input_grad(0), ctx->needs_input_grad(1),
                                        ctx->needs_input_grad(2)};
      std::tie(grad_f, grad_g, grad_h, grad_gamma) =
          sagan::self_attn_backward(grad_y, f, g, h, o, lse, gamma, scale, mask);
    }
    return {grad_f, grad_g, grad_h, has_x ? grad_y : at::Tensor(), grad_gamma, at::Tensor()};
  }
};

at::Tensor self_attn_autograd(const at::Tensor& f, const at::Tensor& g, const at::Tensor& h,
                              const std::optional<at::Tensor>& x, const at::Tensor& gamma,
                              double scale) {
  check_self_attn_layouts(f, g, h, x, gamma);  // before autograd asks a nested tensor for sizes
  return SelfAttnFunction::apply(f, g, h, x, gamma, scale);
}

// Below autograd, self_attn is its forward kernel's first output, for every backend.
at::Tensor self_attn_composite(const at::Tensor& f, const at::Tensor& g, const at::Tensor& h,
                               const std::optional<at::Tensor>& x, const at::Tensor& gamma,
                               double scale) {
  return std::get<0>(sagan::self_attn_fwd(f, g, h, x, gamma, scale));
}

}  // namespace

TORCH_LIBRARY_IMPL(sagan, Autograd, m) { m.impl("self_attn", &self_attn_autograd); }

TORCH_LIBRARY_IMPL(sagan, CompositeExplicitAutograd, m) {
  m.impl("self_attn", &self_attn_composite);
}

}  // namespace sagan
