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

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> self_attn_double_backward(
    const at::Tensor& uf, const at::Tensor& ug, const at::Tensor& uh, const at::Tensor& ugamma,
    const at::Tensor& grad_y, const at::Tensor& f, const at::Tensor& g, const at::Tensor& h,
    const at::Tensor& gamma, double scale) {
  const at::Tensor G = gamma.reshape({}), uG = ugamma.reshape({});
  const at::Tensor p = attention_map(f, g, scale);                       // (B, Nq, Nk)
  const at::Tensor o = at::bmm(h, p.transpose(1, 2));                    // (B, Cv, Nq)
  const at::Tensor D = (grad_y * o).sum(1).unsqueeze(-1);                // (B, Nq, 1)
  const at::Tensor dp = at::bmm(grad_y.transpose(1, 2), h);              // (B, Nq, Nk)
  const at::Tensor ds = p * (dp - D);
  const at::Tensor Bm = (at::bmm(uf.transpose(1, 2), g) + at::bmm(f.transpose(1, 2), ug)) * scale;
  const at::Tensor E = at::bmm(grad_y.transpose(1, 2), uh);
  const at::Tensor pB = p * Bm;
  const at::Tensor R = pB.sum(-1, /*keepdim=*/true), P = (pB * dp).sum(-1, true), Q = (p * E).sum(-1, true);
  const at::Tensor a = uG - G * R;                                        // (B, Nq, 1)
  const at::Tensor Gp = G * (dp - D) * Bm + G * E + a * dp;
  const at::Tensor c = G * (P + Q - 2 * D * R) + uG * D;
  const at::Tensor Gs = p * (Gp - c);
  const at::Tensor d_f = (at::bmm(ug, (G * ds).transpose(1, 2)) + at::bmm(g, Gs.transpose(1, 2))) * scale;
  const at::Tensor d_g = (at::bmm(uf, G * ds) + at::bmm(f, Gs)) * scale;
  const at::Tensor d_h = at::bmm(grad_y, p * (G * Bm + a));
  const at::Tensor d_dy = at::bmm(h, (G * pB).transpose(1, 2)) + at::bmm(uh, (G * p).transpose(1, 2)) +
                          a.transpose(1, 2) * o;
  const at::Tensor d_gamma = (P - D * R + Q).sum().reshape(gamma.sizes());
  return {d_dy, d_f, d_g, d_h, d_gamma};
}

}  // namespace sagan::reference
