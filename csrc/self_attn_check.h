// Argument checks of sagan::self_attn, shared by every backend (CPU, CUDA, Meta) and by autograd.
#pragma once

#include <ATen/core/Tensor.h>

#include <optional>

namespace sagan {

// Throws c10::Error (ValueError/TypeError/RuntimeError in Python) naming the argument, the expected
// and the actual value. Works on symbolic shapes (torch.compile) as well as concrete ones.
void check_self_attn_args(const at::Tensor& f, const at::Tensor& g, const at::Tensor& h,
                          const std::optional<at::Tensor>& x, const at::Tensor& gamma, double scale);

// Checks of the backward op's extra arguments against the forward ones.
void check_self_attn_backward_args(const at::Tensor& grad_y, const at::Tensor& f,
                                   const at::Tensor& g, const at::Tensor& h, const at::Tensor& o,
                                   const at::Tensor& lse, const at::Tensor& gamma, double scale);

// The dtype kernels accumulate in: float64 for float64 inputs, float32 otherwise.
at::ScalarType self_attn_accum_type(at::ScalarType dtype);

// The dtype of the saved row log-sum-exp, for every input dtype (why: kernels/self_attn_params.h).
constexpr at::ScalarType kSelfAttnLseDtype = at::kDouble;

}  // namespace sagan
