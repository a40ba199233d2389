// Meta (shape-only) kernels of the sagan ops: what torch.compile / FakeTensor and torch.library.opcheck
// trace through. Symbolic sizes throughout, so dynamic shapes work without recompiling.
#include <ATen/ATen.h>
#include <torch/library.h>

#include "csrc/op_registration.h"
#include "csrc/self_attn_check.h"

namespace sagan {
namespace {

std::tuple<at::Tensor, at::Tensor, at::Tensor> self_attn_fwd_meta(
    const at::Tensor& f, const at::Tensor& g, const at::Tensor& h,
    const std::optional<at::Tensor>& x, const at::Tensor& gamma, double scale) {
  check_self_attn_args(f, g, h, x, gamma, scale);
  const auto B = f.sym_size(0), Nq = f.sym_size(2), Cv = h.sym_size(1);
  auto y = at::empty_symint({B, Cv, Nq}, f.options());
  auto o = at::empty_symint({B, Cv, Nq}, f.options());
  auto lse = at::empty_symint({B, Nq}, f.options().dtype(kSelfAttnLseDtype));
  return {y, o, lse};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> self_attn_backward_meta(
    const at::Tensor& grad_y, const at::Tensor& f, const at::Tensor& g, const at::Tensor& h,
    const at::Tensor& o, const at::Tensor& lse, const at::Tensor& gamma, double scale,
    std::array<bool, 3> output_mask) {
  check_self_attn_backward_args(grad_y, f, g, h, o, lse, gamma, scale);
  auto like = [](bool wanted, const at::Tensor& t) {
    return wanted ? at::empty_symint(t.sym_sizes(), t.options()) : at::Tensor();
  };
  return {like(output_mask[0], f), like(output_mask[1], g), like(output_mask[2], h),
          at::empty_symint(gamma.sym_sizes(), gamma.options())};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> self_attn_double_backward_meta(
    const at::Tensor& uf, const at::Tensor& ug, const at::Tensor& uh, const at::Tensor& ugamma,
    const at::Tensor& grad_y, const at::Tensor& f, const at::Tensor& g, const at::Tensor& h,
    const at::Tensor& o, const at::Tensor& lse, const at::Tensor& gamma, double scale) {
  check_self_attn_double_backward_args(uf, ug, uh, ugamma, grad_y, f, g, h, o, lse, gamma, scale);
  auto like = [](const at::Tensor& t) { return at::empty_symint(t.sym_sizes(), t.options()); };
  return {like(grad_y), like(f), like(g), like(h), like(gamma)};
}

}  // namespace

TORCH_LIBRARY_IMPL(sagan, Meta, m) {
  if (!sagan::registers_ops()) return;  // a later copy of the library: csrc/op_registration.h
  m.impl("self_attn_fwd", &self_attn_fwd_meta);
  m.impl("self_attn_backward", &self_attn_backward_meta);
  m.impl("self_attn_double_backward", &self_attn_double_backward_meta);
}

}  // namespace sagan
