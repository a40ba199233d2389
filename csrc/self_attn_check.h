// Argument checks of sagan::self_attn, shared by every backend (CPU, CUDA, Meta) and by autograd.
#pragma once

#include <ATen/core/Tensor.h>

#include <optional>

namespace sagan {

// Throws c10::Error (ValueError/TypeError/RuntimeError in Python) naming the argument, the expected
// and the actual value. Works on symbolic shapes (torch.compile) as well as concrete ones.
void check_self_attn_args(const at::Tensor& f, const at::Tensor& g, const at::Tensor& h,
                          const std::optional<at::Tensor>& x, const at::Tensor& gamma, double scale);

// Dense (strided) layouts only: a nested or sparse tensor gets an error naming it before anything
// asks for its sizes. Called first by check_self_attn_args, and by the autograd and autocast kernels,
// which run before any backend kernel.
void check_self_attn_layouts(const at::Tensor& f, const at::Tensor& g, const at::Tensor& h,
                             const std::optional<at::Tensor>& x, const at::Tensor& gamma);

// The largest |scale| the kernels accept for inputs of this dtype: every backend multiplies scale by
// log2(e) (the kernels take the softmax in base 2) in its compute type, float32 for every dtype but
// float64, so scale * log2(e) must be finite in that type.
double self_attn_max_scale(at::ScalarType dtype);

// Checks of the backward op's extra arguments against the forward ones.
void check_self_attn_backward_args(const at::Tensor& grad_y, const at::Tensor& f,
                                   const at::Tensor& g, const at::Tensor& h, const at::Tensor& o,
                                   const at::Tensor& lse, const at::Tensor& gamma, double scale);

// Checks of the double-backward op: the backward's arguments, and the cotangents against f, g, h, gamma.
void check_self_attn_double_backward_args(const at::Tensor& uf, const at::Tensor& ug,
                                          const at::Tensor& uh, const at::Tensor& ugamma,
                                          const at::Tensor& grad_y, const at::Tensor& f,
                                          const at::Tensor& g, const at::Tensor& h, const at::Tensor& o,
                                          const at::Tensor& lse, const at::Tensor& gamma, double scale);

// The dtype kernels accumulate in: float64 for float64 inputs, float32 otherwise.
at::ScalarType self_attn_accum_type(at::ScalarType dtype);

// The dtype of the saved row log-sum-exp, for every input dtype (why: kernels/self_attn_params.h).
constexpr at::ScalarType kSelfAttnLseDtype = at::kDouble;

}  // namespace sagan
