#include "csrc/reference/self_attn_reference.h"

#include <ATen/ATen.h>

namespace sagan::reference {
namespace {

// beta = softmax_j(scale f^T g), (B, Nq, Nk).
at::Tensor attention_map(const at::Tensor& f, const at::Tensor& g, double scale) {
  return at::softmax(at::bmm(f.transpose(1, 2), g) * scale, -1);
}

}  // namespace

std::tuple<at::Tensor, at::Tensor, at::Tensor> self_attn_forward(
    const at::Tensor& f, const at::Tensor& g, const at::Tensor& h,
    const std::optional<at::Tensor>& x, const at::Tensor& gamma, double scale) {
  const at::Tensor s = at::bmm(f.transpose(1, 2), g) * scale;
  const at::Tensor lse = at::logsumexp(s, -1);
  const at::Tensor o = at::bmm(h, at::softmax(s, -1).transpose(1, 2));
  at::Tensor y = gamma.reshape({}) * o;
  if (x.has_value()) y = y + *x;
  return {y, o, lse};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> self_attn_backward(
    const at::Tensor& grad_y, const at::Tensor& f, const at::Tensor& g, const at::Tensor& h,
    const at::Tensor& gamma, double scale) {
  const at::Tensor p = attention_map(f, g, scale);          // (B, Nq, Nk)
  const at::Tensor o = at::bmm(h, p.transpose(1, 2));       // (B, Cv, Nq)
  const at::Tensor grad_gamma = (grad_y * o).sum().reshape(gamma.sizes());
  const at::Tensor grad_o = gamma.reshape({}) * grad_y;     // (B, Cv, Nq)
  const at::Tensor grad_h = at::bmm(grad_o, p);             // (B, Cv, Nk)
  const at::Tensor grad_p = at::bmm(grad_o.transpose(1, 2), h);  // (B, Nq, Nk)
  const at::Tensor grad_s = p * (grad_p - (grad_p * p).sum(-1, /*keepdim=*/true)) * scale;
  const at::Tensor grad_f = at::bmm(g, grad_s.transpose(1, 2));  // (B, Cqk, Nq)
  const at::Tensor grad_g = at::bmm(f, grad_s);                  // (B, Cqk, Nk)
  return {grad_f, grad_g, grad_h, grad_gamma};
}

}  // namespace sagan::reference
