// What the host emulation tests of the SIMT kernels share (simt_host_emulation_test.cpp,
// simt_double_backward_emulation_test.cpp): strided random inputs, the float64 reference of the forward and
// backward, relative errors, and a runner of the launchers' plans over emu::run_block. Include after
// simt_host_emulation.h and the kernel and plan headers. Test-only.
#pragma once
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <random>
#include <vector>

template <typename T> double to_d(T v) { return static_cast<double>(v); }
template <> double to_d(__half v) { return __half2float(v); }
template <> double to_d(__nv_bfloat16 v) { return __bfloat162float(v); }
template <typename T> T from_d(double v) { return static_cast<T>(v); }
template <> __half from_d(double v) { return __float2half((float)v); }
template <> __nv_bfloat16 from_d(double v) { return __float2bfloat16((float)v); }

struct Shape { int64_t B, Cqk, Cv, Nq, Nk; };

// A strided channel-first tensor (B, C, N) with padding in the batch and channel strides.
template <typename T>
struct Strided {
  int64_t B, C, N, sb, sc;
  std::vector<T> data;
  Strided(int64_t B_, int64_t C_, int64_t N_, std::mt19937& rng, double amp, int pad_c = 3, int pad_b = 5)
      : B(B_), C(C_), N(N_) {
    sc = N + pad_c;
    sb = C * sc + pad_b;
    data.assign(std::max<int64_t>(1, B * sb), from_d<T>(std::nan("")));  // padding is NaN: must never be read
    std::uniform_real_distribution<double> u(-amp, amp);
    for (int64_t b = 0; b < B; ++b)
      for (int64_t c = 0; c < C; ++c)
        for (int64_t n = 0; n < N; ++n) data[b * sb + c * sc + n] = from_d<T>(u(rng));
  }
  double at(int64_t b, int64_t c, int64_t n) const { return to_d(data[b * sb + c * sc + n]); }
};

// p_ij = softmax_j(scale f_i . g_j) of batch b (*P: Nq x Nk, row-major) and lse_i (lse_b[i]), in float64.
template <typename T>
void reference_probs(const Shape& s, const Strided<T>& f, const Strided<T>& g, int64_t b, double scale,
                     std::vector<double>* P_out, double* lse_b) {
  std::vector<double>& P = *P_out;
  P.assign(s.Nq * s.Nk, 0.0);
  for (int64_t i = 0; i < s.Nq; ++i) {
    double mx = -INFINITY;
    for (int64_t j = 0; j < s.Nk; ++j) {
      double a = 0; for (int64_t c = 0; c < s.Cqk; ++c) a += f.at(b, c, i) * g.at(b, c, j);
      P[i * s.Nk + j] = a * scale; mx = std::max(mx, a * scale);
    }
    double sum = 0; for (int64_t j = 0; j < s.Nk; ++j) sum += std::exp(P[i * s.Nk + j] - mx);
    lse_b[i] = mx + std::log(sum);
    for (int64_t j = 0; j < s.Nk; ++j) P[i * s.Nk + j] = std::exp(P[i * s.Nk + j] - lse_b[i]);
  }
}

struct Ref {
  std::vector<double> o, y, lse, dh, dg, df, delta;
};

template <typename T>
Ref reference(const Shape& s, const Strided<T>& f, const Strided<T>& g, const Strided<T>& h, const Strided<T>* x,
              const Strided<T>& dy, double gamma, double scale) {
  Ref r;
  r.o.assign(s.B * s.Cv * s.Nq, 0); r.y = r.o; r.lse.assign(s.B * s.Nq, 0);
  r.dh.assign(s.B * s.Cv * s.Nk, 0); r.dg.assign(s.B * s.Cqk * s.Nk, 0); r.df.assign(s.B * s.Cqk * s.Nq, 0);
  r.delta.assign(s.B * s.Nq, 0);
  for (int64_t b = 0; b < s.B; ++b) {
    std::vector<double> P;
    reference_probs(s, f, g, b, scale, &P, r.lse.data() + b * s.Nq);
    for (int64_t c = 0; c < s.Cv; ++c)
      for (int64_t i = 0; i < s.Nq; ++i) {
        double a = 0; for (int64_t j = 0; j < s.Nk; ++j) a += P[i * s.Nk + j] * h.at(b, c, j);
        r.o[(b * s.Cv + c) * s.Nq + i] = a;
        r.y[(b * s.Cv + c) * s.Nq + i] = gamma * a + (x ? x->at(b, c, i) : 0.0);
      }
    for (int64_t i = 0; i < s.Nq; ++i) {
      double d = 0; for (int64_t c = 0; c < s.Cv; ++c) d += dy.at(b, c, i) * r.o[(b * s.Cv + c) * s.Nq + i];
      r.delta[b * s.Nq + i] = d;
    }
    std::vector<double> DS(s.Nq * s.Nk);
    for (int64_t i = 0; i < s.Nq; ++i)
      for (int64_t j = 0; j < s.Nk; ++j) {
        double dp = 0; for (int64_t c = 0; c < s.Cv; ++c) dp += dy.at(b, c, i) * h.at(b, c, j);
        DS[i * s.Nk + j] = P[i * s.Nk + j] * (dp - r.delta[b * s.Nq + i]);
      }
    for (int64_t c = 0; c < s.Cv; ++c)
      for (int64_t j = 0; j < s.Nk; ++j) {
        double a = 0; for (int64_t i = 0; i < s.Nq; ++i) a += P[i * s.Nk + j] * dy.at(b, c, i);
        r.dh[(b * s.Cv + c) * s.Nk + j] = gamma * a;
      }
    for (int64_t c = 0; c < s.Cqk; ++c) {
      for (int64_t j = 0; j < s.Nk; ++j) {
        double a = 0; for (int64_t i = 0; i < s.Nq; ++i) a += DS[i * s.Nk + j] * f.at(b, c, i);
        r.dg[(b * s.Cqk + c) * s.Nk + j] = gamma * scale * a;
      }
      for (int64_t i = 0; i < s.Nq; ++i) {
        double a = 0; for (int64_t j = 0; j < s.Nk; ++j) a += DS[i * s.Nk + j] * g.at(b, c, j);
        r.df[(b * s.Cqk + c) * s.Nq + i] = gamma * scale * a;
      }
    }
  }
  return r;
}

template <typename V>
double rel_err(const std::vector<V>& got, const std::vector<double>& ref, const char* what, bool* nan_seen) {
  double mx = 0, e = 0;
  for (size_t i = 0; i < ref.size(); ++i) mx = std::max(mx, std::abs(ref[i]));
  for (size_t i = 0; i < ref.size(); ++i) {
    double gv = to_d(got[i]);
    if (!std::isfinite(gv)) { *nan_seen = true; fprintf(stderr, "  %s[%zu] = %g (ref %g)\n", what, i, gv, ref[i]); return INFINITY; }
    e = std::max(e, std::abs(gv - ref[i]));
  }
  return e / (mx + 1e-300);
}

// Runs a launch plan as its launcher launches it (kernels/cuda/self_attn_launch_plan.h): every block
// of its grid (y, z possibly capped below what the problem needs: the kernels loop), its threads, its
// shared memory; nothing when the plan does not launch. body(tid, smem, bx, by, bz) is one thread.
template <typename F>
void run_plan(const sagan::kernels::cuda::LaunchPlan& pl, unsigned seed, F body) {
  if (!pl.fits) {
    fprintf(stderr, "test setup: a launch plan's grid does not fit (%lld, %lld, %lld)\n", (long long)pl.grid_x,
            (long long)pl.grid_y, (long long)pl.grid_z);
    std::abort();
  }
  if (!pl.launch) return;
  for (int64_t bz = 0; bz < pl.grid_z; ++bz)
    for (int64_t by = 0; by < pl.grid_y; ++by)
      for (int64_t bx = 0; bx < pl.grid_x; ++bx)
        emu::run_block(pl.threads, seed + (unsigned)(bx * 7919 + by * 104729 + bz * 1299709), pl.smem_bytes,
                       [&](int tid, void* sm) { body(tid, sm, bx, by, bz); });
}
