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

// Strides are in elements. The last (N) dimension of every tensor is contiguous (stride 1);
// the glue makes a copy only when an input's N stride is not 1.
struct SelfAttnFwdParams {
  int64_t B = 0, Cqk = 0, Cv = 0, Nq = 0, Nk = 0;
  const void* f = nullptr;  int64_t f_sb = 0, f_sc = 0;
  const void* g = nullptr;  int64_t g_sb = 0, g_sc = 0;
  const void* h = nullptr;  int64_t h_sb = 0, h_sc = 0;
  const void* x = nullptr;  int64_t x_sb = 0, x_sc = 0;  // x may be null (no residual)
  void* y = nullptr;        // (B, Cv, Nq) contiguous
  void* o = nullptr;        // (B, Cv, Nq) contiguous: attention output before gamma
  double* lse = nullptr;    // (B, Nq) contiguous: log-sum-exp of the scaled logits, in float64 (see
                            // self_attn_cpu_kernel.h: float32 would lose ulp(lse) ~ 1e-4 at lse ~ 2e3)
  double gamma = 0.0;
  double scale = 1.0;
};

struct SelfAttnBwdParams {
  int64_t B = 0, Cqk = 0, Cv = 0, Nq = 0, Nk = 0;
  const void* dy = nullptr; int64_t dy_sb = 0, dy_sc = 0;
  const void* f = nullptr;  int64_t f_sb = 0, f_sc = 0;
  const void* g = nullptr;  int64_t g_sb = 0, g_sc = 0;
  const void* h = nullptr;  int64_t h_sb = 0, h_sc = 0;
  const void* o = nullptr;  int64_t o_sb = 0, o_sc = 0;
  const double* lse = nullptr;  // (B, Nq) contiguous, float64
  void* df = nullptr;       // (B, Cqk, Nq) contiguous
  void* dg = nullptr;       // (B, Cqk, Nk) contiguous
  void* dh = nullptr;       // (B, Cv, Nk) contiguous
  double* dgamma = nullptr; // one value
  double gamma = 0.0;
  double scale = 1.0;
};

}  // namespace sagan::kernels
