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

// The VJP of self_attn_backward's (grad_f, grad_g, grad_h, grad_gamma) against the cotangents
// (uf, ug, uh, ugamma), with respect to (grad_y, f, g, h, gamma): the closed form derived in
// kernels/cpu/self_attn_cpu_double_backward_kernel.h, in ATen ops on the (B, Nq, Nk) maps, recomputing
// p and o from f, g, h (so it is itself differentiable in all of them: the third-derivative path).
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> self_attn_double_backward(
    const at::Tensor& uf, const at::Tensor& ug, const at::Tensor& uh, const at::Tensor& ugamma,
    const at::Tensor& grad_y, const at::Tensor& f, const at::Tensor& g, const at::Tensor& h,
    const at::Tensor& gamma, double scale);

}  // namespace sagan::reference
