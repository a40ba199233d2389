#include "csrc/self_attn_check.h"

#include <c10/util/Exception.h>

#include <cmath>
#include <limits>
#include <utility>

namespace sagan {
namespace {

bool is_supported_dtype(at::ScalarType t) {
  return t == at::kFloat || t == at::kDouble || t == at::kBFloat16 || t == at::kHalf;
}

void check_rank3(const at::Tensor& t, const char* name, const char* dims) {
  TORCH_CHECK_VALUE(t.dim() == 3, "self_attn: ", name, " must be 3-D ", dims, ", got ", t.dim(),
                    "-D tensor of shape ", t.sym_sizes());
}

void check_not_empty(const at::Tensor& t, const char* name) {
  for (int64_t d = 0; d < t.dim(); ++d) {
    TORCH_CHECK_VALUE(t.sym_size(d) != 0, "self_attn: ", name,
                      " is empty (shape ", t.sym_sizes(),
                      "); every dimension must be at least 1");
  }
}

void check_same_dtype_device(const at::Tensor& ref, const at::Tensor& t, const char* name,
                             const char* op = "self_attn") {
  TORCH_CHECK_TYPE(t.scalar_type() == ref.scalar_type(), op, ": ", name, " must have dtype ",
                   ref.scalar_type(), " like f, got ", t.scalar_type());
  TORCH_CHECK(t.device() == ref.device(), op, ": ", name, " must be on device ", ref.device(),
              " like f, got ", t.device());
}

void check_dense(const at::Tensor& t, const char* name) {
  TORCH_CHECK_VALUE(!t.is_nested(), "self_attn: ", name,
                    " is a nested tensor; self_attn takes dense (strided) tensors of shape (B, C, N): "
                    "call it once per image size, or stack images of one size into a batch");
  TORCH_CHECK_VALUE(t.layout() == at::kStrided, "self_attn: ", name,
                    " must be a dense (strided) tensor, got layout ", t.layout(),
                    " (call .to_dense() first)");
}

}  // namespace

void check_self_attn_layouts(const at::Tensor& f, const at::Tensor& g, const at::Tensor& h,
                             const std::optional<at::Tensor>& x, const at::Tensor& gamma) {
  check_dense(f, "f");
  check_dense(g, "g");
  check_dense(h, "h");
  if (x.has_value()) check_dense(*x, "x");
  check_dense(gamma, "gamma");
}

double self_attn_max_scale(at::ScalarType dtype) {
  constexpr double kLog2e = 1.4426950408889634074;
  return (dtype == at::kDouble ? std::numeric_limits<double>::max()
                               : static_cast<double>(std::numeric_limits<float>::max())) / kLog2e;
}

at::ScalarType self_attn_accum_type(at::ScalarType dtype) {
  return dtype == at::kDouble ? at::kDouble : at::kFloat;
}

void check_self_attn_args(const at::Tensor& f, const at::Tensor& g, const at::Tensor& h,
                          const std::optional<at::Tensor>& x, const at::Tensor& gamma, double scale) {
  check_self_attn_layouts(f, g, h, x, gamma);
  TORCH_CHECK_TYPE(is_supported_dtype(f.scalar_type()),
                   "self_attn: f must have a floating dtype (float32, float64, bfloat16 or "
                   "float16), got ",
                   f.scalar_type());
  check_same_dtype_device(f, g, "g");
  check_same_dtype_device(f, h, "h");
  check_same_dtype_device(f, gamma, "gamma");
  if (x.has_value()) check_same_dtype_device(f, *x, "x");

  check_rank3(f, "f", "(B, Cqk, Nq)");
  check_rank3(g, "g", "(B, Cqk, Nk)");
  check_rank3(h, "h", "(B, Cv, Nk)");
  const auto B = f.sym_size(0), Cqk = f.sym_size(1), Nq = f.sym_size(2);
  TORCH_CHECK_VALUE(g.sym_size(0) == B && g.sym_size(1) == Cqk,
                    "self_attn: g must have shape (B, Cqk, Nk) = (", B, ", ", Cqk, ", *) to match f, got ",
                    g.sym_sizes());
  const auto Nk = g.sym_size(2);
  TORCH_CHECK_VALUE(h.sym_size(0) == B && h.sym_size(2) == Nk,
                    "self_attn: h must have shape (B, Cv, Nk) = (", B, ", *, ", Nk,
                    ") to match f and g, got ", h.sym_sizes());
  const auto Cv = h.sym_size(1);
  if (x.has_value()) {
    check_rank3(*x, "x", "(B, Cv, Nq)");
    TORCH_CHECK_VALUE(x->sym_size(0) == B && x->sym_size(1) == Cv && x->sym_size(2) == Nq,
                      "self_attn: x must have shape (B, Cv, Nq) = (", B, ", ", Cv, ", ", Nq,
                      ") to match f and h, got ", x->sym_sizes());
  }
  TORCH_CHECK_VALUE(gamma.sym_numel() == 1,
                    "self_attn: gamma must have exactly one element (a scalar, shape () or (1,)), got shape ",
                    gamma.sym_sizes());
  TORCH_CHECK_VALUE(std::isfinite(scale), "self_attn: scale must be finite, got ", scale);
  // Checked in the precision it is used in: 1e39 is finite here but inf in float32.
  const double max_scale = self_attn_max_scale(f.scalar_type());
  TORCH_CHECK_VALUE(std::abs(scale) <= max_scale, "self_attn: scale must satisfy |scale| <= ",
                    max_scale, " for ", f.scalar_type(), " inputs (the kernels compute in ",
                    self_attn_accum_type(f.scalar_type()),
                    " and fold log2(e) into scale), got ", scale);
  check_not_empty(f, "f");
  check_not_empty(g, "g");
  check_not_empty(h, "h");
}

void check_self_attn_backward_args(const at::Tensor& grad_y, const at::Tensor& f,
                                   const at::Tensor& g, const at::Tensor& h, const at::Tensor& o,
                                   const at::Tensor& lse, const at::Tensor& gamma, double scale) {
  check_self_attn_args(f, g, h, std::nullopt, gamma, scale);
  check_same_dtype_device(f, grad_y, "grad_y", "self_attn_backward");
  check_same_dtype_device(f, o, "o", "self_attn_backward");
  const auto B = f.sym_size(0), Nq = f.sym_size(2), Cv = h.sym_size(1);
  TORCH_CHECK_VALUE(grad_y.dim() == 3 && grad_y.sym_size(0) == B && grad_y.sym_size(1) == Cv &&
                        grad_y.sym_size(2) == Nq,
                    "self_attn_backward: grad_y must have shape (B, Cv, Nq) = (", B, ", ", Cv, ", ",
                    Nq, "), got ", grad_y.sym_sizes());
  TORCH_CHECK_VALUE(o.dim() == 3 && o.sym_size(0) == B && o.sym_size(1) == Cv && o.sym_size(2) == Nq,
                    "self_attn_backward: o must have shape (B, Cv, Nq) = (", B, ", ", Cv, ", ", Nq,
                    "), got ", o.sym_sizes());
  TORCH_CHECK_VALUE(lse.dim() == 2 && lse.sym_size(0) == B && lse.sym_size(1) == Nq,
                    "self_attn_backward: lse must have shape (B, Nq) = (", B, ", ", Nq, "), got ",
                    lse.sym_sizes());
  TORCH_CHECK_TYPE(lse.scalar_type() == kSelfAttnLseDtype, "self_attn_backward: lse must have dtype ",
                   kSelfAttnLseDtype, " (float64), got ", lse.scalar_type());
  TORCH_CHECK(lse.device() == f.device(), "self_attn_backward: lse must be on device ", f.device(),
              ", got ", lse.device());
}

void check_self_attn_double_backward_args(const at::Tensor& uf, const at::Tensor& ug,
                                          const at::Tensor& uh, const at::Tensor& ugamma,
                                          const at::Tensor& grad_y, const at::Tensor& f,
                                          const at::Tensor& g, const at::Tensor& h, const at::Tensor& o,
                                          const at::Tensor& lse, const at::Tensor& gamma, double scale) {
  check_self_attn_backward_args(grad_y, f, g, h, o, lse, gamma, scale);
  const char* op = "self_attn_double_backward";
  const std::pair<const at::Tensor*, const at::Tensor*> pairs[] = {{&uf, &f}, {&ug, &g}, {&uh, &h}, {&ugamma, &gamma}};
  const char* names[] = {"grad_grad_f", "grad_grad_g", "grad_grad_h", "grad_grad_gamma"};
  const char* like[] = {"f", "g", "h", "gamma"};
  for (int k = 0; k < 4; ++k) {
    const at::Tensor& u = *pairs[k].first;
    const at::Tensor& t = *pairs[k].second;
    check_dense(u, names[k]);
    check_same_dtype_device(f, u, names[k], op);
    TORCH_CHECK_VALUE(u.sym_sizes() == t.sym_sizes(), op, ": ", names[k], " must have the shape of ",
                      like[k], " ", t.sym_sizes(), ", got ", u.sym_sizes());
  }
}

}  // namespace sagan
