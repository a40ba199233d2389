// The sagan op library: schemas only. Kernels register per backend in cpu/, cuda/, self_attn_meta.cpp;
// autograd in autograd/.
//
// sagan::self_attn(f, g, h, x, gamma, scale) -> y, the SAGAN self-attention block after its 1x1 convs:
//   f: (B, Cqk, Nq) queries  (the paper's f(x)),   g: (B, Cqk, Nk) keys (g(x)),
//   h: (B, Cv, Nk) values    (h(x)),               x: (B, Cv, Nq) residual or None,
//   gamma: one element,      y: (B, Cv, Nq),
//   y[b,:,i] = gamma * sum_j softmax_j(scale * sum_c f[b,c,i] g[b,c,j]) h[b,:,j]  (+ x[b,:,i]).
// With scale = 1 this is the bmm-based module of the SAGAN notebook (its attention map is beta^T).
#include <torch/library.h>

#include <optional>

#include "csrc/op_registration.h"

namespace sagan {

const std::vector<const char*>& op_schemas() {
  static const std::vector<const char*> schemas = {
      "self_attn(Tensor f, Tensor g, Tensor h, Tensor? x, Tensor gamma, float scale=1.0) -> Tensor",
      // Forward kernel: y, the attention output o before gamma, and the row log-sum-exp of the scaled
      // logits (float64, for any input dtype): what the fused backward needs instead of the map.
      "self_attn_fwd(Tensor f, Tensor g, Tensor h, Tensor? x, Tensor gamma, float scale=1.0) "
      "-> (Tensor y, Tensor o, Tensor lse)",
      // output_mask: which of grad_f, grad_g, grad_h to compute (autograd passes which inputs need a
      // gradient); one not asked for is returned undefined (None) and costs nothing. grad_gamma is
      // always computed (O(B Cv Nq)).
      "self_attn_backward(Tensor grad_y, Tensor f, Tensor g, Tensor h, Tensor o, Tensor lse, "
      "Tensor gamma, float scale, bool[3] output_mask=[True, True, True]) "
      "-> (Tensor grad_f, Tensor grad_g, Tensor grad_h, Tensor grad_gamma)",
      // The backward's VJP (double backward, for gradient penalties): against cotangents of its
      // outputs (grad_grad_f, grad_grad_g, grad_grad_h of the shapes of f, g, h; grad_grad_gamma of
      // gamma's), the gradients with respect to (grad_y, f, g, h, gamma); o and lse are the forward's,
      // and every path through them is included. Fused on the CPU (O(N) memory); CUDA runs the
      // composite reference.
      "self_attn_double_backward(Tensor grad_grad_f, Tensor grad_grad_g, Tensor grad_grad_h, "
      "Tensor grad_grad_gamma, Tensor grad_y, Tensor f, Tensor g, Tensor h, Tensor o, Tensor lse, "
      "Tensor gamma, float scale) -> (Tensor grad_grad_y, Tensor grad_f, Tensor grad_g, Tensor grad_h, "
      "Tensor grad_gamma)",
  };
  return schemas;
}

}  // namespace sagan

namespace {

// TORCH_LIBRARY(sagan, m) spelled out, because only the copy of the library that registers the ops may
// claim the namespace (csrc/op_registration.h): the macro's static object would claim it in every copy.
std::optional<torch::Library> define_sagan_library() {
  std::optional<torch::Library> m;
  if (!sagan::registers_ops()) return m;
  m.emplace(torch::Library::DEF, "sagan", std::nullopt, __FILE__, __LINE__);
  for (const char* schema : sagan::op_schemas()) m->def(schema);
  return m;
}

// Lives as long as the library is loaded, as TORCH_LIBRARY's static object does.
const std::optional<torch::Library> sagan_library = define_sagan_library();

}  // namespace
