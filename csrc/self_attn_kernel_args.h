// Tensors -> the kernels' params struct (kernels/self_attn_params.h), shared by the CPU and CUDA glue.
#pragma once

#include <ATen/core/Tensor.h>

#include "kernels/self_attn_params.h"

namespace sagan {

// The kernels need the N (last) dimension contiguous; batch and channel strides are passed through.
inline at::Tensor n_contiguous(const at::Tensor& t) {
  return (t.size(2) > 1 && t.stride(2) != 1) ? t.contiguous() : t;
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

// The tensors of a backward launch. An undefined df, dg or dh is not wanted; df_accum is the CUDA
// kernels' optional atomic buffer (see kernels/self_attn_params.h).
struct BackwardTensors {
  at::Tensor dy, f, g, h, o, lse, gamma;  // inputs
  at::Tensor delta, df, dg, dh;           // row statistic and outputs
  at::Tensor df_accum;
};

// The params of a backward launch, complete but for dgamma (one float64: a host scalar on the CPU, a
// device tensor on CUDA).
inline kernels::SelfAttnBackwardParams backward_params(const BackwardTensors& t, double scale, bool deterministic) {
  kernels::SelfAttnBackwardParams p;
  p.B = t.f.size(0); p.Cqk = t.f.size(1); p.Nq = t.f.size(2); p.Nk = t.g.size(2); p.Cv = t.h.size(1);
  p.dy = t.dy.const_data_ptr(); p.dy_sb = t.dy.stride(0); p.dy_sc = t.dy.stride(1);
  p.f = t.f.const_data_ptr(); p.f_sb = t.f.stride(0); p.f_sc = t.f.stride(1);
  p.g = t.g.const_data_ptr(); p.g_sb = t.g.stride(0); p.g_sc = t.g.stride(1);
  p.h = t.h.const_data_ptr(); p.h_sb = t.h.stride(0); p.h_sc = t.h.stride(1);
  p.o = t.o.const_data_ptr(); p.o_sb = t.o.stride(0); p.o_sc = t.o.stride(1);
  p.lse = t.lse.const_data_ptr<double>();
  p.gamma = t.gamma.const_data_ptr();
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

// The tensors of a double-backward launch: the inputs (dy, f, g, h, o N-contiguous; the cotangents uf,
// ug, uh contiguous; gamma and ugamma one element of the storage dtype each, on the kernels' device),
// the row statistics (4, B, Nq) and the outputs (contiguous).
struct DoubleBackwardTensors {
  at::Tensor dy, f, g, h, o, lse, gamma;  // inputs of the backward
  at::Tensor uf, ug, uh, ugamma;          // cotangents of df, dg, dh, dgamma
  at::Tensor rowstats;                    // D, R, P, Q
  at::Tensor d_dy, d_f, d_g, d_h;         // outputs
};

// The params of a double-backward launch, complete but for d_gamma (one float64: a host scalar on the
// CPU, a device tensor on CUDA).
inline kernels::SelfAttnDoubleBackwardParams double_backward_params(const DoubleBackwardTensors& t, double scale) {
  kernels::SelfAttnDoubleBackwardParams p;
  p.B = t.f.size(0); p.Cqk = t.f.size(1); p.Nq = t.f.size(2); p.Nk = t.g.size(2); p.Cv = t.h.size(1);
  p.dy = t.dy.const_data_ptr(); p.dy_sb = t.dy.stride(0); p.dy_sc = t.dy.stride(1);
  p.f = t.f.const_data_ptr(); p.f_sb = t.f.stride(0); p.f_sc = t.f.stride(1);
  p.g = t.g.const_data_ptr(); p.g_sb = t.g.stride(0); p.g_sc = t.g.stride(1);
  p.h = t.h.const_data_ptr(); p.h_sb = t.h.stride(0); p.h_sc = t.h.stride(1);
  p.o = t.o.const_data_ptr(); p.o_sb = t.o.stride(0); p.o_sc = t.o.stride(1);
  p.lse = t.lse.const_data_ptr<double>();
  p.gamma = t.gamma.const_data_ptr();
  p.uf = t.uf.const_data_ptr(); p.ug = t.ug.const_data_ptr(); p.uh = t.uh.const_data_ptr();
  p.ugamma = t.ugamma.const_data_ptr();
  p.rowstats = t.rowstats.mutable_data_ptr();
  p.d_dy = t.d_dy.mutable_data_ptr(); p.d_f = t.d_f.mutable_data_ptr();
  p.d_g = t.d_g.mutable_data_ptr(); p.d_h = t.d_h.mutable_data_ptr();
  p.scale = scale;
  return p;
}

}  // namespace sagan
