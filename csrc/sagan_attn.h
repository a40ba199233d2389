// C++ API of sagan-attn: the ops called through the dispatcher, so autograd, CPU and (later) CUDA
// kernels apply exactly as from Python's torch.ops.sagan.*.
#pragma once

#include <ATen/core/Tensor.h>

#include <optional>
#include <tuple>

namespace sagan {

// y = gamma * softmax(scale f^T g) applied to h (+ x); differentiable (autograd registered in C++).
at::Tensor self_attn(const at::Tensor& f, const at::Tensor& g, const at::Tensor& h,
                     const std::optional<at::Tensor>& x, const at::Tensor& gamma,
                     double scale = 1.0);

// The forward kernel: (y, o, lse) with o the attention output before gamma and lse the row
// log-sum-exp of the scaled logits. Not differentiable.
std::tuple<at::Tensor, at::Tensor, at::Tensor> self_attn_fwd(
    const at::Tensor& f, const at::Tensor& g, const at::Tensor& h,
    const std::optional<at::Tensor>& x, const at::Tensor& gamma, double scale = 1.0);

// The fused backward kernel: (grad_f, grad_g, grad_h, grad_gamma). Not differentiable.
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> self_attn_backward(
    const at::Tensor& grad_y, const at::Tensor& f, const at::Tensor& g, const at::Tensor& h,
    const at::Tensor& o, const at::Tensor& lse, const at::Tensor& gamma, double scale);

}  // namespace sagan
