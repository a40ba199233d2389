// The C++ reference of sagan::self_attn, composed of ATen ops (it materialises the Nq x Nk map):
// the oracle of the GoogleTest suite, and the differentiable backward used for double backward.
// Its Python twin is python/sagan_attn/reference.py.
#pragma once

#include <ATen/core/Tensor.h>

#include <optional>
#include <tuple>

namespace sagan::reference {

// (y, o, lse) as sagan::self_attn_fwd defines them, computed in the inputs' dtype (lse too).
std::tuple<at::Tensor, at::Tensor, at::Tensor> self_attn_forward(
    const at::Tensor& f, const at::Tensor& g, const at::Tensor& h,
    const std::optional<at::Tensor>& x, const at::Tensor& gamma, double scale);

// (grad_f, grad_g, grad_h, grad_gamma) from closed-form gradients in ATen ops: differentiable
// again when grad mode is on, which is how sagan::self_attn gives second derivatives.
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> self_attn_backward(
    const at::Tensor& grad_y, const at::Tensor& f, const at::Tensor& g, const at::Tensor& h,
    const at::Tensor& gamma, double scale);

}  // namespace sagan::reference
