// C++ API of sagan-attn: the ops called through the dispatcher, so autograd, autocast, CPU and CUDA
// kernels apply exactly as from Python's torch.ops.sagan.*.
//
// LibTorch programs: find_package(sagan_attn) and link sagan_attn::sagan_attn (see examples/cpp), then
// #include <sagan_attn/sagan_attn.h>. In this source tree: #include "csrc/sagan_attn.h" and link the
// target sagan_attn. Calling any function below keeps libsagan_attn.so linked; its static
// initialisers register the ops (a program that only calls them by name through the dispatcher must
// link it with --no-as-needed). This header and build_info.h are the installed, public headers: they
// include only torch headers and each other, by relative path, so they work from either location.
#pragma once

#include <ATen/core/Tensor.h>

#include <array>
#include <optional>
#include <tuple>

#include "build_info.h"

namespace sagan {

// y = gamma * softmax(scale f^T g) applied to h (+ x), shapes f (B, Cqk, Nq), g (B, Cqk, Nk),
// h (B, Cv, Nk), x (B, Cv, Nq) or none, gamma one element; y (B, Cv, Nq). Differentiable (autograd is
// registered in C++): gradients for f, g, h, x and gamma, second derivatives too. Under autocast
// (at::autocast, torch.autocast) it runs in the autocast dtype, as matmul does.
at::Tensor self_attn(const at::Tensor& f, const at::Tensor& g, const at::Tensor& h,
                     const std::optional<at::Tensor>& x, const at::Tensor& gamma,
                     double scale = 1.0);

// The same with gamma given as a number (a constant: no gradient for it), in f's dtype and device.
at::Tensor self_attn(const at::Tensor& f, const at::Tensor& g, const at::Tensor& h,
                     const std::optional<at::Tensor>& x, double gamma, double scale = 1.0);

// The forward kernel: (y, o, lse) with o the attention output before gamma and lse the row
// log-sum-exp of the scaled logits (float64 for every input dtype). Not differentiable.
std::tuple<at::Tensor, at::Tensor, at::Tensor> self_attn_fwd(
    const at::Tensor& f, const at::Tensor& g, const at::Tensor& h,
    const std::optional<at::Tensor>& x, const at::Tensor& gamma, double scale = 1.0);

// The fused backward kernel: (grad_f, grad_g, grad_h, grad_gamma) from self_attn_fwd's o and lse
// (grad_x is grad_y itself). output_mask says which of grad_f, grad_g, grad_h to compute; the others
// come back undefined. Not differentiable.
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> self_attn_backward(
    const at::Tensor& grad_y, const at::Tensor& f, const at::Tensor& g, const at::Tensor& h,
    const at::Tensor& o, const at::Tensor& lse, const at::Tensor& gamma, double scale,
    std::array<bool, 3> output_mask = {true, true, true});

// The backward's VJP (double backward): against cotangents (grad_grad_f, grad_grad_g, grad_grad_h,
// grad_grad_gamma) of self_attn_backward's outputs, the gradients (grad_grad_y, grad_f, grad_g,
// grad_h, grad_gamma) with respect to its inputs (grad_y, f, g, h, gamma). Not differentiable itself.
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> self_attn_double_backward(
    const at::Tensor& grad_grad_f, const at::Tensor& grad_grad_g, const at::Tensor& grad_grad_h,
    const at::Tensor& grad_grad_gamma, const at::Tensor& grad_y, const at::Tensor& f,
    const at::Tensor& g, const at::Tensor& h, const at::Tensor& o, const at::Tensor& lse,
    const at::Tensor& gamma, double scale);

}  // namespace sagan
