// Parameters of one sagan::self_attn call, as the kernels see them: raw pointers, sizes and strides.
// Free of torch headers so that CPU and CUDA kernels share it and can be compiled and tested alone.
//
// Notation (paper -> here): f(x) -> f (queries, B x Cqk x Nq), g(x) -> g (keys, B x Cqk x Nk),
// h(x) -> h (values, B x Cv x Nk), o -> o (attention output before gamma, B x Cv x Nq),
// y = gamma * o + x.  s_ij = scale * sum_c f[c,i] g[c,j];  p_ij = softmax_j(s_ij);  o[:,i] = sum_j p_ij h[:,j].
#pragma once

#include <cstdint>
#include <functional>

namespace sagan::kernels {

// Runs body(begin, end) over [0, n) in chunks, possibly in parallel. The torch glue passes
// at::parallel_for; the kernels never depend on how the work is scheduled for their results.
using ParallelFor =
    std::function<void(int64_t n, const std::function<void(int64_t begin, int64_t end)>& body)>;

// The whole contract of one kernel launch, for every backend (CPU, CUDA SIMT, CUDA tensor cores): every
// pointer a kernel reads or writes, the sizes and strides, the row statistics and accumulators, and the
// flags. The glue (csrc/) only fills it; no backend wraps it or finishes it by hand.
//
// Strides are in elements. The last (N) dimension of every tensor is contiguous (stride 1);
// the glue makes a copy only when an input's N stride is not 1. "Storage dtype" is the dtype of the
// tensors the kernel reads: the input dtype on CUDA, and in the CPU forward and backward but for
// float16, which the CPU glue converts to float32 first, as it does every low-precision input of the
// CPU double backward. "Accumulate dtype" is float64 for float64 inputs, else float32.
// Pointers are host memory for the CPU kernels and device memory for the CUDA kernels.
struct SelfAttnFwdParams {
  int64_t B = 0, Cqk = 0, Cv = 0, Nq = 0, Nk = 0;
  const void* f = nullptr;  int64_t f_sb = 0, f_sc = 0;
  const void* g = nullptr;  int64_t g_sb = 0, g_sc = 0;
  const void* h = nullptr;  int64_t h_sb = 0, h_sc = 0;
  const void* x = nullptr;  int64_t x_sb = 0, x_sc = 0;  // x may be null (no residual)
  // One element of the storage dtype. The CUDA kernels read it on the device: the host never reads
  // it there, which would synchronise and break CUDA-graph capture.
  const void* gamma = nullptr;
  void* y = nullptr;        // (B, Cv, Nq) contiguous
  void* o = nullptr;        // (B, Cv, Nq) contiguous: attention output before gamma
  double* lse = nullptr;    // (B, Nq) contiguous: log-sum-exp of the scaled logits, in float64 (see
                            // self_attn_cpu_kernel.h: float32 would lose ulp(lse) ~ 1e-4 at lse ~ 2e3)
  double scale = 1.0;
};

// Backward:
//   delta_i = sum_c dy[c,i] o[c,i],  dgamma = sum_i delta_i
//   dh[:,j] = gamma sum_i dy[:,i] p_ij,  ds_ij = p_ij (sum_c dy[c,i] h[c,j] - delta_i)
//   df[:,i] = gamma scale sum_j ds_ij g[:,j],  dg[:,j] = gamma scale sum_i ds_ij f[:,i]
struct SelfAttnBackwardParams {
  int64_t B = 0, Cqk = 0, Cv = 0, Nq = 0, Nk = 0;
  const void* dy = nullptr; int64_t dy_sb = 0, dy_sc = 0;
  const void* f = nullptr;  int64_t f_sb = 0, f_sc = 0;
  const void* g = nullptr;  int64_t g_sb = 0, g_sc = 0;
  const void* h = nullptr;  int64_t h_sb = 0, h_sc = 0;
  const void* o = nullptr;  int64_t o_sb = 0, o_sc = 0;
  const double* lse = nullptr;  // (B, Nq) contiguous, float64
  const void* gamma = nullptr;  // one element of the storage dtype (see SelfAttnFwdParams::gamma)
  // Row statistic (B, Nq) contiguous, accumulate dtype: delta_i above, written by the backward's
  // first pass (CPU kernel; CUDA: kernels/cuda/self_attn_backward_rowstats.cuh) and read by the others.
  void* delta = nullptr;
  double* dgamma = nullptr;     // one float64 value, written by the backward (host or device memory)
  void* df = nullptr;       // (B, Cqk, Nq) contiguous, storage dtype
  void* dg = nullptr;       // (B, Cqk, Nk) contiguous, storage dtype
  void* dh = nullptr;       // (B, Cv, Nk) contiguous, storage dtype
  // Which of df, dg, dh are wanted: an unwanted one is neither computed nor written (its pointer may
  // be null). delta and dgamma are always computed (O(B Cv Nq)).
  bool want_df = true, want_dg = true, want_dh = true;
  // CUDA only. deterministic == false and df_accum != nullptr: the dg kernels atomically add
  // sum_j ds_ij g[c, j] (no gamma, no scale) into df_accum, a zeroed (B, Cqk, Nq) contiguous buffer of
  // the accumulate dtype, and a last kernel writes df = gamma * scale * df_accum. Otherwise a separate
  // kernel sums each df element in a fixed order (bit-identical run to run).
  void* df_accum = nullptr;
  bool deterministic = false;
  double scale = 1.0;
};

// Double backward: the VJP of the backward's outputs (df, dg, dh, dgamma) against cotangents
// (uf, ug, uh, ugamma), with respect to its inputs (dy, f, g, h, gamma); o and lse are the forward's,
// functions of f, g, h, and every path through them is included. The math and its derivation are at
// the top of kernels/cpu/self_attn_cpu_double_backward_kernel.h.
struct SelfAttnDoubleBackwardParams {
  int64_t B = 0, Cqk = 0, Cv = 0, Nq = 0, Nk = 0;
  const void* dy = nullptr; int64_t dy_sb = 0, dy_sc = 0;
  const void* f = nullptr;  int64_t f_sb = 0, f_sc = 0;
  const void* g = nullptr;  int64_t g_sb = 0, g_sc = 0;
  const void* h = nullptr;  int64_t h_sb = 0, h_sc = 0;
  const void* o = nullptr;  int64_t o_sb = 0, o_sc = 0;
  const double* lse = nullptr;  // (B, Nq) contiguous, float64
  const void* gamma = nullptr;  // one element of the storage dtype
  // Cotangents, contiguous, storage dtype: uf (B, Cqk, Nq), ug (B, Cqk, Nk), uh (B, Cv, Nk).
  const void* uf = nullptr;
  const void* ug = nullptr;
  const void* uh = nullptr;
  // The cotangent of dgamma: one element of the storage dtype, read by the kernels (on the device for
  // CUDA, as gamma), so the host never reads it.
  const void* ugamma = nullptr;
  // Row statistics (B, Nq) contiguous, accumulate dtype, written by the first pass: D, R, P, Q.
  void* rowstats = nullptr;     // 4 x (B, Nq)
  // Outputs, contiguous, storage dtype: d_dy (B, Cv, Nq), d_f (B, Cqk, Nq), d_g (B, Cqk, Nk),
  // d_h (B, Cv, Nk); d_gamma one float64.
  void* d_dy = nullptr;
  void* d_f = nullptr;
  void* d_g = nullptr;
  void* d_h = nullptr;
  double* d_gamma = nullptr;
  double scale = 1.0;
};

}  // namespace sagan::kernels
