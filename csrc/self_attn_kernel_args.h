// Tensors -> the kernels' params struct (kernels/self_attn_params.h), shared by the CPU and CUDA glue.
#pragma once

#include <ATen/core/Tensor.h>

#include "kernels/self_attn_params.h"

namespace sagan {

// The kernels need the N (last) dimension contiguous; batch and channel strides are passed through.
inline at::Tensor n_contiguous(const at::Tensor& t) {
  return (t.size(2) > 1 && t.stride(2) != 1) ? t.contiguous() : t;
}

// t in the kernels' layout and in the dtype they read (a no-op where t already is).
inline at::Tensor to_kernel_layout(const at::Tensor& t, at::ScalarType dtype) {
  return n_contiguous(t.to(dtype));
}

// The params of a forward launch, complete: sizes, inputs (x may be undefined: no residual), gamma (one
// element, storage dtype, on the kernels' device) and the outputs.
inline kernels::SelfAttnFwdParams fwd_params(const at::Tensor& f, const at::Tensor& g, const at::Tensor& h,
                                             const at::Tensor& x, const at::Tensor& gamma, at::Tensor& y,
                                             at::Tensor& o, at::Tensor& lse, double scale) {
  kernels::SelfAttnFwdParams p;
  p.B = f.size(0); p.Cqk = f.size(1); p.Nq = f.size(2); p.Nk = g.size(2); p.Cv = h.size(1);
  p.f = f.const_data_ptr(); p.f_sb = f.stride(0); p.f_sc = f.stride(1);
  p.g = g.const_data_ptr(); p.g_sb = g.stride(0); p.g_sc = g.stride(1);
  p.h = h.const_data_ptr(); p.h_sb = h.stride(0); p.h_sc = h.stride(1);
  if (x.defined()) {
    p.x = x.const_data_ptr(); p.x_sb = x.stride(0); p.x_sc = x.stride(1);
  }
  p.gamma = gamma.const_data_ptr();
  p.y = y.mutable_data_ptr(); p.o = o.mutable_data_ptr(); p.lse = lse.mutable_data_ptr<double>();
  p.scale = scale;
  return p;
}

// The backward's inputs, which the double backward reads too: dy, f, g, h, o N-contiguous, lse (B, Nq)
// float64 contiguous, gamma one element; all but lse in the dtype the kernels read.
struct BackwardInputs {
  at::Tensor dy, f, g, h, o, lse, gamma;
};

// The inputs in that layout, converted to `dtype`: f's own dtype (nothing copied) for the CUDA kernels
// and the CPU forward and backward but for float16; float32 for CPU float16 and the CPU double backward's
// bf16 and fp16.
inline BackwardInputs backward_inputs(const at::Tensor& dy, const at::Tensor& f, const at::Tensor& g,
                                      const at::Tensor& h, const at::Tensor& o, const at::Tensor& lse,
                                      const at::Tensor& gamma, at::ScalarType dtype) {
  return {to_kernel_layout(dy, dtype), to_kernel_layout(f, dtype), to_kernel_layout(g, dtype),
          to_kernel_layout(h, dtype), to_kernel_layout(o, dtype), lse.contiguous(),
          gamma.to(dtype).contiguous()};
}

// Sizes and the backward's inputs into a backward or double-backward params struct (the fields they
// share, under the same names).
template <typename Params>
void set_backward_inputs(Params& p, const BackwardInputs& in) {
  p.B = in.f.size(0); p.Cqk = in.f.size(1); p.Nq = in.f.size(2); p.Nk = in.g.size(2); p.Cv = in.h.size(1);
  p.dy = in.dy.const_data_ptr(); p.dy_sb = in.dy.stride(0); p.dy_sc = in.dy.stride(1);
  p.f = in.f.const_data_ptr(); p.f_sb = in.f.stride(0); p.f_sc = in.f.stride(1);
  p.g = in.g.const_data_ptr(); p.g_sb = in.g.stride(0); p.g_sc = in.g.stride(1);
  p.h = in.h.const_data_ptr(); p.h_sb = in.h.stride(0); p.h_sc = in.h.stride(1);
  p.o = in.o.const_data_ptr(); p.o_sb = in.o.stride(0); p.o_sc = in.o.stride(1);
  p.lse = in.lse.const_data_ptr<double>();
  p.gamma = in.gamma.const_data_ptr();
}

// The tensors of a backward launch. An undefined df, dg or dh is not wanted; df_accum is the CUDA
// kernels' optional atomic buffer (see kernels/self_attn_params.h).
struct BackwardTensors {
  BackwardInputs in;
  at::Tensor delta, df, dg, dh;  // row statistic and outputs
  at::Tensor df_accum;
};

// The params of a backward launch, complete but for dgamma (one float64: a host scalar on the CPU, a
// device tensor on CUDA).
inline kernels::SelfAttnBackwardParams backward_params(const BackwardTensors& t, double scale, bool deterministic) {
  kernels::SelfAttnBackwardParams p;
  set_backward_inputs(p, t.in);
  p.delta = t.delta.mutable_data_ptr();
  p.want_df = t.df.defined(); p.want_dg = t.dg.defined(); p.want_dh = t.dh.defined();
  p.df = p.want_df ? t.df.mutable_data_ptr() : nullptr;
  p.dg = p.want_dg ? t.dg.mutable_data_ptr() : nullptr;
  p.dh = p.want_dh ? t.dh.mutable_data_ptr() : nullptr;
  p.df_accum = t.df_accum.defined() ? t.df_accum.mutable_data_ptr() : nullptr;
  p.deterministic = deterministic;
  p.scale = scale;
  return p;
}

// The tensors of a double-backward launch: the backward's inputs, the cotangents uf, ug, uh
// (contiguous) and ugamma (one element), in the compute dtype on the kernels' device, the row
// statistics (4, B, Nq) and the outputs (contiguous).
struct DoubleBackwardTensors {
  BackwardInputs in;
  at::Tensor uf, ug, uh, ugamma;   // cotangents of df, dg, dh, dgamma
  at::Tensor rowstats;             // D, R, P, Q
  at::Tensor d_dy, d_f, d_g, d_h;  // outputs
};

// The params of a double-backward launch, complete but for d_gamma (one float64: a host scalar on the
// CPU, a device tensor on CUDA).
inline kernels::SelfAttnDoubleBackwardParams double_backward_params(const DoubleBackwardTensors& t, double scale) {
  kernels::SelfAttnDoubleBackwardParams p;
  set_backward_inputs(p, t.in);
  p.uf = t.uf.const_data_ptr(); p.ug = t.ug.const_data_ptr(); p.uh = t.uh.const_data_ptr();
  p.ugamma = t.ugamma.const_data_ptr();
  p.rowstats = t.rowstats.mutable_data_ptr();
  p.d_dy = t.d_dy.mutable_data_ptr(); p.d_f = t.d_f.mutable_data_ptr();
  p.d_g = t.d_g.mutable_data_ptr(); p.d_h = t.d_h.mutable_data_ptr();
  p.scale = scale;
  return p;
}

}  // namespace sagan
