// Meta (shape-only) kernels of the sagan ops: what torch.compile / FakeTensor and torch.library.opcheck
// trace through. Symbolic sizes throughout, so dynamic shapes work without recompiling.
#include <ATen/ATen.h>
#include <torch/library.h>

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
    const at::Tensor& o, const at::Tensor& lse, const at::Tensor& gamma, double scale) {
  check_self_attn_backward_args(grad_y, f, g, h, o, lse, gamma, scale);
  return {at::empty_symint(f.sym_sizes(), f.options()), at::empty_symint(g.sym_sizes(), g.options()),
          at::empty_symint(h.sym_sizes(), h.options()),
          at::empty_symint(gamma.sym_sizes(), gamma.options())};
}

}  // namespace

TORCH_LIBRARY_IMPL(sagan, Meta, m) {
  m.impl("self_attn_fwd", &self_attn_fwd_meta);
  m.impl("self_attn_backward", &self_attn_backward_meta);
}

}  // namespace sagan
