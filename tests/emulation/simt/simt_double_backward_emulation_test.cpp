// Runs the SIMT double backward (kernels/cuda/simt/self_attn_simt_double_backward_kernel.cuh, with D and
// d_gamma of kernels/cuda/self_attn_backward_rowstats.cuh) block by block on the CPU under
// simt_host_emulation.h, against a float64 oracle of its formulas, itself checked once against central
// differences of the float64 reference of the first backward (simt_emulation_reference.h). Cases: N not
// a multiple of any tile, Nk != Nq, Cqk = 1, Cv large (two channel chunks of either tile), grid y / z
// smaller than needed, a leading key tile of -inf logits (overflow in the kernel's precision), gamma = 0,
// scale != 1, float32, float64, float16, bfloat16, and bitwise equality under two thread schedules and
// grid caps. Strided inputs carry NaN in their padding (never read); outputs and row statistics start
// as NaN (every element must be written). The kernels run on their launchers' plans
// (self_attn_simt_launch_plan.cuh, self_attn_backward_rowstats.cuh), with each test's channel tiles and
// grid caps.
//   g++ -std=c++20 -O2 -pthread -I/usr/local/cuda/include -I. -Wno-unknown-pragmas -Wno-attributes
//       tests/emulation/simt/simt_double_backward_emulation_test.cpp -o /tmp/simt_double_backward && /tmp/simt_double_backward
// (from the repository root; an argument 1..4 runs one group).
#include "tests/emulation/simt/simt_host_emulation.h"
#include "kernels/cuda/simt/self_attn_simt_launch_plan.cuh"
#include "kernels/cuda/self_attn_backward_rowstats.cuh"
#include <algorithm>
#include <cstring>

using namespace sagan::kernels;
using namespace sagan::kernels::cuda;
using namespace sagan::kernels::cuda::simt;

#include "tests/emulation/simt/simt_emulation_reference.h"

// The inputs of one double backward: f, g, h, dy strided; the cotangents contiguous (as the op reads
// them); o and lse as given to the kernel (o in the storage type, contiguous).
template <typename T>
struct DbInputs {
  Shape s;
  Strided<T> f, g, h, dy, uf, ug, uh;
  std::vector<T> o;
  std::vector<double> lse;
  double gamma, ugamma, scale;
  DbInputs(const Shape& s_, std::mt19937& rng, double gamma_, double ugamma_, double scale_)
      : s(s_), f(s.B, s.Cqk, s.Nq, rng, 1.5), g(s.B, s.Cqk, s.Nk, rng, 1.5), h(s.B, s.Cv, s.Nk, rng, 1.0),
        dy(s.B, s.Cv, s.Nq, rng, 1.0), uf(s.B, s.Cqk, s.Nq, rng, 1.0, 0, 0), ug(s.B, s.Cqk, s.Nk, rng, 1.0, 0, 0),
        uh(s.B, s.Cv, s.Nk, rng, 1.0, 0, 0), gamma(gamma_), ugamma(ugamma_), scale(scale_) {}
};

// The float64 oracle: the formulas at the top of the kernel's file, on the kernel's very inputs (o as
// given, not recomputed: the op takes o and lse as the forward's). Also D, R, P, Q and the magnitude
// of d_gamma's terms (the yardstick of a sum that may cancel).
struct DbRef {
  std::vector<double> d_dy, d_f, d_g, d_h, stats;
  double d_gamma = 0, d_gamma_mag = 0;
};

template <typename T>
DbRef reference_double_backward(const DbInputs<T>& in, const std::vector<double>& o) {
  const Shape& s = in.s;
  const int64_t B = s.B, Cqk = s.Cqk, Cv = s.Cv, Nq = s.Nq, Nk = s.Nk;
  const double gamma = in.gamma, ugamma = in.ugamma, scale = in.scale;
  DbRef r;
  r.d_dy.assign(B * Cv * Nq, 0); r.d_f.assign(B * Cqk * Nq, 0); r.d_g.assign(B * Cqk * Nk, 0);
  r.d_h.assign(B * Cv * Nk, 0); r.stats.assign(4 * B * Nq, 0);
  std::vector<double> P, lse(Nq), dp(Nq * Nk), Bm(Nq * Nk), E(Nq * Nk), W(Nq * Nk), G(Nq * Nk);
  for (int64_t b = 0; b < B; ++b) {
    reference_probs(s, in.f, in.g, b, scale, &P, lse.data());
    for (int64_t i = 0; i < Nq; ++i)
      for (int64_t j = 0; j < Nk; ++j) {
        double a = 0, bb = 0, e = 0;
        for (int64_t c = 0; c < Cv; ++c) { a += in.dy.at(b, c, i) * in.h.at(b, c, j); e += in.dy.at(b, c, i) * in.uh.at(b, c, j); }
        for (int64_t c = 0; c < Cqk; ++c) bb += in.uf.at(b, c, i) * in.g.at(b, c, j) + in.f.at(b, c, i) * in.ug.at(b, c, j);
        dp[i * Nk + j] = a; Bm[i * Nk + j] = scale * bb; E[i * Nk + j] = e;
      }
    std::vector<double> A(Nq);
    for (int64_t i = 0; i < Nq; ++i) {
      double D = 0, R = 0, Pp = 0, Q = 0;
      for (int64_t c = 0; c < Cv; ++c) D += in.dy.at(b, c, i) * o[(b * Cv + c) * Nq + i];
      for (int64_t j = 0; j < Nk; ++j) {
        const double p = P[i * Nk + j];
        R += p * Bm[i * Nk + j]; Pp += p * dp[i * Nk + j] * Bm[i * Nk + j]; Q += p * E[i * Nk + j];
      }
      const double a = ugamma - gamma * R, cc = gamma * (Pp + Q - 2 * D * R) + ugamma * D;
      A[i] = a;
      for (int64_t j = 0; j < Nk; ++j) {
        const double p = P[i * Nk + j], ddp = dp[i * Nk + j] - D;
        W[i * Nk + j] = gamma * p * ddp;
        G[i * Nk + j] = p * (gamma * ddp * Bm[i * Nk + j] + gamma * E[i * Nk + j] + a * dp[i * Nk + j] - cc);
      }
      const int64_t row = b * Nq + i;
      r.stats[row] = D; r.stats[B * Nq + row] = R; r.stats[2 * B * Nq + row] = Pp; r.stats[3 * B * Nq + row] = Q;
      r.d_gamma += Pp - D * R + Q;
      r.d_gamma_mag += std::abs(Pp) + std::abs(D * R) + std::abs(Q);
    }
    for (int64_t c = 0; c < Cqk; ++c) {
      for (int64_t i = 0; i < Nq; ++i) {
        double a = 0; for (int64_t j = 0; j < Nk; ++j) a += W[i * Nk + j] * in.ug.at(b, c, j) + G[i * Nk + j] * in.g.at(b, c, j);
        r.d_f[(b * Cqk + c) * Nq + i] = scale * a;
      }
      for (int64_t j = 0; j < Nk; ++j) {
        double a = 0; for (int64_t i = 0; i < Nq; ++i) a += W[i * Nk + j] * in.uf.at(b, c, i) + G[i * Nk + j] * in.f.at(b, c, i);
        r.d_g[(b * Cqk + c) * Nk + j] = scale * a;
      }
    }
    for (int64_t c = 0; c < Cv; ++c) {
      for (int64_t i = 0; i < Nq; ++i) {
        double a = 0;
        for (int64_t j = 0; j < Nk; ++j) a += gamma * P[i * Nk + j] * (Bm[i * Nk + j] * in.h.at(b, c, j) + in.uh.at(b, c, j));
        r.d_dy[(b * Cv + c) * Nq + i] = a + A[i] * o[(b * Cv + c) * Nq + i];
      }
      for (int64_t j = 0; j < Nk; ++j) {
        double a = 0;
        for (int64_t i = 0; i < Nq; ++i) a += P[i * Nk + j] * (gamma * Bm[i * Nk + j] + A[i]) * in.dy.at(b, c, i);
        r.d_h[(b * Cv + c) * Nk + j] = a;
      }
    }
  }
  return r;
}

// The oracle against central differences of L = <uf, df> + <ug, dg> + <uh, dh> + ugamma dgamma, the
// first backward's float64 reference (which recomputes o from f, g, h: every path through o and lse
// is in the derivative), along one random direction of (dy, f, g, h, gamma).
bool oracle_matches_finite_differences() {
  const Shape s{2, 3, 4, 6, 9};
  std::mt19937 rng(77);
  DbInputs<double> in(s, rng, 0.7, 0.45, 0.8);
  const Strided<double>* no_x = nullptr;
  Ref base = reference(s, in.f, in.g, in.h, no_x, in.dy, in.gamma, in.scale);
  DbRef r = reference_double_backward(in, base.o);
  auto loss = [&](const DbInputs<double>& x, double gamma) {
    Ref q = reference(s, x.f, x.g, x.h, no_x, x.dy, gamma, x.scale);
    double L = 0;
    for (int64_t b = 0; b < s.B; ++b)
      for (int64_t c = 0; c < s.Cqk; ++c) {
        for (int64_t i = 0; i < s.Nq; ++i) L += in.uf.at(b, c, i) * q.df[(b * s.Cqk + c) * s.Nq + i];
        for (int64_t j = 0; j < s.Nk; ++j) L += in.ug.at(b, c, j) * q.dg[(b * s.Cqk + c) * s.Nk + j];
      }
    for (int64_t b = 0; b < s.B; ++b)
      for (int64_t c = 0; c < s.Cv; ++c)
        for (int64_t j = 0; j < s.Nk; ++j) L += in.uh.at(b, c, j) * q.dh[(b * s.Cv + c) * s.Nk + j];
    for (double d : q.delta) L += in.ugamma * d;
    return L;
  };
  // Direction v, and the oracle's directional derivative <grad, v> (with its magnitude).
  std::mt19937 vr(78);
  std::uniform_real_distribution<double> u(-1, 1);
  auto dir = [&](const Strided<double>& t) {
    std::vector<double> v(t.data.size(), 0.0);
    for (int64_t b = 0; b < t.B; ++b)
      for (int64_t c = 0; c < t.C; ++c)
        for (int64_t n = 0; n < t.N; ++n) v[b * t.sb + c * t.sc + n] = u(vr);
    return v;
  };
  const std::vector<double> vdy = dir(in.dy), vf = dir(in.f), vg = dir(in.g), vh = dir(in.h);
  const double vgamma = u(vr);
  double want = r.d_gamma * vgamma, mag = std::abs(r.d_gamma * vgamma);
  auto dot = [&](const Strided<double>& t, const std::vector<double>& v, const std::vector<double>& grad) {
    for (int64_t b = 0; b < t.B; ++b)
      for (int64_t c = 0; c < t.C; ++c)
        for (int64_t n = 0; n < t.N; ++n) {
          const double term = v[b * t.sb + c * t.sc + n] * grad[(b * t.C + c) * t.N + n];
          want += term; mag += std::abs(term);
        }
  };
  dot(in.dy, vdy, r.d_dy); dot(in.f, vf, r.d_f); dot(in.g, vg, r.d_g); dot(in.h, vh, r.d_h);
  const double eps = 1e-5;
  auto shifted = [&](double t) {
    DbInputs<double> x = in;
    for (size_t k = 0; k < vdy.size(); ++k) x.dy.data[k] += t * vdy[k];
    for (size_t k = 0; k < vf.size(); ++k) x.f.data[k] += t * vf[k];
    for (size_t k = 0; k < vg.size(); ++k) x.g.data[k] += t * vg[k];
    for (size_t k = 0; k < vh.size(); ++k) x.h.data[k] += t * vh[k];
    return loss(x, in.gamma + t * vgamma);
  };
  const double fd = (shifted(eps) - shifted(-eps)) / (2 * eps);
  const double err = std::abs(fd - want) / mag;
  const bool ok = err < 1e-7;  // central differences: O(eps^2) truncation, O(1e-16 / eps) rounding
  printf("%s oracle vs central differences: %.3e (directional derivative %.6f)\n", ok ? "OK  " : "FAIL", err, want);
  return ok;
}

// Largest over rows of a (rows x len) tensor of max |got - ref| / max |ref| of the row: rows of very
// different scales (the -inf case's channel 0) are each held to their own.
template <typename V>
double row_rel_err(const std::vector<V>& got, const std::vector<double>& ref, int64_t len, const char* what, bool* nan_seen) {
  double worst = 0;
  if (len == 0) return 0;
  for (size_t r0 = 0; r0 < ref.size(); r0 += len) {
    double mx = 0, e = 0;
    for (int64_t k = 0; k < len; ++k) mx = std::max(mx, std::abs(ref[r0 + k]));
    for (int64_t k = 0; k < len; ++k) {
      const double gv = to_d(got[r0 + k]);
      if (!std::isfinite(gv)) {
        *nan_seen = true;
        fprintf(stderr, "  %s[%zu] = %g (ref %g)\n", what, r0 + k, gv, ref[r0 + k]);
        return INFINITY;
      }
      e = std::max(e, std::abs(gv - ref[r0 + k]));
    }
    worst = std::max(worst, e / (mx > 0 ? mx : 1e-300));
  }
  return worst;
}

struct Case {
  Shape s;
  double gamma, ugamma, scale;
  bool mask_leading;   // the first 64 keys' logits overflow to -inf (needs Cqk >= 2, Nk > 64)
  int64_t gy_cap, gz_cap;
};

// Runs D, the five kernels and d_gamma under the emulator with channel tiles VCQ (d_f, d_g) and VCV
// (d_dy, d_h), and compares with the oracle. bits_out: every output, for the bitwise checks.
template <typename T, int VCQ, int VCV>
bool test(const Case& k, unsigned seed, double tol, std::vector<double>* bits_out = nullptr) {
  using Acc = acc_t<T>;
  const Shape& s = k.s;
  std::mt19937 rng(4321 + s.B * 7 + s.Cqk * 13 + s.Cv * 17 + s.Nq * 19 + s.Nk * 23);
  // gamma and ugamma as stored (T), scale as the kernel sees it (Acc): the oracle has the kernel's inputs.
  DbInputs<T> in(s, rng, to_d(from_d<T>(k.gamma)), to_d(from_d<T>(k.ugamma)),
                 static_cast<double>(static_cast<Acc>(k.scale)));
  if (k.mask_leading) {
    // Channel 0 of f is M on two queries of three (0 on the others); of g, -M on the first key tile
    // and 0 after it: M * -M overflows to -inf in the kernel's precision (p = 0), the oracle's
    // float64 logit is -inf or about -1e40 (p = 0 too). The cotangents' channel 0 is 0 so that B stays
    // finite; d_f and d_g of channel 0 still carry M-sized terms (checked row by row).
    const double M = sizeof(Acc) == 8 ? 1e160 : 1e20;
    for (int64_t b = 0; b < s.B; ++b) {
      for (int64_t i = 0; i < s.Nq; ++i) {
        in.f.data[b * in.f.sb + i] = from_d<T>(i % 3 == 2 ? 0.0 : M);
        in.uf.data[b * in.uf.sb + i] = from_d<T>(0.0);
      }
      for (int64_t j = 0; j < s.Nk; ++j) {
        in.g.data[b * in.g.sb + j] = from_d<T>(j < kBlockK ? -M : 0.0);
        in.ug.data[b * in.ug.sb + j] = from_d<T>(0.0);
      }
    }
  }
  // lse from the float64 softmax; o = sum_j p h rounded to the storage type, as the forward gives them.
  Ref fw;
  {
    const Strided<T>* no_x = nullptr;
    fw = reference(s, in.f, in.g, in.h, no_x, in.dy, in.gamma, in.scale);
  }
  in.lse = fw.lse;
  in.o.resize(fw.o.size());
  std::vector<double> o_d(fw.o.size());
  for (size_t i = 0; i < fw.o.size(); ++i) { in.o[i] = from_d<T>(fw.o[i]); o_d[i] = to_d(in.o[i]); }
  const DbRef r = reference_double_backward(in, o_d);

  const T gamma_t = from_d<T>(k.gamma), ugamma_t = from_d<T>(k.ugamma);
  SelfAttnDoubleBackwardParams p;
  p.B = s.B; p.Cqk = s.Cqk; p.Cv = s.Cv; p.Nq = s.Nq; p.Nk = s.Nk;
  p.dy = in.dy.data.data(); p.dy_sb = in.dy.sb; p.dy_sc = in.dy.sc;
  p.f = in.f.data.data(); p.f_sb = in.f.sb; p.f_sc = in.f.sc;
  p.g = in.g.data.data(); p.g_sb = in.g.sb; p.g_sc = in.g.sc;
  p.h = in.h.data.data(); p.h_sb = in.h.sb; p.h_sc = in.h.sc;
  p.o = in.o.data(); p.o_sb = s.Cv * s.Nq; p.o_sc = s.Nq;
  p.lse = in.lse.data(); p.gamma = &gamma_t;
  p.uf = in.uf.data.data(); p.ug = in.ug.data.data(); p.uh = in.uh.data.data();
  p.ugamma = &ugamma_t; p.scale = k.scale;
  const T nanT = from_d<T>(std::nan(""));
  std::vector<Acc> stats(4 * s.B * s.Nq, Acc(std::nan("")));
  std::vector<T> d_dy(s.B * s.Cv * s.Nq, nanT), d_f(s.B * s.Cqk * s.Nq, nanT), d_g(s.B * s.Cqk * s.Nk, nanT),
      d_h(s.B * s.Cv * s.Nk, nanT);
  double d_gamma = std::nan("");
  p.rowstats = stats.data(); p.d_dy = d_dy.data(); p.d_f = d_f.data(); p.d_g = d_g.data(); p.d_h = d_h.data();
  p.d_gamma = &d_gamma;
  const Acc scale_exp = static_cast<Acc>(p.scale * ExpBase<Acc>::kFromNatural);

  // D (grid: query blocks x capped batches), as the dispatch runs it first.
  const LaunchPlan d_plan = rowstats::plan_row_dot(s.B, s.Nq, GridCaps{kMaxGridX, k.gz_cap, 1});
  run_plan(d_plan, seed + 5, [&](int tid, void*, int64_t bx, int64_t by, int64_t) {
    rowstats::double_backward_d_block<T>(p, tid, bx, by, d_plan.grid_y);
  });
  // The statistics (narrow tile), then the four outputs with the tiles of this test.
  const GridCaps caps{kMaxGridX, k.gy_cap, k.gz_cap};
  auto part = [&](auto vc, auto tag, unsigned sd) {
    constexpr int VC = decltype(vc)::value;
    constexpr DoubleBackwardPart kPart = decltype(tag)::value;
    const LaunchPlan pl = plan_double_backward<T, VC, kPart>(p, caps);
    run_plan(pl, sd, [&](int tid, void* sm, int64_t bx, int64_t by, int64_t bz) {
      double_backward_block<T, Acc, VC, kPart>(p, scale_exp, static_cast<Acc*>(sm), tid, bx, by, bz, pl.grid_y, pl.grid_z);
    });
  };
  using VN = std::integral_constant<int, SimtChannelTiles<Acc>::kNarrow>;
  using VQ = std::integral_constant<int, VCQ>;
  using VV = std::integral_constant<int, VCV>;
  part(VN{}, std::integral_constant<DoubleBackwardPart, DoubleBackwardPart::kStats>{}, seed);
  part(VQ{}, std::integral_constant<DoubleBackwardPart, DoubleBackwardPart::kDf>{}, seed + 1);
  part(VV{}, std::integral_constant<DoubleBackwardPart, DoubleBackwardPart::kDdy>{}, seed + 2);
  part(VQ{}, std::integral_constant<DoubleBackwardPart, DoubleBackwardPart::kDg>{}, seed + 3);
  part(VV{}, std::integral_constant<DoubleBackwardPart, DoubleBackwardPart::kDh>{}, seed + 4);
  run_plan(rowstats::plan_block_sum(), seed + 6, [&](int tid, void* sm, int64_t, int64_t, int64_t) {
    rowstats::double_backward_dgamma_block<T>(p, static_cast<double*>(sm), tid);
  });

  bool nan = false;
  const double e_stats = row_rel_err(stats, r.stats, s.B * s.Nq, "rowstats", &nan);
  const double e_dy = row_rel_err(d_dy, r.d_dy, s.Nq, "d_dy", &nan), e_f = row_rel_err(d_f, r.d_f, s.Nq, "d_f", &nan),
               e_g = row_rel_err(d_g, r.d_g, s.Nk, "d_g", &nan), e_h = row_rel_err(d_h, r.d_h, s.Nk, "d_h", &nan);
  const double e_gamma = std::abs(d_gamma - r.d_gamma) / std::max(r.d_gamma_mag, 1e-300);
  if (!std::isfinite(d_gamma)) nan = true;
  const double worst = std::max({e_stats, e_dy, e_f, e_g, e_h, e_gamma});
  const bool ok = !nan && worst <= tol;
  printf("%s T=%zuB VCQ=%d VCV=%d B=%ld Cqk=%ld Cv=%ld Nq=%ld Nk=%ld gamma=%g ugamma=%g scale=%g mask=%d gy<=%ld gz<=%ld | "
         "stats %.2e d_dy %.2e d_f %.2e d_g %.2e d_h %.2e d_gamma %.2e (tol %.1e)\n",
         ok ? "OK  " : "FAIL", sizeof(T), VCQ, VCV, (long)s.B, (long)s.Cqk, (long)s.Cv, (long)s.Nq, (long)s.Nk, k.gamma,
         k.ugamma, k.scale, (int)k.mask_leading, (long)k.gy_cap, (long)k.gz_cap, e_stats, e_dy, e_f, e_g, e_h, e_gamma, tol);
  fflush(stdout);
  if (bits_out) {
    bits_out->clear();
    for (auto v : stats) bits_out->push_back(static_cast<double>(v));
    for (auto v : d_dy) bits_out->push_back(to_d(v));
    for (auto v : d_f) bits_out->push_back(to_d(v));
    for (auto v : d_g) bits_out->push_back(to_d(v));
    for (auto v : d_h) bits_out->push_back(to_d(v));
    bits_out->push_back(d_gamma);
  }
  return ok;
}

int main(int argc, char** argv) {
  int fails = 0;
  const int which = argc > 1 ? atoi(argv[1]) : 0;
  auto T = [&](bool r) { fails += !r; };
  constexpr int64_t kAll = 65535;
  // Tolerances, as max error over max |value| per output row: float64 is rounding only (sums of a few
  // hundred products; 1e-12 as simt_host_emulation_test); float32 sums O(Nk (Cqk + Cv)) products per
  // tile entry and three row sums (R, P, Q) before its own products: observed up to 3e-6 on these
  // shapes, held to 2e-5 (the first backward's float32 bound there); float16 / bfloat16 round their
  // outputs (2^-11 / 2^-8 of a value) after float32 arithmetic: 4x that rounding.
  if (which == 0 || which == 1) {
    T(oracle_matches_finite_differences());
    // float64: N not a multiple of the tiles, Nk != Nq, B = 2, gamma and ugamma != 0, scale != 1.
    T(test<double, 4, 4>({{2, 3, 5, 67, 45}, 0.7, 0.45, 0.3, false, kAll, kAll}, 11, 1e-12));
    // Cqk = 1, three key tiles, grid y and z capped at 1 (the kernels' loops over chunks and batches).
    T(test<double, 4, 4>({{2, 1, 3, 20, 130}, -1.3, 0.25, 1.0, false, 1, 1}, 12, 1e-12));
  }
  if (which == 0 || which == 2) {
    // float32, Cv large: the wide tile (128 channels) with two chunks, the narrow one with three.
    T(test<float, 4, 8>({{1, 20, 140, 33, 66}, 0.8, 0.5, 0.6, false, kAll, kAll}, 13, 2e-5));
    T(test<float, 4, 4>({{1, 70, 140, 33, 20}, 0.8, 0.5, 0.6, false, kAll, kAll}, 14, 2e-5));
    // gamma = 0 (SAGAN's start): the second derivative is then ugamma's terms only.
    T(test<float, 4, 4>({{2, 3, 10, 65, 70}, 0.0, 0.75, 1.0, false, kAll, 1}, 15, 2e-5));
  }
  if (which == 0 || which == 3) {
    // A leading key tile of -inf logits, float32 and float64.
    T(test<float, 4, 4>({{1, 2, 6, 40, 100}, 0.9, 0.5, 0.7, true, kAll, kAll}, 16, 2e-5));
    T(test<double, 4, 4>({{1, 2, 6, 40, 100}, 0.9, 0.5, 0.7, true, kAll, kAll}, 17, 1e-12));
    T(test<__half, 4, 4>({{1, 3, 10, 33, 97}, 0.5, 0.5, 0.5, false, kAll, kAll}, 18, 2e-3));
    T(test<__nv_bfloat16, 4, 4>({{1, 3, 10, 33, 97}, 0.5, 0.5, 0.5, false, kAll, kAll}, 19, 1.6e-2));
  }
  if (which == 0 || which == 4) {
    // Races: the same float32 problem under two schedules and two grid caps must be bitwise equal.
    std::vector<double> a, b;
    T(test<float, 4, 8>({{2, 5, 70, 67, 70}, 0.6, 0.3, 0.9, false, kAll, kAll}, 100, 2e-5, &a));
    T(test<float, 4, 8>({{2, 5, 70, 67, 70}, 0.6, 0.3, 0.9, false, 1, 1}, 977, 2e-5, &b));
    const bool same = a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(double)) == 0;
    printf("%s bitwise equal across schedules and grid caps\n", same ? "OK  " : "FAIL");
    fails += !same;
  }
  printf("%d failures\n", fails);
  return fails != 0;
}
