// Tensors -> the kernels' params struct (kernels/self_attn_params.h), shared by the CPU and CUDA glue.
#pragma once

#include <ATen/core/Tensor.h>

#include "kernels/self_attn_params.h"

namespace sagan {

// The kernels need the N (last) dimension contiguous; batch and channel strides are passed through.
inline at::Tensor n_contiguous(const at::Tensor& t) {
  return (t.size(2) > 1 && t.stride(2) != 1) ? t.contiguous() : t;
}

// Sizes, inputs (x may be undefined: no residual) and outputs of the forward; gamma is left to the
// backend (the CPU reads it on the host, CUDA kernels on the device).
inline kernels::SelfAttnFwdParams fwd_params(const at::Tensor& f, const at::Tensor& g, const at::Tensor& h,
                                             const at::Tensor& x, at::Tensor& y, at::Tensor& o,
                                             at::Tensor& lse, double scale) {
  kernels::SelfAttnFwdParams p;
  p.B = f.size(0); p.Cqk = f.size(1); p.Nq = f.size(2); p.Nk = g.size(2); p.Cv = h.size(1);
  p.f = f.const_data_ptr(); p.f_sb = f.stride(0); p.f_sc = f.stride(1);
  p.g = g.const_data_ptr(); p.g_sb = g.stride(0); p.g_sc = g.stride(1);
  p.h = h.const_data_ptr(); p.h_sb = h.stride(0); p.h_sc = h.stride(1);
  if (x.defined()) {
    p.x = x.const_data_ptr(); p.x_sb = x.stride(0); p.x_sc = x.stride(1);
  }
  p.y = y.mutable_data_ptr(); p.o = o.mutable_data_ptr(); p.lse = lse.mutable_data_ptr<double>();
  p.scale = scale;
  return p;
}

// Sizes, inputs and outputs of the backward; o, gamma and dgamma are left to the backend.
inline kernels::SelfAttnBwdParams bwd_params(const at::Tensor& dy, const at::Tensor& f, const at::Tensor& g,
                                             const at::Tensor& h, const at::Tensor& lse, at::Tensor& df,
                                             at::Tensor& dg, at::Tensor& dh, double scale) {
  kernels::SelfAttnBwdParams p;
  p.B = f.size(0); p.Cqk = f.size(1); p.Nq = f.size(2); p.Nk = g.size(2); p.Cv = h.size(1);
  p.dy = dy.const_data_ptr(); p.dy_sb = dy.stride(0); p.dy_sc = dy.stride(1);
  p.f = f.const_data_ptr(); p.f_sb = f.stride(0); p.f_sc = f.stride(1);
  p.g = g.const_data_ptr(); p.g_sb = g.stride(0); p.g_sc = g.stride(1);
  p.h = h.const_data_ptr(); p.h_sb = h.stride(0); p.h_sc = h.stride(1);
  p.lse = lse.const_data_ptr<double>();
  p.df = df.mutable_data_ptr(); p.dg = dg.mutable_data_ptr(); p.dh = dh.mutable_data_ptr();
  p.scale = scale;
  return p;
}

}  // namespace sagan
