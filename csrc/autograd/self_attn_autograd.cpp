// Autograd of sagan::self_attn and of its backward, registered on the Autograd key so C++
// (GoogleTest, LibTorch programs) and Python get the same derivatives.
//
// self_attn: forward saves f, g, h, gamma, the attention output o (before gamma) and the row
// log-sum-exp: O(N), never the Nq x Nk map. o is needed even at gamma = 0 (SAGAN's initial value):
// d gamma = sum dy o. Backward runs the fused sagan::self_attn_backward with only the gradients
// autograd needs (output_mask); under create_graph=True (WGAN-GP, R1 penalties) it runs it through the
// dispatcher's Autograd key, so that it is itself differentiable:
// self_attn_backward: its backward is the fused sagan::self_attn_double_backward (O(N) memory on the
// CPU; the composite reference on CUDA). o and lse are functions of f, g, h, and the double backward
// takes every path through them, so they get no gradient of their own here. A third derivative
// (create_graph=True on the penalty's backward too) falls back to the closed form of csrc/reference
// in ATen ops, recomputing p and o from f, g, h: differentiable again, and O(B Nq Nk) in memory.
#include <ATen/ATen.h>
#include <torch/autograd.h>
#include <torch/library.h>

#include <array>

#include "csrc/op_registration.h"
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
      // create_graph=True: the fused backward, recorded by its own autograd (below).
      std::tie(grad_f, grad_g, grad_h, grad_gamma) =
          sagan::self_attn_backward(grad_y, f, g, h, o, lse, gamma, scale);
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

// The backward as a differentiable function of (grad_y, f, g, h, gamma).
class SelfAttnBackwardFunction : public torch::autograd::Function<SelfAttnBackwardFunction> {
 public:
  static variable_list forward(AutogradContext* ctx, const at::Tensor& grad_y, const at::Tensor& f,
                               const at::Tensor& g, const at::Tensor& h, const at::Tensor& o,
                               const at::Tensor& lse, const at::Tensor& gamma, double scale) {
    at::AutoDispatchBelowADInplaceOrView guard;
    auto [grad_f, grad_g, grad_h, grad_gamma] = sagan::self_attn_backward(grad_y, f, g, h, o, lse, gamma, scale);
    ctx->save_for_backward({grad_y, f, g, h, o, lse, gamma});
    ctx->saved_data["scale"] = scale;
    return {grad_f, grad_g, grad_h, grad_gamma};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const at::Tensor &grad_y = saved[0], &f = saved[1], &g = saved[2], &h = saved[3];
    const at::Tensor &o = saved[4], &lse = saved[5], &gamma = saved[6];
    const double scale = ctx->saved_data["scale"].toDouble();
    // Cotangents of outputs that were not used (or not computed) are undefined: zero.
    auto or_zeros = [](const at::Tensor& u, const at::Tensor& like) {
      return u.defined() ? u : at::zeros_like(like, at::MemoryFormat::Contiguous);
    };
    const at::Tensor uf = or_zeros(grads[0], f), ug = or_zeros(grads[1], g), uh = or_zeros(grads[2], h),
                     ugamma = or_zeros(grads[3], gamma);
    at::Tensor d_dy, d_f, d_g, d_h, d_gamma;
    if (at::GradMode::is_enabled()) {
      // A third derivative: the composite closed form, itself differentiable.
      std::tie(d_dy, d_f, d_g, d_h, d_gamma) =
          reference::self_attn_double_backward(uf, ug, uh, ugamma, grad_y, f, g, h, gamma, scale);
    } else {
      std::tie(d_dy, d_f, d_g, d_h, d_gamma) =
          sagan::self_attn_double_backward(uf, ug, uh, ugamma, grad_y, f, g, h, o, lse, gamma, scale);
    }
    // o and lse are the forward's: their dependence on f, g, h is already in d_f, d_g, d_h.
    return {d_dy, d_f, d_g, d_h, at::Tensor(), at::Tensor(), d_gamma, at::Tensor()};
  }
};

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> self_attn_backward_autograd(
    const at::Tensor& grad_y, const at::Tensor& f, const at::Tensor& g, const at::Tensor& h,
    const at::Tensor& o, const at::Tensor& lse, const at::Tensor& gamma, double scale,
    std::array<bool, 3> output_mask) {
  const bool differentiable =
      at::GradMode::is_enabled() && (grad_y.requires_grad() || f.requires_grad() || g.requires_grad() ||
                                     h.requires_grad() || gamma.requires_grad());
  if (!differentiable) {  // the usual first backward: only the wanted gradients, no graph
    at::AutoDispatchBelowADInplaceOrView guard;
    return sagan::self_attn_backward(grad_y, f, g, h, o, lse, gamma, scale, output_mask);
  }
  // A Function's outputs must all be defined: compute all, hand back the wanted ones.
  auto out = SelfAttnBackwardFunction::apply(grad_y, f, g, h, o, lse, gamma, scale);
  return {output_mask[0] ? out[0] : at::Tensor(), output_mask[1] ? out[1] : at::Tensor(),
          output_mask[2] ? out[2] : at::Tensor(), out[3]};
}

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

TORCH_LIBRARY_IMPL(sagan, Autograd, m) {
  if (!sagan::registers_ops()) return;  // a later copy of the library: csrc/op_registration.h
  m.impl("self_attn", &self_attn_autograd);
  m.impl("self_attn_backward", &self_attn_backward_autograd);
}

TORCH_LIBRARY_IMPL(sagan, CompositeExplicitAutograd, m) {
  if (!sagan::registers_ops()) return;  // a later copy of the library: csrc/op_registration.h
  m.impl("self_attn", &self_attn_composite);
}

}  // namespace sagan
